"""Inference on a trained run directory: encode particles, decode latents, explore the landscape.

``load_run(run_dir)`` rebuilds the model from ``config.json`` and the newest checkpoint. Then::

    run.encode(stack)            latent means / log-variances, quaternions, RELION Euler angles, shifts
                                 (``pose=``: the pose head's own or the searched pose, see `POSE_CHOICES`)
    run.decode(z)                volumes [z, y, x]
    run.volume_of(i)             the volume of particle i of the training data
    run.interpolate(z0, z1, k)   k volumes on the straight line z0 -> z1 (thesis Fig. 3.20)
    run.traverse(dim, k)         one latent dimension from its observed min to max, others at their means
    run.sample_prior(k, seed)    volumes of latents drawn from the N(0, I) prior
    run.reconstruction_errors(d) each particle's loss data term: the junk screening's figure

Exports: `write_volumes` (MRC with the voxel size), `Encoding.save` (.npz, no pickle) and
`write_star` (RELION 3.1 STAR with the learned poses, so RELION can refine from them).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from cryovae_nb import geometry
from cryovae_nb.analysis.series import decode_volumes, interpolation_series, save_series, traversal_series
from cryovae_nb.atomic import atomic_path
from cryovae_nb.errors import InputError
from cryovae_nb.io import Poses, read_particles, write_particles_star
from cryovae_nb.model.batch import Batch
from cryovae_nb.training.data import particle_optics
from cryovae_nb.training.rundir import CheckpointManager, RunFolder, make_checkpoint
from cryovae_nb.volumes import band_limit

# Where a learned-pose run's reported poses come from (`TrainedRun.encode`'s ``pose``):
# "search" re-runs the training step's grid search + local refinement against the decoded volume
# (~120 images/s on 2 cores), "head" reads the pose head alone (~8,800 images/s), which training
# pulls towards the searched poses (PoseConfig.distill); "auto" takes the head when the run's last
# logged training steps say the search kept the head's rotation for most images (`AUTO_HEAD_WON`).
# The default stays "search": on the L-shape ab initio (benchmarks/pose_head.py, 340 steps) the
# head's rotations were still no better than chance (median error 131 deg vs the search's 75 deg;
# the search kept the head's rotation for 0.3 % of images), so "auto" searches there too.
POSE_CHOICES = ("auto", "head", "search")
DEFAULT_POSE = "search"
AUTO_HEAD_WON = 0.5      # mean "head_won" over the last AUTO_RECORDS logged training records
AUTO_RECORDS = 5


@dataclass
class Encoding:
    """Per-particle encoder output, in the project's pose convention (geometry.py)."""

    z_mean: np.ndarray        # (k, latent_dim)
    z_logvar: np.ndarray      # (k, latent_dim)
    quaternions: np.ndarray   # (k, 4) unit, scalar first
    rotations: np.ndarray     # (k, 3, 3)
    euler: np.ndarray         # (k, 3) RELION rot, tilt, psi in degrees
    shifts: np.ndarray        # (k, 2) px; RELION origin = -shift
    # where the poses came from: "known" (the STAR file's), "head" (the pose head alone), "search"
    # (the pose search); "unknown" in files written before it was recorded
    pose_source: str = "unknown"

    def __len__(self) -> int:
        return len(self.z_mean)

    def save(self, path: str | os.PathLike) -> None:
        """Write every array to one ``.npz`` (atomic); read back with `Encoding.load`."""
        with atomic_path(path) as tmp:
            np.savez(tmp, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Encoding":
        try:
            with np.load(path, allow_pickle=False) as f:
                enc = cls(**{fl.name: f[fl.name] for fl in fields(cls) if fl.name != "pose_source"})
                if "pose_source" in f.files:
                    enc.pose_source = str(f["pose_source"])
                return enc
        except KeyError as e:
            raise InputError(f"not an encoding file: missing array {e}", path) from None
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read ({e})", path) from None

    @classmethod
    def from_poses(cls, z_mean, z_logvar, rotations, shifts, pose_source: str = "unknown") -> "Encoding":
        rotations = np.asarray(rotations, np.float64)
        return cls(np.asarray(z_mean, np.float32), np.asarray(z_logvar, np.float32),
                   geometry.matrix_to_quaternion(rotations), rotations,
                   geometry.matrix_to_relion_euler(rotations), np.asarray(shifts, np.float64),
                   str(pose_source))


class TrainedRun:
    """A trained model with its run directory; build it with `load_run`."""

    def __init__(self, run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
                 batch_size: int | None = None):
        from cryovae_nb.model.vae import build_model  # heavy: TensorFlow; `cryovae encode --help` stays light

        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir)
        if not self.folder.has_config():
            raise InputError("not a training run directory (no config.json)", self.run_dir)
        self.config = self.folder.config()
        manager = self.folder.checkpoints
        self.model = build_model(self.config.model, seed=self.config.seed)
        if checkpoint is not None:
            self.checkpoint = Path(checkpoint)
            state = CheckpointManager.restore(make_checkpoint(self.model), self.checkpoint)
        else:
            # the newest checkpoint that reads back whole, saying which newer ones were skipped
            self.checkpoint, state, problems = manager.restore_newest(make_checkpoint(self.model))
            if self.checkpoint is None:
                if problems:
                    raise InputError("no intact checkpoint: " + "; ".join(problems), self.run_dir)
                raise InputError("run directory has no checkpoint yet", self.run_dir)
            if problems:
                warnings.warn(f"{self.run_dir}: newer checkpoint(s) unreadable ({'; '.join(problems)}); "
                              f"using {self.checkpoint.name}, the newest intact one", stacklevel=3)
        self.step = int(state["step"])
        self.pixel_size = float(state.get("pixel_size") or 1.0)
        self.box = int(self.config.model.architecture.box)
        self.latent_dim = int(self.config.model.architecture.latent_dim)
        self.batch_size = int(batch_size or self.config.batch_size)
        self._particles = None
        self._observed: np.ndarray | None = None

    def __repr__(self) -> str:
        return (f"TrainedRun({str(self.run_dir)!r}, step={self.step}, box={self.box}, "
                f"latent_dim={self.latent_dim}, pose_mode={self.config.model.pose.mode!r})")

    # ---- data -----------------------------------------------------------------------------

    @property
    def particles(self):
        """The run's training data (lazily opened from the path in config.json)."""
        if self._particles is None:
            self._particles = read_particles(self.config.data, datadir=self.config.datadir)
        return self._particles

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) particle indices the run used."""
        return self.folder.split()

    def _as_images(self, data):
        """(lazy indexable images, known poses or None) from a path, Particles, stack or array."""
        if isinstance(data, (str, os.PathLike)):
            data = read_particles(data)
        poses = getattr(data, "poses", None)
        images = getattr(data, "images", data)
        if isinstance(images, np.ndarray) and images.ndim == 2:
            images = images[None]
        if tuple(images.shape[1:]) != (self.box, self.box):
            raise InputError(f"images are {tuple(images.shape[1:])} px but the model was trained on "
                             f"{self.box} x {self.box}; preprocess them the same way first")
        return images, poses

    def _optics(self, data):
        """Each particle's CTF (`Optics`) for a model that applies it (``ModelConfig.loss.ctf``),
        else None; such a model needs the particles' STAR file, not bare images."""
        if not self.config.model.loss.ctf:
            return None
        if not hasattr(data, "ctf"):
            raise InputError("this model applies each particle's CTF: give the particles' STAR file "
                             "(or Particles), not bare images")
        return particle_optics(data)

    @staticmethod
    def _batch(images, idx, poses, optics) -> Batch:
        """The model's batch of the particles at rows ``idx``: their images, CTF (``optics``) and,
        given ``poses``, their known poses."""
        batch = Batch(np.asarray(images[idx], np.float32), indices=idx,
                      optics=None if optics is None else optics[idx])
        if poses is not None:
            batch = batch.replace(rotations=np.asarray(poses.rotations[idx], np.float32),
                                  shifts=np.asarray(poses.shifts[idx], np.float32))
        return batch

    # ---- encode / decode --------------------------------------------------------------------

    def head_won_fraction(self) -> float | None:
        """The mean ``head_won`` (the fraction of images whose pose-head rotation the search kept)
        of the run's last `AUTO_RECORDS` logged training records up to the checkpoint's step;
        None when the run logged none (no search, or trained before it was logged)."""
        values = [r["head_won"] for r in self.folder.metrics()
                  if r.get("split") == "train" and r.get("step", 0) <= self.step
                  and isinstance(r.get("head_won"), (int, float))]
        return float(np.mean(values[-AUTO_RECORDS:])) if values else None

    def pose_path(self, pose: str = DEFAULT_POSE) -> str:
        """Which learned pose `encode` reports for ``pose`` (one of `POSE_CHOICES`): "head" or
        "search". Runs without a pose search (``ModelConfig.pose.search_deg`` None) have only the
        head's; "auto" takes the head when `head_won_fraction` >= `AUTO_HEAD_WON`, else searches."""
        if pose not in POSE_CHOICES:
            raise InputError(f"pose must be one of {', '.join(POSE_CHOICES)}, got {pose!r}")
        if self.config.model.pose.search_deg is None:
            return "head"
        if pose == "auto":
            won = self.head_won_fraction()
            return "head" if won is not None and won >= AUTO_HEAD_WON else "search"
        return pose

    def encode(self, data, *, progress: bool = True, pose: str = DEFAULT_POSE) -> Encoding:
        """Encode images (a path, `Particles`, `ParticleStack` or ``(k, n, n)`` array), batched.

        A model with the CTF (``ModelConfig.loss.ctf``) reads each particle's from ``data``'s
        STAR columns. In known-pose runs the pose head was never trained: the poses reported are the known ones
        from the STAR file (when ``data`` carries them), otherwise the head's output. Learned-pose
        runs with a pose search (``ModelConfig.pose.search_deg``) report the searched pose, as in
        training (``pose="search"``; the search's reference is the mean volume of each batch), or
        the pose head's own (``"head"``, no search), or whichever the run's training metrics favour
        (``"auto"``, `pose_path`). The latents are the same either way. The encoding's
        ``pose_source`` says which poses it holds ("known", "head" or "search").
        """
        from tqdm.auto import tqdm

        if isinstance(data, (str, os.PathLike)):
            data = read_particles(data)
        images, known = self._as_images(data)
        optics = self._optics(data)
        path = self.pose_path(pose)
        n = len(images)
        use_known = self.config.model.pose.mode == "known" and known is not None
        out = {k: [] for k in ("z_mean", "z_logvar", "quaternion", "shift")}
        for start in tqdm(range(0, n, self.batch_size), desc="encode", unit="batch", disable=not progress):
            # a known-pose model may read the poses to infer the latent (latent_inference=
            # "linearized"): give it the known ones whenever the data carries them
            batch = self._batch(images, np.arange(start, min(start + self.batch_size, n)),
                                known if use_known else None, optics)
            enc = self.model.encode(batch, search=path == "search")
            for k in out:
                out[k].append(np.asarray(enc[k]))
        cat = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}
        if use_known:
            rotations, shifts, source = known.rotations, known.shifts, "known"
        else:
            rotations, shifts = geometry.quaternion_to_matrix(cat["quaternion"]), cat["shift"]
            source = path if self.config.model.pose.mode == "learned" else "head"
        return Encoding.from_poses(cat["z_mean"], cat["z_logvar"], rotations, shifts, source)

    def reconstruct(self, data, indices) -> tuple[np.ndarray, np.ndarray]:
        """(images, the model's images of them) ``(k, n, n)`` each, in the images' units, for the
        particles at ``indices`` of ``data`` (as for `encode`): the training loss's forward model
        (``CryoVAE.reconstruct``: decoded volume, pose, the particle's CTF, offset, link)."""
        if isinstance(data, (str, os.PathLike)):
            data = read_particles(data)
        images, known = self._as_images(data)
        optics = self._optics(data)
        idx = np.asarray(indices, np.int64).ravel()
        batch = self._batch(images, idx, known if self.config.model.pose.mode == "known" else None, optics)
        predicted, _ = self.model.reconstruct(batch)
        return batch.images, np.asarray(predicted)

    def reconstruction_errors(self, data, indices=None, *, progress: bool = False) -> np.ndarray:
        """Each particle's screening figure (``analysis.screen.screen_particles``' ``recon_error``):
        the training loss's data term of its image, float64 ``(k,)`` for the particles at
        ``indices`` (default: all) of ``data`` (as for `encode`). That is ``recon_per_sample`` of
        ``CryoVAE.compute_losses`` at z = z_mean: the Gaussian negative log-likelihood in nats at the
        run's noise variance (or the cross-entropy), over the loss's pixels, with the particle's
        CTF, its known pose in known-pose runs and the searched pose where the run searches.
        One definition for the report (``cryovae analyze``) and notebook 05: the figure the model
        was trained to lower, so a particle it explains badly scores high."""
        from tqdm.auto import tqdm

        if isinstance(data, (str, os.PathLike)):
            data = read_particles(data)
        images, known = self._as_images(data)
        if self.config.model.pose.mode == "known" and known is None:
            raise InputError("the run used known poses but the particles have none")
        optics = self._optics(data)
        idx = np.arange(len(images)) if indices is None else np.asarray(indices, np.int64).ravel()
        out = []
        for s in tqdm(range(0, len(idx), self.batch_size), desc="reconstruction errors", unit="batch",
                      leave=False, disable=not progress):
            batch = self._batch(images, idx[s:s + self.batch_size],
                                known if self.config.model.pose.mode == "known" else None, optics)
            out.append(np.asarray(self.model.compute_losses(batch, training=False)["recon_per_sample"], np.float64))
        return np.concatenate(out) if out else np.zeros(0)

    def decode(self, z) -> np.ndarray:
        """Latents ``(k, latent_dim)`` (or one ``(latent_dim,)``) -> float32 volumes ``(k, n, n, n)``,
        band-limited to what the Fourier projector sees (`band_limit`) when it trained the model
        (a progress bar when there is more than a batch)."""
        z = np.asarray(z, np.float32)
        single = z.ndim == 1
        z = np.atleast_2d(z)
        if z.shape[1] != self.latent_dim:
            raise InputError(f"latents have {z.shape[1]} dimensions, the model has {self.latent_dim}")
        if not np.isfinite(z).all():
            # a NaN latent decodes to a NaN volume that no MRC writer or viewer accepts later
            bad = int(np.flatnonzero(~np.isfinite(z).all(axis=1))[0])
            raise InputError(f"latent {bad} holds NaN or infinite values")
        if len(z) == 0:
            return np.zeros((0,) + (self.box,) * 3, np.float32)
        vols = decode_volumes(self.model.decode, z, self.batch_size)
        if self.config.model.architecture.projector == "fourier":
            vols = band_limit(vols)
        return vols[0] if single else vols

    def volume_of(self, index: int, data=None) -> np.ndarray:
        """The volume the model reconstructs for particle ``index`` of ``data`` (default: the
        training data): the decoded latent mean of its image."""
        src = self.particles if data is None else data
        if isinstance(src, (str, os.PathLike)):
            src = read_particles(src)
        images, _ = self._as_images(src)
        if not -len(images) <= index < len(images):
            raise InputError(f"particle index {index} out of range (0..{len(images) - 1})")
        # a subset of Particles keeps its pose (linearized latents are read at the known pose)
        one = src.subset([index % len(images)]) if hasattr(src, "subset") else images[[index]]
        # the latent does not depend on the pose: the head's (no search) is ~70-110x faster
        return self.decode(self.encode(one, progress=False, pose="head").z_mean[0])

    # ---- exploring the latent space ---------------------------------------------------------

    def observed_latents(self) -> np.ndarray:
        """Latent means of the whole training data (encoded once, then cached)."""
        if self._observed is None:
            self._observed = self.encode(self.particles, pose="head").z_mean  # no search: same latents
        return self._observed

    def interpolate(self, z0, z1, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(latents, volumes) of ``k`` evenly spaced points from ``z0`` to ``z1`` (both included)."""
        return interpolation_series(self.decode, z0, z1, k)

    def traverse(self, dim: int, k: int, latents: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(latents, volumes) along dimension ``dim`` from its observed min to max, the other
        dimensions held at their means over ``latents`` (default: the training data) (§3.4.3.3)."""
        obs = self.observed_latents() if latents is None else latents
        return traversal_series(self.decode, obs, dim, k)

    def sample_prior(self, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(latents, volumes) of ``k`` draws from the standard normal prior."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"the number of prior samples must be an integer >= 1, got {k!r}")
        z = np.random.default_rng(seed).standard_normal((k, self.latent_dim)).astype(np.float32)
        return z, self.decode(z)


def load_run(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
             batch_size: int | None = None) -> TrainedRun:
    """Open a training run (its newest checkpoint unless ``checkpoint`` names one)."""
    return TrainedRun(run_dir, checkpoint, batch_size)


# --------------------------------------------------------------------------------------------
# exports


def write_volumes(outdir: str | os.PathLike, volumes: np.ndarray, voxel_size: float | None,
                  prefix: str = "volume") -> list[Path]:
    """One MRC per volume (``prefix_000.mrc`` ...), voxel size in the header; returns the paths.
    A single ``(n, n, n)`` volume is accepted too (`save_series` does the writing)."""
    volumes = np.asarray(volumes, np.float32)
    return save_series(outdir, volumes[None] if volumes.ndim == 3 else volumes, voxel_size, prefix)


POSE_BLOCK = "cryovae_poses"  # the STAR block naming where the poses came from (Encoding.pose_source)


def write_star(path: str | os.PathLike, particles, encoding: Encoding, *,
               pixel_size: float | None = None) -> None:
    """The particles' STAR file with the learned poses (RELION 3.1, optics block, atomic), and a
    ``data_cryovae_poses`` block recording their source (``cryovaePoseSource``: `Encoding.pose_source`).

    Image names found beside the original STAR file are rewritten relative to the new one; names
    resolved through a data directory (a RELION project root) are kept as RELION reads them.
    """
    path = Path(path)
    if len(particles) != len(encoding):
        raise InputError(f"{len(particles)} particles but {len(encoding)} encoded poses", path)
    poses = Poses(rotations=encoding.rotations, euler=encoding.euler, shifts=encoding.shifts)
    px = pixel_size if particles.pixel_size is None else None
    write_particles_star(path, particles, poses=poses, pixel_size=px,
                         extra_blocks={POSE_BLOCK: {"cryovaePoseSource": encoding.pose_source}})

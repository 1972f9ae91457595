"""Synthetic data with known truth: phantoms, projection at random or grid poses, CTF, noise.

Phantoms (float32 ``[z, y, x]``, density 1 inside, edges blurred by a Gaussian of 0.6 px so they
are band-limited enough for every projector to agree; blur tails below 1e-4 are cut to exact 0):

* :func:`lshape_volume` -- the solid L of thesis §3.4.1, at any box size (proportions scale with
  the box; it fits the inscribed sphere). Two perpendicular bars of different lengths and
  cross-sections -- the short bar half as thick, on the upper half of the long one -- and a stub
  standing up at the long bar's far end: arms along +x, +y, +z of different sizes, so the L has
  no rotational symmetry (pose is recoverable) and its mirror image is a different object
  (hands differ; a flat L alone would be nearly achiral).
* :func:`hinge_volume` -- the same L whose short bar swings out of the plane about a hinge on
  the long bar's edge by ``t * max_angle_deg``: a continuous conformational change, ``t`` in
  [0, 1]; ``hinge_volume(box, 0) == lshape_volume(box)``.
* :func:`two_state_volume` -- the hinge at ``t = 0`` or ``t = 1``: discrete heterogeneity.
* :func:`volume_from_mrc` -- any MRC map, Fourier-resampled to the wanted box.

:func:`simulate` turns a phantom into a particle stack, a RELION 3.1 STAR file with the true
poses (and CTF), the truth volumes and a ``truth.npz``; see its docstring for the noise model.
"""
from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import erf
from tqdm.auto import tqdm

from cryovae_nb.atomic import atomic_path
from cryovae_nb.config import check_fields, save_config
from cryovae_nb.ctf import apply_ctf, compute_ctf
from cryovae_nb.errors import ConfigError, InputError
from cryovae_nb.geometry import (centred_coords, grid_rotations, matrix_to_quaternion,
                                 matrix_to_relion_euler, random_rotations)
from cryovae_nb.io import (StackWriter, make_image_names, open_stack, read_volume,
                           write_particles_star, write_volume)
from cryovae_nb.projection import project_reference
from cryovae_nb.volumes import fourier_resample

_EDGE_SIGMA = 0.6  # px; the Gaussian blur of the phantom edges
_TAIL_CUT = 1e-4

# The L in units of box/40 as (lo, hi) per axis (x, y, z), before centring on its centre of mass.
_LONG_BAR = ((-11.0, 11.0), (-9.0, -3.0), (-4.0, 4.0))
_SHORT_BAR = ((-11.0, -6.0), (-3.0, 7.0), (0.0, 4.0))  # leaves the long bar at y = -3
# A stub standing up (+z) on the far end of the long bar: with the two bars it makes three arms
# along +x, +y, +z of different lengths, a handed frame whose mirror image no rotation matches.
_KNOB = ((5.0, 11.0), (-9.0, -3.0), (4.0, 11.0))
_HINGE_AXIS_YZ = (-3.0, 0.0)  # the short bar turns about the x-parallel line y = -3, z = 0


def _box_density(x, y, z, bounds, sigma: float) -> np.ndarray:
    """A box of density 1 convolved with an isotropic Gaussian (a product of erf steps)."""
    s = np.sqrt(2.0) * sigma
    out = 1.0
    for u, (lo, hi) in zip((x, y, z), bounds):
        out = out * 0.5 * (erf((u - lo) / s) - erf((u - hi) / s))
    return out


def _l_parts(box: int, angle_deg: float, offset: np.ndarray) -> np.ndarray:
    u = box / 40.0
    c = centred_coords(box)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    x, y, z = x + offset[0], y + offset[1], z + offset[2]  # offset moves the L's own origin
    long_bar = np.maximum(_box_density(x, y, z, np.multiply(_LONG_BAR, u), _EDGE_SIGMA),
                          _box_density(x, y, z, np.multiply(_KNOB, u), _EDGE_SIGMA))
    # The hinged bar: rotate the sample points back by the hinge angle about the axis, then
    # evaluate the unrotated bar there (a blurred box is rotation-covariant: the blur is isotropic).
    a = np.deg2rad(angle_deg)
    hy, hz = np.multiply(_HINGE_AXIS_YZ, u)
    yr = hy + np.cos(a) * (y - hy) + np.sin(a) * (z - hz)
    zr = hz - np.sin(a) * (y - hy) + np.cos(a) * (z - hz)
    short_bar = _box_density(x, yr, zr, np.multiply(_SHORT_BAR, u), _EDGE_SIGMA)
    # union, not sum: the bars touch along the hinge and must not double the density there
    return np.maximum(long_bar, short_bar)


@functools.lru_cache(maxsize=8)
def _l_offset(box: int) -> np.ndarray:
    """Centre of mass (x, y, z) of the unshifted L: subtracting it centres the L in its box."""
    v = _l_parts(box, 0.0, np.zeros(3))
    c = centred_coords(box)
    m = v.sum()
    return np.array([(v.sum(axis=(0, 1)) * c).sum(), (v.sum(axis=(0, 2)) * c).sum(),
                     (v.sum(axis=(1, 2)) * c).sum()]) / m


def _check_box(box) -> int:
    if int(box) != box or box < 8:
        raise InputError(f"phantom box size must be an integer >= 8, got {box}")
    return int(box)


def lshape_volume(box: int = 40) -> np.ndarray:
    """The solid, chiral L (thesis §3.4.1) in a ``box``³ grid, centred on its centre of mass."""
    return hinge_volume(box, 0.0)


def hinge_volume(box: int = 40, t: float = 0.0, max_angle_deg: float = 60.0) -> np.ndarray:
    """The L with its short bar lifted out of plane by ``t * max_angle_deg`` about its hinge.

    The long bar stays put (centred as in :func:`lshape_volume`), so the centre of mass moves a
    little with ``t``, as it would for a real domain motion.
    """
    box = _check_box(box)
    if not 0.0 <= t <= 1.0:
        raise InputError(f"hinge parameter t must lie in [0, 1], got {t}")
    v = _l_parts(box, t * max_angle_deg, _l_offset(box))
    # cut the blur's far tails (< 1e-4, beyond ~2 px): exact zeros let the projector skip them
    return np.where(v < _TAIL_CUT, 0.0, v).astype(np.float32)


def two_state_volume(box: int = 40, state: int = 0, max_angle_deg: float = 60.0) -> np.ndarray:
    """State 0: the closed L (``t = 0``); state 1: the open hinge (``t = 1``)."""
    if state not in (0, 1):
        raise InputError(f"two-state phantom: state must be 0 or 1, got {state}")
    return hinge_volume(box, float(state), max_angle_deg)


def volume_from_mrc(path: str | os.PathLike, box: int | None = None) -> tuple[np.ndarray, float | None]:
    """Read a cubic MRC map as a phantom -> (volume ``[z, y, x]`` float32, voxel size Å or None).

    With ``box`` the map is Fourier-resampled to ``box``³ and the voxel size scaled to match.
    """
    vol, voxel = read_volume(path)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(f"a phantom must be a cubic volume, this map has shape {vol.shape} [z, y, x]", path)
    n = vol.shape[0]
    if box is None or box == n:
        return vol.astype(np.float32), voxel
    box = _check_box(box)
    return fourier_resample(vol, box), (None if voxel is None else voxel * n / box)


# -- simulation -----------------------------------------------------------------------------------
PHANTOMS = ("lshape", "hinge", "two_state")


@dataclass
class SimulationConfig:
    """How to turn a phantom into a particle dataset (thesis §3.4.1: grid at 0.92 deg, copies=3, SNR 0.1).

    ``phantom``: "lshape", "hinge" (``t`` uniform over ``hinge_levels`` equally spaced values in
    [0, 1]), "two_state" (state 0 or 1, equally likely) or the path of an MRC map.
    ``pose_sampling``: "random" draws ``n_particles`` Haar-uniform rotations; "grid" takes every
    pose of ``geometry.grid_rotations(grid_step_deg, grid_n_psi)`` (``n_particles`` is then unused).
    Each pose (with its conformation, shift and CTF) is one clean projection; ``copies`` noisy
    images are made from each, so the stack holds ``n_poses * copies`` images in shuffled order.
    ``shift_std_px``: standard deviation of the in-plane shifts, Gaussian or uniform
    (``shift_distribution``; uniform on +-sqrt(3)*std, same std). ``snr``: dataset-level signal
    variance / noise variance (None = no noise). ``pixel_size`` None means 1 Å for the built-in
    phantoms and the map's (resampled) voxel size for an MRC.
    """

    phantom: str = "lshape"
    box: int = 40
    n_particles: int = 10000
    pose_sampling: str = "random"
    grid_step_deg: float = 5.0
    grid_n_psi: int = 1
    copies: int = 1
    shift_std_px: float = 0.0
    shift_distribution: str = "gaussian"
    snr: float | None = 0.1
    hinge_levels: int = 32
    max_angle_deg: float = 60.0
    ctf: bool = False
    defocus_range: tuple[float, float] = (10000.0, 25000.0)
    astigmatism: float = 0.0         # Å: |DefocusU - DefocusV| uniform in [0, this], angle uniform
    voltage: float = 300.0
    cs: float = 2.7
    amp_contrast: float = 0.1
    pixel_size: float | None = None
    seed: int = 0
    chunk_size: int = 2000
    keep_clean: bool = False

    def validate(self) -> None:
        check_fields(self)
        if self.phantom not in PHANTOMS and not str(self.phantom).lower().endswith((".mrc", ".map")):
            raise ConfigError(f"phantom must be one of {PHANTOMS} or an .mrc/.map path, got {self.phantom!r}")
        if int(self.box) != self.box or self.box < 8:
            raise ConfigError(f"box must be an integer >= 8, got {self.box}")
        if self.pose_sampling not in ("random", "grid"):
            raise ConfigError(f"pose_sampling must be 'random' or 'grid', got {self.pose_sampling!r}")
        if self.pose_sampling == "random" and self.n_particles < 1:
            raise ConfigError(f"n_particles must be >= 1, got {self.n_particles}")
        if self.pose_sampling == "grid" and (self.grid_step_deg <= 0 or self.grid_n_psi < 1):
            raise ConfigError("grid sampling needs grid_step_deg > 0 and grid_n_psi >= 1")
        if self.copies < 1 or self.chunk_size < 1 or self.hinge_levels < 2:
            raise ConfigError("copies and chunk_size must be >= 1, hinge_levels >= 2")
        if self.shift_std_px < 0 or self.shift_distribution not in ("gaussian", "uniform"):
            raise ConfigError("shift_std_px must be >= 0 and shift_distribution 'gaussian' or 'uniform'")
        if self.snr is not None and not (self.snr > 0 and np.isfinite(self.snr)):
            raise ConfigError(f"snr must be a positive number (or None for no noise), got {self.snr}")
        lo, hi = self.defocus_range
        if self.ctf and not (0 <= lo <= hi):
            raise ConfigError(f"defocus_range must be (min, max) with 0 <= min <= max Å, got {self.defocus_range}")
        if self.ctf and not 0 <= self.astigmatism <= 2 * lo:
            raise ConfigError(f"astigmatism must lie in [0, 2 x the smallest defocus] Å, got {self.astigmatism}")
        if self.ctf and not (self.voltage > 0 and 0 <= self.amp_contrast <= 1):
            raise ConfigError(f"a CTF needs voltage > 0 kV and amp_contrast in [0, 1], got {self.voltage}, "
                              f"{self.amp_contrast}")
        if self.pixel_size is not None and not (self.pixel_size > 0 and np.isfinite(self.pixel_size)):
            raise ConfigError(f"pixel_size must be a finite number > 0, got {self.pixel_size}")


@dataclass
class SimulatedDataset:
    """What :func:`simulate` wrote, and the truth arrays (as in ``truth.npz``)."""

    out_dir: Path
    stack: Path
    star: Path
    truth_file: Path
    volumes: list[Path] = field(repr=False)
    clean: Path | None
    config: SimulationConfig
    truth: dict = field(repr=False)

    @property
    def n_particles(self) -> int:
        return len(self.truth["rotations"])


def _conformations(cfg: SimulationConfig) -> tuple[list[np.ndarray], np.ndarray, float]:
    """Phantom volumes, the parameter t of each, and the pixel size to use."""
    if cfg.phantom == "lshape":
        return [lshape_volume(cfg.box)], np.zeros(1), cfg.pixel_size or 1.0
    if cfg.phantom in ("hinge", "two_state"):
        ts = np.linspace(0.0, 1.0, cfg.hinge_levels if cfg.phantom == "hinge" else 2)
        vols = [hinge_volume(cfg.box, float(t), cfg.max_angle_deg) for t in ts]
        return vols, ts, cfg.pixel_size or 1.0
    vol, voxel = volume_from_mrc(cfg.phantom, cfg.box)
    return [vol], np.zeros(1), cfg.pixel_size or voxel or 1.0


def _draw_poses(cfg: SimulationConfig, rng: np.random.Generator, n_conf: int) -> dict:
    """Per clean projection: rotation, shift, conformation index and (with ctf) defocus."""
    if cfg.pose_sampling == "grid":
        rot = grid_rotations(cfg.grid_step_deg, cfg.grid_n_psi)
    else:
        rot = random_rotations(cfg.n_particles, rng)
    n = len(rot)
    if cfg.shift_distribution == "gaussian":
        shifts = rng.normal(0.0, cfg.shift_std_px, (n, 2))
    else:
        half = np.sqrt(3.0) * cfg.shift_std_px
        shifts = rng.uniform(-half, half, (n, 2))
    poses = {"rotations": rot, "shifts": shifts, "conformation": rng.integers(0, n_conf, n)}
    if cfg.ctf:
        poses["defocus"] = rng.uniform(*cfg.defocus_range, n)
        # U and V about the mean defocus; drawn only when asked, so other datasets stay the same
        poses["astigmatism"] = rng.uniform(0.0, cfg.astigmatism, n) if cfg.astigmatism > 0 else np.zeros(n)
        poses["defocus_angle"] = rng.uniform(0.0, 180.0, n) if cfg.astigmatism > 0 else np.zeros(n)
    return poses


def _defocus_uv(defocus, astigmatism) -> tuple[np.ndarray, np.ndarray]:
    """(DefocusU, DefocusV) Å from the mean defocus and |U - V|."""
    return defocus + 0.5 * astigmatism, defocus - 0.5 * astigmatism


def _ctf_columns(cfg: SimulationConfig, defocus: np.ndarray, astigmatism: np.ndarray,
                 angle: np.ndarray) -> dict:
    """RELION CTF columns for per-particle mean defocus, astigmatism and its angle."""
    n = len(defocus)
    u, v = _defocus_uv(defocus, astigmatism)
    return {"rlnDefocusU": u, "rlnDefocusV": v, "rlnDefocusAngle": angle,
            "rlnVoltage": np.full(n, float(cfg.voltage)), "rlnSphericalAberration": np.full(n, float(cfg.cs)),
            "rlnAmplitudeContrast": np.full(n, float(cfg.amp_contrast)), "rlnPhaseShift": np.zeros(n)}


def _write_clean(path: Path, cfg, vols, poses, pixel_size, progress) -> tuple[float, float]:
    """Project every pose into a clean stack (pose order); return the dataset's (mean, variance)."""
    n, box = len(poses["rotations"]), cfg.box
    total, total_sq = 0.0, 0.0
    with StackWriter(path, n, box, pixel_size) as writer, \
            tqdm(total=n, desc="projecting", unit="img", disable=not progress) as bar:
        for start in range(0, n, cfg.chunk_size):
            sl = slice(start, min(n, start + cfg.chunk_size))
            conf = poses["conformation"][sl]
            imgs = np.empty((len(conf), box, box), dtype=np.float32)
            # Image formation as the model's (model/forward.py: project and shift, then the CTF),
            # but by the numpy reference projector and ctf.py, on purpose: the simulator is the
            # ground truth the TensorFlow forward model is tested against, so it shares no code
            # with it.
            for j in np.unique(conf):  # one projector call per conformation present
                m = conf == j
                imgs[m] = project_reference(vols[j], poses["rotations"][sl][m], poses["shifts"][sl][m])
            if cfg.ctf:
                u, v = _defocus_uv(poses["defocus"][sl], poses["astigmatism"][sl])
                ctf = compute_ctf(box, pixel_size, u, v, poses["defocus_angle"][sl], cfg.voltage, cfg.cs,
                                  cfg.amp_contrast)
                imgs = apply_ctf(imgs, ctf)
            writer.write(imgs)
            x = imgs.astype(np.float64)
            total += x.sum()
            total_sq += np.square(x).sum()
            bar.update(len(imgs))
    count = n * box * box
    mean = total / count
    return mean, max(total_sq / count - mean * mean, 0.0)


def simulate(cfg: SimulationConfig, out_dir: str | os.PathLike, progress: bool = True) -> SimulatedDataset:
    """Simulate a particle dataset from ``cfg`` into ``out_dir`` (created; files there are replaced).

    Writes ``particles.mrcs`` (float32, pixel size in the header), ``particles.star`` (RELION 3.1
    with optics block: true Euler angles, origins = -shift, CTF columns when ``cfg.ctf``),
    ``volumes/conformation_XXX.mrc`` (the truth maps, voxel size set), ``truth.npz`` and
    ``config.json``; with ``keep_clean`` also ``clean.mrcs`` (one noiseless image per pose, in pose
    order; ``truth["pose_index"]`` maps each particle to it).

    Image formation: project (reference projector), then the CTF (``cfg.ctf``), then white Gaussian
    noise. The SNR is dataset-level: noise std = sqrt(var(all clean pixels of the dataset) / snr), so
    every image gets the same noise level, as on a real detector, and images of sparse views are
    not made noisier than the rest. Everything is drawn from ``cfg.seed``: the same config gives the
    same files, whatever ``chunk_size``. Memory stays at a few chunks: the clean projections go to a
    disk stack first (their variance fixes the noise level), then noise is added chunk by chunk.
    """
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vols, vol_t, pixel_size = _conformations(cfg)
    # independent streams: the noise never shifts the poses, whatever the chunking
    pose_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(2))
    poses = _draw_poses(cfg, pose_rng, len(vols))
    n_poses = len(poses["rotations"])
    pose_index = pose_rng.permutation(np.repeat(np.arange(n_poses), cfg.copies))
    n = len(pose_index)

    clean_path = out / "clean.mrcs"
    if not cfg.keep_clean:
        fd, tmp = tempfile.mkstemp(prefix=".clean-", suffix=".mrcs", dir=out)
        os.close(fd)
        clean_path = Path(tmp)
    try:
        mean, signal_var = _write_clean(clean_path, cfg, vols, poses, pixel_size, progress)
        if cfg.snr is not None and signal_var <= 0:
            raise InputError("the clean projections are constant: no signal to set an SNR against", cfg.phantom)
        noise_std = 0.0 if cfg.snr is None else float(np.sqrt(signal_var / cfg.snr))
        clean = open_stack(clean_path)
        stack_path = out / "particles.mrcs"
        with StackWriter(stack_path, n, cfg.box, pixel_size) as writer, \
                tqdm(total=n, desc="adding noise", unit="img", disable=not progress) as bar:
            for start in range(0, n, cfg.chunk_size):
                idx = pose_index[start:start + cfg.chunk_size]
                imgs = clean[idx]
                if noise_std > 0:
                    imgs += noise_std * noise_rng.standard_normal(imgs.shape, dtype=np.float32)
                writer.write(imgs)
                bar.update(len(idx))
        del clean
    finally:
        if not cfg.keep_clean:
            clean_path.unlink(missing_ok=True)

    vol_paths = []
    for j, v in enumerate(vols):
        vol_paths.append(out / "volumes" / f"conformation_{j:03d}.mrc")
        write_volume(vol_paths[-1], v, pixel_size)

    rotations, shifts = poses["rotations"][pose_index], poses["shifts"][pose_index]
    conformation = poses["conformation"][pose_index]
    truth = {
        "rotations": rotations, "quaternions": matrix_to_quaternion(rotations),
        "euler": matrix_to_relion_euler(rotations), "shifts": shifts,
        "pose_index": pose_index, "conformation": conformation, "t": vol_t[conformation],
        "volume_t": vol_t, "volume_files": np.array([str(p.relative_to(out)) for p in vol_paths]),
        "snr": np.nan if cfg.snr is None else float(cfg.snr), "signal_mean": mean,
        "signal_variance": signal_var, "noise_std": noise_std, "pixel_size": float(pixel_size),
        "box": int(cfg.box),
    }
    star_path = out / "particles.star"
    columns = {"rlnImageName": make_image_names(stack_path, n, relative_to=star_path)}
    if cfg.ctf:
        truth["defocus"] = poses["defocus"][pose_index]
        columns.update(_ctf_columns(cfg, truth["defocus"], poses["astigmatism"][pose_index],
                                    poses["defocus_angle"][pose_index]))
    write_particles_star(star_path, pd.DataFrame(columns), poses=(rotations, shifts),
                         pixel_size=pixel_size, box=cfg.box)
    truth_path = out / "truth.npz"
    with atomic_path(truth_path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **truth)
    save_config(cfg, out / "config.json")
    return SimulatedDataset(out, stack_path, star_path, truth_path, vol_paths,
                            clean_path if cfg.keep_clean else None, cfg, truth)


def load_truth(path: str | os.PathLike) -> dict:
    """``truth.npz`` (or the folder holding it) -> dict of arrays (scalars as Python numbers)."""
    p = Path(path)
    if p.is_dir():
        p = p / "truth.npz"
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read simulation truth ({e})", p) from None

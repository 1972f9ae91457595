"""The tutorial path as library calls, and ``cryovae demo`` (what ``make demo`` runs).

A tutorial *workdir* holds everything the notebooks pass to each other::

    WORKDIR/simulated/        the embedded hinge dataset (only when no STAR file is given):
                              particles.star/.mrcs, truth.npz (per-particle hinge parameter t),
                              volumes/conformation_XXX.mrc (the truth map of every hinge level)
    WORKDIR/preprocessed/     particles.star/.mrcs, particles_split.npz  (01_preprocess)
    WORKDIR/<run name>/       the training run                           (02_train)
    WORKDIR/evaluate/         reconstruction, FSC JSON/PNG               (04_evaluate)
    WORKDIR/landscape/        latents, trajectory MRCs, kept particles   (05_latent_landscape)

The embedded dataset is the project's *hinge* phantom (``synthetic.hinge_volume``): the thesis'
L whose short bar is lifted out of plane by 0..60 degrees in 32 equally spaced levels, one level
drawn per particle, so the latent landscape has a real, known motion to recover.
``ensure_tutorial_data`` / ``ensure_tutorial_run`` create what is missing, so every notebook also
runs on its own. ``cryovae demo`` simulates, preprocesses, trains for a wall-clock budget, writes
a reconstruction and its FSC against the truth, measures how well the latent recovers the hinge
angle (``latent_vs_truth``), then executes the notebooks on the same workdir and saves them as
HTML. Headless: matplotlib (Agg) draws the PNGs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryovae_nb.atomic import atomic_path, write_json_atomic, write_text_atomic
from cryovae_nb.errors import ConfigError, InputError
from cryovae_nb.model.batch import Batch
from cryovae_nb.training.config import TrainConfig
from cryovae_nb.training.rundir import RunFolder

NOTEBOOKS = ("01_preprocess.ipynb", "02_train.ipynb", "04_evaluate.ipynb", "05_latent_landscape.ipynb")

# The tutorial's model and optimiser settings, in this one place: tutorial_train_config starts
# from them, and so do ensure_tutorial_run, 02_train (its parameters default to None = these) and
# `cryovae demo` (DemoSettings.model holds only the demo's overrides). Any ModelConfig or
# TrainConfig field can be added here. The thesis' network (10x512 encoder, 20x200 decoder,
# lr 1e-5) needs hours on a CPU; this one trains in minutes with known poses.
TUTORIAL_MODEL = dict(latent_dim=8, encoder_layers=3, encoder_units=256, decoder_layers=2,
                      decoder_units=256)
TUTORIAL_TRAIN = dict(batch_size=64, learning_rate=1e-3, pose_mode="known")

TUTORIAL_PHANTOM = "hinge"   # the embedded dataset (synthetic.PHANTOMS: lshape, hinge, two_state)
STATE_BINS = 4               # latent_vs_truth: the hinge angle cut into this many states


# ---------------------------------------------------------------------------------------------
# the workdir


@dataclass
class TutorialData:
    """Where a tutorial's data lives; ``truth*`` are None / empty for a user's own STAR file."""

    workdir: Path
    raw: Path                        # the particles as acquired (STAR or stack)
    particles: Path                  # preprocessed STAR
    split: Path                      # preprocessed split (.npz with is_test)
    truth: Path | None               # simulation truth.npz
    datadir: Path | None = None      # where the raw STAR file's image paths point

    @property
    def simulated(self) -> bool:
        return self.truth is not None

    @property
    def truth_volume_files(self) -> list[Path]:
        """The truth map of every simulated conformation, in order of the hinge parameter t (as
        ``truth.npz`` lists them; before simulating, those the default tutorial phantom will write)."""
        return [] if self.truth is None else _truth_table(self.truth)[1]

    @property
    def truth_volume(self) -> Path | None:
        """The *reference* truth map, for a single (consensus) reconstruction's FSC: the simulated
        conformation nearest the middle of the motion (t = 0.5; the only one of a rigid phantom)."""
        if self.truth is None:
            return None
        t, files = _truth_table(self.truth)
        return files[reference_level(t)]

    def run_dir(self, run_name: str = "run") -> Path:
        return self.workdir / run_name


def reference_level(volume_t) -> int:
    """Index of the conformation nearest the middle of the motion (t = 0.5; ties: the lower)."""
    return int(np.argmin(np.abs(np.asarray(volume_t, np.float64) - 0.5)))


def _truth_table(truth: Path) -> tuple[np.ndarray, list[Path]]:
    """(t of each truth map, their paths) from ``truth.npz``, or, before the simulation, those of
    the default tutorial phantom (nothing is written)."""
    sim = truth.parent
    if truth.is_file():
        try:
            with np.load(truth, allow_pickle=False) as f:  # lazy: only these two small arrays are read
                return np.asarray(f["volume_t"], np.float64), [sim / str(p) for p in f["volume_files"]]
        except (KeyError, OSError, ValueError) as e:
            raise InputError(f"cannot read the simulation truth ({e})", truth) from None
    from cryovae_nb.synthetic import SimulationConfig

    cfg = SimulationConfig(phantom=TUTORIAL_PHANTOM)
    levels = {"hinge": cfg.hinge_levels, "two_state": 2}.get(cfg.phantom, 1)
    t = np.linspace(0.0, 1.0, levels) if levels > 1 else np.zeros(1)
    return t, [sim / "volumes" / f"conformation_{j:03d}.mrc" for j in range(levels)]


def tutorial_paths(workdir: str | os.PathLike, star_file: str | os.PathLike | None = None,
                   datadir: str | os.PathLike | None = None) -> TutorialData:
    """The paths of a tutorial workdir (nothing is written; the truth maps' names are looked up
    in ``truth.npz`` only when ``truth_volume`` / ``truth_volume_files`` are asked for)."""
    w = Path(workdir)
    pre = w / "preprocessed" / "particles"
    if star_file is None:
        sim = w / "simulated"
        return TutorialData(w, sim / "particles.star", pre.with_suffix(".star"),
                            pre.with_name("particles_split.npz"), sim / "truth.npz")
    return TutorialData(w, Path(star_file), pre.with_suffix(".star"), pre.with_name("particles_split.npz"),
                        None, None if datadir is None else Path(datadir))


def simulate_tutorial_data(workdir: str | os.PathLike, *, box: int = 40, n_particles: int = 2000,
                           snr: float = 0.1, seed: int = 0, progress: bool = True,
                           phantom: str = TUTORIAL_PHANTOM):
    """Simulate the embedded dataset into ``WORKDIR/simulated``: by default the hinge phantom
    (the thesis' L with its short bar lifted 0..60 degrees, 32 levels; ``phantom`` "lshape" is the
    rigid L of thesis §3.4.1, "two_state" its two extremes), random poses, SNR 0.1. An existing
    dataset made with the same settings is reused."""
    from cryovae_nb.config import load_config, to_dict
    from cryovae_nb.synthetic import SimulatedDataset, SimulationConfig, load_truth, simulate

    cfg = SimulationConfig(phantom=phantom, box=int(box), n_particles=int(n_particles), snr=snr,
                           seed=int(seed))
    out = Path(workdir) / "simulated"
    paths = tutorial_paths(workdir)
    if (out / "config.json").is_file() and paths.raw.is_file() and paths.truth.is_file():
        try:
            same = to_dict(load_config(SimulationConfig, out / "config.json")) == to_dict(cfg)
        except Exception:  # an unreadable old config: simulate again
            same = False
        if same:
            return SimulatedDataset(out, out / "particles.mrcs", paths.raw, paths.truth,
                                    paths.truth_volume_files, None, cfg, load_truth(paths.truth))
    return simulate(cfg, out, progress=progress)


def ensure_tutorial_data(workdir: str | os.PathLike, star_file: str | os.PathLike | None = None, *,
                         datadir: str | os.PathLike | None = None, box: int = 40,
                         n_particles: int = 2000, snr: float = 0.1, seed: int = 0,
                         phantom: str = TUTORIAL_PHANTOM, preprocess=None,
                         progress: bool = True) -> TutorialData:
    """Make sure the workdir holds preprocessed particles (what 01_preprocess writes).

    With ``star_file`` None the hinge dataset is simulated when missing (``box``,
    ``n_particles``, ``snr``, ``seed``, ``phantom``); otherwise the user's STAR file is read. Preprocessing
    (``preprocess``: a ``PreprocessConfig``, default tanh + mask) runs only when its output is
    missing: existing data, as a previous notebook left it, is never replaced here.
    """
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack

    paths = tutorial_paths(workdir, star_file, datadir)
    if star_file is None and not paths.raw.is_file():
        simulate_tutorial_data(workdir, box=box, n_particles=n_particles, snr=snr, seed=seed,
                               phantom=phantom, progress=progress)
    elif star_file is not None and not paths.raw.is_file():
        raise InputError("STAR file not found", paths.raw)
    if not (paths.particles.is_file() and paths.split.is_file()):
        paths.particles.parent.mkdir(parents=True, exist_ok=True)
        preprocess_stack(paths.raw, paths.particles, preprocess or PreprocessConfig(),
                         datadir=datadir, progress=progress)
    return paths


def tutorial_train_config(data: TutorialData | str | os.PathLike, run_dir: str | os.PathLike, *,
                          max_steps: int = 100_000, max_time_s: float | None = 180.0, seed: int = 0,
                          log_every: int = 25, sample_every: int = 100, checkpoint_every: int = 500,
                          **overrides):
    """A ``TrainConfig`` for the tutorial: the small model of ``TUTORIAL_MODEL`` and the settings
    of ``TUTORIAL_TRAIN``; any ``ModelConfig`` or ``TrainConfig`` field can be overridden by name
    (each name goes where it belongs, in the two dicts too; a name both configs have, such as
    ``learning_rate``, goes to the ``TrainConfig``)."""
    from cryovae_nb.model import ModelConfig

    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_kw, train_kw = {}, {}
    for k, v in {**TUTORIAL_MODEL, **TUTORIAL_TRAIN, **overrides}.items():
        if k in train_fields and k != "model":   # batch_size, learning_rate, pose_mode go here
            train_kw[k] = v
        elif k in model_fields:
            model_kw[k] = v
        else:
            raise ConfigError(f"tutorial_train_config: unknown setting {k!r}")
    if isinstance(data, TutorialData):
        train_kw.setdefault("split_file", str(data.split) if data.split.is_file() else None)
        data = data.particles
    # this function's own arguments win over the same names in the dicts
    train_kw.update(max_steps=int(max_steps), max_time_s=max_time_s, seed=int(seed),
                    log_every=int(log_every), sample_every=int(sample_every),
                    checkpoint_every=int(checkpoint_every))
    return TrainConfig(data=str(data), run_dir=str(run_dir), model=ModelConfig(**model_kw), **train_kw)


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    return RunFolder(run_dir).has_checkpoint()


def ensure_tutorial_run(workdir: str | os.PathLike, star_file: str | os.PathLike | None = None, *,
                        run_name: str = "run", datadir: str | os.PathLike | None = None,
                        budget_s: float = 120.0, max_steps: int = 100_000, progress: bool = True,
                        data_kwargs: dict | None = None, **train_overrides) -> Path:
    """The run directory ``WORKDIR/run_name``, trained first (for ``budget_s`` seconds, tutorial
    settings) when it has no checkpoint, so the evaluation notebooks run on their own."""
    run_dir = Path(workdir) / run_name
    if has_checkpoint(run_dir):
        return run_dir
    from cryovae_nb.training.trainer import Trainer

    data = ensure_tutorial_data(workdir, star_file, datadir=datadir, progress=progress, **(data_kwargs or {}))
    cfg = tutorial_train_config(data, run_dir, max_steps=max_steps, max_time_s=budget_s, **train_overrides)
    Trainer(cfg, progress=progress).train()
    return run_dir


# ---------------------------------------------------------------------------------------------
# evaluation helpers shared by the notebooks and the demo


def _resampled(vol: np.ndarray, voxel: float | None, box: int | None) -> tuple[np.ndarray, float]:
    from cryovae_nb.synthetic import resample_volume

    voxel = float(voxel or 1.0)
    if box is not None and box != vol.shape[0]:
        voxel = voxel * vol.shape[0] / box
        vol = resample_volume(vol, box)
    return np.asarray(vol, np.float32), voxel


def _need_truth(data: TutorialData) -> Path:
    if data.truth is None:
        raise InputError("no ground truth: the data is not the simulated tutorial dataset", data.raw)
    return data.truth


def truth_volume(data: TutorialData, box: int | None = None) -> tuple[np.ndarray, float]:
    """The simulated *reference* truth (``data.truth_volume``: the conformation nearest the middle
    of the motion), Fourier-resampled to ``box`` (the box the model saw after coarsening /
    cropping; the physical extent is kept) -> (volume, voxel size Å)."""
    from cryovae_nb.io import read_volume

    _need_truth(data)
    return _resampled(*read_volume(data.truth_volume), box)


def truth_volumes(data: TutorialData, box: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Every simulated conformation's truth map, resampled like `truth_volume` ->
    (volumes ``(S, n, n, n)``, their hinge parameter t ``(S,)`` in [0, 1], voxel size Å)."""
    from cryovae_nb.io import read_volume

    t, files = _truth_table(_need_truth(data))
    vols = [_resampled(*read_volume(f), box) for f in files]
    return np.stack([v for v, _ in vols]), t, vols[0][1]


def reference_t(data: TutorialData) -> float:
    """The hinge parameter t of the reference truth map (``data.truth_volume``)."""
    t, _ = _truth_table(_need_truth(data))
    return float(t[reference_level(t)])


def simulation_config(data: TutorialData):
    """The ``SimulationConfig`` the tutorial data was simulated with (``simulated/config.json``)."""
    from cryovae_nb.config import load_config
    from cryovae_nb.synthetic import SimulationConfig

    return load_config(SimulationConfig, _need_truth(data).parent / "config.json")


def truth_volume_at(data: TutorialData, t: float, box: int | None = None) -> tuple[np.ndarray, float]:
    """The truth map at any hinge parameter ``t`` in [0, 1] (also between the simulated levels),
    made like the simulation's (``synthetic.hinge_volume``) and resampled like `truth_volume` ->
    (volume, voxel size Å). A rigid phantom has one map, whatever ``t``."""
    from cryovae_nb.synthetic import hinge_volume

    cfg = simulation_config(data)
    if cfg.phantom not in ("hinge", "two_state"):
        return truth_volume(data, box)
    return _resampled(hinge_volume(cfg.box, float(t), cfg.max_angle_deg), cfg.pixel_size, box)


def truth_t(data: TutorialData) -> np.ndarray | None:
    """Each particle's true hinge parameter t in [0, 1] (truth.npz; the preprocessed particles keep
    the simulated order), or None for a user's own data."""
    if data.truth is None:
        return None
    from cryovae_nb.synthetic import load_truth

    return np.asarray(load_truth(data.truth)["t"], np.float64)


def max_angle_deg(data: TutorialData) -> float:
    """The hinge angle at t = 1 (degrees) of the simulated data (0 for a rigid phantom)."""
    cfg = simulation_config(data)
    return float(cfg.max_angle_deg) if cfg.phantom in ("hinge", "two_state") else 0.0


def consensus_volume(run, indices=None, max_particles: int = 2000) -> np.ndarray:
    """The volume at the mean latent of (up to ``max_particles`` of) the run's particles: one
    reconstruction for a homogeneous dataset, the 'average' conformation otherwise. The particles
    are encoded with their poses (a known-pose encoder may read them)."""
    idx = np.arange(len(run.particles)) if indices is None else np.asarray(indices)
    idx = idx[:max_particles]
    z = run.encode(run.particles.subset(idx), progress=False).z_mean
    return run.decode(z.mean(axis=0))


# ---------------------------------------------------------------------------------------------
# the latent landscape against the simulated motion


@dataclass
class MotionReport:
    """How well a run's latent recovers the simulated hinge motion (`latent_vs_truth`).

    ``figures`` is JSON-ready (what ``summary.json`` holds and `format_motion` prints); the arrays
    are the particles used (``indices`` into the run's data), their latent means ``z``, true ``t``
    and state ``labels``, the states' mean ``state_t``, their truth maps ``truths`` and the maps
    decoded at each state's mean latent ``decoded`` (aligned onto the truth for learned poses).
    """

    figures: dict
    indices: np.ndarray
    z: np.ndarray
    t: np.ndarray
    labels: np.ndarray
    state_t: np.ndarray
    truths: np.ndarray
    decoded: np.ndarray

    def __str__(self) -> str:
        return format_motion(self.figures)


def _finite(x):
    """float / list of floats for JSON: inf and nan (an FSC that never crossed) become None."""
    a = np.asarray(x, np.float64)
    if a.ndim == 0:
        return float(a) if np.isfinite(a) else None
    return [_finite(v) for v in a]


def state_labels(t, bins: int = STATE_BINS) -> np.ndarray:
    """The hinge parameter ``t`` in [0, 1] cut into ``bins`` equal ranges -> state 0..bins-1."""
    t = np.asarray(t, np.float64)
    return np.clip((t * bins).astype(np.int64), 0, bins - 1)


def latent_vs_truth(run, data: TutorialData, *, z=None, indices=None, bins: int = STATE_BINS,
                    max_particles: int | None = 4000, seed: int = 0) -> MotionReport | None:
    """Does the run's latent carry the simulated motion? The figures of `cryovae_nb.heterogeneity`
    against the truth, for (up to ``max_particles`` of) the run's particles.

    ``z`` (latent means, e.g. from 05_latent_landscape) with ``indices`` (their rows in the run's
    data; default all in order) skips encoding; otherwise the particles are encoded with their
    poses. Figures: ``spearman_pc`` / ``knn_r2`` (`heterogeneity.motion_recovery`: |Spearman rho|
    of the best latent principal component with t, cross-validated kNN R^2 of t from z) and, with t
    cut into ``bins`` states, the maps decoded at each state's mean latent against each state's
    truth (`heterogeneity.state_volumes`; the truth at the state's mean t). Known poses compare in
    place; learned poses align the middle state onto its truth (both hands) and move all alike.
    Returns None when there is no truth (own data) or no motion in it (a rigid phantom).
    """
    from cryovae_nb.heterogeneity import motion_recovery, state_volumes

    t_all = truth_t(data)
    if t_all is None:
        return None
    n = len(run.particles)
    if len(t_all) != n:
        raise InputError(f"the simulation truth has {len(t_all)} particles but the run's data has {n}: "
                         "not the same dataset", data.truth)
    if z is None:
        idx = np.arange(n) if indices is None else np.asarray(indices, np.int64)
        if max_particles is not None and len(idx) > max_particles:
            idx = np.sort(np.random.default_rng(seed).choice(idx, int(max_particles), replace=False))
        z = run.encode(run.particles.subset(idx), progress=False).z_mean
    else:
        z = np.asarray(z, np.float32)
        idx = np.arange(len(z)) if indices is None else np.asarray(indices, np.int64)
        if len(idx) != len(z):
            raise InputError(f"{len(z)} latents but {len(idx)} particle indices")
    t = t_all[idx]
    if np.ptp(t) == 0:
        return None
    motion = motion_recovery(z, t, seed=seed)
    raw = state_labels(t, bins)
    present = np.unique(raw)                      # a two-state phantom fills only the end bins
    labels = np.searchsorted(present, raw)
    state_t = np.array([t[labels == i].mean() for i in range(len(present))])
    truths = np.stack([truth_volume_at(data, c, run.box)[0] for c in state_t])
    known = run.config.model.pose_mode == "known"
    align_to = None if known else len(state_t) // 2
    sv = state_volumes(run.decode, z, labels, truths, run.pixel_size, align_to=align_to)
    angle = max_angle_deg(data)
    corr = np.asarray(sv["correlation"], np.float64)
    px = run.pixel_size
    figures = {
        "n_particles": int(len(z)), "max_angle_deg": angle,
        "spearman_pc": float(motion["spearman_pc"]), "best_pc": int(motion["best_pc"]),
        "spearman_dim": float(motion["spearman_dim"]), "knn_r2": float(motion["knn_r2"]),
        "states": int(len(state_t)), "state_t": _finite(state_t),
        "state_angle_deg": _finite(state_t * angle),
        "state_particles": np.bincount(labels, minlength=len(state_t)).tolist(),
        "state_correlation": _finite(np.diag(corr)), "correlation_matrix": _finite(corr),
        "own_closest": bool(sv["own_closest"]),
        "state_fsc05_A": _finite(sv["fsc05"]), "state_fsc0143_A": _finite(sv["fsc0143"]),
        "state_fsc05_px": _finite(np.asarray(sv["fsc05"]) / px),
        "consensus_correlation": _finite(sv["mean_latent_correlation"]),
        "consensus_fsc05_A": _finite(sv["mean_latent_fsc05"]),
        "aligned": align_to is not None,
    }
    return MotionReport(figures, idx, z, t, labels, state_t, truths, np.asarray(sv["volumes"], np.float32))


def _fmt_list(values, fmt: str = "{:.2f}") -> str:
    return ", ".join("n/a" if v is None else fmt.format(v) for v in values)


def format_motion(figures: dict | None) -> str:
    """One printed paragraph of `latent_vs_truth`'s figures (or why there are none)."""
    if not figures:
        return "latent vs truth: no simulated motion to compare with"
    f = figures
    aligned = " (aligned on the middle state's truth)" if f.get("aligned") else ""
    return (f"latent vs true hinge angle: |Spearman rho| {f['spearman_pc']:.2f} (best PC {f['best_pc'] + 1}), "
            f"kNN R^2 {f['knn_r2']:.2f} ({f['n_particles']} particles); decoded states closest to their "
            f"own truth{aligned}: {'yes' if f['own_closest'] else 'no'} (correlation with own truth "
            f"{_fmt_list(f['state_correlation'])} at {_fmt_list(f['state_angle_deg'], '{:.0f}°')}; "
            f"the one map at the mean latent: {_fmt_list(f['consensus_correlation'])})")


def motion_axis(latents, t=None, n_components: int = 5) -> dict:
    """The latent direction of the motion: of the first ``n_components`` principal components of
    ``latents``, the one whose coordinate is most Spearman-correlated with ``t`` (the same PCA
    and choice as `heterogeneity.motion_recovery`), oriented so that t grows along it; without
    ``t`` (own data) the first, the direction of largest spread.

    Returns ``{"pc": index, "direction": (d,) unit vector, "mean": (d,), "coords": (n,) each
    latent's coordinate along it, "rho": signed Spearman rho with t or None, "explained_variance":
    its fraction of the latents' variance}``.
    """
    from sklearn.decomposition import PCA

    from cryovae_nb.analysis import _as_latents

    z = _as_latents(latents)
    m = min(n_components, z.shape[1], len(z))
    mean = z.mean(0)
    pca = PCA(n_components=m, svd_solver="full").fit(z - mean)
    coords = (z - mean) @ pca.components_.T
    rho, pc = None, 0
    if t is not None:
        from scipy.stats import spearmanr

        t = np.asarray(t, np.float64)
        if len(t) != len(z):
            raise InputError(f"{len(z)} latents but {len(t)} truth values")
        r = [0.0 if np.ptp(coords[:, j]) == 0 or np.ptp(t) == 0 else float(spearmanr(coords[:, j], t).statistic)
             for j in range(m)]
        pc = int(np.argmax(np.abs(r)))
        rho = r[pc]
    direction = pca.components_[pc].astype(np.float64)
    sign = -1.0 if (rho is not None and rho < 0) else 1.0
    return {"pc": pc, "direction": sign * direction, "mean": mean, "coords": sign * coords[:, pc],
            "rho": None if rho is None else abs(rho), "explained_variance": float(pca.explained_variance_ratio_[pc])}


def axis_traversal(decode, latents, t=None, steps: int = 8, quantiles=(0.02, 0.98)):
    """Walk the latent `motion_axis` through the particles' mean, from the ``quantiles`` of their
    coordinates along it (not the extremes: single outliers would set the range) -> (coordinates
    ``(steps,)``, latents ``(steps, d)``, volumes ``(steps, n, n, n)``, the axis dict)."""
    from cryovae_nb.analysis import decode_volumes

    axis = motion_axis(latents, t)
    lo, hi = np.quantile(axis["coords"], quantiles)
    s = np.linspace(lo, hi, int(steps))
    path = (axis["mean"][None] + s[:, None] * axis["direction"][None]).astype(np.float32)
    return s, path, decode_volumes(decode, path), axis


def extreme_states(latents, t) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean latent of the particles at the lowest and at the highest true ``t`` (the two
    ends of the motion) -> (z0, z1, (their particle counts))."""
    z = np.asarray(latents, np.float64)
    t = np.asarray(t, np.float64)
    lo, hi = t == t.min(), t == t.max()
    return z[lo].mean(0).astype(np.float32), z[hi].mean(0).astype(np.float32), np.array([lo.sum(), hi.sum()])


def farthest_clusters_along(centres, axis: dict) -> tuple[int, int]:
    """The two cluster centres farthest apart along a `motion_axis` (lowest coordinate first)."""
    c = (np.asarray(centres, np.float64) - axis["mean"]) @ axis["direction"]
    return int(np.argmin(c)), int(np.argmax(c))


def side_view(volume, axis: int = 2) -> np.ndarray:
    """A volume's projection along ``axis`` (default x: the hinge's axis, so the moving bar's
    angle shows), for display."""
    return np.asarray(volume, np.float32).sum(axis=axis)


def plot_strips(rows: dict, col_titles=None, *, title: str | None = None, axis: int = 2,
                size: float = 1.5, inline: bool = True):
    """Rows of volumes side by side, each shown as its projection along ``axis`` (`side_view`),
    ``{row name: volumes}``; the grey scale is clipped at 60 % of the bright end so that a thin
    moving part stays visible next to a thick one. ``inline``: a pyplot figure (a notebook shows
    it), else a detached one for saving. Returns the figure."""
    rows = {k: [np.asarray(v) for v in vols] for k, vols in rows.items()}
    cols = max(len(v) for v in rows.values())
    shape = (size * cols + 0.6, size * len(rows) + (0.4 if title else 0.1))
    if inline:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(rows), cols, figsize=shape, squeeze=False)
    else:
        fig, axes = _figure(*shape, rows=len(rows), cols=cols)
    axes = np.asarray(axes).reshape(len(rows), cols)
    for r, (name, vols) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(vols):
                ax.set_axis_off()
                continue
            img = side_view(vols[c], axis)
            top = float(np.quantile(img, 0.98))
            ax.imshow(img, cmap="gray", origin="lower", vmin=0.0, vmax=0.6 * top if top > 0 else None)
            label = col_titles.get(name) if isinstance(col_titles, dict) else col_titles
            if label is not None and c < len(label):
                ax.set_title(label[c], fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_states(report: MotionReport, frames=None, *, title: str | None = None, inline: bool = True):
    """`plot_strips` of a `MotionReport`: each state's truth (titled with its hinge angle) above
    the map decoded at its mean latent (titled with their correlation), and, with ``frames``, a
    trajectory below."""
    angle = report.figures["max_angle_deg"]
    rows = {"truth": report.truths, "decoded": report.decoded}
    titles = {"truth": [f"{t * angle:.0f}°" for t in report.state_t],
              "decoded": [("corr n/a" if c is None else f"corr {c:.2f}") for c in report.figures["state_correlation"]]}
    if frames is not None:
        rows["trajectory"] = frames
    return plot_strips(rows, titles, title=title, inline=inline)


def save_states_png(path: str | os.PathLike, report: MotionReport, frames=None,
                    title: str | None = None) -> None:
    """`plot_states` into a PNG (atomic; headless)."""
    _save(plot_states(report, frames, title=title, inline=False), path)


def compare_to_reference(volume, reference, pixel_size: float, *, frame_known: bool = False) -> dict:
    """FSC of ``volume`` against ``reference`` after rigid alignment trying both hands.

    Returns ``{"aligned": AlignResult, "fsc": FSCResult, "fsc_unaligned": FSCResult | None}``.
    With ``frame_known`` (a known-pose run shares the reference's frame) the FSC without alignment
    is computed too: interpolating onto an aligned grid blurs slightly, so both are worth seeing.
    """
    from cryovae_nb import analysis

    al = analysis.align(volume, reference, try_mirror=True)
    return {"aligned": al, "fsc": analysis.fsc(al.aligned, reference, pixel_size, mask="sphere"),
            "fsc_unaligned": analysis.fsc(volume, reference, pixel_size, mask="sphere") if frame_known else None}


def fsc_summary(result) -> dict:
    """Resolutions of an ``FSCResult`` in Å and px, for a JSON file or a printout."""
    px = result.pixel_size
    return {"resolution_05_A": result.resolution_05, "resolution_0143_A": result.resolution_0143,
            "resolution_05_px": result.resolution_05 / px, "resolution_0143_px": result.resolution_0143 / px,
            "crossed_05": bool(result.crossed_05), "crossed_0143": bool(result.crossed_0143),
            "nyquist_A": result.nyquist, "pixel_size_A": px}


def save_fsc_png(path: str | os.PathLike, curves: dict, title: str = "FSC against the ground truth") -> None:
    """Plot ``{label: FSCResult}`` with the 0.5 / 0.143 thresholds into a PNG (atomic)."""
    fig, ax = _figure(6.4, 4.0)
    for label, r in curves.items():
        ax.plot(r.frequencies, r.curve, marker=".", label=f"{label}: 0.5 at {r.resolution_05:.2f} Å, "
                f"0.143 at {r.resolution_0143:.2f} Å")
    for t, style in ((0.5, "--"), (0.143, ":")):
        ax.axhline(t, color="grey", ls=style, lw=1)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)


def save_preview_png(path: str | os.PathLike, raw: np.ndarray, processed: np.ndarray,
                     titles: tuple[str, str] = ("raw", "preprocessed")) -> None:
    """Two rows of particles, raw above preprocessed, each image scaled to its own range."""
    k = len(raw)
    fig, axes = _figure(1.3 * k, 2.9, rows=2, cols=k)
    axes = np.asarray(axes).reshape(2, k)
    for row, (imgs, title) in enumerate(((raw, titles[0]), (processed, titles[1]))):
        for j in range(k):
            ax = axes[row, j]
            ax.imshow(imgs[j], cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(title)
    _save(fig, path)


def _figure(w, h, rows=1, cols=1):
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless; a notebook's inline backend stays as it is
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    axes = fig.subplots(rows, cols)
    return fig, axes


def _save(fig, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_images(images, *, ncols: int = 8, title: str | None = None, labels=None, size: float = 1.3):
    """A grid of particle images in a (pyplot, so inline in a notebook) figure; returns it."""
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    k = len(images)
    rows = max(1, -(-k // ncols))
    cols = min(k, ncols) if k else 1
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + (0.4 if title else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i < k:
            ax.imshow(images[i], cmap="gray")
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_embeddings(embeddings: dict, colour_by: dict, *, size: float = 3.6):
    """2-D embeddings (``{method: analysis.Embedding}``) as scatter plots, one row per colouring
    ``{name: (n,) values}`` (values indexed like the latents; integer labels get a qualitative
    palette, anything else a colour bar). Returns the (pyplot) figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(colour_by), len(embeddings), squeeze=False,
                             figsize=(size * 1.15 * len(embeddings), size * len(colour_by)))
    for r, (name, values) in enumerate(colour_by.items()):
        values = np.asarray(values)
        labels = values.dtype.kind in "iub"
        for c, (m, e) in enumerate(embeddings.items()):
            ax = axes[r, c]
            sc = ax.scatter(e.coords[:, 0], e.coords[:, 1], c=values[e.indices], s=4,
                            cmap="tab10" if labels else "viridis")
            ax.set_title(f"{name}\n{e.note}", fontsize=8)
            ax.set_xlabel(f"{m} 1")
            ax.set_ylabel(f"{m} 2")
            if not labels:
                fig.colorbar(sc, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def plot_volumes(volumes, labels=None, *, title: str | None = None, size: float = 1.8):
    """Each volume as its three projections (along z, y and x): a row per volume; returns the figure."""
    import matplotlib.pyplot as plt

    vols = [np.asarray(v) for v in (volumes.values() if isinstance(volumes, dict) else volumes)]
    labels = list(volumes) if isinstance(volumes, dict) else (labels or [str(i) for i in range(len(vols))])
    fig, axes = plt.subplots(len(vols), 3, figsize=(3 * size, size * len(vols) + (0.4 if title else 0)),
                             squeeze=False)
    for r, (v, name) in enumerate(zip(vols, labels)):
        for c, (axis, plane) in enumerate(((0, "along z"), (1, "along y"), (2, "along x"))):
            ax = axes[r, c]
            ax.imshow(v.sum(axis=axis), cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(plane, fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def reconstruct_particles(run, particles, indices) -> tuple[np.ndarray, np.ndarray]:
    """(images, projections of their reconstructed volumes in their poses) for particle rows,
    projections through the sigmoid like the loss sees them (comparable with tanh-normalised
    images). Known-pose runs use the particles' poses."""
    idx = np.asarray(indices)
    sub = particles.subset(idx)
    images = np.asarray(sub.images[np.arange(len(idx))], np.float32)
    enc = run.encode(sub, progress=False)
    volumes = run.decode(enc.z_mean)
    rot, sh = enc.rotations.astype(np.float32), enc.shifts.astype(np.float32)
    proj = run.model.project(volumes, rot, sh)
    # plus the per-image offset the loss adds (ModelConfig.image_offset), as Trainer.reconstruct
    batch = Batch(images, indices=idx)
    if run.config.model.pose_mode == "known":
        batch = batch.replace(rotations=rot, shifts=sh)
    proj = np.asarray(run.model.add_offset(proj, run.model.encode(batch).get("offset")))
    return images, 1.0 / (1.0 + np.exp(-proj))


def reconstruction_errors(run, particles, indices=None, batch_size: int = 256) -> np.ndarray:
    """Per-particle reconstruction error (sigmoid cross-entropy summed over pixels, z = z_mean)
    of a trained run: the feature ``analysis.screen_particles`` flags bad particles with.
    Known-pose runs use the particles' poses, learned-pose runs the encoder's."""
    model = run.model
    idx = np.arange(len(particles)) if indices is None else np.asarray(indices)
    poses = particles.poses if run.config.model.pose_mode == "known" else None
    if run.config.model.pose_mode == "known" and poses is None:
        raise InputError("the run used known poses but the particles have none", run.config.data)
    out = []
    for s in range(0, len(idx), batch_size):
        b = idx[s:s + batch_size]
        batch = Batch(np.asarray(particles.images[b], np.float32), indices=b)
        if poses is not None:
            batch = batch.replace(rotations=np.asarray(poses.rotations[b], np.float32),
                                  shifts=np.asarray(poses.shifts[b], np.float32))
        losses = model.compute_losses(batch, training=False)
        out.append(np.asarray(losses["recon_per_sample"], np.float64))
    return np.concatenate(out) if out else np.zeros(0)


# ---------------------------------------------------------------------------------------------
# notebooks


def notebooks_dir() -> Path | None:
    """The repository's ``notebooks/`` (None when the package is installed without it)."""
    d = Path(__file__).resolve().parents[1] / "notebooks"
    return d if (d / NOTEBOOKS[0]).is_file() else None


def execute_notebook(path: str | os.PathLike, parameters: dict, cwd: str | os.PathLike, *,
                     timeout: int = 900, html: str | os.PathLike | None = None):
    """Run a tutorial notebook top to bottom with ``parameters`` injected after its cell tagged
    ``parameters`` (papermill style); optionally write it as HTML. Raises on the first error."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    idx = [i for i, c in enumerate(nb.cells)
           if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(idx) != 1:
        raise InputError(f"expected one cell tagged 'parameters', found {len(idx)}", path)
    cell = nbformat.v4.new_code_cell("# injected parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx[0] + 1, cell)
    env = dict(os.environ)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env)
    if html is not None:
        import logging

        from nbconvert import HTMLExporter

        logging.getLogger("traitlets").setLevel(logging.ERROR)  # "alternative text missing" on plots
        body, _ = HTMLExporter().from_notebook_node(nb)
        write_text_atomic(html, body)
    return nb


# ---------------------------------------------------------------------------------------------
# cryovae demo


@dataclass
class DemoSettings:
    """What ``cryovae demo`` does. The model and optimiser are the tutorial's (``TUTORIAL_MODEL``,
    ``TUTORIAL_TRAIN``); ``model`` holds only this demo's overrides (any ModelConfig or
    TrainConfig field, routed by `tutorial_train_config`), passed to 02_train as well."""

    n_particles: int = 5000
    box: int = 40
    snr: float = 0.1
    phantom: str = TUTORIAL_PHANTOM
    budget_s: float = 240.0
    pose_mode: str = "known"
    notebook_budget_s: float = 20.0      # extra training 02_train adds to the shared run
    # a fixed step count instead of the budgets (None: the budgets): the same training whatever
    # the machine's load, so the quick demo's outputs (and the tests on them) do not vary with it
    steps: int | None = None
    notebook_steps: int | None = None    # steps 02_train adds, with ``steps``
    embed_methods: tuple = ("umap", "pca", "tsne")
    model: dict = dataclasses.field(default_factory=dict)
    state_bins: int = STATE_BINS         # latent_vs_truth: the hinge angle cut into this many states
    max_encode: int = 4000               # particles encoded for the latent-vs-truth figures
    trajectory_steps: int = 6

    @classmethod
    def quick(cls) -> "DemoSettings":
        # seconds of everything: for the test suite and a smoke check
        return cls(n_particles=300, box=20, budget_s=8.0, notebook_budget_s=3.0, steps=150,
                   notebook_steps=10,
                   embed_methods=("pca", "tsne"),
                   model=dict(latent_dim=4, encoder_layers=1, encoder_units=64, decoder_layers=1,
                              decoder_units=64))


def add_demo_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", default="demo_output", help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and seconds of training (a smoke test, not a result)")
    parser.add_argument("--budget", type=float, default=None,
                        help="training wall-clock budget in seconds (default 240)")
    parser.add_argument("--steps", type=int, default=None,
                        help="train this many steps instead of for a wall-clock budget "
                             "(default with --quick: 150, and 10 more in 02_train)")
    parser.add_argument("--n-particles", type=int, default=None, help="simulated particles (default 5000)")
    parser.add_argument("--pose-mode", choices=("known", "learned"), default="known",
                        help="known: poses from the STAR file (a good map in minutes); "
                             "learned: ab initio, poses from the encoder and a global pose search "
                             "(about 4x slower per step; give it 10 minutes or more)")
    parser.add_argument("--phantom", choices=("hinge", "two_state", "lshape"), default=TUTORIAL_PHANTOM,
                        help="hinge: the L's short bar lifted 0-60 degrees, a continuous motion for the "
                             "latent to recover; two_state: its two ends; lshape: rigid (default: %(default)s)")
    parser.add_argument("--no-notebooks", action="store_true", help="skip executing the notebooks")
    return parser


def run_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no start-up chatter
    s = DemoSettings.quick() if args.quick else DemoSettings()
    if args.budget is not None:
        s.budget_s, s.steps, s.notebook_steps = float(args.budget), None, None
    if getattr(args, "steps", None) is not None:
        if args.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {args.steps}")
        s.steps = int(args.steps)
        s.notebook_steps = s.notebook_steps or max(1, s.steps // 10)
    if args.n_particles is not None:
        s.n_particles = int(args.n_particles)
    s.pose_mode = args.pose_mode
    s.phantom = getattr(args, "phantom", s.phantom)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = demo(out, s, notebooks=not args.no_notebooks)
    print(format_summary(summary))
    return 0


def demo(out: Path, s: DemoSettings, notebooks: bool = True) -> dict:
    """The main job of ``cryovae demo``; returns the summary written to ``out/summary.json``."""
    from cryovae_nb.inference import load_run, write_volumes
    from cryovae_nb.io import read_particles, write_volume
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
    from cryovae_nb.training.trainer import Trainer, save_sample_png

    t0 = time.monotonic()
    _say(f"1/5 simulating {s.n_particles} {s.phantom} particles ({s.box} px, SNR {s.snr}) in {out}")
    simulate_tutorial_data(out, box=s.box, n_particles=s.n_particles, snr=s.snr, phantom=s.phantom,
                           progress=False)
    paths = tutorial_paths(out)
    _say("2/5 preprocessing (tanh normalisation, circular mask)")
    paths.particles.parent.mkdir(parents=True, exist_ok=True)
    pre = preprocess_stack(paths.raw, paths.particles, PreprocessConfig(), progress=False)
    raw = read_particles(paths.raw)
    show = np.arange(min(8, len(raw)))
    preview = out / "preview_particles.png"
    save_preview_png(preview, raw.images[show], pre.images[show],
                     ("raw (SNR %g)" % s.snr, "preprocessed"))

    run_dir = paths.run_dir("run")
    # a previous demo's run in this folder: Trainer(resume=False) moves it to run/previous-N
    if s.steps is None:
        _say(f"3/5 training ({s.pose_mode} poses) for {s.budget_s:g} s")
        limits = dict(max_time_s=s.budget_s)
    else:
        _say(f"3/5 training ({s.pose_mode} poses) for {s.steps} steps")
        limits = dict(max_steps=s.steps, max_time_s=None)
    cfg = tutorial_train_config(paths, run_dir, pose_mode=s.pose_mode,
                                sample_every=10**9, checkpoint_every=10**9, **limits, **s.model)
    trainer = Trainer(cfg, progress=False, resume=False)
    result = trainer.train()
    test = trainer.test_indices[:8] if len(trainer.test_indices) else trainer.train_indices[:8]
    images, proj, _ = trainer.reconstruct(test)
    samples_png = out / "sample_grid.png"
    save_sample_png(samples_png, images, proj, trainer.step)
    del trainer

    _say("4/5 reconstruction and FSC against the truth (aligned, both hands tried); "
         "the latent against the true hinge angle")
    run = load_run(run_dir)
    test = run.split()[1]
    vol = consensus_volume(run, test if len(test) else None)
    recon = out / "reconstruction.mrc"
    write_volume(recon, vol, run.pixel_size)
    ref, voxel = truth_volume(paths, run.box)
    cmp = compare_to_reference(vol, ref, run.pixel_size, frame_known=s.pose_mode == "known")
    curves = {"aligned": cmp["fsc"]}
    if cmp["fsc_unaligned"] is not None:
        curves["as trained (known-pose frame)"] = cmp["fsc_unaligned"]
    fsc_png, fsc_json = out / "fsc.png", out / "fsc.json"
    ref_t = reference_t(paths)                          # the reference truth's hinge parameter
    save_fsc_png(fsc_png, curves, title=f"FSC against the truth (t = {ref_t:.2f})")
    write_json_atomic(fsc_json, {
        "pose_mode": s.pose_mode, "mirrored": bool(cmp["aligned"].mirrored),
        "correlation": cmp["aligned"].correlation,
        "correlation_other_hand": cmp["aligned"].correlation_other_hand,
        "reference": str(paths.truth_volume), "reference_t": ref_t,
        **fsc_summary(cmp["fsc"]),
        "curves": {k: v.to_dict() for k, v in curves.items()}})

    # the latent against the simulated motion, and a trajectory from one end of it to the other
    report = latent_vs_truth(run, paths, bins=s.state_bins, max_particles=s.max_encode)
    states_png = None
    if report is not None:
        z0, z1, counts = extreme_states(report.z, report.t)
        traj_note = (f"mean latents of the {counts[0]} particles at the lowest and the {counts[1]} "
                     f"at the highest hinge angle")
    else:  # a rigid phantom: between two particles, as before
        enc = run.encode(run.particles.subset([0, 1]), progress=False)
        z0, z1 = enc.z_mean
        traj_note = "latents of particles 0 and 1"
    _, frames = run.interpolate(z0, z1, s.trajectory_steps)
    traj = write_volumes(out / "trajectory", frames, run.pixel_size, prefix="interpolation")
    if report is not None:
        states_png = out / "states.png"
        save_states_png(states_png, report, frames,
                        title="the hinge seen along its axis: truth, decoded states, trajectory")
    del run

    html = []
    if notebooks:
        _say("5/5 executing the tutorial notebooks on the same workdir")
        html = run_tutorial_notebooks(out, s)
    else:
        _say("5/5 notebooks skipped (--no-notebooks)")
    summary = {
        "out": str(out), "particles": str(paths.raw), "preprocessed": str(paths.particles),
        "phantom": s.phantom, "run_dir": str(run_dir), "steps": result.step,
        "notebook_steps": s.notebook_steps if s.steps is not None else None,
        "train_seconds": round(result.elapsed_s, 1),
        "pose_mode": s.pose_mode, "preview_png": str(preview), "sample_grid_png": str(samples_png),
        "reconstruction_mrc": str(recon), "fsc_png": str(fsc_png), "fsc_json": str(fsc_json),
        "fsc_reference_t": ref_t,
        "trajectory_mrcs": [str(p) for p in traj], "trajectory_between": traj_note,
        "notebooks_html": [str(p) for p in html],
        "fsc": fsc_summary(cmp["fsc"]), "mirrored": bool(cmp["aligned"].mirrored),
        "fsc_unaligned": None if cmp["fsc_unaligned"] is None else fsc_summary(cmp["fsc_unaligned"]),
        "latent_vs_truth": None if report is None else report.figures,
        "states_png": None if states_png is None else str(states_png),
        "total_seconds": round(time.monotonic() - t0, 1), "truth_voxel_size": voxel,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def notebook_parameters(workdir: Path, s: DemoSettings) -> dict:
    """Parameters for the four notebooks so that they share the demo's data and run. The model
    reaches 02_train as ``MODEL_OVERRIDES`` (the demo's overrides of ``TUTORIAL_MODEL`` /
    ``TUTORIAL_TRAIN``); its named model parameters stay None, i.e. the tutorial defaults."""
    common = {"WORKDIR": str(workdir), "STAR_FILE": None, "SIM_BOX": s.box, "SIM_PARTICLES": s.n_particles,
              "SIM_SNR": s.snr, "SIM_PHANTOM": s.phantom}
    train = {"POSE_MODE": s.pose_mode, "MODEL_OVERRIDES": dict(s.model),
             "TRAIN_BUDGET_S": s.notebook_budget_s, "SAMPLE_EVERY": 10**9, "CHECKPOINT_EVERY": 10**9}
    if s.steps is not None:
        # MAX_STEPS counts from the run's start: the demo's steps, then the notebook's
        train.update(MAX_STEPS=s.steps + (s.notebook_steps or 0), TRAIN_BUDGET_S=None)
    return {
        "01_preprocess.ipynb": dict(common),
        "02_train.ipynb": {**common, **train},
        "04_evaluate.ipynb": {**common, "N_GALLERY": 8},
        "05_latent_landscape.ipynb": {**common, "EMBED_METHODS": list(s.embed_methods),
                                      "N_CLUSTERS": 3, "TRAJECTORY_STEPS": 6,
                                      "STATE_BINS": s.state_bins},
    }


def run_tutorial_notebooks(workdir: Path, s: DemoSettings) -> list[Path]:
    """Execute 01, 02, 04, 05 on ``workdir``; write each as ``workdir/notebooks/NAME.html``."""
    src = notebooks_dir()
    if src is None:
        _say("   notebooks/ not found next to the package (not a source checkout): skipped")
        return []
    html_dir = workdir / "notebooks"
    html_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, params in notebook_parameters(workdir, s).items():
        t = time.monotonic()
        target = html_dir / (Path(name).stem + ".html")
        execute_notebook(src / name, params, html_dir, html=target)
        _say(f"   {name}: {time.monotonic() - t:.0f} s -> {target}")
        written.append(target)
    return written


def format_summary(summary: dict) -> str:
    f = summary["fsc"]
    lines = [
        "", "cryovae demo: done in %.0f s" % summary["total_seconds"],
        f"  trained {summary['steps']} steps in {summary['train_seconds']} s with "
        f"{summary['pose_mode']} poses"
        + (" (ab initio)" if summary["pose_mode"] == "learned" else
           " (poses from the STAR file: a quick good map; use --pose-mode learned for ab initio)"),
        f"  FSC vs truth (aligned{', mirrored hand' if summary['mirrored'] else ''}): "
        f"0.5 at {f['resolution_05_A']:.2f} Å ({f['resolution_05_px']:.2f} px), "
        f"0.143 at {f['resolution_0143_A']:.2f} Å ({f['resolution_0143_px']:.2f} px); "
        f"Nyquist {f['nyquist_A']:.2f} Å",
    ]
    u = summary.get("fsc_unaligned")
    if u:
        lines.append(f"  FSC as trained (known-pose frame, no interpolation): 0.5 at {u['resolution_05_A']:.2f} Å "
                     f"({u['resolution_05_px']:.2f} px), 0.143 at {u['resolution_0143_A']:.2f} Å "
                     f"({u['resolution_0143_px']:.2f} px)")
    if summary.get("fsc_reference_t") is not None and summary.get("latent_vs_truth"):
        lines.append(f"  (the FSC's truth: the simulated conformation nearest the middle of the motion, "
                     f"t = {summary['fsc_reference_t']:.2f}, a hinge angle of "
                     f"{summary['fsc_reference_t'] * summary['latent_vs_truth']['max_angle_deg']:.0f}°)")
    lines.append("  " + format_motion(summary.get("latent_vs_truth")))
    lines += [f"  {k:<20} {summary[k]}" for k in ("preview_png", "sample_grid_png", "reconstruction_mrc",
                                                  "fsc_png", "fsc_json", "states_png", "run_dir")
              if summary.get(k)]
    if summary["trajectory_mrcs"]:
        lines.append(f"  trajectory           {len(summary['trajectory_mrcs'])} MRC frames in "
                     f"{Path(summary['trajectory_mrcs'][0]).parent} "
                     f"({summary.get('trajectory_between', '')})")
    for p in summary["notebooks_html"]:
        lines.append(f"  notebook             {p}")
    return "\n".join(lines)


def _say(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = add_demo_parser(argparse.ArgumentParser(prog="python -m cryovae_nb.demo"))
    return run_demo(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

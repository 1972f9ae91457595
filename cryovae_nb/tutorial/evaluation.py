"""Evaluation for the tutorial notebooks and the demo: the simulated truth (maps at any hinge
parameter, resampled to the model's box), a run's consensus map and its FSC against the truth,
how well the latent recovers the simulated motion, and per-particle reconstructions (the screening's
errors are the run's own: ``TrainedRun.reconstruction_errors``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryovae_nb.analysis.align import align
from cryovae_nb.analysis.fsc import fsc
from cryovae_nb.analysis.latent import as_latents, deshrink
from cryovae_nb.analysis.series import decode_volumes
from cryovae_nb.config import load_config
from cryovae_nb.errors import InputError
from cryovae_nb.heterogeneity import motion_recovery, state_volumes
from cryovae_nb.io import read_volume
from cryovae_nb.synthetic import SimulationConfig, hinge_volume, load_truth
from cryovae_nb.tutorial.workspace import TutorialData, reference_level, truth_table
from cryovae_nb.volumes import fourier_resample

STATE_BINS = 4               # latent_vs_truth: the hinge angle cut into this many states


def _resampled(vol: np.ndarray, voxel: float | None, box: int | None) -> tuple[np.ndarray, float]:
    voxel = float(voxel or 1.0)
    if box is not None and box != vol.shape[0]:
        voxel = voxel * vol.shape[0] / box
        vol = fourier_resample(vol, box)
    return np.asarray(vol, np.float32), voxel


def _need_truth(data: TutorialData) -> Path:
    if data.truth is None:
        raise InputError("no ground truth: the data is not the simulated tutorial dataset", data.raw)
    return data.truth


def truth_volume(data: TutorialData, box: int | None = None) -> tuple[np.ndarray, float]:
    """The simulated *reference* truth (``data.truth_volume``: the conformation nearest the middle
    of the motion), Fourier-resampled to ``box`` (the box the model saw after coarsening /
    cropping; the physical extent is kept) -> (volume, voxel size Å)."""
    _need_truth(data)
    return _resampled(*read_volume(data.truth_volume), box)


def truth_volumes(data: TutorialData, box: int | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Every simulated conformation's truth map, resampled like `truth_volume` ->
    (volumes ``(S, n, n, n)``, their hinge parameter t ``(S,)`` in [0, 1], voxel size Å)."""
    t, files = truth_table(_need_truth(data))
    vols = [_resampled(*read_volume(f), box) for f in files]
    return np.stack([v for v, _ in vols]), t, vols[0][1]


def reference_t(data: TutorialData) -> float:
    """The hinge parameter t of the reference truth map (``data.truth_volume``)."""
    t, _ = truth_table(_need_truth(data))
    return float(t[reference_level(t)])


def simulation_config(data: TutorialData):
    """The ``SimulationConfig`` the tutorial data was simulated with (``simulated/config.json``)."""
    return load_config(SimulationConfig, _need_truth(data).parent / "config.json")


def truth_volume_at(data: TutorialData, t: float, box: int | None = None) -> tuple[np.ndarray, float]:
    """The truth map at any hinge parameter ``t`` in [0, 1] (also between the simulated levels),
    made like the simulation's (``synthetic.hinge_volume``) and resampled like `truth_volume` ->
    (volume, voxel size Å). A rigid phantom has one map, whatever ``t``."""
    cfg = simulation_config(data)
    if cfg.phantom not in ("hinge", "two_state"):
        return truth_volume(data, box)
    return _resampled(hinge_volume(cfg.box, float(t), cfg.max_angle_deg), cfg.pixel_size, box)


def truth_t(data: TutorialData) -> np.ndarray | None:
    """Each particle's true hinge parameter t in [0, 1] (truth.npz; the preprocessed particles keep
    the simulated order), or None for a user's own data."""
    if data.truth is None:
        return None
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
    decoded at each state's mean latent ``decoded`` (aligned onto the truth for learned poses), and
    the posteriors' ``z_logvar`` when known (None: given latents without them).
    """

    figures: dict
    indices: np.ndarray
    z: np.ndarray
    t: np.ndarray
    labels: np.ndarray
    state_t: np.ndarray
    truths: np.ndarray
    decoded: np.ndarray
    z_logvar: np.ndarray | None = None

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


def latent_vs_truth(run, data: TutorialData, *, z=None, z_logvar=None, indices=None,
                    bins: int = STATE_BINS, max_particles: int | None = 4000,
                    seed: int = 0) -> MotionReport | None:
    """Does the run's latent carry the simulated motion? The figures of `cryovae_nb.heterogeneity`
    against the truth, for (up to ``max_particles`` of) the run's particles.

    ``z`` (latent means, e.g. from 05_latent_landscape) with ``indices`` (their rows in the run's
    data; default all in order) skips encoding; otherwise the particles are encoded with their
    poses. With their ``z_logvar`` (always when encoding here) each state's mean latent is scaled
    back by the posterior's shrinkage before decoding (`analysis.latent.deshrink`). Figures: ``spearman_pc`` / ``knn_r2`` (`heterogeneity.motion_recovery`: |Spearman rho|
    of the best latent principal component with t, cross-validated kNN R^2 of t from z) and, with t
    cut into ``bins`` states, the maps decoded at each state's mean latent against each state's
    truth (`heterogeneity.state_volumes`; the truth at the state's mean t). Known poses compare in
    place; learned poses align the middle state onto its truth (both hands) and move all alike.
    Returns None when there is no truth (own data) or no motion in it (a rigid phantom).
    """
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
        enc = run.encode(run.particles.subset(idx), progress=False)
        z, z_logvar = enc.z_mean, enc.z_logvar
    else:
        z = np.asarray(z, np.float32)
        idx = np.arange(len(z)) if indices is None else np.asarray(indices, np.int64)
        if len(idx) != len(z):
            raise InputError(f"{len(z)} latents but {len(idx)} particle indices")
        if z_logvar is not None and np.shape(z_logvar) != z.shape:
            raise InputError(f"z_logvar of shape {np.shape(z_logvar)} does not match the latents' {z.shape}")
    t = t_all[idx]
    if np.ptp(t) == 0:
        return None
    motion = motion_recovery(z, t, seed=seed)
    raw = state_labels(t, bins)
    present = np.unique(raw)                      # a two-state phantom fills only the end bins
    labels = np.searchsorted(present, raw)
    state_t = np.array([t[labels == i].mean() for i in range(len(present))])
    truths = np.stack([truth_volume_at(data, c, run.box)[0] for c in state_t])
    known = run.config.model.pose.mode == "known"
    align_to = None if known else len(state_t) // 2
    sv = state_volumes(run.decode, z, labels, truths, run.pixel_size, align_to=align_to, z_logvar=z_logvar)
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
    return MotionReport(figures, idx, z, t, labels, state_t, truths, np.asarray(sv["volumes"], np.float32),
                        None if z_logvar is None else np.asarray(z_logvar, np.float32))


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

    z = as_latents(latents)
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
    axis = motion_axis(latents, t)
    lo, hi = np.quantile(axis["coords"], quantiles)
    s = np.linspace(lo, hi, int(steps))
    path = (axis["mean"][None] + s[:, None] * axis["direction"][None]).astype(np.float32)
    return s, path, decode_volumes(decode, path), axis


def extreme_states(latents, t, z_logvar=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean latent of the particles at the lowest and at the highest true ``t`` (the two
    ends of the motion) -> (z0, z1, (their particle counts)); with the particles' ``z_logvar``
    scaled back by the posterior's shrinkage (`analysis.latent.deshrink`)."""
    z = np.asarray(latents, np.float64)
    t = np.asarray(t, np.float64)
    lo, hi = t == t.min(), t == t.max()
    ends = np.stack([z[lo].mean(0), z[hi].mean(0)])
    if z_logvar is not None:
        ends = deshrink(ends, z_logvar)
    ends = ends.astype(np.float32)
    return ends[0], ends[1], np.array([lo.sum(), hi.sum()])


def farthest_clusters_along(centres, axis: dict) -> tuple[int, int]:
    """The two cluster centres farthest apart along a `motion_axis` (lowest coordinate first)."""
    c = (np.asarray(centres, np.float64) - axis["mean"]) @ axis["direction"]
    return int(np.argmin(c)), int(np.argmax(c))


def compare_to_reference(volume, reference, pixel_size: float, *, frame_known: bool = False) -> dict:
    """FSC of ``volume`` against ``reference`` after rigid alignment trying both hands.

    Returns ``{"aligned": AlignResult, "fsc": FSCResult, "fsc_unaligned": FSCResult | None}``.
    With ``frame_known`` (a known-pose run shares the reference's frame) the FSC without alignment
    is computed too: interpolating onto an aligned grid blurs slightly, so both are worth seeing.
    """
    al = align(volume, reference, try_mirror=True)
    return {"aligned": al, "fsc": fsc(al.aligned, reference, pixel_size, mask="sphere"),
            "fsc_unaligned": fsc(volume, reference, pixel_size, mask="sphere") if frame_known else None}


def fsc_summary(result) -> dict:
    """Resolutions of an ``FSCResult`` in Å and px, for a JSON file or a printout."""
    px = result.pixel_size
    return {"resolution_05_A": result.resolution_05, "resolution_0143_A": result.resolution_0143,
            "resolution_05_px": result.resolution_05 / px, "resolution_0143_px": result.resolution_0143 / px,
            "crossed_05": bool(result.crossed_05), "crossed_0143": bool(result.crossed_0143),
            "nyquist_A": result.nyquist, "pixel_size_A": px}

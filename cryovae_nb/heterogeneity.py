"""How well a latent space recovers a known motion (simulated truth), CryoBench-style.

The figures a user of a heterogeneity method cares about, measured against the simulation's truth:

- :func:`motion_recovery`: does the latent carry the conformation? |Spearman rho| of the latent's
  best principal component with the true motion parameter, and the R^2 of a k-nearest-neighbour
  regression of that parameter from the latent (cross-validated: 0 means no information, 1 all).
- :func:`two_state_accuracy`: k-means (k = 2) on the latent against the true two states.
- :func:`state_volumes`: the volumes decoded at each true state's mean latent, compared with every
  state's truth (correlation and FSC): is each decoded state closest to its own truth?

No TensorFlow here: decoding is a callable, so the same code judges any model.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from cryovae_nb.analysis.align import align, correlation
from cryovae_nb.analysis.fsc import fsc
from cryovae_nb.analysis.latent import as_latents, deshrink, kmeans
from cryovae_nb.errors import InputError
from cryovae_nb.volumes import mirror_through_plane, rotate_volume


def _check_pairs(latents, values, name: str) -> tuple[np.ndarray, np.ndarray]:
    z = as_latents(latents)
    v = np.asarray(values, np.float64).ravel()
    if len(v) != len(z):
        raise InputError(f"{len(z)} latents but {len(v)} {name}")
    return z, v


def motion_recovery(latents, truth, *, n_components: int = 5, k: int = 5, folds: int = 5,
                    seed: int = 0) -> dict:
    """How much of a continuous motion parameter ``truth`` ``(n,)`` the ``latents`` ``(n, d)`` hold.

    Returns ``spearman_pc`` (the largest |Spearman rho| between ``truth`` and one of the first
    ``n_components`` principal components), ``best_pc`` (its index), ``spearman_dim`` (the same
    over single latent dimensions) and ``knn_r2``: the R^2 of a ``k``-nearest-neighbour regression
    of ``truth`` from the standardised latents, each particle predicted by a model that never saw it
    (``folds``-fold cross-validation). A latent that ignores the motion scores ~0 on both.
    """
    from scipy.stats import spearmanr
    from sklearn.decomposition import PCA
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.neighbors import KNeighborsRegressor

    z, t = _check_pairs(latents, truth, "truth values")
    if len(z) < max(2 * k, folds):
        raise InputError(f"motion_recovery needs at least {max(2 * k, folds)} particles, got {len(z)}")

    def abs_rho(x) -> float:
        if np.ptp(x) == 0 or np.ptp(t) == 0:
            return 0.0
        return float(abs(spearmanr(x, t).statistic))

    zc = z - z.mean(0)
    scale = zc.std(0)
    zs = zc / np.where(scale > 0, scale, 1.0)
    m = min(n_components, z.shape[1])
    pcs = PCA(n_components=m, svd_solver="full").fit_transform(zc) if np.any(scale > 0) \
        else np.zeros((len(z), m))
    pc_rho = [abs_rho(pcs[:, j]) for j in range(m)]
    dim_rho = [abs_rho(z[:, j]) for j in range(z.shape[1])]
    cv = KFold(folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(KNeighborsRegressor(n_neighbors=k), zs, t, cv=cv)
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    r2 = 1.0 - float(np.sum((t - pred) ** 2)) / ss_tot if ss_tot > 0 else 0.0
    return {"spearman_pc": max(pc_rho), "best_pc": int(np.argmax(pc_rho)),
            "spearman_dim": max(dim_rho), "knn_r2": r2}


def two_state_accuracy(latents, states, seed: int = 0) -> float:
    """Fraction of particles that k-means (k = 2, full latent) puts with their true state
    ``states`` ``(n,)`` of 0/1, under the better of the two label matchings (0.5 is chance)."""
    z, s = _check_pairs(latents, states, "states")
    if not np.isin(s, (0, 1)).all():
        raise InputError("two_state_accuracy: states must be 0 or 1")
    labels, _ = kmeans(z, 2, seed=seed)
    agree = float(np.mean(labels == s))
    return max(agree, 1.0 - agree)


def state_volumes(decode: Callable, latents, labels, truths, pixel_size: float = 1.0, *,
                  align_to: int | None = None, z_logvar=None) -> dict:
    """Decode the mean latent of each true state and compare it with every state's truth.

    ``labels`` ``(n,)`` are state indices ``0..S-1`` into ``truths`` ``(S, n, n, n)``;
    ``decode(z (S, d)) -> (S, n, n, n)``. With ``align_to`` (a state index; for learned poses, whose
    frame and hand are the model's own), the decoded volume of that state is aligned onto its truth
    (both hands tried) and the same rigid move is applied to every decoded state; ``None`` compares
    in place (known poses share the truth's frame). Returns ``correlation`` ``(S, S)`` (decoded
    state i vs truth j), ``fsc05`` / ``fsc0143`` ``(S,)`` (resolutions in Å against their own
    truth), ``own_closest`` (each row's best truth is its own), ``volumes`` (the decoded, aligned
    states) and ``mean_latent_correlation`` ``(S,)``: the one volume decoded at the mean of all
    latents against each truth (what a homogeneous reconstruction would give). With the particles'
    ``z_logvar`` ``(n, d)`` the state means are first scaled back by the posterior's shrinkage
    (`analysis.latent.deshrink`), as a user's group maps are.
    """
    z = as_latents(latents)
    labels = np.asarray(labels).ravel()
    truths = np.asarray(truths, np.float32)
    s = len(truths)
    if len(labels) != len(z):
        raise InputError(f"{len(z)} latents but {len(labels)} labels")
    present = [i for i in range(s) if np.any(labels == i)]
    if len(present) != s:
        raise InputError(f"state_volumes: no particle of state(s) {sorted(set(range(s)) - set(present))}")
    centres = np.stack([z[labels == i].mean(0) for i in range(s)] + [z.mean(0)]).astype(np.float32)
    if z_logvar is not None:
        centres = deshrink(centres, z_logvar)
    vols = np.asarray(decode(centres), np.float32)
    if align_to is not None:
        a = align(vols[align_to], truths[align_to], try_mirror=True)
        vols = np.stack([rotate_volume(mirror_through_plane(v) if a.mirrored else v, a.rotation, a.shift)
                         for v in vols]).astype(np.float32)
    states, mean_vol = vols[:s], vols[s]
    corr = np.array([[correlation(states[i], truths[j]) for j in range(s)] for i in range(s)])
    curves = [fsc(states[i], truths[i], pixel_size=pixel_size) for i in range(s)]
    return {"correlation": corr,
            "fsc05": np.array([c.resolution_05 for c in curves]),
            "fsc0143": np.array([c.resolution_0143 for c in curves]),
            "own_closest": bool(np.all(np.argmax(corr, axis=1) == np.arange(s))),
            "mean_latent_correlation": np.array([correlation(mean_vol, truths[j]) for j in range(s)]),
            "mean_latent_fsc05": np.array([fsc(mean_vol, truths[j], pixel_size=pixel_size).resolution_05
                                           for j in range(s)]),
            "volumes": states}

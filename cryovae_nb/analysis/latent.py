"""The latent landscape: per-dimension statistics (thesis Table 3.1), 2D embeddings (PCA / UMAP /
t-SNE) of every particle (at 10^5-10^6 particles fitted on a sample, the rest placed from it),
k-means, the latent that represents a group of particles (`deshrink`), and the selections they
make (a cluster, a latent range) written back as subsets of the user's original STAR file
(``cryovae_nb.selection``).

scikit-learn and umap-learn are imported only when a function needs them: umap pulls in
TensorFlow.
"""
from __future__ import annotations

import dataclasses
import warnings

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cryovae_nb.errors import InputError

if TYPE_CHECKING:
    from cryovae_nb.selection import Selection


def as_latents(latents) -> np.ndarray:
    """Latents as a float64 (n, d) array; InputError unless non-empty and finite."""
    z = np.asarray(latents, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0:
        raise InputError(f"latents must be a non-empty (n, d) array, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise InputError("latents contain NaN or infinite values")
    return z


def latent_statistics(latents) -> pd.DataFrame:
    """Per-dimension mean, std, min, quartiles, max (thesis Table 3.1): rows are the statistics,
    columns the dimensions numbered from 1. ``std`` uses ddof=1 like pandas' describe."""
    z = as_latents(latents)
    q = np.percentile(z, [25, 50, 75], axis=0)
    rows = {"mean": z.mean(0), "std": z.std(0, ddof=1) if len(z) > 1 else np.zeros(z.shape[1]),
            "min": z.min(0), "25%": q[0], "50%": q[1], "75%": q[2], "max": z.max(0)}
    df = pd.DataFrame(rows).T
    df.columns = pd.RangeIndex(1, z.shape[1] + 1, name="latent dim")
    return df


# UMAP and t-SNE are fitted on at most this many points (a seeded random sample); every other point
# is then placed from the sample's embedding (`place_by_neighbours`), so 10^5-10^6 particles are
# all shown. Measured on 2 cores (benchmarks/analysis_speed.py, CPU time): t-SNE of 10k points
# ~70 s, UMAP of 50k ~50 s; these sizes keep the fit near half a minute.
MAX_POINTS = {"tsne": 5_000, "umap": 20_000}
# How the points outside the fitted sample are placed. "knn": the inverse-distance weighted mean of
# the embedded positions of their nearest sampled neighbours in latent space (t-SNE has no other
# way). "transform": umap's own transform, exact to UMAP but measured here at ~7-10 s per 1000
# points on 2 cores (benchmarks/explorer_scale.py: 20k points 130-216 s), i.e. hours at 10^6, so
# it is opt-in; kNN placement of 200k points takes seconds.
PLACEMENTS = ("knn", "transform")
PLACE_NEIGHBOURS = 10
_PLACE_BATCH = 50_000  # points per progress step (and per umap.transform call)


@dataclasses.dataclass
class Embedding:
    """``coords[i]`` embeds ``latents[indices[i]]``; ``note`` says how (fitted on all points, or
    on a sample with the rest placed, or a subsample only). ``fitted``: the rows the estimator was
    fitted on when that was a sample of them (None when it saw every embedded point)."""

    coords: np.ndarray
    indices: np.ndarray
    method: str
    note: str
    explained_variance_ratio: np.ndarray | None = None  # PCA only
    fitted: np.ndarray | None = None


def sample_rows(n: int, k: int, seed: int = 0) -> np.ndarray:
    """A deterministic (seeded) random sample of ``min(k, n)`` of the rows 0..n-1, ascending."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, int(k), replace=False))


def place_by_neighbours(sample_latents, sample_coords, latents, k: int = PLACE_NEIGHBOURS,
                        progress: bool = False) -> np.ndarray:
    """Embedded positions for ``latents`` ``(m, d)`` from an embedding fitted on ``sample_latents``
    ``(s, d)`` -> ``sample_coords`` ``(s, c)``: each point goes to the inverse-distance weighted
    mean of its ``k`` nearest sampled neighbours' positions (Euclidean, in latent space, where the
    embedding measured its neighbourhoods). A point that is in the sample lands on its own
    position. Returns ``(m, c)`` float32."""
    from scipy.spatial import cKDTree
    from tqdm.auto import tqdm

    ref = as_latents(sample_latents)
    y = np.asarray(sample_coords, np.float64)
    z = as_latents(latents)
    if y.ndim != 2 or len(y) != len(ref):
        raise InputError(f"{len(ref)} sampled latents but sample coordinates of shape {y.shape}")
    if z.shape[1] != ref.shape[1]:
        raise InputError(f"latents have {z.shape[1]} dimensions, the sample {ref.shape[1]}")
    k = int(min(max(1, k), len(ref)))
    tree = cKDTree(ref)
    out = np.empty((len(z), y.shape[1]), np.float32)
    with tqdm(total=len(z), desc="placing", unit="pt", disable=not progress) as bar:
        for a in range(0, len(z), _PLACE_BATCH):
            d, i = tree.query(z[a:a + _PLACE_BATCH], k=k, workers=-1)  # every core
            d, i = d.reshape(len(d), k), i.reshape(len(i), k)
            # an exact match (distance 0) must win outright: give it all the weight
            w = np.where(d[:, :1] == 0, (d == 0).astype(np.float64), 1.0 / np.maximum(d, 1e-300))
            out[a:a + len(d)] = np.einsum("mk,mkc->mc", w / w.sum(1, keepdims=True), y[i])
            bar.update(len(d))
    return out


def embed(latents, method: str = "pca", n_components: int = 2, seed: int = 0,
          max_points: int | None = None, *, fit_points: int | None = None, place: str = "knn",
          progress: bool = False, **kwargs) -> Embedding:
    """Embed latents with PCA, UMAP or t-SNE; every point gets coordinates. Deterministic for a
    given seed. Extra keyword arguments go to the sklearn / umap estimator.

    PCA is fitted on all points. UMAP and t-SNE are fitted on a seeded random sample of at most
    ``fit_points`` (default ``MAX_POINTS[method]``) and the other points are placed (``place``:
    ``"knn"``, see `place_by_neighbours`, or ``"transform"``, umap's own, UMAP only and slow; see
    PLACEMENTS); ``Embedding.fitted`` names the sample and ``note`` says so. ``progress`` shows
    a tqdm bar while placing.

    ``max_points`` keeps the former behaviour: only a random subsample of that many points is
    embedded (``coords[i]`` is ``latents[indices[i]]``), with a warning, and fitted whole unless
    ``fit_points`` says otherwise."""
    z = as_latents(latents)
    method = method.lower().replace("-", "")
    if method not in ("pca", "umap", "tsne"):
        raise InputError(f"unknown embedding method {method!r}; use 'pca', 'umap' or 'tsne'")
    if not 1 <= n_components <= z.shape[1]:
        raise InputError(f"n_components must be in 1..{z.shape[1]}, got {n_components}")
    if place not in PLACEMENTS or (place == "transform" and method == "tsne"):
        raise InputError(f"cannot place points by {place!r} for {method}: use "
                         + ("'knn' (t-SNE has no transform)" if place == "transform" else
                            " or ".join(repr(p) for p in PLACEMENTS)))
    if fit_points is not None and int(fit_points) < 2:
        raise InputError(f"fit_points must be at least 2, got {fit_points}")
    n = len(z)
    idx = np.arange(n)
    note = f"{method} of all {n} points"
    if method != "pca" and max_points is not None and n > int(max_points):
        limit = int(max_points)
        idx = sample_rows(n, limit, seed)
        note = (f"{method} of a random subsample of {limit} of {n} points (max_points="
                f"{limit}); coords[i] belongs to latents[indices[i]]")
        warnings.warn(note, stacklevel=2)
    x = z[idx]
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=n_components, svd_solver="full", **kwargs)
        coords = pca.fit_transform(x)
        # fix each component's sign (SVD leaves it free) so runs and subsets agree
        signs = np.sign(coords[np.argmax(np.abs(coords), axis=0), range(n_components)])
        coords = coords * np.where(signs == 0, 1, signs)
        return Embedding(np.asarray(coords, np.float32), idx, method, note, pca.explained_variance_ratio_)

    # an explicit max_points fits on all it keeps, as before fit_points existed
    default_fit = len(x) if max_points is not None else MAX_POINTS[method]
    fit = sample_rows(len(x), default_fit if fit_points is None else int(fit_points), seed)
    estimator = _estimator(method, n_components, seed, len(fit), kwargs)
    if len(fit) == len(x):
        coords = estimator.fit_transform(x)
        return Embedding(np.asarray(coords, np.float32), idx, method, note)
    sample_coords = np.asarray(estimator.fit_transform(x[fit]), np.float64)
    if place == "knn":
        coords = place_by_neighbours(x[fit], sample_coords, x, progress=progress)
        how = f"the others placed by their {PLACE_NEIGHBOURS} nearest sampled neighbours in latent space"
    else:
        coords = _umap_transform(estimator, x, progress)
        how = "the others placed by umap's transform"
    coords[fit] = sample_coords  # the sample keeps exactly what the fit gave it
    note = f"{method} fitted on a random sample of {len(fit)} of {len(x)} points (seed {seed}), {how}"
    return Embedding(np.asarray(coords, np.float32), idx, method, note, None, idx[fit])


def _estimator(method: str, n_components: int, seed: int, n_fit: int, kwargs: dict):
    if method == "tsne":
        from sklearn.manifold import TSNE

        kwargs.setdefault("perplexity", min(30.0, (n_fit - 1) / 3))
        return TSNE(n_components=n_components, random_state=seed, init="pca", **kwargs)
    with warnings.catch_warnings():
        # umap warns that a fixed random_state disables its parallelism: that is the point
        warnings.simplefilter("ignore", UserWarning)
        import umap

    kwargs.setdefault("n_neighbors", min(15, n_fit - 1))
    return _QuietUMAP(umap.UMAP(n_components=n_components, random_state=seed, **kwargs))


class _QuietUMAP:
    """umap.UMAP with its fixed-seed UserWarning silenced in fit and transform."""

    def __init__(self, model):
        self.model = model

    def fit_transform(self, x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return self.model.fit_transform(x)

    def transform(self, x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return self.model.transform(x)


def _umap_transform(estimator: _QuietUMAP, x: np.ndarray, progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm

    out = np.empty((len(x), estimator.model.n_components), np.float32)
    with tqdm(total=len(x), desc="umap transform", unit="pt", disable=not progress) as bar:
        for a in range(0, len(x), _PLACE_BATCH):
            out[a:a + _PLACE_BATCH] = estimator.transform(x[a:a + _PLACE_BATCH])
            bar.update(len(x[a:a + _PLACE_BATCH]))
    return out


def kmeans(latents, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means on the full latent space: (labels (n,), centres (k, d))."""
    from sklearn.cluster import KMeans

    z = as_latents(latents)
    if not 1 <= k <= len(z):
        raise InputError(f"k must be in 1..{len(z)}, got {k}")
    km = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(z)
    return km.labels_.astype(np.int64), km.cluster_centers_


# a dimension whose posterior means are pulled in by more than this is not scaled further: it
# holds (almost) no information, and dividing by ~0 would only blow up noise
MIN_SHRINKAGE = 0.05


def shrinkage(z_logvar) -> np.ndarray:
    """``(d,)``: per latent dimension, the factor by which the posterior means are pulled towards
    the prior's mean, ``1 - mean(posterior variance)`` over the particles (clipped to
    ``[MIN_SHRINKAGE, 1]``).

    Why: with the N(0, I) prior and a (locally) linear Gaussian model, a particle's posterior mean
    is ``E[z_mean | z] = (I - S) z`` with ``S`` its posterior covariance, so the mean of a group's
    posterior means is its true mean latent times ``1 - S``. At low SNR that is far from 1 (about 0.3
    on the hinge at SNR 0.1): decoded as they are, a group's latent gives a map part of the way
    towards the average, and a motion looks a third of its size."""
    lv = np.asarray(z_logvar, np.float64)
    if lv.ndim != 2 or lv.shape[0] == 0 or not np.all(np.isfinite(lv)):
        raise InputError(f"z_logvar must be a non-empty finite (n, d) array, got shape {lv.shape}")
    return np.clip(1.0 - np.mean(np.exp(lv), axis=0), MIN_SHRINKAGE, 1.0)


def deshrink(latents, z_logvar) -> np.ndarray:
    """The latents that represent groups of particles, e.g. k-means centres or a state's mean of
    posterior means ``(k, d)`` (or ``(d,)``), divided by the `shrinkage` of the particles' posteriors
    ``z_logvar`` ``(n, d)``: decoded, they give each group's conformation rather than one pulled
    towards the average. Not for a single particle's latent: there the posterior mean is the right
    (noise-aware) estimate, and dividing would amplify its noise."""
    z = np.asarray(latents, np.float64)
    s = shrinkage(z_logvar)
    if z.shape[-1] != len(s):
        raise InputError(f"latents have {z.shape[-1]} dimensions but z_logvar has {len(s)}")
    return (z / s).astype(np.float32)


def latent_range(latents, dim: int, lo: float, hi: float) -> np.ndarray:
    """Rows whose latent dimension ``dim`` (1-based, as ``latent_statistics`` numbers them) lies
    in [lo, hi]."""
    z = as_latents(latents)
    if not 1 <= int(dim) <= z.shape[1]:
        raise InputError(f"latent dimension must be in 1..{z.shape[1]}, got {dim}")
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise InputError(f"latent range needs finite lo <= hi, got {lo} .. {hi}")
    v = z[:, int(dim) - 1]
    return np.flatnonzero((v >= lo) & (v <= hi)).astype(np.int64)


def write_cluster_selections(particles, labels, out) -> dict[int, Selection]:
    """Each k-means cluster's particles (rows of ``particles``, the preprocessed ones the latents
    came from) as a subset of the original STAR: ``OUT_cluster{k}.star`` + ``_indices.npy``.
    Empty clusters write nothing."""
    from cryovae_nb.selection import write_selection  # starfile and preprocessing: only when writing

    labels = np.asarray(labels).ravel()
    if len(labels) != len(particles):
        raise InputError(f"{len(labels)} cluster labels for {len(particles)} particles")
    stem = str(out)[:-5] if str(out).lower().endswith(".star") else str(out)
    return {int(k): write_selection(particles, labels == k, f"{stem}_cluster{int(k)}")
            for k in np.unique(labels)}


__all__ = ["MAX_POINTS", "MIN_SHRINKAGE", "PLACEMENTS", "Embedding", "as_latents", "deshrink", "embed",
           "kmeans", "latent_range", "latent_statistics", "place_by_neighbours", "sample_rows",
           "shrinkage", "write_cluster_selections"]

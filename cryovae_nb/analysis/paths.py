"""Motions along paths in latent space, not only straight lines: the shortest path between two
particles through a k-nearest-neighbour graph of the latents (cryoDRGN's graph traversal), which
follows the dense regions where particles actually are, and a path through points a user drew on
the 2-D map. Each is resampled to evenly spaced latents, ready for ``series.decode_volumes``
(`path_volumes`).

Why a graph: a straight line between two states may cut through empty latent space, where the
decoder was never trained and its maps are not conformations any particle has. Edges join each
particle to its k nearest neighbours; with ``density=True`` an edge's length is divided by the
local density at its two ends (measured by the distance to each end's k-th neighbour), so a path
prefers many short hops through crowded regions over a short cut across sparse ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cryovae_nb.analysis.latent import as_latents, deshrink, sample_rows
from cryovae_nb.errors import InputError

DEFAULT_NEIGHBOURS = 10
# Above this many particles the graph is built on a seeded random sample of them (plus the path's
# ends): the exact k-NN search is what costs. Measured on 2 busy cores (benchmarks/
# explorer_scale.py, 8-D latents): 10^5 particles ~6 s, 10^6 ~340 s; 10^5 still maps where the
# crowd is, which is all the path needs.
MAX_GRAPH_NODES = 100_000


@dataclass
class LatentPath:
    """``points`` ``(steps, d)``: evenly spaced latents along the path (both ends included);
    ``particles``: the rows of the latents the path visits, in order (the graph's nodes);
    ``length``: its length in latent units (Euclidean, along ``points``' polyline)."""

    points: np.ndarray
    particles: np.ndarray
    length: float


def knn_graph(latents, k: int = DEFAULT_NEIGHBOURS, density: bool = True):
    """The symmetric k-nearest-neighbour graph of ``latents`` ``(n, d)`` as a scipy CSR matrix of
    edge weights: the Euclidean distance, divided (``density``) by the density at both ends,
    ``d_ij * sqrt(r_i r_j) / median(r)`` with ``r`` the distance to the k-th neighbour (large where
    particles are sparse), so the weights keep latent units."""
    from scipy.sparse import coo_matrix
    from scipy.spatial import cKDTree

    z = as_latents(latents)
    n = len(z)
    if n < 2:
        raise InputError(f"a path needs at least 2 particles, got {n}")
    k = int(min(max(1, k), n - 1))
    # duplicates (distance 0) would make zero-weight edges that csgraph treats as missing
    d, j = cKDTree(z).query(z, k=k + 1, workers=-1)  # every core: 10^6 queries
    d, j = d[:, 1:], j[:, 1:]
    w = d.copy()
    if density:
        r = d[:, -1]
        scale = np.median(r[r > 0]) if np.any(r > 0) else 1.0
        w = d * np.sqrt(r[:, None] * r[j]) / scale
    w = np.maximum(w, np.finfo(np.float64).tiny)
    rows = np.repeat(np.arange(n), k)
    g = coo_matrix((w.ravel(), (rows, j.ravel())), shape=(n, n)).tocsr()
    return g.maximum(g.T).tocsr()  # i near j or j near i: an edge both ways


def graph_path(latents, start: int, end: int, steps: int = 10, k: int = DEFAULT_NEIGHBOURS,
               density: bool = True, graph=None, max_nodes: int = MAX_GRAPH_NODES, seed: int = 0) -> LatentPath:
    """The shortest path from particle ``start`` to particle ``end`` through the `knn_graph`,
    resampled to ``steps`` evenly spaced latents. The graph joins at most ``max_nodes`` particles
    (a seeded sample and the two ends; see MAX_GRAPH_NODES), or is ``graph``, built by
    `knn_graph` on all of ``latents``."""
    z = as_latents(latents)
    n = len(z)
    for name, i in (("start", start), ("end", end)):
        if not 0 <= int(i) < n:
            raise InputError(f"{name} particle {i} is outside 0..{n - 1}")
    rows = np.arange(n) if graph is not None else _graph_rows(n, [start, end], max_nodes, seed)
    g = knn_graph(z[rows], k, density) if graph is None else graph
    where = {int(r): i for i, r in enumerate(rows)} if len(rows) < n else None
    pos = (lambda i: int(i)) if where is None else where.__getitem__
    nodes = rows[_shortest(g, pos(start), pos(end), k)]
    return LatentPath(resample(z[nodes], steps), nodes, _length(z[nodes]))


def drawn_path(latents, coords, drawn, steps: int = 10, k: int = DEFAULT_NEIGHBOURS,
               density: bool = True, through_graph: bool = True, max_nodes: int = MAX_GRAPH_NODES,
               seed: int = 0) -> LatentPath:
    """A path through points drawn on the 2-D map: each drawn point ``drawn`` ``(m, 2)`` picks the
    particle embedded nearest it (``coords`` ``(n, 2)``, the map's coordinates of ``latents``);
    consecutive picks are joined through the k-NN graph (``through_graph``) or by straight
    lines in latent space; the whole is resampled to ``steps`` latents."""
    from scipy.spatial import cKDTree

    z = as_latents(latents)
    xy = np.asarray(coords, np.float64)
    pts = np.asarray(drawn, np.float64)
    if xy.shape != (len(z), 2):
        raise InputError(f"map coordinates of shape {xy.shape} for {len(z)} latents")
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2 or not np.all(np.isfinite(pts)):
        raise InputError(f"draw at least 2 finite points (m, 2) on the map, got shape {pts.shape}")
    picks = cKDTree(xy).query(pts)[1]
    picks = picks[np.r_[True, picks[1:] != picks[:-1]]]  # a point drawn twice on one particle
    if len(picks) < 2:
        raise InputError("the drawn points all pick the same particle: draw them farther apart")
    if through_graph:
        rows = _graph_rows(len(z), picks, max_nodes, seed)
        g = knn_graph(z[rows], k, density)
        pos = np.searchsorted(rows, picks)  # rows is sorted and holds every pick
        legs = [rows[_shortest(g, int(a), int(b), k)] for a, b in zip(pos[:-1], pos[1:])]
        nodes = np.concatenate([legs[0]] + [leg[1:] for leg in legs[1:]])
    else:
        nodes = picks.astype(np.int64)
    return LatentPath(resample(z[nodes], steps), nodes, _length(z[nodes]))


def resample(polyline, steps: int) -> np.ndarray:
    """``steps`` points evenly spaced by arc length along the polyline ``(m, d)``, both ends
    included (a polyline of one point, or of repeated points, gives that point ``steps`` times)."""
    p = np.asarray(polyline, np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise InputError(f"a path must be a non-empty (m, d) array, got shape {p.shape}")
    if int(steps) < 2:
        raise InputError(f"steps must be at least 2, got {steps}")
    s = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))]
    if s[-1] == 0:
        return np.repeat(p[:1], int(steps), axis=0)
    t = np.linspace(0.0, s[-1], int(steps))
    return np.stack([np.interp(t, s, p[:, j]) for j in range(p.shape[1])], axis=1)


def path_volumes(decode: Callable, path: LatentPath | np.ndarray, z_logvar=None) -> np.ndarray:
    """The volumes along a path ``(steps, n, n, n)`` through any ``decode(z) -> volumes``.

    With ``z_logvar`` (the particles' posterior log-variances) each point is de-shrunk
    (``latent.deshrink``) as a k-means centre is: a point on a path through the crowd stands for
    the particles around it, a group, whose mean posterior mean is pulled towards the average."""
    from cryovae_nb.analysis.series import decode_volumes

    z = path.points if isinstance(path, LatentPath) else as_latents(path)
    if z_logvar is not None:
        z = deshrink(z, z_logvar)
    return decode_volumes(decode, z)


def _graph_rows(n: int, must, max_nodes: int, seed: int) -> np.ndarray:
    """The particles the graph joins (sorted): all, or a seeded sample and the ones it must hold."""
    if int(max_nodes) < 2:
        raise InputError(f"max_nodes must be at least 2, got {max_nodes}")
    if n <= max_nodes:
        return np.arange(n)
    return np.union1d(sample_rows(n, int(max_nodes), seed), np.asarray(must, np.int64))


def _shortest(g, start: int, end: int, k: int) -> np.ndarray:
    from scipy.sparse.csgraph import dijkstra

    dist, pred = dijkstra(g, directed=False, indices=start, return_predecessors=True)
    if not np.isfinite(dist[end]):
        raise InputError(f"particles {start} and {end} are not connected in the {k}-nearest-neighbour "
                         "graph (separate islands of the latent space): raise k or pick particles "
                         "of one island")
    nodes = [end]
    while nodes[-1] != start:
        nodes.append(int(pred[nodes[-1]]))
    return np.asarray(nodes[::-1], np.int64)


def _length(p: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum())


__all__ = ["DEFAULT_NEIGHBOURS", "MAX_GRAPH_NODES", "LatentPath", "drawn_path", "graph_path", "knn_graph", "path_volumes",
           "resample"]

"""Motions along paths (issue #14): the k-NN graph path between two particles follows a curved
dense ridge where the straight line between them leaves it; resampling, drawn paths and the
volumes along a path are checked against analytic values."""
from __future__ import annotations

import numpy as np
import pytest

from cryovae_nb.analysis.latent import deshrink
from cryovae_nb.analysis.paths import drawn_path, graph_path, knn_graph, path_volumes, resample
from cryovae_nb.errors import InputError


def ridge(n_ridge=3000, n_noise=300, d=4, seed=0):
    """A half circle of radius 1 in the first two latent dimensions (thin: radial sd 0.03), dense,
    plus sparse uniform noise over the box around it; the other dimensions carry small noise."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, np.pi, n_ridge)
    r = 1 + rng.normal(scale=0.03, size=n_ridge)
    z = np.zeros((n_ridge + n_noise, d))
    z[:n_ridge, 0], z[:n_ridge, 1] = r * np.cos(a), r * np.sin(a)
    z[n_ridge:, 0] = rng.uniform(-1.3, 1.3, n_noise)
    z[n_ridge:, 1] = rng.uniform(-0.3, 1.3, n_noise)
    z[:, 2:] = rng.normal(scale=0.03, size=(len(z), d - 2))
    return z, a


def off_ridge(points) -> np.ndarray:
    """Distance of each point from the half circle (in the first two dimensions)."""
    p = np.asarray(points)[:, :2]
    ang = np.clip(np.arctan2(p[:, 1], p[:, 0]), 0, np.pi)
    return np.linalg.norm(p - np.stack([np.cos(ang), np.sin(ang)], 1), axis=1)


def test_graph_path_stays_on_the_dense_ridge_where_the_straight_line_leaves_it():
    z, a = ridge()
    start, end = int(np.argmin(a)), int(np.argmax(a))   # the two ends of the half circle
    path = graph_path(z, start, end, steps=40)
    assert path.points.shape == (40, 4) and path.particles[0] == start and path.particles[-1] == end
    np.testing.assert_allclose(path.points[[0, -1]], z[[start, end]])
    line = np.linspace(z[start], z[end], 40)
    # the straight line crosses the empty middle (1 from the ridge); the path hugs the ridge
    assert off_ridge(line).max() > 0.9
    assert off_ridge(path.points).max() < 0.15
    assert off_ridge(z[path.particles]).max() < 0.15     # every particle it visits is a ridge one
    # and it goes the long way round: about the half circle's length pi, not the chord's 2
    assert 0.95 * np.pi < path.length < 1.5 * np.pi
    # evenly spaced along the path
    steps = np.linalg.norm(np.diff(path.points, axis=0), axis=1)
    assert steps.max() < 1.5 * path.length / 39
    # a graph on a sample of the particles (as for 10^6 of them) still holds both ends and the ridge
    sampled = graph_path(z, start, end, steps=40, max_nodes=1000)
    assert sampled.particles[0] == start and sampled.particles[-1] == end
    assert off_ridge(sampled.points).max() < 0.15


def test_graph_edges_are_symmetric_and_density_weighted():
    z, _ = ridge(n_ridge=500, n_noise=50)
    g = knn_graph(z, k=5, density=False)
    assert abs(g - g.T).max() == 0 and g.nnz >= 5 * len(z)
    i, j = g.nonzero()
    np.testing.assert_allclose(np.asarray(g[i, j]).ravel(), np.linalg.norm(z[i] - z[j], axis=1))
    gd = knn_graph(z, k=5, density=True)
    # an edge between two sparse (noise) points costs more than its length, a ridge edge less
    i, j = gd.nonzero()
    ratio = np.asarray(gd[i, j]).ravel() / np.linalg.norm(z[i] - z[j], axis=1)
    noise_edge = (i >= 500) & (j >= 500)
    assert np.median(ratio[noise_edge]) > 3 > 1 > np.median(ratio[(i < 500) & (j < 500)])


def test_resample_is_evenly_spaced_along_a_polyline():
    # an L: 3 units along x, then 1 along y; 5 points at arc lengths 0, 1, 2, 3, 4
    p = resample([[0, 0], [3, 0], [3, 1]], 5)
    np.testing.assert_allclose(p, [[0, 0], [1, 0], [2, 0], [3, 0], [3, 1]], atol=1e-12)
    np.testing.assert_allclose(resample([[1, 2], [1, 2]], 3), [[1, 2]] * 3)
    with pytest.raises(InputError, match="steps"):
        resample([[0, 0], [1, 1]], 1)


def test_drawn_path_goes_through_the_particles_nearest_the_drawn_points():
    z, a = ridge(n_ridge=1500, n_noise=0)
    coords = z[:, :2]                                    # the map: the first two latent dimensions
    drawn = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    picks = [int(np.argmin(np.linalg.norm(coords - d, axis=1))) for d in drawn]
    straight = drawn_path(z, coords, drawn, steps=21, through_graph=False)
    np.testing.assert_array_equal(straight.particles, picks)
    np.testing.assert_allclose(straight.points[[0, 10, 20]][:, :2], coords[picks], atol=0.05)
    curved = drawn_path(z, coords, drawn, steps=21)
    assert picks[1] in drawn_path(z, coords, drawn, steps=21, max_nodes=300).particles
    assert curved.particles[0] == picks[0] and curved.particles[-1] == picks[-1] and picks[1] in curved.particles
    assert off_ridge(curved.points).max() < 0.1 < off_ridge(straight.points).max()
    with pytest.raises(InputError, match="same particle"):
        drawn_path(z, coords, [[1.0, 0.0], [1.0, 0.001]])


def test_islands_are_refused_and_volumes_follow_the_path():
    rng = np.random.default_rng(1)
    z = np.concatenate([rng.normal(size=(100, 3)), 50 + rng.normal(size=(100, 3))])
    with pytest.raises(InputError, match="not connected"):
        graph_path(z, 0, 150, k=5)
    with pytest.raises(InputError, match="outside"):
        graph_path(z, 0, 200)
    path = graph_path(z, 0, 99, steps=6, k=5)

    def decode(batch):  # a volume whose every voxel is z[0] of its latent: decoding is checkable
        return np.repeat(np.asarray(batch)[:, :1, None, None], 4, 1) * np.ones((1, 4, 4, 4), np.float32)

    vols = path_volumes(decode, path)
    assert vols.shape == (6, 4, 4, 4)
    np.testing.assert_allclose(vols[:, 0, 0, 0], path.points[:, 0], rtol=1e-6)
    logvar = np.log(np.full((200, 3), 0.5))              # shrinkage 0.5: de-shrunk points are doubled
    np.testing.assert_allclose(path_volumes(decode, path, logvar)[:, 0, 0, 0],
                               deshrink(path.points, logvar)[:, 0], rtol=1e-6)
    np.testing.assert_allclose(deshrink(path.points, logvar), 2 * path.points, rtol=1e-6)

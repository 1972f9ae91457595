"""The pose convention of cryovae_nb.geometry, checked against independent math.

RELION's Euler matrix is written out here from RELION's own formula (src/euler.cpp,
Euler_angles2matrix), not taken from scipy, so the convention check does not test scipy against
itself.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from cryovae_nb import geometry as g
from cryovae_nb.projection import project_reference


def relion_A(rot, tilt, psi):
    """RELION's Euler_angles2matrix(alpha=rot, beta=tilt, gamma=psi), degrees -> (3, 3)."""
    a, b, c = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([
        [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
        [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
        [sc, ss, cb],
    ])


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_quaternion_to_matrix_matches_scipy_and_is_a_rotation(rng):
    q = rng.standard_normal((200, 4))
    R = g.quaternion_to_matrix(q)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    ref = Rotation.from_quat(qn[:, [1, 2, 3, 0]]).as_matrix()  # scipy is scalar-last
    np.testing.assert_allclose(R, ref, atol=1e-12)
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    # q and -q are the same rotation
    np.testing.assert_allclose(g.quaternion_to_matrix(-q), R, atol=1e-12)


def test_quaternion_matrix_round_trip(rng):
    R = g.random_rotations(300, rng)
    q = g.matrix_to_quaternion(R)
    assert q.shape == (300, 4)
    assert np.all(q[:, 0] >= 0)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(g.quaternion_to_matrix(q), R, atol=1e-12)
    # quaternion -> matrix -> quaternion recovers q up to the sign ambiguity
    q0 = rng.standard_normal((50, 4))
    q0 /= np.linalg.norm(q0, axis=1, keepdims=True)
    q1 = g.matrix_to_quaternion(g.quaternion_to_matrix(q0))
    np.testing.assert_allclose(np.abs(np.sum(q0 * q1, axis=1)), 1.0, atol=1e-12)
    # known case: 90 degrees about z maps x onto y
    qz = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    np.testing.assert_allclose(g.quaternion_to_matrix(qz) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_relion_euler_matrix_is_transpose_of_relion_formula(rng):
    ang = np.column_stack([rng.uniform(-180, 180, 100), rng.uniform(0, 180, 100), rng.uniform(-180, 180, 100)])
    R = g.relion_euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])
    A = np.array([relion_A(*a) for a in ang])
    np.testing.assert_allclose(R, np.swapaxes(A, 1, 2), atol=1e-12)
    # broadcasting a scalar
    assert g.relion_euler_to_matrix(10.0, 20.0, 30.0).shape == (3, 3)


def test_relion_euler_round_trip(rng):
    R = g.random_rotations(300, rng)
    e = g.matrix_to_relion_euler(R)
    assert np.all((e[:, 1] >= 0) & (e[:, 1] <= 180))
    assert np.all((e[:, [0, 2]] > -180 - 1e-9) & (e[:, [0, 2]] <= 180 + 1e-9))
    np.testing.assert_allclose(g.relion_euler_to_matrix(e[:, 0], e[:, 1], e[:, 2]), R, atol=1e-10)
    # degenerate tilts (gimbal lock): any split of rot/psi is fine if the rotation is the same
    for tilt in (0.0, 180.0):
        R0 = g.relion_euler_to_matrix(30.0, tilt, 40.0)
        e0 = g.matrix_to_relion_euler(R0)
        np.testing.assert_allclose(g.relion_euler_to_matrix(*e0), R0, atol=1e-10)


def test_origin_shift_are_opposite():
    o = np.array([[1.5, -2.0], [0.0, 3.25]])
    np.testing.assert_array_equal(g.relion_origin_to_shift(o), -o)
    np.testing.assert_array_equal(g.shift_to_relion_origin(g.relion_origin_to_shift(o)), o)


def _gauss_volume(n, centres, sigma):
    c = g.centred_coords(n)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    v = np.zeros((n, n, n))
    for cx, cy, cz in centres:
        v += np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
    return v.astype(np.float32)


def _gauss_image(n, centres_xy, sigma):
    c = g.centred_coords(n)
    y, x = np.meshgrid(c, c, indexing="ij")
    img = np.zeros((n, n))
    for cx, cy in centres_xy:
        img += np.sqrt(2 * np.pi) * sigma * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    return img


def test_relion_convention_projection_matches_independent_computation():
    """docs/design.md: RELION's image of map V at (rot, tilt, psi) and origin o is
    p(x, y) = sum_z V(A^T (x + o_x, y + o_y, z)): a blob at volume point c lands at (A c)_xy - o.
    Our project_reference() with relion_euler_to_matrix / relion_origin_to_shift must reproduce that."""
    n, sigma = 32, 2.2
    centres = np.array([[6.0, -3.0, 2.0], [-4.0, 5.0, -6.0]])  # asymmetric: two blobs
    V = _gauss_volume(n, centres, sigma)
    angles = [(30.0, 50.0, -70.0), (-120.0, 100.0, 15.0), (75.0, 160.0, 140.0)]
    origins = np.array([[1.0, -2.0], [0.0, 0.0], [-1.5, 0.5]])
    R = g.relion_euler_to_matrix(*np.array(angles).T)
    imgs = project_reference(V, R, g.relion_origin_to_shift(origins))
    for img, ang, o in zip(imgs, angles, origins):
        A = relion_A(*ang)
        expected = _gauss_image(n, [(A @ c)[:2] - o for c in centres], sigma)
        wrong = _gauss_image(n, [(A.T @ c)[:2] - o for c in centres], sigma)  # the transposed convention
        # trilinear interpolation of a Gaussian this wide errs by ~3 % of the peak at most
        err = np.abs(img - expected).max() / expected.max()
        assert err < 0.04, err
        c = g.centred_coords(n)
        centroid = [(img.sum(0) * c).sum() / img.sum(), (img.sum(1) * c).sum() / img.sum()]
        ref = [(expected.sum(0) * c).sum() / expected.sum(), (expected.sum(1) * c).sum() / expected.sum()]
        np.testing.assert_allclose(centroid, ref, atol=0.02)
        # the test can tell the conventions apart
        assert np.abs(wrong - expected).max() / expected.max() > 0.2


def test_random_rotations_are_haar_uniform(rng):
    R = g.random_rotations(20000, rng)
    # E[R] = 0 under the Haar measure; the angle has density (1 - cos w) / pi, mean pi/2 + 2/pi
    assert np.abs(R.mean(axis=0)).max() < 0.02
    w = np.deg2rad(g.rotation_angle_deg(np.eye(3), R))
    assert abs(w.mean() - (np.pi / 2 + 2 / np.pi)) < 0.02
    # viewing directions (R e_z) fill the sphere evenly: each octant holds 1/8
    d = R[:, :, 2]
    octant = (d[:, 0] > 0) * 4 + (d[:, 1] > 0) * 2 + (d[:, 2] > 0)
    np.testing.assert_allclose(np.bincount(octant, minlength=8) / len(d), 1 / 8, atol=0.01)


def test_rotation_angle():
    Rz = g.relion_euler_to_matrix(37.0, 0.0, 0.0)
    np.testing.assert_allclose(g.rotation_angle_deg(np.eye(3), Rz), 37.0, atol=1e-9)
    np.testing.assert_allclose(g.rotation_angle_deg(Rz, Rz), 0.0, atol=1e-5)


@pytest.mark.parametrize("step", [5.0, 10.0])
def test_grid_rotations_cover_the_sphere_uniformly(step, rng):
    R = g.grid_rotations(step, n_psi=1)
    d = R[:, :, 2]  # viewing direction of each grid pose in the volume frame
    n_dir = len(d)
    # count matches a spacing of `step`: area per direction = step^2
    assert abs(n_dir - 4 * np.pi / np.deg2rad(step) ** 2) <= 1
    tree = cKDTree(d)
    # nearest-neighbour gap ~ step (a hexagonal lattice of that density has 1.07 step)
    dist, _ = tree.query(d, k=2)
    gap = np.rad2deg(2 * np.arcsin(dist[:, 1] / 2))
    assert 0.8 * step < np.median(gap) < 1.3 * step
    assert gap.max() < 1.5 * step and gap.min() > 0.5 * step
    # no holes: every point of the sphere lies within ~step of a grid direction
    probe = rng.standard_normal((20000, 3))
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    far, _ = tree.query(probe)
    assert np.rad2deg(2 * np.arcsin(far.max() / 2)) < 1.0 * step
    # equal-area bands in z (Archimedes: z is uniform on the sphere) hold equal counts
    counts = np.histogram(d[:, 2], bins=4, range=(-1, 1))[0]
    np.testing.assert_allclose(counts / n_dir, 0.25, atol=0.01)


def test_grid_rotations_in_plane_angles():
    step = 30.0
    R = g.grid_rotations(step)
    n_dir = len(g.grid_rotations(step, n_psi=1))
    assert len(R) == n_dir * 12
    # per direction, the 12 poses share the viewing direction and differ by multiples of 30 deg in-plane
    block = R[:12]
    np.testing.assert_allclose(block[:, :, 2], np.broadcast_to(block[0, :, 2], (12, 3)), atol=1e-12)
    ang = g.rotation_angle_deg(block[0], block)
    np.testing.assert_allclose(np.sort(ang), np.sort(np.minimum(np.arange(12) * 30.0, 360 - np.arange(12) * 30.0)), atol=1e-6)
    with pytest.raises(ValueError):
        g.grid_rotations(0.0)

"""The reference projector, the phantoms and the simulator, checked against independent math."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

from cryovae_nb import geometry as g
from cryovae_nb import io
from cryovae_nb.config import load_config
from cryovae_nb.ctf import apply_ctf, compute_ctf
from cryovae_nb.errors import ConfigError, InputError
from cryovae_nb.projection import project_reference, support_radius
from cryovae_nb.commands import simulate as simulate_command
from cryovae_nb.synthetic import (SimulationConfig, hinge_volume, load_truth, lshape_volume, simulate,
                                  two_state_volume, volume_from_mrc)
from cryovae_nb.volumes import fourier_resample


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def grid3(n):
    c = g.centred_coords(n)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return x, y, z


def naive_project(V, R, S, order=1):
    """Every point of the n^3 grid, one image at a time: the definition, written plainly."""
    n = V.shape[0]
    x, y, z = grid3(n)
    out = []
    for r, s in zip(R, S):
        p = np.stack([x - s[0], y - s[1], z])
        q = np.einsum("ij,jzyx->izyx", r, p) + n // 2
        out.append(ndimage.map_coordinates(V.astype(np.float64), q[::-1], order=order, mode="grid-constant").sum(0))
    return np.array(out)


def rotate_volume(V, R):
    """W(p) = V(R p): the volume whose identity projection is V's projection in pose R."""
    n = V.shape[0]
    x, y, z = grid3(n)
    q = np.einsum("ij,jzyx->izyx", R, np.stack([x, y, z])) + n // 2
    return ndimage.map_coordinates(V, q[::-1], order=1, mode="grid-constant")


# -- projector ----------------------------------------------------------------------------------
def test_identity_projection_is_the_z_sum(rng):
    V = rng.random((12, 12, 12)).astype(np.float32)  # non-zero faces: the general path
    np.testing.assert_allclose(project_reference(V, np.eye(3))[0], V.sum(axis=0), rtol=1e-6)
    W = lshape_volume(24)  # zero faces, compact support: the fast path
    np.testing.assert_allclose(project_reference(W, np.eye(3)[None], np.zeros((1, 2)))[0], W.sum(axis=0), rtol=1e-5, atol=1e-5)


def test_off_centre_gaussian_projects_to_analytic_gaussian(rng):
    n, sigma = 32, 2.2
    c3 = np.array([5.0, -3.0, 4.0])  # (x, y, z)
    x, y, z = grid3(n)
    V = np.exp(-((x - c3[0]) ** 2 + (y - c3[1]) ** 2 + (z - c3[2]) ** 2) / (2 * sigma**2)).astype(np.float32)
    R = g.random_rotations(30, rng)
    # rotations by ~180 deg are nearly symmetric (R ~ R^T): keep ones that tell R from R^T
    R = R[(g.rotation_angle_deg(np.eye(3), R) > 30) & (g.rotation_angle_deg(np.eye(3), R) < 140)][:4]
    S = rng.uniform(-2, 2, (4, 2))
    imgs = project_reference(V, R, S)
    cc = g.centred_coords(n)
    yy, xx = np.meshgrid(cc, cc, indexing="ij")
    for img, r, s in zip(imgs, R, S):
        # V(R p) peaks where R p = c, i.e. p = R^T c; the image moves by +s
        centre = (r.T @ c3)[:2] + s
        expected = np.sqrt(2 * np.pi) * sigma * np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2))
        assert np.abs(img - expected).max() < 0.04 * expected.max()
        centroid = np.array([(img * xx).sum(), (img * yy).sum()]) / img.sum()
        np.testing.assert_allclose(centroid, centre, atol=0.02)
        # the opposite convention (R c) would put it elsewhere: the test can fail
        assert np.linalg.norm((r @ c3)[:2] + s - centre) > 1.0
    # line integral: total mass of every image = mass of the blob (all inside the box)
    np.testing.assert_allclose(imgs.sum(axis=(1, 2)), V.sum(), rtol=2e-3)


def test_rod_seen_end_on_sums_its_length():
    n, length = 20, 9
    V = np.zeros((n, n, n), np.float32)
    c = n // 2
    V[c + 2, c - 3, c - 4:c - 4 + length] = 1.0  # a rod along x at y = -3, z = 2, x = -4..4
    R = np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # R e_z = e_x: rays run along the rod
    img = project_reference(V, R)[0]
    # I(x, y) = sum_z V(z, y, -x): the rod lands at y = -3, x = -2
    assert img[c - 3, c - 2] == pytest.approx(length)
    assert img.sum() == pytest.approx(length)
    # viewed side-on it is a line of ones
    side = project_reference(V, np.eye(3))[0]
    np.testing.assert_array_equal(side[c - 3, c - 4:c - 4 + length], np.ones(length))


def test_tilted_slab_path_length():
    """A soft slab of thickness D, seen at tilt theta, integrates to D / cos(theta)."""
    n, D = 32, 8.0
    x, y, z = grid3(n)
    from scipy.special import erf
    V = (0.5 * (erf((z + D / 2) / 1.2) - erf((z - D / 2) / 1.2))).astype(np.float32)
    for theta in (0.0, 25.0, 40.0):
        R = Rotation.from_euler("x", theta, degrees=True).as_matrix()
        img = project_reference(V, R)[0]
        centre = img[n // 2 - 2:n // 2 + 3, n // 2 - 2:n // 2 + 3]
        np.testing.assert_allclose(centre, D / np.cos(np.deg2rad(theta)), rtol=5e-3)


def test_integer_shift_moves_image_by_plus_s():
    V = lshape_volume(24)
    base = V.sum(axis=0)
    img = project_reference(V, np.eye(3), np.array([[3.0, -2.0]]))[0]
    expected = np.zeros_like(base)
    expected[:-2, 3:] = base[2:, :-3]  # +3 in x (columns), -2 in y (rows)
    np.testing.assert_allclose(img, expected, atol=1e-5)


@pytest.mark.parametrize("case", ["sphere", "full", "cubic-spline"])
def test_projector_equals_plain_definition(case, rng):
    n = 16
    x, y, z = grid3(n)
    V = rng.random((n, n, n)).astype(np.float32)
    if case == "sphere":
        V *= (x**2 + y**2 + z**2) <= 5.5**2  # support well inside: most points are skipped
    order = 3 if case == "cubic-spline" else 1
    R = g.random_rotations(7, rng)
    S = rng.normal(0, 1.5, (7, 2))
    S[:3] = 0.0  # some images share a shift
    np.testing.assert_allclose(project_reference(V, R, S, order=order), naive_project(V, R, S, order), atol=2e-4)
    # chunking changes nothing
    np.testing.assert_allclose(project_reference(V, R, S, order=order, chunk_size=2), project_reference(V, R, S, order=order), atol=1e-5)


def test_projector_rejects_bad_input():
    with pytest.raises(InputError, match="cubic"):
        project_reference(np.zeros((4, 5, 5)), np.eye(3))
    with pytest.raises(InputError, match="shifts"):
        project_reference(np.zeros((4, 4, 4)), np.stack([np.eye(3)] * 2), np.zeros((3, 2)))
    with pytest.raises(InputError, match="NaN"):
        project_reference(np.full((4, 4, 4), np.nan), np.eye(3))
    assert not project_reference(np.zeros((6, 6, 6)), np.eye(3)).any()


# -- phantoms -----------------------------------------------------------------------------------
@pytest.mark.parametrize("box", [24, 40, 64])
def test_lshape_proportions_scale_with_the_box(box):
    V = lshape_volume(box)
    assert V.shape == (box,) * 3 and V.dtype == np.float32
    assert 0.99 < V.max() <= 1.0 and V.min() >= 0
    # centred on its centre of mass
    x, y, z = grid3(box)
    com = np.array([(V * x).sum(), (V * y).sum(), (V * z).sum()]) / V.sum()
    assert np.abs(com).max() < 0.05
    # the same object at every size: mass scales with box^3
    ref = lshape_volume(40).sum()
    assert V.sum() / ref == pytest.approx((box / 40) ** 3, rel=0.03)
    # fits in the inscribed sphere, so no pose clips it
    assert support_radius(V) < box / 2


def _best_overlap(V, W, start):
    """Max over rotations R of corr(V, W rotated): grid search, then local refinement."""
    def corr(rotvec):
        Wr = rotate_volume(W, Rotation.from_rotvec(rotvec).as_matrix())
        return np.corrcoef(V.ravel(), Wr.ravel())[0, 1]

    scores = np.array([corr(Rotation.from_matrix(r).as_rotvec()) for r in start])
    best = -1.0
    for i in np.argsort(scores)[-2:]:
        res = optimize.minimize(lambda v: -corr(v), Rotation.from_matrix(start[i]).as_rotvec(),
                                method="Powell", options={"xtol": 1e-3, "maxfev": 200})
        best = max(best, -res.fun)
    return best


def _handed_frame(V):
    """Principal axes of the mass distribution, each pointed along its positive third moment.

    The frame turns with the object, so det = +-1 is a rotation invariant that a mirror flips;
    it is well defined only if the three moments of inertia differ and no skewness vanishes.
    """
    x, y, z = grid3(V.shape[0])
    r = np.stack([x.ravel(), y.ravel(), z.ravel()])
    w = V.ravel() / V.sum()
    r = r - r @ w[:, None]
    evals, evecs = np.linalg.eigh((r * w) @ r.T)
    skew = ((evecs.T @ r) ** 3) @ w
    return evecs * np.sign(skew), evals, skew


def test_lshape_is_asymmetric_and_chiral(rng):
    box = 24
    V = lshape_volume(box)
    frame, evals, skew = _handed_frame(V)
    # distinct moments of inertia and clearly skewed along every axis: no rotation but the
    # identity maps the L onto itself, so its pose is recoverable
    assert np.min(np.diff(evals)) > 0.05 * evals.max()
    assert np.min(np.abs(skew)) > 0.05 * np.abs(skew).max()
    hand = np.linalg.det(frame)
    mirror = np.roll(V[:, :, ::-1], 1, axis=2)  # x -> -x about voxel box // 2
    R0 = g.random_rotations(1, rng)[0]
    assert np.linalg.det(_handed_frame(rotate_volume(V, R0))[0]) == pytest.approx(hand, abs=1e-6)
    assert np.linalg.det(_handed_frame(mirror)[0]) == pytest.approx(-hand, abs=1e-6)
    # and visibly so: the best rotation of the mirror image still misses (a rotated copy does not)
    start = g.grid_rotations(45.0, n_psi=8)
    assert _best_overlap(V, rotate_volume(V, R0), start) > 0.97
    assert _best_overlap(V, mirror, start) < 0.9


def test_hinge_moves_only_the_short_bar_rigidly():
    from cryovae_nb.synthetic import _HINGE_AXIS_YZ, _l_offset

    box, angle = 40, 60.0
    V0, V1 = hinge_volume(box, 0.0, angle), hinge_volume(box, 1.0, angle)
    np.testing.assert_array_equal(hinge_volume(box, 0.0), lshape_volume(box))
    x, y, z = grid3(box)
    off = _l_offset(box)
    hy, hz = np.array(_HINGE_AXIS_YZ) - off[1:]  # hinge axis in centred coordinates
    # below the hinge (beyond the ~2 px blur tails) nothing moves
    below = z < hz - 3
    np.testing.assert_array_equal(V1[below], V0[below])
    # above the long bar (away from the knob at +x), V1 is V0 turned by +angle about the
    # axis (x-parallel, through (hy, hz))
    above = (z > 4 - off[2] + 2) & (x < 0)
    assert V1[above].sum() > 50 and V0[above].sum() < 1e-3

    def turned(deg):
        a = np.deg2rad(deg)
        yr = hy + np.cos(a) * (y - hy) + np.sin(a) * (z - hz)
        zr = hz - np.sin(a) * (y - hy) + np.cos(a) * (z - hz)
        q = np.stack([zr, yr, x]) + box // 2
        return ndimage.map_coordinates(V0, q, order=1, mode="grid-constant")

    assert np.abs(turned(angle)[above] - V1[above]).max() < 0.15
    assert np.abs(turned(-angle)[above] - V1[above]).max() > 0.9  # the other way is wrong
    # continuous in t: the distance from t = 0 grows monotonically
    d = [np.abs(hinge_volume(box, t, angle) - V0).sum() for t in np.linspace(0, 1, 6)]
    assert np.all(np.diff(d) > 0)
    np.testing.assert_array_equal(two_state_volume(box, 1, angle), V1)
    np.testing.assert_array_equal(two_state_volume(box, 0), V0)


def test_phantom_arguments_are_checked():
    with pytest.raises(InputError):
        hinge_volume(40, 1.5)
    with pytest.raises(InputError):
        two_state_volume(40, 2)
    with pytest.raises(InputError):
        lshape_volume(4)


# -- MRC phantoms and resampling ------------------------------------------------------------------
def _gauss(n, centre, sigma):
    x, y, z = grid3(n)
    return np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / (2 * sigma**2))


@pytest.mark.parametrize("n,m", [(64, 40), (30, 40), (33, 24)])
def test_fourier_resampling_matches_analytic_gaussian(n, m):
    centre, sigma = np.array([4.0, -6.0, 2.5]), 3.0
    out = fourier_resample(_gauss(n, centre, sigma), m)
    f = m / n  # new voxels per old voxel; voxel n//2 stays the centre
    expected = _gauss(m, centre * f, sigma * f)
    assert np.abs(out - expected).max() < 1e-3 * (1 if m < n else 10)
    assert out.mean() == pytest.approx(_gauss(n, centre, sigma).mean(), rel=1e-6)


def test_volume_from_mrc_real_file(shared_data):
    path = shared_data / "hand-vol.mrc"
    vol, voxel = volume_from_mrc(path)
    assert vol.shape == (64, 64, 64) and voxel == pytest.approx(1.0)
    small, voxel2 = volume_from_mrc(path, box=32)
    assert small.shape == (32, 32, 32) and voxel2 == pytest.approx(2.0)
    assert small.mean() == pytest.approx(vol.mean(), rel=1e-5)
    # independently: low-pass the 64^3 map to the frequencies a 32^3 grid holds (|k| <= 15 per
    # axis), then keep every second voxel (voxel 32 -> 16: no phase ramp is needed here)
    f = np.fft.fftn(vol.astype(np.float64))
    k = np.abs(np.fft.fftfreq(64) * 64)
    keep = (k <= 15)[:, None, None] & (k <= 15)[None, :, None] & (k <= 15)[None, None, :]
    lowpass = np.fft.ifftn(f * keep).real
    np.testing.assert_allclose(small, lowpass[::2, ::2, ::2], atol=1e-4 * np.abs(vol).max())


def test_volume_from_mrc_rejects_non_cubic(tmp_path):
    p = tmp_path / "flat.mrc"
    io.write_volume(p, np.zeros((4, 8, 8), np.float32), 1.0)
    with pytest.raises(InputError, match="flat.mrc.*cubic"):
        volume_from_mrc(p)
    with pytest.raises(InputError, match="missing.mrc"):
        volume_from_mrc(tmp_path / "missing.mrc")


# -- simulation ----------------------------------------------------------------------------------
def small_cfg(**kw):
    base = dict(box=16, n_particles=60, snr=0.5, seed=3, chunk_size=25)
    base.update(kw)
    return SimulationConfig(**base)


def test_simulation_round_trip_through_star(tmp_path):
    cfg = small_cfg(phantom="hinge", hinge_levels=4, shift_std_px=1.5, copies=2, keep_clean=True)
    ds = simulate(cfg, tmp_path / "sim", progress=False)
    n = 120
    assert ds.n_particles == n and len(ds.volumes) == 4
    for name in ("particles.mrcs", "particles.star", "truth.npz", "config.json", "clean.mrcs"):
        assert (tmp_path / "sim" / name).is_file()
    assert not list((tmp_path / "sim").glob(".clean-*"))  # no temporaries left
    parts = io.read_particles(ds.star)
    assert len(parts) == n and parts.box == 16 and parts.pixel_size == pytest.approx(1.0)
    assert parts.ctf is None
    truth = load_truth(ds.out_dir)
    np.testing.assert_allclose(parts.poses.rotations, truth["rotations"], atol=1e-6)
    np.testing.assert_allclose(parts.poses.shifts, truth["shifts"], atol=1e-6)
    assert np.std(truth["shifts"]) == pytest.approx(1.5, rel=0.3)
    # re-project each particle's truth volume with the poses read back: the clean images
    clean = io.open_stack(ds.clean)[truth["pose_index"]]
    for j, f in enumerate(truth["volume_files"]):
        vol, voxel = io.read_volume(ds.out_dir / f)
        assert voxel == pytest.approx(1.0)
        np.testing.assert_array_equal(vol, hinge_volume(16, truth["volume_t"][j]))
        m = truth["conformation"] == j
        again = project_reference(vol, parts.poses.rotations[m], parts.poses.shifts[m])
        np.testing.assert_allclose(again, clean[m], atol=1e-3 * np.abs(clean).max())
    np.testing.assert_array_equal(truth["t"], truth["volume_t"][truth["conformation"]])
    # each pose appears `copies` times; clones share the clean image, not the noise
    assert np.all(np.bincount(truth["pose_index"]) == 2)
    noisy = parts.images[:]
    a, b = (np.nonzero(truth["pose_index"] == truth["pose_index"][0])[0])
    noise_a, noise_b = noisy[a] - clean[a], noisy[b] - clean[b]
    assert abs(np.corrcoef(noise_a.ravel(), noise_b.ravel())[0, 1]) < 0.3
    # the config written beside the data reloads to the same config
    assert load_config(SimulationConfig, ds.out_dir / "config.json") == cfg


def test_snr_on_output_matches_target(tmp_path):
    cfg = small_cfg(box=24, n_particles=200, snr=0.1, keep_clean=True)
    ds = simulate(cfg, tmp_path, progress=False)
    clean = io.open_stack(ds.clean)[:]
    noisy = io.open_stack(ds.stack)[:]
    noise = noisy - clean[ds.truth["pose_index"]]
    assert clean.var() / noise.var() == pytest.approx(0.1, rel=0.02)
    assert noise.mean() == pytest.approx(0.0, abs=0.02 * noise.std())
    assert ds.truth["noise_std"] == pytest.approx(noise.std(), rel=0.01)


def test_simulation_is_deterministic(tmp_path):
    a = simulate(small_cfg(shift_std_px=1.0), tmp_path / "a", progress=False)
    b = simulate(small_cfg(shift_std_px=1.0, chunk_size=7), tmp_path / "b", progress=False)
    c = simulate(small_cfg(shift_std_px=1.0, seed=4), tmp_path / "c", progress=False)
    ia, ib, ic = (io.open_stack(d.stack)[:] for d in (a, b, c))
    np.testing.assert_array_equal(ia, ib)
    for k in ("rotations", "shifts", "pose_index"):
        np.testing.assert_array_equal(a.truth[k], b.truth[k])
    assert not np.allclose(ia, ic)
    assert not np.allclose(a.truth["rotations"], c.truth["rotations"])


def test_noiseless_grid_simulation(tmp_path):
    cfg = small_cfg(pose_sampling="grid", grid_step_deg=30.0, grid_n_psi=2, snr=None, copies=1)
    ds = simulate(cfg, tmp_path, progress=False)
    grid = g.grid_rotations(30.0, n_psi=2)
    assert ds.n_particles == len(grid)
    # every grid pose once, in shuffled order
    np.testing.assert_allclose(ds.truth["rotations"], grid[ds.truth["pose_index"]])
    assert sorted(ds.truth["pose_index"]) == list(range(len(grid)))
    imgs = io.open_stack(ds.stack)[:]
    np.testing.assert_allclose(imgs, project_reference(lshape_volume(16), ds.truth["rotations"]), atol=1e-5)


def test_ctf_simulation_matches_star_ctf(tmp_path):
    cfg = small_cfg(ctf=True, snr=None, n_particles=20, pixel_size=2.0, defocus_range=(8000.0, 12000.0))
    ds = simulate(cfg, tmp_path, progress=False)
    parts = io.read_particles(ds.star)
    ctf = parts.ctf
    assert parts.pixel_size == pytest.approx(2.0)
    assert np.all((ctf.defocus_u >= 8000) & (ctf.defocus_u <= 12000))
    np.testing.assert_allclose(ctf.voltage, 300.0)
    np.testing.assert_allclose(ctf.cs, 2.7)
    np.testing.assert_allclose(ctf.amp_contrast, 0.1)
    expected = apply_ctf(project_reference(lshape_volume(16), parts.poses.rotations, parts.poses.shifts),
                         compute_ctf(16, 2.0, ctf.defocus_u, ctf.defocus_v, ctf.defocus_angle,
                                     ctf.voltage, ctf.cs, ctf.amp_contrast, ctf.phase_shift))
    np.testing.assert_allclose(parts.images[:], expected, atol=1e-4)
    assert io.read_header(ds.stack).voxel_size == pytest.approx(2.0)


def test_mrc_phantom_simulation(tmp_path, shared_data):
    cfg = small_cfg(phantom=str(shared_data / "hand-vol.mrc"), box=32, n_particles=10)
    ds = simulate(cfg, tmp_path, progress=False)
    assert ds.truth["pixel_size"] == pytest.approx(2.0)  # 64 px at 1 Å resampled to 32 px
    assert io.read_particles(ds.star).pixel_size == pytest.approx(2.0)
    assert io.read_volume(ds.volumes[0])[1] == pytest.approx(2.0)


def test_bad_configs_are_refused(tmp_path):
    for bad in (dict(phantom="banana"), dict(snr=-1.0), dict(pose_sampling="spiral"), dict(copies=0),
                dict(shift_distribution="cauchy"), dict(box=4)):
        with pytest.raises(ConfigError):
            simulate(small_cfg(**bad), tmp_path, progress=False)
    with pytest.raises(InputError, match="nothing.mrc"):
        simulate(small_cfg(phantom=str(tmp_path / "nothing.mrc")), tmp_path, progress=False)


def test_command_line(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    simulate_command.add_arguments(parser)
    args = parser.parse_args(["--phantom", "two_state", "--box", "16", "-n", "30", "--snr", "0.1",
                              "-o", str(tmp_path / "cli"), "--shift-std", "1", "--grid-step", "45",
                              "--seed", "5", "--no-progress"])
    assert simulate_command.run(args) == 0
    assert "particles" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert cfg["pose_sampling"] == "grid" and cfg["grid_step_deg"] == 45 and cfg["phantom"] == "two_state"
    truth = load_truth(tmp_path / "cli" / "truth.npz")
    assert set(np.unique(truth["t"])) <= {0.0, 1.0} and len(truth["volume_files"]) == 2
    with pytest.raises(InputError):
        load_truth(tmp_path / "nowhere.npz")
    # through the console script: a user error is one line naming the file, exit status 2
    from cryovae_nb.cli import main

    capsys.readouterr()
    assert main(["simulate", "--phantom", str(tmp_path / "absent.mrc"), "-o", str(tmp_path / "x"),
                 "--no-progress"]) == 2
    assert "absent.mrc" in capsys.readouterr().err
    assert main(["simulate", "--snr", "-1", "-o", str(tmp_path / "y"), "--no-progress"]) == 2


def test_astigmatic_ctf_simulation_matches_its_star_columns(tmp_path):
    cfg = small_cfg(ctf=True, snr=None, n_particles=20, pixel_size=2.0, defocus_range=(8000.0, 12000.0),
                    astigmatism=1500.0)
    ds = simulate(cfg, tmp_path, progress=False)
    ctf = io.read_particles(ds.star).ctf
    diff = ctf.defocus_u - ctf.defocus_v
    assert np.all((diff >= 0) & (diff <= 1500)) and np.ptp(diff) > 100           # astigmatic, in range
    assert np.all((ctf.defocus_angle >= 0) & (ctf.defocus_angle <= 180)) and np.ptp(ctf.defocus_angle) > 10
    mean = 0.5 * (ctf.defocus_u + ctf.defocus_v)
    assert np.all((mean >= 8000) & (mean <= 12000))
    parts = io.read_particles(ds.star)
    expected = apply_ctf(project_reference(lshape_volume(16), parts.poses.rotations, parts.poses.shifts),
                         compute_ctf(16, 2.0, ctf.defocus_u, ctf.defocus_v, ctf.defocus_angle,
                                     ctf.voltage, ctf.cs, ctf.amp_contrast, ctf.phase_shift))
    np.testing.assert_allclose(parts.images[:], expected, atol=1e-4)
    # without astigmatism the draws (and so every other dataset) are those of before
    plain = simulate(small_cfg(ctf=True, snr=None, n_particles=20, pixel_size=2.0,
                               defocus_range=(8000.0, 12000.0)), tmp_path / "plain", progress=False)
    pc = io.read_particles(plain.star).ctf
    np.testing.assert_array_equal(pc.defocus_u, pc.defocus_v)
    np.testing.assert_array_equal(pc.defocus_angle, 0.0)
    with pytest.raises(ConfigError, match="astigmatism"):
        small_cfg(ctf=True, astigmatism=-1.0).validate()

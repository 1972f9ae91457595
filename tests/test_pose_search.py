"""The global pose search of learned-pose training (model/pose_search.py, CryoVAE.search_pose):
its building blocks against direct computations, and the search against known poses and shifts."""
from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

from cryovae_nb import geometry  # noqa: E402
from cryovae_nb.errors import ConfigError  # noqa: E402
from cryovae_nb.model import ModelConfig, build_model, pose_search  # noqa: E402
from cryovae_nb.model.batch import Batch  # noqa: E402
from cryovae_nb.training.steps import make_train_step  # noqa: E402
from cryovae_nb.model.projectors import lowpass, project_fourier  # noqa: E402
from cryovae_nb.model.rotations import quaternion_multiply, quaternion_to_matrix  # noqa: E402
from cryovae_nb.synthetic import lshape_volume  # noqa: E402


def small(**kw):
    base = dict(box=24, latent_dim=2, encoder_layers=1, encoder_units=16, decoder_layers=1,
                decoder_units=16, pose_search_deg=15.0)
    base.update(kw)
    return ModelConfig().with_options(**base)


def head_pose(model, images):
    """The pose head's own guess (before the search), on what it reads: the encoder's last hidden
    layer (pose_input="hidden") or z_mean (the seed's)."""
    if model.config.pose.input == "hidden":
        return model.pose(model._hidden(images, False))
    return model.pose(model.encode(Batch(images))["z_mean"])


def test_several_poses_per_volume_equal_one_pose_each():
    rng = np.random.default_rng(0)
    vols = rng.normal(size=(2, 12, 12, 12)).astype(np.float32)
    rots = geometry.random_rotations(6, rng).astype(np.float32).reshape(2, 3, 3, 3)
    shifts = rng.normal(size=(2, 2)).astype(np.float32)
    many = project_fourier(vols, rots, shifts).numpy()
    assert many.shape == (2, 3, 12, 12)
    for k in range(3):
        np.testing.assert_allclose(many[:, k], project_fourier(vols, rots[:, k], shifts).numpy(), atol=1e-5)


def test_band_limited_projection_is_the_low_passed_projection_and_lowpass_shifts_exactly():
    rng = np.random.default_rng(1)
    vols = rng.normal(size=(2, 12, 12, 12)).astype(np.float32)
    rots = geometry.random_rotations(2, rng).astype(np.float32)
    full = project_fourier(vols, rots)
    np.testing.assert_allclose(project_fourier(vols, rots, band=3.0).numpy(), lowpass(full, 3.0).numpy(),
                               atol=1e-5)
    # a band covering every frequency keeps the image; whole-pixel shifts are periodic rolls
    img = rng.normal(size=(2, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(lowpass(img, 12.0).numpy(), img, atol=1e-5)
    moved = lowpass(img, 12.0, np.array([[2.0, -1.0], [0.0, 3.0]], np.float32)).numpy()
    np.testing.assert_allclose(moved[0], np.roll(img[0], (-1, 2), axis=(0, 1)), atol=1e-5)
    np.testing.assert_allclose(moved[1], np.roll(img[1], (3, 0), axis=(0, 1)), atol=1e-5)


def test_grid_helpers():
    grid = pose_search.search_grid(30.0)
    np.testing.assert_allclose(np.linalg.norm(grid, axis=1), 1.0, atol=1e-6)
    # every random rotation is within ~the step of a grid rotation
    R = geometry.random_rotations(200, np.random.default_rng(2))
    G = geometry.quaternion_to_matrix(grid)
    nearest = geometry.rotation_angle_deg(R[:, None], G[None]).min(1)
    assert nearest.max() < 30.0
    local = pose_search.local_perturbations(10.0)
    angles = geometry.rotation_angle_deg(geometry.quaternion_to_matrix(local), np.eye(3))
    assert local.shape == (27, 4) and np.isclose(angles.min(), 0.0, atol=1e-3)
    np.testing.assert_allclose(angles.max(), np.sqrt(3) * 5.0, rtol=1e-3)
    w = pose_search.shift_window(8, 1.0)
    assert w.sum() == 5 and w[0, 0] == w[0, 7] == w[1, 0] == 1 and w[1, 1] == 0
    assert pose_search.band_dof(24, 3.6) == int(np.sum(
        (np.fft.fftfreq(24)[:, None] * 24) ** 2 + (np.fft.fftfreq(24)[None] * 24) ** 2 <= 3.6**2))


def test_quaternion_product_is_the_matrix_product():
    q = np.random.default_rng(3).normal(size=(2, 5, 4)).astype(np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    prod = quaternion_to_matrix(tf.reshape(quaternion_multiply(q[0], q[1]), [-1, 4])).numpy()
    Ra, Rb = (geometry.quaternion_to_matrix(x) for x in q)
    np.testing.assert_allclose(prod, Ra @ Rb, atol=1e-5)


def test_search_recovers_the_poses_and_shifts_of_clean_projections():
    """Project the L at random poses and whole-pixel shifts; the search, given the true volume and
    the true shift as the head's guess, must find them (rotation to a few degrees, shift exactly)."""
    n = 24
    model = build_model(small(box=n, pose_refine_band=0.35))
    rng = np.random.default_rng(4)
    truth = lshape_volume(n).astype(np.float32)
    R = geometry.random_rotations(40, rng).astype(np.float32)
    shifts = rng.integers(-2, 3, (40, 2)).astype(np.float32)
    vols = np.repeat(truth[None], 40, 0)
    images = model.project(vols, R, shifts).numpy()
    head = np.tile(np.array([[1.0, 0, 0, 0]], np.float32), (40, 1))
    q, found, head_won = model.search_pose(images, vols, head, shifts)
    err = geometry.rotation_angle_deg(geometry.quaternion_to_matrix(q.numpy()), R)
    assert np.median(err) < 4.0 and np.mean(err < 8.0) >= 0.9, np.sort(err)
    assert np.mean(np.all(found.numpy() == shifts, axis=1)) >= 0.9
    assert not head_won.numpy().any()
    # the head's rotation competes: given the truth, it wins (and its shift is found from scratch)
    q, found, head_won = model.search_pose(images, vols, geometry.matrix_to_quaternion(R).astype(np.float32),
                                           np.zeros_like(shifts))
    assert head_won.numpy().mean() >= 0.9
    assert np.mean(np.all(found.numpy() == shifts, axis=1)) >= 0.9


def test_pose_sampling_is_seeded_and_the_step_is_deterministic():
    n = 16
    rng = np.random.default_rng(5)
    images = rng.random((8, n, n)).astype(np.float32)
    model = build_model(small(box=n))
    vols = model.decode(model.encode(Batch(images))["z_mean"])
    head = head_pose(model, images)
    size = model.search_grid_size
    assert size == len(pose_search.search_grid(15.0))
    u = rng.random((8, size)).astype(np.float32)
    a = model.search_pose(images, vols, head["quaternion"], head["shift"], u)[0].numpy()
    b = model.search_pose(images, vols, head["quaternion"], head["shift"], u)[0].numpy()
    other = rng.random((8, size)).astype(np.float32)
    c = model.search_pose(images, vols, head["quaternion"], head["shift"], other)[0].numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)  # a random volume: a flat posterior, other draws, other poses

    def run():
        m = build_model(small(box=n))
        step = make_train_step(m)
        for i in range(3):
            out = step(Batch(images), seed=tf.constant([i, 1]))
        return out, [v.numpy() for v in m.trainable_variables]

    (o1, w1), (o2, w2) = run(), run()
    assert set(o1) == {"recon", "kl", "averaging", "pose", "total", "noise_var", "head_won", "searched_quaternion"}
    assert 0.0 <= float(o1["head_won"]) <= 1.0
    assert float(o1["pose"]) > 0 and o1["searched_quaternion"].shape == (8, 4)
    for x, y in zip(w1, w2):
        np.testing.assert_array_equal(x, y)


def test_losses_with_search_add_the_pose_term_and_encode_reports_the_searched_pose():
    n = 16
    images = np.random.default_rng(6).random((8, n, n)).astype(np.float32)
    cfg = small(box=n, pose_distill=7.0)
    model = build_model(cfg)
    out = model.compute_losses(Batch(images), training=False)
    loss = cfg.loss
    expected = (out["recon"] + loss.beta * out["kl"] + loss.averaging_factor * loss.beta * out["averaging"]
                + 7.0 * out["pose"])
    np.testing.assert_allclose(float(out["total"]), float(expected), rtol=1e-6)
    enc = model.encode(Batch(images))
    head = head_pose(model, images)
    q, s, won = model.search_pose(images, model.decode(enc["z_mean"]), head["quaternion"], head["shift"])
    np.testing.assert_allclose(enc["quaternion"].numpy(), q.numpy(), atol=1e-6)
    # the logged head_won is the fraction of images whose head rotation the search kept
    assert float(out["head_won"]) == pytest.approx(float(np.mean(won.numpy())))
    # search=False: the head's own pose
    np.testing.assert_array_equal(model.encode(Batch(images), search=False)["quaternion"].numpy(),
                                  head["quaternion"].numpy())
    # without a search the head is all there is: 0 (no search ran)
    plain = build_model(small(box=n, pose_search_deg=None))
    assert float(plain.compute_losses(Batch(images), training=False)["head_won"]) == 0.0
    np.testing.assert_allclose(enc["shift"].numpy(), s.numpy())
    # the shift head starts centred (the global search moves the images back by it)
    np.testing.assert_array_equal(head["shift"].numpy(), 0.0)


@pytest.mark.parametrize("bad", [dict(pose_search_deg=0.5), dict(pose_search_deg=120.0),
                                 dict(pose_search_band=0.0), dict(pose_refine_band=0.6),
                                 dict(pose_distill=-1.0), dict(symmetrized_loss=True)])
def test_search_options_are_validated(bad):
    with pytest.raises(ConfigError):
        small(**bad).validate()


def test_seed_preset_has_no_search():
    assert ModelConfig.preset("seed").pose.search_deg is None


# -- the Fourier-space scoring (pose.search_scoring="fourier") ---------------------------------
def test_spectral_correlation_is_the_normalised_correlation_of_the_low_passed_images():
    """Parseval: the band components' correlation equals numpy's zero-mean, unit-norm inner
    product of the images low-passed to the band (real space, every pixel)."""
    n, band = 16, 5.0
    rng = np.random.default_rng(7)
    images, proj = rng.normal(size=(3, n, n)), rng.normal(size=(4, n, n))
    k = np.fft.fftfreq(n) * n
    keep = k[:, None] ** 2 + k[None, :] ** 2 <= band**2

    def low(x):  # numpy: the band kept, the mean removed, unit norm
        y = np.real(np.fft.ifft2(np.fft.fft2(x) * keep))
        y = y - y.mean(axis=(-2, -1), keepdims=True)
        return y.reshape(len(y), -1) / np.linalg.norm(y.reshape(len(y), -1), axis=1, keepdims=True)

    want = low(images) @ low(proj).T
    weight = tf.constant(pose_search.band_components(n, band)[1])
    got = pose_search.spectral_correlation(pose_search.band_spectrum(images.astype(np.float32), band),
                                           pose_search.band_spectrum(proj.astype(np.float32), band), weight)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    # a CTF of ones is no CTF; the CTF path (ctf_correlation) agrees
    ones = np.ones((3, n, n // 2 + 1), np.float32)
    np.testing.assert_allclose(pose_search.ctf_correlation(images.astype(np.float32), proj.astype(np.float32),
                                                           ones, band).numpy(), want, atol=1e-5)


def test_shifted_scores_are_inner_products_with_moved_projections():
    """Whole-pixel shifts: numpy's inner product with the band-limited projection rolled by s;
    fractional shifts: with the projection moved by a Fourier phase (numpy), the same convention
    as the projector's shifts (the image is the projection moved by +s)."""
    n, band = 16, 6.0
    rng = np.random.default_rng(8)
    img, proj = rng.normal(size=(n, n)), rng.normal(size=(n, n))
    k = np.fft.fftfreq(n) * n
    keep = (k[:, None] ** 2 + k[None, :] ** 2 <= band**2) & ~((k[:, None] == 0) & (k[None, :] == 0))

    def low(x, s=(0.0, 0.0)):  # band-limited, zero-mean, moved by s = (x, y) px
        ramp = np.exp(-2j * np.pi * (k[None, :] * s[0] + k[:, None] * s[1]) / n)
        return np.real(np.fft.ifft2(np.fft.fft2(x) * keep * ramp))

    shifts = np.array([[0, 0], [1, 0], [0, -2], [2, 1], [0.5, -0.25], [-1.75, 1.5]], np.float32)
    want = [np.sum(low(img) * low(proj, s)) for s in shifts]
    weight = tf.constant(pose_search.band_components(n, band)[1])
    i, p = (pose_search.band_spectrum(x[None].astype(np.float32), band) for x in (img, proj))
    products = tf.cast(weight, tf.complex64) * i * tf.math.conj(p)                  # (1, c)
    freqs = tf.constant(pose_search._band_frequencies(n, band))
    np.testing.assert_allclose(pose_search.shifted_scores(products, freqs, tf.constant(shifts), n).numpy()[0]
                               / n**2, want, rtol=1e-4, atol=1e-4)
    per_image = pose_search.shifted_scores(products, freqs, tf.constant(shifts[None]), n)  # (1, S, 2) form
    np.testing.assert_allclose(per_image.numpy()[0] / n**2, want, rtol=1e-4, atol=1e-4)
    # the whole-pixel shift list is the window's, signed
    listed = pose_search.shift_list(8, 1.0)
    assert sorted(map(tuple, listed.tolist())) == [(-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)]


def test_axis_perturbations():
    local = pose_search.axis_perturbations(10.0)
    angles = geometry.rotation_angle_deg(geometry.quaternion_to_matrix(local), np.eye(3))
    assert local.shape == (7, 4) and np.isclose(angles[0], 0.0, atol=1e-3)
    np.testing.assert_allclose(angles[1:], 5.0, rtol=1e-4)


def test_fourier_scoring_recovers_poses_and_subpixel_shifts():
    """The recovery test with shifts off the pixel grid, both scorings on the same images: the
    Fourier scoring finds the rotations about as well (its last round tries 7 rotations, not 27)
    and the shifts to a quarter pixel, where the whole-pixel search is up to 0.7 px off."""
    n = 24
    rng = np.random.default_rng(4)
    truth = lshape_volume(n).astype(np.float32)
    R = geometry.random_rotations(40, rng).astype(np.float32)
    shifts = rng.uniform(-2, 2, (40, 2)).astype(np.float32)
    vols = np.repeat(truth[None], 40, 0)
    head = np.tile(np.array([[1.0, 0, 0, 0]], np.float32), (40, 1))
    found = {}
    for scoring in ("real_space", "fourier"):
        model = build_model(small(box=n, pose_refine_band=0.35, pose_search_scoring=scoring))
        images = model.project(vols, R, shifts).numpy()
        q, s, head_won = model.search_pose(images, vols, head, np.round(shifts))
        assert not head_won.numpy().any()
        err = geometry.rotation_angle_deg(geometry.quaternion_to_matrix(q.numpy()), R)
        found[scoring] = err, np.abs(s.numpy() - shifts).max(axis=1)
    (err, off), (err0, off0) = found["fourier"], found["real_space"]
    assert np.median(err) < 6.0 and np.mean(err < 10.0) >= np.mean(err0 < 10.0) - 0.1, (np.sort(err), np.sort(err0))
    assert np.mean(off <= 0.25) >= 0.8 and off.max() <= 0.75 and np.median(off) < np.median(off0), np.sort(off)
    # the head's rotation competes and wins given the truth
    q, s, head_won = model.search_pose(images, vols, geometry.matrix_to_quaternion(R).astype(np.float32),
                                       np.zeros_like(shifts))
    assert head_won.numpy().mean() >= 0.9


def test_fourier_scoring_step_is_deterministic_and_differs_from_real_space():
    n = 16
    images = np.random.default_rng(5).random((8, n, n)).astype(np.float32)

    def run(scoring):
        m = build_model(small(box=n, pose_search_scoring=scoring))
        step = make_train_step(m)
        for i in range(2):
            out = step(Batch(images), seed=tf.constant([i, 1]))
        return {k: float(v) for k, v in out.items() if v.shape.rank == 0}, [v.numpy() for v in m.trainable_variables]

    (o1, w1), (o2, w2), (o3, _) = run("fourier"), run("fourier"), run("real_space")
    for x, y in zip(w1, w2):
        np.testing.assert_array_equal(x, y)
    assert o1 == o2 and o1 != o3


def test_search_scoring_is_validated():
    with pytest.raises(ConfigError, match="search_scoring"):
        small(pose_search_scoring="fft").validate()


@pytest.mark.parametrize("scoring", ["real_space", "fourier"])
def test_a_background_inside_the_mask_disc_does_not_steer_the_search(scoring):
    """Tanh-normalised images sit on a background inside the mask disc (0 outside): both scorings
    remove the in-disc mean, so a strong one leaves the poses found (the Fourier scoring, before
    it did, put them a median 120 degrees off on the L at SNR 0.1)."""
    n = 24
    model = build_model(small(box=n, pose_refine_band=0.35, pose_search_scoring=scoring))
    rng = np.random.default_rng(9)
    truth = lshape_volume(n).astype(np.float32)
    R = geometry.random_rotations(40, rng).astype(np.float32)
    vols = np.repeat(truth[None], 40, 0)
    clean = model.project(vols, R).numpy()
    disc = model._disc.numpy()
    images = (clean + 3.0 * clean.std() * disc) * disc
    head = np.tile(np.array([[1.0, 0, 0, 0]], np.float32), (40, 1))
    q, _, _ = model.search_pose(images, vols, head, np.zeros((40, 2), np.float32))
    err = geometry.rotation_angle_deg(geometry.quaternion_to_matrix(q.numpy()), R)
    assert np.median(err) < 6.0 and np.mean(err < 10.0) >= 0.75, np.sort(err)


# -- the band's slices without images, and the search from cached poses (stop 20) --------------

@pytest.mark.parametrize("n, pad, width", [(24, 1.0, 3), (17, 1.0, 4), (16, 1.5, 3), (24, 1.0, 2)])
def test_band_slices_are_the_band_components_of_the_projections(n, pad, width):
    """What the search scores (projector.band_slices: the central slices at the band's components,
    no image formed) equals the rfft2 of the projector's band-limited images there, for both the
    projector's kernel and the trilinear feature path, and for the real-space projector."""
    from cryovae_nb.model.projectors import make_projector

    rng = np.random.default_rng(3)
    vols = rng.normal(size=(2, n, n, n)).astype(np.float32)
    R = geometry.random_rotations(6, rng).astype(np.float32).reshape(2, 3, 3, 3)
    for kind in ("fourier", "real"):
        pr = make_projector(small(box=n, projector=kind, fourier_pad=pad, fourier_kernel_width=width))
        for band in (0.15 * n, 0.25 * n, 0.35 * n):
            for features in (False, True):
                img = pr.project_features(vols, R, band=band) if features else pr(vols, R, band=band)
                want = pose_search.band_spectrum(img, band).numpy()
                got = pr.band_slices(pr.spectrum(vols, features=features), R, band=band,
                                     features=features).numpy()
                assert got.shape == want.shape == (2, 3, len(pose_search.band_components(n, band)[0]))
                np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("scoring", ["real_space", "fourier"])
def test_search_from_cached_poses_refines_them_locally(scoring):
    """start= (a pose cache): near the truth the local round finds it; a zero row takes the
    head's rotation instead; far from the truth (no global stage) it stays far away."""
    n = 24
    model = build_model(small(box=n, pose_refine_band=0.35, pose_search_scoring=scoring))
    rng = np.random.default_rng(5)
    truth = lshape_volume(n).astype(np.float32)
    R = geometry.random_rotations(24, rng).astype(np.float32)
    vols = np.repeat(truth[None], 24, 0)
    images = model.project(vols, R).numpy()
    q_true = geometry.matrix_to_quaternion(R).astype(np.float32)
    identity = np.tile(np.array([[1.0, 0, 0, 0]], np.float32), (24, 1))

    def off_by(deg):  # the truth turned by deg about a random axis
        axis = rng.normal(size=(24, 3))
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        turn = geometry.matrix_to_quaternion(
            Rotation.from_rotvec(np.deg2rad(deg) * axis).as_matrix()).astype(np.float32)
        return quaternion_multiply(q_true, turn).numpy()

    def error(q):
        return geometry.rotation_angle_deg(geometry.quaternion_to_matrix(np.asarray(q)), R)

    start = off_by(3.0)
    q, shifts, head_won = model.search_pose(images, vols, identity, np.zeros((24, 2), np.float32), start=start)
    # (fourier scoring's one round turns about one axis at a time: 3 -> ~2.5 degrees)
    assert np.median(error(q)) < 0.92 * np.median(error(start)), np.sort(error(q))
    assert not head_won.numpy().any()
    # a zero row: no cached pose, the head's rotation is the start (here: the truth, nearby)
    q, _, _ = model.search_pose(images, vols, off_by(2.0), np.zeros((24, 2), np.float32),
                                start=np.zeros((24, 4), np.float32))
    assert np.median(error(q)) < 2.5
    # no global stage: 90 degrees off stays far off
    q, _, _ = model.search_pose(images, vols, identity, np.zeros((24, 2), np.float32), start=off_by(90.0))
    assert np.median(error(q)) > 60

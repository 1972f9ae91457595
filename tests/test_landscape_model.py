"""The model changes against latent-space collapse (ModelConfig: likelihood, link, noise_ema,
kl_warmup_steps, free_bits, pose_input, search_reference), each checked against independent math:
the Gaussian NLL by formula, free bits and the KL warm-up by the weight they give the KL term, the
noise variance by a numpy bias-corrected EMA (and through a checkpoint), the pose head's input by
what the latent noise can change, and the pose search's reference volume on a two-state particle."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

from cryovae_nb import geometry  # noqa: E402
from cryovae_nb.errors import ConfigError  # noqa: E402
from cryovae_nb.model import ModelConfig, build_model, losses  # noqa: E402
from cryovae_nb.model.batch import Batch  # noqa: E402
from cryovae_nb.training.steps import make_optimizer, make_train_step  # noqa: E402
from cryovae_nb.volumes import diameter_mask  # noqa: E402
from cryovae_nb.model.vae import latent_noise  # noqa: E402
from cryovae_nb.synthetic import hinge_volume  # noqa: E402


def tiny(**kw):
    base = dict(box=8, latent_dim=3, encoder_layers=1, encoder_units=16, decoder_layers=1,
                decoder_units=16, projector="real", pose_search_deg=None)
    base.update(kw)
    return ModelConfig().with_options(**base)


def images_for(n=8, b=4, seed=0):
    return np.random.default_rng(seed).uniform(0.1, 0.9, (b, n, n)).astype(np.float32)


def freeze_volume(model, seed=0):
    """Make the decoded volume independent of z: the decoder's first kernel zeroed (the leaky
    ReLUs then pass zeros), the voxel layer's bias random (so the volume is not empty)."""
    k = model.decoder.hidden_layers[0].kernel
    k.assign(np.zeros(k.shape, np.float32))
    b = model.decoder.voxel_layer.bias
    b.assign(np.random.default_rng(seed).normal(size=b.shape).astype(np.float32))


# -- the Gaussian likelihood -----------------------------------------------------------------------
@pytest.mark.parametrize("masked", [False, True])
def test_gaussian_nll_is_the_normal_log_density(masked):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(3, 8, 8)).astype(np.float32)
    pred = rng.normal(size=(3, 8, 8)).astype(np.float32)
    var = 0.37
    mask = diameter_mask(8, 0.95, ndim=3)[4].astype(np.float32) if masked else np.ones((8, 8), np.float32)
    # -log N(x; mu, var) = (x - mu)^2 / (2 var) + log(2 pi var) / 2, summed over the scored pixels
    per_pixel = (images.astype(np.float64) - pred) ** 2 / (2 * var) + 0.5 * math.log(2 * math.pi * var)
    want = (per_pixel * mask).sum(axis=(1, 2))
    got = losses.gaussian_nll(images, pred, var, mask if masked else None).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    if masked:  # pixels outside the mask do not count, whatever they hold
        assert mask.sum() < 64
        moved = images.copy()
        moved[:, mask == 0] += 5.0
        np.testing.assert_allclose(losses.gaussian_nll(moved, pred, var, mask).numpy(), want, rtol=1e-5)
    # the variance minimising the mean NLL is the mean squared residual (what the EMA tracks)
    sq = float(((images.astype(np.float64) - pred) ** 2 * mask).sum() / (mask.sum() * 3))
    mean_nll = [float(np.mean(losses.gaussian_nll(images, pred, v, mask).numpy()))
                for v in (0.8 * sq, sq, 1.25 * sq)]
    assert mean_nll[1] < mean_nll[0] and mean_nll[1] < mean_nll[2]


def test_kl_per_dimension_sums_to_the_kl():
    rng = np.random.default_rng(2)
    mu, lv = rng.normal(size=(2, 5, 3)).astype(np.float32)
    want = 0.5 * (mu.astype(np.float64) ** 2 + np.exp(lv) - 1 - lv)
    np.testing.assert_allclose(losses.kl_per_dimension(mu, lv).numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(losses.kl_divergence(mu, lv).numpy(), want.sum(-1), rtol=1e-5)


def test_identity_link_scores_the_logits_themselves():
    cfg = tiny(pose_mode="known", link="identity", image_offset=False, loss_in_mask=False,
               latent_inference="encoder")
    model = build_model(cfg)
    images = images_for()
    rot = geometry.random_rotations(4, np.random.default_rng(3)).astype(np.float32)
    out = model.compute_losses(Batch(images, rot), training=False)
    proj = model.project(model.decode(model.encode(Batch(images))["z_mean"]), rot).numpy().astype(np.float64)
    sq = (images - proj) ** 2
    var = sq.mean()
    want = 0.5 * sq.sum(axis=(1, 2)) / var + 0.5 * 64 * np.log(2 * np.pi * var)
    np.testing.assert_allclose(out["recon_per_sample"].numpy(), want, rtol=1e-5)
    assert float(out["residual"]) == pytest.approx(var, rel=1e-5)


# -- free bits and the KL warm-up -----------------------------------------------------------------
def _set_posterior(model, mu, logvar):
    """Every image gets the same posterior N(mu, exp(logvar)): zero kernels, chosen biases."""
    for layer, bias in ((model.z_mean_layer, mu), (model.z_logvar_layer, logvar)):
        layer.kernel.assign(np.zeros(layer.kernel.shape, np.float32))
        layer.bias.assign(np.asarray(bias, np.float32))


@pytest.mark.parametrize("free_bits", [0.0, 0.5])
def test_free_bits_charge_the_allowance_below_it_and_no_gradient(free_bits):
    beta = 0.7
    model = build_model(tiny(beta=beta, free_bits=free_bits, averaging_factor=3.0))
    freeze_volume(model)  # nothing but the KL term sees z (the pose head reads the hidden layer)
    mu, lv = np.array([0.0, 2.0, 0.5]), np.array([0.0, -1.0, 0.2])
    _set_posterior(model, mu, lv)
    kl = 0.5 * (mu**2 + np.exp(lv) - 1 - lv)  # ~ [0, 2.18, 0.136]: dims 0 and 2 below 0.5 nats
    images = images_for()
    with tf.GradientTape() as tape:
        out = model.compute_losses(Batch(images), training=True)
    g_mu, g_lv = (g.numpy() for g in tape.gradient(out["total"], [model.z_mean_layer.bias,
                                                                    model.z_logvar_layer.bias]))
    np.testing.assert_allclose(out["kl_per_dim"].numpy(), kl, rtol=1e-5, atol=1e-7)
    assert float(out["kl"]) == pytest.approx(kl.sum(), rel=1e-5)  # reported: the true KL
    charged = np.maximum(kl, free_bits).sum()
    want = float(out["recon"]) + beta * (charged + 3.0 * float(out["averaging"]))
    assert float(out["total"]) == pytest.approx(want, rel=1e-6, abs=1e-5)
    # d KL_d / d mu_d = mu_d, d KL_d / d logvar_d = (exp(logvar_d) - 1) / 2; zero where free
    charged_dims = kl > free_bits
    np.testing.assert_allclose(g_mu, beta * np.where(charged_dims, mu, 0.0), atol=1e-6)
    np.testing.assert_allclose(g_lv, beta * np.where(charged_dims, 0.5 * (np.exp(lv) - 1), 0.0), atol=1e-6)
    if free_bits:
        assert float(out["total"]) - float(out["recon"]) - beta * 3.0 * float(out["averaging"]) == \
            pytest.approx(beta * (free_bits + kl[1] + free_bits), rel=1e-4)


@pytest.mark.parametrize("reducer", [False, True])
def test_kl_warmup_ramps_the_kl_weight_in_a_compiled_step(reducer):
    beta, factor, warmup = 0.5, 10.0, 4
    model = build_model(tiny(beta=beta, averaging_factor=factor, kl_warmup_steps=warmup))
    step = make_train_step(model, make_optimizer(model, 1e-4), jit=True,
                           grad_reducer=(lambda g: g) if reducer else None)
    images = images_for(seed=4)
    weights = []
    for i in range(warmup + 2):
        out = step(Batch(images), seed=[5, i])
        regulariser = float(out["kl"]) + factor * float(out["averaging"])
        assert regulariser > 0.1  # a ratio worth measuring
        weights.append((float(out["total"]) - float(out["recon"])) / (beta * regulariser))
    # min(1, (iteration + 1) / warmup) for iterations 0, 1, ...
    np.testing.assert_allclose(weights, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0], rtol=1e-3)
    if reducer:
        return
    # without warm-up: the full weight from the first step
    model = build_model(tiny(beta=beta, averaging_factor=factor))
    out = make_train_step(model, make_optimizer(model, 1e-4), jit=False)(Batch(images), seed=[5, 0])
    assert (float(out["total"]) - float(out["recon"])) / (
        beta * (float(out["kl"]) + factor * float(out["averaging"]))) == pytest.approx(1.0, rel=1e-3)


# -- the running noise variance ---------------------------------------------------------------------
@pytest.mark.parametrize("reducer", [False, True])
def test_noise_variance_is_the_bias_corrected_ema_of_the_residuals_and_is_checkpointed(tmp_path, reducer):
    from cryovae_nb.training.rundir import make_checkpoint

    d, steps = 0.9, 5
    cfg = tiny(noise_ema=d)
    model = build_model(cfg)
    images = images_for(seed=6)
    step = make_train_step(model, make_optimizer(model, 1e-2), jit=True,
                           grad_reducer=(lambda g: g) if reducer else None)
    residuals, used = [], []
    for i in range(steps):
        # the residual this step will see: same weights, same noise (the seed's, drawn outside XLA)
        residuals.append(float(model.compute_losses(Batch(images), seed=[7, i])["residual"]))
        used.append(float(step(Batch(images), seed=[7, i])["noise_var"]))
    assert len(set(np.round(residuals, 6))) == steps  # the weights move: an EMA of distinct values

    def ema(values):
        m = 0.0
        for r in values:
            m = d * m + (1 - d) * r
        return m / (1 - d ** len(values))

    # the first step uses its own batch's residual; each later one the EMA of those before it
    want_used = [residuals[0]] + [ema(residuals[:k]) for k in range(1, steps)]
    np.testing.assert_allclose(used, want_used, rtol=1e-4)
    assert float(model.residual_count) == steps
    assert float(model.noise_variance()) == pytest.approx(ema(residuals), rel=1e-4)
    assert abs(ema(residuals) - (1 - d) * sum(d ** (steps - 1 - k) * r for k, r in enumerate(residuals))) \
        > 0.1 * ema(residuals)  # the bias correction matters at this step count

    path = make_checkpoint(model).write(str(tmp_path / "ckpt"))
    fresh = build_model(tiny(noise_ema=d), seed=3)
    assert float(fresh.residual_count) == 0.0
    make_checkpoint(fresh).read(path).assert_existing_objects_matched()
    assert float(fresh.residual_count) == steps
    assert float(fresh.noise_variance()) == float(model.noise_variance())
    # and the restored model scores a batch with it, not with the batch's own residual
    a, b = model.compute_losses(Batch(images), training=False), fresh.compute_losses(Batch(images), training=False)
    assert float(b["noise_var"]) == float(a["noise_var"]) == float(model.noise_variance())
    assert float(b["noise_var"]) != pytest.approx(float(b["residual"]), rel=1e-3)


# -- what the pose head reads ------------------------------------------------------------------------
@pytest.mark.parametrize("pose_input", ["hidden", "latent"])
def test_hidden_pose_input_makes_the_pose_independent_of_the_latent_noise(pose_input):
    model = build_model(tiny(pose_input=pose_input, likelihood="bernoulli"))
    freeze_volume(model)  # the volume ignores z: only the pose can carry the noise into the loss
    images = images_for(seed=8)
    n1 = latent_noise((4, 3), tf.constant([1, 1]))
    n2 = latent_noise((4, 3), tf.constant([2, 2]))

    def recon(noise):
        return model.compute_losses(Batch(images), noise=noise)["recon_per_sample"].numpy()

    np.testing.assert_array_equal(recon(n1), recon(n1))
    # z does differ between the draws (a posterior that is not a point)
    z_logvar = model.encode(Batch(images))["z_logvar"].numpy()
    assert np.all(np.exp(0.5 * z_logvar) > 0.1)
    if pose_input == "hidden":
        np.testing.assert_array_equal(recon(n1), recon(n2))
    else:
        assert not np.allclose(recon(n1), recon(n2), rtol=1e-4)


# -- the pose search's reference volume ------------------------------------------------------------
def _search_models(n):
    base = dict(box=n, latent_dim=2, encoder_layers=1, encoder_units=8, decoder_layers=1,
                decoder_units=8, pose_search_deg=15.0, pose_refine_band=0.35)
    own = ModelConfig().with_options(**base)
    return build_model(own), build_model(own.with_options(search_reference="mean"))


def test_own_and_mean_reference_agree_when_the_batch_has_one_volume():
    n, m = 16, 8
    own, mean = _search_models(n)
    assert own.config.pose.search_reference == "own"
    rng = np.random.default_rng(9)
    R = geometry.random_rotations(m, rng).astype(np.float32)
    shifts = rng.integers(-1, 2, (m, 2)).astype(np.float32)
    vols = np.repeat(hinge_volume(n, 0.5)[None], m, 0)
    images = own.project(vols, R, shifts).numpy()
    head = np.tile(np.array([[1.0, 0, 0, 0]], np.float32), (m, 1))
    a = [x.numpy() for x in own.search_pose(images, vols, head, shifts)]
    b = [x.numpy() for x in mean.search_pose(images, vols, head, shifts)]
    np.testing.assert_allclose(np.abs(np.sum(a[0] * b[0], -1)), 1.0, atol=1e-5)  # same rotation
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])


def test_own_reference_needs_one_volume_per_image():
    from cryovae_nb.errors import InputError

    own, _ = _search_models(16)
    images = np.zeros((4, 16, 16), np.float32)
    head = np.tile(np.array([[1.0, 0, 0, 0]], np.float32), (4, 1))
    with pytest.raises(InputError, match="4 images but 1 volumes"):
        own.search_pose(images, hinge_volume(16, 0.5)[None], head, np.zeros((4, 2), np.float32))


def test_own_reference_keeps_the_true_pose_where_the_mean_volume_misleads():
    """Images of a closed and an open hinge (half each), the head given the true pose: against each
    image's own volume the truth correlates perfectly and wins the local round; against the batch's
    mean (half of each state) other rotations fit that blend better, and the truth is lost."""
    n, m = 16, 16
    own, mean = _search_models(n)
    rng = np.random.default_rng(4)
    R = geometry.random_rotations(m, rng).astype(np.float32)
    vols = np.stack([hinge_volume(n, float(i % 2)) for i in range(m)]).astype(np.float32)
    shifts = np.zeros((m, 2), np.float32)
    images = own.project(vols, R, shifts).numpy()
    truth = geometry.matrix_to_quaternion(R).astype(np.float32)
    errors, won = {}, {}
    for name, model in (("own", own), ("mean", mean)):
        q, found, head_won = model.search_pose(images, vols, truth, shifts)
        errors[name] = geometry.rotation_angle_deg(geometry.quaternion_to_matrix(q.numpy()), R)
        won[name] = head_won.numpy()
        np.testing.assert_array_equal(found.numpy(), shifts)
    assert won["own"].all() and errors["own"].max() < 0.1, errors["own"]
    assert won["mean"].mean() <= 0.75 and np.median(errors["mean"]) > 2.0, errors["mean"]


# -- validation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    dict(likelihood="poisson"), dict(likelihood=None), dict(link="exp"), dict(pose_input="z"),
    dict(search_reference="median"), dict(likelihood="bernoulli", link="identity"),
    dict(noise_ema=1.0), dict(noise_ema=-0.1), dict(noise_ema=float("nan")),
    dict(kl_warmup_steps=-1), dict(kl_warmup_steps=2.5), dict(kl_warmup_steps=True),
    dict(free_bits=-0.1), dict(free_bits=float("nan"))])
def test_new_options_are_validated(bad):
    with pytest.raises(ConfigError):
        tiny(**bad).validate()
    with pytest.raises(ConfigError):
        build_model(tiny(**bad))


@pytest.mark.parametrize("good", [
    dict(likelihood="bernoulli"), dict(link="identity"), dict(pose_input="latent"),
    dict(search_reference="mean"), dict(noise_ema=0.0), dict(kl_warmup_steps=0),
    dict(kl_warmup_steps=100), dict(free_bits=0.0), dict(free_bits=2.0)])
def test_new_options_accept_good_values(good):
    tiny(**good).validate()


# --------------------------------------------------------------------------------------------
# linearized latents (latent_inference="linearized")


def _linear_model(**kw):
    """A decoder that is exactly linear in z (no hidden layer, linear voxels) and the identity
    link: the model image is then y0 + G z exactly, and the linearised posterior is the exact one."""
    cfg = tiny(**{**dict(box=12, latent_dim=3, decoder_layers=0, output_activation="linear",
                         link="identity", image_offset=False, pose_mode="known", projector="fourier",
                         fourier_kernel_width=2, latent_inference="linearized", latent_band=0.5,
                         volume_mask=None), **kw})
    return build_model(cfg)


def test_linearized_posterior_recovers_the_latent_of_its_own_images():
    from cryovae_nb.model.projectors import project_fourier

    model = _linear_model()
    rng = np.random.default_rng(0)
    b, n = 16, 12
    rot = geometry.random_rotations(b, rng).astype(np.float32)
    z_true = rng.normal(0, 1, (b, 3)).astype(np.float32)
    clean = project_fourier(model.decode(z_true), rot, None, width=2, band=0.5 * n).numpy()
    images = clean + rng.normal(0, 1e-3, clean.shape).astype(np.float32)
    z_mean, z_logvar = model.linearized_posterior(Batch(images, rot), None, noise_var=1e-6)
    np.testing.assert_allclose(z_mean.numpy(), z_true, atol=0.02)
    # the posterior shrinks: far below the prior's unit variance at this noise
    assert np.all(z_logvar.numpy() < np.log(1e-2))
    # and at a noise far above the signal it stays at the prior
    z_mean, z_logvar = model.linearized_posterior(Batch(images, rot), None, noise_var=1e6)
    assert np.all(np.abs(z_mean.numpy()) < 1e-2) and np.all(np.abs(z_logvar.numpy()) < 1e-2)


def test_linearized_posterior_is_the_gaussian_posterior_by_numpy():
    from cryovae_nb.model.projectors import project_fourier

    model = _linear_model()
    rng = np.random.default_rng(1)
    b, n, d = 5, 12, 3
    rot = geometry.random_rotations(b, rng).astype(np.float32)
    images = rng.normal(0, 1, (b, n, n)).astype(np.float32)
    var = 0.7
    probes = np.concatenate([np.zeros((1, d)), np.eye(d)]).astype(np.float32)
    proj = np.stack([project_fourier(model.decode(probes[k:k + 1]).numpy().repeat(b, 0), rot, None,
                                     width=2, band=0.5 * n).numpy() for k in range(d + 1)])
    disc = diameter_mask(n, 1.0, ndim=3)[n // 2]  # only the pixels the loss scores (loss_in_mask)
    G = ((proj[1:] - proj[:1]) * disc).transpose(1, 0, 2, 3).reshape(b, d, -1).astype(np.float64)
    r = ((images - proj[0]) * disc).reshape(b, -1).astype(np.float64)
    z_mean, z_logvar = model.linearized_posterior(Batch(images, rot), None, noise_var=var)
    for i in range(b):
        A = G[i] @ G[i].T / var + np.eye(d)
        np.testing.assert_allclose(z_mean.numpy()[i], np.linalg.solve(A, G[i] @ r[i] / var), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(np.exp(z_logvar.numpy()[i]), np.diag(np.linalg.inv(A)), rtol=1e-3)


def test_linearized_latents_train_and_need_the_poses():
    from cryovae_nb.errors import InputError

    model = _linear_model()
    rng = np.random.default_rng(2)
    rot = geometry.random_rotations(4, rng).astype(np.float32)
    images = rng.normal(0, 1, (4, 12, 12)).astype(np.float32)
    step = make_train_step(model, jit=False)
    before = model.decoder.voxel_layer.kernel.numpy().copy()
    out = step(Batch(images, rot), seed=[0, 0])
    assert np.isfinite(float(out["total"])) and not np.array_equal(model.decoder.voxel_layer.kernel.numpy(), before)
    assert model.encode(Batch(images, rotations=rot))["z_mean"].shape == (4, 3)
    with pytest.raises(InputError, match="poses"):
        model.encode(Batch(images))
    with pytest.raises(ConfigError, match="known"):
        ModelConfig().with_options(latent_inference="linearized", pose_mode="learned").validate()


def test_principal_volume_estimate_finds_the_direction_the_particles_vary_along():
    """Images of V0 + a_i u (a_i ~ N(0, s^2)) plus noise, at known random poses: the subspace
    iteration of covariance_statistics / update_covariance turns the first basis volume towards u
    and estimates the variance s^2 along it; the noise term is subtracted (pure noise gives ~0)."""
    from cryovae_nb.model.projectors import project_fourier

    model = _linear_model(latent_dim=2, covariance_ema=0.8)
    n, b, s, noise = 12, 64, 1.5, 0.3
    rng = np.random.default_rng(3)
    v0 = model.decode(np.zeros((1, 2), np.float32)).numpy()[0]
    zz, yy, xx = np.mgrid[:n, :n, :n]
    u = np.exp(-((zz - 4.5) ** 2 + (yy - 6) ** 2 + (xx - 7) ** 2) / (2 * 1.5**2)).astype(np.float32)
    u /= np.linalg.norm(u)            # a smooth blob that comes and goes (the estimate is low-passed)

    def batch(signal: bool):
        rot = geometry.random_rotations(b, rng).astype(np.float32)
        a = rng.normal(0, s, b).astype(np.float32) if signal else np.zeros(b, np.float32)
        vols = v0[None] + a[:, None, None, None] * u[None]
        img = project_fourier(vols, rot, None, width=2, band=0.5 * n).numpy()
        return img + rng.normal(0, noise, img.shape).astype(np.float32), rot

    for _ in range(40):
        img, rot = batch(True)
        hu, var = model.covariance_statistics(Batch(img, rot), noise_var=noise**2)
        model.update_covariance(hu, var)
    basis = model.pc_basis.numpy().reshape(2, -1)
    overlap = np.abs(basis @ u.ravel())
    assert overlap[0] > 3 * overlap[1]
    # The estimate is the top eigenvolume of the back-projected covariance sum_i P_i^T C P_i...:
    # for C = s^2 u u^T that is ~ F u with F = mean_i P_i^T P_i (a ~1/|k| blur), computed here
    # independently as the adjoint of the projector (TensorFlow's gradient of |P_i u|^2 / 2)
    rot = geometry.random_rotations(400, rng).astype(np.float32)
    ut = tf.constant(np.repeat(u[None], 400, 0))
    with tf.GradientTape() as tape:
        tape.watch(ut)
        energy = 0.5 * tf.reduce_sum(tf.square(project_fourier(ut, rot, None, width=2) * model._disc))
    fu = tf.reduce_sum(tape.gradient(energy, ut), 0).numpy().ravel()
    fu /= np.linalg.norm(fu)
    assert abs(basis[0] @ fu) > 0.9, abs(basis[0] @ fu)
    # the variance along the basis volume b, as the images see it (least squares of a u's
    # projections on b's): s^2 mean <P u, P b>^2 / mean |P b|^4, inside the disc
    pb, pu = (project_fourier(np.repeat(v.reshape(1, n, n, n), 400, 0), rot, None, width=2).numpy()
              * model._disc.numpy() for v in (basis[0], u))
    want = s**2 * np.mean(np.sum(pu * pb, (1, 2)) ** 2) / np.mean(np.sum(pb * pb, (1, 2)) ** 2)
    assert model.pc_variance.numpy()[0] == pytest.approx(want, rel=0.3)
    # the decoder now varies along it: z_0 = 1 adds sqrt(variance) of the basis volume
    def step_along_z0():
        return (model.decode(np.array([[1.0, 0.0]], np.float32)) - model.decode(np.zeros((1, 2), np.float32))).numpy()[0]

    var = model.pc_variance.numpy().copy()
    with_pc = step_along_z0()
    model.pc_variance.assign(np.zeros(2, np.float32))
    without = step_along_z0()   # the decoder network's own (here linear) response to z
    model.pc_variance.assign(var)
    np.testing.assert_allclose((with_pc - without).ravel(), np.sqrt(var[0]) * basis[0], atol=1e-5)
    # noise alone: the variance along any direction is estimated near zero
    fresh = _linear_model(latent_dim=2, covariance_ema=0.8)
    for _ in range(20):
        img, rot = batch(False)
        fresh.update_covariance(*fresh.covariance_statistics(Batch(img, rot), noise_var=noise**2))
    assert np.all(fresh.pc_variance.numpy() < 0.1 * s**2)


def test_principal_volume_estimate_ignores_an_error_in_the_mean_map():
    """Every image carries the same error e of the map at z = 0 (as early in training, when the
    mean map is still wrong) besides the conformational variation a_i u: the estimate is a
    covariance (centred over the batch), so its first basis volume still follows u, not e, and the
    variance along it stays near s^2. Uncentred, e became the first principal volume and its
    variance ran away (conv3d at 64 px, stop 20)."""
    from cryovae_nb.model.projectors import project_fourier

    model = _linear_model(latent_dim=2, covariance_ema=0.8)
    n, b, s, noise = 12, 64, 1.0, 0.3
    rng = np.random.default_rng(5)
    v0 = model.decode(np.zeros((1, 2), np.float32)).numpy()[0]
    zz, yy, xx = np.mgrid[:n, :n, :n]

    def blob(z, y, x):
        g = np.exp(-((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2)).astype(np.float32)
        return g / np.linalg.norm(g)

    u, e = blob(4.5, 6, 7), 4.0 * blob(7, 5, 4.5)   # the mean error: 4x the motion's amplitude
    for _ in range(40):
        rot = geometry.random_rotations(b, rng).astype(np.float32)
        a = rng.normal(0, s, b).astype(np.float32)
        vols = v0[None] + e[None] + a[:, None, None, None] * u[None]
        img = project_fourier(vols, rot, None, width=2, band=0.5 * n).numpy()
        img += rng.normal(0, noise, img.shape).astype(np.float32)
        model.update_covariance(*model.covariance_statistics(Batch(img, rot), noise_var=noise**2))
    first = model.pc_basis.numpy().reshape(2, -1)[0]
    on_u, on_e = abs(first @ u.ravel()), abs(first @ e.ravel()) / np.linalg.norm(e)
    assert on_u > 3 * on_e, (on_u, on_e)
    assert model.pc_variance.numpy()[0] < 3 * s**2, model.pc_variance.numpy()

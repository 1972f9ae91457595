"""The loss options added for reconstruction quality (ModelConfig: averaging_mirror, image_offset,
loss_in_mask, symmetrized_loss, presets), checked against numbers worked out by hand."""
import math

import numpy as np
import pytest
import tensorflow as tf

from cryovae_nb.errors import ConfigError
from cryovae_nb.geometry import random_rotations
from cryovae_nb.model import ModelConfig, build_model, losses
from cryovae_nb.model.batch import Batch
from cryovae_nb.projection import project_reference
from cryovae_nb.volumes import diameter_mask

LOG2 = math.log(2.0)


def tiny(**kw):
    base = {"box": 8, "latent_dim": 3, "encoder_layers": 1, "encoder_units": 8, "decoder_layers": 1,
                "decoder_units": 8, "projector": "real", "pose_search_deg": None}
    base.update(kw)
    return ModelConfig().with_options(**base)


def test_presets_and_round_trip(tmp_path):
    from cryovae_nb.config import load_config, save_config

    seed = ModelConfig.preset("seed", box=16)
    assert (seed.loss.averaging_mirror, seed.loss.image_offset, seed.loss.loss_in_mask, seed.loss.symmetrized_loss,
            seed.architecture.box) == (True, False, False, False, 16)
    assert (seed.loss.likelihood, seed.loss.link, seed.pose.input) == ("bernoulli", "sigmoid", "latent")
    default = ModelConfig()
    assert (default.loss.likelihood, default.loss.link, default.pose.input, default.pose.search_reference) == (
        "gaussian", "sigmoid", "hidden", "own")
    assert ModelConfig.preset() == ModelConfig()
    save_config(seed, tmp_path / "m.yaml")
    assert load_config(ModelConfig, tmp_path / "m.yaml") == seed
    with pytest.raises(ConfigError, match="preset"):
        ModelConfig.preset("nope")


def test_averaging_loss_without_mirror_is_the_batch_variance():
    # V1 = 0, V2 = 2 everywhere: batch mean 1, every voxel deviates by 1 -> 1 (mirror irrelevant here)
    v = np.zeros((2, 4, 4, 4), np.float32)
    v[1] = 2.0
    assert float(losses.averaging_loss(tf.constant(v), with_mirror=False)) == pytest.approx(1.0)
    # one voxel of 1 off-centre, the batch made of identical copies: no variance at all, but the
    # mirror version pays for the chirality: M has 0.5 at the voxel and at its mirror image, so
    # each copy deviates by 0.5 at two voxels of 64 -> 2 * 0.25 / 64
    w = np.zeros((3, 4, 4, 4), np.float32)
    w[:, 1, 1, 3] = 1.0
    assert float(losses.averaging_loss(tf.constant(w), with_mirror=False)) == 0.0
    assert float(losses.averaging_loss(tf.constant(w), with_mirror=True)) == pytest.approx(0.5 / 64)


@pytest.mark.parametrize("n", [4, 5])
def test_rotate180_moves_pixels_through_the_centre(n):
    img = np.zeros((1, n, n), np.float32)
    img[0, 1, n - 1] = 1.0  # (y, x) = (1, n-1) -> (2c - 1, 2c - n + 1) mod n, c = n // 2
    c = n // 2
    out = losses.rotate180(tf.constant(img)).numpy()
    assert out[0, (2 * c - 1) % n, (2 * c - (n - 1)) % n] == 1.0 and out.sum() == 1.0
    np.testing.assert_array_equal(losses.rotate180(tf.constant(out)).numpy(), img)


def test_rotate180_is_the_projection_at_the_pose_turned_about_the_view_axis():
    n = 9  # odd: the z grid is symmetric, so sum_z is unchanged by z -> -z
    rng = np.random.default_rng(0)
    vol = (rng.random((n, n, n)) * diameter_mask(n, 0.8, ndim=3)).astype(np.float32)
    R = random_rotations(3, np.random.default_rng(1))
    shifts = rng.uniform(-1, 1, (3, 2))
    rz180 = np.diag([-1.0, -1.0, 1.0])
    direct = project_reference(vol, R, shifts)
    turned = project_reference(vol, R @ rz180, -shifts)
    np.testing.assert_allclose(losses.rotate180(tf.constant(direct)).numpy(), turned, atol=1e-4)


def test_reconstruction_loss_pixel_mask_and_symmetrized_minimum():
    n = 4
    images = np.zeros((1, n, n), np.float32)
    logits = np.zeros((1, n, n), np.float32)
    # zero logits: log 2 per scored pixel
    mask = np.zeros((n, n), np.float32)
    mask[1:3, 1:3] = 1.0
    assert float(losses.reconstruction_loss(images, logits)[0]) == pytest.approx(16 * LOG2, rel=1e-6)
    assert float(losses.reconstruction_loss(images, logits, mask)[0]) == pytest.approx(4 * LOG2, rel=1e-6)
    # a target with one bright pixel, a projection with the right value at the 180-degree image
    # of that pixel: the symmetrised loss takes the rotated (better) fit
    images[0, 1, 3] = 1.0
    logits[0, 3, 1] = 10.0  # rotate180 maps (3, 1) -> (1, 3) for n = 4
    plain = float(losses.reconstruction_loss(images, logits)[0])
    best = float(losses.symmetrized_reconstruction_loss(images, logits)[0])
    # plain: 14 pixels at log 2, one target 1 at logit 0 (log 2), one target 0 at logit 10
    assert plain == pytest.approx(15 * LOG2 + 10 + math.log1p(math.exp(-10)), rel=1e-5)
    assert best == pytest.approx(15 * LOG2 + math.log1p(math.exp(-10)), rel=1e-5)


def _images(n, b=2, seed=0):
    return np.random.default_rng(seed).uniform(0.2, 0.8, (b, n, n)).astype(np.float32)


def numpy_recon(likelihood, images, logits, mask, noise_logits=None):
    """Per-image data term by hand, pixels weighted by ``mask``. For the gaussian likelihood the
    noise variance is that of a fresh model: the batch's mean squared residual inside the mask, of
    the sigmoid of ``noise_logits`` (default ``logits``)."""
    t = images.astype(np.float64)
    logits = np.asarray(logits, np.float64)
    if likelihood == "bernoulli":
        ce = np.maximum(logits, 0) - logits * t + np.log1p(np.exp(-np.abs(logits)))
        return (ce * mask).sum(axis=(1, 2))
    sigmoid = lambda x: 1 / (1 + np.exp(-np.asarray(x, np.float64)))  # noqa: E731
    ref = logits if noise_logits is None else noise_logits
    var = ((t - sigmoid(ref)) ** 2 * mask).sum() / (mask.sum() * len(t))
    sq = (t - sigmoid(logits)) ** 2 * mask
    return 0.5 * sq.sum(axis=(1, 2)) / var + 0.5 * mask.sum() * np.log(2 * np.pi * var)


def numpy_rotate180(x):
    """out[y, x] = in[2c - y, 2c - x] (mod n), c = n // 2 (see the rotate180 test above)."""
    n = x.shape[-1]
    idx = (2 * (n // 2) - np.arange(n)) % n
    return np.asarray(x)[..., idx, :][..., idx]


def test_loss_in_mask_ignores_pixels_outside_the_disc():
    n = 8
    disc = diameter_mask(n, 0.95, ndim=3)[n // 2]
    rot = random_rotations(2, np.random.default_rng(3)).astype(np.float32)
    a = _images(n)
    b = a.copy()
    b[:, disc == 0] = 0.0  # what preprocessing does outside the mask
    for in_mask, same in ((True, True), (False, False)):
        model = build_model(tiny(loss_in_mask=in_mask, pose_mode="known", latent_inference="encoder"))
        # blind the encoder to the outside pixels, so that only the loss could see them
        k = model.encoder_layers[0].kernel
        k.assign(k.numpy() * disc.reshape(-1, 1))
        ra = float(model.compute_losses(Batch(a, rot), training=False)["recon"])
        rb = float(model.compute_losses(Batch(b, rot), training=False)["recon"])
        assert (ra == pytest.approx(rb, rel=1e-6)) is same


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_image_offset_is_added_inside_the_disc_and_starts_at_zero(likelihood):
    n = 8
    disc = diameter_mask(n, 0.95, ndim=3)[n // 2]
    rot = random_rotations(2, np.random.default_rng(4)).astype(np.float32)
    images = _images(n, seed=1)
    # latents from the encoder, whose offset head is under test
    model = build_model(tiny(pose_mode="known", likelihood=likelihood, latent_inference="encoder"))
    seed_like = build_model(tiny(pose_mode="known", image_offset=False, latent_inference="encoder"))
    assert seed_like.offset_layer is None and "offset" not in seed_like.encode(Batch(images))
    assert np.all(model.encode(Batch(images))["offset"].numpy() == 0.0)  # zero init: the seed's model
    model.offset_layer.bias.assign([0.7])
    enc = model.encode(Batch(images))
    np.testing.assert_allclose(enc["offset"].numpy(), [0.7, 0.7])
    vols = model.decode(enc["z_mean"]).numpy()
    logits = model.project(vols, rot).numpy() + 0.7 * disc
    expect = numpy_recon(likelihood, images, logits, disc).mean()
    got = float(model.compute_losses(Batch(images, rot), training=False)["recon"])
    assert got == pytest.approx(expect, rel=1e-5)
    # call() (learned pose) gives the same logits: the projection plus 0.7 inside the disc only
    learned = model.project(vols, model_rotations(model, images), enc["shift"]).numpy()
    np.testing.assert_allclose(model(images).numpy(), learned + 0.7 * disc, atol=1e-5)


def model_rotations(model, images):
    from cryovae_nb.model.rotations import quaternion_to_matrix

    return quaternion_to_matrix(model.encode(Batch(images))["quaternion"]).numpy()


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_symmetrized_loss_only_applies_to_learned_poses(likelihood):
    n = 8
    images = _images(n, seed=2)
    cfg = tiny(symmetrized_loss=True, likelihood=likelihood)
    model = build_model(cfg)
    out = model.compute_losses(Batch(images), training=False)
    enc = model.encode(Batch(images))
    logits = model.add_offset(model.project(model.decode(enc["z_mean"]), model_rotations(model, images),
                                            enc["shift"]), enc["offset"])
    disc = diameter_mask(n, 0.95, ndim=3)[n // 2]
    logits = logits.numpy()
    # the noise variance comes from the unturned projection's residual (what compute_losses does)
    both = [numpy_recon(likelihood, images, lg, disc, noise_logits=logits)
            for lg in (logits, numpy_rotate180(logits))]
    assert not np.allclose(both[0], both[1])  # the turn matters: the minimum is a real choice
    np.testing.assert_allclose(out["recon_per_sample"].numpy(), np.minimum(*both), rtol=1e-5)
    # given poses: the plain loss
    rot = model_rotations(model, images)
    known = model.compute_losses(Batch(images, rot, enc["shift"].numpy()), training=False)
    np.testing.assert_allclose(known["recon_per_sample"].numpy(), both[0], rtol=1e-5)

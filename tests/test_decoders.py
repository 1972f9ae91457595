"""The convolutional decoder (model/decoders.py, ``ModelConfig.architecture.decoder = "conv3d"``): its
volumes against a numpy re-computation (scipy correlation, nearest upsampling, linear
interpolation), seeds, zero response to z, gradients, checkpoints, fitting a known volume from
exact projections (which the old random start fails), and the config's errors."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

from scipy.ndimage import correlate, map_coordinates  # noqa: E402

from cryovae_nb.errors import ConfigError  # noqa: E402
from cryovae_nb.geometry import random_rotations  # noqa: E402
from cryovae_nb.model import ModelConfig, build_model, project_real  # noqa: E402
from cryovae_nb.model.batch import Batch  # noqa: E402
from cryovae_nb.model.decoders import ConvDecoder, linear_resample_matrix, make_decoder  # noqa: E402
from cryovae_nb.training.rundir import make_checkpoint  # noqa: E402
from cryovae_nb.training.steps import make_optimizer, make_train_step  # noqa: E402


def conv_config(**kw):
    base = dict(box=12, latent_dim=3, encoder_layers=1, encoder_units=16, decoder="conv3d", decoder_grid=3,
                decoder_channels=8, decoder_upsamplings=2, pose_search_deg=None)
    base.update(kw)
    return ModelConfig().with_options(**base)


def numpy_decoder(dec: ConvDecoder, z: np.ndarray) -> np.ndarray:
    """The conv decoder's volumes recomputed with numpy/scipy from its weights."""
    g, c, n = dec.grid, dec.channels, dec.box
    h = (z @ dec.z_layer.kernel.numpy() + dec.z_layer.bias.numpy()).reshape(-1, g, g, g, c)
    h = h + dec.start_grid.numpy()
    stages = len(dec.conv_weights) - 1

    def conv(x, kernel, bias):  # x (z, y, x, Cin); tf.nn.conv3d is a correlation, zero padded
        out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
        for i in range(kernel.shape[3]):
            for o in range(kernel.shape[4]):
                out[..., o] += correlate(x[..., i], kernel[:, :, :, i, o], mode="constant", cval=0.0)
        return out + bias

    vols = []
    for x in h:
        for s, (k, b) in enumerate(dec.conv_weights):
            if s < stages:
                x = x.repeat(2, 0).repeat(2, 1).repeat(2, 2)
                x = conv(x, k.numpy(), b.numpy())
                x = np.where(x > 0, x, dec.slope * x)
            else:
                x = conv(x, k.numpy(), b.numpy())[..., 0]
        m = x.shape[0]
        if m != n:  # linear interpolation, centre m // 2 -> n // 2, extent scaled, edges clamped
            coord = (np.arange(n) - n // 2) * (m / n) + m // 2
            zz, yy, xx = np.meshgrid(coord, coord, coord, indexing="ij")
            x = map_coordinates(x, [zz, yy, xx], order=1, mode="nearest")
        v = x + dec.CONSENSUS_SCALE * dec.consensus.numpy()
        vols.append(np.where(v > 0, v, dec.slope * v))
    return np.stack(vols)


@pytest.mark.parametrize("options", [dict(box=12, decoder_grid=3, decoder_upsamplings=2),   # 12 = 3 x 4
                                     dict(box=10, decoder_grid=3, decoder_upsamplings=1),   # 6 -> 10
                                     dict(box=9, decoder_grid=5, decoder_upsamplings=1)])   # 10 -> 9
def test_conv_decoder_volumes_match_a_numpy_recomputation(options):
    model = build_model(conv_config(latent_inference="encoder", **options), seed=4)
    dec = model.decoder
    assert isinstance(dec, ConvDecoder)
    n = options["box"]
    # give every weight a value (the consensus and biases start at zero)
    rng = np.random.default_rng(0)
    for v in dec.trainable_variables:
        v.assign(v.numpy() + 0.1 * rng.standard_normal(v.shape).astype(np.float32))
    z = rng.standard_normal((3, 3)).astype(np.float32)
    vols = dec(z).numpy()
    assert vols.shape == (3, n, n, n)
    np.testing.assert_allclose(vols, numpy_decoder(dec, z), rtol=1e-4, atol=1e-4)
    # the model masks the decoder's volume
    from cryovae_nb.volumes import diameter_mask
    np.testing.assert_allclose(model.decode(z).numpy(), vols * diameter_mask(n, 0.95, ndim=3), atol=1e-5)


def test_linear_resample_matrix_interpolates_lines_exactly_and_keeps_the_centre():
    for m, n in ((4, 8), (8, 12), (10, 9), (6, 6)):
        w = linear_resample_matrix(m, n)
        np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)    # a constant stays constant
        np.testing.assert_allclose(w[n // 2], np.eye(m)[m // 2])  # centre onto centre
        # a line (in centred coordinates) is reproduced where no end is clamped
        x_in, x_out = np.arange(m) - m // 2, (np.arange(n) - n // 2) * (m / n)
        inside = (x_out >= x_in[0]) & (x_out <= x_in[-1])
        np.testing.assert_allclose((w @ x_in)[inside], x_out[inside], atol=1e-5)
    assert np.array_equal(linear_resample_matrix(6, 6), np.eye(6, dtype=np.float32))


def test_conv_decoder_weights_are_the_consensus_plus_a_small_network():
    cfg = conv_config(box=16, latent_dim=4, decoder_grid=4, decoder_channels=16, decoder_upsamplings=2)
    dec = build_model(cfg).decoder
    # z layer, constant grid, convolutions 16 -> 8 -> 4 -> 1 (3^3 taps + bias), consensus 16^3
    want = (4 + 1) * 4**3 * 16 + 4**3 * 16 + (27 * 16 * 8 + 8) + (27 * 8 * 4 + 4) + (27 * 4 + 1) + 16**3
    assert sum(int(np.prod(v.shape)) for v in dec.trainable_variables) == want
    # the same network at 128 px: only the consensus grows (the dense decoder: 200 x 128^3 = 420 M)
    big = ModelConfig().with_options(box=128, decoder="conv3d")
    assert make_decoder(big, iter(range(100))).count_params() < 128**3 + 300_000


def test_conv_decoder_is_determined_by_the_seed():
    z = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    cfg = conv_config(latent_inference="encoder")
    a, b, c = build_model(cfg, seed=2), build_model(cfg, seed=2), build_model(cfg, seed=3)
    for va, vb in zip(a.decoder.trainable_variables, b.decoder.trainable_variables):
        assert va.path == vb.path
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    np.testing.assert_array_equal(a.decoder(z).numpy(), b.decoder(z).numpy())
    # (the output starts blank for every seed: the last convolution starts at zero)
    for va, vc in zip(a.decoder.trainable_variables, c.decoder.trainable_variables):
        if "start_grid" in va.path or "conv0_kernel" in va.path:
            assert not np.allclose(va.numpy(), vc.numpy()), va.path


def test_conv_decoder_starts_without_response_to_z_when_asked_and_learns_one():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((4, 3)).astype(np.float32)
    # known poses -> linearized latents -> the model asks for zero response
    model = build_model(conv_config(pose_mode="known"))
    assert model.linearized
    vols = model.decoder(z).numpy()
    np.testing.assert_array_equal(vols, np.broadcast_to(vols[:1], vols.shape))
    # a blank start: the last convolution starts at zero (no random smooth volume to unlearn)
    assert np.abs(vols).max() == 0
    # ... and a loss that depends on z moves the z layer away from zero (once the last
    # convolution, which starts at zero too, has learned something)
    kernel = model.decoder.conv_weights[-1][0]
    kernel.assign(np.full(kernel.shape, 0.1, np.float32))
    target = tf.constant(rng.standard_normal((4, 12, 12, 12)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model.decoder(z) - target))
    grad = tape.gradient(loss, model.decoder.z_layer.kernel)
    assert float(tf.reduce_max(tf.abs(grad))) > 0
    # without it (encoder latents) the network's inner grids depend on z from the start, and the
    # volume does once the last convolution has learned anything
    other = build_model(conv_config(pose_mode="known", latent_inference="encoder")).decoder
    kernel = other.conv_weights[-1][0]
    kernel.assign(np.full(kernel.shape, 0.1, np.float32))
    vols = other(z).numpy()
    assert np.abs(vols[0] - vols[1]).max() > 1e-4


@pytest.mark.parametrize("zero_response", [False, True])
def test_gradients_reach_every_conv_decoder_weight_after_a_step(zero_response):
    cfg = conv_config(box=10, decoder_grid=3, decoder_upsamplings=1)
    dec = make_decoder(cfg, iter(range(100)), zero_response=zero_response)
    rng = np.random.default_rng(5)
    z = rng.standard_normal((3, 3)).astype(np.float32)
    target = tf.constant(rng.standard_normal((3, 10, 10, 10)).astype(np.float32))
    opt = tf.keras.optimizers.SGD(0.1)
    for _ in range(2):  # the zero-initialised last convolution passes gradients on once it has moved
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(dec(z) - target))
        grads = tape.gradient(loss, dec.trainable_variables)
        opt.apply_gradients(zip(grads, dec.trainable_variables))
    assert len(grads) == len(dec.trainable_variables) == 3 + 2 * len(dec.conv_weights) + 1
    for v, g in zip(dec.trainable_variables, grads):
        assert g is not None and float(tf.reduce_max(tf.abs(g))) > 0, v.path


def test_conv_decoder_checkpoint_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    cfg = conv_config(pose_mode="known")
    model = build_model(cfg, seed=1)
    paths = {v.path for v in model.trainable_variables}
    assert {"decoder/consensus", "decoder/start_grid", "conv_z/kernel", "decoder/conv_out_kernel"} <= paths
    images = rng.uniform(0.2, 0.8, (4, 12, 12)).astype(np.float32)
    R = random_rotations(4, rng).astype(np.float32)
    step = make_train_step(model, make_optimizer(model, 1e-2), jit=False)
    for i in range(2):
        step(Batch(images, R, np.zeros((4, 2), np.float32)), seed=[0, i])
    prefix = make_checkpoint(model).save(str(tmp_path / "ckpt"))
    fresh = build_model(cfg, seed=9)
    z = rng.standard_normal((2, 3)).astype(np.float32)
    assert not np.allclose(fresh.decode(z).numpy(), model.decode(z).numpy())
    make_checkpoint(fresh).read(prefix).assert_existing_objects_matched()
    np.testing.assert_array_equal(fresh.decode(z).numpy(), model.decode(z).numpy())
    for a, b in zip(model.decoder.trainable_variables, fresh.decoder.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def fit_known_volume(decoder: str, steps: int, broken_start: bool = False) -> float:
    """Train a model with ``decoder`` on exact, noise-free projections of the L (16 px, 256 known
    views, batch 16, Adam at 3e-5); the correlation of its decoded volume with the truth in the mask."""
    from cryovae_nb.synthetic import lshape_volume
    from cryovae_nb.volumes import diameter_mask

    n, b = 16, 16
    rng = np.random.default_rng(0)
    mask = diameter_mask(n, 0.95, ndim=3)
    truth = (0.1 * lshape_volume(n) * mask).astype(np.float32)  # voxels on the scale models learn
    R = random_rotations(256, rng).astype(np.float32)
    cfg = conv_config(box=n, latent_dim=2, decoder=decoder, decoder_grid=4, decoder_upsamplings=2,
                      pose_mode="known")
    model = build_model(cfg, seed=0)
    if broken_start:  # the conv decoder as it was: a random last convolution
        kernel = model.decoder.conv_weights[-1][0]
        kernel.assign(tf.keras.initializers.GlorotUniform(seed=1)(kernel.shape))
    images = model.image_prediction(model.project(np.repeat(truth[None], 256, 0), R)).numpy()
    step = make_train_step(model, make_optimizer(model, 3e-5), jit=False)
    for i in range(steps):
        idx = rng.integers(0, 256, b)
        step(Batch(images[idx], R[idx], np.zeros((b, 2), np.float32)), seed=[0, i])
    volume = model.decode(np.zeros((1, 2), np.float32)).numpy()[0]
    return float(np.corrcoef(volume[mask > 0], truth[mask > 0])[0, 1])


def test_the_conv_decoder_fits_a_known_volume_from_exact_projections():
    # measured: 0.945 / 0.934 after 20 / 40 steps; with its old random last convolution (a random
    # smooth volume several times the map's size at the start) 0.16 / 0.13
    assert fit_known_volume("conv3d", 25) > 0.85


def test_the_fit_check_catches_the_old_random_start():
    assert fit_known_volume("conv3d", 25, broken_start=True) < 0.5


@pytest.mark.parametrize("options, message", [
    (dict(decoder="convolutional"), r"ArchitectureConfig\.decoder must be one of \('dense', 'conv3d'\)"),
    (dict(decoder_grid=0), r"ArchitectureConfig\.decoder_grid must be a positive integer, got 0"),
    (dict(decoder_channels=2.5), r"ArchitectureConfig\.decoder_channels must be"),
    (dict(decoder_upsamplings=-1), r"ArchitectureConfig\.decoder_upsamplings must be an integer >= 0"),
    (dict(box=12, decoder_grid=8, decoder_upsamplings=2),
     r"conv decoder's grid \(8 x 2\^2 = 32\) must not exceed twice the box \(12\)"),
])
def test_conv_decoder_config_errors_are_one_clear_line(options, message):
    with pytest.raises(ConfigError, match=message):
        conv_config(**options).validate()


def test_conv_options_are_inert_for_the_dense_decoder_and_old_configs_load():
    from cryovae_nb.config import from_dict, to_dict

    # the dense decoder ignores the conv fields (a grid larger than the box is no error there)
    ModelConfig().with_options(box=12, decoder_grid=8, decoder_upsamplings=2).validate()
    data = to_dict(ModelConfig())
    for key in ("decoder_grid", "decoder_channels", "decoder_upsamplings"):
        del data["architecture"][key]  # a config written before the conv decoder
    assert from_dict(ModelConfig, data) == ModelConfig()


def test_conv3d_learning_rate_advice_scales_with_the_box():
    from cryovae_nb.training.config import TrainConfig, conv3d_learning_rate, learning_rate_advice

    # 1e-5 at 64 px (measured), scaled by the signal per voxel, box^-1.8: a 2x box ~3.5x lower
    assert conv3d_learning_rate(64) == pytest.approx(1e-5)
    assert conv3d_learning_rate(64) / conv3d_learning_rate(128) == pytest.approx(2**1.8)

    def advice(box, rate, decoder="conv3d"):
        return learning_rate_advice(TrainConfig(model=ModelConfig().with_options(box=box, decoder=decoder),
                                                learning_rate=rate))

    assert advice(64, 1e-5) is None                       # the measured good rate
    assert advice(40, 1e-4) is None                       # below 64 px: not measured, no advice
    assert advice(128, 1e-4, decoder="dense") is None     # the dense decoder: not this rule
    line = advice(64, 3e-5)                               # measured capped (5.12 vs 3.73 Å)
    assert line is not None and "64 px" in line and "1e-05" in line and "\n" not in line
    line = advice(128, TrainConfig().learning_rate)       # the default is too high at 128 px
    assert line is not None and "128 px" in line and "3e-06" in line


def test_the_trainer_warns_about_a_conv3d_rate_too_high_for_the_box(tmp_path):
    from cryovae_nb.synthetic import SimulationConfig, simulate
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.trainer import Trainer

    ds = simulate(SimulationConfig(box=64, n_particles=8, snr=1.0, seed=0), tmp_path / "sim", progress=False)
    model = ModelConfig().with_options(box=64, decoder="conv3d", pose_mode="known")
    with pytest.warns(UserWarning, match="conv3d decoder at 64 px"):
        Trainer(TrainConfig(data=str(ds.star), run_dir=str(tmp_path / "run"), model=model, batch_size=4,
                            learning_rate=3e-5, test_fraction=0.25), progress=False)

"""Mixed precision (issue #13, GPU-ready): the device policy's choice, the model's steps under
``mixed_bfloat16`` and ``mixed_float16`` against float32 from the same weights, float32 weights and
checkpoints whatever the precision. Runs on a CPU (slowly: tiny 16 px models)."""
from __future__ import annotations

import argparse

import keras
import numpy as np
import pytest

from cryovae_nb.errors import ConfigError
from cryovae_nb.training.config import TrainConfig
from cryovae_nb.training.devices import DevicePolicy, device_policy, device_precision

MIXED = ("mixed_bfloat16", "mixed_float16")


@pytest.fixture(autouse=True)
def keras_policy_untouched():
    """Nothing here may leave Keras' process-wide dtype policy changed (later tests would build
    their models under it)."""
    before = keras.config.dtype_policy().name
    yield
    assert keras.config.dtype_policy().name == before == "float32"


# --------------------------------------------------------------------------------------------
# the decision


def test_device_precision_follows_the_oldest_gpus_tensor_cores():
    assert device_precision([]) == "float32"                              # a CPU
    assert device_precision([(9, 0)]) == "mixed_bfloat16"                 # H100
    assert device_precision([(8, 0), (8, 6)]) == "mixed_bfloat16"         # A100, RTX 30xx
    assert device_precision([(7, 0)]) == "mixed_float16"                  # V100: float16 tensor cores only
    assert device_precision([(8, 0), (7, 5)]) == "mixed_float16"          # the oldest decides
    assert device_precision([(6, 1)]) == "float32"                        # no tensor cores
    assert device_precision([(8, 0), None]) == "float32"                  # unknown: the safe choice


def test_device_policy_reports_the_precision_for_fake_device_lists():
    from tensorflow.config import PhysicalDevice

    gpus = [PhysicalDevice(name=f"/physical_device:GPU:{i}", device_type="GPU") for i in range(2)]
    assert device_policy([]) == DevicePolicy("cpu", jit=True, tf32_matmul=False, precision="float32")
    assert device_policy(gpus, capabilities=[(8, 0), (8, 0)]).precision == "mixed_bfloat16"
    assert device_policy(gpus, capabilities=[(7, 0), (7, 0)]) == DevicePolicy(
        "gpu", jit=True, tf32_matmul=True, precision="mixed_float16")
    assert device_policy(gpus).precision == "float32"   # capabilities unknown


@pytest.mark.parametrize("gpus,caps,asked,want", [(0, [], "auto", "float32"), (1, [(8, 0)], "auto", "mixed_bfloat16"),
                                                  (1, [(7, 0)], "auto", "mixed_float16"),
                                                  (1, [(8, 0)], "float32", "float32"),
                                                  (0, [], "mixed_bfloat16", "mixed_bfloat16")])
def test_apply_device_policy_resolves_auto_and_keeps_an_explicit_choice(monkeypatch, gpus, caps, asked, want):
    import tensorflow as tf

    from cryovae_nb.training import devices

    fake = [tf.config.PhysicalDevice(name=f"/physical_device:GPU:{i}", device_type="GPU") for i in range(gpus)]
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: fake if kind == "GPU" else [])
    monkeypatch.setattr(devices, "gpu_capabilities", lambda g: caps)
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    try:
        assert devices.apply_device_policy(TrainConfig(precision=asked)).precision == want
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(before)


def test_a_bad_precision_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"TrainConfig.precision must be one of .*got 'float16'") as e:
        TrainConfig(data="x.star", precision="float16").validate()
    assert "\n" not in str(e.value)
    assert TrainConfig().precision == "auto"
    from cryovae_nb.commands import train

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    assert parser.parse_args(["--precision", "mixed_bfloat16"]).precision == "mixed_bfloat16"
    assert parser.parse_args([]).precision is None   # the config's (default auto)
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "half"])


# --------------------------------------------------------------------------------------------
# the model under a mixed policy

B, N = 16, 16


def tiny_model(precision: str, pose_mode: str = "learned", **options):
    from cryovae_nb.model import ModelConfig, build_model
    from cryovae_nb.training.precision import set_precision

    cfg = ModelConfig().with_options(box=N, latent_dim=4, encoder_layers=2, encoder_units=64, decoder_layers=2,
                                     decoder_units=64, pose_mode=pose_mode, **options)
    model = build_model(cfg, seed=3)   # the same initial weights whatever the precision
    set_precision(model, precision)
    return model


def tiny_batch(known: bool):
    """Projections of a smooth random blob at random poses plus noise (tanh-normalised range)."""
    from scipy.ndimage import gaussian_filter
    from scipy.spatial.transform import Rotation

    from cryovae_nb.model.batch import Batch
    from cryovae_nb.model.projectors import project_fourier

    rng = np.random.default_rng(0)
    vol = gaussian_filter(rng.standard_normal((N, N, N)), 2.0).astype(np.float32)
    rot = Rotation.random(B, random_state=1).as_matrix().astype(np.float32)
    proj = np.asarray(project_fourier(np.repeat(vol[None], B, 0), rot, np.zeros((B, 2), np.float32)))
    images = 1 / (1 + np.exp(-(proj / proj.std() + 0.3 * rng.standard_normal(proj.shape))))
    images = images.astype(np.float32)
    return Batch(images, rotations=rot, shifts=np.zeros((B, 2), np.float32)) if known else Batch(images)


# What a mixed step may differ by from float32 (bfloat16 keeps 8 bits of mantissa, 2^-8 = 0.4 %;
# float16 11 bits, 0.05 %), about 3x what was measured on this model: relative for the mean squared
# residual, the KL and the averaging loss; absolute (nats per image) for the Gaussian negative
# log-likelihood, which is 0.5 n_pix log(residual) + const, so a relative error e of the residual
# moves it by ~0.5 n_pix e (n_pix ~ 180 here). Measured: bfloat16 1.5e-3, 1.1e-2, 1.7e-2, 0.13;
# float16 6e-6, 2e-4, 7e-5, 5e-4.
TOLERANCE = {"mixed_bfloat16": {"residual": 5e-3, "kl": 5e-2, "averaging": 5e-2, "recon": 0.5},
             "mixed_float16": {"residual": 5e-4, "kl": 5e-3, "averaging": 5e-3, "recon": 0.05}}


@pytest.mark.parametrize("precision", MIXED)
def test_losses_under_a_mixed_policy_match_float32_from_the_same_weights(precision):
    # learned poses without the search (its sampled grid pose could flip between near-ties):
    # encoder, heads, decoder and projector all act on the loss
    batch = tiny_batch(known=False)
    noise = np.random.default_rng(2).standard_normal((B, 4)).astype(np.float32)
    ref = tiny_model("float32", pose_search_deg=None).compute_losses(batch, noise=noise)
    model = tiny_model(precision, pose_search_deg=None)
    assert model.encoder_layers[0].compute_dtype == precision.split("_")[1]
    out = model.compute_losses(batch, noise=noise)
    tol = TOLERANCE[precision]
    for key in ("residual", "kl", "averaging"):
        assert np.isfinite(float(out[key]))
        assert float(out[key]) == pytest.approx(float(ref[key]), rel=tol[key]), key
    assert float(out["recon"]) == pytest.approx(float(ref["recon"]), abs=tol["recon"])
    # the low precision made a difference (the layers did compute in it)
    assert float(out["residual"]) != float(ref["residual"])
    assert out["recon"].dtype == "float32"
    # what the projector and the losses see is float32
    assert model.decode(np.zeros((1, 4), np.float32)).dtype == "float32"


@pytest.mark.parametrize("precision", MIXED)
@pytest.mark.parametrize("known", [True, False])
def test_training_steps_under_a_mixed_policy_lower_the_loss_and_keep_float32_weights(precision, known):
    import tensorflow as tf

    from cryovae_nb.training.precision import is_loss_scaled, needs_loss_scaling
    from cryovae_nb.training.steps import make_optimizer, make_train_step

    # known poses: linearised latents (posterior, covariance statistics); learned: the pose search
    model = tiny_model(precision, "known" if known else "learned")
    optimizer = make_optimizer(model, 1e-3, loss_scale=needs_loss_scaling(precision))
    assert is_loss_scaled(optimizer) == (precision == "mixed_float16")
    step = make_train_step(model, optimizer, jit=False)
    batch = tiny_batch(known)
    losses = [float(step(batch, tf.constant([1, i]))["recon"]) for i in range(12)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < losses[0] - 1.0, losses
    assert {v.dtype for v in model.variables} == {"float32"}
    assert {v.dtype for v in optimizer.variables if "float" in v.dtype} == {"float32"}
    if precision == "mixed_float16":   # the scale was applied and unscaled: steps were taken
        assert int(optimizer.iterations.numpy()) > 0 and float(optimizer.dynamic_scale.numpy()) >= 1.0


def test_the_data_parallel_step_scales_and_unscales_float16_gradients():
    """The step Horovod uses (a gradient reducer between the gradient and the update, compiled
    apart): the reducer sees the scaled gradients, the update unscales them."""
    import tensorflow as tf

    from cryovae_nb.training.steps import make_optimizer, make_train_step

    seen = {"float32": [], "mixed_float16": []}

    def reducer(precision):
        def reduce(grads):  # what an all-reduce would hand back to one rank alone
            # learned poses, no search: the gradients, then the batch's residual
            seen[precision].append(max(float(tf.reduce_max(tf.abs(g))) for g in grads[:-1]))
            return grads
        return reduce

    batch = tiny_batch(known=False)
    plain = tiny_model("float32", pose_search_deg=None)
    make_train_step(plain, make_optimizer(plain, 1e-3), jit=False, grad_reducer=reducer("float32"))(
        batch, tf.constant([1, 0]))
    model = tiny_model("mixed_float16", pose_search_deg=None)
    optimizer = make_optimizer(model, 1e-3, loss_scale=True)
    step = make_train_step(model, optimizer, jit=False, grad_reducer=reducer("mixed_float16"))
    before = _values(model.trainable_variables)
    out = [float(step(batch, tf.constant([1, 0]))["recon"]) for _ in range(3)]  # the same noise each time
    # a step whose scaled gradients overflowed float16 is skipped and halves the scale (here the
    # first ones: 2^15 times this model's gradients passes float16's 65504); the others update
    skipped = round(np.log2(2.0 ** 15 / float(optimizer.dynamic_scale.numpy())))
    assert all(np.isfinite(out)) and int(optimizer.iterations.numpy()) == 3 - skipped >= 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, _values(model.trainable_variables)))
    # the reducer saw the gradient of the loss times the scale (2^15 halved once per skipped step
    # before it, which left the weights as they were); the update unscales it (Adam would hide a
    # missing unscale: test_losses_* and the resume tests check the values)
    assert seen["mixed_float16"][:skipped] == [np.inf] * skipped and seen["float32"][0] > 0
    ratio = seen["mixed_float16"][skipped] / seen["float32"][0]
    assert ratio == pytest.approx(2.0 ** (15 - skipped), rel=0.02)


def test_set_precision_rejects_an_unknown_precision():
    from cryovae_nb.training.precision import set_precision

    with pytest.raises(ConfigError, match="precision must be one of"):
        set_precision(tiny_model("float32"), "auto")   # the Trainer resolves auto first


# --------------------------------------------------------------------------------------------
# checkpoints are float32 and interchangeable


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """200 noisy projections of the L phantom (box 16, SNR 1), preprocessed."""
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
    from cryovae_nb.synthetic import SimulationConfig, simulate

    root = tmp_path_factory.mktemp("tiny_precision")
    ds = simulate(SimulationConfig(box=16, n_particles=200, snr=1.0, seed=1), root / "sim", progress=False)
    preprocess_stack(ds.star, root / "pre" / "particles", PreprocessConfig(), progress=False)
    return root / "pre" / "particles.star"


def run_config(data, run_dir, precision, max_steps) -> TrainConfig:
    from cryovae_nb.model import ModelConfig

    model = ModelConfig().with_options(box=16, latent_dim=4, encoder_layers=2, encoder_units=32, decoder_layers=1,
                                       decoder_units=32, pose_mode="known")
    return TrainConfig(data=str(data), run_dir=str(run_dir), model=model, batch_size=32, learning_rate=1e-3,
                       max_steps=max_steps, log_every=3, sample_every=1000, checkpoint_every=3, n_test_eval=16,
                       n_samples=0, seed=5, jit=False, precision=precision)


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


@pytest.mark.parametrize("first,then", [("mixed_bfloat16", "float32"), ("mixed_float16", "float32"),
                                        ("float32", "mixed_float16")])
def test_a_checkpoint_written_under_one_precision_resumes_under_another(tiny_data, tmp_path, first, then):
    from cryovae_nb.training.precision import base_optimizer, is_loss_scaled, model_precision
    from cryovae_nb.training.trainer import Trainer

    run = tmp_path / "run"
    a = Trainer(run_config(tiny_data, run, first, 3), progress=False)
    assert model_precision(a.model) == first
    a.train()
    weights = _values(a.model.weights)
    b = Trainer(run_config(tiny_data, run, then, 6), progress=False)
    assert b.step == 3 and model_precision(b.model) == then
    for x, y in zip(weights, _values(b.model.weights)):   # every weight, bit for bit
        assert y.dtype == np.float32
        np.testing.assert_array_equal(x, y)
    # Adam's moments and step count (a loss-scaled optimizer's inner Adam)
    inner, restored = base_optimizer(a.optimizer).variables, base_optimizer(b.optimizer).variables
    assert is_loss_scaled(a.optimizer) == (first == "mixed_float16") and len(inner) == len(restored)
    for x, y in zip(_values(inner), _values(restored)):
        np.testing.assert_array_equal(x, y)
    assert b.train().step == 6
    assert all(np.isfinite(v).all() for v in _values(b.model.weights))


def test_a_float16_run_resumes_with_its_loss_scale(tiny_data, tmp_path):
    from cryovae_nb.training.trainer import Trainer

    run = tmp_path / "run"
    a = Trainer(run_config(tiny_data, run, "mixed_float16", 3), progress=False)
    a.optimizer.dynamic_scale.assign(1024.0)   # as if it had overflowed five times
    a.train()
    scale = float(a.optimizer.dynamic_scale.numpy())
    b = Trainer(run_config(tiny_data, run, "mixed_float16", 6), progress=False)
    assert float(b.optimizer.dynamic_scale.numpy()) == scale == 1024.0
    assert int(b.optimizer.step_counter.numpy()) == int(a.optimizer.step_counter.numpy()) == 3

"""The model refactored behind registries (decoders, projectors, the forward model, the pose search)
computes what the code before it did, and restores the checkpoints that code wrote.

Known poses (linearised latents): the decoder's first layer ``dec0`` is tracked, trained and saved
since stop 18 (before, it escaped Keras' tracking and stayed at its zero initial value). A fresh
model computes the same losses (dec0 starts at zero either way); checkpoints written before it lack
dec0 and restore with it at zero, i.e. to the same outputs.

Fixtures: tests/data/model_checkpoint_v0/ (made by its make_fixture.py with the pre-refactor code).
"""
import json
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from cryovae_nb import geometry  # noqa: E402
from cryovae_nb.model import ModelConfig, build_model  # noqa: E402
from cryovae_nb.model.batch import Batch  # noqa: E402
from cryovae_nb.model import config as model_config  # noqa: E402
from cryovae_nb.model.decoders import DECODERS  # noqa: E402
from cryovae_nb.model.projectors import PROJECTORS  # noqa: E402
from cryovae_nb.training.rundir import make_checkpoint, read_checkpoint  # noqa: E402

FIXTURES = Path(__file__).parent / "data" / "model_checkpoint_v0"

# the configurations of make_fixture.py
CONFIGS = {
    "known": dict(box=8, latent_dim=2, encoder_layers=1, encoder_units=16, decoder_layers=2,
                  decoder_units=16, pose_mode="known", seed=3),
    "known_encoder": dict(box=8, latent_dim=3, encoder_layers=2, encoder_units=16, decoder_layers=1,
                          decoder_units=16, pose_mode="known", latent_inference="encoder",
                          projector="real", kl_warmup_steps=5, free_bits=0.1, seed=4),
    "learned": dict(box=12, latent_dim=2, encoder_layers=1, encoder_units=16, decoder_layers=1,
                    decoder_units=16, pose_mode="learned", pose_search_deg=30.0, seed=5),
    "learned_real": dict(box=10, latent_dim=2, encoder_layers=1, encoder_units=16, decoder_layers=1,
                         decoder_units=16, pose_mode="learned", pose_search_deg=40.0, projector="real",
                         likelihood="bernoulli", search_reference="mean", image_offset=False,
                         pose_input="latent", seed=7),
    "learned_head": dict(box=8, latent_dim=3, encoder_layers=2, encoder_units=16, decoder_layers=1,
                         decoder_units=16, pose_mode="learned", pose_search_deg=None, symmetrized_loss=True,
                         link="identity", loss_in_mask=False, volume_mask=None, seed=2),
}

# compute_losses(batch, training=True, seed=[1, 2]) of a freshly built model, as printed by
# tests/data/model_checkpoint_v0/make_fixture.py run against main at 4fa2591 (before issue 11's
# decoder/projector registries and forward model); "learned*" run the pose search (but learned_head)
MAIN_LOSSES = {
    "known": {"recon": 6.148802280426025, "kl": 0.0, "averaging": 0.0, "pose": 0.0,
              "total": 6.148802280426025, "noise_var": 0.07695019245147705},
    "known_encoder": {"recon": 8.130987167358398, "kl": 0.1247810423374176, "averaging": 0.003643989097326994,
                      "pose": 0.0, "total": 44.870880126953125, "noise_var": 0.08403685688972473},
    "learned": {"recon": 17.991640090942383, "kl": 0.4095277786254883, "averaging": 0.00020992776262573898,
                "pose": 1.2296006679534912, "total": 143.46051025390625, "noise_var": 0.08360876142978668},
    "learned_real": {"recon": 48.224281311035156, "kl": 0.7972540855407715,
                     "averaging": 0.0012371345655992627, "pose": 1.5925235748291016,
                     "total": 220.64523315429688, "noise_var": 0.08593632280826569},
    "learned_head": {"recon": 29.91858673095703, "kl": 0.4534929692745209, "averaging": 0.0031865681521594524,
                     "pose": 0.0, "total": 62.23775863647461, "noise_var": 0.16395488381385803},
}


def config_and_seed(name) -> tuple[ModelConfig, int]:
    """make_fixture.py's ModelConfig(**CONFIGS[name]): the seed is build_model's argument now."""
    options = dict(CONFIGS[name])
    seed = options.pop("seed")
    return ModelConfig().with_options(**options), seed


def fixed_batch(n, b=4):
    rng = np.random.default_rng(11)
    return (rng.random((b, n, n)).astype(np.float32), geometry.random_rotations(b, rng).astype(np.float32),
            rng.uniform(-1, 1, (b, 2)).astype(np.float32))


def loss_batch(cfg) -> Batch:
    images, rot, sh = fixed_batch(cfg.architecture.box)
    return Batch(images, rot, sh) if cfg.pose.mode == "known" else Batch(images)


@pytest.mark.parametrize("name", sorted(MAIN_LOSSES))
def test_losses_are_those_of_the_code_before_the_refactor(name):
    cfg, seed = config_and_seed(name)
    out = build_model(cfg, seed=seed).compute_losses(loss_batch(cfg), training=True, seed=tf.constant([1, 2]))
    for key, want in MAIN_LOSSES[name].items():
        np.testing.assert_allclose(float(out[key]), want, rtol=1e-5, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("name", ["known", "learned"])
def test_checkpoints_of_the_code_before_the_refactor_restore_to_the_same_outputs(name):
    cfg, seed = config_and_seed(name)
    model = build_model(cfg, seed=seed)
    # the variable paths (the checkpoint's keys) are those the old code wrote, plus (known poses)
    # the zero-response decoder's first layer, which the old code did not track
    added = ["dec0/bias", "dec0/kernel"] if name == "known" else []
    old = json.loads((FIXTURES / name / "variables.json").read_text())
    assert sorted(v.path for v in model.weights) == sorted(old + added)
    read_checkpoint(make_checkpoint(model), FIXTURES / name / "ckpt")
    want = np.load(FIXTURES / name / "outputs.npz")
    np.testing.assert_allclose(model.decode(want["z"]).numpy(), want["volumes"], rtol=1e-5, atol=1e-6)
    enc = model.encode(loss_batch(cfg))
    for key, value in enc.items():
        np.testing.assert_allclose(value.numpy(), want[f"enc_{key}"], rtol=1e-5, atol=1e-6, err_msg=key)
    out = model.compute_losses(loss_batch(cfg), training=False, seed=tf.constant([3, 4]))
    for key in ("recon", "kl", "total"):
        np.testing.assert_allclose(float(out[key]), want[f"loss_{key}"], rtol=1e-5, atol=1e-7, err_msg=key)


def test_config_names_are_the_registries_keys():
    # config.py lists the names without importing TensorFlow; the registries hold the classes
    assert model_config.PROJECTORS == tuple(PROJECTORS)
    assert model_config.DECODERS == tuple(DECODERS)
    assert ModelConfig().architecture.decoder == "dense"


def test_an_unknown_decoder_is_a_config_error():
    from cryovae_nb.errors import ConfigError

    with pytest.raises(ConfigError, match="decoder"):
        ModelConfig().with_options(decoder="conv").validate()


def test_a_config_file_without_the_decoder_field_still_loads(tmp_path):
    from cryovae_nb.config import load_config, save_config, to_dict

    old = to_dict(ModelConfig().with_options(box=16))
    del old["architecture"]["decoder"]
    path = tmp_path / "model.json"
    path.write_text(json.dumps(old))
    cfg = load_config(ModelConfig, path)
    assert cfg.architecture.decoder == "dense" and cfg.architecture.box == 16
    save_config(cfg, tmp_path / "again.json")
    assert load_config(ModelConfig, tmp_path / "again.json") == cfg


def test_a_checkpoint_lacking_any_other_variable_is_refused(tmp_path):
    cfg, seed = config_and_seed("known")
    model = build_model(cfg, seed=seed)
    # a checkpoint written without the encoder's first layer (a corrupt or foreign file)
    parts = {k: v for k, v in make_checkpoint(model).weights.items() if not k.startswith("enc0/")}
    tf.train.Checkpoint(weights=parts).write(str(tmp_path / "ckpt"))
    with pytest.raises(AssertionError, match="enc0"):
        read_checkpoint(make_checkpoint(build_model(cfg, seed=seed)), tmp_path / "ckpt")


def test_the_old_missing_dec0_is_accepted_only_while_it_is_zero(tmp_path):
    cfg, seed = config_and_seed("known")
    model = build_model(cfg, seed=seed)
    parts = {k: v for k, v in make_checkpoint(model).weights.items() if not k.startswith("dec0/")}
    tf.train.Checkpoint(weights=parts).write(str(tmp_path / "ckpt"))
    read_checkpoint(make_checkpoint(build_model(cfg, seed=seed)), tmp_path / "ckpt")   # zero: fine
    trained = build_model(cfg, seed=seed)
    trained.decoder.hidden_layers[0].kernel.assign(tf.ones_like(trained.decoder.hidden_layers[0].kernel))
    with pytest.raises(AssertionError, match="dec0"):
        read_checkpoint(make_checkpoint(trained), tmp_path / "ckpt")


def test_the_zero_response_first_layer_is_trained():
    # the bug it replaces: dec0 was in no weights list, so it stayed zero and the decoder's
    # hidden stack never saw z
    cfg, seed = config_and_seed("known")
    model = build_model(cfg, seed=seed)
    dec0 = model.decoder.hidden_layers[0]
    assert dec0.kernel.path in {v.path for v in model.trainable_weights}
    assert not np.any(dec0.kernel.numpy()) and not np.any(dec0.bias.numpy())   # starts at zero
    batch = loss_batch(cfg)
    with tf.GradientTape() as tape:
        out = model.compute_losses(batch, training=True, seed=tf.constant([1, 2]))
    grads = dict(zip([v.path for v in model.trainable_weights],
                     tape.gradient(out["total"], model.trainable_weights)))
    assert grads["dec0/kernel"] is not None and np.any(grads["dec0/kernel"].numpy())

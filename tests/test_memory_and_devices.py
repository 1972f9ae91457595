"""The memory model (training/memory.py): its arithmetic, the device's memory, the refusal; and
the device policy (training/devices.py) on faked device lists. Whether the estimate matches real
runs' peak RSS is measured by benchmarks/memory_model.py (README), not here."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cryovae_nb.errors import ConfigError
from cryovae_nb.model import ModelConfig
from cryovae_nb.training import memory
from cryovae_nb.training.config import TrainConfig
from cryovae_nb.training.devices import DevicePolicy, apply_device_policy, device_policy

MIB = 2**20


@pytest.mark.parametrize("options", [
    dict(box=12, pose_mode="known"),
    dict(box=16, pose_mode="learned", latent_dim=5, encoder_layers=3, decoder_layers=2),
    dict(box=12, pose_mode="known", latent_inference="encoder", image_offset=False),
    dict(box=10, pose_mode="learned", decoder_layers=0, encoder_units=32),
])
def test_dense_parameter_count_matches_the_built_model(options):
    from cryovae_nb.model import build_model

    cfg = ModelConfig().with_options(**options)
    model = build_model(cfg)
    built = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert memory.dense_parameter_count(cfg) == built


def test_estimate_adds_up_its_parts_by_hand():
    # known poses, linearized latents (auto), no search; fourier projector at pad 1
    n, b, latent = 20, 30, 4
    cfg = ModelConfig().with_options(box=n, latent_dim=latent, pose_mode="known", encoder_layers=2,
                                     encoder_units=16, decoder_layers=2, decoder_units=8)
    train = TrainConfig(batch_size=b, prefetch=3)
    est = memory.estimate_peak_memory(cfg, train)
    # encoder 400->16->16, heads (4, 4, 4, 2, offset 1) on 16, decoder 4->8->8, voxels 8->8000
    params = (400 * 16 + 16 + 16 * 16 + 16) + (16 * 15 + 15) + (4 * 8 + 8 + 8 * 8 + 8) + (8 * 8000 + 8000)
    assert est.n_params == params
    assert est.weights == memory.WEIGHT_COPIES * 4 * params
    assert est.state == 2 * latent * n**3 * 4
    assert est.volumes == b * memory.VOLUME_COPIES * (n**3 * 4 + n**3 * 4) // 2
    assert est.search == 0
    assert est.loader == (3 + 2) * b * n * n * 4
    assert est.runtime == memory.RUNTIME_BYTES
    assert est.total == sum(getattr(est, p) for p in ("runtime", "weights", "state", "volumes", "search", "loader"))

    # learned poses with a search: the grid's and the local candidates' projections; no state
    learned = cfg.with_options(pose_mode="learned", pose_search_deg=30.0)
    est2 = memory.estimate_peak_memory(learned, train)
    from cryovae_nb.model.pose_search import search_grid

    grid = len(search_grid(30.0))
    assert est2.search == memory.SEARCH_FIXED_BYTES + memory.SEARCH_COPIES * n * n * 4 * (
        grid + b * memory.LOCAL_CANDIDATES)
    assert est2.state == 0
    # the batch scales the per-image parts, not the weights
    est3 = memory.estimate_peak_memory(cfg, dataclasses.replace(train, batch_size=2 * b))
    assert est3.volumes == 2 * est.volumes and est3.weights == est.weights
    # a padded Fourier projector transforms pad^3 as many voxels
    est4 = memory.estimate_peak_memory(cfg.with_options(fourier_pad=2.0), train)
    assert est4.volumes == b * memory.VOLUME_COPIES * (n**3 * 4 + 8 * n**3 * 4) // 2


def test_other_decoders_need_their_counted_weights():
    cfg = ModelConfig()
    other = dataclasses.replace(cfg, architecture=dataclasses.replace(cfg.architecture, decoder="somethingelse"))
    with pytest.raises(ConfigError, match="n_params"):
        memory.estimate_peak_memory(other, TrainConfig())
    assert memory.estimate_peak_memory(other, TrainConfig(), n_params=1000).n_params == 1000


def test_refusal_names_the_estimate_the_memory_and_what_to_change():
    cfg, train = ModelConfig().with_options(box=64), TrainConfig(batch_size=120)
    est = memory.estimate_peak_memory(cfg, train)
    with pytest.raises(ConfigError) as err:
        memory.check_memory(cfg, train, available=(est.total - 1, "host RAM available"))
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{est.total / MIB:,.0f} MiB" in msg and f"{(est.total - 1) / MIB:,.0f} MiB" in msg
    assert "batch_size 120 -> 60" in msg and "64 px" in msg and "--no-memory-check" in msg
    # 64 px: the dense decoder's 52 M voxel weights dominate, so the decoder is named
    assert "decoder" in msg
    assert memory.check_memory(cfg, train, available=(est.total, "host RAM available")) == est
    assert memory.check_memory(cfg, train, available=(None, "unknown")) == est  # unknown: not refused
    # a GPU holds the tensors; the runtime and the loader stay in host memory
    gpu = memory.GPU_MEMORY + " (H100)"
    assert est.on_gpu == est.total - est.runtime - est.loader
    assert memory.check_memory(cfg, train, available=(est.on_gpu, gpu)) == est
    with pytest.raises(ConfigError, match=f"needs about {est.on_gpu / MIB:,.0f} MiB .* memory of GPU 0 "):
        memory.check_memory(cfg, train, available=(est.on_gpu - 1, gpu))


def test_meminfo_is_read_from_proc(tmp_path):
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       16000000 kB\nMemFree:         1000 kB\nMemAvailable:    8000000 kB\n")
    assert memory._meminfo_available(str(fake)) == (8000000 * 1024, "host RAM available")
    assert memory._meminfo_available(str(tmp_path / "missing"))[0] is None
    have, what = memory.available_memory()  # this machine: no GPU, RAM known
    assert have > 0 and "RAM" in what


def test_trainer_refuses_before_building_and_trains_with_the_override(tmp_path, monkeypatch):
    from cryovae_nb.io import write_stack
    from cryovae_nb.training import trainer as trainer_module

    rng = np.random.default_rng(0)
    write_stack(tmp_path / "p.mrcs", rng.random((20, 12, 12), dtype=np.float32), pixel_size=1.0)
    model = ModelConfig().with_options(box=12, latent_dim=2, encoder_layers=1, encoder_units=16,
                                       decoder_layers=1, decoder_units=16)
    cfg = TrainConfig(data=str(tmp_path / "p.mrcs"), run_dir=str(tmp_path / "run"), model=model, batch_size=4,
                      max_steps=1, n_test_eval=0, n_samples=0)
    monkeypatch.setattr(memory, "available_memory", lambda: (100 * MIB, "host RAM available"))
    built = []
    monkeypatch.setattr(trainer_module, "build_model", lambda *a, **k: built.append(1))
    with pytest.raises(ConfigError, match=r"training needs about .* MiB .* but the host RAM available is 100 MiB"):
        trainer_module.Trainer(cfg, progress=False)
    assert built == []  # refused before any weight was allocated
    monkeypatch.undo()
    monkeypatch.setattr(memory, "available_memory", lambda: (100 * MIB, "host RAM available"))
    t = trainer_module.Trainer(dataclasses.replace(cfg, check_memory=False), progress=False)
    assert t.memory is None and t.train().step == 1


def test_cli_option_turns_the_check_off(monkeypatch):
    import argparse

    from cryovae_nb.commands import train

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    assert parser.parse_args(["--no-memory-check"]).no_memory_check
    assert not parser.parse_args([]).no_memory_check


def test_device_policy_turns_on_xla_everywhere_and_tf32_on_gpus():
    from tensorflow.config import PhysicalDevice

    gpu = PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    assert device_policy([]) == DevicePolicy("cpu", jit=True, tf32_matmul=False)
    assert device_policy([gpu]) == DevicePolicy("gpu", jit=True, tf32_matmul=True)
    assert TrainConfig().jit is None                       # the policy decides
    # XLA turns 3D convolutions into a naive loop on a CPU: the conv3d decoder runs uncompiled there
    assert device_policy([], "conv3d").jit is False and device_policy([gpu], "conv3d").jit is True


@pytest.mark.parametrize("gpus,asked,want", [(0, None, False), (1, None, True), (1, False, False), (0, True, True)])
def test_apply_device_policy_fills_what_the_config_leaves_open(monkeypatch, gpus, asked, want):
    import tensorflow as tf

    fake = [tf.config.PhysicalDevice(name=f"/physical_device:GPU:{i}", device_type="GPU") for i in range(gpus)]
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: fake if kind == "GPU" else [])
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    try:
        policy = apply_device_policy(TrainConfig(tf32_matmul=asked))
        assert policy == DevicePolicy("gpu" if gpus else "cpu", jit=True, tf32_matmul=want)
        assert tf.config.experimental.tensor_float_32_execution_enabled() is want
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(before)

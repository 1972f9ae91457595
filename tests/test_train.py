"""Training: data order, checkpoints, metrics log, and short real runs on a tiny synthetic stack."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from cryovae_nb.config import from_dict, load_config, save_config, to_dict
from cryovae_nb.errors import ConfigError, InputError, TrainingError
from cryovae_nb.io import read_output_files
from cryovae_nb.training.config import TrainConfig
from cryovae_nb.training.data import EpochOrder, Prefetcher, make_split, read_split
from cryovae_nb.training.rundir import CheckpointManager, MetricsLog, read_metrics

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# pure parts


def test_split_is_reproducible_disjoint_and_complete():
    tr, te = make_split(1000, 0.1, seed=3)
    assert len(te) == 100 and len(tr) == 900
    assert np.array_equal(np.union1d(tr, te), np.arange(1000))
    tr2, te2 = make_split(1000, 0.1, seed=3)
    assert np.array_equal(te, te2) and np.array_equal(tr, tr2)
    assert not np.array_equal(make_split(1000, 0.1, seed=4)[1], te)
    # a tiny fraction still holds out one image, zero holds out none
    assert len(make_split(5, 0.01, 0)[1]) == 1 and len(make_split(5, 0.0, 0)[1]) == 0


def test_load_split_accepts_both_layouts_and_rejects_bad_ones(tmp_path):
    p = tmp_path / "s.npz"
    np.savez(p, train=np.array([0, 2, 3]), test=np.array([1]))
    tr, te = read_split(p, 4)
    assert tr.tolist() == [0, 2, 3] and te.tolist() == [1]
    q = tmp_path / "mask.npz"
    np.savez(q, is_test=np.array([False, True, False, True]))
    tr, te = read_split(q, 4)
    assert tr.tolist() == [0, 2] and te.tolist() == [1, 3]
    with pytest.raises(InputError, match="is_test"):
        read_split(q, 5)
    with pytest.raises(InputError, match=r"outside 0\.\.2"):
        read_split(p, 3)
    np.savez(p, train=np.array([0, 1]), test=np.array([1]))
    with pytest.raises(InputError, match="share"):
        read_split(p, 4)
    np.savez(p, something=np.array([0]))
    with pytest.raises(InputError, match="s.npz"):
        read_split(p, 4)


def test_epoch_order_visits_each_image_once_per_epoch_and_reshuffles():
    idx = np.arange(10, 113)  # 103 images: 10 batches of 10, 3 dropped per epoch
    order = EpochOrder(idx, batch_size=10, seed=7)
    assert order.batches_per_epoch == 10
    epoch0 = np.concatenate([order.batch(s) for s in range(10)])
    epoch1 = np.concatenate([order.batch(s) for s in range(10, 20)])
    for ep in (epoch0, epoch1):
        assert len(ep) == 100 and len(np.unique(ep)) == 100 and np.isin(ep, idx).all()
    assert not np.array_equal(epoch0, epoch1)
    # the order depends on (seed, epoch) only: a fresh object asked for step 13 agrees
    assert np.array_equal(EpochOrder(idx, 10, 7).batch(13), order.batch(13))
    assert not np.array_equal(EpochOrder(idx, 10, 8).batch(13), order.batch(13))
    assert order.position(13) == (1, 3)


def test_epoch_order_shards_disjointly_across_ranks():
    idx = np.arange(64)
    ranks = [EpochOrder(idx, 8, seed=1, rank=r, size=2) for r in range(2)]
    assert ranks[0].batches_per_epoch == 4
    seen = [np.concatenate([o.batch(s) for s in range(4)]) for o in ranks]
    assert len(np.intersect1d(seen[0], seen[1])) == 0
    assert np.array_equal(np.sort(np.concatenate(seen)), idx)
    with pytest.raises(ConfigError, match="batch"):
        EpochOrder(np.arange(5), 8, 0)


def test_prefetcher_keeps_order_and_reraises_in_the_consumer():
    def fetch(step):
        if step == 6:
            raise InputError("image 7 contains NaN", "x.mrcs")
        return step * 10

    pf = Prefetcher(fetch, start=3, depth=2)
    try:
        assert [pf.get(s) for s in (3, 4, 5)] == [30, 40, 50]
        with pytest.raises(InputError, match="x.mrcs"):
            pf.get(6)
    finally:
        pf.close()


def test_checkpoint_manager_is_atomic_keeps_last_m_and_restores(tmp_path):
    import tensorflow as tf

    v = tf.Variable(np.zeros(3, np.float32))
    ck = tf.train.Checkpoint(v=v)
    mgr = CheckpointManager(tmp_path / "ck", keep=2)
    assert mgr.latest() is None
    for step in (10, 20, 30):
        v.assign(np.full(3, step, np.float32))
        mgr.save(ck, step, {"step": step})
    assert [p.name for p in mgr.all()] == ["step_00000020", "step_00000030"]
    assert mgr.latest().name == "step_00000030"
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.startswith(".")]  # no temp left
    # a checkpoint folder whose write was interrupted is never pointed at
    (tmp_path / "ck" / ".step_00000040.xyz.tmp").mkdir()
    assert mgr.latest().name == "step_00000030"
    state = CheckpointManager.restore(tf.train.Checkpoint(v=v), mgr.path_for(20))
    assert state == {"step": 20} and v.numpy().tolist() == [20, 20, 20]
    (tmp_path / "ck" / "latest").write_text("step_00000099\n")
    with pytest.raises(TrainingError, match="step_00000099"):
        mgr.latest()
    with pytest.raises(TrainingError, match="cannot restore"):
        CheckpointManager.restore(tf.train.Checkpoint(w=tf.Variable(np.zeros(2))), mgr.path_for(20))


def test_metrics_log_truncates_on_resume_and_skips_a_torn_line(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for s in (5, 10, 15):
        log.append({"step": s, "split": "train", "total": float(s)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 20, "spl')  # a kill in the middle of a write
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 10, 15]
    log.truncate(10)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [5, 10]


def test_metric_values_are_cleaned_for_json_lists_included(tmp_path):
    from cryovae_nb.training.rundir import json_value

    assert json_value(float("nan")) is None and json_value(np.float32(1.5)) == 1.5 and json_value(None) is None
    assert json_value(np.int64(3)) == 3 and type(json_value(np.int64(3))) is int
    assert json_value(True) is True and json_value(np.bool_(False)) is False
    assert json_value([0.123456, float("inf"), np.float32(2e-5)], 4) == [0.1235, None, 2e-5]
    assert json_value(np.array([1.0, np.nan])) == [1.0, None]
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"step": 5, "split": "test", "kl_per_dim": json_value([0.5, 1e-4], 4), "active_dims": 1})
    log.append({"step": 9, "split": "test", "kl_per_dim": [0.25, 0.0], "active_dims": 0,
                "latent_collapsed": True})
    log.truncate(5)
    assert read_metrics(tmp_path) == [{"step": 5, "split": "test", "kl_per_dim": [0.5, 1e-4], "active_dims": 1}]


def test_train_config_round_trips_and_validates(tmp_path):
    cfg = TrainConfig(data="x.star", run_dir=str(tmp_path / "r"), max_steps=7, learning_rate=3e-4)
    cfg.model.architecture.latent_dim = 4
    for name in ("c.json", "c.yaml"):
        save_config(cfg, tmp_path / name)
        back = load_config(TrainConfig, tmp_path / name)
        assert to_dict(back) == to_dict(cfg) and back.model.architecture.latent_dim == 4
    for bad in ({"batch_size": 0}, {"test_fraction": 1.0}, {"model": {"pose": {"mode": "guess"}}},
                {"learning_rate": -1.0}, {"max_time_s": 0}):
        with pytest.raises(ConfigError):
            from_dict(TrainConfig, {"data": "x", **bad})
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(TrainConfig, {"data": "x", "bacth_size": 3})


# --------------------------------------------------------------------------------------------
# real training runs on a tiny synthetic stack (box 16, a few small layers: seconds per run)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """600 noisy projections of the L phantom (box 16, SNR 1), tanh-normalised and masked."""
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
    from cryovae_nb.synthetic import SimulationConfig, simulate

    root = tmp_path_factory.mktemp("tiny")
    ds = simulate(SimulationConfig(box=16, n_particles=600, snr=1.0, seed=1), root / "sim", progress=False)
    preprocess_stack(ds.star, root / "pre" / "particles", PreprocessConfig(), progress=False)
    return root / "pre" / "particles.star"


def tiny_config(data, run_dir, **overrides) -> TrainConfig:
    from cryovae_nb.model import ModelConfig

    model = ModelConfig().with_options(box=16, latent_dim=4, encoder_layers=2, encoder_units=64, decoder_layers=2,
                                       decoder_units=64)
    kw = dict(data=str(data), run_dir=str(run_dir), model=model, batch_size=32, learning_rate=1e-3,
              max_steps=30, log_every=10, sample_every=1000, checkpoint_every=10, n_test_eval=60,
              n_samples=4, seed=5)
    kw.update(overrides)
    return TrainConfig(**kw)


def _weights(trainer_or_model):
    model = getattr(trainer_or_model, "model", trainer_or_model)
    return [np.array(v.numpy()) for v in model.trainable_variables]


def test_short_run_lowers_held_out_loss_and_writes_the_run_dir(tiny_data, tmp_path):
    from cryovae_nb.io import read_volume
    from cryovae_nb.training.trainer import Trainer

    got = {"metrics": [], "samples": [], "checkpoints": []}

    class Recorder:
        def on_metrics(self, r):
            got["metrics"].append(r)

        def on_samples(self, images, projections, step):
            got["samples"].append((images.shape, projections.shape, step))

        def on_checkpoint(self, path):
            got["checkpoints"].append(path)

    cfg = tiny_config(tiny_data, tmp_path / "run", max_steps=60, log_every=15, sample_every=30,
                      checkpoint_every=15, keep_checkpoints=2, learning_rate=3e-3)
    trainer = Trainer(cfg, callbacks=[Recorder()], progress=False)
    before = trainer.evaluate()  # the untrained model on the held-out images
    result = trainer.train()
    assert (result.step, result.reason) == (60, "max_steps")

    records = read_metrics(tmp_path / "run")
    assert records == got["metrics"]  # the callback saw exactly what the log holds
    test = [r for r in records if r["split"] == "test"]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in test] == [15, 30, 45, 60] == [r["step"] for r in train]
    for r in records:
        assert set(r) >= {"step", "split", "recon", "kl", "averaging", "pose", "total", "images_per_s", "time"}
        assert abs(r["total"] - (r["recon"] + r["kl"] + 1e4 * r["averaging"] + 100 * r["pose"])) < 1e-3 * abs(r["total"])
    assert all(r["images_per_s"] > 0 for r in train)
    # held-out records say how much of the latent is used; train records keep the scalars
    latent = cfg.model.architecture.latent_dim
    for r in test:
        assert len(r["kl_per_dim"]) == latent and all(v >= 0 for v in r["kl_per_dim"]), r
        assert sum(r["kl_per_dim"]) == pytest.approx(r["kl"], rel=1e-3, abs=1e-3)
        assert type(r["active_dims"]) is int and 0 <= r["active_dims"] <= latent
        assert r["noise_var"] > 0 and "latent_collapsed" not in r   # step 60 < 500: not judged
    assert all(r["noise_var"] > 0 and "kl_per_dim" not in r and "active_dims" not in r for r in train)
    assert len(before["kl_per_dim"]) == latent and before["noise_var"] > 0
    # evaluation is deterministic (z = z_mean, fixed images), so any drop is learning, not noise;
    # tanh-normalised targets sit near 0.5, where the cross-entropy above its floor is only a few
    # nats per image, hence the absolute margin (observed: 8-19 nats)
    assert test[-1]["recon"] < before["recon"] - 2.0, (before, [r["recon"] for r in test])
    assert test[-1]["recon"] < test[0]["recon"]

    run = tmp_path / "run"
    ck = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert ck == ["step_00000045", "step_00000060"]  # keep_checkpoints=2
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000060"
    assert got["checkpoints"][-1].endswith("step_00000060") and len(got["checkpoints"]) == 4
    assert load_config(TrainConfig, run / "config.yaml").model.architecture.box == 16
    split = np.load(run / "split.npz", allow_pickle=False)
    assert len(split["test"]) == 60 and len(split["train"]) == 540
    assert got["samples"] == [((4, 16, 16), (4, 16, 16), 30), ((4, 16, 16), (4, 16, 16), 60)]
    png = run / "samples" / "step_00000060.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    vols = sorted((run / "samples" / "step_00000060").glob("*.mrc"))
    assert len(vols) == cfg.n_sample_volumes
    vol, voxel = read_volume(vols[0])
    assert vol.shape == (16, 16, 16) and voxel == pytest.approx(1.0) and np.isfinite(vol).all()


def test_latent_collapse_is_flagged_after_warmup_and_warned_once(tiny_data, tmp_path, monkeypatch):
    from cryovae_nb.training import trainer as T

    # the verdict on crafted evaluations: it depends on the step and the count, nothing else
    model = tiny_config(tiny_data, tmp_path).model.with_options(kl_warmup_steps=800)
    trainer = T.Trainer(tiny_config(tiny_data, tmp_path / "a", model=model), progress=False)
    dead = {"recon": 10.0, "kl": 0.0021, "kl_per_dim": [0.001, 0.0, 0.0011, 0.0], "active_dims": 0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert trainer.check_latent_collapse(dead, step=799) == dead        # still in the warm-up
        assert trainer.check_latent_collapse({**dead, "active_dims": 1}, step=900)["active_dims"] == 1
        assert "latent_collapsed" not in trainer.check_latent_collapse({**dead, "active_dims": 1}, step=900)
        assert "latent_collapsed" not in trainer.check_latent_collapse({**dead, "active_dims": None}, step=900)
        assert not caught
        flagged = trainer.check_latent_collapse(dead, step=800)
        assert flagged == {**dead, "latent_collapsed": True} and "latent_collapsed" not in dead
        assert trainer.check_latent_collapse(dead, step=1000)["latent_collapsed"] is True
    assert len(caught) == 1 and issubclass(caught[0].category, T.LatentCollapseWarning)
    msg = str(caught[0].message)
    for part in ("no information about the particles", "0 of 4 dimensions active", "KL 0.0021 nats/image",
                 "homogeneous", "posterior collapsed", "known poses", "latent.inference", "kl_warmup_steps"):
        assert part in msg, msg
    # without a warm-up the floor is COLLAPSE_MIN_STEP
    plain = T.Trainer(tiny_config(tiny_data, tmp_path / "b"), progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert "latent_collapsed" not in plain.check_latent_collapse(dead, step=T.COLLAPSE_MIN_STEP - 1)
        assert plain.check_latent_collapse(dead, step=T.COLLAPSE_MIN_STEP)["latent_collapsed"]
    assert len(caught) == 1

    # a real (tiny) run: no dimension counts as active, and the floor is lowered to reach it
    monkeypatch.setattr(T, "ACTIVE_VARIANCE", math.inf)
    monkeypatch.setattr(T, "COLLAPSE_MIN_STEP", 0)
    model = model.with_options(kl_warmup_steps=15)
    run = T.Trainer(tiny_config(tiny_data, tmp_path / "c", model=model, max_steps=30, checkpoint_every=30),
                    progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.train()
    assert [w.category for w in caught if issubclass(w.category, T.LatentCollapseWarning)] == \
        [T.LatentCollapseWarning]
    test = [r for r in read_metrics(tmp_path / "c") if r["split"] == "test"]
    assert [(r["step"], r["active_dims"], r.get("latent_collapsed")) for r in test] == \
        [(10, 0, None), (20, 0, True), (30, 0, True)]


_DRIVER = textwrap.dedent("""
    import os, signal, sys
    from cryovae_nb.config import load_config
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.trainer import Trainer

    class KillAt:  # the process kills itself at a given logged step: the same point on any machine
        def on_metrics(self, record):
            if record["step"] == int(sys.argv[2]) and record["split"] == "train":
                os.kill(os.getpid(), signal.SIGKILL)

    Trainer(load_config(TrainConfig, sys.argv[1]), callbacks=[KillAt()], progress=False).train()
""")


def test_sigkill_and_resume_matches_an_uninterrupted_run(tiny_data, tmp_path):
    from cryovae_nb.training.trainer import Trainer

    kw = dict(max_steps=16, log_every=1, checkpoint_every=6, n_test_eval=32)
    # the uninterrupted reference, in this process
    ref = Trainer(tiny_config(tiny_data, tmp_path / "ref", **kw), progress=False)
    ref.train()

    # the same run in a subprocess, SIGKILLed once a step after its first checkpoint is done
    cfg = tiny_config(tiny_data, tmp_path / "killed", **kw)
    save_config(cfg, tmp_path / "killed.json")
    (tmp_path / "driver.py").write_text(_DRIVER)
    # killed by SIGKILL at step 9, three steps after its first checkpoint (step 6)
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "killed.json"), "9"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    killed_at = max(r["step"] for r in read_metrics(tmp_path / "killed"))
    ckpt_step = int(latest.read_text().strip().split("_")[1])
    assert (ckpt_step, killed_at) == (6, 9)

    resumed = Trainer(cfg, progress=False)
    assert resumed.step == ckpt_step
    result = resumed.train()
    assert result.step == 16
    for a, b in zip(_weights(ref), _weights(resumed)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(ref.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # the log was cut back to the checkpoint on resume, then continued with the same numbers
    want = [(r["step"], r["split"], r["total"]) for r in read_metrics(tmp_path / "ref")]
    have = [(r["step"], r["split"], r["total"]) for r in read_metrics(tmp_path / "killed")]
    assert have == want


def test_nan_input_fails_cleanly_and_keeps_the_last_checkpoint(tiny_data, tmp_path):
    import mrcfile

    from cryovae_nb.io import read_particles, write_particles_star
    from cryovae_nb.training.trainer import Trainer

    # a copy of the data whose particle used at step 15 holds a NaN pixel
    parts = read_particles(tiny_data)
    images = parts.images[np.arange(len(parts))]
    probe = tiny_config(tiny_data, tmp_path / "probe")
    train_idx, _ = make_split(len(parts), probe.test_fraction, probe.seed)
    bad = int(EpochOrder(train_idx, probe.batch_size, probe.seed).batch(15)[3])
    images[bad, 7, 7] = np.nan
    stack = tmp_path / "bad.mrcs"
    with mrcfile.new(stack) as m, warnings.catch_warnings():  # our writer refuses NaN; others do not
        warnings.simplefilter("ignore", RuntimeWarning)
        m.set_data(images)
        m.voxel_size = parts.pixel_size
    names = [f"{i + 1:06d}@bad.mrcs" for i in range(len(parts))]
    write_particles_star(tmp_path / "bad.star", parts, image_names=names)

    trainer = Trainer(tiny_config(tmp_path / "bad.star", tmp_path / "run"), progress=False)
    with pytest.raises(TrainingError, match=r"bad\.mrcs.*step 15.*step_00000010"):
        trainer.train()
    latest = CheckpointManager(tmp_path / "run" / "checkpoints").latest()
    assert latest.name == "step_00000010"
    with mrcfile.open(stack, permissive=True) as m:  # the input was not touched
        assert np.isnan(m.data[bad, 7, 7])


def test_nan_loss_fails_cleanly_and_never_checkpoints_bad_weights(tiny_data, tmp_path):
    from cryovae_nb.inference import load_run
    from cryovae_nb.training.trainer import Trainer

    trainer = Trainer(tiny_config(tiny_data, tmp_path / "run", max_steps=10), progress=False)
    trainer.train()
    good = _weights(trainer)
    # a learning rate a user might type by mistake blows the weights up within a step or two
    trainer.optimizer.learning_rate.assign(1e8)
    trainer.config = dataclasses.replace(trainer.config, max_steps=40)
    with pytest.raises(TrainingError, match=r"loss became (nan|inf).*step_00000010"):
        trainer.train()
    assert trainer.step < 20  # stopped at once, before the next checkpoint
    assert CheckpointManager(tmp_path / "run" / "checkpoints").latest().name == "step_00000010"
    run = load_run(tmp_path / "run")
    for a, b in zip(good, _weights(run.model)):
        np.testing.assert_array_equal(a, b)
    trainer.model.trainable_variables[0].assign(np.full(trainer.model.trainable_variables[0].shape, np.nan))
    with pytest.raises(TrainingError, match="not finite"):
        trainer.save_checkpoint()


def test_stop_requests_time_budget_and_stop_file(tiny_data, tmp_path):
    from cryovae_nb.training.trainer import Trainer

    class StopAt:
        def __init__(self):
            self.trainer = None

        def on_metrics(self, record):
            if record["step"] >= 20:
                self.trainer.stop()

    cb = StopAt()
    trainer = Trainer(tiny_config(tiny_data, tmp_path / "a", max_steps=1000), callbacks=[cb], progress=False)
    cb.trainer = trainer
    r = trainer.train()
    assert (r.step, r.reason) == (20, "stop_requested")
    assert r.checkpoint.endswith("step_00000020")

    (tmp_path / "a" / "STOP").touch()
    r = Trainer(tiny_config(tiny_data, tmp_path / "a", max_steps=1000), progress=False).train()
    assert (r.step, r.reason) == (20, "stop_file") and not (tmp_path / "a" / "STOP").exists()

    # the budget is checked before each step: at least one step runs, and the run stops only once
    # the budget has passed (how many steps fit depends on the machine, so that is not asserted)
    r = Trainer(tiny_config(tiny_data, tmp_path / "b", max_steps=10**6, max_time_s=1.5), progress=False).train()
    assert r.reason == "max_time" and 0 < r.step < 10**6 and r.elapsed_s >= 1.5
    assert Path(r.checkpoint).name == f"step_{r.step:08d}"


def test_known_pose_mode_needs_poses_and_trains(tiny_data, tmp_path):
    from cryovae_nb.training.trainer import Trainer

    cfg = tiny_config(tiny_data, tmp_path / "k", max_steps=20)
    cfg.model.pose.mode = "known"
    r = Trainer(cfg, progress=False).train()
    assert r.step == 20
    assert load_config(TrainConfig, tmp_path / "k" / "config.json").model.pose.mode == "known"
    stack = read_output_files(tiny_data)["stack"]
    with pytest.raises(InputError, match="known"):
        Trainer(tiny_config(stack, tmp_path / "k2", model=cfg.model), progress=False)


def test_resume_refuses_a_different_model(tiny_data, tmp_path):
    from cryovae_nb.training.trainer import Trainer

    Trainer(tiny_config(tiny_data, tmp_path / "r", max_steps=10), progress=False).train()
    cfg = tiny_config(tiny_data, tmp_path / "r", max_steps=20)
    cfg.model.architecture.latent_dim = 6
    with pytest.raises(ConfigError, match="different model"):
        Trainer(cfg, progress=False)
    # starting over on purpose moves the old run's checkpoints and log aside, into previous-1
    with pytest.warns(UserWarning, match="previous-1"):
        fresh = Trainer(dataclasses.replace(cfg, max_steps=4), resume=False, progress=False)
    assert fresh.step == 0 and not (tmp_path / "r" / "checkpoints").exists()
    assert (tmp_path / "r" / "previous-1" / "checkpoints" / "step_00000010").is_dir()
    fresh.train()
    assert [p.name for p in CheckpointManager(tmp_path / "r" / "checkpoints").all()] == ["step_00000004"]
    assert read_metrics(tmp_path / "r") == []


def test_cli_trains_and_resumes(tiny_data, tmp_path):
    from cryovae_nb.cli import run_command

    def main(argv):  # the per-rank entry `python -m cryovae_nb.training` runs exactly this
        return run_command(argv[0], argv[1:], prog="python -m cryovae_nb.training")

    cfg = tiny_config(tiny_data, tmp_path / "ignored", max_steps=10)
    save_config(cfg, tmp_path / "c.yaml")
    run = tmp_path / "cli_run"
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--run-dir", str(run), "--no-progress"]) == 0
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000010"
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--run-dir", str(run), "--max-steps", "20",
                 "--no-progress"]) == 0
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000020"
    # --pose-mode and --learning-rate write into their one home: the model's pose, the trainer's rate
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "k"), "--max-steps", "2",
                 "--pose-mode", "known", "--learning-rate", "5e-4", "--no-progress"]) == 0
    saved = load_config(TrainConfig, tmp_path / "k" / "config.json")
    assert saved.model.pose.mode == "known" and saved.learning_rate == 5e-4
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--data", str(tmp_path / "missing.star"),
                 "--run-dir", str(tmp_path / "x"), "--no-progress"]) == 2


def test_sigterm_stops_the_cli_at_a_step_checkpointed_and_the_same_command_resumes(tiny_data, tmp_path):
    """What Slurm's time limit or scancel does to a run: SIGTERM. The run stops at the next step
    boundary, checkpoints that step (checkpoint_every is out of reach: no periodic one), exits
    128 + 15 naming the signal, and leaves no autograph module behind; the same command resumes."""
    from cryovae_nb.training.trainer import Trainer

    run, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()
    cfg = tiny_config(tiny_data, run, max_steps=10**6, log_every=1, checkpoint_every=10**6, n_test_eval=32,
                      n_samples=0)
    save_config(cfg, tmp_path / "c.json")
    cmd = [sys.executable, "-m", "cryovae_nb.training", "--config", str(tmp_path / "c.json"), "--no-progress"]
    # this checkout's package; a temporary folder of its own, to count what the run leaves there
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        t0 = time.monotonic()
        while not read_metrics(run):          # training: a step is logged
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() - t0 < 900, "no step logged in 900 s (hung?)"
            time.sleep(0.05)
        traced = list(tmp.glob("__autograph_generated_file*.py"))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped = re.search(r"stopped by SIGTERM at step (\d+); checkpoint (\S+); run the same command to resume", err)
    assert stopped, err[-3000:]
    step = int(stopped.group(1))
    assert step >= 1 and stopped.group(2) == str(run / "checkpoints" / f"step_{step:08d}")
    assert [p.name for p in CheckpointManager(run / "checkpoints").all()] == [f"step_{step:08d}"]
    assert max(r["step"] for r in read_metrics(run)) == step   # the log is written up to the stop
    # TensorFlow's atexit removes its autograph modules: a clean exit leaves none (SIGTERM's
    # default action left each of them in /tmp: 33 for this run before)
    assert traced and list(tmp.glob("__autograph_generated_file*.py")) == []

    assert Trainer(cfg, progress=False).step == step            # a resume starts there
    again = subprocess.run([*cmd, "--max-steps", str(step + 2)], capture_output=True, text=True, env=env,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"stopped at step {step + 2} (max_steps)" in again.stdout
    assert [r["step"] for r in read_metrics(run) if r["split"] == "train"] == list(range(1, step + 3))


def test_pose_cache_refines_locally_between_global_epochs_and_resumes_exactly(tiny_data, tmp_path):
    """PoseConfig.global_every=2: epoch 0 searches globally and fills the cache, epoch 1 starts
    each search at the cached rotation (a local step), epoch 2 is global again; the cache is
    checkpointed, so a run stopped and resumed mid-epoch takes the same steps."""
    from cryovae_nb.training.trainer import Trainer

    def config(run, **kw):
        cfg = tiny_config(tiny_data, run, batch_size=64, log_every=5, checkpoint_every=10, n_test_eval=32, **kw)
        return dataclasses.replace(cfg, model=cfg.model.with_options(pose_global_every=2))

    ref = Trainer(config(tmp_path / "ref", max_steps=20), progress=False)
    per_epoch = ref.order.batches_per_epoch
    assert 10 < 2 * per_epoch < 20  # the run crosses into a second global epoch
    modes = []
    step = ref._train_step

    def spy(batch, seed=None, start=None):
        modes.append(start is not None)
        if start is not None:  # the start is each particle's last searched rotation
            rows = ref.pose_cache.numpy()[np.asarray(batch.indices)]
            np.testing.assert_array_equal(np.asarray(start), rows[:, :4] * rows[:, 4:])  # 0: none
        return step(batch, seed, start)

    ref._train_step = spy
    ref.train()
    assert modes == [False] * per_epoch + [True] * per_epoch + [False] * (20 - 2 * per_epoch)
    cache = ref.pose_cache.numpy()
    seen = np.unique(np.concatenate([ref.order.batch(s) for s in range(20)]))
    assert (cache[seen, 4] == 1).all() and (np.delete(cache[:, 4], seen) == 0).all()
    np.testing.assert_allclose(np.linalg.norm(cache[seen, :4], axis=1), 1.0, atol=1e-5)

    first = Trainer(config(tmp_path / "cut", max_steps=10), progress=False)  # stops mid epoch 1
    first.train()
    resumed = Trainer(config(tmp_path / "cut", max_steps=20), progress=False)
    assert resumed.step == 10
    np.testing.assert_array_equal(resumed.pose_cache.numpy(), first.pose_cache.numpy())
    resumed.train()
    for a, b in zip(_weights(ref), _weights(resumed)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ref.pose_cache.numpy(), resumed.pose_cache.numpy())

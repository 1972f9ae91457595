"""Horovod data-parallel training: real 2-process ``horovodrun --gloo`` runs on CPU (tiny model, box
16) checked against a single-process computation over the same combined batches; a killed rank
and a resume; the notebook; plus the pure parts (launcher detection, all-reduce cost model)."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cryovae_nb.training import horovod as D
from cryovae_nb.errors import LaunchError

HOROVOD = D.horovod_available()
needs_horovod = pytest.mark.skipif(not HOROVOD, reason="horovod.tensorflow is not importable; "
                                   "install it with `make horovod` (scripts/install_horovod.sh)")
HOROVODRUN = shutil.which("horovodrun", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
REPO = Path(__file__).resolve().parents[1]

B = 4        # images per rank per step
FEW_THREADS = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}  # 2 ranks on 2 cores
SEED = 3


# ---------------------------------------------------------------------------------------------
# tiny data and config


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory) -> Path:
    """48 projections of the L-shape phantom (box 16), scaled into [0, 1] like tanh-normalised data."""
    from cryovae_nb.geometry import random_rotations
    from cryovae_nb.io import write_stack
    from cryovae_nb.projection import project_reference
    from cryovae_nb.synthetic import lshape_volume

    rng = np.random.default_rng(0)
    proj = project_reference(lshape_volume(16), random_rotations(48, rng))
    proj = proj + 0.3 * proj.std() * rng.standard_normal(proj.shape)
    lo, hi = proj.min(axis=(1, 2), keepdims=True), proj.max(axis=(1, 2), keepdims=True)
    path = tmp_path_factory.mktemp("data") / "tiny.mrcs"
    write_stack(path, ((proj - lo) / (hi - lo)).astype(np.float32), pixel_size=2.0)
    return path


def tiny_config(data: Path, run_dir: Path, **overrides) -> dict:
    cfg = {"data": str(data), "run_dir": str(run_dir), "batch_size": B, "max_steps": 6,
           "log_every": 1, "sample_every": 1000, "checkpoint_every": 3, "n_test_eval": 4,
           "n_samples": 0, "test_fraction": 0.1, "prefetch": 1, "jit": False, "seed": SEED,
           "learning_rate": 1e-3,
           "model": {"architecture": {"box": 16, "latent_dim": 3, "encoder_layers": 1, "encoder_units": 32,
                                      "decoder_layers": 1, "decoder_units": 32}}}
    cfg.update(overrides)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg, indent=1))
    return path


# ---------------------------------------------------------------------------------------------
# the single-process computation a 2-rank run must reproduce


def reference_weights(cfg: dict, steps: int, size: int = 2) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Train ``steps`` steps in ONE process on the global batches of ``size * B`` images.

    The objective of a global batch G (split into the interleaved shards G[r::size] the ranks
    read) is  mean_i(recon_i + beta kl_i) + c * mean_r averaging(G[r::size]):  reconstruction and
    KL are per-sample means, so over G they are the mean of the shard means; the averaging term
    is a batch statistic and the distributed run computes it per shard, so the reference does
    too. Each shard draws its reparameterisation noise from the step's seed, as each rank does.
    One gradient of that objective, one Adam update per step: no all-reduce anywhere. The Gaussian
    likelihood's running noise variance is then updated with the mean of the shards' residuals
    (what the ranks all-reduce along with the gradients), the global batch's residual.
    """
    import tensorflow as tf

    from cryovae_nb.config import from_dict
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.data import EpochOrder
    from cryovae_nb.training.steps import kl_scale
    from cryovae_nb.training.trainer import Trainer

    ref_cfg = from_dict(TrainConfig, {**cfg, "run_dir": cfg["run_dir"] + "_reference"})
    trainer = Trainer(ref_cfg, resume=False, progress=False)  # same init, data, split, optimizer
    model, opt = trainer.model, trainer.optimizer
    global_order = EpochOrder(trainer.train_indices, size * B, SEED)  # a single process, batch size*B
    variables = model.trainable_variables
    initial = [v.numpy() for v in variables]
    for step in range(steps):
        batch = global_order.batch(step)
        seed = tf.constant([SEED, step], tf.int32)
        with tf.GradientTape() as tape:
            shards = [model.compute_losses(trainer.batches(batch[r::size]), training=True, seed=seed,
                                           kl_scale=kl_scale(model, opt)) for r in range(size)]
            total = tf.add_n([out["total"] for out in shards]) / size
        grads = tape.gradient(total, variables)
        opt.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        model.update_noise_variance(tf.add_n([out["residual"] for out in shards]) / size)
    return initial, [v.numpy() for v in variables]


def test_sharding_splits_the_single_process_batch():
    """Rank r's batch of B is the interleaved share r of the global batch of 2B of one process."""
    from cryovae_nb.training.data import EpochOrder

    idx = np.arange(100, 150)
    single = EpochOrder(idx, 2 * B, SEED)
    ranks = [EpochOrder(idx, B, SEED, rank=r, size=2) for r in range(2)]
    assert single.batches_per_epoch == ranks[0].batches_per_epoch == ranks[1].batches_per_epoch
    for step in range(2 * single.batches_per_epoch + 1):  # crosses epoch boundaries
        g = single.batch(step)
        for r in range(2):
            assert np.array_equal(ranks[r].batch(step), g[r::2])


# ---------------------------------------------------------------------------------------------
# the real thing: horovodrun --gloo, 2 processes

WORKER = textwrap.dedent('''
    """One rank: train, then dump weights, optimizer state and every write it made into run_dir."""
    import json, os, sys
    import numpy as np
    from cryovae_nb.training import horovod

    cfg_path, out_dir = sys.argv[1], sys.argv[2]
    run_dir = os.path.realpath(json.load(open(cfg_path))["run_dir"])
    writes = []

    def audit(event, args):
        # every way Python can create, change or delete a file, restricted to the run directory
        if event == "open":
            path, mode, flags = args
            if (mode and any(c in mode for c in "wax+")) or (mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                writes.append(str(path))
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"):
            writes.append(str(args[0]))

    trainer = horovod.make_trainer(cfg_path, progress=False)
    sys.addaudithook(audit)
    result = trainer.train()
    mine = sorted({w for w in writes if os.path.realpath(w).startswith(run_dir)})
    np.savez(os.path.join(out_dir, f"rank{trainer.rank}.npz"),
             *[v.numpy() for v in trainer.model.trainable_variables],
             *[v.numpy() for v in trainer.optimizer.variables])
    with open(os.path.join(out_dir, f"rank{trainer.rank}.json"), "w") as f:
        json.dump({"rank": trainer.rank, "size": trainer.size, "step": result.step, "writes": mine}, f)
''')


def horovodrun(np_: int, argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    from cryovae_nb.launch import horovodrun_command

    cmd = horovodrun_command(np_, [sys.executable, *argv], horovodrun=HOROVODRUN)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **FEW_THREADS})
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.mark.horovod
@needs_horovod
def test_killed_rank_fails_the_job_then_a_resumed_run_matches_one_process(tiny_stack, tmp_path):
    """Run A (the CLI through launch()): rank 1 is killed after the first checkpoint; the job must
    fail with a clear error. Run B (horovodrun again, same run_dir): resumes from A's last
    checkpoint; both ranks end bit-identical, rank 1 wrote nothing, and the weights equal a single
    process trained from scratch over the same combined batches -- which also proves the resume."""
    import psutil

    from cryovae_nb.launch import attach, launch

    run_dir = tmp_path / "run"
    cfg = tiny_config(tiny_stack, run_dir, max_steps=100_000, checkpoint_every=4, keep_checkpoints=100)
    job = launch(write_config(tmp_path / "cfg_a.json", cfg), run_dir, backend="local", np=2,
                 train_args=["--no-progress"], env=FEW_THREADS)
    try:
        t0 = time.monotonic()
        while not (run_dir / "checkpoints" / "latest").exists():
            assert job.status() == "running", job.logs(40)
            assert time.monotonic() - t0 < 900, "no checkpoint after 900 s (hung?)\n" + job.logs(40)
            time.sleep(0.2)
        ranks = [p for p in psutil.Process(job.pid).children(recursive=True)
                 if "cryovae_nb.training" in " ".join(p.cmdline()) and p.environ().get("HOROVOD_RANK") == "1"]
        assert len(ranks) == 1, [p.cmdline() for p in psutil.Process(job.pid).children(recursive=True)]
        ranks[0].kill()
        with pytest.raises(LaunchError, match=r"(?s)local job \(pid \d+\) failed \(exit code [1-9]\d*\)"):
            job.wait(timeout=900, poll=0.5)
    finally:
        job.cancel(grace=5)
    assert attach(run_dir).status() == "failed"
    assert "exited with non-zero status" in job.logs(80)  # horovodrun names the rank that died

    resumed_from = int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    target = resumed_from + 3
    cfg_b = {**cfg, "max_steps": target}
    cfg_path = write_config(tmp_path / "cfg_b.json", cfg_b)
    (tmp_path / "worker.py").write_text(WORKER)
    horovodrun(2, [str(tmp_path / "worker.py"), str(cfg_path), str(tmp_path)])

    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(i["rank"], i["size"], i["step"]) for i in info] == [(0, 2, target), (1, 2, target)]
    w = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    assert len(w[0].files) == len(w[1].files) > 0
    for k in w[0].files:  # weights AND Adam moments, bit for bit
        assert np.array_equal(w[0][k], w[1][k]), f"ranks differ in {k}"

    # only rank 0 wrote into the run directory
    assert info[1]["writes"] == []
    assert any("checkpoints" in p for p in info[0]["writes"])
    assert any(p.endswith("metrics.jsonl") for p in info[0]["writes"])
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{target:08d}"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    # once per step, not once per rank; A's steps after its last checkpoint were dropped
    assert [r["step"] for r in train] == list(range(1, target + 1))
    assert all(r["ranks"] == 2 and math.isfinite(r["total"]) for r in train[resumed_from:])

    initial, ref = reference_weights(cfg_b, target)
    got = [w[0][f"arr_{i}"] for i in range(len(ref))]
    assert max(float(np.abs(g - r0).max()) for g, r0 in zip(got, initial)) > 1e-3  # it trained
    for i, (g, r) in enumerate(zip(got, ref)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=2e-5, err_msg=f"variable {i}")


@pytest.mark.horovod
@needs_horovod
def test_sigterm_to_one_rank_stops_both_at_one_step_and_rank_0_checkpoints_it(tiny_stack, tmp_path):
    """SIGTERM to rank 1 alone (not to horovodrun, which would SIGKILL the ranks 5 s later): the
    ranks agree on the stop (agree_stop), so rank 0, which got no signal, stops at the same step,
    checkpoints it and says which signal stopped the run; both exit 128 + 15."""
    import psutil

    from cryovae_nb.launch import horovodrun_command

    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.json", tiny_config(tiny_stack, run_dir, max_steps=100_000,
                                                          checkpoint_every=100_000))
    cmd = horovodrun_command(2, [sys.executable, "-m", "cryovae_nb.training", "--config", str(cfg),
                                 "--no-progress"], horovodrun=HOROVODRUN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
                                 **FEW_THREADS})
    try:
        t0 = time.monotonic()
        while not (run_dir / "metrics.jsonl").exists() or not (run_dir / "metrics.jsonl").read_text():
            assert proc.poll() is None, proc.stdout.read()[-4000:]
            assert time.monotonic() - t0 < 900, "no step logged in 900 s (hung?)"
            time.sleep(0.1)
        ranks = [p for p in psutil.Process(proc.pid).children(recursive=True)
                 if "cryovae_nb.training" in " ".join(p.cmdline()) and p.environ().get("HOROVOD_RANK") == "1"]
        assert len(ranks) == 1
        ranks[0].send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
        proc.wait()
    stopped = re.search(r"\[0\]<stderr>:stopped by SIGTERM at step (\d+); checkpoint (\S+); run the same", out)
    assert stopped, out[-4000:]
    step = int(stopped.group(1))
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == [f"step_{step:08d}"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == step and all(r.get("ranks") == 2 for r in records)
    # both ranks stopped cleanly, with the status a signal's stop has (so horovodrun reports failure)
    assert "Process 0 exit with status code 143" in out and "Process 1 exit with status code 143" in out
    assert proc.returncode != 0


def test_metrics_reduction_averages_every_loss_key_and_keeps_the_latent_statistics():
    """What ranks average is model.losses.LOSS_KEYS (+ throughput), not a copy that can fall behind
    (it once missed ``pose``); the held-out latent statistics are rank 0's, untouched."""
    from cryovae_nb.model.losses import LOSS_KEYS

    seen = []

    class FakeContext:
        size = 2

        def allreduce_mean(self, values, name):
            seen.append(name)
            return [v + 1.0 for v in values]     # stand-in for the other rank's contribution

    record = {"step": 3, "split": "test", **{k: float(i) for i, k in enumerate(LOSS_KEYS)},
              "images_per_s": None, "time": 1.5, "kl_per_dim": [0.5, 0.0], "active_dims": 1,
              "latent_collapsed": True}
    out = D.reduce_metrics(FakeContext(), record)
    assert {"pose", "noise_var"} <= set(LOSS_KEYS) and seen == ["cryovae.metrics.test"]
    assert {k: out[k] for k in LOSS_KEYS} == {k: i + 1.0 for i, k in enumerate(LOSS_KEYS)}
    assert out["images_per_s"] is None and out["ranks"] == 2 and out["time"] == 1.5
    assert (out["kl_per_dim"], out["active_dims"], out["latent_collapsed"]) == ([0.5, 0.0], 1, True)


def test_horovod_hooks_reduce_every_loss_key_and_agree_on_stopping():
    """The Trainer gets Horovod only through its Hooks: the metrics hook averages every loss key
    of a train record, the stop hook takes the strongest reason any rank saw."""
    from cryovae_nb.model.losses import LOSS_KEYS
    from cryovae_nb.training.trainer import Hooks

    class FakeContext:
        rank, size = 1, 3

        def grad_reducer(self, grads):
            return grads

        def broadcast(self, trainer):
            pass

        def allreduce_mean(self, values, name):
            return [2.0 * v for v in values]

        def allreduce_max(self, value, name):
            return max(int(value), 4)       # another rank saw a STOP file

    hooks = D.hooks(FakeContext())
    assert isinstance(hooks, Hooks) and (hooks.rank, hooks.size, hooks.is_chief) == (1, 3, False)
    record = {"step": 1, "split": "train", **{k: 1.0 for k in LOSS_KEYS}, "images_per_s": 10.0}
    out = hooks.reduce_metrics(record)
    assert {k: out[k] for k in LOSS_KEYS} == dict.fromkeys(LOSS_KEYS, 2.0) and out["images_per_s"] == 20.0
    assert hooks.agree_stop(None) == "stop_file" and Hooks().agree_stop is None
    # a signal's stop wins, and carries its name to every rank (each says what stopped it)
    assert hooks.agree_stop("SIGTERM") == "SIGTERM" and hooks.agree_stop("SIGINT") == "SIGINT"


# ---------------------------------------------------------------------------------------------
# launcher detection and Horovod's absence


def test_launcher_detection_from_environment():
    assert not D.under_launcher({})
    assert D.under_launcher({"HOROVOD_RANK": "1"}) and D.under_launcher({"OMPI_COMM_WORLD_RANK": "0"})
    assert D.under_launcher({"PMI_RANK": "3"})
    assert not D.under_launcher({"SLURM_PROCID": "0"})  # a batch script alone is not a rank
    assert D.expected_size({"HOROVOD_SIZE": "4"}) == 4
    assert D.expected_size({"OMPI_COMM_WORLD_SIZE": "8"}) == 8
    assert D.expected_size({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "16"}) == 16
    assert D.expected_size({"SLURM_NTASKS": "16"}) is None


def test_single_process_context_is_the_identity(tmp_path, monkeypatch):
    for k in D.RANK_ENV + D.SIZE_ENV:
        monkeypatch.delenv(k, raising=False)
    ctx = D.init(use_horovod=False, pin_gpu=False)
    assert (ctx.rank, ctx.size, ctx.is_chief, ctx.hvd) == (0, 1, True, None)
    assert ctx.allreduce_mean([1.5, float("nan")], name="x")[0] == 1.5
    assert ctx.allreduce_max(3, name="y") == 3


def test_learning_rate_scaling_is_opt_in():
    from cryovae_nb.training.config import TrainConfig

    cfg = TrainConfig(data="x")
    assert D.scaled_config(cfg, 4, scale_lr=False) is cfg
    assert D.scaled_config(cfg, 4, scale_lr=True).learning_rate == pytest.approx(4e-5)
    assert D.scaled_config(TrainConfig(data="x", learning_rate=2e-4), 3, True).learning_rate == pytest.approx(6e-4)


def test_multi_rank_launch_that_comes_up_as_size_one_is_refused(monkeypatch):
    """mpirun/srun starting a Gloo-only Horovod: every rank would train alone. Say so instead."""
    for k in D.RANK_ENV + D.SIZE_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    want = ("the launcher started 2 ranks but Horovod sees a job of size 1" if HOROVOD
            else "started by a multi-process launcher but horovod.tensorflow cannot be imported")
    with pytest.raises(LaunchError, match=want):
        D.init(pin_gpu=False)


# ---------------------------------------------------------------------------------------------
# the paper estimate used by benchmarks/scaling.py


def test_ring_allreduce_cost_model():
    nbytes, bw = 8e6, 1e9
    assert D.ring_allreduce_seconds(nbytes, 1, bw) == 0.0
    assert D.ring_allreduce_seconds(nbytes, 2, bw) == pytest.approx(nbytes / bw)  # 2(p-1)/p = 1
    assert D.ring_allreduce_seconds(nbytes, 4, bw) == pytest.approx(1.5 * nbytes / bw)
    # many ranks: each sends ~2x the data, whatever p
    assert D.ring_allreduce_seconds(nbytes, 1000, bw) == pytest.approx(2 * nbytes / bw, rel=1e-2)
    # one node: the hierarchical scheme is the intra-node ring
    assert D.hierarchical_allreduce_seconds(nbytes, 4, 1, intra_bw=bw, inter_bw=1.0, latency_s=0) == \
        pytest.approx(D.ring_allreduce_seconds(nbytes, 4, bw))
    # across nodes only bytes/gpus_per_node travel the slow link
    t = D.hierarchical_allreduce_seconds(nbytes, 4, 2, intra_bw=1e12, inter_bw=bw, latency_s=0)
    assert t == pytest.approx(1.5 * nbytes / 1e12 + nbytes / 4 / bw)


def test_gradient_bytes_counts_float32_trainable_parameters():
    import keras

    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3), keras.layers.Dense(2, use_bias=False)])
    assert D.gradient_bytes(model) == (5 * 3 + 3 + 3 * 2) * 4


# ---------------------------------------------------------------------------------------------
# the mpirun backend: two real Open MPI ranks of Horovod (its MPI controller, not Gloo)

MPIRUN = shutil.which("mpirun")


def _horovod_mpi_built() -> bool:
    # in a subprocess: importing horovod.tensorflow here would load TensorFlow into the test process early
    r = subprocess.run([sys.executable, "-c", "import horovod.tensorflow as h; print(h.mpi_built())"],
                       capture_output=True, text=True, timeout=300)
    return r.returncode == 0 and r.stdout.strip().endswith("True")


@pytest.mark.horovod
@needs_horovod
@pytest.mark.skipif(MPIRUN is None, reason="mpirun not found: apt-get install openmpi-bin libopenmpi-dev "
                    "(make cluster-tools), then rebuild Horovod with MPI (make horovod)")
def test_mpirun_backend_trains_two_mpi_ranks_like_one_process(tiny_stack, tmp_path):
    """launch(backend="mpirun"): `mpirun -np 2 python -m cryovae_nb.training`, the ranks joined by
    Horovod's MPI controller into one job of size 2; the weights it checkpoints equal one process
    trained over the same combined batches."""
    from cryovae_nb.config import from_dict
    from cryovae_nb.launch import check_backend, launch
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.trainer import Trainer

    if not _horovod_mpi_built():
        pytest.skip("this Horovod was built without MPI: rebuild it with `make horovod` once libopenmpi-dev "
                    "is installed (scripts/install_horovod.sh sets HOROVOD_WITH_MPI=1)")
    assert check_backend("mpirun") is None
    run_dir = tmp_path / "run"
    steps = 6
    cfg = tiny_config(tiny_stack, run_dir, max_steps=steps)
    # as root (CI), the command itself carries Open MPI's --allow-run-as-root
    job = launch(write_config(tmp_path / "cfg.json", cfg), run_dir, backend="mpirun", np=2,
                 train_args=["--no-progress"], env=FEW_THREADS)
    try:
        assert job.command[:3] == [MPIRUN, "-np", "2"]
        assert job.command[-9:-6] == [sys.executable, "-m", "cryovae_nb.training"]
        assert job.wait(timeout=900, poll=0.5) == "completed"
    finally:
        job.cancel(grace=5)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, steps + 1)) and {r["ranks"] for r in train} == {2}
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{steps:08d}"

    restored = Trainer(from_dict(TrainConfig, cfg), resume=True, progress=False)  # the job's checkpoint
    assert restored.step == steps
    got = [v.numpy() for v in restored.model.trainable_variables]
    initial, ref = reference_weights(cfg, steps)
    assert max(float(np.abs(g - r0).max()) for g, r0 in zip(got, initial)) > 1e-3  # it trained
    for i, (g, r) in enumerate(zip(got, ref)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=2e-5, err_msg=f"variable {i}")

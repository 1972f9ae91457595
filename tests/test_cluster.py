"""The cluster cell: the monitor's view of a launched job (queue state, step of max, images/s, ETA,
the newest decoded volume), and a real one-node Slurm (tests/local_slurm.py: slurmctld + slurmd
with munge, 2 CPUs) running a 2-rank Horovod training submitted through ``cryovae_nb.launch``,
watched in the monitor, cancelled, resubmitted and resumed from its checkpoint.

The real-Slurm test needs root and Debian's slurm-wlm + munge (``make cluster-tools``), and
Horovod (``make horovod``); elsewhere it skips saying which is missing.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from PIL import Image

from cryovae_nb import launch as L
from cryovae_nb.training.horovod import horovod_available

sys.path.insert(0, str(Path(__file__).parent))
from local_slurm import LocalSlurm, unavailable  # noqa: E402
from test_distributed import FEW_THREADS, tiny_config, tiny_stack, write_config  # noqa: E402,F401


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    # a hang guard only: each wait ends as soon as its condition holds
    t0 = time.monotonic()
    while not (value := predicate()):
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
    return value


# ---------------------------------------------------------------------------------------------
# the monitor's job view, against a stand-in training process under the local supervisor

FAKE_RANK0 = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import mrcfile
run = Path(sys.argv[1])
with open(run / "metrics.jsonl", "a") as f:
    for step, t in ((10, 1.0), (20, 3.0)):   # 10 steps in 2 s: 5 steps/s
        f.write(json.dumps({"step": step, "split": "train", "total": 1.0, "recon": 1.0, "kl": 0.1,
                            "averaging": 0.0, "images_per_s": 50.0, "ranks": 2, "time": t}) + "\n")
vol = np.load(run / "truth.npy")
(run / "samples" / "step_00000020").mkdir(parents=True)
with mrcfile.new(run / "samples" / "step_00000020" / "particle_000003.mrc") as m:
    m.set_data(vol)
    m.voxel_size = 2.5
(run / "ready").touch()
while not (run / "go").exists():
    time.sleep(0.05)
"""


def test_monitor_shows_queue_state_step_of_max_rate_eta_and_newest_volume(tmp_path):
    from cryovae_nb.widgets import TrainingMonitor

    run_dir = (tmp_path / "run").resolve()
    run_dir.mkdir()
    rng = np.random.default_rng(1)
    truth = np.zeros((8, 8, 8), np.float32)
    truth[1:5, 2:7, 3:5] = rng.random((4, 5, 2)) + 1  # asymmetric: each projection differs
    np.save(run_dir / "truth.npy", truth)
    cfg = write_config(tmp_path / "cfg.json", {"data": "parts.star", "max_steps": 100})
    (tmp_path / "rank0.py").write_text(FAKE_RANK0)
    mon = TrainingMonitor(run_dir)
    assert mon.queue_state is None and mon.progress["step"] is None  # nothing launched yet

    job = L.start_background([sys.executable, str(tmp_path / "rank0.py"), str(run_dir), "--config", str(cfg)],
                             run_dir)
    try:
        wait_for(lambda: (run_dir / "ready").exists() or job.status() != "running", 120, "the stand-in rank")
        mon.refresh()
        assert mon.queue_state == "RUNNING", job.logs()
        # 2 ranks at 50 images/s each; 80 steps left at 5 steps/s
        assert mon.progress == {"step": 20, "max_steps": 100, "images_per_s": 100.0, "eta_s": pytest.approx(16.0)}
        status = mon.status.value
        assert f"<b>RUNNING</b> (local job (pid {job.pid}))" in status
        for want in ("step 20 of 100", "100 images/s", "ETA 16 s"):
            assert want in status, status
        # the newest decoded volume: its projections along z, y and x, each min-max scaled
        assert mon.volume_path == run_dir / "samples" / "step_00000020" / "particle_000003.mrc"
        assert "step 20" in mon.volume_caption.value and "2.5 &Aring;/px" in mon.volume_caption.value
        shown = np.asarray(Image.open(io.BytesIO(mon.volume.value)).convert("L"), np.float64)
        f = 96 // 8                                           # tiles blown up to 96 px, 2 px apart
        for k, axis in enumerate((0, 1, 2)):
            proj = truth.sum(axis=axis, dtype=np.float64)
            want = np.round((proj - proj.min()) / (proj.max() - proj.min()) * 255)
            tile = shown[:96, k * 98:k * 98 + 96][::f, ::f]
            assert np.abs(tile - want).max() <= 1, f"projection along axis {axis}"
    finally:
        (run_dir / "go").touch()
    assert job.wait(timeout=120, poll=0.1) == "completed"
    mon.refresh()
    assert mon.queue_state == "COMPLETED" and mon.progress["eta_s"] is None
    assert "<b>COMPLETED</b>" in mon.status.value and "ETA" not in mon.status.value

    # a resubmission with --max-steps: the new job.json is picked up, its target shown
    job2 = L.start_background([sys.executable, "-c", "pass", "--max-steps", "250"], run_dir)
    job2.wait(timeout=120, poll=0.1)
    mon.refresh()
    assert mon.job.pid == job2.pid and mon.max_steps == 250 and "step 20 of 250" in mon.status.value


def test_monitor_follows_a_resume_that_rewrote_the_metrics_past_their_old_length(tmp_path):
    """A resubmitted job truncates metrics.jsonl to its checkpoint (an atomic replace) and appends;
    by the monitor's next read the new file can be longer than the old, so its size cannot show
    the change: the monitor starts over on the new file instead of reading from mid-line."""
    from cryovae_nb.atomic import write_text_atomic
    from cryovae_nb.widgets import TrainingMonitor

    def rec(step, t):
        return json.dumps({"step": step, "split": "train", "total": 1.0 / step, "recon": 1.0, "kl": 0.1,
                           "averaging": 0.0, "images_per_s": 10.0, "ranks": 2, "time": t}) + "\n"

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(rec(s, s) for s in (1, 2, 3, 4)))
    mon = TrainingMonitor(tmp_path)
    assert mon.history["train"]["total"][0] == [1, 2, 3, 4]
    resumed = "".join(rec(s, s) for s in (1, 2)) + "".join(rec(s, 10 + s) for s in (3, 4, 5, 6, 7))
    assert len(resumed) > path.stat().st_size
    write_text_atomic(path, resumed)
    assert mon.refresh() == 7
    assert mon.history["train"]["total"][0] == [1, 2, 3, 4, 5, 6, 7]
    assert mon.progress["step"] == 7 and "step 7" in mon.status.value


def test_monitor_says_when_the_queue_cannot_be_asked(tmp_path, monkeypatch):
    from cryovae_nb.widgets import TrainingMonitor

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "job.json").write_text(json.dumps({"backend": "slurm", "job_id": "77", "started": 0,
                                                  "log": str(run_dir / "slurm-77.out"), "command": []}))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "empty" / "python"))
    mon = TrainingMonitor(run_dir)
    assert mon.queue_state == "UNKNOWN"
    assert "<b>UNKNOWN</b> (Slurm job 77)" in mon.status.value and "squeue" in mon.status.value


# ---------------------------------------------------------------------------------------------
# a real one-node Slurm

SLURM_SKIP = unavailable()


@pytest.fixture(scope="module")
def local_slurm(tmp_path_factory):
    """slurmctld + slurmd (+ munged) on this machine until the module's tests are done."""
    if SLURM_SKIP:
        pytest.skip(SLURM_SKIP)
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=2).start()
    old = {k: os.environ.get(k) for k in slurm.env}
    os.environ.update(slurm.env)
    try:
        yield slurm
    finally:
        slurm.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slurm
@pytest.mark.horovod
def test_real_slurm_two_ranks_running_cancel_resubmit_resume(local_slurm, tiny_stack, tmp_path):
    from cryovae_nb.widgets import TrainingMonitor

    if not horovod_available():
        pytest.skip("horovod.tensorflow is not importable; install it with `make horovod`")
    assert L.check_backend("slurm") is None
    run_dir = (tmp_path / "run").resolve()
    opts = L.SlurmOptions(nodes=1, gpus_per_node=0, tasks_per_node=2, cpus_per_task=1, mem=None,
                          time="00:30:00", partition="debug", job_name="cryovae-test")
    # many steps: the job is still running when it is cancelled
    cfg = tiny_config(tiny_stack, run_dir, max_steps=100_000, checkpoint_every=3, keep_checkpoints=100,
                      n_samples=2, sample_every=3)
    job = L.launch(write_config(tmp_path / "cfg_a.json", cfg), run_dir, backend="slurm", slurm=opts,
                   train_args=["--no-progress"], env=FEW_THREADS)
    assert job.describe() == f"Slurm job {job.job_id}"
    script = (run_dir / "job.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --partition=debug" in script

    mon = TrainingMonitor(run_dir)
    seen = []

    def running_with_a_checkpoint():
        mon.refresh()
        if not seen or seen[-1] != mon.queue_state:
            seen.append(mon.queue_state)
        assert mon.queue_state in ("PENDING", "RUNNING"), f"{seen}\n{job.logs(40)}\n{local_slurm.logs()}"
        return mon.queue_state == "RUNNING" and (run_dir / "checkpoints" / "latest").exists()

    wait_for(running_with_a_checkpoint, 900, "a checkpoint of the running Slurm job", poll=0.5)
    assert seen[-1] == "RUNNING" and set(seen) <= {"PENDING", "RUNNING"}
    assert f"<b>RUNNING</b> (Slurm job {job.job_id})" in mon.status.value
    assert "step " in mon.status.value and " of 100000" in mon.status.value
    live = job.metrics()
    live = live[live["split"] == "train"]
    assert len(live) >= 1 and set(live["ranks"]) == {2}              # both ranks, reduced by rank 0
    assert "job " in job.logs() and "on localhost" in job.logs()     # the script's line in slurm-N.out
    assert job.log_path == run_dir / f"slurm-{job.job_id}.out"

    # the warning the script asks for before the time limit (#SBATCH --signal=B:USR1@300), sent
    # now: the batch shell writes the STOP file, both ranks stop at one step, rank 0 checkpoints
    # it, and the job ends by itself
    assert "#SBATCH --signal=B:USR1@300" in script
    r = subprocess.run(["scancel", "--signal=USR1", "--batch", str(job.job_id)], capture_output=True, text=True,
                       env=os.environ)
    assert r.returncode == 0, r.stderr
    assert job.wait(timeout=900, poll=0.5) == "completed", job.logs(40)
    assert "time limit near: asking the run to stop" in job.logs(40) and "(stop_file)" in job.logs(40)
    assert not (run_dir / "STOP").exists()                     # a resubmission runs
    stopped_at = int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert stopped_at == int(job.metrics()["step"].max())  # no step lost

    # resubmitted: it resumes there; then cancelled (scancel: SIGTERM to every process of the job)
    job = L.launch(write_config(tmp_path / "cfg_a.json", cfg), run_dir, backend="slurm", slurm=opts,
                   train_args=["--no-progress"], env=FEW_THREADS)
    wait_for(lambda: int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1]) > stopped_at,
             900, "a checkpoint of the resubmitted job", poll=0.5)
    job.cancel()
    assert wait_for(lambda: job.status() in L.FINISHED and job.status(), 120, "the cancel") == "cancelled"
    mon.refresh()
    assert mon.queue_state == "CANCELLED"
    assert L.attach(run_dir).status() == "cancelled"
    # the ranks stop gracefully on SIGTERM, but Slurm's KillWait (5 s here) and horovodrun's grace
    # (5 s) may end them first: any checkpoint past the first job's will do
    resumed_from = int((run_dir / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert resumed_from > stopped_at

    # resubmit with a target past the checkpoint, on a sample step (every 3rd): it resumes there
    target = (resumed_from // 3 + 2) * 3
    job2 = L.launch(write_config(tmp_path / "cfg_b.json", {**cfg, "max_steps": target}), run_dir,
                    backend="slurm", slurm=opts, train_args=["--no-progress"], env=FEW_THREADS)
    assert job2.job_id != job.job_id
    assert job2.wait(timeout=900, poll=0.5) == "completed", job2.logs(40)
    mon.refresh()
    assert mon.queue_state == "COMPLETED" and mon.job.job_id == job2.job_id
    assert mon.progress["step"] == target and mon.max_steps == target
    assert f"step {target} of {target}" in mon.status.value
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{target:08d}"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    # the step counter continues from the checkpoint: the cancelled job's later steps were dropped
    # and the resubmitted job logged resumed_from+1 .. target, with 2 ranks
    assert [r["step"] for r in train] == list(range(1, target + 1))
    assert all(r["ranks"] == 2 for r in train)
    assert train[resumed_from]["time"] >= train[resumed_from - 1]["time"]  # elapsed time carried over
    assert "stopped at step" in job2.logs(20) and f"step {target}" in job2.logs(20)
    assert mon.volume_path is not None and mon.volume_path.parent.name == f"step_{target:08d}"

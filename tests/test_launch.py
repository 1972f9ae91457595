"""The launch helper: Slurm script rendering and submission (against stand-in Slurm commands),
the local supervisor's job handle (status, logs, wait, cancel, re-attach), quoting, and a backend
added through the registry alone.

The Slurm commands are stand-ins written into tmp_path: they record their arguments and run the
submitted script locally, moving the job PENDING -> RUNNING -> COMPLETED/FAILED like Slurm.
A job stays PENDING until the test creates ``<state>/<id>.release`` (or at once with
FAKE_SLURM_AUTORELEASE=1); FAKE_SBATCH_REJECT=message makes sbatch refuse the submission.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cryovae_nb import launch as L
from cryovae_nb.errors import ConfigError, LaunchError
from cryovae_nb.launch import backends
from cryovae_nb.training.rundir import EXIT_FILE

# ---------------------------------------------------------------------------------------------
# stand-in Slurm

_LOG = r'''
log_call() { "$FAKE_PY" -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "$(basename "$0")" "$@" >> "$FAKE_SLURM_DIR/calls.jsonl"; }
'''

SBATCH = r'''#!/bin/bash
''' + _LOG + r'''
log_call "$@"
if [ -n "${FAKE_SBATCH_REJECT:-}" ]; then
    echo "sbatch: error: Batch job submission failed: $FAKE_SBATCH_REJECT" >&2; exit 1
fi
out=""; chdir="$PWD"; script=""
for a in "$@"; do
    case "$a" in
        --output=*) out="${a#--output=}" ;;
        --chdir=*) chdir="${a#--chdir=}" ;;
        --*) ;;
        *) script="$a" ;;
    esac
done
[ -f "$script" ] || { echo "sbatch: error: Unable to open file $script" >&2; exit 1; }
n=$(( $(cat "$FAKE_SLURM_DIR/counter" 2>/dev/null || echo 1000) + 1 )); echo "$n" > "$FAKE_SLURM_DIR/counter"
# as sbatch: %j is the job id, %x the job name, %% a literal %
out="${out//\%\%/$'\x01'}"; out="${out//%j/$n}"; out="${out//%x/jobname}"; out="${out//$'\x01'/%}"
[ -n "$out" ] || out="$chdir/slurm-$n.out"
st="$FAKE_SLURM_DIR/$n"
echo PENDING > "$st.state"
[ -n "${FAKE_SLURM_AUTORELEASE:-}" ] && touch "$st.release"
setsid bash -c '
    st="$1"; script="$2"; out="$3"; chdir="$4"; n="$5"
    while [ ! -e "$st.release" ]; do sleep 0.1; done
    [ "$(cat "$st.state")" = PENDING ] || exit 0
    echo RUNNING > "$st.state"
    cd "$chdir" && SLURM_JOB_ID="$n" SLURM_JOB_NODELIST=localhost SLURM_NTASKS=1 bash "$script" > "$out" 2>&1
    rc=$?
    if [ "$(cat "$st.state")" = RUNNING ]; then
        if [ $rc = 0 ]; then echo COMPLETED > "$st.state"; else echo FAILED > "$st.state"; fi
    fi
' runner "$st" "$script" "$out" "$chdir" "$n" < /dev/null > /dev/null 2>&1 &
echo $! > "$st.pid"
echo "$n"
'''

SQUEUE = r'''#!/bin/bash
''' + _LOG + r'''
log_call "$@"
id=""; while [ $# -gt 0 ]; do [ "$1" = -j ] && id="$2"; shift; done
s=$(cat "$FAKE_SLURM_DIR/$id.state" 2>/dev/null) || { echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; }
case "$s" in PENDING|RUNNING) echo "$s" ;; esac
exit 0
'''

SACCT = r'''#!/bin/bash
''' + _LOG + r'''
log_call "$@"
id=""; while [ $# -gt 0 ]; do [ "$1" = -j ] && id="$2"; shift; done
cat "$FAKE_SLURM_DIR/$id.state" 2>/dev/null
exit 0
'''

SCANCEL = r'''#!/bin/bash
''' + _LOG + r'''
log_call "$@"
st="$FAKE_SLURM_DIR/$1"
[ -f "$st.state" ] || { echo "scancel: error: Invalid job id $1" >&2; exit 1; }
echo CANCELLED > "$st.state"
kill -TERM -- "-$(cat "$st.pid")" 2>/dev/null
exit 0
'''

SRUN = r'''#!/bin/bash
''' + _LOG + r'''
log_call "$@"
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done   # drop srun's own options
exec "$@"
'''

SCONTROL = r'''#!/bin/bash
''' + _LOG + r'''
log_call "$@"
echo localhost
'''

# A "python" that records the argv it was given (to check quoting end to end without TensorFlow).
FAKE_TRAINER = r'''#!/bin/bash
"$FAKE_PY" -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "$@" > "$FAKE_SLURM_DIR/trainer_argv.json"
echo "trainer ran in $PWD"
exit "${FAKE_TRAINER_RC:-0}"
'''


def install_standins(bin_dir: Path, state_dir: Path, python: str) -> dict[str, str]:
    """Write the stand-ins into ``bin_dir``; return the environment variables they need."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("sbatch", SBATCH), ("squeue", SQUEUE), ("sacct", SACCT), ("scancel", SCANCEL),
                       ("srun", SRUN), ("scontrol", SCONTROL), ("fake-trainer", FAKE_TRAINER)):
        p = bin_dir / name
        p.write_text(text)
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return {"FAKE_SLURM_DIR": str(state_dir), "FAKE_PY": python,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def slurm_calls(state_dir: Path) -> list[list[str]]:
    path = state_dir / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class FakeSlurm:
    def __init__(self, state_dir: Path, bin_dir: Path):
        self.state_dir, self.bin_dir = state_dir, bin_dir

    def release(self, job_id: str) -> None:
        (self.state_dir / f"{job_id}.release").touch()

    def calls(self, name: str | None = None) -> list[list[str]]:
        return [c[1:] for c in slurm_calls(self.state_dir) if name is None or c[0] == name]


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> FakeSlurm:
    env = install_standins(tmp_path / "bin", tmp_path / "slurm_state", sys.executable)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield FakeSlurm(tmp_path / "slurm_state", tmp_path / "bin")
    # stop anything a test left running
    for pid_file in (tmp_path / "slurm_state").glob("*.pid"):
        try:
            os.killpg(int(pid_file.read_text()), 15)
        except (ProcessLookupError, ValueError, PermissionError):
            pass


def wait_for(predicate, timeout=600.0, poll=0.1, what="condition"):
    # timeouts here only catch a hang: each wait ends as soon as its condition holds
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def states_until_finished(job, timeout=900.0, poll=0.1) -> list[str]:
    """The distinct successive states a job reports until it finishes."""
    seen, t0 = [], time.monotonic()
    while True:
        st = job.status()
        if not seen or seen[-1] != st:
            seen.append(st)
        if st in L.FINISHED:
            return seen
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"job still {st} after {timeout} s; states {seen}\n{job.logs(40)}")
        time.sleep(poll)


# ---------------------------------------------------------------------------------------------
# rendering


def test_slurm_script_carries_resources_and_is_valid_bash(tmp_path):
    opts = L.SlurmOptions(nodes=3, gpus_per_node=4, cpus_per_task=6, mem="32G", time="01:30:00",
                          partition="gpu", account="proj-17", modules=("cuda/12.2", "gcc/12"),
                          venv="/opt/venvs/cryo", extra_sbatch=("--qos=high", "--exclusive"),
                          setup_commands=("export NCCL_DEBUG=INFO",), job_name="lshape")
    cmd = L.training_command(tmp_path / "c.json", tmp_path / "run", python="/opt/venvs/cryo/bin/python")
    script = L.render_slurm_script(cmd, tmp_path / "run", opts)
    lines = script.splitlines()
    for want in ("#SBATCH --nodes=3", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --mem=32G", "#SBATCH --time=01:30:00",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj-17", "#SBATCH --qos=high",
                 "#SBATCH --exclusive", "#SBATCH --job-name=lshape", "module load cuda/12.2",
                 "module load gcc/12", "source /opt/venvs/cryo/bin/activate", "export NCCL_DEBUG=INFO",
                 f"#SBATCH --output={(tmp_path / 'run').resolve()}/slurm-%j.out"):
        assert want in lines, (want, script)
    # every #SBATCH line precedes the first command (sbatch stops reading them there)
    first_cmd = next(i for i, l in enumerate(lines) if l and not l.startswith("#"))
    assert all(i < first_cmd for i, l in enumerate(lines) if l.startswith("#SBATCH"))
    launch_line = next(l for l in lines if l.startswith("horovodrun"))
    assert launch_line.startswith('horovodrun -np "$SLURM_NTASKS" -H "$HOSTS" --gloo --gloo-timeout-seconds 300 '
                                  '/opt/venvs/cryo/bin/python')
    assert launch_line.endswith("--horovod &") and lines[-1] == 'exit "$rc"'
    # asked to stop 300 s before the limit: the batch shell, by USR1 (see SlurmOptions)
    assert "#SBATCH --signal=B:USR1@300" in lines and "trap ask_to_stop USR1" in lines
    path = tmp_path / "job.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)

    srun = L.render_slurm_script(cmd, tmp_path / "run", L.SlurmOptions(
        launcher="srun", srun_args=("--mpi=pmix",), gpus_per_node=2, gres=True, mem=None))
    assert "#SBATCH --gres=gpu:2" in srun and "--mem" not in srun and "--gpus-per-node" not in srun
    assert srun.splitlines()[-1].startswith("srun --kill-on-bad-exit=1 --mpi=pmix /opt/venvs/cryo/bin/python")
    assert "#SBATCH --signal=TERM@300" in srun.splitlines() and "USR1" not in srun  # srun: the ranks
    path.write_text(srun)
    subprocess.run(["bash", "-n", str(path)], check=True)


FAKE_HOROVODRUN = r'''#!/bin/bash
# a rank that trains until the run's STOP file appears, then exits with FAKE_RC (what a stopped run does)
echo started > "$FAKE_DIR/started"
while [ ! -e "$FAKE_RUN_DIR/STOP" ]; do sleep 0.05; done
rm "$FAKE_RUN_DIR/STOP"
exit "${FAKE_RC:-0}"
'''


@pytest.mark.parametrize("rc", [0, 3])
def test_slurm_script_turns_the_time_limit_warning_into_a_stop_file(tmp_path, rc):
    """The script's part of `#SBATCH --signal=B:USR1@S`, run by bash without Slurm: USR1 to the
    batch shell writes the run's STOP file while horovodrun runs on, and the script ends with
    horovodrun's own status (in exit.json too) once it has ended, not when the signal came."""
    bin_dir, run_dir = tmp_path / "bin", tmp_path / "run"
    bin_dir.mkdir()
    run_dir.mkdir()
    for name, text in (("horovodrun", FAKE_HOROVODRUN), ("scontrol", "#!/bin/sh\necho localhost\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "job.sh"
    script.write_text(L.render_slurm_script(["python", "-m", "cryovae_nb.training"], run_dir,
                                            L.SlurmOptions(gpus_per_node=0, tasks_per_node=2, mem=None)))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_DIR": str(tmp_path),
           "FAKE_RUN_DIR": str(run_dir), "FAKE_RC": str(rc), "SLURM_JOB_ID": "7", "SLURM_NTASKS": "2",
           "SLURM_JOB_NODELIST": "localhost"}
    proc = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        t0 = time.monotonic()
        while not (tmp_path / "started").exists():   # a hang guard only
            assert proc.poll() is None and time.monotonic() - t0 < 120, proc.stdout.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)              # what Slurm sends S seconds before the limit
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == rc, out
    assert "job 7: time limit near: asking the run to stop at its next step" in out
    assert json.loads((run_dir / "exit.json").read_text())["returncode"] == rc
    assert not (run_dir / "STOP").exists()              # the fake rank saw it and removed it


def test_the_stop_before_the_limit_fits_the_time_limit(tmp_path):
    assert [L.slurm.time_limit_s(t) for t in ("30", "30:15", "01:30:00", "2-00", "1-2:3", "1-02:03:04",
                                               "UNLIMITED", "infinite")] == \
        [1800, 1815, 5400, 172800, 93780, 93784, None, None]
    # a limit under twice the warning: Slurm would signal at once and the run stop at its start
    with pytest.warns(UserWarning, match="stop_before_limit_s"):
        short = L.render_slurm_script(["python"], tmp_path, L.SlurmOptions(time="00:09:00"))
    assert "--signal" not in short and "trap ask_to_stop" not in short and 'exit "$rc"' not in short
    assert "#SBATCH --signal=B:USR1@60" in L.render_slurm_script(
        ["python"], tmp_path, L.SlurmOptions(time="00:09:00", stop_before_limit_s=60))
    assert "--signal" not in L.render_slurm_script(["python"], tmp_path, L.SlurmOptions(stop_before_limit_s=None))
    for bad in (0, 70000, "300", True):
        with pytest.raises(ConfigError, match="stop_before_limit_s"):
            L.SlurmOptions(stop_before_limit_s=bad).validate()


def test_cpu_ranks_per_node_without_gpus(tmp_path, fake_slurm):
    """tasks_per_node: N ranks on a CPU node (no GPU request), horovodrun over N slots per host."""
    opts = L.SlurmOptions(nodes=2, gpus_per_node=0, tasks_per_node=3, cpus_per_task=1, mem=None)
    assert opts.ntasks == 6
    script = L.render_slurm_script(["python", "-m", "cryovae_nb.training"], tmp_path / "run", opts)
    assert "#SBATCH --ntasks-per-node=3" in script and "--gpus" not in script and "--gres" not in script
    assert 'sed "s/$/:3/"' in script and '-np "$SLURM_NTASKS"' in script
    # unset: one rank per GPU, as before
    gpu = L.render_slurm_script(["python"], tmp_path / "run", L.SlurmOptions(gpus_per_node=4))
    assert "#SBATCH --ntasks-per-node=4" in gpu and "#SBATCH --gpus-per-node=4" in gpu
    with pytest.raises(ConfigError, match="tasks_per_node must be a positive integer"):
        L.SlurmOptions(tasks_per_node=0).validate()
    assert L.check_backend("slurm") is None  # the stand-ins are on PATH


@pytest.mark.parametrize("field,value", [("partition", "gpu; rm -rf ~"), ("account", "a b"),
                                         ("time", "1:00\n#SBATCH --x"), ("mem", "$(reboot)")])
def test_unsafe_sbatch_values_are_refused(tmp_path, field, value):
    with pytest.raises(ConfigError, match=field):
        L.render_slurm_script(["python"], tmp_path, L.SlurmOptions(**{field: value}))
    with pytest.raises(ConfigError, match="extra_sbatch"):
        L.render_slurm_script(["python"], tmp_path, L.SlurmOptions(extra_sbatch=("--comment=a;b c",)))


def test_dry_run_returns_script_without_submitting(tmp_path, fake_slurm):
    script = L.launch({"data": "x.mrcs"}, tmp_path / "run", backend="slurm", dry_run=True,
                      slurm={"nodes": 2, "gpus_per_node": 8, "partition": "a100"})
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=8" in script
    assert fake_slurm.calls() == [] and not (tmp_path / "run").exists()
    cmdline = L.launch({"data": "x"}, tmp_path / "run", backend="local", np=3, dry_run=True)
    assert "-np 3 -H localhost:3 --gloo --gloo-timeout-seconds 300" in cmdline and "--horovod" in cmdline
    mpi = L.launch({"data": "x"}, tmp_path / "run", backend="mpirun", np=8, hosts="n1:4,n2:4", dry_run=True)
    assert mpi.split()[1:6] == ["-np", "8", "-H", "n1:4,n2:4", "-bind-to"] and mpi.endswith("--horovod")
    assert ("--allow-run-as-root" in mpi.split()) == (os.geteuid() == 0)
    with pytest.raises(ConfigError, match="unknown option.*gpus"):
        L.launch({"data": "x"}, tmp_path / "run", backend="slurm", dry_run=True, slurm={"gpus": 4})


# ---------------------------------------------------------------------------------------------
# Slurm end to end (stand-ins, no TensorFlow)


def test_hostile_run_dir_and_config_names_reach_the_trainer_intact(tmp_path, fake_slurm, monkeypatch):
    # A run name that would delete the home folder if it reached a shell unquoted; here the
    # payload only touches a canary file, so a quoting bug shows up as the canary existing.
    evil = "a b; touch CANARY; $(touch CANARY2) `touch CANARY3`"
    run_dir = tmp_path / f"run {evil}"
    workdir = tmp_path / f"wd {evil}"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # the ranks run where launch() was called
    config = tmp_path / f"cfg {evil}.json"
    config.write_text("{}")
    monkeypatch.setenv("FAKE_SLURM_AUTORELEASE", "1")
    job = L.launch(config, run_dir, backend="slurm", python=str(fake_slurm.bin_dir / "fake-trainer"),
                   train_args=["--max-steps", "3"], slurm=L.SlurmOptions(
                       launcher="srun", job_name=f"x{evil}", gpus_per_node=1))
    assert job.wait(timeout=600, poll=0.1) == "completed"
    argv = json.loads((fake_slurm.state_dir / "trainer_argv.json").read_text())
    assert argv == ["-m", "cryovae_nb.training", "--config", str(config.resolve()), "--run-dir",
                    str(run_dir.resolve()), "--horovod", "--max-steps", "3"]
    assert sorted(p.name for p in tmp_path.rglob("CANARY*")) == []
    script = (run_dir / "job.sbatch").read_text()
    assert "#SBATCH --job-name=xa_b__touch_CANARY" in script  # squashed to a plain token
    assert f"trainer ran in {workdir.resolve()}" in job.logs()


def test_percent_in_the_run_folder_is_not_an_sbatch_pattern(tmp_path, fake_slurm, monkeypatch):
    # sbatch expands %x, %j ... anywhere in --output; the run folder's own "%" must survive
    run_dir = tmp_path / "run 100%x"
    monkeypatch.setenv("FAKE_SLURM_AUTORELEASE", "1")
    job = L.launch({"data": "x"}, run_dir, backend="slurm", python=str(fake_slurm.bin_dir / "fake-trainer"),
                   slurm=L.SlurmOptions(launcher="srun", gpus_per_node=1))
    assert job.wait(timeout=600, poll=0.1) == "completed"
    assert job.log_path == run_dir.resolve() / f"slurm-{job.job_id}.out"
    assert "trainer ran in" in job.logs()
    assert not (tmp_path / "run 100jobname").exists()


@pytest.mark.parametrize("options", [{"partition": "gpu\n"}, {"time": "1:00:00\n"}, {"nodes": True},
                                     {"cpus_per_task": False}, {"extra_sbatch": ("--qos=high\n",)}])
def test_trailing_newlines_and_bools_are_not_slurm_values(tmp_path, options):
    with pytest.raises(ConfigError):
        L.render_slurm_script(["python"], tmp_path, L.SlurmOptions(**options))


def test_rejected_submission_and_missing_sbatch_raise_launch_error(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.setenv("FAKE_SBATCH_REJECT", "Invalid account or account/partition combination")
    with pytest.raises(LaunchError, match="sbatch rejected .*Invalid account"):
        L.launch({"data": "x"}, tmp_path / "run", backend="slurm")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "empty" / "python"))
    assert L.check_backend("slurm") == ("sbatch, squeue, scancel not found on PATH: backend='slurm' submits "
                                        "from a Slurm login node (SUBMIT = False / dry_run=True shows the script)")
    with pytest.raises(LaunchError, match="sbatch not found"):
        L.launch({"data": "x"}, tmp_path / "run2", backend="slurm")


def test_slurm_job_pending_running_failed_and_cancel(tmp_path, fake_slurm, monkeypatch):
    fake = str(fake_slurm.bin_dir / "fake-trainer")
    monkeypatch.setenv("FAKE_TRAINER_RC", "7")
    job = L.launch({"data": "x"}, tmp_path / "run", backend="slurm", python=fake,
                   slurm={"launcher": "srun", "gpus_per_node": 1})
    assert job.status() == "pending"
    fake_slurm.release(job.job_id)
    assert states_until_finished(job)[-1] == "failed"
    with pytest.raises(LaunchError, match=f"Slurm job {job.job_id} failed .*exit code 7"):
        job.wait(timeout=5)
    # the accounting database is optional: exit.json (the script's EXIT trap) says the same
    assert json.loads((tmp_path / "run" / "exit.json").read_text())["returncode"] == 7

    second = L.launch({"data": "x"}, tmp_path / "run2", backend="slurm", python=fake,
                      slurm={"launcher": "srun", "gpus_per_node": 1})
    assert second.status() == "pending"
    second.cancel()
    assert ["scancel", second.job_id] in [["scancel", *c] for c in fake_slurm.calls("scancel")]
    assert L.attach(tmp_path / "run2").status() == "cancelled"
    assert int(second.job_id) == int(job.job_id) + 1


def test_status_queries_use_squeue_then_sacct(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_AUTORELEASE", "1")
    job = L.launch({"data": "x"}, tmp_path / "run", backend="slurm",
                   python=str(fake_slurm.bin_dir / "fake-trainer"), slurm={"launcher": "srun"})
    job.wait(timeout=600, poll=0.1)
    assert ["-h", "-j", job.job_id, "-o", "%T"] in fake_slurm.calls("squeue")
    assert ["-n", "-P", "-X", "-j", job.job_id, "-o", "State"] in fake_slurm.calls("sacct")
    sb = fake_slurm.calls("sbatch")[0]
    assert sb[0] == "--parsable" and sb[-1] == str((tmp_path / "run" / "job.sbatch").resolve())
    assert f"--output={(tmp_path / 'run').resolve()}/slurm-%j.out" in sb
    assert job.log_path.name == f"slurm-{job.job_id}.out" and job.log_path.exists()


@pytest.mark.parametrize("cancelled,finished,rc,want", [
    (False, 20, 0, "completed"), (False, 20, 1, "failed"),
    (True, 20, 0, "cancelled"),    # scancel's SIGTERM, and horovodrun exited 0 on it
    (True, 20, 143, "cancelled"),
    (True, 9, 0, "completed"),     # it had finished before the cancel was asked for
])
def test_without_accounting_the_exit_record_and_the_cancel_decide(tmp_path, fake_slurm, cancelled, finished, rc, want):
    """A job gone from squeue on a cluster without sacct: exit.json, read with the job's cancel."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    info = {"backend": "slurm", "job_id": "4242", "started": 5, "log": str(run_dir / "slurm-4242.out")}
    if cancelled:
        info.update(cancelled=True, cancelled_at=10.5)
    (run_dir / "job.json").write_text(json.dumps(info))
    (run_dir / EXIT_FILE).write_text(json.dumps({"returncode": rc, "finished": finished}))
    assert L.attach(run_dir).status() == want  # the stand-ins know no job 4242: squeue and sacct say nothing


# ---------------------------------------------------------------------------------------------
# local supervisor (no Horovod needed: any command)


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_background_job_failure_carries_its_stderr(tmp_path):
    job = L.start_background(_py("import sys, time; time.sleep(0.5); "
                                 "sys.stderr.write('boom: rank 1 lost\\n'); sys.exit(3)"), tmp_path / "run")
    assert job.status() == "running"
    with pytest.raises(LaunchError, match=r"(?s)failed \(exit code 3\).*boom: rank 1 lost"):
        job.wait(timeout=600, poll=0.1)
    assert job.status() == "failed"
    info = json.loads((tmp_path / "run" / "job.json").read_text())
    assert info["backend"] == "local" and info["pid"] == job.pid and info["command"][0] == sys.executable


def test_background_job_survives_kernel_restart_and_cancel_kills_the_tree(tmp_path):
    # the job starts a grandchild in its own session, like horovodrun does with its ranks
    pid_file = tmp_path / "run" / "grandchild.pid"
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(300)")
    job = L.start_background(_py(code), tmp_path / "run")
    wait_for(lambda: (tmp_path / "run" / "grandchild.pid").exists() and "started" in job.logs(), what="start")
    grandchild = int((tmp_path / "run" / "grandchild.pid").read_text())
    again = L.attach(tmp_path / "run")  # what a fresh kernel sees
    assert again.status() == "running" and again.pid == job.pid
    with pytest.raises(LaunchError, match="already running"):
        L.launch({"data": "x"}, tmp_path / "run", backend="local", np=1)
    again.cancel(grace=5)
    wait_for(lambda: job.status() == "cancelled", timeout=300, what="cancelled")
    import psutil

    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
    assert L.attach(tmp_path / "run").status() == "cancelled"


def test_job_killed_without_exit_record_reads_as_failed(tmp_path):
    job = L.start_background(_py("import time; time.sleep(300)"), tmp_path / "run")
    import psutil

    sup = psutil.Process(job.pid)
    children = sup.children(recursive=True)
    sup.kill()  # the supervisor itself dies: nobody writes exit.json
    for c in children:
        c.kill()
    wait_for(lambda: job.status() != "running", timeout=300, what="death noticed")
    assert job.status() == "failed"
    with pytest.raises(LaunchError, match="no exit record"):
        job.wait(timeout=5)


def test_metrics_skips_a_torn_last_line_and_attach_needs_a_job(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(LaunchError, match="no job was launched"):
        L.attach(run)
    job = L.start_background(_py("pass"), run)
    job.wait(timeout=600, poll=0.1)
    assert job.metrics().empty
    (run / "metrics.jsonl").write_text('{"step": 1, "total": 2.5}\n{"step": 2, "total": 2.0}\n{"step": 3, "to')
    df = job.metrics()
    assert list(df["step"]) == [1, 2] and list(df["total"]) == [2.5, 2.0]


def test_local_launch_without_horovodrun_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "find_executable", lambda name: None)
    # what the notebook asks before launching: one line each, nothing started
    assert "horovodrun not found: install Horovod with `make horovod`" in L.check_backend("local")
    assert "mpirun not found on PATH" in L.check_backend("mpirun")
    with pytest.raises(ConfigError, match="backend must be one of"):
        L.check_backend("pbs")
    with pytest.raises(LaunchError, match="horovodrun not found"):
        L.launch({"data": "x"}, tmp_path / "run", backend="local", np=2)
    with pytest.raises(LaunchError, match="mpirun not found"):
        L.launch({"data": "x"}, tmp_path / "run", backend="mpirun", np=2)
    with pytest.raises(ConfigError, match="backend"):
        L.launch({"data": "x"}, tmp_path / "run", backend="pbs")


# ---------------------------------------------------------------------------------------------
# the package: light, and a new backend is one class plus one registry entry


def test_importing_launch_does_not_import_tensorflow():
    code = "import sys, cryovae_nb.launch; print('tensorflow' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"


class InlineBackend:
    """A backend written for the test below: runs the per-rank command once, here, to completion
    (no horovodrun, no supervisor), logging to inline.log and recording the exit code in exit.json."""

    def dry_run(self, train_cmd, run_dir, request):
        return shlex.join(train_cmd)

    def start(self, train_cmd, run_dir, request):
        started = time.time()
        with open(run_dir / "inline.log", "wb") as log:
            rc = subprocess.run(train_cmd, stdout=log, stderr=subprocess.STDOUT, timeout=300,
                                env={**os.environ, **(request.env or {})}).returncode
        (run_dir / EXIT_FILE).write_text(json.dumps({"returncode": rc, "finished": time.time()}))
        return {"command": train_cmd, "started": started, "run_dir": str(run_dir)}

    def status(self, job):
        if job.info.get("cancelled"):
            return "cancelled"
        rec = job.exit_record()
        return "running" if rec is None else "completed" if rec["returncode"] == 0 else "failed"

    def cancel(self, job, grace):
        pass  # start() returns only when the command has ended

    def log_path(self, job):
        return job.run_dir / "inline.log"

    def ident(self, job):
        return "inline"

    def describe(self, job):
        return "inline run"

    def missing(self):
        return None


# A "python" for the training command: reads the config, writes two metrics records, prints its
# arguments and $INLINE_ENV, exits with the config's "rc".
INLINE_TRAINER = """#!{python}
import json, os, pathlib, sys
args = sys.argv[1:]
run_dir = pathlib.Path(args[args.index("--run-dir") + 1])
cfg = json.loads(pathlib.Path(args[args.index("--config") + 1]).read_text())
with open(run_dir / "metrics.jsonl", "a") as f:
    for step in (1, 2):
        f.write(json.dumps({{"step": step, "split": "train", "total": 1.0 / step}}) + "\\n")
print("trained on", cfg["data"], "with", " ".join(args[1:]), "and", os.environ["INLINE_ENV"])
sys.exit(cfg.get("rc", 0))
"""


def test_a_backend_added_to_the_registry_runs_through_launch_and_its_job(tmp_path, monkeypatch):
    monkeypatch.setitem(L.BACKENDS, "inline", InlineBackend())
    trainer = tmp_path / "inline-python"
    trainer.write_text(INLINE_TRAINER.format(python=sys.executable))
    trainer.chmod(trainer.stat().st_mode | stat.S_IXUSR)
    run_dir = (tmp_path / "run").resolve()

    cmdline = L.launch({"data": "parts.star"}, run_dir, backend="inline", python=str(trainer), dry_run=True)
    assert cmdline == shlex.join([str(trainer), "-m", "cryovae_nb.training", "--config",
                                  str(run_dir / "launch_config.json"), "--run-dir", str(run_dir), "--horovod"])
    assert not run_dir.exists()

    assert L.check_backend("inline") is None
    job = L.launch({"data": "parts.star"}, run_dir, backend="inline", python=str(trainer),
                   train_args=["--max-steps", "2"], env={"INLINE_ENV": "env passed"})
    assert json.loads((run_dir / "job.json").read_text())["backend"] == "inline"
    assert job.wait(timeout=60, poll=0.1) == "completed"
    assert "trained on parts.star with" in job.logs() and "--max-steps 2 and env passed" in job.logs()
    assert list(job.metrics()["step"]) == [1, 2]
    again = L.attach(run_dir)  # a new kernel finds the job and asks the same backend
    assert again.status() == "completed" and again.command == job.command and "<Job inline inline " in repr(again)

    failing = L.launch({"data": "x", "rc": 3}, tmp_path / "run2", backend="inline", python=str(trainer),
                       env={"INLINE_ENV": "-"})
    assert failing.status() == "failed"
    with pytest.raises(LaunchError, match=r"(?s)inline run failed \(exit code 3\); last lines of .*inline.log:\n.*trained on x"):
        failing.wait(timeout=60, poll=0.1)

    monkeypatch.delitem(L.BACKENDS, "inline")  # the registry is the one place a backend is known
    with pytest.raises(LaunchError, match="unknown backend 'inline'"):
        L.attach(run_dir)
    with pytest.raises(ConfigError, match=r"backend must be one of \('local', 'mpirun', 'slurm'\), got 'inline'"):
        L.launch({"data": "x"}, tmp_path / "run3", backend="inline")


# ---------------------------------------------------------------------------------------------
# the tutorial notebook: a real local 2-process job, watched, and the Slurm script it would submit

NOTEBOOK = "03_cluster_training.ipynb"
NB_PARAMS = {"WORKDIR": "wd", "STAR_FILE": None, "BACKEND": "local", "SUBMIT": True, "SIM_BOX": 16, "SIM_PARTICLES": 120, "SEED": 0,
             "NP": 2, "BATCH_SIZE": 8, "MAX_STEPS": 12, "LOG_EVERY": 3, "SAMPLE_EVERY": 6,
             "CHECKPOINT_EVERY": 6, "LATENT_DIM": 3, "ENCODER_LAYERS": 1, "ENCODER_UNITS": 32,
             "DECODER_LAYERS": 1, "DECODER_UNITS": 32, "WAIT_TIMEOUT_S": 400, "MONITOR_POLL_S": 0.5,
             "SLURM_NODES": 3, "SLURM_PARTITION": "a100", "SLURM_MODULES": ["cuda/12.2"]}


def test_notebook_is_stored_clean_with_one_parameters_cell(repo_root):
    import re

    import nbformat

    nb = nbformat.read(repo_root / "notebooks" / NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    names = set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=", tagged[0].source, flags=re.M))
    assert set(NB_PARAMS) <= names, set(NB_PARAMS) - names


@pytest.mark.horovod
def test_notebook_launches_watches_and_shows_the_slurm_script(repo_root, tmp_path):
    from cryovae_nb.training.horovod import horovod_available

    if not horovod_available():
        pytest.skip("horovod.tensorflow is not importable; install it with `make horovod`")
    sys.path.insert(0, str(Path(__file__).parent))
    from notebook_runner import run_notebook

    nb = run_notebook(repo_root / "notebooks" / NOTEBOOK, NB_PARAMS, tmp_path, timeout=600)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    text = "\n".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                     if o.get("output_type") == "stream")
    run_dir = tmp_path / "wd" / "cluster_run"
    job = L.attach(run_dir)
    assert job.status() == "completed" and "job completed | monitor: COMPLETED" in text
    assert "'step': 12, 'max_steps': 12" in text  # the monitor's step of max
    train = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["split"] == "train"]
    assert [r["step"] for r in train] == [3, 6, 9, 12] and {r["ranks"] for r in train} == {2}
    assert f"{len(train)} training records, written once per step by rank 0 of 2 ranks" in text
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000012"
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png")) == ["step_00000006.png", "step_00000012.png"]
    # the monitor widget was displayed
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "display_data")
    # the dry-run Slurm script: the requested resources, nothing submitted
    for want in ("#SBATCH --nodes=3", "#SBATCH --partition=a100", "#SBATCH --gpus-per-node=4",
                 "module load cuda/12.2", "--horovod"):
        assert want in text
    assert not (tmp_path / "wd" / "cluster_run_slurm").exists()


def test_notebook_without_sbatch_says_so_in_one_line_and_starts_nothing(repo_root, tmp_path, monkeypatch):
    """BACKEND = "slurm" on a machine without Slurm: the script is shown, the launch cell prints why
    nothing can be submitted, and the cells after it run without a job."""
    sys.path.insert(0, str(Path(__file__).parent))
    from notebook_runner import run_notebook

    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # the kernel inherits it: no sbatch, squeue, scancel
    params = {**NB_PARAMS, "BACKEND": "slurm", "SUBMIT": True, "SLURM_GPUS_PER_NODE": 0,
              "SLURM_TASKS_PER_NODE": 2, "SLURM_MEM": None}
    nb = run_notebook(repo_root / "notebooks" / NOTEBOOK, params, tmp_path, timeout=600)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    text = "\n".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])
                     if o.get("output_type") == "stream")
    assert ("cannot launch with BACKEND = 'slurm': sbatch, squeue, scancel not found on PATH: backend='slurm' "
            "submits from a Slurm login node") in text
    assert "#SBATCH --ntasks-per-node=2" in text and "#SBATCH --nodes=3" in text  # the script it would submit
    run_dir = tmp_path / "wd" / "cluster_run"
    assert not (run_dir / "job.json").exists() and not list(run_dir.glob("slurm-*.out"))

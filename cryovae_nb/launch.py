"""Launch Horovod training from a notebook cell: locally, with mpirun, or as a Slurm job.

    job = launch("config.yaml", "runs/a", backend="local", np=2)     # horovodrun --gloo here
    job.status(); job.logs(tail=20); job.metrics(); job.wait()
    job = attach("runs/a")                                            # after a kernel restart

    print(launch(cfg, "runs/b", backend="slurm", dry_run=True,
                 slurm=SlurmOptions(nodes=2, gpus_per_node=4, partition="gpu")))

Every launch writes ``run_dir/job.json`` (atomically): backend, job id or pid, the command and
times, which is all a new kernel needs to find the job again. Local and mpirun jobs run under a
small supervisor (``python -m cryovae_nb.launch _supervise``) in their own session: it keeps the
log and records the exit code in ``run_dir/exit.json``, so a job's outcome is known even when the
kernel that started it is gone. Commands are argument lists; values rendered into the Slurm script
are ``shlex.quote``d or, on ``#SBATCH`` lines (which sbatch parses itself, not the shell),
restricted to plain tokens.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from cryovae_nb.atomic import write_json_atomic, write_text_atomic
from cryovae_nb.config import check_fields, from_dict, save_config
from cryovae_nb.errors import ConfigError, LaunchError
from cryovae_nb.training.rundir import RunFolder, claim

BACKENDS = ("local", "mpirun", "slurm")
JOB_FILE = "job.json"
EXIT_FILE = "exit.json"
LOG_FILE = "launch.log"
CONFIG_NAME = "launch_config.json"  # not config.json: the Trainer writes its resolved config there

# Slurm job states -> our five (squeue and sacct print the upper-case names; sacct may add text
# such as "CANCELLED by 1234").
_SLURM_STATES = {
    "pending": {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
                "SUSPENDED", "STOPPED"},
    "running": {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"},
    "completed": {"COMPLETED"},
    "cancelled": {"CANCELLED", "REVOKED"},
    "failed": {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
               "PREEMPTED", "SPECIAL_EXIT"},
}
FINISHED = ("completed", "failed", "cancelled")

# What may appear on an #SBATCH line: sbatch splits these lines itself, so no quoting can help;
# refuse anything with spaces, quotes, ';', '$', newlines.
_SBATCH_TOKEN = re.compile(r"[A-Za-z0-9_.:,=+/@%\-\[\]]+")  # used with fullmatch: "$" lets "x\n" pass


@dataclasses.dataclass
class SlurmOptions:
    """Resources and environment of a Slurm job (one task per GPU).

    launcher="horovodrun" starts the ranks with ``horovodrun --gloo`` over the allocated hosts
    (works with the Gloo-only Horovod that ``scripts/install_horovod.sh`` builds; needs
    password-less ssh between nodes when nodes > 1). launcher="srun" starts them with ``srun``,
    which needs a Horovod built with MPI (HOROVOD_WITH_MPI=1) and usually srun_args=("--mpi=pmix",).
    """

    nodes: int = 1
    gpus_per_node: int = 4
    cpus_per_task: int = 4
    mem: str | None = "64G"          # per node; None leaves the cluster default
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    job_name: str = "cryovae"
    gres: bool = False               # True: "--gres=gpu:N" for clusters without --gpus-per-node
    modules: tuple[str, ...] = ()    # `module load` each
    conda_env: str | None = None     # `conda activate` it
    venv: str | None = None          # `source VENV/bin/activate`
    setup_commands: tuple[str, ...] = ()  # shell lines run verbatim before training (your code)
    extra_sbatch: tuple[str, ...] = ()    # e.g. ("--qos=high", "--exclusive"): one #SBATCH line each
    launcher: str = "horovodrun"
    srun_args: tuple[str, ...] = ()

    def validate(self) -> None:
        check_fields(self)
        for name in ("nodes", "gpus_per_node", "cpus_per_task"):
            v = getattr(self, name)
            # bool is an int: nodes=True would render "--nodes=True"
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "gpus_per_node" else 1):
                raise ConfigError(f"SlurmOptions.{name} must be a positive integer, got {v!r}")
        if self.launcher not in ("horovodrun", "srun"):
            raise ConfigError(f"SlurmOptions.launcher must be 'horovodrun' or 'srun', got {self.launcher!r}")
        for name in ("mem", "time", "partition", "account"):
            v = getattr(self, name)
            if v is not None and not _SBATCH_TOKEN.fullmatch(str(v)):
                raise ConfigError(f"SlurmOptions.{name}={v!r}: not a plain Slurm value (no spaces, quotes or ';')")
        for line in self.extra_sbatch:
            if not all(_SBATCH_TOKEN.fullmatch(tok) for tok in line.split(" ")) or "\n" in line:
                raise ConfigError(f"SlurmOptions.extra_sbatch line {line!r}: only plain '--option=value' tokens")
        for line in self.setup_commands:
            if "\n" in line:
                raise ConfigError(f"SlurmOptions.setup_commands: one command per entry, got {line!r}")

    @property
    def ntasks(self) -> int:
        return self.nodes * max(self.gpus_per_node, 1)


# ---------------------------------------------------------------------------------------------
# Commands


def _find_executable(name: str) -> str | None:
    """Look beside the running interpreter first: a notebook kernel's venv bin is often not on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which(name, path=path)


def training_command(config_path: str | os.PathLike, run_dir: str | os.PathLike, *,
                     python: str | None = None, horovod: bool = True,
                     extra_args: Sequence[str] = ()) -> list[str]:
    """The per-rank command: ``python -m cryovae_nb.training --config C --run-dir D --horovod``."""
    cmd = [python or sys.executable, "-m", "cryovae_nb.training", "--config", os.fspath(config_path),
           "--run-dir", os.fspath(run_dir)]
    if horovod:
        cmd.append("--horovod")
    return cmd + [str(a) for a in extra_args]


def horovodrun_command(np_: int, train_cmd: Sequence[str], *, hosts: str | None = None,
                       horovodrun: str = "horovodrun", gloo_timeout: int = 300,
                       start_timeout: int = 120) -> list[str]:
    # Horovod's defaults (30 s for both) are too short for a busy notebook machine: a rank still
    # importing TensorFlow, or rank 0 writing samples, would time the other out.
    hosts = hosts or f"localhost:{np_}"
    return [horovodrun, "-np", str(np_), "-H", hosts, "--gloo", "--gloo-timeout-seconds", str(gloo_timeout),
            "--start-timeout", str(start_timeout), *train_cmd]


def mpirun_command(np_: int, train_cmd: Sequence[str], *, hosts: str | None = None,
                   hostfile: str | None = None, mpirun: str = "mpirun") -> list[str]:
    # The flags Horovod's docs recommend for Open MPI: no core binding (TF has its own threads),
    # and the environment (venv PATH, CUDA libraries) exported to every rank.
    cmd = [mpirun, "-np", str(np_)]
    if hostfile:
        cmd += ["--hostfile", os.fspath(hostfile)]
    elif hosts:
        cmd += ["-H", hosts]
    cmd += ["-bind-to", "none", "-map-by", "slot"]
    for var in ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH"):
        if var in os.environ:
            cmd += ["-x", var]
    return cmd + list(train_cmd)


def render_slurm_script(train_cmd: Sequence[str], run_dir: str | os.PathLike,
                        opts: SlurmOptions, workdir: str | os.PathLike | None = None) -> str:
    """The sbatch script: #SBATCH resources, environment set-up, then the ranks.

    The ranks run in ``workdir`` (default: the current folder, as for a command typed there), so
    relative paths in the config mean what they meant in the notebook.
    """
    opts.validate()
    run_dir = Path(run_dir).resolve()
    workdir = Path(workdir or os.getcwd()).resolve()
    # job names are shown by squeue; squash anything that is not a plain token
    job_name = re.sub(r"[^A-Za-z0-9_.\-]", "_", opts.job_name) or "cryovae"
    q = shlex.quote
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --nodes={opts.nodes}",
             f"#SBATCH --ntasks-per-node={max(opts.gpus_per_node, 1)}",
             f"#SBATCH --cpus-per-task={opts.cpus_per_task}"]
    if opts.gpus_per_node:
        lines.append(f"#SBATCH --gres=gpu:{opts.gpus_per_node}" if opts.gres
                     else f"#SBATCH --gpus-per-node={opts.gpus_per_node}")
    if opts.mem:
        lines.append(f"#SBATCH --mem={opts.mem}")
    lines.append(f"#SBATCH --time={opts.time}")
    if opts.partition:
        lines.append(f"#SBATCH --partition={opts.partition}")
    if opts.account:
        lines.append(f"#SBATCH --account={opts.account}")
    out = _slurm_output(run_dir)
    if _SBATCH_TOKEN.fullmatch(out):  # otherwise submit() passes --output on sbatch's command line
        lines.append(f"#SBATCH --output={out}")
    lines += [f"#SBATCH {line}" for line in opts.extra_sbatch]
    lines += ["", "set -eo pipefail",
              # exit.json lets the job handle tell success from failure even without sacct
              f"EXIT_RECORD={q(str(run_dir / EXIT_FILE))}",
              "record_exit() { rc=$?; printf '{\"returncode\": %d, \"finished\": %d}\\n' \"$rc\" "
              "\"$(date +%s)\" > \"$EXIT_RECORD\"; }",
              "trap record_exit EXIT",
              f"cd {q(str(workdir))}"]
    lines += [f"module load {q(m)}" for m in opts.modules]
    if opts.conda_env:
        lines += ['eval "$(conda shell.bash hook)"', f"conda activate {q(opts.conda_env)}"]
    if opts.venv:
        lines.append(f"source {q(str(Path(opts.venv) / 'bin' / 'activate'))}")
    lines += list(opts.setup_commands)
    lines += ["export PYTHONUNBUFFERED=1", 'echo "job $SLURM_JOB_ID on $SLURM_JOB_NODELIST"', ""]
    cmd = " ".join(q(str(a)) for a in train_cmd)
    if opts.launcher == "srun":
        srun = " ".join(q(a) for a in ("--kill-on-bad-exit=1", *opts.srun_args))
        lines.append(f"srun {srun} {cmd}")
    else:
        slots = max(opts.gpus_per_node, 1)
        # the horovodrun beside the job's python, so no venv activation is needed to find it
        hvdrun = Path(str(train_cmd[0])).parent / "horovodrun"
        hvdrun = q(str(hvdrun)) if Path(str(train_cmd[0])).is_absolute() and hvdrun.exists() else "horovodrun"
        lines += [f'HOSTS=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/$/:{slots}/" | paste -sd, -)',
                  f'{hvdrun} -np "$SLURM_NTASKS" -H "$HOSTS" --gloo --gloo-timeout-seconds 300 {cmd}']
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Job handles


def _tail(path: Path, n: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))  # logs can be large; the tail is at the end
            data = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    lines = data.splitlines()
    return "\n".join(lines[-n:]) if n else ""


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    exe = _find_executable(cmd[0])
    if exe is None:
        raise LaunchError(f"{what}: '{cmd[0]}' not found on PATH (is this a Slurm login node?)")
    try:
        return subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"{what}: '{' '.join(cmd)}' did not answer within 60 s") from None


class Job:
    """A launched training job. Build with launch() or attach(run_dir)."""

    def __init__(self, run_dir: str | os.PathLike, info: dict[str, Any]):
        self.run_dir = Path(run_dir)
        self.info = info

    backend = property(lambda self: self.info["backend"])
    job_id = property(lambda self: self.info.get("job_id"))
    pid = property(lambda self: self.info.get("pid"))
    command = property(lambda self: self.info.get("command"))

    def __repr__(self) -> str:
        ident = f"job {self.job_id}" if self.backend == "slurm" else f"pid {self.pid}"
        return f"<Job {self.backend} {ident} {self.run_dir} status={self.status()!r}>"

    @classmethod
    def attach(cls, run_dir: str | os.PathLike) -> "Job":
        path = Path(run_dir) / JOB_FILE
        try:
            info = json.loads(path.read_text())
        except FileNotFoundError:
            raise LaunchError(f"{path}: no job was launched in this run directory") from None
        except ValueError as e:
            raise LaunchError(f"{path}: unreadable job record ({e})") from None
        if info.get("backend") not in BACKENDS:
            raise LaunchError(f"{path}: unknown backend {info.get('backend')!r}")
        return cls(run_dir, info)

    # -- state ------------------------------------------------------------------------------

    def _exit_record(self) -> dict | None:
        try:
            rec = json.loads((self.run_dir / EXIT_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return None
        # an exit.json older than this launch belongs to a previous job in the same run_dir
        return rec if rec.get("finished", 0) >= int(self.info.get("started", 0)) else None

    def _process(self):
        import psutil

        try:
            p = psutil.Process(self.pid)
            # pids are reused: only the process with the recorded start time is ours
            if abs(p.create_time() - self.info.get("pid_create_time", 0)) > 1.0:
                return None
            return None if p.status() == psutil.STATUS_ZOMBIE else p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def _refresh(self) -> None:
        """Pick up what another handle on the same job wrote (e.g. its cancel() in a new kernel)."""
        try:
            info = json.loads((self.run_dir / JOB_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return
        if (info.get("pid"), info.get("job_id"), info.get("started")) == (self.pid, self.job_id, self.info.get("started")):
            self.info = info

    def status(self) -> str:
        """'pending', 'running', 'completed', 'failed' or 'cancelled'."""
        self._refresh()
        if self.backend == "slurm":
            return self._slurm_status()
        rec = self._exit_record()
        if rec is not None:
            if self.info.get("cancelled"):
                return "cancelled"
            return "completed" if rec.get("returncode") == 0 else "failed"
        if self._process() is not None:
            return "running"
        return "cancelled" if self.info.get("cancelled") else "failed"  # died without a record

    def _slurm_status(self) -> str:
        r = _run(["squeue", "-h", "-j", str(self.job_id), "-o", "%T"], "job status")
        state = r.stdout.strip().split()[0] if r.returncode == 0 and r.stdout.strip() else ""
        if not state:  # left the queue: ask the accounting database
            if _find_executable("sacct"):
                r = _run(["sacct", "-n", "-P", "-X", "-j", str(self.job_id), "-o", "State"], "job status")
                state = r.stdout.strip().split()[0] if r.stdout.strip() else ""
        if not state:  # no accounting: the script's own exit record
            rec = self._exit_record()
            if rec is None:
                return "failed" if not self.info.get("cancelled") else "cancelled"
            return "completed" if rec.get("returncode") == 0 else "failed"
        state = state.rstrip("+").upper()
        for ours, theirs in _SLURM_STATES.items():
            if state in theirs:
                return ours
        return "failed"

    # -- output -----------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        if self.backend == "slurm":
            return Path(self.info["log"])
        return self.run_dir / LOG_FILE

    def logs(self, tail: int = 50) -> str:
        """The last ``tail`` lines of the job's combined stdout/stderr."""
        return _tail(self.log_path, tail)

    def metrics(self):
        """The run's metrics.jsonl (written by rank 0) as a DataFrame; empty before the first step."""
        import pandas as pd

        return pd.DataFrame(RunFolder(self.run_dir).metrics())  # a torn last line (mid-write) left out

    # -- control ----------------------------------------------------------------------------

    def wait(self, timeout: float | None = None, poll: float = 2.0, *, raise_on_failure: bool = True) -> str:
        """Block until the job finishes; a failed job raises LaunchError carrying its log tail."""
        t0 = time.monotonic()
        while (st := self.status()) not in FINISHED:
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise LaunchError(f"{self.run_dir}: job still {st} after {timeout:.0f} s\n{self.logs(20)}")
            time.sleep(poll)
        if st == "failed" and raise_on_failure:
            raise LaunchError(self.failure_message())
        return st

    def failure_message(self) -> str:
        rec = self._exit_record() or {}
        rc = rec.get("returncode")
        how = f"exit code {rc}" if rc is not None else "no exit record (killed?)"
        ident = f"Slurm job {self.job_id}" if self.backend == "slurm" else f"{self.backend} job (pid {self.pid})"
        return (f"{self.run_dir}: {ident} failed ({how}); last lines of {self.log_path}:\n"
                f"{self.logs(30)}")

    def cancel(self, grace: float = 10.0) -> None:
        """Stop the job: scancel for Slurm; SIGTERM then SIGKILL to the whole local process tree."""
        if self.status() in FINISHED:
            return
        self.info["cancelled"] = True
        self.info["cancelled_at"] = time.time()
        write_json_atomic(self.run_dir / JOB_FILE, self.info)
        if self.backend == "slurm":
            r = _run(["scancel", str(self.job_id)], "cancel")
            if r.returncode != 0:
                raise LaunchError(f"scancel {self.job_id} failed: {r.stderr.strip()}")
            return
        import psutil

        proc = self._process()
        if proc is None:
            return
        # horovodrun starts its ranks in their own sessions: collect the whole tree first
        procs = [proc, *proc.children(recursive=True)]
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=grace)


def attach(run_dir: str | os.PathLike) -> Job:
    """The job last launched in ``run_dir`` (e.g. after a notebook kernel restart)."""
    return Job.attach(run_dir)


# ---------------------------------------------------------------------------------------------
# launch()


def _write_config(config, run_dir: Path) -> Path:
    """A config file the ranks can read: an existing path as is, or a dataclass / dict saved here."""
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path.resolve()
    path = run_dir / CONFIG_NAME
    if dataclasses.is_dataclass(config):
        save_config(config, path)
    elif isinstance(config, dict):
        write_json_atomic(path, config)
    else:
        raise ConfigError(f"config must be a file path, a dataclass or a dict, got {type(config).__name__}")
    return path


def launch(config, run_dir: str | os.PathLike, *, backend: str = "local", np: int = 2,
           hosts: str | None = None, hostfile: str | None = None,
           slurm: SlurmOptions | dict | None = None, python: str | None = None,
           train_args: Sequence[str] = (), env: dict[str, str] | None = None,
           dry_run: bool = False) -> Job | str:
    """Start Horovod training of ``config`` writing into ``run_dir``; return its Job handle.

    backend="local": ``horovodrun -np N -H localhost:N --gloo`` here, in the background.
    backend="mpirun": ``mpirun -np N`` (hosts/hostfile) for clusters without Slurm.
    backend="slurm": render an sbatch script (``slurm`` options), submit it, return the handle.
    dry_run=True returns the script (slurm) or the command line (local/mpirun) without starting.
    ``train_args`` are appended to the training command (e.g. ["--max-steps", "100"]).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    run_dir = Path(run_dir).resolve()
    if not dry_run:
        _refuse_if_running(run_dir)
        claim(run_dir)  # a folder that is not a run of ours is refused before anything is written
    if dry_run and not isinstance(config, (str, os.PathLike)):
        config_path = run_dir / CONFIG_NAME
    else:
        config_path = _write_config(config, run_dir)
    train_cmd = training_command(config_path, run_dir, python=python, extra_args=train_args)

    if backend == "slurm":
        if isinstance(slurm, SlurmOptions):
            opts = slurm
        else:
            opts = from_dict(SlurmOptions, slurm or {})  # unknown keys -> ConfigError naming them
        script = render_slurm_script(train_cmd, run_dir, opts)
        if dry_run:
            return script
        return _submit_slurm(script, run_dir, opts, train_cmd, env)

    if not isinstance(np, int) or np < 1:
        raise ConfigError(f"np must be a positive integer, got {np!r}")
    if backend == "local":
        exe = _find_executable("horovodrun")
        cmd = horovodrun_command(np, train_cmd, hosts=hosts, horovodrun=exe or "horovodrun")
        missing = "horovodrun not found: install Horovod with `make horovod` (scripts/install_horovod.sh)"
    else:
        exe = _find_executable("mpirun")
        cmd = mpirun_command(np, train_cmd, hosts=hosts, hostfile=hostfile, mpirun=exe or "mpirun")
        missing = "mpirun not found on PATH (load your MPI module)"
    if dry_run:
        return shlex.join(cmd)
    if exe is None:
        raise LaunchError(missing)
    return start_background(cmd, run_dir, backend, env)


def _refuse_if_running(run_dir: Path) -> None:
    if (run_dir / JOB_FILE).exists():
        try:
            old = Job.attach(run_dir)
            st = old.status()
        except LaunchError:
            return
        if st in ("pending", "running"):
            raise LaunchError(f"{run_dir}: a job is already {st} here ({old!r}); cancel it or wait")


def start_background(cmd: list[str], run_dir: str | os.PathLike, backend: str = "local",
                     env: dict | None = None) -> Job:
    """Run ``cmd`` under the supervisor in its own session; write job.json; return the handle."""
    import psutil

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)

    started = time.time()
    (run_dir / EXIT_FILE).unlink(missing_ok=True)
    with open(run_dir / LOG_FILE, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
    sup = [sys.executable, "-m", "cryovae_nb.launch", "_supervise", str(run_dir), "--", *cmd]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    # own session: the job outlives the kernel and is not hit by the notebook's Ctrl-C
    proc = subprocess.Popen(sup, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=full_env,
                            cwd=os.getcwd())
    try:
        ctime = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        ctime = 0.0
    info = {"backend": backend, "pid": proc.pid, "pid_create_time": ctime, "command": cmd,
            "started": started, "run_dir": str(run_dir), "cwd": os.getcwd()}
    write_json_atomic(run_dir / JOB_FILE, info)
    job = Job(run_dir, info)
    job._popen = proc  # reaps the supervisor in this kernel (no zombie); unused after a restart
    return job


def _slurm_output(run_dir: Path) -> str:
    """sbatch's --output pattern for the job log: sbatch expands %x, %u, %N ... anywhere in it, so
    a "%" of the run folder's own name is written "%%"; only the file name's %j is a pattern."""
    return str(run_dir).replace("%", "%%") + os.sep + "slurm-%j.out"


def _submit_slurm(script: str, run_dir: Path, opts: SlurmOptions, train_cmd: list[str],
                  env: dict | None) -> Job:
    sbatch = _find_executable("sbatch")
    if sbatch is None:
        raise LaunchError("sbatch not found on PATH: backend='slurm' needs a Slurm login node "
                          "(use dry_run=True to see the script)")
    script_path = run_dir / "job.sbatch"
    write_text_atomic(script_path, script)
    (run_dir / EXIT_FILE).unlink(missing_ok=True)
    started = time.time()
    # --output on the command line too: it wins over the script and copes with any path
    cmd = [sbatch, "--parsable", f"--output={_slurm_output(run_dir)}", f"--chdir={os.getcwd()}", str(script_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env={**os.environ, **(env or {})})
    if r.returncode != 0:
        raise LaunchError(f"sbatch rejected {script_path} (exit {r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    job_id = r.stdout.strip().split(";")[0]  # --parsable: "id" or "id;cluster"
    if not job_id.isdigit():
        raise LaunchError(f"sbatch gave no job id for {script_path}: {r.stdout.strip()!r} {r.stderr.strip()}")
    info = {"backend": "slurm", "job_id": job_id, "command": train_cmd, "sbatch": cmd,
            "script": str(script_path), "log": str(run_dir / f"slurm-{job_id}.out"), "started": started,
            "run_dir": str(run_dir), "cwd": os.getcwd()}
    write_json_atomic(run_dir / JOB_FILE, info)
    return Job(run_dir, info)


# ---------------------------------------------------------------------------------------------
# The supervisor (runs as its own process)


def _supervise(run_dir: Path, cmd: list[str]) -> int:
    """Run ``cmd`` with output appended to launch.log; record its exit code in exit.json."""
    with open(run_dir / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

        def forward(signum, _frame):  # cancel(): pass the signal on to horovodrun / mpirun
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                pass

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        rc = proc.wait()
        log.write(f"=== exit code {rc}\n".encode())
    write_json_atomic(run_dir / EXIT_FILE, {"returncode": rc, "finished": time.time()})
    return rc


def main(argv: list[str] | None = None) -> int:
    """``python -m cryovae_nb.launch _supervise RUN_DIR -- CMD...``: the supervisor's entry (the
    ``cryovae launch`` command is cryovae_nb.commands.launch)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["_supervise"] or len(argv) < 4 or argv[2] != "--":
        print("usage: python -m cryovae_nb.launch _supervise RUN_DIR -- CMD...", file=sys.stderr)
        return 2
    return _supervise(Path(argv[1]), argv[3:])


if __name__ == "__main__":
    sys.exit(main())

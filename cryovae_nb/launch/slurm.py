"""The Slurm backend: SlurmOptions, the sbatch script, and sbatch / squeue / sacct / scancel.

Values rendered into the script are ``shlex.quote``d or, on ``#SBATCH`` lines (which sbatch
parses itself, not the shell), restricted to plain tokens. The script's EXIT trap writes exit.json,
so a job's outcome is known even on a cluster without accounting (sacct).
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from cryovae_nb.atomic import write_text_atomic
from cryovae_nb.config import check_fields, from_dict
from cryovae_nb.errors import ConfigError, LaunchError
from cryovae_nb.launch.commands import find_executable
from cryovae_nb.training.rundir import EXIT_FILE, SBATCH_FILE

if TYPE_CHECKING:  # annotations only: job.py imports the backends
    from cryovae_nb.launch.backends import LaunchRequest
    from cryovae_nb.launch.job import Job

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

# What may appear on an #SBATCH line: sbatch splits these lines itself, so no quoting can help;
# refuse anything with spaces, quotes, ';', '$', newlines.
_SBATCH_TOKEN = re.compile(r"[A-Za-z0-9_.:,=+/@%\-\[\]]+")  # used with fullmatch: "$" lets "x\n" pass


@dataclasses.dataclass
class SlurmOptions:
    """Resources and environment of a Slurm job (one task per GPU, or ``tasks_per_node`` on CPUs).

    launcher="horovodrun" starts the ranks with ``horovodrun --gloo`` over the allocated hosts
    (works with any Horovod build; needs password-less ssh between nodes when nodes > 1).
    launcher="srun" starts them with ``srun``, which needs a Horovod built with MPI (what
    ``scripts/install_horovod.sh`` builds where Open MPI's mpicxx is installed) and usually
    srun_args=("--mpi=pmix",).

    ``stop_before_limit_s`` seconds before the time limit (Slurm may be up to 60 s early) the run
    is asked to stop at its next step, checkpointed (``#SBATCH --signal``; None: not asked, the
    limit's SIGTERM alone). srun ranks get SIGTERM (`cryovae_nb.training.signals`). Under
    horovodrun the batch shell gets SIGUSR1 and writes the run's STOP file instead: horovodrun
    would pass a SIGTERM on but SIGKILL its ranks 5 s later (its fixed grace, measured), and a
    STOP file has no deadline; USR1 rather than TERM, so ``scancel``'s SIGTERM (which every
    process of the job gets) leaves no STOP file to stop the resubmitted job at once.
    """

    nodes: int = 1
    gpus_per_node: int = 4
    tasks_per_node: int | None = None  # ranks per node; None: one per GPU (one on a CPU-only node)
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
    stop_before_limit_s: int | None = 300

    def validate(self) -> None:
        check_fields(self)
        for name in ("nodes", "gpus_per_node", "cpus_per_task", "tasks_per_node"):
            v = getattr(self, name)
            if name == "tasks_per_node" and v is None:
                continue
            # bool is an int: nodes=True would render "--nodes=True"
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "gpus_per_node" else 1):
                raise ConfigError(f"SlurmOptions.{name} must be a positive integer, got {v!r}")
        v = self.stop_before_limit_s
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535):
            raise ConfigError(f"SlurmOptions.stop_before_limit_s must be seconds in 1..65535 (Slurm's "
                              f"--signal) or None, got {v!r}")
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
    def ranks_per_node(self) -> int:
        return self.tasks_per_node if self.tasks_per_node is not None else max(self.gpus_per_node, 1)

    @property
    def ntasks(self) -> int:
        return self.nodes * self.ranks_per_node


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
             f"#SBATCH --ntasks-per-node={opts.ranks_per_node}",
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
    stop_s = opts.stop_before_limit_s
    limit = time_limit_s(opts.time)
    if stop_s is not None and limit is not None and limit < 2 * stop_s:
        # Slurm would signal at once (a limit shorter than the warning): the run would stop at start
        warnings.warn(f"SlurmOptions: time {opts.time} is under twice stop_before_limit_s={stop_s}: no "
                      "stop is asked before the limit (set stop_before_limit_s lower for one)", stacklevel=2)
        stop_s = None
    if stop_s is not None:
        # srun: to the ranks (every job step); horovodrun: to this shell only (B:), see SlurmOptions
        how = "TERM" if opts.launcher == "srun" else "B:USR1"
        lines.append(f"#SBATCH --signal={how}@{stop_s}")
    lines += [f"#SBATCH {line}" for line in opts.extra_sbatch]
    lines += [""]
    if stop_s is not None and opts.launcher != "srun":
        # first, so that no USR1 finds the shell without it (its default action would end the job)
        lines += [f"STOP_FILE={q(str(run_dir / 'STOP'))}",
                  "ask_to_stop() { echo \"job $SLURM_JOB_ID: time limit near: asking the run to stop at "
                  "its next step ($STOP_FILE)\"; touch \"$STOP_FILE\"; }",
                  "trap ask_to_stop USR1"]
    lines += ["set -eo pipefail",
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
        slots = opts.ranks_per_node
        # the horovodrun beside the job's python, so no venv activation is needed to find it
        hvdrun = Path(str(train_cmd[0])).parent / "horovodrun"
        hvdrun = q(str(hvdrun)) if Path(str(train_cmd[0])).is_absolute() and hvdrun.exists() else "horovodrun"
        lines += [f'HOSTS=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/$/:{slots}/" | paste -sd, -)']
        run = f'{hvdrun} -np "$SLURM_NTASKS" -H "$HOSTS" --gloo --gloo-timeout-seconds 300 {cmd}'
        if stop_s is None:
            lines.append(run)
        else:
            # in the background: bash runs a trap only once its foreground command has ended;
            # `wait` returns early for each trapped signal, so wait until horovodrun has ended
            lines += [f"{run} &", "RANKS=$!",
                      'while wait "$RANKS"; rc=$?; kill -0 "$RANKS" 2>/dev/null; do :; done',
                      'exit "$rc"']
    return "\n".join(lines) + "\n"


def time_limit_s(value: str) -> int | None:
    """Seconds of a Slurm time limit (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``);
    None for anything else (``UNLIMITED``, ``infinite``: no end to warn before)."""
    days, _, rest = value.rpartition("-")
    parts = rest.split(":")
    if not all(x.isdigit() for x in parts) or (days and not days.isdigit()) or len(parts) > 3:
        return None
    nums = [int(x) for x in parts]
    if days:   # D-H, D-H:M, D-H:M:S
        h, m, sec = (nums + [0, 0])[:3]
        return ((int(days) * 24 + h) * 60 + m) * 60 + sec
    if len(nums) == 3:
        return (nums[0] * 60 + nums[1]) * 60 + nums[2]
    return nums[0] * 60 + (nums[1] if len(nums) == 2 else 0)   # M or M:S


def _slurm_output(run_dir: Path) -> str:
    """sbatch's --output pattern for the job log: sbatch expands %x, %u, %N ... anywhere in it, so
    a "%" of the run folder's own name is written "%%"; only the file name's %j is a pattern."""
    return str(run_dir).replace("%", "%%") + os.sep + "slurm-%j.out"


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    exe = find_executable(cmd[0])
    if exe is None:
        raise LaunchError(f"{what}: '{cmd[0]}' not found on PATH (is this a Slurm login node?)")
    try:
        return subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"{what}: '{' '.join(cmd)}' did not answer within 60 s") from None


def _submit(script: str, run_dir: Path, train_cmd: list[str], env: dict | None) -> dict[str, Any]:
    """sbatch the script (saved as run_dir/job.sbatch); return the job's record."""
    sbatch = find_executable("sbatch")
    if sbatch is None:
        raise LaunchError("sbatch not found on PATH: backend='slurm' needs a Slurm login node "
                          "(use dry_run=True to see the script)")
    script_path = run_dir / SBATCH_FILE
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
    return {"job_id": job_id, "command": train_cmd, "sbatch": cmd, "script": str(script_path),
            "log": str(run_dir / f"slurm-{job_id}.out"), "started": started,
            "run_dir": str(run_dir), "cwd": os.getcwd()}


class SlurmBackend:
    """An sbatch job; its state from squeue, then sacct, then the script's exit record."""

    def _script(self, train_cmd: list[str], run_dir: Path, request: LaunchRequest) -> str:
        opts = request.slurm
        if not isinstance(opts, SlurmOptions):
            opts = from_dict(SlurmOptions, opts or {})  # unknown keys -> ConfigError naming them
        return render_slurm_script(train_cmd, run_dir, opts)

    def dry_run(self, train_cmd: list[str], run_dir: Path, request: LaunchRequest) -> str:
        return self._script(train_cmd, run_dir, request)

    def missing(self) -> str | None:
        absent = [c for c in ("sbatch", "squeue", "scancel") if find_executable(c) is None]
        if absent:
            return (f"{', '.join(absent)} not found on PATH: backend='slurm' submits from a Slurm login node "
                    "(SUBMIT = False / dry_run=True shows the script)")
        return None

    def start(self, train_cmd: list[str], run_dir: Path, request: LaunchRequest) -> dict[str, Any]:
        return _submit(self._script(train_cmd, run_dir, request), run_dir, train_cmd, request.env)

    def status(self, job: Job) -> str:
        r = _run(["squeue", "-h", "-j", str(job.job_id), "-o", "%T"], "job status")
        state = r.stdout.strip().split()[0] if r.returncode == 0 and r.stdout.strip() else ""
        if not state:  # left the queue: ask the accounting database
            if find_executable("sacct"):
                r = _run(["sacct", "-n", "-P", "-X", "-j", str(job.job_id), "-o", "State"], "job status")
                state = r.stdout.strip().split()[0] if r.stdout.strip() else ""
        if not state:  # no accounting: the script's own exit record
            rec = job.exit_record()
            cancelled = job.info.get("cancelled")
            # scancel's SIGTERM can end the script with any code (horovodrun exits 0 on it): a job
            # cancelled before its exit record was written was cancelled, whatever the code says
            if rec is None or (cancelled and rec.get("finished", 0) >= int(job.info.get("cancelled_at", 0))):
                return "cancelled" if cancelled else "failed"
            return "completed" if rec.get("returncode") == 0 else "failed"
        state = state.rstrip("+").upper()
        for ours, theirs in _SLURM_STATES.items():
            if state in theirs:
                return ours
        return "failed"

    def cancel(self, job: Job, grace: float) -> None:
        r = _run(["scancel", str(job.job_id)], "cancel")
        if r.returncode != 0:
            raise LaunchError(f"scancel {job.job_id} failed: {r.stderr.strip()}")

    def log_path(self, job: Job) -> Path:
        return Path(job.info["log"])

    def ident(self, job: Job) -> str:
        return f"job {job.job_id}"

    def describe(self, job: Job) -> str:
        return f"Slurm job {job.job_id}"

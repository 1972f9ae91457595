"""Launcher backends: what a backend must do, the two that run on this machine, and the registry.

A backend starts the per-rank training command somewhere (this machine, mpirun's hosts, a
scheduler) and later answers for the job it started: its state, its log, how to stop it.
Everything else (the run folder, the config file, job.json, waiting, logs, metrics) is the same
for every backend and lives in job.py. A backend keeps no state: what it needs about a started
job is in the record its ``start`` returned, which job.json keeps for a new kernel.

Adding one (PBS, LSF, Kubernetes): a class with the methods of ``Backend`` in its own module
(slurm.py is the example), and an entry in ``BACKENDS``; ``launch(..., backend=NAME)`` and
``attach`` then find it.
"""
from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryovae_nb.errors import ConfigError, LaunchError
from cryovae_nb.launch.commands import find_executable, horovodrun_command, mpirun_command
from cryovae_nb.training.rundir import LAUNCH_LOG_FILE
from cryovae_nb.launch.slurm import SlurmBackend, SlurmOptions
from cryovae_nb.launch.supervise import start_supervised, stop_process_tree, supervisor_process

if TYPE_CHECKING:  # annotations only: job.py imports this module for the registry
    from cryovae_nb.launch.job import Job


@dataclasses.dataclass(frozen=True)
class LaunchRequest:
    """What launch() was asked for beyond the training command; each backend reads its part."""

    np: int = 2                                    # processes (local, mpirun)
    hosts: str | None = None                       # horovodrun / mpirun host list
    hostfile: str | None = None                    # mpirun
    slurm: SlurmOptions | dict | None = None       # slurm
    env: dict[str, str] | None = None              # added to the job's environment


class Backend(Protocol):
    """What a launcher backend does; ``job`` is the Job handle built from start()'s record."""

    def dry_run(self, train_cmd: list[str], run_dir: Path, request: LaunchRequest) -> str:
        """What start() would run (a command line, a script), starting nothing."""

    def start(self, train_cmd: list[str], run_dir: Path, request: LaunchRequest) -> dict[str, Any]:
        """Start the job; return its record (JSON-serialisable, with "started": time.time())."""

    def status(self, job: Job) -> str:
        """'pending', 'running', 'completed', 'failed' or 'cancelled'."""

    def cancel(self, job: Job, grace: float) -> None:
        """Stop the job (job.json already says it was cancelled)."""

    def log_path(self, job: Job) -> Path:
        """The file with the job's combined stdout/stderr."""

    def ident(self, job: Job) -> str:
        """How the job is known where it runs, e.g. 'pid 4242' or 'job 1234'."""

    def describe(self, job: Job) -> str:
        """The job in a message, e.g. 'local job (pid 4242)' or 'Slurm job 1234'."""

    def missing(self) -> str | None:
        """What this machine lacks for start() (a launcher not installed), in one line; None: ready."""


def check_backend(backend: str) -> str | None:
    """Why ``launch(..., backend=backend)`` cannot start here (one line), or None; starts nothing.

    A notebook asks before launching, so a missing horovodrun / mpirun / sbatch is a sentence,
    not a traceback.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
    return BACKENDS[backend].missing()


class _SupervisedBackend:
    """A launcher process (horovodrun, mpirun) on this machine, under the supervisor."""

    launcher = ""     # the executable started
    not_found = ""    # the error when it is not installed

    def missing(self) -> str | None:
        return None if find_executable(self.launcher) else self.not_found

    def launcher_command(self, train_cmd: list[str], request: LaunchRequest) -> tuple[list[str], str | None]:
        """The launcher's command line, and the launcher's path (None: not found)."""
        raise NotImplementedError

    def _checked_command(self, train_cmd: list[str], request: LaunchRequest) -> tuple[list[str], str | None]:
        np = request.np
        if not isinstance(np, int) or np < 1:
            raise ConfigError(f"np must be a positive integer, got {np!r}")
        return self.launcher_command(train_cmd, request)

    def dry_run(self, train_cmd: list[str], run_dir: Path, request: LaunchRequest) -> str:
        return shlex.join(self._checked_command(train_cmd, request)[0])

    def start(self, train_cmd: list[str], run_dir: Path, request: LaunchRequest) -> dict[str, Any]:
        cmd, exe = self._checked_command(train_cmd, request)
        if exe is None:
            raise LaunchError(self.not_found)
        return start_supervised(cmd, run_dir, request.env)

    def status(self, job: Job) -> str:
        rec = job.exit_record()
        if rec is not None:
            if job.info.get("cancelled"):
                return "cancelled"
            return "completed" if rec.get("returncode") == 0 else "failed"
        if supervisor_process(job.info) is not None:
            return "running"
        return "cancelled" if job.info.get("cancelled") else "failed"  # died without a record

    def cancel(self, job: Job, grace: float) -> None:
        proc = supervisor_process(job.info)
        if proc is not None:
            stop_process_tree(proc, grace)

    def log_path(self, job: Job) -> Path:
        return job.run_dir / LAUNCH_LOG_FILE

    def ident(self, job: Job) -> str:
        return f"pid {job.pid}"

    def describe(self, job: Job) -> str:
        return f"{job.backend} job (pid {job.pid})"


class LocalBackend(_SupervisedBackend):
    """``horovodrun -np N -H localhost:N --gloo`` here, in the background."""

    launcher = "horovodrun"
    not_found = "horovodrun not found: install Horovod with `make horovod` (scripts/install_horovod.sh)"

    def launcher_command(self, train_cmd: list[str], request: LaunchRequest) -> tuple[list[str], str | None]:
        exe = find_executable("horovodrun")
        return horovodrun_command(request.np, train_cmd, hosts=request.hosts,
                                  horovodrun=exe or "horovodrun"), exe


class MpirunBackend(_SupervisedBackend):
    """``mpirun -np N`` (hosts / hostfile) for clusters without Slurm."""

    launcher = "mpirun"
    not_found = ("mpirun not found on PATH: load your MPI module, or install Open MPI (apt-get install openmpi-bin "
                 "libopenmpi-dev) and rebuild Horovod with MPI (`make horovod`)")

    def launcher_command(self, train_cmd: list[str], request: LaunchRequest) -> tuple[list[str], str | None]:
        exe = find_executable("mpirun")
        return mpirun_command(request.np, train_cmd, hosts=request.hosts, hostfile=request.hostfile,
                              mpirun=exe or "mpirun"), exe


# the names launch(backend=...), `cryovae launch --backend` and job.json use
BACKENDS: dict[str, Backend] = {"local": LocalBackend(), "mpirun": MpirunBackend(), "slurm": SlurmBackend()}

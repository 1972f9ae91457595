"""launch(): put the config where the ranks can read it, build the per-rank training command, hand
it to the chosen backend, record the job in job.json. start_background() does the same for any
command (under the supervisor, as the local backend does).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

from cryovae_nb.atomic import write_json_atomic
from cryovae_nb.config import save_config
from cryovae_nb.errors import ConfigError, LaunchError
from cryovae_nb.launch.backends import BACKENDS, LaunchRequest
from cryovae_nb.launch.commands import training_command
from cryovae_nb.training.rundir import JOB_FILE, LAUNCH_CONFIG_FILE
from cryovae_nb.launch.job import Job
from cryovae_nb.launch.slurm import SlurmOptions
from cryovae_nb.launch.supervise import start_supervised
from cryovae_nb.training.rundir import claim


def _write_config(config, run_dir: Path) -> Path:
    """A config file the ranks can read: an existing path as is, or a dataclass / dict saved here."""
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path.resolve()
    path = run_dir / LAUNCH_CONFIG_FILE
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
    Other backends: see backends.py.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
    run_dir = Path(run_dir).resolve()
    if not dry_run:
        _refuse_if_running(run_dir)
        claim(run_dir)  # a folder that is not a run of ours is refused before anything is written
    if dry_run and not isinstance(config, (str, os.PathLike)):
        config_path = run_dir / LAUNCH_CONFIG_FILE
    else:
        config_path = _write_config(config, run_dir)
    train_cmd = training_command(config_path, run_dir, python=python, extra_args=train_args)
    request = LaunchRequest(np=np, hosts=hosts, hostfile=hostfile, slurm=slurm, env=env)
    if dry_run:
        return BACKENDS[backend].dry_run(train_cmd, run_dir, request)
    return _record(run_dir, backend, BACKENDS[backend].start(train_cmd, run_dir, request))


def _refuse_if_running(run_dir: Path) -> None:
    if (run_dir / JOB_FILE).exists():
        try:
            old = Job.attach(run_dir)
            st = old.status()
        except LaunchError:
            return
        if st in ("pending", "running"):
            raise LaunchError(f"{run_dir}: a job is already {st} here ({old!r}); cancel it or wait")


def _record(run_dir: Path, backend: str, record: dict[str, Any]) -> Job:
    """Write the started job's record to job.json (atomically: a new kernel reads it); its handle."""
    info = {"backend": backend, **record}
    write_json_atomic(run_dir / JOB_FILE, info)
    return Job(run_dir, info)


def start_background(cmd: list[str], run_dir: str | os.PathLike, backend: str = "local",
                     env: dict | None = None) -> Job:
    """Run ``cmd`` under the supervisor in its own session; write job.json; return the handle."""
    run_dir = Path(run_dir).resolve()
    return _record(run_dir, backend, start_supervised(cmd, run_dir, env))

"""The command lines a launch runs: the per-rank training command, and horovodrun / mpirun over it.

Every command is an argument list; nothing here goes through a shell.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Sequence


def find_executable(name: str) -> str | None:
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
    if os.name == "posix" and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")  # Open MPI refuses root (containers, cloud images) unless told
    for var in ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH"):
        if var in os.environ:
            cmd += ["-x", var]
    return cmd + list(train_cmd)

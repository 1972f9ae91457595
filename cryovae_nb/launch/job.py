"""The handle on a launched job: its state, log, metrics, waiting and cancelling, and attach().

A Job is built from the record in ``run_dir/job.json`` (written by launch()), so a new kernel
gets the same handle back with ``attach(run_dir)``. What depends on where the job runs (its state,
its log file, how to stop it) is asked of its backend in ``BACKENDS``.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from cryovae_nb.atomic import write_json_atomic
from cryovae_nb.errors import LaunchError
from cryovae_nb.launch.backends import BACKENDS, Backend
from cryovae_nb.training.rundir import EXIT_FILE, JOB_FILE
from cryovae_nb.training.rundir import RunFolder

FINISHED = ("completed", "failed", "cancelled")


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


class Job:
    """A launched training job. Build with launch() or attach(run_dir)."""

    def __init__(self, run_dir: str | os.PathLike, info: dict[str, Any]):
        self.run_dir = Path(run_dir)
        self.info = info

    backend = property(lambda self: self.info["backend"])
    job_id = property(lambda self: self.info.get("job_id"))
    pid = property(lambda self: self.info.get("pid"))
    command = property(lambda self: self.info.get("command"))

    @property
    def _backend(self) -> Backend:
        return BACKENDS[self.backend]

    def describe(self) -> str:
        """The job in a message: 'local job (pid 4242)', 'Slurm job 1234'."""
        return self._backend.describe(self)

    def __repr__(self) -> str:
        return f"<Job {self.backend} {self._backend.ident(self)} {self.run_dir} status={self.status()!r}>"

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

    def exit_record(self) -> dict | None:
        """This launch's exit.json (its exit code and end time), or None while it has none."""
        try:
            rec = json.loads((self.run_dir / EXIT_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return None
        # an exit.json older than this launch belongs to a previous job in the same run_dir
        return rec if rec.get("finished", 0) >= int(self.info.get("started", 0)) else None

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
        return self._backend.status(self)

    # -- output -----------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self._backend.log_path(self)

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
        rec = self.exit_record() or {}
        rc = rec.get("returncode")
        how = f"exit code {rc}" if rc is not None else "no exit record (killed?)"
        return (f"{self.run_dir}: {self.describe()} failed ({how}); last lines of {self.log_path}:\n"
                f"{self.logs(30)}")

    def cancel(self, grace: float = 10.0) -> None:
        """Stop the job: scancel for Slurm; SIGTERM then SIGKILL to the whole local process tree."""
        if self.status() in FINISHED:
            return
        self.info["cancelled"] = True
        self.info["cancelled_at"] = time.time()
        write_json_atomic(self.run_dir / JOB_FILE, self.info)
        self._backend.cancel(self, grace)


def attach(run_dir: str | os.PathLike) -> Job:
    """The job last launched in ``run_dir`` (e.g. after a notebook kernel restart)."""
    return Job.attach(run_dir)

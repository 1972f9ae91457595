"""The background supervisor that local and mpirun jobs run under, and its process handling.

``start_supervised`` starts ``python -m cryovae_nb.launch _supervise RUN_DIR -- CMD...`` in its own
session: the job outlives the kernel and is not hit by the notebook's Ctrl-C. The supervisor
(``_supervise``) appends the command's output to launch.log and records its exit code in
exit.json. ``supervisor_process`` finds it again from a job record, ``stop_process_tree`` stops it
with everything it started.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from cryovae_nb.atomic import write_json_atomic
from cryovae_nb.training.rundir import EXIT_FILE, LAUNCH_LOG_FILE


def start_supervised(cmd: list[str], run_dir: str | os.PathLike, env: dict | None = None) -> dict[str, Any]:
    """Run ``cmd`` under the supervisor in its own session; return the job's record (pid, times)."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)

    started = time.time()
    (run_dir / EXIT_FILE).unlink(missing_ok=True)
    with open(run_dir / LAUNCH_LOG_FILE, "ab") as log:
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
    # reaps the supervisor in this kernel when it ends (no zombie); the job does not depend on it
    threading.Thread(target=proc.wait, name=f"reap supervisor {proc.pid}", daemon=True).start()
    return {"pid": proc.pid, "pid_create_time": ctime, "command": cmd,
            "started": started, "run_dir": str(run_dir), "cwd": os.getcwd()}


def supervisor_process(info: dict[str, Any]) -> psutil.Process | None:
    """The running supervisor of the job ``info`` records, or None once it has ended."""
    try:
        p = psutil.Process(info.get("pid"))
        # pids are reused: only the process with the recorded start time is ours
        if abs(p.create_time() - info.get("pid_create_time", 0)) > 1.0:
            return None
        return None if p.status() == psutil.STATUS_ZOMBIE else p
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def stop_process_tree(proc: psutil.Process, grace: float) -> None:
    """SIGTERM ``proc`` and all its descendants, then SIGKILL what is left after ``grace`` s."""
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


def _supervise(run_dir: Path, cmd: list[str]) -> int:
    """Run ``cmd`` with output appended to launch.log; record its exit code in exit.json."""
    with open(run_dir / LAUNCH_LOG_FILE, "ab") as log:
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

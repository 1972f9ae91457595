"""A real one-node Slurm (Debian's slurm-wlm, 22.05) on this machine, for the tests: munged,
slurmctld and slurmd started as root in the background, everything in one temporary folder.

    with LocalSlurm(tmp_dir) as slurm:         # or start() / stop()
        env = slurm.env                        # SLURM_CONF: sbatch, squeue, scancel use this cluster
        ...

Nothing under /etc is touched: the munge key, its socket, slurm.conf, the state and spool folders
and the daemons' logs all live in the folder given; the daemons listen on free ports. No cgroups
(processes are tracked by their parent chain, proctrack/linuxproc), no accounting (sacct has no
database: a job that left the queue is known by the script's exit record). ``unavailable()`` says
why this machine cannot run it (not root, binaries missing), for a skip reason.

``python tests/local_slurm.py DIR`` starts one and keeps it until Ctrl-C (to try the notebook).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol")
INSTALL = "apt-get install -y slurm-wlm munge (make cluster-tools)"


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def unavailable() -> str | None:
    """Why a local Slurm cannot be started here (None: it can)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "a local Slurm runs its daemons as root; this test needs root (CI runs as root)"
    missing = [n for n in DAEMONS + CLIENTS if _which(n) is None]
    if missing:
        return f"Slurm / munge binaries missing ({', '.join(missing)}): {INSTALL}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """One node ``localhost`` with ``cpus`` CPUs in partition ``debug``; ``env`` points clients at it."""

    def __init__(self, folder: str | os.PathLike, cpus: int = 2, memory_mb: int = 4000):
        self.dir = Path(folder).resolve()
        self.cpus, self.memory_mb = cpus, memory_mb
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.dir / "etc" / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    # -- set-up ---------------------------------------------------------------------------------

    def _write_files(self) -> None:
        for sub in ("etc", "munge", "state", "spool", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        # munged refuses a key or folders that others can read or write
        os.chmod(self.dir / "munge", 0o700)
        key = self.dir / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        ctld_port, d_port = _free_port(), _free_port()
        log = self.dir / "log"
        self.conf.write_text("\n".join([
            "ClusterName=cryovaetest",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={d_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"AuthInfo=socket={self.munge_socket}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"StateSaveLocation={self.dir / 'state'}",
            f"SlurmdSpoolDir={self.dir / 'spool'}",
            f"SlurmctldPidFile={self.dir / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.dir / 'slurmd.pid'}",
            f"SlurmctldLogFile={log / 'slurmctld.log'}",
            f"SlurmdLogFile={log / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # no cgroups in a container: processes tracked by their parent chain, nothing confined
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "MpiDefault=none",
            "ReturnToService=2",
            # quick turn-around for tests: a cancelled job's processes get SIGKILL 5 s after SIGTERM
            "KillWait=5",
            "MinJobAge=300",
            "SchedulerParameters=sched_interval=1",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.dir / "log" / f"{name}.out", "ab")
        # a session of its own: the test's Ctrl-C or its process group does not reach the daemons
        self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, **self.env}, start_new_session=True)
        out.close()

    def start(self, timeout: float = 120.0) -> "LocalSlurm":
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        self._write_files()
        m = self.dir / "munge"
        self._spawn("munged", [_which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                               f"--log-file={self.dir / 'log' / 'munged.log'}", f"--seed-file={m / 'munge.seed'}"])
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged's socket")
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self._run(["scontrol", "ping"]).stdout.count("UP") >= 1, timeout, "slurmctld to answer")
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)])
        self._wait(self.node_idle, timeout, "node localhost to be idle")
        return self

    def node_state(self) -> str:
        r = self._run(["sinfo", "-h", "-n", "localhost", "-o", "%T"])
        return r.stdout.strip().lower() if r.returncode == 0 else ""

    def node_idle(self) -> bool:
        return self.node_state().rstrip("*") == "idle"

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([_which(cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=30,
                              env={**os.environ, **self.env})

    def _wait(self, predicate, timeout: float, what: str) -> None:
        # only a hang ends here: each wait returns as soon as its condition holds
        t0 = time.monotonic()
        while not predicate():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() - t0 > timeout:
                self.stop()
                why = f"{', '.join(dead)} exited" if dead else f"timed out after {timeout:.0f} s"
                raise RuntimeError(f"local Slurm: waiting for {what}: {why}\n{self.logs()}")
            time.sleep(0.2)

    def logs(self, lines: int = 15) -> str:
        out = []
        for path in sorted((self.dir / "log").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    # -- tear-down ------------------------------------------------------------------------------

    def stop(self, grace: float = 10.0) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (in that order)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self._run(["scancel", "--full", "--partition=debug"])
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(grace)

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "local_slurm")
    with LocalSlurm(folder) as slurm:
        print(f"Slurm up: export SLURM_CONF={slurm.conf}   (Ctrl-C stops it)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass

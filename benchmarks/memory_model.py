"""The memory model (`cryovae_nb.training.memory`) against the measured peak RSS of real runs.

For each config (box, batch size, known or learned poses) it simulates a small stack, runs
``cryovae train`` with that config as a subprocess (a few steps, one held-out evaluation and a
checkpoint: every phase of a run) and reads the child's peak RSS from ``os.wait4``; then prints
the estimate (with its parts), the measured peak, their ratio and whether it is within 25 %.

    .venv/bin/python benchmarks/memory_model.py [--configs 24:64:known,32:120:learned,...] [--steps 4]

A fourth field names the pose encoder (``40:120:learned:conv``: ``PoseConfig.encoder``; default
the dense one).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_CONFIGS = "24:120:known,24:120:learned,32:64:known,32:120:learned,40:120:known,40:240:known,40:120:learned"
MIB = 2**20


def measured_peak(cmd: list[str], env: dict) -> tuple[int, int]:
    """(exit status, peak RSS in bytes) of one child process."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return proc.returncode, usage.ru_maxrss * 1024  # kiB on Linux


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated BOX:BATCH:POSE_MODE[:POSE_ENCODER]")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--particles", type=int, default=800)
    args = ap.parse_args(argv)

    from cryovae_nb.config import save_config
    from cryovae_nb.model import ModelConfig
    from cryovae_nb.synthetic import SimulationConfig, simulate
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.memory import estimate_peak_memory

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = {}
        for spec in args.configs.split(","):
            box, batch, pose, *encoder = spec.split(":")
            box, batch = int(box), int(batch)
            if box not in data:
                ds = simulate(SimulationConfig(box=box, n_particles=args.particles, snr=1.0, seed=0),
                              tmp / f"sim{box}", progress=False)
                data[box] = ds.star
            cfg = TrainConfig(data=str(data[box]), run_dir=str(tmp / f"run_{spec.replace(':', '_')}"),
                              model=ModelConfig().with_options(box=box, pose_mode=pose,
                                                               pose_encoder=(encoder or ["dense"])[0]),
                              batch_size=batch,
                              max_steps=args.steps, log_every=max(1, args.steps // 2),
                              checkpoint_every=args.steps, sample_every=args.steps)
            path = tmp / f"{spec.replace(':', '_')}.json"
            save_config(cfg, path)
            est = estimate_peak_memory(cfg.model, cfg)
            _, peak = measured_peak([sys.executable, "-m", "cryovae_nb.cli", "train", "--config", str(path),
                                     "--no-progress"], env)
            ratio = est.total / peak
            rows.append((spec, est, peak, ratio))
            print(f"{spec:16s} estimate {est.total / MIB:7.0f} MiB  measured {peak / MIB:7.0f} MiB  "
                  f"ratio {ratio:5.2f}  {'within' if abs(ratio - 1) <= 0.25 else 'OUTSIDE'} 25 %   "
                  f"({est.describe()})", flush=True)
    inside = sum(abs(r - 1) <= 0.25 for *_, r in rows)
    print(f"\n{inside} of {len(rows)} configs within 25 % of the measured peak RSS")
    print(json.dumps([{"config": s, "estimate_mib": round(e.total / MIB), "measured_mib": round(p / MIB),
                       "ratio": round(r, 3)} for s, e, p, r in rows]))


if __name__ == "__main__":
    main()

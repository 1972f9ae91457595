"""Where the time of `cryovae train` goes: the step with and without XLA, op determinism, the
held-out evaluation, logging and checkpoints, measured in one process on the Trainer itself.

Two Trainers (XLA on, off) on a simulated stack, their phases timed in alternating rounds (so
both see the same machine load), then the share of each phase in one `log_every` interval of
TrainConfig's defaults (50 steps, one evaluation of 480 held-out images, one log record; one
checkpoint per 1,000 steps).

    .venv/bin/python benchmarks/train_profile.py [--box 40 --batch 120 --pose-mode known --rounds 3]
        [--pose-mode learned --pose-search-scoring fourier]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--box", type=int, default=40)
    ap.add_argument("--batch", type=int, default=120)
    ap.add_argument("--pose-mode", default="known", choices=["learned", "known"])
    ap.add_argument("--pose-search-scoring", choices=["real_space", "fourier"], default=None,
                    help="learned poses: how the search scores candidates (ModelConfig.pose.search_scoring)")
    ap.add_argument("--steps", type=int, default=5, help="train steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    from cryovae_nb.model import ModelConfig
    from cryovae_nb.model.losses import LOSS_KEYS
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
    from cryovae_nb.synthetic import SimulationConfig, simulate
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ds = simulate(SimulationConfig(box=args.box, n_particles=6000, snr=1.0, seed=0), tmp / "sim", progress=False)
        preprocess_stack(ds.star, tmp / "pre" / "p", PreprocessConfig(), progress=False)
        base = TrainConfig(data=str(tmp / "pre" / "p.star"), run_dir="", batch_size=args.batch,
                           model=ModelConfig().with_options(box=args.box, pose_mode=args.pose_mode, **(
                               {"pose_search_scoring": args.pose_search_scoring} if args.pose_search_scoring else {})))
        trainers = {jit: Trainer(dataclasses.replace(base, run_dir=str(tmp / f"run{jit}"), jit=jit), progress=False)
                    for jit in (True, False)}
        times = {(jit, phase): [] for jit in trainers for phase in ("step", "eval", "log", "checkpoint")}

        def timed(fn):
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

        for r in range(args.rounds + 1):  # round 0 compiles, not counted
            for jit, tr in trainers.items():
                def steps():
                    for _ in range(args.steps):
                        out = tr._train_step(tr._fetch(tr.step), tr._seed(tr.step))
                        {k: float(out[k]) for k in LOSS_KEYS}
                        tr.step += 1
                phases = {"step": lambda: steps(), "eval": tr.evaluate,
                          "log": lambda: tr._log("train", {k: 0.0 for k in LOSS_KEYS}, None),
                          "checkpoint": tr.save_checkpoint}
                for phase, fn in phases.items():
                    t = timed(fn)
                    if r:
                        times[(jit, phase)].append(t / (args.steps if phase == "step" else 1))

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"box {args.box}, batch {args.batch}, {args.pose_mode} poses, {args.rounds} rounds (medians):")
    for jit in (True, False):
        step, ev, log, ck = (med[(jit, p)] for p in ("step", "eval", "log", "checkpoint"))
        interval = 50 * step + ev + log + ck / 20  # TrainConfig defaults: log_every 50, checkpoint_every 1000
        print(f"  XLA {'on ' if jit else 'off'}: step {step * 1e3:6.0f} ms ({args.batch / step:6.1f} images/s), "
              f"evaluation {ev:5.2f} s, log {log * 1e3:4.0f} ms, checkpoint {ck:5.2f} s; per 50 steps: "
              f"steps {50 * step / interval:5.1%}, evaluation {ev / interval:5.1%}, log {log / interval:5.1%}, "
              f"checkpoints {ck / 20 / interval:5.1%}; {50 * args.batch / interval:6.1f} images/s overall")
    print(f"  XLA on / off, step alone: {med[(False, 'step')] / med[(True, 'step')]:.2f}x")


if __name__ == "__main__":
    main()

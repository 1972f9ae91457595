"""``cryovae train`` (also what each rank of ``python -m cryovae_nb.training`` runs): train the VAE
on a preprocessed stack, resuming the run folder's checkpoint."""
from __future__ import annotations

import argparse
import signal
import sys

from cryovae_nb.argcheck import nonnegative_int, output_dir, positive_float, positive_int
from cryovae_nb.config import from_dict, load_config, to_dict
from cryovae_nb.training.config import PRECISIONS, TrainConfig
from cryovae_nb.training.signals import StopOnSignals

# the stop reasons StopOnSignals gives, and their signal numbers (for the exit status)
STOP_SIGNALS = {"SIGTERM": int(signal.SIGTERM), "SIGINT": int(signal.SIGINT)}

HELP = "train the VAE on a preprocessed stack (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TrainConfig as .json or .yaml (options below override it)")
    parser.add_argument("--data", help="preprocessed particles (.star or .mrcs)")
    parser.add_argument("--datadir", help="folder the STAR file's image paths are relative to")
    parser.add_argument("--run-dir", help="output folder (resumed if it holds a checkpoint)")
    parser.add_argument("--max-steps", type=positive_int)
    parser.add_argument("--max-time", type=positive_float, dest="max_time_s", help="wall-clock budget, seconds")
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--learning-rate", type=positive_float)
    parser.add_argument("--pose-mode", choices=["learned", "known"])
    parser.add_argument("--seed", type=nonnegative_int)
    parser.add_argument("--restart", action="store_true",
                        help="start a new run; the run folder's previous run is moved to previous-N")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="the dense layers' compute dtype (default auto: mixed bfloat16 on GPUs of "
                             "compute capability >= 8.0, mixed float16 on 7.x, float32 on a CPU)")
    parser.add_argument("--no-memory-check", action="store_true",
                        help="start even when the estimated peak memory exceeds the device's")
    # data-parallel training (cryovae_nb.training.horovod); implied when started by horovodrun/mpirun
    parser.add_argument("--horovod", action="store_true", help="one Horovod rank (one process without Horovod)")
    parser.add_argument("--scale-lr", action="store_true", help="with --horovod: learning rate x number of ranks")


def run(args: argparse.Namespace) -> int:
    data = to_dict(load_config(TrainConfig, args.config)) if args.config else {}
    for name in ("data", "datadir", "run_dir", "max_steps", "max_time_s", "batch_size",
                 "learning_rate", "seed", "precision"):
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
    if getattr(args, "pose_mode", None) is not None:  # the model's option (its architecture)
        model = data.setdefault("model", {})
        model.setdefault("pose", {})["mode"] = args.pose_mode
    if getattr(args, "no_memory_check", False):
        data["check_memory"] = False
    cfg = from_dict(TrainConfig, data)
    output_dir(cfg.run_dir, "--run-dir")
    # SIGTERM / SIGINT from here on ask the run to stop at a step boundary, checkpointed
    # (cryovae_nb.training.signals); one during the slow start below is kept for train()
    with StopOnSignals() as signals:
        # heavy: TensorFlow and the model load here, once the arguments are known to be good
        from cryovae_nb.training import horovod
        from cryovae_nb.training.trainer import Trainer

        if getattr(args, "horovod", False) or horovod.under_launcher():
            trainer = horovod.make_trainer(cfg, scale_lr=args.scale_lr, resume=not args.restart,
                                           progress=not args.no_progress, restart_hint="--restart")
        else:
            trainer = Trainer(cfg, resume=not args.restart, progress=not args.no_progress,
                              restart_hint="--restart")
        signals.attach(trainer.stop)
        result = trainer.train()
    if result.reason in STOP_SIGNALS:
        # the state is saved, but the run is not finished: 128 + the signal's number, what a
        # shell reports for a process the signal ended, so `cryovae train ... && next-step`
        # does not go on and a Slurm job script can tell "stopped, resumable" from "done" (0)
        if trainer.is_chief:
            print(f"stopped by {result.reason} at step {result.step}; checkpoint "
                  f"{result.checkpoint or 'none (no step taken)'}; run the same command to resume",
                  file=sys.stderr)
        return 128 + STOP_SIGNALS[result.reason]
    print(f"stopped at step {result.step} ({result.reason}); checkpoint: {result.checkpoint}")
    return 0

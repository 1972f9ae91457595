"""``cryovae demo`` (what ``make demo`` runs): the tutorial path on the embedded synthetic hinge data,
end to end (``cryovae_nb.tutorial.demo``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from cryovae_nb.errors import ConfigError
from cryovae_nb.tutorial.demo import DemoSettings, demo, format_summary
from cryovae_nb.tutorial.notebooks import check_runner_installed
from cryovae_nb.tutorial.workspace import TUTORIAL_PHANTOM

HELP = "run the tutorial path on the embedded synthetic hinge data (a moving L)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_output", help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and seconds of training (a smoke test, not a result)")
    parser.add_argument("--budget", type=float, default=None,
                        help="training wall-clock budget in seconds (default 240)")
    parser.add_argument("--steps", type=int, default=None,
                        help="train this many steps instead of for a wall-clock budget "
                             "(default with --quick: 150, and 10 more in 02_train)")
    parser.add_argument("--n-particles", type=int, default=None, help="simulated particles (default 5000)")
    parser.add_argument("--pose-mode", choices=("known", "learned"), default="known",
                        help="known: poses from the STAR file (a good map in minutes); "
                             "learned: ab initio, poses from the encoder and a global pose search "
                             "(about 4x slower per step; give it 10 minutes or more)")
    parser.add_argument("--phantom", choices=("hinge", "two_state", "lshape"), default=TUTORIAL_PHANTOM,
                        help="hinge: the L's short bar lifted 0-60 degrees, a continuous motion for the "
                             "latent to recover; two_state: its two ends; lshape: rigid (default: %(default)s)")
    parser.add_argument("--no-notebooks", action="store_true", help="skip executing the notebooks")


def run(args: argparse.Namespace) -> int:
    if not args.no_notebooks:
        check_runner_installed()  # before minutes of training, not after
    s = DemoSettings.quick() if args.quick else DemoSettings()
    if args.budget is not None:
        s.budget_s, s.steps, s.notebook_steps = float(args.budget), None, None
    if args.steps is not None:
        if args.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {args.steps}")
        s.steps = int(args.steps)
        s.notebook_steps = s.notebook_steps or max(1, s.steps // 10)
    if args.n_particles is not None:
        s.n_particles = int(args.n_particles)
    s.pose_mode = args.pose_mode
    s.phantom = args.phantom
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = demo(out, s, notebooks=not args.no_notebooks)
    print(format_summary(summary))
    return 0

"""The ``cryovae`` console script.

Each subcommand lives in the module that does the work; this file only routes. Modules are imported
when their subcommand runs, so ``cryovae --help`` answers without loading TensorFlow.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from cryovae_nb.errors import CryoVAEError

# name -> (module, function that adds the arguments, function that runs, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "simulate": ("cryovae_nb.synthetic", "add_simulate_parser", "run_simulate",
                 "simulate a particle stack (+ STAR, ground-truth volumes) from a phantom"),
    "preprocess": ("cryovae_nb.preprocess", "add_preprocess_parser", "run_preprocess",
                   "coarsen / crop, normalise, mask a stack; write .mrcs + .star"),
    "train": ("cryovae_nb.train", "add_train_parser", "run_train",
              "train the VAE on a preprocessed stack (resumable)"),
    "encode": ("cryovae_nb.inference", "add_encode_parser", "run_encode",
               "encode a stack with a trained run: latents, poses, STAR with learned poses"),
    "generate": ("cryovae_nb.inference", "add_generate_parser", "run_generate",
                 "decode volumes: latents, interpolation, traversal, prior samples"),
    "fsc": ("cryovae_nb.analysis", "add_fsc_parser", "run_fsc",
            "FSC between two volumes, resolution at 0.5 / 0.143"),
    "launch": ("cryovae_nb.launch", "add_launch_parser", "run_launch",
               "launch Horovod training locally, with mpirun or on Slurm"),
    "demo": ("cryovae_nb.demo", "add_demo_parser", "run_demo",
             "run the tutorial path on the embedded synthetic hinge data (a moving L)"),
}


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cryovae",
        description="Continuous conformational landscapes from cryo-EM particle images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<11} {c[3]}" for n, c in COMMANDS.items())
        + "\n\n'cryovae COMMAND --help' shows a command's options.",
    )
    p.add_argument("command", choices=sorted(COMMANDS), metavar="command")
    p.add_argument("--version", action="version", version=_version())
    return p


def _version() -> str:
    from cryovae_nb import __version__

    return f"cryovae_nb {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0].startswith("-"):
        top.parse_args(argv or ["--help"])
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        top.parse_args([name])  # argparse prints the valid choices and exits 2
    module_name, add_name, run_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"cryovae {name}", description=help_text)
    getattr(module, add_name)(parser)
    args = parser.parse_args(rest)
    try:
        rc = getattr(module, run_name)(args)
    except CryoVAEError as e:
        # A user error: say what is wrong and where, without a traceback.
        print(f"cryovae {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cryovae {name}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

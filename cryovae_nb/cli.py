"""The ``cryovae`` console script.

Each subcommand lives in the module that does the work; this file only routes. Modules are imported
when their subcommand runs, so ``cryovae --help`` answers without loading TensorFlow.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from cryovae_nb.errors import CryoVAEError

# name -> (module, function that adds the arguments, function that runs, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "simulate": ("cryovae_nb.synthetic", "add_simulate_parser", "run_simulate",
                 "simulate a particle stack (+ STAR, ground-truth volumes) from a phantom"),
    "preprocess": ("cryovae_nb.preprocess", "add_preprocess_parser", "run_preprocess",
                   "coarsen / crop, normalise, mask a stack; write .mrcs + .star"),
    "train": ("cryovae_nb.training.cli", "add_train_parser", "run_train",
              "train the VAE on a preprocessed stack (resumable)"),
    "encode": ("cryovae_nb.inference", "add_encode_parser", "run_encode",
               "encode a stack with a trained run: latents, poses, STAR with learned poses"),
    "generate": ("cryovae_nb.inference", "add_generate_parser", "run_generate",
                 "decode volumes: latents, interpolation, traversal, prior samples"),
    "fsc": ("cryovae_nb.analysis.cli", "add_fsc_parser", "run_fsc",
            "FSC between two volumes, resolution at 0.5 / 0.143"),
    "launch": ("cryovae_nb.launch.cli", "add_launch_parser", "run_launch",
               "launch Horovod training locally, with mpirun or on Slurm"),
    "demo": ("cryovae_nb.tutorial.demo", "add_demo_parser", "run_demo",
             "run the tutorial path on the embedded synthetic hinge data (a moving L)"),
}


def _top_parser() -> argparse.ArgumentParser:
    p = _Parser(
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


class _Parser(argparse.ArgumentParser):
    """A subcommand's parser whose errors are the one line every user error is
    (``cryovae CMD: error: what is wrong``), pointing at --help instead of printing the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _oserror_line(e: OSError) -> str:
    """``PATH: what is wrong`` for an OSError on a user's path (a read-only folder, -o under a file)."""
    why = e.strerror or str(e)
    if e.filename is None:
        return why
    where = os.fsdecode(e.filename)
    if e.filename2 is not None:
        where += f" -> {os.fsdecode(e.filename2)}"
    return f"{where}: {why}"


def _one_line(text: str) -> str:
    # a message from a parser (YAML, JSON) may span lines; the user sees one line
    return " ".join(text.split())


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
    # TensorFlow's C++ INFO lines (oneDNN, CPU features) would stand before a one-line error;
    # warnings and errors still show, and a user's own setting wins
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    module = importlib.import_module(module_name)
    parser = _Parser(prog=f"cryovae {name}", description=help_text)
    getattr(module, add_name)(parser)
    try:
        args = parser.parse_args(rest)
    except SystemExit as e:
        # --help (0) or a bad argument (2, its one line already printed): main() returns its
        # status for every user error, so a caller in Python gets a number, not an exception
        return int(e.code or 0)
    try:
        rc = getattr(module, run_name)(args)
    except CryoVAEError as e:
        # A user error: say what is wrong and where, without a traceback.
        print(f"cryovae {name}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        # The file system refused a user's path (permission, read-only, a file where a folder
        # should be): the path and the reason are what the user can act on.
        print(f"cryovae {name}: error: {_one_line(_oserror_line(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cryovae {name}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The ``cryovae`` console script: routes to the command modules of ``cryovae_nb.commands`` and
holds the one error policy every command runs under (a user error is one line on stderr, exit 2).

``python -m cryovae_nb.training`` (each Horovod rank) runs the train command through `run_command`,
so it answers errors the same way.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from cryovae_nb import __version__
from cryovae_nb.errors import CryoVAEError

# the command modules, in the order `cryovae --help` lists them (each: HELP, add_arguments, run)
COMMANDS = ("simulate", "preprocess", "train", "encode", "select", "analyze", "generate", "fsc", "launch", "demo")


def _command(name: str):
    return importlib.import_module(f"cryovae_nb.commands.{name}")


def _help_line(name: str) -> str:
    """A command module's ``HELP``, read from its source without importing it: importing all of
    them would load every working module (scipy, pandas, starfile: over a second) for ``--help``."""
    source = Path(importlib.util.find_spec(f"cryovae_nb.commands.{name}").origin).read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["HELP"]
                and isinstance(node.value, ast.Constant)):
            return node.value.value
    raise AssertionError(f"cryovae_nb.commands.{name} has no HELP = '...' line")


def _top_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="cryovae",
        description="Continuous conformational landscapes from cryo-EM particle images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<11} {_help_line(n)}" for n in COMMANDS)
        + "\n\n'cryovae COMMAND --help' shows a command's options.",
    )
    p.add_argument("command", choices=sorted(COMMANDS), metavar="command")
    p.add_argument("--version", action="version", version=f"cryovae_nb {__version__}")
    return p


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
    if not argv or argv[0].startswith("-"):
        _top_parser().parse_args(argv or ["--help"])
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        _top_parser().parse_args([name])  # argparse prints the valid choices and exits 2
    # TensorFlow's C++ INFO lines (oneDNN, CPU features) would stand before a one-line error;
    # warnings and errors still show, and a user's own setting wins
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    return run_command(name, rest)


def run_command(name: str, argv: list[str], prog: str | None = None) -> int:
    """Parse ``argv`` for command ``name`` and run it under the one error policy; the exit status."""
    prog = prog or f"cryovae {name}"
    command = _command(name)
    parser = _Parser(prog=prog, description=command.HELP)
    command.add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        # --help (0) or a bad argument (2, its one line already printed): main() returns its
        # status for every user error, so a caller in Python gets a number, not an exception
        return int(e.code or 0)
    try:
        rc = command.run(args)
    except CryoVAEError as e:
        # A user error: say what is wrong and where, without a traceback.
        print(f"{prog}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        # The file system refused a user's path (permission, read-only, a file where a folder
        # should be): the path and the reason are what the user can act on.
        print(f"{prog}: error: {_one_line(_oserror_line(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)

if __name__ == "__main__":
    sys.exit(main())

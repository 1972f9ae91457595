"""Checks of command-line values and output paths, before any work starts.

argparse ``type=`` callables reject a number that is not finite or out of range with a message
argparse turns into the one-line ``cryovae CMD: error: argument --x: ...``; ``output_file`` and
``output_dir`` refuse an output path that cannot be what the user meant (empty, ending in ``/`` or
``.``, an existing folder given as a file, a folder below a file) and say so naming the path,
before minutes of work are spent on a result that cannot be written.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from cryovae_nb.errors import InputError


def _number(kind, text: str):
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def number(kind=float, *, gt=None, ge=None, le=None, lt=None):
    """An argparse ``type=``: ``kind`` (int or float), finite, within the given bounds."""
    def parse(text: str):
        v = _number(kind, text)
        bounds = [(gt, v > gt if gt is not None else True, f"> {gt}"),
                  (ge, v >= ge if ge is not None else True, f">= {ge}"),
                  (lt, v < lt if lt is not None else True, f"< {lt}"),
                  (le, v <= le if le is not None else True, f"<= {le}")]
        for bound, ok, text_ in bounds:
            if bound is not None and not ok:
                want = " and ".join(t for b, _, t in bounds if b is not None)
                raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        return v

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


positive_float = number(float, gt=0)
nonnegative_float = number(float, ge=0)
positive_int = number(int, ge=1)
nonnegative_int = number(int, ge=0)
finite_float = number(float)


def _check_parent(path: Path, what: str, start: Path) -> None:
    """The nearest existing folder at or above ``start`` must be a writable folder."""
    parent = start.absolute()
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot create {what} below {parent}, which is a file, not a folder", path)
    # root passes access(); a read-only mount or a real permission error still surfaces as the
    # OSError the CLI turns into one line with the path
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write in {parent} (permission denied)", path)


def output_file(path, flag: str) -> Path:
    """``path`` checked as an output file named by option ``flag``."""
    text = os.fspath(path)
    if not text.strip():
        raise InputError(f"{flag}: the output file name is empty")
    p = Path(text)
    # Path("dir/.") is Path("dir"): look at the text the user typed
    if text.endswith(("/", os.sep)) or os.path.basename(text) in ("", ".", ".."):
        raise InputError(f"{flag} names a folder, not a file (give a file name)", text)
    if p.is_dir():
        raise InputError(f"{flag} is an existing folder, not a file (give a file name inside it)", text)
    _check_parent(p, "a file", p.parent)
    return p


def output_dir(path, flag: str) -> Path:
    """``path`` checked as an output folder named by option ``flag``."""
    text = os.fspath(path)
    if not text.strip():
        raise InputError(f"{flag}: the output folder name is empty")
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise InputError(f"{flag} must be a folder, but this is a file", text)
    _check_parent(p, "a folder", p)
    return p

"""One exception family for everything a user can get wrong.

Every error names the file (when there is one) and what is wrong with it, so a user never has
to read a traceback from deep inside numpy to learn that row 17 of their STAR file points at a
missing stack.
"""
from __future__ import annotations

import os


class CryoVAEError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(CryoVAEError, ValueError):
    """Bad input data: a file that is missing, malformed, or holds values we cannot use."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ConfigError(CryoVAEError, ValueError):
    """A configuration value that is out of range or inconsistent with the data."""


class TrainingError(CryoVAEError, RuntimeError):
    """Training cannot go on (a NaN loss, a corrupt checkpoint); the last good checkpoint is kept."""


class LaunchError(CryoVAEError, RuntimeError):
    """A cluster job could not be submitted or died; carries the command's stderr."""

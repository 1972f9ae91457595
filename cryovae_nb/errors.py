"""One exception family for everything a user can get wrong.

Every error names the file (when there is one) and what is wrong with it, so a user never has
to read a traceback from deep inside numpy to learn that row 17 of their STAR file points at a
missing stack.
"""
from __future__ import annotations

import errno
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


class OutputError(CryoVAEError, OSError):
    """An output could not be written (full disk, file size limit, no permission); what was
    being written is removed and nothing half-written is published."""

    _WHY = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large (a file size limit was reached)",
            errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
            errno.EACCES: "permission denied"}

    def __init__(self, message: str, path: str | os.PathLike | None = None, errno_: int | None = None):
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
        self.errno = errno_

    @classmethod
    def from_oserror(cls, e: OSError, path) -> "OutputError":
        why = cls._WHY.get(e.errno, e.strerror or str(e))
        return cls(f"cannot write ({why}); nothing was published", path, e.errno)

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


class TrainingError(CryoVAEError, RuntimeError):
    """Training cannot go on (a NaN loss, a corrupt checkpoint); the last good checkpoint is kept."""


class LaunchError(CryoVAEError, RuntimeError):
    """A cluster job could not be submitted or died; carries the command's stderr."""

"""Deterministic fault injection for the fault tests: ``CRYOVAE_FAULT=NAME`` makes the process
kill itself (SIGKILL, as the OOM killer or a power cut would) when it reaches the point ``NAME``.

Killing at a named point, rather than after some seconds, hits the same step on any machine under
any load. Unset (always, outside the tests), a fault point costs one environment lookup.
"""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator

ENV = "CRYOVAE_FAULT"


def fault_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def fault_after(name: str) -> Iterator[None]:
    """In an ExitStack, a point between two exits: reached only when nothing failed before it."""
    yield
    fault_point(name)

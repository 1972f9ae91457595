"""SIGTERM and SIGINT as a stop request: what ``cryovae train`` installs around its Trainer.

A cluster ends a job with SIGTERM (Slurm's time limit, ``scancel``, horovodrun passing on its
own), then SIGKILL after a grace period; a user presses Ctrl-C (SIGINT). Under `StopOnSignals`
the first of either only *asks* the Trainer to stop (`Trainer.stop` with the signal's name as the
reason): the step in flight finishes, the run is checkpointed, and the command exits saying so.

The handler does no work: it stores the signal number and calls ``stop``, one attribute store
(no lock a signal could interrupt half-held). After the first signal a second SIGINT kills the
process at once (the default action): a user can still force-quit. A second SIGTERM does not:
one stop usually brings several, since Slurm signals every process of the job and horovodrun's
launcher sends its own to each rank a few ms later (measured); SIGKILL is how a scheduler forces.

Library code never installs this by itself (a notebook's kernel owns its handlers); the CLI asks
for it. Python lets only the main thread set handlers: elsewhere it does nothing.
"""
from __future__ import annotations

import signal
import threading
from typing import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignals:
    """``with StopOnSignals() as signals: ...; signals.attach(trainer.stop)``.

    A signal that comes before ``attach`` (TensorFlow still importing, the model being built) is
    kept and passed on when ``attach`` is called. ``signum`` is the first signal received (None:
    none). The previous handlers come back on exit.
    """

    def __init__(self, signals: tuple[int, ...] = SIGNALS):
        self.signals = tuple(signals)
        self.signum: int | None = None
        self.installed = False
        self._stop: Callable[[str], None] | None = None
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> str | None:
        """The first signal's name ("SIGTERM"), or None."""
        return None if self.signum is None else signal.Signals(self.signum).name

    def attach(self, stop: Callable[[str], None]) -> None:
        """Pass stop requests to ``stop(reason)`` from now on (and one that came already)."""
        self._stop = stop
        if self.signum is not None:
            stop(self.name)

    def _handle(self, signum: int, _frame) -> None:
        if self.signum is None:
            self.signum = signum
            if self._stop is not None:
                self._stop(self.name)
        if signal.SIGINT in self._previous:
            # from the first signal on, Ctrl-C is the user's force-quit (see the module's text)
            signal.signal(signal.SIGINT, signal.SIG_DFL)

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal.signal would raise: leave the process's handlers alone
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        self.installed = True
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            # None: a handler not set from Python; the default is the closest we can restore
            signal.signal(s, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
        self.installed = False

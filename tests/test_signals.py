"""SIGTERM / SIGINT as a stop request (cryovae_nb.training.signals): the handler logic, without
TensorFlow. The real run (``cryovae train`` stopped by SIGTERM, checkpointed, resumed) is in
test_train.py; the ranks agreeing on a signal's stop in test_distributed.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import textwrap

from pathlib import Path

from cryovae_nb.training.signals import StopOnSignals

# children import this checkout's package (the venv's editable install may be another checkout)
CHILD_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def test_first_sigterm_asks_to_stop_repeats_are_absorbed_and_handlers_come_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stops = []
    with StopOnSignals() as signals:
        assert signals.installed
        signals.attach(stops.append)
        os.kill(os.getpid(), signal.SIGTERM)   # the handler runs before the next line
        assert (signals.signum, signals.name, stops) == (signal.SIGTERM, "SIGTERM", ["SIGTERM"])
        # Slurm and horovodrun both send one: a second SIGTERM neither kills nor asks again
        os.kill(os.getpid(), signal.SIGTERM)
        assert stops == ["SIGTERM"]
        # ... but from now on Ctrl-C is the force-quit: SIGINT's default action
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_signal_before_attach_is_passed_on_when_the_trainer_exists():
    stops = []
    with StopOnSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)   # while TensorFlow imports, the model builds
        assert stops == [] and signals.name == "SIGTERM"
        signals.attach(stops.append)
    assert stops == ["SIGTERM"]


def test_outside_the_main_thread_nothing_is_installed():
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def work():
        with StopOnSignals() as signals:
            seen.append((signals.installed, signal.getsignal(signal.SIGTERM)))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [(False, before)] and signal.getsignal(signal.SIGTERM) == before


CHILD = textwrap.dedent('''
    import signal, sys, time
    from cryovae_nb.training.signals import StopOnSignals

    stops = []
    with StopOnSignals() as signals:
        signals.attach(stops.append)
        print("ready", flush=True)
        while not stops:                    # waits for the parent's first SIGINT
            time.sleep(0.01)
        print("stopping", stops[0], flush=True)
        time.sleep(600)                     # a slow final step: the second Ctrl-C must end it
    print("not force-quit", flush=True)
''')


def test_a_second_sigint_force_quits(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env=CHILD_ENV)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "stopping SIGINT"  # the first one only asked
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=300) == -signal.SIGINT              # killed by it, at once
    finally:
        proc.kill()
        proc.wait()
    assert proc.stdout.read() == ""

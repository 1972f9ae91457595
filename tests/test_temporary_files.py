"""A process a test starts and kills leaves its temporary files in the session's folder
(conftest.subprocess_temporary_files), not in the machine's /tmp."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = '''
import os, signal, sys
import tensorflow as tf

@tf.function
def f(x):
    if x > 0:  # a Python branch on a tensor: autograph converts f, writing a module to TMPDIR
        return x * 2.0
    return x

import tempfile
print(float(f(tf.constant(1.0))), tempfile.gettempdir(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # as the fault tests kill a trainer: no atexit clean-up
'''


def test_a_killed_tensorflow_process_leaves_its_autograph_files_in_the_sessions_folder(
        subprocess_temporary_files, tmp_path, tmp_path_factory):
    script = tmp_path / "child.py"  # autograph reads the function's source: a file, not -c
    script.write_text(CHILD)
    ours = set(subprocess_temporary_files.glob("__autograph_generated_file*.py"))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    value, where = r.stdout.split()
    assert value == "2.0"
    # the child's temporary folder is inside pytest's (pruned with it), not the machine's
    assert Path(where).resolve().is_relative_to(tmp_path_factory.getbasetemp().resolve())
    assert Path(where).resolve() != Path(tempfile.gettempdir()).resolve()
    left = set(subprocess_temporary_files.glob("__autograph_generated_file*.py")) - ours
    assert len(left) >= 1  # the killed child's autograph module, there

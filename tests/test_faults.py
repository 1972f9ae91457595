"""Fault injection: ``cryovae preprocess`` SIGKILLed at every step of writing and publishing its
output set, then run again. Real processes, real files, no mocks.

The process kills itself at a named point (``CRYOVAE_FAULT``, cryovae_nb/faults.py), so each kill
lands at the same step on any machine under any load. After each kill the outputs must be the
complete old set, the complete new set, or a set that every reader refuses with a clear error
(a kill between two renames); never a mixture that reads. The rerun must succeed and leave the
complete new set and no temporaries.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryovae_nb.errors import InputError
from cryovae_nb.io import outputset, read_particles
from cryovae_nb.train import load_split

SOURCE = Path(__file__).resolve().parent / "data" / "quirks" / "relion30.star"  # 7 images, 20 px
SET = ("out.mrcs", "out.star", "out_split.npz", "out_preprocess.json")
OLD_ARGS = ("--box", "16")
NEW_ARGS = ("--box", "12", "--seed", "5", "--chunk-size", "2")

# kill point -> what a reader finds afterwards
EXPECTED = {
    "stack-chunk-written": "old",      # mid-way through the new stack (a temporary)
    "stack-written": "old",            # the new stack complete, still a temporary
    "temporaries-written": "old",      # all four new files written, none published
    "published-stack": "refused",      # new stack beside the old STAR file
    "published-split": "refused",      # ... and the new split
    "published-config": "refused",     # ... and the new config record
    "published": "new",                # the STAR file renamed last: the new set
}


def preprocess(out: Path, args, fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("CRYOVAE_FAULT", None)
    if fault:
        env["CRYOVAE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "cryovae_nb.cli", "preprocess", str(SOURCE), "-o", str(out),
                           "--no-progress", *args], capture_output=True, text=True, timeout=600, env=env)


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def old_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("old")
    proc = preprocess(folder / "out", OLD_ARGS)
    assert proc.returncode == 0, proc.stderr
    return folder


@pytest.fixture(scope="module")
def new_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("new")
    proc = preprocess(folder / "out", NEW_ARGS)
    assert proc.returncode == 0, proc.stderr
    return read_particles(folder / "out.star").images[:]


def state(folder: Path, old: dict[str, str], new_images: np.ndarray) -> str:
    """'old', 'new' or 'refused'; fails on anything else (a mixture that reads, stray files)."""
    temps = {t.name for n in SET for t in outputset.temporaries(folder / n)}
    names = {p.name for p in folder.iterdir()} - temps  # a killed run's temporaries are no outputs
    assert names == set(SET), sorted(names)
    if {n: digest(folder / n) for n in SET} == old:
        p = read_particles(folder / "out.star")
        assert p.box == 16 and load_split(folder / "out_split.npz", 7, p.output_id)
        return "old"
    try:
        p = read_particles(folder / "out.star")
    except InputError as e:
        assert "Rerun the preprocessing" in str(e) and "out.mrcs" in str(e)
        return "refused"
    # it reads: then every file must be the new run's
    assert p.box == 12 and np.array_equal(p.images[:], new_images)
    load_split(folder / "out_split.npz", 7, p.output_id)  # raises if the split is another run's
    assert '"box": 12' in (folder / "out_preprocess.json").read_text()
    return "new"


@pytest.mark.parametrize("point", list(EXPECTED))
def test_sigkill_at_each_publish_step_then_rerun(point, old_set, new_images, tmp_path):
    folder = tmp_path / "prep"
    shutil.copytree(old_set, folder)
    old = {n: digest(folder / n) for n in SET}

    killed = preprocess(folder / "out", NEW_ARGS, fault=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    got = state(folder, old, new_images)
    assert got == EXPECTED[point], (point, got, sorted(p.name for p in folder.iterdir()))

    rerun = preprocess(folder / "out", NEW_ARGS)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted(SET)  # our temporaries are gone
    assert state(folder, old, new_images) == "new"

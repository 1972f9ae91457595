"""Preprocessing outputs as a set: a STAR file is never paired silently with another run's stack or
split, a full disk is a one-line error that leaves no temporaries, and temporaries of a killed run
are removed at the next start. Real files and real ``cryovae preprocess`` processes."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryovae_nb.errors import InputError
from cryovae_nb.io import read_particles
from cryovae_nb.preprocess import PreprocessConfig, output_paths, preprocess_stack
from cryovae_nb.training.data import read_split

QUIRKS = Path(__file__).resolve().parent / "data" / "quirks"
SOURCE = QUIRKS / "relion30.star"  # 7 images of 20 px


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_star_file_refuses_another_runs_stack_and_split(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    old = preprocess_stack(SOURCE, a / "out", PreprocessConfig(box=16), progress=False)
    new = preprocess_stack(SOURCE, b / "out", PreprocessConfig(box=12, seed=9), progress=False)
    assert old.output_id and new.output_id and old.output_id != new.output_id
    # what a kill between two renames leaves: the new stack beside the old STAR file (issue 10, item 3)
    shutil.copy(b / "out.mrcs", a / "out.mrcs")
    with pytest.raises(InputError, match=r"out.star: the stack .*out.mrcs is not the one this STAR file "
                                         r"was written with .*box 16 recorded, 12 found.*Rerun"):
        read_particles(a / "out.star")
    # same box and size, other images: the sampled-image hash tells them apart
    c = tmp_path / "c"
    preprocess_stack(SOURCE, c / "out", PreprocessConfig(box=12, invert=True), progress=False)
    shutil.copy(c / "out.mrcs", b / "out.mrcs")
    with pytest.raises(InputError, match="sampled images differ"):
        read_particles(b / "out.star")
    # a split from another run is refused by the trainer's reader, the matching one accepted
    split_b = output_paths(b / "out")["split"]
    with pytest.raises(InputError, match="another preprocessing run"):
        read_split(split_b, 7, old.output_id)
    assert len(read_split(split_b, 7, new.output_id)[0]) + len(read_split(split_b, 7, new.output_id)[1]) == 7
    # files other software wrote carry no record and are read as before
    assert read_particles(SOURCE).output_id is None


def test_a_star_file_copied_with_its_stack_still_reads(tmp_path):
    preprocess_stack(SOURCE, tmp_path / "a" / "out", PreprocessConfig(box=16), progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    p = read_particles(tmp_path / "moved" / "out.star")
    assert len(p) == 7 and p.box == 16 and p.output_id is not None


def preprocess_cli(out, *args, limit_bytes=None):
    def child():
        # a file size limit stands in for a full disk (no root needed); ignoring SIGXFSZ turns
        # writing past it into OSError(EFBIG) instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "cryovae_nb.cli", "preprocess", str(SOURCE), "-o", str(out),
                           "--no-progress", *map(str, args)], capture_output=True, text=True, timeout=600,
                          preexec_fn=child if limit_bytes else None)


def test_full_disk_is_a_clear_error_and_leaves_no_temporaries(tmp_path):
    out = tmp_path / "prep" / "out"
    ok = preprocess_cli(out, "--box", 16)
    assert ok.returncode == 0, ok.stderr
    before = files(out.parent)
    assert sorted(before) == ["out.mrcs", "out.star", "out_preprocess.json", "out_split.npz"]

    full = preprocess_cli(out, "--box", 20, limit_bytes=8192)  # the 20 px stack needs 12.2 kB
    assert full.returncode == 2, full.stdout + full.stderr
    assert "Traceback" not in full.stderr and full.stderr.count("\n") == 1, full.stderr
    assert "out.mrcs: cannot write (file too large" in full.stderr and "nothing was published" in full.stderr
    assert files(out.parent) == before  # the previous complete set, and no temporaries
    assert read_particles(out.with_suffix(".star")).box == 16


def test_temporaries_of_a_killed_run_are_removed_at_the_next_start(tmp_path):
    folder = tmp_path / "prep"
    folder.mkdir()
    # names atomic_path gives temporaries (nested ones have more dots), and files that are not ours
    ours = [".out.mrcs.a1b2c3d4.tmp.mrcs", "..out.mrcs.a1b2c3d4.tmp.mrcs.Zz9_8yXw.tmp.mrcs",
            ".out.star.q1w2e3r4.tmp.star", ".out_split.npz.abcdefgh.tmp.npz"]
    theirs = [".out.mrcs.notes", "out.mrcs.bak", ".other.mrcs.a1b2c3d4.tmp.mrcs"]
    for name in ours + theirs:
        (folder / name).write_bytes(b"x" * 100)
    preprocess_stack(SOURCE, folder / "out", PreprocessConfig(box=16), progress=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        theirs + ["out.mrcs", "out.star", "out_preprocess.json", "out_split.npz"])


def test_stack_files_are_strict_mrc_written_without_a_memory_map(tmp_path):
    out = preprocess_stack(SOURCE, tmp_path / "o", PreprocessConfig(box=16), progress=False)
    with mrcfile.open(tmp_path / "o.mrcs") as m:  # strict: valid MRC2014
        assert m.is_image_stack() and m.data.shape == (7, 16, 16)
        assert float(m.voxel_size.x) == pytest.approx(out.pixel_size, rel=1e-6)
        assert m.header.dmax == pytest.approx(float(np.max(m.data)))
    assert mrcfile.validate(str(tmp_path / "o.mrcs"), print_file=open(os.devnull, "w"))

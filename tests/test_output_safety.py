"""Preprocessing outputs as a set: the STAR file names its run's stack, split and config (run-specific
names, so its one rename switches sets), is never paired silently with another run's stack or
split, a full disk is a one-line error that leaves no temporaries, files and temporaries of a
killed run are removed at the next start, and sets of the previous layout (fixed names) still read
and are replaced cleanly. Real files and real ``cryovae preprocess`` processes."""
from __future__ import annotations

import os
import re
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

DATA = Path(__file__).resolve().parent / "data"
QUIRKS = DATA / "quirks"
SOURCE = QUIRKS / "relion30.star"  # 7 images of 20 px
PREVIOUS_LAYOUT = DATA / "previous_layout"  # p.star, p.mrcs, p_split.npz, p_preprocess.json (12 px)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_star_file_refuses_another_runs_stack_and_split(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    old = preprocess_stack(SOURCE, a / "out", PreprocessConfig(box=16), progress=False)
    new = preprocess_stack(SOURCE, b / "out", PreprocessConfig(box=12, seed=9), progress=False)
    assert old.output_id and new.output_id and old.output_id != new.output_id
    # a set mixed by hand: another run's stack copied over the one the STAR file names
    shutil.copy(output_paths(b / "out")["stack"], output_paths(a / "out")["stack"])
    with pytest.raises(InputError, match=r"out.star: the stack .*out\.[0-9a-f]{8}\.mrcs is not the one this "
                                         r"STAR file was written with .*box 16 recorded, 12 found.*Rerun"):
        read_particles(a / "out.star")
    # same box and size, other images: the sampled-image hash tells them apart
    c = tmp_path / "c"
    preprocess_stack(SOURCE, c / "out", PreprocessConfig(box=12, invert=True), progress=False)
    shutil.copy(output_paths(c / "out")["stack"], output_paths(b / "out")["stack"])
    with pytest.raises(InputError, match="sampled images differ"):
        read_particles(b / "out.star")
    # a split from another run is refused by the trainer's reader, the matching one accepted
    split_b = output_paths(b / "out")["split"]
    with pytest.raises(InputError, match="another preprocessing run"):
        read_split(split_b, 7, old.output_id)
    assert len(read_split(split_b, 7, new.output_id)[0]) + len(read_split(split_b, 7, new.output_id)[1]) == 7
    # the STAR file finds its own split; a split copied over it by hand is refused
    assert [list(x) for x in read_split(b / "out.star", 7)] == [list(x) for x in read_split(split_b, 7)]
    shutil.copy(output_paths(a / "out")["split"], split_b)
    for output_id in (new.output_id, None):  # None: the STAR file's own run id
        with pytest.raises(InputError, match="another preprocessing run"):
            read_split(b / "out.star", 7, output_id)
    with pytest.raises(InputError, match="names no split file"):
        read_split(SOURCE, 7)
    # files other software wrote carry no record and are read as before
    assert read_particles(SOURCE).output_id is None


def test_the_star_file_names_run_specific_files_and_replaces_the_previous_set(tmp_path):
    out = tmp_path / "prep" / "out"
    first = preprocess_stack(SOURCE, out, PreprocessConfig(box=16), progress=False)
    files1 = output_paths(out)
    tag = first.output_id.removeprefix("run-")[:8]
    assert {k: p.name for k, p in files1.items()} == {
        "star": "out.star", "stack": f"out.{tag}.mrcs", "split": f"out.{tag}_split.npz",
        "config": f"out.{tag}_preprocess.json"}
    assert sorted(out.parent.iterdir()) == sorted(files1.values())
    # a file of the user's beside them, even one named like ours but not of our pattern, is kept
    (out.parent / "out.notes.mrcs").write_bytes(b"mine")
    second = preprocess_stack(SOURCE, out, PreprocessConfig(box=12), progress=False)
    files2 = output_paths(out)
    assert second.output_id != first.output_id and second.box == 12
    assert sorted(out.parent.iterdir()) == sorted([*files2.values(), out.parent / "out.notes.mrcs"])
    assert not set(files1.values()) - {files1["star"]} & set(out.parent.iterdir())


def test_a_set_of_the_previous_layout_still_reads_and_is_replaced_cleanly(tmp_path):
    folder = tmp_path / "prep"
    shutil.copytree(PREVIOUS_LAYOUT, folder)
    (folder / "README.md").unlink()
    p = read_particles(folder / "p.star")
    assert len(p) == 7 and p.box == 12 and p.output_id is not None
    assert output_paths(folder / "p") == {"star": folder / "p.star", "stack": folder / "p.mrcs",
                                          "split": folder / "p_split.npz", "config": folder / "p_preprocess.json"}
    train, test = read_split(folder / "p.star", 7, p.output_id)
    assert len(train) + len(test) == 7 and [list(x) for x in (train, test)] == \
        [list(x) for x in read_split(folder / "p_split.npz", 7, p.output_id)]
    # the Trainer takes the STAR file as its split_file too
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.trainer import Trainer
    from cryovae_nb.model import ModelConfig

    cfg = TrainConfig(data=str(folder / "p.star"), split_file=str(folder / "p.star"), run_dir=str(tmp_path / "run"),
                      model=ModelConfig().with_options(box=12, latent_dim=2, encoder_layers=1, encoder_units=8,
                                                           decoder_layers=1, decoder_units=8), batch_size=2, max_steps=1, n_samples=0, n_test_eval=1)
    t = Trainer(cfg, progress=False)
    assert [list(t.train_indices), list(t.test_indices)] == [list(train), list(test)]
    # a new run over it: the new set, the old fixed-name files removed, nothing else touched
    (folder / "p.mrcs.bak").write_bytes(b"mine")
    new = preprocess_stack(SOURCE, folder / "p", PreprocessConfig(box=16), progress=False)
    assert sorted(folder.iterdir()) == sorted([*output_paths(folder / "p").values(), folder / "p.mrcs.bak"])
    assert new.box == 16


def test_the_previous_set_is_removed_only_where_provably_ours(tmp_path):
    folder = tmp_path / "prep"
    shutil.copytree(PREVIOUS_LAYOUT, folder)
    # the stack replaced by hand and the split of another run: not the set the STAR file
    # describes, so kept; the config beside a split not provably the run's is kept too
    preprocess_stack(SOURCE, tmp_path / "other" / "q", PreprocessConfig(box=12, invert=True), progress=False)
    shutil.copy(output_paths(tmp_path / "other" / "q")["stack"], folder / "p.mrcs")
    shutil.copy(output_paths(tmp_path / "other" / "q")["split"], folder / "p_split.npz")
    preprocess_stack(SOURCE, folder / "p", PreprocessConfig(box=16), progress=False)
    assert {"p.mrcs", "p_split.npz", "p_preprocess.json", "README.md"} <= {f.name for f in folder.iterdir()}


def test_a_bare_stack_of_the_output_set_given_as_input_is_not_removed(tmp_path):
    out = tmp_path / "out"
    preprocess_stack(SOURCE, out, PreprocessConfig(box=16), progress=False)
    stack = output_paths(out)["stack"]
    preprocess_stack(stack, out, PreprocessConfig(box=12), progress=False)
    assert stack.is_file() and read_particles(out.with_suffix(".star")).box == 12


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
    assert sorted(before) == sorted(p.name for p in output_paths(out).values())

    full = preprocess_cli(out, "--box", 20, limit_bytes=8192)  # the 20 px stack needs 12.2 kB
    assert full.returncode == 2, full.stdout + full.stderr
    assert "Traceback" not in full.stderr and full.stderr.count("\n") == 1, full.stderr
    assert re.search(r"out\.[0-9a-f]{8}\.mrcs: cannot write \(file too large", full.stderr), full.stderr
    assert "nothing was published" in full.stderr
    assert files(out.parent) == before  # the previous complete set, and no temporaries
    assert read_particles(out.with_suffix(".star")).box == 16


def test_files_and_temporaries_of_a_killed_run_are_removed_at_the_next_start(tmp_path):
    folder = tmp_path / "prep"
    folder.mkdir()
    # names atomic_path gives temporaries (nested ones have more dots), of the run-specific files
    # and of the previous layout's fixed names; a killed run's files that no STAR file names; and
    # files that are not ours
    ours = [".out.1a2b3c4d.mrcs.a1b2c3d4.tmp.mrcs", "..out.1a2b3c4d.mrcs.a1b2c3d4.tmp.mrcs.Zz9_8yXw.tmp.mrcs",
            ".out.star.q1w2e3r4.tmp.star", ".out.1a2b3c4d_split.npz.abcdefgh.tmp.npz",
            ".out.mrcs.a1b2c3d4.tmp.mrcs", ".out_split.npz.abcdefgh.tmp.npz",
            "out.1a2b3c4d.mrcs", "out.1a2b3c4d_split.npz", "out.1a2b3c4d_preprocess.json"]
    theirs = [".out.mrcs.notes", "out.mrcs.bak", ".other.mrcs.a1b2c3d4.tmp.mrcs", "out.mrcs", "out_split.npz",
              "out.1A2B3C4D.mrcs", "out.1a2b3c4.mrcs", "out.1a2b3c4d.mrc", "other.1a2b3c4d.mrcs",
              "out.1a2b3c4d_split.npz.bak"]
    for name in ours + theirs:
        (folder / name).write_bytes(b"x" * 100)
    preprocess_stack(SOURCE, folder / "out", PreprocessConfig(box=16), progress=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        theirs + [p.name for p in output_paths(folder / "out").values()])


def test_stack_files_are_strict_mrc_written_without_a_memory_map(tmp_path):
    out = preprocess_stack(SOURCE, tmp_path / "o", PreprocessConfig(box=16), progress=False)
    stack = output_paths(tmp_path / "o")["stack"]
    with mrcfile.open(stack) as m:  # strict: valid MRC2014
        assert m.is_image_stack() and m.data.shape == (7, 16, 16)
        assert float(m.voxel_size.x) == pytest.approx(out.pixel_size, rel=1e-6)
        assert m.header.dmax == pytest.approx(float(np.max(m.data)))
    assert mrcfile.validate(str(stack), print_file=open(os.devnull, "w"))

"""Fault injection: ``cryovae preprocess`` and ``cryovae train`` SIGKILLed at every step of
writing and publishing their outputs, then run again. Real processes, real files, no mocks.

The process kills itself at a named point (``CRYOVAE_FAULT``, cryovae_nb/faults.py), so each kill
lands at the same step on any machine under any load. After each kill of preprocessing ``out.star``
must name a complete set that reads: the old one when killed before its rename, the new one after;
never a mixture, never a set refused. The rerun must succeed and leave ``out.star``, the three
files it names and nothing else of ours. A training run killed at each step of
saving must, run again, end with the weights and log of an uninterrupted run; a start-over killed
while moving the old run aside must be finished, not scattered.
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

from cryovae_nb.io import outputset, read_output_files, read_particles
from cryovae_nb.training.data import read_split
from cryovae_nb.training.rundir import read_metrics

SOURCE = Path(__file__).resolve().parent / "data" / "quirks" / "relion30.star"  # 7 images, 20 px
OLD_ARGS = ("--box", "16")
NEW_ARGS = ("--box", "12", "--seed", "5", "--chunk-size", "2")

# kill point -> what a reader finds afterwards
EXPECTED = {
    "stack-allocated": "old",          # the new stack's full-size temporary, no image in it yet
    "stack-chunk-written": "old",      # mid-way through the new stack (a temporary)
    "stack-written": "old",            # the new stack complete, still a temporary
    "star-written": "old",             # the new STAR file written under its temporary name
    "split-written": "old",            # ... and the new split
    "temporaries-written": "old",      # all four new files written, none published
    "published-stack": "old",          # new stack under its own name, named by no STAR file yet
    "published-split": "old",          # ... and the new split
    "published-config": "old",         # ... and the new config record
    "published": "new",                # the STAR file renamed last: the new set; old files left
    "removed-previous-stack": "new",   # the old stack removed, its split and config not yet
    "removed-previous-split": "new",   # ... and its split
    "removed-previous-config": "new",  # ... and its config: the run complete
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


def the_set(folder: Path) -> dict[str, Path]:
    """out.star and the files it names."""
    return {"star": folder / "out.star", **read_output_files(folder / "out.star")}


def state(folder: Path, old: dict[str, str], new_images: np.ndarray) -> str:
    """'old' or 'new': what out.star names, read in full; fails on anything else (a mixture, a
    refused set, a stray file that is not ours)."""
    named = the_set(folder)
    ours = {p.name for p in outputset.leftovers(folder / "out.star")}  # a killed run's files
    others = {p.name for p in folder.iterdir()} - ours - {p.name for p in named.values()}
    assert not others, sorted(others)
    p = read_particles(folder / "out.star")  # checks the stack against the STAR file's record
    train, test = read_split(folder / "out.star", 7, p.output_id)  # refuses another run's split
    assert len(train) + len(test) == 7
    if {k: digest(f) for k, f in named.items()} == old:
        assert p.box == 16
        return "old"
    # every file it names must be the new run's
    assert p.box == 12 and np.array_equal(p.images[:], new_images)
    assert '"box": 12' in named["config"].read_text()
    return "new"



@pytest.mark.parametrize("point", list(EXPECTED))
def test_sigkill_at_each_publish_step_then_rerun(point, old_set, new_images, tmp_path):
    folder = tmp_path / "prep"
    shutil.copytree(old_set, folder)
    old = {k: digest(f) for k, f in the_set(folder).items()}
    old_names = {f.name for f in the_set(folder).values()}

    killed = preprocess(folder / "out", NEW_ARGS, fault=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    got = state(folder, old, new_images)
    assert got == EXPECTED[point], (point, got, sorted(p.name for p in folder.iterdir()))

    rerun = preprocess(folder / "out", NEW_ARGS)
    assert rerun.returncode == 0, rerun.stderr
    new_names = {f.name for f in the_set(folder).values()}
    # the killed run's files and temporaries, and the old set, are gone
    assert {p.name for p in folder.iterdir()} == new_names and not (new_names & old_names) - {"out.star"}
    assert state(folder, old, new_images) == "new"


# -- training: killed at each step of saving a checkpoint ---------------------------------------------

def train_config(data, run_dir, **kw):
    from cryovae_nb.model import ModelConfig
    from cryovae_nb.training.config import TrainConfig

    model = ModelConfig().with_options(box=12, latent_dim=2, encoder_layers=1, encoder_units=16, decoder_layers=1,
                                       decoder_units=16)
    base = dict(data=str(data), run_dir=str(run_dir), model=model, batch_size=2, learning_rate=1e-3,
                max_steps=6, log_every=1, sample_every=1000, checkpoint_every=2, keep_checkpoints=5,
                n_test_eval=1, n_samples=0, seed=4, test_fraction=0.0)
    base.update(kw)
    return TrainConfig(**base)


# each kill -> (newest complete checkpoint, what `latest` says) right after it; None: no checkpoint
TRAIN_KILLS = (
    ("run-files-written", None, None),                          # provenance written, no step yet
    ("step@1", None, None),                                     # before the first checkpoint
    ("checkpoint-written@2", None, None),                       # inside the first save
    ("step@3", "step_00000002", "step_00000002"),              # between two checkpoints
    ("checkpoint-written@4", "step_00000002", "step_00000002"),  # under its temporary name
    ("checkpoint-renamed@4", "step_00000004", "step_00000002"),  # renamed, pointer not yet rewritten
    ("logged@5", "step_00000004", "step_00000004"),            # step 5 in the log, not in a checkpoint
    ("checkpoint-pointer@6", "step_00000006", "step_00000006"),  # pointer rewritten, not yet pruned
    ("step@7", "step_00000006", "step_00000006"),
    ("checkpoint-renamed@8", "step_00000008", "step_00000006"),  # the last save, pointer not rewritten
)


def test_training_killed_at_each_step_of_a_run_resumes_to_the_same_weights(tmp_path):
    """One ``cryovae train`` command killed at each point of TRAIN_KILLS in turn, each time
    run again as it was: it ends with the weights and log of a run that was never interrupted."""
    from cryovae_nb.config import save_config
    from cryovae_nb.inference import load_run
    from cryovae_nb.training.trainer import Trainer

    prep = tmp_path / "prep"
    assert preprocess(prep / "out", NEW_ARGS).returncode == 0
    data = prep / "out.star"
    ref = Trainer(train_config(data, tmp_path / "ref", max_steps=8), progress=False)
    ref.train()

    run = tmp_path / "run"
    save_config(train_config(data, run, max_steps=8), tmp_path / "c.json")
    ckpts = run / "checkpoints"

    def train(fault=None):
        env = {k: v for k, v in os.environ.items() if k != "CRYOVAE_FAULT"}
        if fault:
            env["CRYOVAE_FAULT"] = fault
        return subprocess.run([sys.executable, "-m", "cryovae_nb.cli", "train", "--config", str(tmp_path / "c.json"),
                               "--no-progress"], capture_output=True, text=True, timeout=900, env=env)

    temporaries = []
    for fault, newest_complete, pointer in TRAIN_KILLS:
        proc = train(fault)
        assert proc.returncode == -signal.SIGKILL, (fault, proc.stderr[-2000:])
        complete = sorted(p.name for p in ckpts.glob("step_*") if (p / "state.json").is_file())
        assert (complete[-1] if complete else None) == newest_complete, (fault, complete)
        latest = ckpts / "latest"
        assert (latest.read_text().strip() if latest.exists() else None) == pointer, fault
        temporaries.append(sorted(p.name for p in ckpts.iterdir() if p.name.startswith(".")) if ckpts.exists() else [])
    # only the kill inside a save left a temporary, and the next start removed it
    assert [bool(t) for t in temporaries] == [f.startswith("checkpoint-written") for f, _, _ in TRAIN_KILLS]

    # the last kill came after step 8 was saved: the rerun finds the run complete
    done = train()
    assert done.returncode == 0 and "stopped at step 8 (max_steps)" in done.stdout, done.stderr[-2000:]
    assert (ckpts / "latest").read_text().strip() == "step_00000008"
    resumed = load_run(run)
    assert resumed.step == 8
    for a, b in zip(ref.model.trainable_variables, resumed.model.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # the log was cut back at each resume, never duplicated; the three starts killed before their
    # first checkpoint were moved aside whole, not deleted
    assert [r["step"] for r in read_metrics(run) if r["split"] == "train"] == list(range(1, 9))
    previous = ["previous-1", "previous-2", "previous-3"]
    assert sorted(p.name for p in run.glob("previous-*")) == previous
    assert all((run / p / "data.json").is_file() for p in previous)
    assert not list(run.glob("previous-*/.moving"))


def test_a_start_over_killed_while_moving_the_old_run_aside_is_finished_next_time(tmp_path):
    from cryovae_nb.training import rundir
    from cryovae_nb.training.trainer import Trainer

    prep = tmp_path / "prep"
    assert preprocess(prep / "out", NEW_ARGS).returncode == 0
    run = tmp_path / "run"
    Trainer(train_config(prep / "out.star", run, max_steps=2), progress=False).train()
    old = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()
           and p.name != rundir.MARKER}
    code = f"from cryovae_nb.training import rundir; rundir.move_aside({str(run)!r})"
    env = dict(os.environ, CRYOVAE_FAULT="moved-aside:metrics.jsonl")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert (run / "previous-1" / ".moving").exists() and (run / "checkpoints").is_dir()  # half moved

    # the next start (even without resume=False) finishes the start-over into the same folder
    with pytest.warns(UserWarning, match="previous-1"):
        t = Trainer(train_config(prep / "out.star", run, max_steps=2), progress=False)
    assert t.step == 0 and not (run / "previous-1" / ".moving").exists()
    moved = {str(p.relative_to(run / "previous-1")): p.read_bytes() for p in (run / "previous-1").rglob("*")
             if p.is_file()}
    assert moved == old and not (run / "previous-2").exists()

"""The training package's structure: each concept in one place, no upward import, light config."""
from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cryovae_nb
from cryovae_nb.errors import InputError
from cryovae_nb.model.batch import Batch
from cryovae_nb.training.rundir import MetricsReader, RunFolder, parse_metrics, read_metrics

PACKAGE = Path(cryovae_nb.__file__).parent
# the whole tuple: a display may pick a few of them (the monitor's curves), a copy of all is a copy
LOSS_NAMES = {"recon", "kl", "averaging", "pose", "total", "noise_var", "head_won"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _imported(tree) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_loss_keys_are_written_once():
    """LOSS_KEYS lives in model/losses.py; no other module spells out the tuple of loss names."""
    places = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List)) and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                if LOSS_NAMES <= {e.value for e in node.elts}:
                    places.append(path.relative_to(PACKAGE).as_posix())
    assert places == ["model/losses.py"]


def test_the_trainer_does_not_import_horovod():
    """Horovod enters the Trainer as Hooks: training/horovod.py imports the trainer, never the
    reverse, and no module below it (config, data, run folder, steps) imports it either."""
    training = PACKAGE / "training"
    for name in ("trainer", "config", "data", "rundir", "steps", "__init__"):
        imported = _imported(ast.parse((training / f"{name}.py").read_text()))
        assert not any("horovod" in m for m in imported), name
    assert "cryovae_nb.training.trainer" in _imported(ast.parse((training / "horovod.py").read_text()))
    code = ("import sys; import cryovae_nb.training.trainer\n"
            "print(sorted(m for m in sys.modules if 'horovod' in m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_no_class_is_defined_inside_a_function_in_training():
    for path in sorted((PACKAGE / "training").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n.name for n in ast.walk(node) if isinstance(n, ast.ClassDef)]
                assert not inner, f"{path.name}: {node.name} defines {inner}"


def test_train_config_and_the_batch_import_without_tensorflow():
    code = ("import sys\n"
            "from cryovae_nb.training.config import TrainConfig\n"
            "from cryovae_nb.training.data import read_split\n"
            "from cryovae_nb.training.rundir import RunFolder\n"
            "from cryovae_nb.model.batch import Batch\n"
            "import cryovae_nb.training\n"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_the_run_folder_is_read_in_one_place():
    """Only training/rundir.py names the metrics log's file, and there is one split reader."""
    names_metrics, split_readers = [], []
    for path, tree in _modules():
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value == "metrics.jsonl":
                names_metrics.append(rel)
            if isinstance(node, ast.FunctionDef) and node.name in ("load_split", "read_split", "read_metrics"):
                split_readers.append(f"{rel}:{node.name}")
    assert names_metrics == ["training/rundir.py"]
    assert sorted(split_readers) == ["training/data.py:read_split", "training/rundir.py:read_metrics"]


# -- the one metrics.jsonl policy -------------------------------------------------------------

def test_metrics_reader_skips_a_torn_last_line_and_refuses_a_damaged_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "total": 2.5}\n\n{"step": 2, "total": 2.0}\n{"step": 3, "to')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    records, used = parse_metrics(path.read_bytes(), path)
    assert len(records) == 2 and used == path.read_bytes().rfind(b"\n") + 1

    reader = RunFolder(tmp_path).metrics_reader()
    assert [r["step"] for r in reader.read()[0]] == [1, 2]
    with open(path, "a") as f:
        f.write('tal": 1.5}\n')                       # the writer finishes its line
    assert reader.read() == ([{"step": 3, "total": 1.5}], False)
    path.write_text('{"step": 1}\n')                  # a new run replaced the file
    assert reader.read() == ([{"step": 1}], True)
    with open(path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(InputError, match=r"metrics.jsonl: line 2 is not JSON"):
        reader.read()
    with pytest.raises(InputError, match="line 2 is not JSON"):
        read_metrics(path)
    path.write_text('[1, 2]\n')
    with pytest.raises(InputError, match="line 1 has no 'step' field"):
        read_metrics(path)
    assert read_metrics(tmp_path / "absent") == [] and MetricsReader(tmp_path / "none.jsonl").read() == ([], False)


def test_run_folder_reads_config_split_and_fingerprint(tmp_path):
    from cryovae_nb.config import save_config
    from cryovae_nb.training.config import TrainConfig

    folder = RunFolder(tmp_path)
    assert not folder.has_config() and not folder.has_checkpoint() and folder.data_fingerprint() is None
    save_config(TrainConfig(data="x.star", batch_size=7), tmp_path / "config.json")
    np.savez(tmp_path / "split.npz", train=np.array([0, 2]), test=np.array([1]))
    (tmp_path / "data.json").write_text(json.dumps({"n_particles": 3}))
    assert folder.config().batch_size == 7 and folder.data_fingerprint() == {"n_particles": 3}
    train, test = folder.split(3)
    assert train.tolist() == [0, 2] and test.tolist() == [1]
    assert folder.checkpoints.directory == tmp_path / "checkpoints" and folder.checkpoints.latest() is None


# -- the Batch --------------------------------------------------------------------------------

def test_batch_is_a_nested_structure_for_tensorflow():
    tf = pytest.importorskip("tensorflow")
    images = np.zeros((2, 4, 4), np.float32)
    learned = Batch(images, indices=np.arange(2))
    known = learned.replace(rotations=np.tile(np.eye(3, dtype=np.float32), (2, 1, 1)))
    assert len(tf.nest.flatten(learned)) == 2 and len(tf.nest.flatten(known)) == 3
    back = tf.nest.pack_sequence_as(known, tf.nest.flatten(known))
    assert back.shifts is None and back.optics is None and back.known_poses
    traces = []

    @tf.function
    def count(batch):
        traces.append(batch.known_poses)
        return tf.reduce_sum(batch.images) + (0.0 if batch.rotations is None else tf.reduce_sum(batch.rotations))

    assert float(count(known)) == 6.0 and float(count(learned)) == 0.0
    count(Batch(images + 1, indices=np.arange(2)))   # same structure: no new trace
    assert traces == [True, False]
    with pytest.raises(dataclasses.FrozenInstanceError):
        learned.images = None

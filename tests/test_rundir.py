"""Run folders: a folder not ours is refused untouched, a restarted run is moved aside (never
deleted), a resume on other data is refused, and a corrupt newest checkpoint falls back to the
newest intact one. Real files, real training, and the real ``cryovae train`` process."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cryovae_nb.training import rundir
from cryovae_nb.config import save_config
from cryovae_nb.errors import ConfigError, TrainingError
from cryovae_nb.training.config import TrainConfig
from cryovae_nb.training.rundir import CheckpointManager, read_metrics


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` with its bytes (files) or None (folders), and its mtime."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(folder))] = (p.read_bytes() if p.is_file() else None, st.st_mtime_ns)
    out["."] = (None, folder.stat().st_mtime_ns)
    return out


def make_data(root: Path, seed: int) -> Path:
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
    from cryovae_nb.synthetic import SimulationConfig, simulate

    ds = simulate(SimulationConfig(box=16, n_particles=200, snr=1.0, seed=seed), root / "sim", progress=False)
    preprocess_stack(ds.star, root / "pre" / "particles", PreprocessConfig(), progress=False)
    return root / "pre" / "particles.star"


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """Two datasets of the same count and box whose images differ (another simulation seed)."""
    root = tmp_path_factory.mktemp("data")
    return make_data(root / "a", 1), make_data(root / "b", 2)


def config(data, run_dir, **kw) -> TrainConfig:
    from cryovae_nb.model import ModelConfig

    model = ModelConfig().with_options(box=16, latent_dim=2, encoder_layers=1, encoder_units=32, decoder_layers=1,
                                       decoder_units=32)
    base = dict(data=str(data), run_dir=str(run_dir), model=model, batch_size=32, learning_rate=1e-3,
                max_steps=4, log_every=2, sample_every=1000, checkpoint_every=2, n_test_eval=20,
                n_samples=0, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def trainer(cfg, **kw):
    from cryovae_nb.training.trainer import Trainer

    return Trainer(cfg, progress=False, **kw)


def cryovae_train(*args):
    return subprocess.run([sys.executable, "-m", "cryovae_nb.cli", "train", "--no-progress", *map(str, args)],
                          capture_output=True, text=True, timeout=900)


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("cryovae train: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# -- a folder that is not ours ---------------------------------------------------------------------

def test_a_foreign_folder_is_refused_and_left_byte_for_byte_unchanged(two_datasets, tmp_path):
    data, _ = two_datasets
    folder = tmp_path / "mine"
    (folder / "samples").mkdir(parents=True)
    (folder / "samples" / "notes.txt").write_text("my notes\n")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "other_tool.ckpt").write_bytes(b"\x00weights")
    (folder / "metrics.jsonl").write_text("not ours\n")
    before = snapshot(folder)

    line = one_line_error(cryovae_train("--data", data, "--run-dir", folder, "--max-steps", 2))
    assert str(folder) in line and "not a cryovae run folder" in line
    with pytest.raises(ConfigError, match="not a cryovae run folder"):
        trainer(config(data, folder), resume=False)
    assert snapshot(folder) == before

    # a file where the folder should be is refused too; an empty folder is taken
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        rundir.claim(tmp_path / "afile")
    (tmp_path / "empty").mkdir()
    rundir.claim(tmp_path / "empty")
    marker = json.loads((tmp_path / "empty" / rundir.MARKER).read_text())
    assert marker["format"] == rundir.FORMAT and marker["version"] == rundir.FORMAT_VERSION


def test_marker_from_a_newer_version_or_garbled_is_refused(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / rundir.MARKER).write_text(json.dumps({"format": rundir.FORMAT, "version": 99}))
    with pytest.raises(ConfigError, match="newer"):
        rundir.claim(tmp_path / "new")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / rundir.MARKER).write_text("{")
    with pytest.raises(ConfigError, match="unreadable run folder marker"):
        rundir.claim(tmp_path / "bad")


def test_a_run_from_before_markers_is_adopted(two_datasets, tmp_path):
    data, _ = two_datasets
    run = tmp_path / "old"
    trainer(config(data, run)).train()
    (run / rundir.MARKER).unlink()  # what an older cryovae_nb left behind
    resumed = trainer(config(data, run, max_steps=6))
    assert resumed.step == 4 and rundir.is_ours(run)


# -- starting over moves the old run aside -----------------------------------------------------------

def test_restart_moves_the_previous_run_aside_never_deleting_it(two_datasets, tmp_path):
    data, _ = two_datasets
    run = tmp_path / "run"
    trainer(config(data, run)).train()
    files = {n: (run / n).read_bytes() for n in ("config.json", "data.json", "metrics.jsonl")}
    ckpts = [p.name for p in CheckpointManager(run / "checkpoints").all()]

    with pytest.warns(UserWarning, match="previous-1"):
        fresh = trainer(config(data, run, max_steps=2), resume=False)
    assert fresh.step == 0
    old = run / "previous-1"
    assert {n: (old / n).read_bytes() for n in files} == files
    assert [p.name for p in CheckpointManager(old / "checkpoints").all()] == ckpts
    assert read_metrics(run) == [] and not (run / "checkpoints").exists()
    fresh.train()
    assert [p.name for p in CheckpointManager(run / "checkpoints").all()] == ["step_00000002"]

    # again: previous-2; a run killed before its first checkpoint is moved aside the same way
    with pytest.warns(UserWarning, match="previous-2"):
        trainer(config(data, run), resume=False)
    assert (run / "previous-2" / "checkpoints" / "step_00000002").is_dir()
    with pytest.warns(UserWarning, match="previous-3"):
        trainer(config(data, run))  # config.json etc. but no checkpoint: nothing to resume
    assert (run / "previous-3" / "config.json").is_file()
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("previous")) == \
        ["previous-1", "previous-2", "previous-3"]


# -- resume on other data ------------------------------------------------------------------------------

def test_resume_on_other_data_is_refused_and_the_record_kept(two_datasets, tmp_path):
    data_a, data_b = two_datasets
    run = tmp_path / "run"
    trainer(config(data_a, run)).train()
    record = {n: (run / n).read_bytes() for n in ("config.json", "config.yaml", "data.json", "split.npz")}
    fp = json.loads(record["data.json"])
    assert fp["n_particles"] == 200 and fp["box"] == 16 and len(fp["sample_sha256"]) == 64
    assert fp["stack_bytes"] > 0 and fp["data"] == str(Path(data_a).resolve())

    with pytest.raises(ConfigError, match="trained on other data") as e:
        trainer(config(data_b, run, max_steps=8))
    msg = str(e.value)
    assert "hash of sampled images differ" in msg and "resume=False" in msg and "particle count" not in msg
    before = snapshot(run)
    line = one_line_error(cryovae_train("--data", data_b, "--run-dir", run, "--max-steps", 8,
                                        "--batch-size", 32))
    assert "trained on other data" in line and "--restart" in line and "resume=False" not in line
    assert snapshot(run) == before
    assert {n: (run / n).read_bytes() for n in record} == record

    # the right data resumes, and a resume leaves the provenance files as they were
    r = trainer(config(data_a, run, max_steps=6, learning_rate=5e-4))
    assert r.step == 4
    r.train()
    assert {n: (run / n).read_bytes() for n in record} == record


def test_resume_with_another_split_is_refused(two_datasets, tmp_path):
    data, _ = two_datasets
    run = tmp_path / "run"
    trainer(config(data, run)).train()
    with pytest.raises(ConfigError, match="split.npz: the run's train/test split differs"):
        trainer(config(data, run, max_steps=6, test_fraction=0.3))
    assert trainer(config(data, run, max_steps=6)).step == 4


def test_resume_error_names_the_cli_flag(two_datasets, tmp_path):
    data, _ = two_datasets
    run = tmp_path / "run"
    cfg = config(data, run)
    trainer(cfg).train()
    save_config(config(data, run, model=cfg.model.with_options(latent_dim=3)), tmp_path / "c.json")
    line = one_line_error(cryovae_train("--config", tmp_path / "c.json"))
    assert "different model config" in line and "--restart" in line and "resume=False" not in line


# -- corrupt checkpoints -------------------------------------------------------------------------------

def corrupt(checkpoint: Path) -> None:
    """Overwrite the tensors of a checkpoint with garbage of the same size (bad disk blocks)."""
    for f in checkpoint.glob("ckpt.data-*"):
        f.write_bytes(b"\xff" * f.stat().st_size)


def test_a_corrupt_newest_checkpoint_falls_back_to_the_newest_intact_one(two_datasets, tmp_path):
    data, _ = two_datasets
    run = tmp_path / "run"
    t = trainer(config(data, run, max_steps=6, keep_checkpoints=3))
    t.train()
    assert [p.name for p in t.checkpoints.all()] == ["step_00000002", "step_00000004", "step_00000006"]
    corrupt(run / "checkpoints" / "step_00000006")
    with pytest.warns(UserWarning, match=r"step_00000006.*resuming from step_00000004"):
        r = trainer(config(data, run, max_steps=8, keep_checkpoints=3))
    assert r.step == 4 and max(m["step"] for m in read_metrics(run)) == 4
    assert r.train().step == 8

    # the pointer naming a checkpoint that is gone: the newest one there is used
    (run / "checkpoints" / "latest").write_text("step_00000099\n")
    with pytest.warns(UserWarning, match="step_00000099.*resuming from step_00000008"):
        assert trainer(config(data, run, max_steps=8, keep_checkpoints=3)).step == 8

    # none intact: a clear error naming the way out, the run left as it is
    for p in CheckpointManager(run / "checkpoints").all():
        corrupt(p)
    before = snapshot(run)
    with pytest.raises(TrainingError, match="no intact checkpoint.*resume=False"):
        trainer(config(data, run, max_steps=10, keep_checkpoints=3))
    line = one_line_error(cryovae_train("--config", _saved(tmp_path, data, run)))
    assert "no intact checkpoint" in line and "--restart" in line
    assert snapshot(run) == before


def _saved(tmp_path, data, run) -> Path:
    path = tmp_path / "resume.json"
    save_config(config(data, run, max_steps=10, keep_checkpoints=3), path)
    return path


def test_inference_reads_the_newest_intact_checkpoint(two_datasets, tmp_path):
    from cryovae_nb.inference import load_run

    data, _ = two_datasets
    run = tmp_path / "run"
    trainer(config(data, run, max_steps=4)).train()
    corrupt(run / "checkpoints" / "step_00000004")
    with pytest.warns(UserWarning, match="step_00000004.*step_00000002"):
        loaded = load_run(run)
    assert loaded.step == 2


def test_fingerprint_differences_say_what_differs():
    a = {"n_particles": 10, "box": 16, "pixel_size": 2.0, "data_bytes": 5, "stack_bytes": 100,
         "sample_sha256": "x"}
    assert rundir.fingerprint_differences(a, dict(a)) == []
    assert rundir.fingerprint_differences(a, {**a, "pixel_size": 2.0 * (1 + 1e-9)}) == []
    diffs = rundir.fingerprint_differences(a, {**a, "n_particles": 12, "pixel_size": 3.0, "sample_sha256": "y"})
    assert diffs == ["particle count 10 -> 12", "pixel size (Å) 2.0 -> 3.0", "hash of sampled images differ"]
    # a record from before fingerprints: only the fields both have are compared
    assert rundir.fingerprint_differences({"n_particles": 10, "box": 16}, a) == []

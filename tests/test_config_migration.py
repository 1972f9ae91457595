"""Config files written before ModelConfig had sections still load, to the same effective values,
and a run folder written then resumes; configs of today round-trip through JSON and YAML.

Fixtures: tests/data/legacy_run_v1/ (made by its make_fixture.py with the code before the sections):
train.yaml (a user's config: flat model, learning_rate set twice, pose_mode null) and run/ (a
2-step run: config.json/.yaml with the trainer's values copied into the model, checkpoint, metrics).
"""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from cryovae_nb.config import from_dict, load_config, save_config, to_dict
from cryovae_nb.errors import ConfigError
from cryovae_nb.model.config import OPTION_NAMES, TRAINER_OPTIONS, ModelConfig
from cryovae_nb.training.config import TrainConfig

FIXTURE = Path(__file__).parent / "data" / "legacy_run_v1"


def read(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) if path.suffix == ".yaml" else json.loads(path.read_text())


def flat_options(model: ModelConfig) -> dict:
    """``model`` by the flat option names of the files before the sections."""
    return {name: getattr(getattr(model, section), key) for name, (section, key) in OPTION_NAMES.items()}


@pytest.mark.parametrize("name", ["run/config.json", "run/config.yaml", "train.yaml"])
def test_old_config_files_load_to_the_same_effective_values(name):
    old = read(FIXTURE / name)
    cfg = load_config(TrainConfig, FIXTURE / name)
    # every model option, now in its section; options added since (not in the file) take their defaults
    written = {k: v for k, v in old["model"].items() if k not in TRAINER_OPTIONS}
    defaults = flat_options(ModelConfig())
    assert flat_options(cfg.model) == {**{k: defaults[k] for k in OPTION_NAMES if k not in written}, **written}
    # the trainer's options: the top level's values (those the old trainer used)
    assert (cfg.learning_rate, cfg.batch_size, cfg.seed) == (1e-3, 16, 3)
    assert cfg.model.pose.mode == "learned" and cfg.model.pose.search_deg == 30.0
    assert cfg.model.architecture.box == 16 and cfg.model.loss.beta == 0.5
    rest = {k: v for k, v in old.items() if k not in ("model", "learning_rate", "pose_mode")}
    assert {k: v for k, v in to_dict(cfg).items() if k in rest} == rest


def test_the_duplicated_options_resolve_as_the_old_trainer_did():
    old = read(FIXTURE / "train.yaml")
    assert old["learning_rate"] == 1e-3 and old["model"]["learning_rate"] == 2e-5
    # a null top-level rate: the model's
    assert from_dict(TrainConfig, {**old, "learning_rate": None}).learning_rate == 2e-5
    # neither: the default
    model = {k: v for k, v in old["model"].items() if k != "learning_rate"}
    assert from_dict(TrainConfig, {**old, "model": model, "learning_rate": None}).learning_rate == 1e-5
    # a top-level pose_mode wins over the model's; null leaves the model's
    assert from_dict(TrainConfig, {**old, "pose_mode": "known"}).model.pose.mode == "known"
    assert from_dict(TrainConfig, {**old, "pose_mode": None}).model.pose.mode == "learned"
    # the model's copies of batch_size and seed were the trainer's: they are dropped
    cfg = from_dict(TrainConfig, {**old, "batch_size": 8, "seed": 1})
    assert (cfg.batch_size, cfg.seed) == (8, 1)
    # a bare flat model dict (ModelConfig files) loads too
    assert flat_options(from_dict(ModelConfig, old["model"])) == flat_options(cfg.model)


def test_a_model_dict_mixing_a_section_and_its_flat_options_is_refused():
    with pytest.raises(ConfigError, match="architecture"):
        from_dict(ModelConfig, {"architecture": {"box": 16}, "latent_dim": 2})
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(ModelConfig, {"architecture": {"box": 16}, "bogus": 1})


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_new_configs_round_trip_in_sections(tmp_path, suffix):
    model = ModelConfig.preset("seed", box=16, pose_mode="known", latent_band=0.2, max_shift=1.5)
    cfg = TrainConfig(data="p.star", model=model, learning_rate=3e-4, batch_size=8, seed=2)
    save_config(cfg, tmp_path / f"c{suffix}")
    data = read(tmp_path / f"c{suffix}")
    assert set(data["model"]) == {"architecture", "loss", "pose", "latent"}
    assert "pose_mode" not in data and data["model"]["pose"]["mode"] == "known"
    assert not set(TRAINER_OPTIONS) & set(data["model"]["architecture"])
    back = load_config(TrainConfig, tmp_path / f"c{suffix}")
    assert back == cfg and to_dict(back) == to_dict(cfg)


def test_a_run_folder_written_before_the_sections_resumes(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    from cryovae_nb.training.trainer import Trainer

    work = tmp_path / "legacy"
    shutil.copytree(FIXTURE, work)
    monkeypatch.chdir(work)  # the old config names its data and run folder relative to here
    cfg = from_dict(TrainConfig, {**read(work / "run" / "config.json"), "max_steps": 4})
    with pytest.warns(UserWarning, match="data moved"):  # the copy's path differs; its content not
        trainer = Trainer(cfg, progress=False)
    assert trainer.step == 2  # restored from the old checkpoint
    result = trainer.train()
    assert result.step == 4
    # a resume keeps the run's record as it was written (trainer.py), and it still loads
    assert read(work / "run" / "config.json") == read(FIXTURE / "run" / "config.json")
    assert dataclasses.replace(load_config(TrainConfig, work / "run" / "config.json"), max_steps=4) == trainer.config
    steps = [json.loads(line)["step"] for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4 and steps[:4] == [1, 1, 2, 2]

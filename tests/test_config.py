import dataclasses

import pytest

from cryovae_nb.config import load_config, save_config
from cryovae_nb.errors import ConfigError


@dataclasses.dataclass
class Inner:
    a: int = 1
    b: tuple = (1, 2)


@dataclasses.dataclass
class Outer:
    name: str = "x"
    inner: Inner = dataclasses.field(default_factory=Inner)
    rate: float = 1e-5


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_roundtrip(tmp_path, suffix):
    cfg = Outer(name="run", inner=Inner(a=3, b=(4, 5)), rate=2e-4)
    save_config(cfg, tmp_path / f"c{suffix}")
    assert load_config(Outer, tmp_path / f"c{suffix}") == cfg


def test_unknown_key_named(tmp_path):
    (tmp_path / "c.json").write_text('{"nmae": "typo"}')
    with pytest.raises(ConfigError, match="nmae"):
        load_config(Outer, tmp_path / "c.json")


def test_bad_json_names_file(tmp_path):
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ConfigError, match="c.json"):
        load_config(Outer, tmp_path / "c.json")


@pytest.mark.parametrize("text,match", [
    ('inner:\n  a: "abc"\n', r"c\.yaml: Inner\.a must be an integer \(int\), got 'abc' \(str\)"),
    ("inner:\n  a: true\n", r"Inner\.a must be an integer"),            # a bool is not a count
    ("inner:\n  a: 2.5\n", r"Inner\.a must be an integer"),
    ("rate: fast\n", r"Outer\.rate must be a number \(float\), got 'fast'"),
    ("rate: .nan\n", r"Outer\.rate must be a finite number"),
    ("rate: .inf\n", r"Outer\.rate must be a finite number"),
    ("name: 3\n", r"Outer\.name must be a string"),
    ("inner: 3\n", r"Outer\.inner must be a mapping"),
])
def test_wrong_types_are_refused_on_load_naming_file_field_and_type(tmp_path, text, match):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(Outer, tmp_path / "c.yaml")


def test_numbers_are_converted_where_the_type_allows(tmp_path):
    # PyYAML reads 1e-4 (no dot) as a string; an int is a fine float
    (tmp_path / "c.yaml").write_text("rate: 1e-4\ninner:\n  b: [4, 5]\n")
    assert load_config(Outer, tmp_path / "c.yaml") == Outer(rate=1e-4, inner=Inner(b=(4, 5)))
    (tmp_path / "c.json").write_text('{"rate": 2}')
    loaded = load_config(Outer, tmp_path / "c.json")
    assert loaded.rate == 2.0 and isinstance(loaded.rate, float)


def test_train_config_types_optional_and_tuples():
    from cryovae_nb.config import from_dict
    from cryovae_nb.synthetic import SimulationConfig
    from cryovae_nb.training.config import TrainConfig

    assert from_dict(TrainConfig, {"learning_rate": None, "max_time_s": 5}).max_time_s == 5.0
    with pytest.raises(ConfigError, match=r"TrainConfig\.max_time_s must be float or null"):
        from_dict(TrainConfig, {"max_time_s": "fast"})
    with pytest.raises(ConfigError, match=r"ArchitectureConfig\.latent_dim must be an integer"):
        from_dict(TrainConfig, {"model": {"architecture": {"latent_dim": "8"}}})
    with pytest.raises(ConfigError, match=r"SimulationConfig\.defocus_range\[1\] must be a number"):
        from_dict(SimulationConfig, {"defocus_range": [1000, "x"]})
    with pytest.raises(ConfigError, match=r"defocus_range must be a list of 2 values"):
        from_dict(SimulationConfig, {"defocus_range": [1000]})


def test_configs_built_in_python_are_type_checked_too():
    import numpy as np
    from pathlib import Path

    from cryovae_nb.launch import SlurmOptions
    from cryovae_nb.model import ModelConfig
    from cryovae_nb.preprocess import PreprocessConfig
    from cryovae_nb.training.config import TrainConfig

    TrainConfig(data=Path("p.star"), run_dir=Path("run"), batch_size=np.int64(8)).validate()
    PreprocessConfig(box=np.int32(12), spread=np.float32(0.3)).validate()
    for build, match in [(lambda: TrainConfig(batch_size="abc"), r"TrainConfig\.batch_size must be an integer"),
                         (lambda: ModelConfig().with_options(beta=float("nan")),
                          r"LossConfig\.beta must be a finite number"),
                         (lambda: PreprocessConfig(pixel_size=float("inf")), r"pixel_size must be a finite"),
                         (lambda: SlurmOptions(nodes=True), r"SlurmOptions\.nodes must be an integer")]:
        with pytest.raises(ConfigError, match=match):
            build().validate()

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

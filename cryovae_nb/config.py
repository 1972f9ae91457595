"""Dataclass configs that round-trip through JSON and YAML (never pickle)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from cryovae_nb.atomic import write_text_atomic
from cryovae_nb.errors import ConfigError

T = TypeVar("T")


def to_dict(cfg) -> dict[str, Any]:
    """A dataclass (possibly nested) -> plain JSON-compatible dict."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, Path):
            v = str(v)
        out[f.name] = v
    return out


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check_value(where: str, v, hint):
    """``v`` converted to ``hint`` (int -> float, list -> tuple), or a ConfigError naming the field
    and the type expected: a YAML ``batch_size: "abc"`` must fail on load, not deep in training."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if v is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(where, v, a)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1 and "finite" in str(errors[0]):
            raise errors[0]  # the right type, a wrong value: say that, not the type
        want = " or ".join("null" if a is type(None) else "true or false" if a is bool else _type_name(a)
                           for a in args)
        raise ConfigError(f"{where} must be {want}, got {v!r} ({type(v).__name__})")
    if hint is tuple or origin is tuple:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {v!r} ({type(v).__name__})")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_value(f"{where}[{i}]", x, args[0]) for i, x in enumerate(v))
        if args:
            if len(v) != len(args):
                raise ConfigError(f"{where} must be a list of {len(args)} values, got {v!r}")
            return tuple(_check_value(f"{where}[{i}]", x, a) for i, (x, a) in enumerate(zip(v, args)))
        return tuple(v)
    if hint is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{where} must be true or false, got {v!r} ({type(v).__name__})")
        return v
    if hint is int:
        # bool is an int subclass, but `batch_size: true` is a mistake, not 1
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{where} must be an integer (int), got {v!r} ({type(v).__name__})")
        return v
    if hint is float:
        if isinstance(v, str):
            # PyYAML reads `1e-5` (no dot) as a string; a number written that way is still a number
            try:
                v = float(v)
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{where} must be a number (float), got {v!r} ({type(v).__name__})")
        if not math.isfinite(v):
            raise ConfigError(f"{where} must be a finite number, got {v!r}")
        return float(v)
    if hint is str:
        if not isinstance(v, str):
            raise ConfigError(f"{where} must be a string (str), got {v!r} ({type(v).__name__})")
        return v
    if dataclasses.is_dataclass(hint):
        if not isinstance(v, dict):
            raise ConfigError(f"{where} must be a mapping ({hint.__name__}), got {v!r} ({type(v).__name__})")
        return from_dict(hint, v)
    return v  # a type we do not check (none in our configs today)


def check_fields(cfg) -> None:
    """ConfigError unless every field of dataclass ``cfg`` holds a value of its declared type, so a
    config built in a notebook (``TrainConfig(batch_size="abc")``) fails like one read from a file.
    Numpy scalars count as numbers and paths as strings; nested dataclasses check themselves."""
    import numpy as np

    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        v, hint = getattr(cfg, f.name), hints.get(f.name)
        if dataclasses.is_dataclass(hint) and dataclasses.is_dataclass(v):
            continue
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, os.PathLike):
            v = os.fspath(v)
        _check_value(f"{type(cfg).__name__}.{f.name}", v, hint)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys with a clear message.

    ``cls.migrate(data)`` (a static method, if any) first rewrites a dict of an older layout; keys
    in ``cls.RENAMED_OPTIONS`` (a class attribute ``{old name: new name}``, if any) are read under
    their new names."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    # a file written by an older version still loads: the class rewrites its old layout
    migrate = getattr(cls, "migrate", None)
    if callable(migrate):
        data = migrate(data)
    # a field renamed since a file was written still loads: the class maps old keys to new ones
    for old, new in getattr(cls, "RENAMED_OPTIONS", {}).items():
        if old in data:
            if new in data:
                raise ConfigError(f"{cls.__name__}: both {old!r} and its new name {new!r} given")
            data = {(new if k == old else k): v for k, v in data.items()}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown option(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        v = data[f.name]
        hint = hints.get(f.name)
        if dataclasses.is_dataclass(hint) and isinstance(v, dict):
            v = from_dict(hint, v)
        else:
            v = _check_value(f"{cls.__name__}.{f.name}", v, hint)
        kwargs[f.name] = v
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def save_config(cfg, path: str | os.PathLike) -> None:
    """Write ``cfg`` as JSON or YAML, chosen by the suffix (.json, .yaml/.yml)."""
    path = Path(path)
    data = to_dict(cfg)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    else:
        text = json.dumps(data, indent=2) + "\n"
    write_text_atomic(path, text)


def load_config(cls: type[T], path: str | os.PathLike) -> T:
    """Read a JSON or YAML config file into dataclass ``cls``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # yaml/json parse errors carry line numbers worth showing
        raise ConfigError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: {e}") from None
    try:
        return from_dict(cls, data or {})
    except (TypeError, ConfigError) as e:
        raise ConfigError(f"{path}: {e}") from None

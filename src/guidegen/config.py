"""Frozen dataclass configs ⇄ JSON, saved beside every checkpoint."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from guidegen.errors import InputError

T = TypeVar("T")


def config_to_dict(config: Any) -> dict[str, Any]:
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _coerce(tp: Any, value: Any) -> Any:
    """Turn JSON lists back into tuples (and nested dataclasses into instances) following type hints."""
    origin = typing.get_origin(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return config_from_dict(tp, value)
    if origin in (tuple,) and isinstance(value, list):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        if args and len(args) == len(value):
            return tuple(_coerce(a, v) for a, v in zip(args, value))
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value)
            except (TypeError, ValueError):
                continue
    return value


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from a dict; unknown keys are an error (a config from another version)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    kwargs = {k: _coerce(hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(
        json.dumps({"_class": type(config).__name__, **config_to_dict(config)}, indent=1) + "\n", encoding="utf-8"
    )


def load_config(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"is not a valid JSON config ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "must hold a JSON object")
    name = data.pop("_class", cls.__name__)
    if name != cls.__name__:
        raise InputError(path, f"holds a {name}, expected a {cls.__name__}")
    try:
        return config_from_dict(cls, data)
    except (TypeError, ValueError) as exc:
        raise InputError(path, str(exc)) from None

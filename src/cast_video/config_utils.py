"""Typed dataclass configs from YAML and `key.sub=value` overrides, with errors that name the key."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError  # noqa: F401  (re-exported)

T = TypeVar("T")


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid keys: {', '.join(sorted(options))})"


def _union(value: Any, args: tuple, path: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _convert(value, arg, path)
        except ConfigError as err:
            errors.append(str(err))
    raise ConfigError(errors[0] if errors else f"{path}: cannot be {value!r}")


def _dataclass(value: Any, tp: Any, path: str) -> Any:
    if isinstance(value, tp):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
    return from_dict(tp, value, path)


def _sequence(value: Any, origin: Any, args: tuple, path: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path}: expected a list, got {value!r}")
    item = args[0] if args else Any
    out = [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    return out if origin is list else tuple(out)


def _mapping(value: Any, args: tuple, path: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping, got {value!r}")
    return {k: _convert(v, args[1] if args else Any, f"{path}.{k}") for k, v in value.items()}


def _number(value: Any) -> float | None:
    """A float from a number or a numeric string ("1e-3", which YAML 1.1 reads as a string); None if not."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


# scalar type -> (conversion returning None when the value does not fit, what was expected)
_SCALARS = {
    bool: (lambda v: v if isinstance(v, bool) else None, "true or false"),
    float: (_number, "a number"),
    int: (lambda v: v if isinstance(v, int) and not isinstance(v, bool) else None, "an integer"),
    str: (lambda v: v if isinstance(v, str) else None, "a string"),
}


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _union(value, args, path)
    if dataclasses.is_dataclass(tp):
        return _dataclass(value, tp, path)
    if origin in (list, tuple):
        return _sequence(value, origin, args, path)
    if origin is dict:
        return _mapping(value, args, path)
    if tp in _SCALARS:
        convert, expected = _SCALARS[tp]
        out = convert(value)
        if out is None:
            raise ConfigError(f"{path}: expected {expected}, got {value!r}")
        return out
    return value


def from_dict(cls: type[T], data: dict, path: str = "") -> T:
    """Build dataclass `cls` from a plain mapping, checking every key and value against the fields."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            raise ConfigError(f"unknown config key {where!r}" + _suggest(key, list(fields)))
        kwargs[key] = _convert(value, hints[key], where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path or cls.__name__}: {err}") from err


def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML-friendly data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value), the value read as YAML (so 3, 0.5, true, [1, 2] and null work).
    A value that is not YAML (`{participant_id}/{video_id}.mp4`) is the string as typed: the field's
    type is checked when the config is built, so a list or number field still refuses it by name."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    if not raw.strip():
        return key.strip(), ""
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError:
        return key.strip(), raw


def _field_type(tp: Any) -> Any:
    """The type an override walks into: Optional[X] is X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return tp


def set_typed(data: dict, cls: type, key: str, value: Any) -> None:
    """Set dotted `key` in the plain mapping `data` of dataclass `cls`, walking the fields' types.

    Dataclass fields must exist (the error names the key and suggests one). Inside a free-form mapping
    (`dict[str, Any]`, such as `model.overrides`) a key is added or merged, never the whole mapping
    replaced, and the rest of a dotted key stays one key there: `model.overrides.spatial.depth=2` sets
    `{"spatial.depth": 2}`, the dotted form that `preset_config` reads."""
    node, tp = data, cls
    parts = key.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            names = [f.name for f in dataclasses.fields(tp) if f.init]
            if part not in names:
                raise ConfigError(f"unknown config key {where!r}" + _suggest(part, names))
            tp = _field_type(hints[part])
        elif typing.get_origin(tp) is dict:
            inner = _field_type((typing.get_args(tp) or (str, Any))[1])
            if not (dataclasses.is_dataclass(inner) or typing.get_origin(inner) is dict):
                node[".".join(parts[i:])] = value  # a leaf of a free-form mapping
                return
            tp = inner
        else:
            raise ConfigError(f"unknown config key {where!r}: {'.'.join(parts[:i])} is not a mapping")
        if last:
            node[part] = value
        else:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]


def apply_overrides(obj: T, overrides: list[str] | dict[str, Any]) -> T:
    """A copy of dataclass `obj` with dotted overrides applied and re-validated."""
    data = to_dict(obj)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for key, value in items:
        set_typed(data, type(obj), key, value)
    return from_dict(type(obj), data)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping; a `_base_: other.yaml` key (relative to this file) is read first and updated
    with this file's keys, so an ablation config states only what it changes."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("_base_", None)
    return _merge(read_yaml(path.parent / base), data) if base else data


def read_config(cls: type, path: str | Path, overrides: list[str] | None = None) -> dict:
    """The YAML file as a plain mapping with the overrides merged in (keys checked against `cls`)."""
    data = read_yaml(path)
    for key, value in map(parse_override, overrides or []):
        set_typed(data, cls, key, value)
    return data


def load_yaml(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    return config_from(cls, read_config(cls, path, overrides), path)


def config_from(cls: type[T], data: dict, path: str | Path) -> T:
    """`from_dict`, with the file named in the error."""
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err

"""The one configuration mechanism: typed dataclasses, filled from defaults ← a preset ← a TOML/YAML/JSON
file ← ``section.key=value`` overrides.

Every command resolves its config this way (the command line's ``--config FILE --set KEY=VALUE``) and
writes the result next to its outputs (``config.json``), so a run can be repeated exactly. Nested
dataclasses are addressed with dots (``optim.lr=1e-5``, ``model.rehyat.chunk_frames=3``); values are
parsed as JSON where they can be (numbers, booleans, lists, null) and kept as strings otherwise, then
checked against the field's type: an unknown key or a wrong type is a ValueError naming it. Code that
drives another stage builds the dataclass itself, never a string of overrides.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

T = TypeVar("T")


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return tomllib.loads(path.read_text())
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as error:
            raise ValueError(
                f"config file {path}: YAML needs pyyaml (pip install 'rehyat[train]')"
            ) from error

        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
        return data
    if suffix == ".json":
        return json.loads(path.read_text())
    raise ValueError(f"config file {path} must be .toml, .yaml, .yml or .json")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _set_nested(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        if data.get(key) is None:  # an unset optional section (None) starts empty
            data[key] = {}
        data = data[key]
        if not isinstance(data, dict):
            raise ValueError(f"override {dotted}: {key} is not a section")
    data[leaf] = value


def _coerce(value: Any, annotation: Any, where: str, strict: bool = False) -> Any:
    """Check ``value`` against a field type (a subset of typing: scalars, Optional/Union, list, tuple,
    dict, Literal, dataclasses). ``strict`` (used inside unions first) converts nothing."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a section (mapping), got {value!r}")
        return _build(annotation, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        errors = []
        for strict_pass in (True, False):  # an exact match first: blocks=3 stays an int, never "3"
            for option in typing.get_args(annotation):
                try:
                    return _coerce(value, option, where, strict_pass)
                except ValueError as error:
                    errors.append(str(error))
        raise ValueError(f"{where}: {value!r} matches none of {annotation} ({'; '.join(errors)})")
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise ValueError(f"{where} must be one of {list(typing.get_args(annotation))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        items = [_coerce(v, item, f"{where}[{i}]", strict) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return value
    if annotation is type(None):
        if value is not None:
            raise ValueError(f"{where} must be null, got {value!r}")
        return None
    if not strict and annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not strict and annotation is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ValueError(f"{where} must be {annotation.__name__}, got {value!r}")
    if annotation in (int, float) and isinstance(value, bool):
        raise ValueError(f"{where} must be {annotation.__name__}, got {value!r}")
    return value


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s) {[prefix + k for k in unknown]}; known: {sorted(fields)}")
    values = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**values)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: T | None = None,
) -> T:
    """Build ``cls`` from its defaults ← ``base`` (a preset instance) ← a file ← ``key=value`` overrides;
    raise ``ValueError`` naming the key on bad input."""
    data: dict[str, Any] = config_to_dict(base) if base is not None else {}
    if path:
        data = _merge(data, _read_file(Path(path)))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"override {item!r} must look like key=value (section.key=value for a nested field)"
            )
        _set_nested(data, key.strip(), _parse_value(text.strip()))
    return _build(cls, data)


def replace_config(config: T, overrides: list[str] | tuple[str, ...]) -> T:
    """``config`` with ``key=value`` overrides applied (type-checked like :func:`load_config`)."""
    return load_config(type(config), None, overrides, base=config)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def write_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as JSON (atomically: a partial file is never left behind)."""
    from rehyat.utils import atomic_write_text

    atomic_write_text(Path(path), json.dumps(config_to_dict(config), indent=2) + "\n")

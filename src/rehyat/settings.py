"""The one configuration mechanism: typed dataclasses, filled from defaults ← a preset ← a TOML/YAML/JSON
file ← ``section.key=value`` overrides.

Every command resolves its config this way (the command line's ``--config FILE --set KEY=VALUE``) and
writes the result next to its outputs (``config.json``), so a run can be repeated exactly. Nested
dataclasses are addressed with dots (``optim.lr=1e-5``, ``model.rehyat.chunk_frames=3``); a value is
read by its field's declared type: a ``str`` field takes the text exactly as typed (``2.10`` stays
``"2.10"``; JSON quotes, ``"null"``, force a string where a union would read something else), other
fields read it as JSON (numbers, booleans, lists, null). A number that a config file gives a ``str``
field keeps its spelling as well. An unknown key, a wrong type or a file that cannot be read as a
mapping is a ValueError, on one line, naming the key or the file. Code that drives another stage builds
the dataclass itself, never a string of overrides.
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


class _Spelled:
    """A number parsed from a file or an override that remembers its spelling, for ``str`` fields."""

    text: str

    def __new__(cls, text: str, value: Any = None):
        number = super().__new__(cls, text if value is None else value)
        number.text = text
        return number


class _TextFloat(_Spelled, float):
    pass


class _TextInt(_Spelled, int):
    pass


@dataclasses.dataclass(frozen=True)
class _Typed:
    """An override's text, kept until its field's type says how to read it."""

    text: str


def _json_loads(text: str) -> Any:
    return json.loads(text, parse_float=_TextFloat, parse_int=_TextInt, parse_constant=_TextFloat)


def _yaml_loader():
    """A SafeLoader whose numbers remember their spelling."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def number(kind, construct):
        return lambda loader, node: kind(node.value, construct(loader, node))

    Loader.add_constructor(
        "tag:yaml.org,2002:float", number(_TextFloat, yaml.SafeLoader.construct_yaml_float)
    )
    Loader.add_constructor("tag:yaml.org,2002:int", number(_TextInt, yaml.SafeLoader.construct_yaml_int))
    return Loader


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _parse_text(kind: str, text: str) -> Any:
    if kind == "YAML":
        import yaml

        return yaml.load(text, Loader=_yaml_loader()) or {}  # a SafeLoader: no tags run code
    if kind == "TOML":
        return tomllib.loads(text, parse_float=_TextFloat)
    return _json_loads(text)


def _read_file(path: Path) -> dict[str, Any]:
    """The file's top-level mapping. Every problem with the file (missing, a folder, unreadable, not
    UTF-8, bad syntax, not a mapping) is one ValueError that names it."""
    if path.is_dir():
        raise ValueError(f"config file {path} is a folder, not a file")
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    kinds = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}
    if suffix not in kinds:
        raise ValueError(f"config file {path} must be .toml, .yaml, .yml or .json")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"config file {path} is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    except OSError as error:
        raise ValueError(f"config file {path} cannot be read: {error.strerror or error}") from None
    try:
        data = _parse_text(kinds[suffix], text)
    except ImportError as error:
        raise ValueError(f"config file {path}: YAML needs pyyaml (pip install 'rehyat[train]')") from error
    except Exception as error:  # each parser's own error class (yaml's is no ValueError)
        raise ValueError(f"config file {path} is not valid {kinds[suffix]}: {_one_line(error)}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"config file {path} must hold a mapping of keys at the top level, got {type(data).__name__}"
        )
    _check_keys(data, f"config file {path}")
    return data


def _check_keys(data: dict[Any, Any], where: str, prefix: str = "") -> None:
    """Every key of a mapping, nested ones included, is a string (YAML allows ``1: 2``)."""
    for key, value in data.items():
        if not isinstance(key, str):
            raise ValueError(f"{where}: keys must be strings, got {prefix}{key!r}")
        if isinstance(value, dict):
            _check_keys(value, where, f"{prefix}{key}.")


def _parse_value(text: str) -> Any:
    try:
        return _json_loads(text)
    except (ValueError, RecursionError):
        return text


def _plain(value: Any) -> Any:
    """``value`` with every remembered-spelling number back to a plain int or float."""
    if isinstance(value, _TextFloat):
        return float(value)
    if isinstance(value, _TextInt):
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


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
    dict, Literal, dataclasses). ``strict`` (used inside unions first) converts nothing. An override's
    text (:class:`_Typed`) is read here, once the type is known."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for strict_pass in (True, False):  # an exact match first: blocks=3 stays an int, never "3"
            for option in typing.get_args(annotation):
                try:
                    return _coerce(value, option, where, strict_pass)
                except ValueError as error:
                    if str(error) not in errors:  # the loose pass often fails as the strict one did
                        errors.append(str(error))
        shown = value.text if isinstance(value, _Typed) else _plain(value)
        raise ValueError(f"{where}: {shown!r} matches none of {annotation} ({'; '.join(errors)})")
    if isinstance(value, _Typed):
        parsed = _parse_value(value.text)
        if annotation is str and not strict:  # the text as typed, or what its JSON quotes hold
            return parsed if isinstance(parsed, str) else value.text
        value = parsed
    if annotation is str and not strict and isinstance(value, _Spelled):
        return value.text
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {_plain(value)!r}")
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        items = [_coerce(v, item, f"{where}[{i}]", strict) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a section (mapping), got {_plain(value)!r}")
        return _build(annotation, value, where + ".")
    value = _plain(value)
    if annotation is Any:
        return value
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise ValueError(f"{where} must be one of {list(typing.get_args(annotation))}, got {value!r}")
        return value
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
        _set_nested(data, key.strip(), _Typed(text.strip()))
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

"""JSON files as dataclasses: the one class that defines a file both writes it and reads it back.

A :class:`Record` writes its fields in declaration order (``to_dict``, ``save``) and reads a file
back with every value checked against its field's type, once (``from_dict``, ``from_file``), so code
that reads one uses attributes and never meets a wrong type; a problem is a :class:`FormatError`
that names the file and the key. A field with a default may be absent (the file was written before
the field existed); a key no field names is an error, unless a field holds the rest (:data:`REST`).

Field types understood: ``bool``, ``int``, ``float`` (an int is accepted and kept as written),
``str``, ``Any`` (not checked), ``X | None``, ``list[X]``, ``dict[str, X]``, a Record, and a union of
Records, read as the first one whose required keys the object has (``LMLoss | Skipped``).
"""

from __future__ import annotations

import json
import os
import types
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from phf.errors import PhfError
from phf.io.atomic import write_text_atomic

R = TypeVar("R", bound="Record")


class FormatError(PhfError, ValueError):
    """A JSON file is not in the form its Record reads; the message names the file and the key."""


# Field metadata (``field(default=None, metadata=OMIT_NONE)``):
OMIT_NONE = {"omit_none": True}  # a key only some files have: absent when the value is None, None when absent
REST = {"rest": True}  # a dict field (default_factory=dict) that holds every key the other fields do not name


def json_key(key: str) -> dict[str, str]:
    """Metadata of a field written under another key than its name."""
    return {"key": key}


class Record:
    """Base of the dataclasses that are JSON files, or objects inside one."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]  # every subclass is a dataclass
            value = getattr(self, f.name)
            if f.metadata.get("rest"):
                out.update(_plain(value))
            elif value is not None or not f.metadata.get("omit_none"):
                out[_key(f)] = _plain(value)
        return out

    @classmethod
    def from_dict(cls: type[R], data: Any, source: str = "JSON") -> R:
        """``data`` (parsed JSON) checked and read; ``source`` (the file) starts each error message."""
        return _read(cls, data, source, "")

    def save(self, path: str | os.PathLike) -> None:
        """Written whole or not at all (:func:`phf.io.atomic.write_text_atomic`)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_file(cls: type[R], path: str | os.PathLike) -> R:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise FormatError(f"{path} cannot be read: {exc.strerror or exc}") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"{path} is not JSON ({exc})") from exc
        return cls.from_dict(data, str(path))


def _key(f: Field) -> str:
    return f.metadata.get("key", f.name)


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


_SCHEMAS: dict[type, tuple[list[tuple[Field, Any]], frozenset[str]]] = {}


def _schema(cls: type[Record]) -> tuple[list[tuple[Field, Any]], frozenset[str]]:
    """(each field with its resolved type, the keys a file must have)."""
    if cls not in _SCHEMAS:
        hints = get_type_hints(cls)
        named = [(f, hints[f.name]) for f in fields(cls)]  # type: ignore[arg-type]
        required = [f for f, _ in named if f.default is MISSING and f.default_factory is MISSING]
        _SCHEMAS[cls] = named, frozenset(_key(f) for f in required)
    return _SCHEMAS[cls]


def _fail(source: str, key: str, why: str) -> FormatError:
    return FormatError(f"{source}: key {key!r}: {why}" if key else f"{source}: {why}")


def _read(cls: type[R], data: Any, source: str, key: str) -> R:
    if not isinstance(data, dict):
        raise _fail(source, key, f"expected an object, got {_shown(data)}")
    named, required = _schema(cls)
    missing = [_key(f) for f, _ in named if _key(f) in required and _key(f) not in data]
    if missing:
        raise _fail(source, _join(key, missing[0]), "missing")
    values: dict[str, Any] = {}
    keys = {_key(f) for f, _ in named if not f.metadata.get("rest")}
    for f, kind in named:
        if f.metadata.get("rest"):
            values[f.name] = {k: v for k, v in data.items() if k not in keys}
        elif _key(f) in data:
            values[f.name] = _check(kind, data[_key(f)], source, _join(key, _key(f)))
    if not any(f.metadata.get("rest") for f, _ in named):
        unknown = [k for k in data if k not in keys]
        if unknown:
            raise _fail(source, _join(key, unknown[0]), f"unknown key (known: {', '.join(sorted(keys))})")
    return cls(**values)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _shown(value: Any) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _check(kind: Any, value: Any, source: str, key: str) -> Any:
    origin = get_origin(kind)
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):
        return _check_union(get_args(kind), value, source, key)
    if isinstance(kind, type) and issubclass(kind, Record):
        return _read(kind, value, source, key)
    if origin is list:
        if not isinstance(value, list):
            raise _fail(source, key, f"expected a list, got {_shown(value)}")
        (item,) = get_args(kind)
        return [_check(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(source, key, f"expected an object, got {_shown(value)}")
        _, item = get_args(kind)
        return {k: _check(item, v, source, _join(key, k)) for k, v in value.items()}
    if kind not in _SCALARS:
        raise TypeError(f"{key}: a Record field of type {kind!r} is not supported")
    # An int is a number too (kept as written); a bool is an int to Python, not to JSON.
    numeric = (int, float) if kind is float else kind
    if not isinstance(value, numeric) or (kind in (int, float) and isinstance(value, bool)):
        raise _fail(source, key, f"expected {_SCALARS[kind]}, got {_shown(value)}")
    return value


def _check_union(arms: tuple[Any, ...], value: Any, source: str, key: str) -> Any:
    if value is None:
        if type(None) in arms:
            return None
        raise _fail(source, key, "expected a value, got null")
    kinds = [a for a in arms if a is not type(None)]
    records = [a for a in kinds if isinstance(a, type) and issubclass(a, Record)]
    if len(kinds) == 1:
        return _check(kinds[0], value, source, key)
    if len(records) != len(kinds):
        raise TypeError(f"{key}: a union of {kinds!r} is not supported (only Records, or one type and None)")
    if not isinstance(value, dict):
        raise _fail(source, key, f"expected an object, got {_shown(value)}")
    for arm in records:
        if _schema(arm)[1] <= value.keys():
            return _read(arm, value, source, key)
    # None fits: read it as the one it resembles most, whose error names what it lacks.
    closest = max(records, key=lambda a: len(_schema(a)[1] & value.keys()))
    return _read(closest, value, source, key)

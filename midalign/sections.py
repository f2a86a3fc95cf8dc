"""Typed settings sections: YAML mappings and command-line text read into dataclasses, one set of
rules and error messages for `midalign train` configs (:mod:`midalign.training.config`) and
experiment recipes (:mod:`midalign.experiments.recipe`).

A section is a dataclass. A field's annotation says what it takes: ``str``, ``int``, ``float``,
``bool``, a ``Literal`` of choices, ``X | None``, ``list[X]`` (a YAML list or comma-separated
text; a single mapping for a list of sections), ``dict[str, X]``, ``dict[str, Any]`` (a mapping
read later), or a nested section; ``metadata["help"]`` documents it for ``--help``. A field
without a default is required. Reading rejects unknown keys and names every bad value by its
path, e.g. ``recipe.yaml: probe.normalize must be one of none, center, standardize, not 'x'``
or, for a command-line option, ``--normalize must be one of …``; a key left empty (``null``)
takes its default. A section may add rules about
its own values in a ``check(name, error)`` method, which :func:`check` calls after the choices of
its ``Literal`` fields (so objects built in Python, not read, are checked the same way).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from midalign.errors import InputError

T = TypeVar("T")
Name = Callable[[str], str]  # a key's path as its reader wrote it: an option, a recipe's path
Error = Callable[[str], Exception]


def setting(help: str, **kwargs: Any) -> Any:
    """A dataclass field documented by ``help`` (shown by ``--help``)."""
    return dataclasses.field(metadata={"help": help}, **kwargs)


def at(where: str, path: str) -> str:
    """``where: path``, or the path alone where it is already the whole location (an option)."""
    return f"{where}: {path}" if where else path


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(type, optional) of an annotation such as ``int | None``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        (rest,) = (a for a in args if a is not type(None))  # sections use X | None only
        return rest, True
    return tp, False


def choices(tp: Any) -> tuple[Any, ...] | None:
    """The choices of a ``Literal`` annotation (also inside ``X | None``), else None."""
    base, _ = _unwrap(tp)
    return typing.get_args(base) if typing.get_origin(base) is Literal else None


def hints(cls: type) -> dict[str, Any]:
    """Field name → resolved annotation of a section class."""
    return typing.get_type_hints(cls)


def convert(value: Any, tp: Any, where: str, path: str) -> Any:
    """``value`` (from YAML or command-line text) as the annotation ``tp`` takes it."""
    base, optional = _unwrap(tp)
    if optional and (
        value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
    ):
        if not (choices(base) and value in choices(base)):
            return None
    options = choices(base)
    if options is not None:
        if value not in options:
            shown = ", ".join(map(str, options))
            raise InputError(f"{at(where, path)} must be one of {shown}, not {value!r}")
        return value
    origin, args = typing.get_origin(base), typing.get_args(base)
    if dataclasses.is_dataclass(base):
        return read(base, value, where, path)
    if origin is list:
        item = args[0]
        if isinstance(value, list):
            return [convert(v, item, where, f"{path}[{i}]") for i, v in enumerate(value)]
        if dataclasses.is_dataclass(item) and isinstance(value, dict):
            return [read(item, value, where, path)]  # one section where a list may stand
        if isinstance(value, str):
            parts = [x.strip() for x in value.split(",") if x.strip()]
            return [convert(v, item, where, path) for v in parts]
        if isinstance(value, int | float) and not isinstance(value, bool) and item is not str:
            return [convert(value, item, where, path)]
        return _type_error(value, base, where, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{at(where, path)}: expected a mapping, got {value!r}")
        if args[1] is Any:
            return value
        return {str(k): convert(v, args[1], where, join(path, str(k))) for k, v in value.items()}
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("true", "yes", "1"):
                return True
            if text in ("false", "no", "0"):
                return False
            raise ValueError(value)
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if base is str:
            if isinstance(value, list):  # e.g. layers: [9, 18]
                return ",".join(str(x) for x in value)
            if isinstance(value, dict) or value is None:
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        pass
    return _type_error(value, base, where, path)


def _type_error(value: Any, tp: Any, where: str, path: str) -> Any:
    name = getattr(tp, "__name__", str(tp))
    raise InputError(f"{at(where, path)}: expected {name}, got {value!r}")


def read(cls: type[T], values: Any, where: str, path: str = "") -> T:
    """A ``cls`` section from its YAML mapping; every mistake is an InputError naming
    ``where`` and the key's path."""
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if not isinstance(values, dict):
        shown = f"{at(where, path)}:" if path else f"{where}:"
        raise InputError(f"{shown} expected a mapping with keys {', '.join(known)}")
    for key in values:
        if key not in known:
            raise InputError(
                f"{where}: unknown key {join(path, str(key))} (known: {', '.join(known)})"
            )
    types_ = hints(cls)
    kwargs = {}
    for name, f in known.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if values.get(name) is None and not required:
            continue  # absent, or left empty in YAML (``align:``): the default
        if name not in values:
            raise InputError(f"{at(where, join(path, name))} is required")
        kwargs[name] = convert(values[name], types_[name], where, join(path, name))
    return cls(**kwargs)


def set_text(section: Any, name: str, text: Any, option: str) -> None:
    """One field of ``section`` set from command-line text; errors name ``option``."""
    setattr(section, name, convert(text, hints(type(section))[name], "", option))


def check(
    section: Any,
    name: Name = lambda key: key,
    error: Error = InputError,
    path: str = "",
) -> None:
    """The rules of ``section`` and of its nested sections: each ``Literal`` field holds one of
    its choices, then the section's own ``check(name, error)``. ``name`` shows a key's path
    as its reader wrote it (an option, a recipe path, or the path itself)."""
    types_ = hints(type(section))
    for f in dataclasses.fields(section):
        value, key = getattr(section, f.name), join(path, f.name)
        options = choices(types_[f.name])
        if options is not None and value not in options and value is not None:
            shown = ", ".join(map(str, options))
            raise error(f"{name(key)} must be one of {shown}, not {value!r}")
        if dataclasses.is_dataclass(value):
            check(value, name, error, key)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check(item, name, error, f"{key}[{i}]")
    own = getattr(section, "check", None)
    if own is not None:
        own(lambda key: name(join(path, key)), error)


def positive(name: Name, error: Error, section: Any, *keys: str) -> None:
    """Each of ``keys`` of ``section`` is at least 1 where it is set (not None)."""
    for key in keys:
        value = getattr(section, key)
        if value is not None and value < 1:
            raise error(f"{name(key)} must be positive, not {value}")


def given(section: Any, implicit: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields of ``section`` a reader set: those not None and not at their ``implicit``
    value (what a step's hash covers, so that a setting left out and one given at its default
    hash alike)."""
    implicit = implicit or {}
    return {
        f.name: getattr(section, f.name)
        for f in dataclasses.fields(section)
        if getattr(section, f.name) is not None
        and implicit.get(f.name, object()) != getattr(section, f.name)
    }

"""Spec strings (``name`` or ``name:key=value,key=value``) and their typed options, shared by routers and weight
operators, the API, the CLI and sweep configs."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, Union, get_args, get_origin

from moeroute.core.errors import MoeRouteError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``"gshard:drop_policy=probs,renormalize=true"`` into ``("gshard", {"drop_policy": "probs", ...})``."""
    if not isinstance(spec, str) or not spec.strip():
        raise MoeRouteError(f"router spec must be a non-empty string, got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise MoeRouteError(f"bad option {item!r} in spec {spec!r}: expected key=value")
        options[key.strip()] = value.strip()
    return name.strip(), options


def format_spec(name: str, options: dict[str, Any]) -> str:
    """The canonical spec string: options sorted, values as given."""
    if not options:
        return name
    return name + ":" + ",".join(f"{k}={_fmt(v)}" for k, v in sorted(options.items()))


def _fmt(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` (often a string from a spec) to ``annotation`` (bool, int, float, str, Optional, Literal)."""
    origin = get_origin(annotation)
    if origin is tuple:
        # tuple[X, ...]: a list, or one scalar meaning a list of one; duplicates dropped, order kept
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if not items:
            raise MoeRouteError(f"{where} is empty")
        return tuple(dict.fromkeys(coerce(item, get_args(annotation)[0], where) for item in items))
    if origin is Union:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            return None
        return coerce(value, args[0], where)
    if origin is Literal:
        choices = get_args(annotation)
        for choice in choices:
            if str(choice) == str(value):
                return choice
        raise MoeRouteError(f"{where} must be one of {', '.join(map(str, choices))}; got {value!r}")
    convert = _SCALARS.get(annotation)
    if convert is None:
        return value
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise MoeRouteError(f"{where} must be {annotation.__name__}; got {value!r}") from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    as_float = float(value)
    if as_float != int(as_float):
        raise ValueError(value)
    return int(as_float)


_SCALARS = {bool: _to_bool, int: _to_int, float: float, str: str}


def build_options(cls: type, raw: dict[str, Any], owner: str) -> Any:
    """Instantiate the options dataclass ``cls`` from ``raw``, refusing keys it does not declare."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        known = ", ".join(sorted(names)) or "none"
        raise MoeRouteError(f"unknown option {unknown[0]!r} for {owner} (options: {known})")
    values = {key: coerce(value, hints[key], f"option {key!r} of {owner}") for key, value in raw.items()}
    instance = cls(**values)
    check = getattr(instance, "validate", None)
    if callable(check):
        check()
    return instance


def resolved_options(instance: Any) -> dict[str, Any]:
    """Every option of a dataclass instance by name, defaults included: the identity of a configuration."""
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


def options_table(cls: type) -> list[tuple[str, str, Any]]:
    """``(name, type, default)`` for each option of ``cls``, for help texts."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        rows.append((f.name, _type_name(hints[f.name]), f.default))
    return rows


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is tuple:
        return f"list of {_type_name(get_args(annotation)[0])}"
    if origin is Literal:
        return "|".join(map(str, get_args(annotation)))
    if origin is Union:
        return " or ".join(_type_name(a) for a in get_args(annotation) if a is not type(None)) + " or none"
    return getattr(annotation, "__name__", str(annotation))

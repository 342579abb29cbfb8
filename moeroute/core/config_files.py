"""Reading config files (sweeps and training alike): TOML or YAML into a plain mapping, with one-line errors.
What the keys mean is typed and checked by the options dataclasses of each config (:mod:`moeroute.core.options`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib

from moeroute.core.errors import MoeRouteError

SUFFIXES = (".toml", ".yaml", ".yml")


def read_config_file(path: "str | Path") -> dict[str, Any]:
    """The mapping in a ``.toml``, ``.yaml`` or ``.yml`` file; a missing, unreadable or malformed file, or one that
    is not a mapping at the top, is a :class:`MoeRouteError` naming the file."""
    file = Path(path)
    if not file.is_file():
        raise MoeRouteError(f"config file not found: {path}")
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise MoeRouteError(f"{path}: config must be .toml, .yaml or .yml")
    try:
        text = file.read_text(encoding="utf-8")
        if suffix == ".toml":
            data = tomllib.loads(text)
        else:
            import yaml  # only YAML configs need it

            data = yaml.safe_load(text)
    except MoeRouteError:
        raise
    except Exception as exc:  # tomllib, yaml, decoding and OS errors each have their own type
        first = (str(exc).splitlines() or [""])[0][:160]
        raise MoeRouteError(f"{path}: cannot parse ({type(exc).__name__}: {first})") from None
    if not isinstance(data, dict):
        raise MoeRouteError(f"{path}: the config must be a table/mapping of keys, got {type(data).__name__}")
    return data

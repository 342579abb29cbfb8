"""Import every module of a package, so that adding a router (or weight operator, or CLI command) is one new file."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

from moeroute.core.errors import MoeRouteError


def import_submodules(package: str) -> None:
    """Import each module of ``package`` whose name does not start with an underscore."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def load_plugin_file(path: str) -> None:
    """Import a user's Python file (e.g. one that registers a router) by path."""
    file = Path(path)
    if not file.is_file():
        raise MoeRouteError(f"plugin file not found: {path}")
    name = f"moeroute_plugin_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise MoeRouteError(f"cannot import plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)

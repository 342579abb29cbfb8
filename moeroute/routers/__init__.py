"""Routers, one file per family, each registered by name. A new router is one new file in this folder (or a file
passed with ``--plugin``) that calls :func:`register_router`."""

from moeroute.plugins import import_submodules
from moeroute.routers.registry import (
    BoundRouter,
    NoOptions,
    RouterEntry,
    bind_router,
    register_router,
    route,
    router_entry,
    router_names,
)

import_submodules(__name__)

__all__ = [
    "BoundRouter",
    "NoOptions",
    "RouterEntry",
    "bind_router",
    "register_router",
    "route",
    "router_entry",
    "router_names",
]

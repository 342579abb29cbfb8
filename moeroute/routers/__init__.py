"""Routers, one file per family, each registered by name. A new router is one new file in this folder (or a file
passed with ``--plugin``) that calls :func:`register_router`; :func:`apply_capacity` is the capacity rule every
queue-based router shares."""

from moeroute.core.plugins import import_submodules
from moeroute.routers._capacity import apply_capacity
from moeroute.routers.registry import (
    ROUTERS,
    BoundRouter,
    NoOptions,
    RouterEntry,
    bind_router,
    register_router,
    resolve_spec,
    route,
    router_entry,
    router_names,
)

import_submodules(__name__)

__all__ = [
    "ROUTERS",
    "BoundRouter",
    "NoOptions",
    "RouterEntry",
    "apply_capacity",
    "bind_router",
    "register_router",
    "resolve_spec",
    "route",
    "router_entry",
    "router_names",
]

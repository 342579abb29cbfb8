"""The router registry: a router is a function registered under a name with a dataclass of options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from moeroute.errors import MoeRouteError
from moeroute.options import build_options, format_spec, parse_spec
from moeroute.problem import RouterInput, make_input
from moeroute.routing import Routing
from moeroute.weights import COMMON_KEYS, CommonOptions, combine_weights

RouterFn = Callable[[RouterInput, Any], Routing]


@dataclass(frozen=True)
class NoOptions:
    """For routers without options of their own."""


@dataclass(frozen=True)
class RouterEntry:
    name: str
    fn: RouterFn
    options: type
    description: str
    source: str


_ROUTERS: dict[str, RouterEntry] = {}


def register_router(
    name: str, options: type = NoOptions, description: str = "", source: str = ""
) -> Callable[[RouterFn], RouterFn]:
    """Register ``fn(x: RouterInput, opts) -> Routing`` as router ``name``.

    ``fn`` fills ``Routing.experts`` (ranked slots, ``-1`` for a drop); combine weights are computed afterwards by
    the weight operator the spec names, so routers never duplicate that logic.
    """

    def wrap(fn: RouterFn) -> RouterFn:
        if name in _ROUTERS and _ROUTERS[name].fn is not fn:
            raise MoeRouteError(f"router {name!r} is registered twice")
        _ROUTERS[name] = RouterEntry(name, fn, options, description.strip(), source.strip())
        return fn

    return wrap


def router_names() -> list[str]:
    return sorted(_ROUTERS)


def router_entry(name: str) -> RouterEntry:
    if name not in _ROUTERS:
        raise MoeRouteError(f"unknown router {name!r} (known: {', '.join(router_names())})")
    return _ROUTERS[name]


@dataclass(frozen=True)
class BoundRouter:
    """A parsed spec, ready to call on validated input; build once, call many times (latency loops)."""

    spec: str
    entry: RouterEntry
    options: Any
    common: CommonOptions

    def __call__(self, x: RouterInput) -> Routing:
        routing = self.entry.fn(x, self.options)
        routing.router = self.spec
        if routing.weights is None:
            routing.weights = combine_weights(x.scores, routing.experts, self.common)
        return routing


def bind_router(spec: str, **overrides: Any) -> BoundRouter:
    """Parse ``spec`` (``name:key=value,...``) plus keyword overrides into a :class:`BoundRouter`."""
    name, raw = parse_spec(spec)
    raw = {**raw, **overrides}
    entry = router_entry(name)
    common_raw = {k: v for k, v in raw.items() if k in COMMON_KEYS}
    own_raw = {k: v for k, v in raw.items() if k not in COMMON_KEYS}
    options = build_options(entry.options, own_raw, f"router {name!r}")
    common = build_options(CommonOptions, common_raw, f"router {name!r}")
    return BoundRouter(format_spec(name, raw), entry, options, common)


def route(
    logits: Any,
    router: str = "gshard",
    k: int = 2,
    capacity_factor: Optional[float] = 1.0,
    group_size: Optional[int] = None,
    check: bool = True,
    **options: Any,
) -> Routing:
    """Route logits ``[N, E]`` or ``[G, T, E]`` with the router named by ``router`` (a spec string).

    Capacity is per group, ``C = ceil(capacity_factor * k * T / E)``; ``capacity_factor=None`` means none.
    Keyword ``options`` override those in the spec. The returned :class:`Routing` is always grouped
    (``[G, T, R]``) and, with ``check=True``, has had its invariants verified.
    """
    bound = bind_router(router, **options)
    x = make_input(logits, k, capacity_factor, group_size)
    routing = bound(x)
    if check:
        routing.check()
    return routing

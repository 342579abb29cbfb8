"""`evaluate`: run routers on logits and measure them against the exact optima."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from moeroute.core.errors import MoeRouteError
from moeroute.core.metrics import RoutingMetrics, objective_gap, routing_metrics
from moeroute.core.problem import RouterInput, make_input
from moeroute.core.routing import Routing
from moeroute.core.timing import median_latency
from moeroute.routers import bind_router
from moeroute.solvers import DEFAULT_SOLVER, FlowSolution, solve_optimum

RouterLike = Union[str, Routing]


def optima(x: RouterInput, solver: str = DEFAULT_SOLVER, maxweight: bool = True) -> tuple[FlowSolution, Optional[FlowSolution]]:
    """The MCMF optimum and (optionally) the max-weight optimum of ``x``."""
    mcmf = solve_optimum(x.scores, x.k, x.capacity, solver, "mcmf")
    mw = solve_optimum(x.scores, x.k, x.capacity, solver, "maxweight") if maxweight else None
    return mcmf, mw


def measure(
    x: RouterInput,
    router: RouterLike,
    mcmf: Optional[FlowSolution] = None,
    maxweight: Optional[FlowSolution] = None,
    repeats: int = 5,
    warmup: int = 1,
) -> RoutingMetrics:
    """Metrics of one router (a spec, timed) or one ready :class:`Routing` (not timed) on input ``x``."""
    latency, calls = None, 0
    if isinstance(router, Routing):
        routing = router
        if routing.experts.shape[:2] != x.scores.shape[:2]:
            raise MoeRouteError(f"routing shape {tuple(routing.experts.shape)} does not match logits {tuple(x.scores.shape)}")
    else:
        bound = bind_router(router)
        routing, latency, calls = median_latency(lambda: bound(x), x.scores.device, repeats, warmup)
    routing.check()
    m = routing_metrics(x, routing)
    m.latency_ms, m.latency_calls = latency, calls
    if mcmf is not None:
        m.optimum = float(mcmf.objective.sum())
        m.gap = objective_gap(m.objective, m.optimum)
    if maxweight is not None:
        m.maxweight_optimum = float(maxweight.objective.sum())
    m.extra = {key: value for key, value in routing.meta.items() if isinstance(value, (int, float, str, bool))}
    return m


def evaluate(
    logits: Any,
    routers: Union[RouterLike, Sequence[RouterLike]] = "gshard",
    k: int = 2,
    capacity_factor: Optional[float] = 1.0,
    group_size: Optional[int] = None,
    repeats: int = 5,
    warmup: int = 1,
    optimum: bool = True,
    solver: str = DEFAULT_SOLVER,
) -> Union[RoutingMetrics, list[RoutingMetrics]]:
    """Route ``logits`` (``[N, E]`` or ``[G, T, E]``) with each router and return their metrics.

    ``routers`` is a spec string, a :class:`Routing`, or a list of them (then a list comes back). With
    ``optimum=True`` the MCMF and max-weight optima are solved once (``solver``) and each router's gap is reported.
    Latency is the median of up to ``repeats`` calls after ``warmup`` calls.
    """
    single = isinstance(routers, (str, Routing))
    items = [routers] if single else list(routers)
    if not items:
        raise MoeRouteError("no router to evaluate")
    for item in items:
        if isinstance(item, str):
            bind_router(item)  # refuse an unknown router or option before any work
    x = make_input(logits, k, capacity_factor, group_size)
    mcmf, mw = optima(x, solver) if optimum else (None, None)
    out = [measure(x, item, mcmf, mw, repeats, warmup) for item in items]
    return out[0] if single else out

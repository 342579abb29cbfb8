"""`evaluate`: run routers on logits and measure them against the exact optima of the scores each selects by."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from moeroute.core.errors import MoeRouteError
from moeroute.core.metrics import RoutingMetrics, objective_gap, routing_metrics
from moeroute.core.problem import RouterInput, make_input
from moeroute.core.routing import Routing
from moeroute.core.timing import median_latency
from moeroute.routers import bind_router
from moeroute.solvers import DEFAULT_SOLVER, SOLVERS, FlowSolution, solve_optimum

RouterLike = Union[str, Routing]


def optima(x: RouterInput, solver: str = DEFAULT_SOLVER, maxweight: bool = True) -> tuple[FlowSolution, Optional[FlowSolution]]:
    """The MCMF optimum and (optionally) the max-weight optimum of ``x`` (of its scores, ``x.score``)."""
    mcmf = solve_optimum(x.scores, x.k, x.capacity, solver, "mcmf")
    mw = solve_optimum(x.scores, x.k, x.capacity, solver, "maxweight") if maxweight else None
    return mcmf, mw


class Optima:
    """The exact optima of one problem, solved at most once per score function, when first asked for.

    A router is compared with the optimum of the scores it selects by (``gshard:score=sigmoid`` with the sigmoid
    optimum), so a list of routers with two score functions costs two solves, not one per router.
    """

    def __init__(self, x: RouterInput, solver: str = DEFAULT_SOLVER, maxweight: bool = True) -> None:
        self.x = x
        self.solver = solver
        self.maxweight = maxweight
        self._solved: dict[str, tuple[FlowSolution, Optional[FlowSolution]]] = {}

    def given(self, score: str, mcmf: FlowSolution, maxweight: Optional[FlowSolution] = None) -> "Optima":
        """Record optima solved elsewhere for score function ``score``."""
        self._solved[score] = (mcmf, maxweight)
        return self

    def input(self, score: str) -> RouterInput:
        """The problem with the scores of ``score``."""
        return self.x.with_score(score)

    def get(self, score: str) -> tuple[FlowSolution, Optional[FlowSolution]]:
        """The MCMF and max-weight optima of the scores of ``score``."""
        if score not in self._solved:
            self._solved[score] = optima(self.input(score), self.solver, self.maxweight)
        return self._solved[score]

    @property
    def scores_solved(self) -> list[str]:
        return sorted(self._solved)


def measure(
    x: RouterInput,
    router: RouterLike,
    mcmf: Optional[FlowSolution] = None,
    maxweight: Optional[FlowSolution] = None,
    repeats: int = 5,
    warmup: int = 1,
    optimum: Optional[Optima] = None,
    ep_ranks: Optional[int] = None,
) -> RoutingMetrics:
    """Metrics of one router (a spec, timed) or one ready :class:`Routing` (not timed) on input ``x``.

    The router's metrics use the scores it selects by. The optimum comes from ``optimum`` (solved once per score
    function) or from ``mcmf`` / ``maxweight``, the optima of ``x``'s own scores: when the router selects by other
    scores those do not apply and its own optimum is solved here (with the solver that produced ``mcmf``).
    ``ep_ranks`` adds the expert-parallel view (docs/metrics.md).
    """
    latency, calls = None, 0
    if isinstance(router, Routing):
        routing = router
        if routing.experts.shape[:2] != x.scores.shape[:2]:
            raise MoeRouteError(f"routing shape {tuple(routing.experts.shape)} does not match logits {tuple(x.scores.shape)}")
        xr = x.with_score(routing.score)
    else:
        bound = bind_router(router)
        xr = bound.input_for(x)
        routing, latency, calls = median_latency(lambda: bound(xr), x.scores.device, repeats, warmup)
    routing.check()
    m = routing_metrics(xr, routing, ep_ranks)
    m.latency_ms, m.latency_calls = latency, calls
    best, best_mw = _optima_for(x, xr, mcmf, maxweight, optimum)
    if best is not None:
        m.optimum = float(best.objective.sum())
        m.gap = objective_gap(m.objective, m.optimum)
    if best_mw is not None:
        m.maxweight_optimum = float(best_mw.objective.sum())
    m.extra = {key: value for key, value in routing.meta.items() if isinstance(value, (int, float, str, bool))}
    return m


def _optima_for(
    x: RouterInput,
    xr: RouterInput,
    mcmf: Optional[FlowSolution],
    maxweight: Optional[FlowSolution],
    optimum: Optional[Optima],
) -> tuple[Optional[FlowSolution], Optional[FlowSolution]]:
    """The optima that apply to a router routing ``xr`` (see :func:`measure`)."""
    if optimum is not None:
        return optimum.get(xr.score)
    if mcmf is None and maxweight is None:
        return None, None
    if xr.score == x.score:
        return mcmf, maxweight
    solver = (mcmf or maxweight).solver  # type: ignore[union-attr]
    own = optima(xr, solver if solver in SOLVERS else DEFAULT_SOLVER, maxweight is not None)
    return (own[0] if mcmf is not None else None), own[1]


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
    ep_ranks: Optional[int] = None,
) -> Union[RoutingMetrics, list[RoutingMetrics]]:
    """Route ``logits`` (``[N, E]`` or ``[G, T, E]``) with each router and return their metrics.

    ``routers`` is a spec string, a :class:`Routing`, or a list of them (then a list comes back). With
    ``optimum=True`` the MCMF and max-weight optima are solved once per score function among the routers
    (``solver``), and each router's gap is against the optimum of its own scores. Latency is the median of up to
    ``repeats`` calls after ``warmup`` calls. ``ep_ranks=R`` adds the expert-parallel view: experts placed
    contiguously on ``R`` ranks, each group one sending rank (docs/metrics.md).
    """
    single = isinstance(routers, (str, Routing))
    items = [routers] if single else list(routers)
    if not items:
        raise MoeRouteError("no router to evaluate")
    for item in items:
        if isinstance(item, str):
            bind_router(item)  # refuse an unknown router or option before any work
    x = make_input(logits, k, capacity_factor, group_size)
    if ep_ranks is not None and (ep_ranks < 1 or x.experts % ep_ranks):
        raise MoeRouteError(f"ep_ranks={ep_ranks} must be >= 1 and divide the E={x.experts} experts")
    best = Optima(x, solver) if optimum else None
    out = [measure(x, item, repeats=repeats, warmup=warmup, optimum=best, ep_ranks=ep_ranks) for item in items]
    return out[0] if single else out

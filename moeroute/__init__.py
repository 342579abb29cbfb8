"""moeroute: a benchmark and ablation suite for Mixture-of-Experts token-to-expert routing, built around Maximum
Score Routing (MaxScore, Dong et al., ACL Findings 2025)."""

from moeroute.errors import MoeRouteError, RoutingInvariantError
from moeroute.problem import expert_capacity
from moeroute.routers import bind_router, register_router, route, router_names
from moeroute.routing import Routing
from moeroute.harness.evaluate import evaluate
from moeroute.harness.metrics import RoutingMetrics
from moeroute.solvers import solve_optimum
from moeroute.weights.schedule import SoftTopkSchedule
from moeroute.nn import MaxScoreRouter, RouterOutput

__version__ = "0.1.0"

__all__ = [
    "MaxScoreRouter",
    "MoeRouteError",
    "Routing",
    "RoutingInvariantError",
    "RouterOutput",
    "RoutingMetrics",
    "SoftTopkSchedule",
    "bind_router",
    "evaluate",
    "expert_capacity",
    "register_router",
    "route",
    "router_names",
    "solve_optimum",
]

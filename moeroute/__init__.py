"""moeroute: a benchmark and ablation suite for Mixture-of-Experts token-to-expert routing, built around Maximum
Score Routing (MaxScore, Dong et al., ACL Findings 2025).

The public names below are imported on first use (PEP 562), so ``import moeroute`` is cheap and never loads the
exact solvers' libraries (OR-tools, networkx), scipy, pandas or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "MaxScoreRouter": "moeroute.nn",
    "MoeRouteError": "moeroute.core.errors",
    "Optima": "moeroute.evaluation",
    "RouterFailure": "moeroute.core.errors",
    "RouterInput": "moeroute.core.problem",
    "RouterOutput": "moeroute.nn",
    "Routing": "moeroute.core.routing",
    "RoutingInvariantError": "moeroute.core.errors",
    "RoutingMetrics": "moeroute.core.metrics",
    "SCORE_FUNCTIONS": "moeroute.core.problem",
    "Slots": "moeroute.core.routing",
    "SoftTopkSchedule": "moeroute.weights.schedule",
    "apply_capacity": "moeroute.routers",
    "bind_router": "moeroute.routers",
    "evaluate": "moeroute.evaluation",
    "expert_capacity": "moeroute.core.problem",
    "make_input": "moeroute.core.problem",
    "register_router": "moeroute.routers",
    "route": "moeroute.routers",
    "router_names": "moeroute.routers",
    "solve_optimum": "moeroute.solvers",
}

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from moeroute.core.version import package_version

        return package_version()
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'moeroute' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

"""Exact solvers of the routing flow problem, batched over groups, for both optima (``mcmf`` and ``maxweight``)."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from moeroute.errors import MoeRouteError
from moeroute.solvers.flow_network import SCALE, FlowSolution, Objective, max_flow_value
from moeroute.solvers.networkx_flow import solve_max_flow_min_cost, solve_network_simplex
from moeroute.solvers.ortools_flow import solve_ortools
from moeroute.solvers.spfa import solve_spfa

Solver = Callable[[np.ndarray, int, Optional[int], Objective], FlowSolution]

SOLVERS: dict[str, Solver] = {
    "ortools": solve_ortools,
    "spfa": solve_spfa,
    "network_simplex": solve_network_simplex,
    "max_flow_min_cost": solve_max_flow_min_cost,
}
DEFAULT_SOLVER = "ortools"


def solve_optimum(
    scores: "np.ndarray | torch.Tensor",
    k: int,
    capacity: Optional[int],
    solver: str = DEFAULT_SOLVER,
    objective: Objective = "mcmf",
) -> FlowSolution:
    """The exact optimum of the routing flow problem for scores ``[G, T, E]`` (or ``[T, E]``, one group)."""
    if solver not in SOLVERS:
        raise MoeRouteError(f"unknown exact solver {solver!r} (known: {', '.join(SOLVERS)})")
    if objective not in ("mcmf", "maxweight"):
        raise MoeRouteError(f"unknown objective {objective!r} (mcmf or maxweight)")
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().to("cpu", torch.float64).numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 2:
        scores = scores[None]
    return SOLVERS[solver](scores, k, capacity, objective)


__all__ = ["DEFAULT_SOLVER", "SCALE", "SOLVERS", "FlowSolution", "max_flow_value", "solve_optimum"]

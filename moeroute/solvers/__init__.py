"""Exact solvers of the routing flow problem, batched over groups, for both optima (``mcmf`` and ``maxweight``)."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from moeroute.errors import MoeRouteError
from moeroute.solvers.flow_network import SCALE, FlowSolution, Objective, max_flow_value
from moeroute.solvers.networkx_flow import solve_max_flow_min_cost, solve_network_simplex
from moeroute.solvers.ortools_flow import solve_ortools, solve_ortools_transport
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


def solve_residual(
    scores: "np.ndarray | torch.Tensor",
    demand: "np.ndarray | torch.Tensor",
    room: "np.ndarray | torch.Tensor",
    allowed: "np.ndarray | torch.Tensor",
    objective: Objective = "mcmf",
) -> FlowSolution:
    """The exact optimum of a partial routing problem (OR-tools): token ``t`` wants ``demand[g, t]`` more experts,
    expert ``e`` has ``room[g, e]`` places left, and only cells where ``allowed`` ``[G, T, E]`` is true may be used
    (e.g. MaxScore's stage 2: residual capacity, each token's own stage-1 expert excluded). ``mcmf`` fills as many
    places as the network carries, then maximises the score sum."""

    def host(a: "np.ndarray | torch.Tensor", dtype: type) -> np.ndarray:
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().numpy()
        return np.asarray(a, dtype=dtype)

    s = host(scores, np.float64)
    return solve_ortools_transport(s, host(demand, np.int64), host(room, np.int64), host(allowed, bool), objective)


__all__ = ["DEFAULT_SOLVER", "SCALE", "SOLVERS", "FlowSolution", "max_flow_value", "solve_optimum", "solve_residual"]

"""Exact solvers of the routing flow problem, batched over groups, for both optima (``mcmf`` and ``maxweight``)."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.registry import Registry
from moeroute.solvers.flow_network import SCALE, FlowSolution, Objective, max_flow_value

Solver = Callable[[np.ndarray, int, Optional[int], Objective], FlowSolution]

AUTO_MIN_PAIRS = 1 << 18
AUTO_MIN_TOKENS_PER_EXPERT = 64
AUTO_MAX_EXPERTS = 64
AUTO_MAX_K = 2
"""``auto`` uses ``expert_ssp`` for groups of at least ``AUTO_MIN_PAIRS`` token-expert pairs (``T * E``, e.g.
4096 x 64) with at least ``AUTO_MIN_TOKENS_PER_EXPERT`` tokens per expert, at most ``AUTO_MAX_EXPERTS`` experts and
``k <= AUTO_MAX_K``; OR-tools otherwise. The crossovers are measured (benchmarks/PERF.md): ``expert_ssp`` spends a
price phase plus one shortest path over the expert graph per unit of excess, with Python overhead per group, so it
wins where a group is large, ``E`` is small next to ``T`` and each token ships few units. At ``k = 8`` it lost to
OR-tools on skewed logits at every size, and at ``E >= 128`` with ``k = 2`` on skewed logits too (while it won on
the other workloads), so those stay with OR-tools."""


def solve_auto(scores: np.ndarray, k: int, capacity: Optional[int], objective: Objective = "mcmf") -> FlowSolution:
    """The faster exact solver for the group shape and ``k``: ``expert_ssp`` for large groups with ``E << T`` and
    ``k <= 2``, else OR-tools."""
    _, t, e = scores.shape
    large = t * e >= AUTO_MIN_PAIRS and t >= AUTO_MIN_TOKENS_PER_EXPERT * e and e <= AUTO_MAX_EXPERTS and k <= AUTO_MAX_K
    return SOLVERS.get("expert_ssp" if large else "ortools")(scores, k, capacity, objective)


SOLVERS: Registry[Solver] = Registry("exact solver")
"""Exact solvers by name, imported on first use: OR-tools and networkx load only when a solver needs them."""
SOLVERS.add("auto", solve_auto)
SOLVERS.add("ortools", "moeroute.solvers.ortools_flow:solve_ortools")
SOLVERS.add("expert_ssp", "moeroute.solvers.expert_ssp:solve_expert_ssp")
SOLVERS.add("spfa", "moeroute.solvers.spfa:solve_spfa")
SOLVERS.add("network_simplex", "moeroute.solvers.networkx_flow:solve_network_simplex")
SOLVERS.add("max_flow_min_cost", "moeroute.solvers.networkx_flow:solve_max_flow_min_cost")
DEFAULT_SOLVER = "auto"


def solve_optimum(
    scores: "np.ndarray | torch.Tensor",
    k: int,
    capacity: Optional[int],
    solver: str = DEFAULT_SOLVER,
    objective: Objective = "mcmf",
) -> FlowSolution:
    """The exact optimum of the routing flow problem for scores ``[G, T, E]`` (or ``[T, E]``, one group)."""
    fn = SOLVERS.get(solver)
    if objective not in ("mcmf", "maxweight"):
        raise MoeRouteError(f"unknown objective {objective!r} (mcmf or maxweight)")
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().to("cpu", torch.float64).numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 2:
        scores = scores[None]
    return fn(scores, k, capacity, objective)


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

    from moeroute.solvers.ortools_flow import solve_ortools_transport

    s = host(scores, np.float64)
    return solve_ortools_transport(s, host(demand, np.int64), host(room, np.int64), host(allowed, bool), objective)


__all__ = ["DEFAULT_SOLVER", "SCALE", "SOLVERS", "FlowSolution", "max_flow_value", "solve_optimum", "solve_residual"]

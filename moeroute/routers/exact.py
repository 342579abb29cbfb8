"""The exact optimum as a router: the MCMF solution (every feasible slot filled, maximum total score), or the
max-weight one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from moeroute.core.problem import RouterInput
from moeroute.core.routing import Slots, slots_from_mask
from moeroute.routers._topk import ScoreOptions
from moeroute.routers.registry import register_router
from moeroute.solvers import DEFAULT_SOLVER, solve_optimum


@dataclass(frozen=True)
class ExactOptions(ScoreOptions):
    """``score``: the scores whose optimum it solves (softmax, sigmoid, sqrt_softplus). ``solver``: auto (default: expert_ssp on large groups, else ortools), ortools, expert_ssp (exact, fast when
    E << T), spfa (the paper's, slow), network_simplex, max_flow_min_cost.
    ``objective``: mcmf (fill every slot capacity allows, then max score) or maxweight (flow free)."""

    solver: Literal["auto", "ortools", "expert_ssp", "spfa", "network_simplex", "max_flow_min_cost"] = DEFAULT_SOLVER  # type: ignore[assignment]
    objective: Literal["mcmf", "maxweight"] = "mcmf"


@register_router(
    "exact",
    ExactOptions,
    "the exact min-cost max-flow optimum of the routing network (ranks ordered by score)",
    "MaxScore (Dong et al. 2025) flow formulation; OR-tools SimpleMinCostFlow / SPFA / networkx",
    examples=("exact:score=sigmoid",),
)
def exact(x: RouterInput, opts: ExactOptions) -> Slots:
    solution = solve_optimum(x.scores, x.k, x.capacity, opts.solver, opts.objective)
    mask = torch.from_numpy(solution.assignment).to(x.scores.device)
    experts = slots_from_mask(mask, x.scores, x.k)
    return Slots(experts, meta={"objective": float(solution.objective.sum())})

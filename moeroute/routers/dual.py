"""``dual``: near-exact routing by expert prices, the duals of the transportation LP that ``exact`` solves.

An ascending auction on the ``E`` prices leaves every token holding (within a small step) its ``k`` best experts by
``score - price``; the few units still on an over-full expert when the budget ends are placed by capacity (largest
margin first), then on their best expert with room, then by augmenting paths, so no slot is dropped that capacity
allows. On CPU the auction is a compiled Gauss-Seidel loop (moeroute/solvers/auction.py); on an accelerator a
Jacobi loop in torch with a fixed iteration count and no host synchronisation inside (moeroute/solvers/prices.py).
``meta['gap_bound']`` certifies the result: the relative gap to the MCMF optimum is at most that much (weak LP
duality). Guarantee, cost model and options: docs/dual.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import RouterInput
from moeroute.core.routing import EMPTY, Slots
from moeroute.routers._prices import place_units
from moeroute.routers._repair import augment_open_slots
from moeroute.routers.registry import AllReduce, register_router
from moeroute.solvers.auction import POOL_SHRINK, AuctionConfig, auction_route
from moeroute.solvers.flow_network import max_flow_value
from moeroute.solvers.prices import PriceConfig, dual_bound, solve_prices
from moeroute.solvers.sync import use_numpy


@dataclass(frozen=True)
class DualOptions:
    """CPU (compiled Gauss-Seidel auction): ``sweeps``: cap on the sweeps over the experts (the auction stops
    earlier once no expert is over-full); ``step``: the extra price step, as a fraction of the mean score a unit
    holds at the start; ``pool``: start from prices solved on a pooled subsample of the groups (tight capacity
    only). Accelerator (Jacobi auction in torch): ``iters``: cap on the price updates; ``width``: candidate experts
    per token (0 = ``2k + 8``, at most ``E``); ``eps`` / ``eps_end``: the extra price step, as a fraction of the
    group's mean top-1 score, shrinking geometrically over the iterations; ``check_every``: price updates between
    two convergence tests (each is a host synchronisation). Both: ``carry``: start from ``x.state['prices']`` when
    the caller hands prices in (as training does, step to step), lowered by ``slack`` times the group's largest
    score so that the ascending auction starts below them; ``repair``: augmenting paths for the slots the auction
    and rerouting could not fill."""

    sweeps: int = 30
    step: float = 0.02
    pool: bool = True
    iters: int = 16
    width: int = 0
    eps: float = 0.1
    eps_end: float = 1e-3
    check_every: int = 4
    carry: bool = True
    slack: float = 0.02
    repair: bool = True

    def validate(self) -> None:
        if self.sweeps < 0:
            raise MoeRouteError(f"sweeps must be >= 0, got {self.sweeps}")
        if not self.step >= 0:
            raise MoeRouteError(f"step must be >= 0, got {self.step}")
        if self.iters < 0:
            raise MoeRouteError(f"iters must be >= 0, got {self.iters}")
        if self.width < 0:
            raise MoeRouteError(f"width must be >= 0 (0 = automatic), got {self.width}")
        if not (self.eps > 0 and self.eps_end > 0):
            raise MoeRouteError(f"eps and eps_end must be > 0, got {self.eps} and {self.eps_end}")
        if self.check_every < 1:
            raise MoeRouteError(f"check_every must be >= 1, got {self.check_every}")
        if not self.slack >= 0:
            raise MoeRouteError(f"slack must be >= 0, got {self.slack}")

    def config(self) -> PriceConfig:
        return PriceConfig(self.iters, self.width, self.eps, self.eps_end, self.check_every)

    def auction(self) -> AuctionConfig:
        return AuctionConfig(self.step, self.sweeps, self.pool)


def start_prices(x: RouterInput, opts: DualOptions) -> Optional[torch.Tensor]:
    """Warm-start prices ``[G, E + 1]`` from ``x.state['prices']`` (``[E]`` or ``[G, E]``), lowered by
    ``slack`` times each group's largest score and clamped at 0; ``None`` for a cold start."""
    carried = x.state.get("prices") if opts.carry else None
    if carried is None:
        return None
    # Prices are state, not a function of this step's parameters: no gradient flows through them (training hands
    # in scores that require grad, and the compiled auction reads them as numpy).
    carried = torch.as_tensor(carried, dtype=x.scores.dtype, device=x.scores.device).detach()
    if carried.shape[-1] != x.experts or carried.dim() > 2:
        raise MoeRouteError(f"dual: state['prices'] must have shape [E] or [G, E] with E={x.experts}, got {tuple(carried.shape)}")
    scale = x.scores.detach().amax(dim=(1, 2)).unsqueeze(1)
    prices = (carried.expand(x.groups, x.experts) - opts.slack * scale).clamp(min=0)
    return torch.cat([prices, prices.new_zeros(x.groups, 1)], dim=1)


def rank_by_score(scores: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Each token's slots ordered by score, best first, empty slots last (ties keep their order): long
    ``[G, T, R]``. Two slots are one compare-and-swap; more, a stable sort."""
    picked = torch.gather(scores, 2, experts.clamp(min=0))
    value = torch.where(experts >= 0, picked, torch.full_like(picked, -float("inf")))
    if experts.shape[2] == 2:
        swap = (value[:, :, 1] > value[:, :, 0]).unsqueeze(2)
        return torch.where(swap, experts.flip(2), experts)
    order = torch.sort(value, dim=2, descending=True, stable=True).indices
    return torch.gather(experts, 2, order)


def route_compiled(x: RouterInput, opts: DualOptions) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """The dual router on CPU (the compiled auction, moeroute/solvers/auction.py): slots ``[G, T, k]``, meta and the
    final prices ``[G, E + 1]``."""
    scores = x.scores.detach()
    g, t, e = scores.shape
    k = x.k
    cap = min(int(x.capacity), t)
    demand = torch.full((g, t), k, dtype=torch.long)
    capacity = torch.full((g, e), cap, dtype=torch.long)
    start = start_prices(x, opts)
    if start is not None:
        # A price above a group's own optimum makes every other price creep up in a Gauss-Seidel auction, while one
        # below is caught up in a step: start a little lower still (measured, benchmarks/PERF.md).
        start = start * POOL_SHRINK
    result = auction_route(scores, demand, capacity, k, opts.auction(), prices0=start)
    experts = result.experts
    repaired = 0
    if opts.repair and int(result.open.sum()) > 0:
        fill = torch.ones_like(experts, dtype=torch.bool)
        experts, repaired = augment_open_slots(scores, experts, cap, fill, fill & (experts >= 0))
        experts = rank_by_score(scores, experts)
    # The kernel's bound has the drop node worth ``drop`` per unit; every routing of maximum flow drops the same
    # number of units (k T - flow), so the optimum is at most the bound minus ``drop`` per such unit.
    forced = k * t - max_flow_value(t, e, k, cap)
    bound = float((result.dual - result.drop * forced).sum())
    if repaired:
        objective = float(torch.where(experts >= 0, torch.gather(scores, 2, experts.clamp(min=0)), 0.0).double().sum())
    else:
        objective = float(result.objective.sum())
    placed_after = int(result.placed_after.sum()) - int(result.open.sum())
    meta = {
        "iterations": int(result.sweeps.max()) if g else 0,
        "converged": bool(result.converged.all()),
        "sheds": int(result.sheds.sum()),
        "pooled_levels": result.pooled_levels,
        "placed_by_prices": int((experts >= 0).sum()) - placed_after - repaired,
        "rerouted": placed_after,
        "repaired_slots": repaired,
        "gap_bound": (bound - objective) / objective if objective > 0 else float("nan"),
    }
    return experts, meta, result.prices


def route_by_prices(x: RouterInput, opts: DualOptions) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """The dual router's slots ``[G, T, k]``, its meta and the final prices ``[G, E + 1]``: the compiled auction on
    CPU, the torch auction elsewhere (no host synchronisation inside its loop)."""
    if use_numpy(x.scores.device):
        return route_compiled(x, opts)
    return route_by_prices_torch(x, opts)


def route_by_prices_torch(x: RouterInput, opts: DualOptions) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """The dual router by the Jacobi auction in torch (any device): slots ``[G, T, k]``, meta, prices."""
    scores = x.scores.detach()
    g, t, e = scores.shape
    k = x.k
    cap = min(int(x.capacity), t)
    flow = max_flow_value(t, e, k, cap)
    drop = torch.full((g,), k * t - flow, dtype=torch.long, device=scores.device) if k * t > flow else None
    capacity = torch.full((g, e), cap, dtype=torch.long, device=scores.device)
    demand = torch.full((g, t), k, dtype=torch.long, device=scores.device)
    result = solve_prices(scores, demand, k, capacity, opts.config(), drop=drop, prices0=start_prices(x, opts))
    empty = torch.full((g, t, k), EMPTY, dtype=torch.long, device=scores.device)
    experts, placed, rerouted = place_units(scores, empty, cap, result)
    repaired = 0
    if opts.repair:
        fill = torch.ones_like(experts, dtype=torch.bool)
        experts, repaired = augment_open_slots(scores, experts, cap, fill, fill & (experts >= 0))
    node_cap = torch.cat([capacity, (drop if drop is not None else capacity.new_zeros(g)).view(g, 1)], dim=1)
    bound = dual_bound(result, node_cap, demand).sum()
    objective = torch.where(experts >= 0, torch.gather(scores, 2, experts.clamp(min=0)), 0.0).double().sum()
    # One host synchronisation for every number of the meta.
    placed, rerouted, bound, objective = torch.stack([placed.double(), rerouted.double(), bound, objective]).tolist()
    meta = {
        "iterations": result.iterations,
        "converged": result.converged,
        "placed_by_prices": int(placed),
        "rerouted": int(rerouted),
        "repaired_slots": repaired,
        "gap_bound": (bound - objective) / objective if objective > 0 else float("nan"),
    }
    return rank_by_score(scores, experts), meta, result.prices


def dual_step_update(state: dict[str, torch.Tensor], all_reduce: AllReduce, opts: DualOptions) -> dict[str, torch.Tensor]:
    """Once per optimizer step: the prices averaged over data-parallel ranks, so that every rank warm-starts from
    the same prices."""
    if "prices" not in state:
        return state
    return {**state, "prices": all_reduce(state["prices"], "mean")}


@register_router(
    "dual",
    DualOptions,
    "near-exact routing by expert prices (LP duals): an ascending auction, then each token's top-k of score - price; "
    "leftover conflicts repaired, every feasible slot filled; meta gap_bound certifies the gap",
    "transportation-LP duality (BASE/S-BASE/Quantile Balancing/aux-loss-free are dual methods for it); "
    "Bertsekas' auction; docs/dual.md",
    step_update=dual_step_update,
)
def dual(x: RouterInput, opts: DualOptions) -> Slots:
    if x.capacity is None:
        # Without capacity the LP's optimum is every token's top-k: all prices are 0.
        return Slots(torch.topk(x.scores, x.k, dim=-1).indices, meta={"iterations": 0, "converged": True})
    experts, meta, prices = route_by_prices(x, opts)
    return Slots(experts, meta=meta, state={"prices": prices[:, : x.experts].mean(dim=0)})


__all__ = [
    "DualOptions", "dual", "dual_step_update", "rank_by_score", "route_by_prices", "route_by_prices_torch",
    "route_compiled", "start_prices",
]

"""Expert prices for the routing transportation problem: the LP duals, found by an ascending auction in which every
over-full expert raises its price just enough to push its excess out.

The problem (one per group): token ``t`` needs ``d_t`` units, each on a distinct allowed expert; expert ``e`` takes at
most ``cap[e]`` units; an optional *drop node* (last node, value 0, several units per token) takes what the experts
cannot (``drop`` units). Given node prices ``p``, a token's best response is its ``d_t`` largest *reduced values*
``score - p``. Prices start at 0 (or at a warm start) and only rise; after each update every token holds its best
response again. Two facts make this near-exact and cheap:

- **Complementary slackness holds except for over-full experts.** Every token always holds its ``d_t`` best units
  at the current prices, and a price rises only while its expert is over-full, so an expert with a positive price
  has been full. If no expert is over-full, the held units are an optimum of the LP (docs/dual.md); otherwise the
  few over-full units are repaired by the router.
- **Only a few candidates per token matter.** A token's reduced values are computed on its ``width`` best experts
  at the prices of the moment (*candidates*); the largest reduced value outside them is a *bound* that stays valid
  while prices rise. A unit whose value falls below the bound is *outside*: at the next check point those tokens'
  candidates are recomputed over all experts. So an iteration costs ``O(G T width)``, not ``O(G T E)``.

The price update of an over-full expert is ``(excess-th smallest margin among its holders) + eps``, where a unit's
margin is what its value exceeds the token's best unit not held by. Exact margins alone make prices creep by tiny
steps when two experts trade the same near-indifferent tokens back and forth; ``eps`` (relative to the group's
largest score, shrinking geometrically from ``eps_start`` to ``eps_end`` over the iterations) ends those trades.

No host synchronisation inside the loop: the convergence test runs every ``check_every`` iterations on an
accelerator (every iteration on CPU, where it is free), and the number of iterations is capped by ``iters``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from moeroute.solvers.rows import row_top, segment_kth

NONE = -1
"""Node of an inactive unit (the token needs fewer units, or has no allowed expert left)."""
OUTSIDE = -2
"""Node of a unit whose best place is an expert outside the token's candidates (unknown until they are refreshed)."""


@dataclass(frozen=True)
class PriceConfig:
    """Knobs of :func:`solve_prices` (see the module docstring)."""

    iters: int = 16
    width: int = 0
    eps_start: float = 3e-2
    eps_end: float = 3e-4
    check_every: int = 4

    def candidate_width(self, units: int, experts: int) -> int:
        """Candidates per token: ``width``, or ``2 * units + 8`` when 0; at least ``units + 1`` and at most ``E``."""
        want = self.width if self.width > 0 else 2 * units + 8
        return min(experts, max(want, units + 1))


@dataclass(frozen=True)
class Candidates:
    """Each token's candidate entries: raw ``values`` float32 ``[G, T, M]`` (``-inf`` = not allowed), their ``nodes``
    long ``[G, T, M]`` (an expert, or ``E`` for the drop node), and ``bound`` float32 ``[G, T, 1]``: no expert outside
    the candidates has a larger reduced value while prices only rise (``-inf`` when every expert is a candidate)."""

    values: torch.Tensor
    nodes: torch.Tensor
    bound: torch.Tensor


@dataclass(frozen=True)
class Units:
    """The units every token holds at some prices: ``nodes`` long ``[G, T, K]`` (best first; :data:`NONE`,
    :data:`OUTSIDE`), reduced ``values`` float32 ``[G, T, K]`` and ``margin`` float32 ``[G, T, K]``: how much each
    held value exceeds the token's best alternative (``inf`` when it has none)."""

    nodes: torch.Tensor
    values: torch.Tensor
    margin: torch.Tensor


@dataclass(frozen=True)
class PriceResult:
    """``prices`` float32 ``[G, E + 1]`` (the drop node last), the final ``candidates`` and the ``units`` held at
    the final prices, the price updates made (``iterations``), and whether no node was over-full at the end."""

    prices: torch.Tensor
    candidates: Candidates
    units: Units
    iterations: int
    converged: bool


def _reduced_all(scores: torch.Tensor, prices: torch.Tensor, excluded: Optional[torch.Tensor]) -> torch.Tensor:
    """``scores - prices`` ``[G, T, E]`` with ``-inf`` at every token's excluded experts (``excluded`` long
    ``[G, T, R]``, ``-1`` = none)."""
    e = scores.shape[2]
    red = scores - prices[:, :e].unsqueeze(1)
    if excluded is not None:
        spare = torch.cat([red, red.new_empty(red.shape[:2] + (1,))], dim=2)
        spare.scatter_(2, torch.where(excluded >= 0, excluded, e), -float("inf"))
        red = spare[..., :e]
    return red


def _drop_columns(g: int, t: int, units: int, drop: torch.Tensor, experts: int, like: torch.Tensor) -> tuple:
    """``units`` candidate columns for the drop node: value 0 where the group may drop, ``-inf`` elsewhere."""
    allowed = (drop > 0).view(g, 1, 1).expand(g, t, units)
    values = torch.where(allowed, like.new_zeros(()), like.new_full((), -float("inf")))
    return values, torch.full((g, t, units), experts, dtype=torch.long, device=like.device)


def candidates(
    scores: torch.Tensor,
    prices: torch.Tensor,
    width: int,
    units: int,
    excluded: Optional[torch.Tensor] = None,
    drop: Optional[torch.Tensor] = None,
) -> Candidates:
    """Every token's ``width`` experts of largest reduced value at ``prices`` (all experts when ``width >= E``), plus
    ``units`` drop-node columns when ``drop`` (long ``[G]``, units each group may leave unplaced) is given."""
    g, t, e = scores.shape
    red = _reduced_all(scores, prices, excluded)
    if width >= e:
        values = torch.where(torch.isfinite(red), scores, torch.full_like(scores, -float("inf")))
        nodes = torch.arange(e, device=scores.device).expand(g, t, e)
        bound = torch.full((g, t, 1), -float("inf"), dtype=scores.dtype, device=scores.device)
    else:
        top, pos = row_top(red, width + 1)
        nodes = pos[..., :width]
        values = torch.gather(scores, 2, nodes)
        values = torch.where(torch.isfinite(top[..., :width]), values, torch.full_like(values, -float("inf")))
        bound = top[..., width:]
    if drop is not None:
        dv, dn = _drop_columns(g, t, units, drop, e, values)
        values, nodes = torch.cat([values, dv], dim=2), torch.cat([nodes, dn], dim=2)
    return Candidates(values.contiguous(), nodes.contiguous(), bound)


def hold(cands: Candidates, prices: torch.Tensor, demand: torch.Tensor, units: int) -> Units:
    """The units each token holds at ``prices``: its ``demand`` ``[G, T, 1]`` (at most ``units``) best candidates by
    reduced value; a unit below the token's ``bound`` is :data:`OUTSIDE`."""
    g = prices.shape[0]
    price_of = torch.gather(prices, 1, cands.nodes.reshape(g, -1)).view(cands.nodes.shape)
    vals, pos = row_top(cands.values - price_of, units + 1)
    held_vals = vals[..., :units]
    nodes = torch.gather(cands.nodes, 2, pos[..., :units].clamp(max=cands.nodes.shape[2] - 1))
    # The best alternative to a held unit: the token's next candidate, or an expert outside its candidates.
    alt = torch.maximum(torch.gather(vals, 2, demand.clamp(max=units)), cands.bound)
    active = (torch.arange(units, device=prices.device) < demand) & torch.isfinite(held_vals)
    nodes = torch.where(held_vals >= cands.bound, nodes, torch.full_like(nodes, OUTSIDE))
    nodes = torch.where(active, nodes, torch.full_like(nodes, NONE))
    margin = torch.where(torch.isfinite(alt), held_vals - alt, torch.full_like(held_vals, float("inf")))
    return Units(nodes, held_vals, margin)


def node_load(nodes: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Long ``[G, N]``: units held on each node (entries ``< 0`` ignored)."""
    g = nodes.shape[0]
    flat = nodes.reshape(g, -1)
    idx = torch.where(flat >= 0, flat, num_nodes)
    out = torch.zeros(g, num_nodes + 1, dtype=torch.long, device=nodes.device)
    out.scatter_add_(1, idx, torch.ones_like(idx))
    return out[:, :num_nodes]


def price_step(units: Units, cap: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The price increase ``[G, N]`` of one auction step and the over-full mask: each node holding more than
    ``cap`` ``[G, N]`` units rises by the ``excess``-th smallest margin of its holders plus ``eps`` ``[G, 1]``."""
    g, n = cap.shape
    excess = node_load(units.nodes, n) - cap
    over = excess > 0
    seg = torch.where(units.nodes >= 0, units.nodes + n * torch.arange(g, device=cap.device).view(g, 1, 1), g * n)
    kth = segment_kth(units.margin.reshape(-1), seg.reshape(-1), g * n, excess.reshape(-1)).view(g, n)
    # A node whose holders have nowhere else to go (infinite margin) cannot shed them by pricing.
    raise_by = torch.where(over & torch.isfinite(kth), kth + eps, torch.zeros_like(kth))
    return raise_by, over


def _refresh(
    cands: Candidates, scores: torch.Tensor, prices: torch.Tensor, width: int, units: int,
    excluded: Optional[torch.Tensor], drop: Optional[torch.Tensor], rows: torch.Tensor,
) -> Candidates:
    """``cands`` with the candidates of the tokens where ``rows`` ``[G, T]`` is true recomputed at ``prices``."""
    gi, ti = torch.nonzero(rows, as_tuple=True)
    if gi.numel() == 0:
        return cands
    sub = candidates(
        scores[gi, ti].unsqueeze(1), prices[gi], width, units,
        None if excluded is None else excluded[gi, ti].unsqueeze(1), None if drop is None else drop[gi],
    )
    values, nodes, bound = cands.values.clone(), cands.nodes.clone(), cands.bound.clone()
    values[gi, ti], nodes[gi, ti], bound[gi, ti] = sub.values[:, 0], sub.nodes[:, 0], sub.bound[:, 0]
    return Candidates(values, nodes, bound)


def solve_prices(
    scores: torch.Tensor,
    demand: torch.Tensor,
    capacity: torch.Tensor,
    config: PriceConfig = PriceConfig(),
    excluded: Optional[torch.Tensor] = None,
    drop: Optional[torch.Tensor] = None,
    prices0: Optional[torch.Tensor] = None,
) -> PriceResult:
    """Run the ascending auction on ``scores`` float32 ``[G, T, E]``: token demands long ``[G, T]``, expert
    capacities long ``[G, E]``, optional ``excluded`` experts per token (long ``[G, T, R]``, ``-1`` = none), drop-node
    capacities ``drop`` long ``[G]`` (``None``: every unit must be placed on an expert), and starting prices
    ``prices0`` ``[G, E + 1]`` (``None``: zero). Stops when no node is over-full or after ``config.iters`` updates.
    """
    g, t, e = scores.shape
    units = int(demand.max()) if demand.numel() else 0
    width = config.candidate_width(units, e)
    prices = scores.new_zeros(g, e + 1) if prices0 is None else prices0.to(scores.dtype).clone()
    cap = torch.cat([capacity, (drop if drop is not None else capacity.new_zeros(g)).view(g, 1)], dim=1)
    need = demand.unsqueeze(2)
    scale = scores.amax(dim=2).mean(dim=1, keepdim=True).clamp(min=torch.finfo(scores.dtype).tiny)
    cands = candidates(scores, prices, width, units, excluded, drop)
    held = hold(cands, prices, need, units)
    # On CPU a convergence test costs nothing; on an accelerator it is a host synchronisation, so it runs every
    # ``check_every`` iterations only (and the loop never runs more than ``iters`` of them).
    every = 1 if scores.device.type == "cpu" else max(1, config.check_every)
    done, it = False, 0
    while it < config.iters:
        rate = config.eps_start * (config.eps_end / config.eps_start) ** (it / max(1, config.iters - 1))
        raise_by, over = price_step(held, cap, scale * rate)
        if it % every == 0:
            outside = held.nodes == OUTSIDE
            any_over, any_outside = torch.stack([over.any(), outside.any()]).tolist()
            if not (any_over or any_outside):
                done = True
                break
            if any_outside:
                cands = _refresh(cands, scores, prices, width, units, excluded, drop, outside.any(dim=2))
                held = hold(cands, prices, need, units)
                raise_by, over = price_step(held, cap, scale * rate)
        prices = prices + raise_by
        held = hold(cands, prices, need, units)
        it += 1
    if not done:
        outside = held.nodes == OUTSIDE
        if bool(outside.any()):
            cands = _refresh(cands, scores, prices, width, units, excluded, drop, outside.any(dim=2))
            held = hold(cands, prices, need, units)
        done = not bool((node_load(held.nodes, e + 1) > cap).any() | (held.nodes == OUTSIDE).any())
    return PriceResult(prices, cands, held, it, done)


def dual_bound(units: Units, bound: torch.Tensor, prices: torch.Tensor, cap: torch.Tensor, demand: torch.Tensor) -> torch.Tensor:
    """An upper bound on the optimum of each group ``[G]`` (float64) from any prices ``>= 0``: the sum over tokens of
    their ``demand`` best reduced values (a value below the token's ``bound`` counts as the bound: some expert outside
    its candidates may be worth that much) plus ``sum(cap * prices)`` (weak LP duality; docs/dual.md)."""
    units_count = units.values.shape[2]
    active = torch.arange(units_count, device=prices.device) < demand.unsqueeze(2)
    best = torch.maximum(units.values, bound).double()
    tokens = torch.where(active & torch.isfinite(best), best, torch.zeros_like(best)).sum(dim=(1, 2))
    return tokens + (cap.double() * prices.double()).sum(dim=1)


__all__ = [
    "NONE", "OUTSIDE", "Candidates", "PriceConfig", "PriceResult", "Units", "candidates", "dual_bound", "hold",
    "node_load", "price_step", "solve_prices",
]

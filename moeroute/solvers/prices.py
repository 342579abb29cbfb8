"""Expert prices for the routing transportation problem (the LP duals), found by an ascending auction in which every
over-full expert raises its price just enough to push its excess out.

The problem (one per group): token ``t`` needs ``d_t`` units, each on a distinct allowed expert; expert ``e`` takes at
most ``cap[e]`` units; an optional *drop node* (node ``E``: value 0, several units per token) takes the units the
experts cannot (``drop`` of them). At node prices ``p`` a token's best response is its ``d_t`` largest *reduced
values* ``score - p``. Prices start at 0 (or at a warm start) and only rise; after every update each token holds its
best response again, so:

- **Complementary slackness holds except at over-full experts.** Every token holds its ``d_t`` best units at the
  current prices, and a price rises only while its node is over-full, so a node with a positive price has been
  full. When no node is over-full the held units are an optimum of the LP (docs/dual.md).
- **Only a few candidates per token matter.** Reduced values are computed on each token's ``width`` best experts at
  the prices of the moment; the largest reduced value outside them is a *bound* that stays valid while prices only
  rise. A unit that falls below its bound is :data:`OUTSIDE`; at the next convergence test those tokens' candidates
  are recomputed over all experts. An iteration costs ``O(G T width)``, not ``O(G T E)``.

An over-full node rises by the ``excess``-th smallest *margin* among its holders (what a held value exceeds the
token's best alternative) plus ``eps``. Exact margins alone make prices creep when two experts trade the same
near-indifferent tokens back and forth; ``eps``, a fraction of the group's mean top-1 score shrinking geometrically
from ``eps_start`` to ``eps_end``, ends such trades.

The loop never synchronises with the host except at its convergence tests, which run every ``check_every``
iterations on an accelerator (every iteration on CPU, where they are free); ``iters`` caps the iterations. This is
the accelerator path of ``dual`` and MaxScore's stage 2; on CPU they route by the compiled auction of
moeroute/solvers/auction.py, and this loop runs there only when called directly (as the tests do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from moeroute.solvers.rows import order_key, row_top, segment_kth
from moeroute.solvers.sync import check_now

NONE = -1
"""Node of an inactive unit (the token needs fewer units, or has no allowed expert left)."""
OUTSIDE = -2
"""Node of a unit whose best place is an expert outside the token's candidates (unknown until they are refreshed)."""
_HALF = 1 << 31
_LOW = 0xFFFFFFFF


@dataclass(frozen=True)
class PriceConfig:
    """Knobs of :func:`solve_prices` (see the module docstring)."""

    iters: int = 16
    width: int = 0
    eps_start: float = 0.1
    eps_end: float = 1e-3
    check_every: int = 4

    def candidate_width(self, units: int, experts: int) -> int:
        """Candidates per token: ``width``; when 0, ``2 * units + 8``, or every expert if that is more than half of
        them (the refreshes would then cost more than they save). At least ``units + 1``, at most ``E``."""
        want = self.width if self.width > 0 else 2 * units + 8
        if self.width == 0 and 2 * want > experts:
            want = experts
        return min(experts, max(want, units + 1))

    def eps(self, it: int) -> float:
        """The extra price step of iteration ``it``, as a fraction of the group's mean top-1 score."""
        return self.eps_start * (self.eps_end / self.eps_start) ** (it / max(1, self.iters - 1))


@dataclass(frozen=True)
class Candidates:
    """Each token's candidate entries, rows ``N = G*T``: raw ``values`` float32 ``[N, M]`` (``-inf`` = not
    allowed), their ``nodes`` long ``[N, M]`` as global ids ``g*(E+1) + node`` (node ``E`` = the drop node) and
    ``bound`` float32 ``[N]``: no expert outside the candidates has a larger reduced value while prices only rise
    (``-inf`` when every expert is a candidate)."""

    values: torch.Tensor
    nodes: torch.Tensor
    bound: torch.Tensor
    dense: tuple[int, int] = (0, 0)
    """``(G, E)`` when the candidates are every expert in order and nothing else (then reduced values are a
    broadcast subtraction, no gather); ``(0, 0)`` otherwise."""


@dataclass(frozen=True)
class Units:
    """The units every token holds at some prices: ``nodes`` long ``[G, T, K]`` (a node ``< E + 1``, or
    :data:`NONE`, :data:`OUTSIDE`), reduced ``values`` float32 ``[G, T, K]`` (largest first) and ``margin`` float32
    ``[G, T, K]``: how much each held value exceeds the token's best alternative (``inf`` if it has none)."""

    nodes: torch.Tensor
    values: torch.Tensor
    margin: torch.Tensor


@dataclass(frozen=True)
class PriceResult:
    """``prices`` float32 ``[G, E + 1]`` (the drop node last), the final ``candidates``, the ``units`` held at the
    final prices, the price updates made (``iterations``) and whether no node was over-full at the end
    (``converged``: every unit then fits; docs/dual.md says what that guarantees)."""

    prices: torch.Tensor
    candidates: Candidates
    units: Units
    iterations: int
    converged: bool


# ----------------------------------------------------------------------------------------------- candidates


def candidates(
    scores: torch.Tensor,
    prices: torch.Tensor,
    width: int,
    units: int,
    excluded: Optional[torch.Tensor] = None,
    drop: Optional[torch.Tensor] = None,
) -> Candidates:
    """Every token's ``width`` experts of largest reduced value at ``prices`` ``[G, E + 1]`` (all experts when
    ``width >= E``; on ties either may be taken), plus ``units`` drop-node columns (value 0, or ``-inf`` in groups
    whose ``drop`` capacity is 0) when ``drop`` (long ``[G]``) is given. ``excluded`` long ``[G, T, R]``: experts
    each token may not take (``-1`` = none)."""
    g, t, e = scores.shape
    n = e + 1
    base = (torch.arange(g, device=scores.device) * n).view(g, 1, 1)
    red = scores - prices[:, :e].unsqueeze(1)
    if excluded is not None:
        spare = torch.cat([red, red.new_empty(g, t, 1)], dim=2)
        spare.scatter_(2, torch.where(excluded >= 0, excluded, e), -float("inf"))
        red = spare[..., :e]
    if width >= e:
        values = torch.where(torch.isfinite(red), scores, torch.full_like(scores, -float("inf")))
        nodes = torch.arange(e, device=scores.device).expand(g, t, e)
        bound = torch.full((g, t), -float("inf"), dtype=scores.dtype, device=scores.device)
    else:
        nodes, bound = _best_columns(red, width)
        top = torch.gather(red, 2, nodes)
        values = torch.where(torch.isfinite(top), torch.gather(scores, 2, nodes), top)
    nodes = nodes + base
    if drop is not None:
        allowed = (drop > 0).view(g, 1, 1).expand(g, t, units)
        values = torch.cat([values, torch.where(allowed, 0.0, -float("inf")).to(values.dtype)], dim=2)
        nodes = torch.cat([nodes, (base + e).expand(g, t, units)], dim=2)
    m = values.shape[2]
    dense = (g, e) if width >= e and drop is None else (0, 0)
    return Candidates(
        values.reshape(g * t, m).contiguous(), nodes.reshape(g * t, m).contiguous(), bound.reshape(-1), dense
    )


def _best_columns(red: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``width`` largest entries' positions along the last dim of ``red`` ``[G, T, E]`` (best first) and the
    ``(width+1)``-th largest value ``[G, T]``."""
    top, pos = row_top(red, width + 1)
    return pos[..., :width], top[..., width]


def _refresh(cands: Candidates, rows: torch.Tensor, make: Callable, prices: torch.Tensor) -> Candidates:
    """Replace, in place, the rows of ``cands`` where ``rows`` ``[N]`` is true by ``make(row_ids, prices)``."""
    ids = torch.nonzero(rows).squeeze(1)
    if ids.numel():
        sub = make(ids, prices)
        cands.values[ids], cands.nodes[ids], cands.bound[ids] = sub.values, sub.nodes, sub.bound
    return cands


# ----------------------------------------------------------------------------------------------- one step


@dataclass(frozen=True)
class _Held:
    """Flat held units at some prices: global ``nodes`` ``[N, K]`` (negative = :data:`NONE`/:data:`OUTSIDE`),
    reduced ``values`` and ``margin`` ``[N, K]`` (largest value first)."""

    nodes: torch.Tensor
    values: torch.Tensor
    margin: torch.Tensor


def _hold_torch(values: torch.Tensor, nodes: torch.Tensor, bound: torch.Tensor, prices: torch.Tensor,
                demand: torch.Tensor, k: int) -> _Held:
    """Each row's ``demand`` best candidates by reduced value ``values - prices[nodes]`` (at most ``k``), with their
    margins over the row's best alternative (its next candidate or its ``bound``); a unit below the bound is
    :data:`OUTSIDE`, a unit past the demand (or on a ``-inf`` value) :data:`NONE`."""
    vals, pos = row_top(values - prices[nodes], k + 1)
    held = torch.gather(nodes, 1, pos[:, :k].clamp(max=nodes.shape[1] - 1))
    return _finish_hold(vals, held, bound, demand, k)


def _finish_hold(vals: torch.Tensor, held: torch.Tensor, bound: torch.Tensor, demand: torch.Tensor, k: int) -> _Held:
    """The held units from each row's best reduced values ``vals`` ``[N, k + 1]`` (largest first) on nodes ``held``
    ``[N, k]``: margins over the row's best alternative, :data:`OUTSIDE` below the bound, :data:`NONE` past the
    demand."""
    bound = bound.reshape(-1, 1)
    at = demand.reshape(-1, 1).clip(max=k)
    alt = torch.maximum(torch.take_along_dim(vals, at, 1), bound)
    top = vals[:, :k]
    active = (torch.arange(k, device=vals.device).reshape(1, k) < demand.reshape(-1, 1)) & torch.isfinite(top)
    held = torch.where(active, torch.where(top >= bound, held, OUTSIDE), NONE)
    # (-inf - -inf would be NaN: a row without alternative has an infinite margin, one without units none.)
    margin = torch.where(torch.isfinite(alt), top - torch.where(torch.isfinite(alt), alt, 0), float("inf"))
    return _Held(held, top, margin)


def _raise_torch(held: _Held, cap: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The price increase ``[G*(E+1)]`` of one auction step and whether any node is over-full (a device bool): a
    node holding more than ``cap`` units rises by the ``excess``-th smallest margin of its holders plus ``eps``. A
    node whose holders have nowhere else to go (infinite margin) cannot shed them by pricing and stays put."""
    total = cap.shape[0]
    ids = torch.where(held.nodes >= 0, held.nodes, total).reshape(-1)
    load = torch.bincount(ids, minlength=total + 1)[:total]
    excess = load - cap
    over = excess > 0
    kth = segment_kth(held.margin.reshape(-1), ids, total, excess)
    step = torch.where(over & torch.isfinite(kth), kth + eps, torch.zeros_like(kth))
    return step, over.any()


# ----------------------------------------------------------------------------------------------- the auction


def solve_prices(
    scores: torch.Tensor,
    demand: torch.Tensor,
    units: int,
    capacity: torch.Tensor,
    config: PriceConfig = PriceConfig(),
    excluded: Optional[torch.Tensor] = None,
    drop: Optional[torch.Tensor] = None,
    prices0: Optional[torch.Tensor] = None,
) -> PriceResult:
    """Run the ascending auction on ``scores`` float32 ``[G, T, E]`` with token demands long ``[G, T]`` (at most
    ``units`` each, a bound the caller knows without reading the device), expert capacities long ``[G, E]``, optional ``excluded`` experts per token (long ``[G, T, R]``, ``-1`` = none), drop-node
    capacities ``drop`` long ``[G]`` (``None``: every unit goes to an expert) and starting prices ``prices0`` float32
    ``[G, E + 1]`` (``None``: zero)."""
    g, t, e = scores.shape
    n = e + 1
    k = units
    width = config.candidate_width(k, e)
    prices = scores.new_zeros(g, n) if prices0 is None else prices0.to(scores.dtype).clone()
    cap = torch.cat([capacity, (drop if drop is not None else capacity.new_zeros(g)).view(g, 1)], dim=1).reshape(-1)
    scale = scores.amax(dim=2).mean(dim=1).clamp(min=torch.finfo(scores.dtype).tiny)
    cands = candidates(scores, prices, width, k, excluded, drop)
    flat_demand = demand.reshape(-1)

    def remake(ids: torch.Tensor, at: torch.Tensor) -> Candidates:
        gi, ti = ids // t, ids % t
        sub = candidates(scores[gi, ti].unsqueeze(1), at.view(g, n)[gi], width, k,
                         None if excluded is None else excluded[gi, ti].unsqueeze(1),
                         None if drop is None else drop[gi])
        return Candidates(sub.values, sub.nodes - (torch.arange(gi.numel(), device=ids.device) * n).view(-1, 1)
                          + (gi * n).view(-1, 1), sub.bound)

    prices_flat, cands, held, it, done = _auction_torch(
        cands, prices.reshape(-1), cap, flat_demand, k, scale.repeat_interleave(n), config, width < e, remake,
    )
    units = Units(*(torch.as_tensor(a).view(g, t, k) for a in (held.nodes, held.values, held.margin)))
    local = torch.where(units.nodes >= 0, units.nodes % n, units.nodes)
    return PriceResult(prices_flat.view(g, n), cands, Units(local, units.values, units.margin), it, done)


def _auction_torch(cands, prices, cap, demand, k, scale, config, partial, remake):
    """The auction loop in torch (any device): a convergence test (one host synchronisation, which also refreshes
    the candidates of tokens that went outside them) every ``check_every`` iterations, never more than ``iters``."""
    p = prices.clone()

    def hold_all(c: Candidates) -> _Held:
        return _hold_torch(c.values, c.nodes, c.bound, p, demand, k)

    held = hold_all(cands)
    it, done = 0, False
    while it < config.iters:
        step, any_over = _raise_torch(held, cap, scale * config.eps(it))
        if check_now(p.device, it, config.check_every):
            outside = (held.nodes == OUTSIDE).any(dim=1)
            over_now, outside_now = torch.stack([any_over, outside.any()]).tolist()
            if not (over_now or outside_now):
                done = True
                break
            if partial and outside_now:
                cands = _refresh(cands, outside, remake, p)
                held = hold_all(cands)
                step, any_over = _raise_torch(held, cap, scale * config.eps(it))
        p = p + step
        held = hold_all(cands)
        it += 1
    if not done:
        outside = (held.nodes == OUTSIDE).any(dim=1)
        load = torch.bincount(torch.where(held.nodes >= 0, held.nodes, cap.numel()).reshape(-1), minlength=cap.numel() + 1)
        outside_now, over_now = torch.stack([outside.any(), (load[:-1] > cap).any()]).tolist()
        if partial and outside_now:
            cands = _refresh(cands, outside, remake, p)
            held = hold_all(cands)
            load = torch.bincount(torch.where(held.nodes >= 0, held.nodes, cap.numel()).reshape(-1), minlength=cap.numel() + 1)
            outside_now, over_now = torch.stack([(held.nodes == OUTSIDE).any(), (load[:-1] > cap).any()]).tolist()
        done = not (outside_now or over_now)
    return p, cands, held, it, done


# ----------------------------------------------------------------------------------------------- certificate


def dual_bound(result: PriceResult, capacity: torch.Tensor, demand: torch.Tensor) -> torch.Tensor:
    """An upper bound ``[G]`` (float64) on each group's LP optimum from the prices of ``result``: the sum over tokens
    of their ``demand`` ``[G, T]`` best reduced values (a value below the token's bound counts as the bound: an
    expert outside its candidates may be worth that much) plus ``sum(capacity * prices)`` over the nodes
    (``capacity`` long ``[G, E + 1]``). Weak LP duality: valid for any prices ``>= 0`` (docs/dual.md)."""
    g, t, k = result.units.values.shape
    bound = result.candidates.bound.view(g, t, 1)
    active = torch.arange(k, device=bound.device) < demand.unsqueeze(2)
    best = torch.maximum(result.units.values, bound).double()
    tokens = torch.where(active & torch.isfinite(best), best, torch.zeros_like(best)).sum(dim=(1, 2))
    return tokens + (capacity.double() * result.prices.double()).sum(dim=1)


__all__ = [
    "NONE", "OUTSIDE", "Candidates", "PriceConfig", "PriceResult", "Units", "candidates", "dual_bound",
    "order_key", "solve_prices",
]

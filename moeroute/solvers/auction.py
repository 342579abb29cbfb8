"""The CPU price auction: expert prices for the routing transportation problem by a compiled Gauss-Seidel ascending
auction (numba), the CPU path of the ``dual`` router and of MaxScore's stage 2 (docs/dual.md).

The problem of one group: token ``t`` needs ``d_t <= k`` more units, each on a distinct expert it may take (not one
of its ``fixed`` experts), expert ``e`` takes at most ``cap_e``; a drop node takes what capacity cannot. At expert
prices ``p`` a token's best response is its ``d_t`` experts of largest reduced value ``S - p``.

**Auction.** Every token starts with its best response at the starting prices. Then, one over-full expert at a
time (a Gauss-Seidel sweep over the experts, repeated), expert ``e`` with ``x`` units too many raises its price by
the ``(x+1)``-th smallest *margin* of its holders (what a holder loses by moving to its best alternative) or by the
``x``-th plus ``eps``, whichever is larger, and its ``x`` holders of smallest margin move to their alternatives.
Exactly ``x`` units leave, so an expert that ever raised its price stays exactly full or over-full, and every token
holds, up to ``eps`` per unit, its best response. When no expert is over-full the routing is within ``eps`` per unit
of the LP optimum (docs/dual.md gives the certificate). Each step is a raise of at least ``eps``: the auction ends.

**Cost.** A shed reads its holders' stored margin bounds sequentially and looks up only the few that can be among
the smallest (margins only grow while prices rise); each token keeps its few best free experts at hand, so that a
rise of its alternative's price rarely needs a scan of its row. With ``warm`` and tight capacity, every group
starts from prices solved on a pooled subsample of all groups (coarse to fine), which cuts the sheds of a cold start
several times (benchmarks/PERF.md). A budget of ``sweeps`` caps the work; what is over-full then keeps its holders
of largest margin and the others take their best expert with room.

numba compiles the kernels on first use and caches them on disk (``cache=True``); ``import moeroute`` does not load
numba. The accelerator paths stay in torch (moeroute/solvers/prices.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

POOL_RATIO = 4
"""Each pooled level holds every ``POOL_RATIO``-th token of the level above."""
POOL_MIN_TOKENS = 1024
"""The smallest pooled level has at least this many tokens."""
POOL_SLACK = 0.05
POOL_SHRINK = 0.9
"""Pooled prices are scaled by ``POOL_SHRINK`` and lowered by ``POOL_SLACK`` times the mean unit value before a
level starts from them: an ascending auction climbs from prices too low in a few large steps, while a price too
high makes every other price creep up."""


@dataclass(frozen=True)
class AuctionConfig:
    """``eps``: the extra price step, a fraction of the mean value a unit holds at the start; ``sweeps``: the budget
    of Gauss-Seidel sweeps; ``pool``: start tight problems from pooled-subsample prices; ``cached``: free experts
    each token keeps at hand (0 = by the number of experts, :func:`cache_size`)."""

    eps: float = 0.02
    sweeps: int = 30
    pool: bool = True
    cached: int = 0


@dataclass(frozen=True)
class AuctionResult:
    """``experts`` long ``[G, T, k]``: each token's new experts by score, best first, ``-1`` after (no unit, or a
    unit left open for the repair); ``prices`` float32 ``[G, E + 1]`` (the drop node last); per group, int64
    ``[G]``: ``sweeps``, ``sheds``, ``excess`` (units over capacity when the budget ended), ``placed_after``
    (units placed after the auction: displaced or on the drop node), ``open`` (units no expert with room could take),
    ``converged`` (bool); ``dual`` float64 ``[G]``: an upper bound on the dual function at the final prices with the
    drop node worth ``drop`` (score units) per unit; ``objective`` float64 ``[G]``; ``pooled_levels``."""

    experts: torch.Tensor
    prices: torch.Tensor
    sweeps: np.ndarray
    sheds: np.ndarray
    excess: np.ndarray
    placed_after: np.ndarray
    open: np.ndarray
    converged: np.ndarray
    dual: np.ndarray
    objective: np.ndarray
    drop: np.ndarray
    pooled_levels: int


def cache_size(experts: int, cached: int = 0) -> int:
    """Free experts each token keeps at hand: ``cached``, or by default 2 for ``E <= 64`` and 8 above (measured,
    benchmarks/PERF.md: with many experts a token's alternatives are rescanned less often)."""
    want = cached if cached > 0 else (2 if experts <= 64 else 8)
    return max(1, min(want, experts))


def integer_scale(scores: torch.Tensor) -> float:
    """The scale of the kernels' integer values: ``|S| * scale <= 2^29`` (int32 values, int64 prices)."""
    top = float(scores.abs().amax()) if scores.numel() else 0.0
    return float(1 << 29) / top if top > 0 else 1.0


def auction_route(
    scores: torch.Tensor,
    demand: torch.Tensor,
    capacity: torch.Tensor,
    k: int,
    config: AuctionConfig = AuctionConfig(),
    fixed: Optional[torch.Tensor] = None,
    prices0: Optional[torch.Tensor] = None,
) -> AuctionResult:
    """Route by the compiled auction: ``scores`` float ``[G, T, E]`` (CPU), token demands long ``[G, T]`` (``<= k``),
    expert capacities long ``[G, E]``, ``fixed`` long ``[G, T, R]`` experts a token may not take (``-1`` = none),
    starting prices ``prices0`` float ``[G, E + 1]`` (``None``: cold, or pooled when ``config.pool``)."""
    from moeroute.solvers import _auction_jit as kernels

    g, t, e = scores.shape
    s = scores.detach()
    if s.dtype not in (torch.float32, torch.float64):
        s = s.float()
    s = s.contiguous().numpy()
    fixed_np = (np.empty((g, t, 0), np.int64) if fixed is None
                else np.ascontiguousarray(fixed.detach().numpy(), dtype=np.int64))
    demand_np = np.ascontiguousarray(demand.detach().numpy(), dtype=np.int64)
    cap_np = np.ascontiguousarray(capacity.detach().numpy(), dtype=np.int64)
    prices = (np.zeros((g, e + 1)) if prices0 is None
              else np.ascontiguousarray(prices0.detach().double().numpy()).copy())
    out = np.empty((g, t, k), np.int64)
    stats = np.zeros((g, kernels.STATS), np.int64)
    cert = np.zeros((g, kernels.CERT))
    warm = config.pool and prices0 is None
    min_tokens = POOL_MIN_TOKENS
    levels = kernels.auction_groups(
        s, integer_scale(scores), fixed_np, demand_np, cap_np, k, float(config.eps), int(config.sweeps),
        cache_size(e, config.cached), warm, POOL_RATIO, min_tokens, POOL_SLACK, POOL_SHRINK, out, prices, stats,
        cert,
    )
    return AuctionResult(
        experts=torch.from_numpy(out),
        prices=torch.from_numpy(prices.astype(np.float32)),
        sweeps=stats[:, kernels.S_SWEEPS],
        sheds=stats[:, kernels.S_SHEDS],
        excess=stats[:, kernels.S_EXCESS],
        placed_after=stats[:, kernels.S_PLACED],
        open=stats[:, kernels.S_OPEN],
        converged=stats[:, kernels.S_CONVERGED].astype(bool),
        dual=cert[:, kernels.C_DUAL],
        objective=cert[:, kernels.C_OBJECTIVE],
        drop=cert[:, kernels.C_DROP],
        pooled_levels=int(levels),
    )


def greedy_first(scores: torch.Tensor, capacity: int) -> tuple[torch.Tensor, int]:
    """MaxScore's stage 1 on CPU, the token loop of its definition compiled: long ``[G, T]`` (``-1`` when every
    expert is full) and how many tokens did not get their top expert. The same choices as the round-based torch
    version (moeroute/routers/maxscore.py ``greedy_top1``), which needs no loop over tokens on an accelerator."""
    from moeroute.solvers import _auction_jit as kernels

    s = scores.detach()
    if s.dtype not in (torch.float32, torch.float64):
        s = s.float()
    out = np.empty(s.shape[:2], np.int64)
    diverted = kernels.greedy_first(s.contiguous().numpy(), int(capacity), out)
    return torch.from_numpy(out), int(diverted)


__all__ = ["AuctionConfig", "AuctionResult", "auction_route", "cache_size", "greedy_first", "integer_scale"]

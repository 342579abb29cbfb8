"""BASE layers: ``k = 1`` and every expert takes exactly ``T/E`` tokens, a balanced linear assignment, solved
exactly or by the ε-auction fairseq uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import RouterInput
from moeroute.core.routing import Slots
from moeroute.routers._topk import ScoreOptions
from moeroute.routers.registry import register_router
from moeroute.solvers import solve_optimum


@dataclass(frozen=True)
class BaseOptions(ScoreOptions):
    """``score``: the scores whose balanced optimum it finds (softmax, sigmoid, sqrt_softplus). ``solver``: ``exact`` (min-cost flow, OR-tools; faster here than scipy's ``linear_sum_assignment`` on the
    expert slots replicated ``T/E`` times) or
    ``auction`` (an ε-auction in the style of fairseq's ``balanced_assignment``: experts bid for tokens).
    ``eps``: the auction's bid increment as a fraction of the score range (fairseq: 1/50); ``max_rounds``: the
    auction's round cap, after which leftover tokens fill the free slots in order (counted in ``meta``)."""

    solver: Literal["exact", "auction"] = "exact"
    eps: float = 0.02
    max_rounds: int = 10_000

    def validate(self) -> None:
        if not self.eps > 0:
            raise MoeRouteError(f"eps must be > 0, got {self.eps}")
        if self.max_rounds < 1:
            raise MoeRouteError(f"max_rounds must be >= 1, got {self.max_rounds}")


def balanced_exact(scores: torch.Tensor) -> torch.Tensor:
    """Expert of each token ``[G, T]`` maximising the score sum with exactly ``T/E`` tokens per expert.

    With ``k = 1`` and ``C = T/E`` the MCMF optimum fills every slot, so it is the balanced assignment; OR-tools
    solves all groups in one network, several times faster than scipy's ``linear_sum_assignment`` on the expert
    slots replicated ``T/E`` times (benchmarks/PERF.md; the reference in
    ``tests/reference/assignment.py``; ``tests/test_base.py`` checks both reach the same optimum).
    """
    g, t, e = scores.shape
    solution = solve_optimum(scores, 1, t // e, "ortools", "mcmf")
    owner = np.argmax(solution.assignment, axis=2)
    return torch.from_numpy(owner).to(scores.device)


def balanced_auction(scores: torch.Tensor, eps: float, max_rounds: int) -> tuple[torch.Tensor, int, int]:
    """ε-auction for the balanced assignment, batched over groups: expert of each token ``[G, T]``, rounds run,
    and tokens placed by the fallback.

    Tokens carry prices. In each round every expert with free slots (``f`` of them) bids for its ``f`` best tokens
    by value ``score - price`` among those it does not hold; the bid raises a token's price to
    ``score - w + ε·range`` where ``w`` is the expert's ``(f+1)``-th best value, so the expert stays
    ε-happy with what it wins. Each token goes to its highest bidder, whose previous holder loses it. It ends when
    every token is held (``E·T/E = T`` slots, so then every expert is full). The result is within ``T·ε·range``
    of the optimum (Bertsekas' ε-complementary slackness); fairseq's choice ``ε = range/50`` is coarse.
    """
    g, t, e = scores.shape
    per = t // e
    device = scores.device
    s = scores.transpose(1, 2).double().contiguous()  # [G, E, T]: each expert's row of tokens, contiguous
    span = (s.amax(dim=(1, 2)) - s.amin(dim=(1, 2))).clamp(min=1e-12)
    step = (eps * span).view(g, 1, 1)
    price = torch.zeros(g, 1, t, dtype=s.dtype, device=device)
    owner = torch.full((g, t), -1, dtype=torch.long, device=device)
    neg = torch.tensor(-float("inf"), dtype=s.dtype, device=device)
    experts_idx = torch.arange(e, device=device)
    ranks = torch.arange(per + 1, device=device).view(1, 1, -1)
    rounds = 0
    if e == 1:
        owner.zero_()
    while rounds < max_rounds and bool((owner < 0).any()):
        held = owner.unsqueeze(1) == experts_idx.view(1, e, 1)  # [G, E, T]
        free = per - held.sum(dim=2, keepdim=True)  # [G, E, 1]
        top = torch.topk(torch.where(held, neg, s - price), per + 1, dim=2)  # best tokens each expert lacks
        w = torch.gather(top.values, 2, free)  # [G, E, 1]: the (f+1)-th best value
        bid = torch.where(ranks < free, torch.gather(s, 2, top.indices) - w + step, neg)
        bids = torch.full_like(s, -float("inf")).scatter_(2, top.indices, bid)
        high, bidder = bids.max(dim=1)  # [G, T]
        won = torch.isfinite(high)
        owner = torch.where(won, bidder, owner)
        price = torch.where(won, high, price.squeeze(1)).unsqueeze(1)
        rounds += 1
    leftover = owner < 0
    placed = int(leftover.sum())
    if placed:
        # Fallback after the round cap: leftover tokens fill the free slots, expert by expert, in token order.
        for gi in range(g):
            free = per - torch.bincount(owner[gi][owner[gi] >= 0], minlength=e)
            slots = torch.repeat_interleave(experts_idx, free)
            owner[gi][leftover[gi]] = slots
    return owner, rounds, placed


def _base_refusal(x: RouterInput, opts: BaseOptions) -> Optional[str]:
    """BASE's preconditions: ``k = 1``, ``E | T``, and no capacity below ``T/E``."""
    if x.k != 1:
        return f"routes one expert per token (k=1), got k={x.k}"
    if x.tokens % x.experts != 0:
        return f"gives every expert exactly T/E tokens: T={x.tokens} is not divisible by E={x.experts}"
    if x.capacity is not None and x.capacity < x.tokens // x.experts:
        return f"gives every expert T/E={x.tokens // x.experts} tokens but capacity is {x.capacity} (cf < 1)"
    return None


@register_router(
    "base",
    BaseOptions,
    "BASE layers: k=1, every expert takes exactly T/E tokens by an exact balanced assignment (or ε-auction)",
    "BASE layers (Lewis et al. 2021); fairseq balanced_assignment (auction); OR-tools min-cost flow",
    requires=_base_refusal,
    examples=("base:solver=auction",),
)
def base(x: RouterInput, opts: BaseOptions) -> Slots:
    """Needs ``k = 1`` and ``E | T``; refuses a capacity below ``T/E`` (``cf < 1``) since every expert takes exactly
    ``T/E`` tokens. The assignment maximises the softmax scores (so ``exact`` has zero gap to the MCMF optimum at
    ``cf = 1``); fairseq assigns on the raw token-expert affinities."""
    meta: dict = {}
    if opts.solver == "exact":
        owner = balanced_exact(x.scores)
    else:
        owner, rounds, placed = balanced_auction(x.scores, opts.eps, opts.max_rounds)
        meta = {"auction_rounds": rounds, "auction_fallback": placed}
    return Slots(owner.unsqueeze(2), meta=meta)

"""MaxScore two-stage routing (Dong et al., arXiv 2508.12801): a capacity-aware top-1, then the other ``k-1`` slots
of every token on the residual problem (residual capacity, each token's own stage-1 expert excluded).

Stage 1 (``stage1=``): ``greedy`` walks the tokens in order and gives each its best expert that still has room (the
released code); ``argmax`` gives each token its top expert and lets the first ``C`` comers keep it, the overflow
going to stage 2 with all ``k`` slots open.

Stage 2 (``stage2=``) solves the residual problem: ``sinkhorn`` (entropic OT on the residual, cells capped at 1 when
a token has several open slots, then a capacity-respecting rounding), ``dual`` (expert prices on the residual, the
auction of the ``dual`` router, near-exact; docs/dual.md), ``exact`` (min-cost max-flow on the residual, OR-tools;
what the released code computes with Kuhn-Munkres at k=2), ``iterative`` (rerouting rounds). ``auto`` (the default)
takes ``dual`` on CPU, where the auction is compiled (moeroute/solvers/auction.py) and both faster and nearer the
exact residual than Sinkhorn; on an accelerator ``sinkhorn`` when each token has one slot left (k <= 2) and
``dual`` otherwise. Every variant ends with augmenting paths (``repair=true``) so no slot is left empty that the
residual network could fill. On CPU the greedy stage 1 runs as the token loop of its definition, compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import RouterInput
from moeroute.core.routing import EMPTY, Slots, slots_from_mask
from moeroute.routers._capacity import expert_load, keep_within_capacity, queue_positions, rank_major, token_major
from moeroute.routers._prices import place_units
from moeroute.routers._repair import augment_open_slots, held_mask
from moeroute.routers._reroute import reroute_rounds
from moeroute.routers._topk import ScoreOptions
from moeroute.routers.registry import register_router
from moeroute.solvers import solve_residual
from moeroute.solvers.auction import AuctionConfig, auction_route, greedy_first
from moeroute.solvers.prices import PriceConfig, solve_prices
from moeroute.solvers.sinkhorn import sinkhorn_capped_log, sinkhorn_log
from moeroute.solvers.sync import check_doubling, on_accelerator, use_numpy

_NEG = -float("inf")


@dataclass(frozen=True)
class MaxScoreOptions(ScoreOptions):
    """``score``: the scores it maximises (softmax, sigmoid, sqrt_softplus). ``stage1``: greedy | argmax. ``stage2``: auto | dual | sinkhorn | exact | iterative (module docstring).
    Sinkhorn knobs: ``eps`` (entropic temperature, in score units: the kernel is ``exp(S / eps)``), ``iters``
    (iteration cap), ``tol`` (stop once the row marginals are within ``tol``); the rounding, not the iteration count,
    dominates what is left of the gap. ``plan`` (only matters when a token has two or more open slots: k >= 3, or
    stage-1 overflow): ``joint`` solves one plan for all open slots with every cell capped at 1
    (:func:`sinkhorn_capped_log`); ``rounds`` fills one slot per token per round with the plain, faster Sinkhorn,
    which is about ten times further from the exact residual at k >= 3. Price knobs (``stage2=dual``): on CPU
    ``price_sweeps`` (the compiled auction's sweep cap) and ``price_step`` (its extra step, a fraction of the mean
    score a unit holds at the start); on an accelerator ``price_iters`` (the auction's update cap) and
    ``price_eps`` (its first extra step, as a fraction of the mean top-1 score; the last is 100 times smaller).
    ``repair``: finish with augmenting paths so every feasible slot fills. The measurements behind the defaults
    are in benchmarks/PERF.md."""

    stage1: Literal["greedy", "argmax"] = "greedy"
    stage2: Literal["auto", "dual", "sinkhorn", "exact", "iterative"] = "auto"
    iters: int = 50
    eps: float = 0.01
    tol: float = 1e-2
    repair: bool = True
    plan: Literal["joint", "rounds"] = "joint"
    price_iters: int = 12
    price_eps: float = 0.1
    price_sweeps: int = 30
    price_step: float = 0.02

    def validate(self) -> None:
        if self.price_sweeps < 0:
            raise MoeRouteError(f"price_sweeps must be >= 0, got {self.price_sweeps}")
        if not self.price_step >= 0:
            raise MoeRouteError(f"price_step must be >= 0, got {self.price_step}")
        if self.iters < 1:
            raise MoeRouteError(f"iters must be >= 1, got {self.iters}")
        if self.price_iters < 0:
            raise MoeRouteError(f"price_iters must be >= 0, got {self.price_iters}")
        if not self.price_eps > 0:
            raise MoeRouteError(f"price_eps must be > 0, got {self.price_eps}")
        if not self.eps > 0:
            raise MoeRouteError(f"eps must be > 0, got {self.eps}")
        if not self.tol >= 0:
            raise MoeRouteError(f"tol must be >= 0, got {self.tol}")


# ---------------------------------------------------------------- stage 1


def greedy_top1(
    scores: torch.Tensor, capacity: int, top1: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, int]:
    """Capacity-aware top-1 in token order: token ``t`` takes its best expert that still has room after tokens
    ``0..t-1`` chose (ties: lowest expert id). Returns long ``[G, T]`` (``-1`` when every expert is full) and the
    number of rounds.

    Sequential by definition; computed exactly by rounds over experts instead of a loop over tokens. What token
    ``t`` can choose depends only on the time ``full_at[e]`` at which each expert fills (the token that takes its
    ``C``-th place). Assume the unknown experts never fill and simulate every token at once: the simulation is
    right up to the first time any unknown expert really fills, so the earliest simulated fill is a true one. Fix
    it, repeat; each round fixes one expert, at most ``min(E, T // C)`` fill, so at most that many rounds plus one.
    ``top1`` (optional, long ``[G, T]``): ``torch.argmax(scores, 2)``, when the caller has it already.
    """
    g, t, e = scores.shape
    device = scores.device
    token = torch.arange(t, device=device)
    full_at = torch.full((g, e), t, dtype=torch.long, device=device)  # t = not known to fill
    choice = _open_argmax(scores) if top1 is None else top1.clone()
    accelerator = on_accelerator(device)
    rounds = 0
    # At most min(E, T // C) experts fill before the last token, one per round, plus a round that finds none.
    for r in range(min(e, t // max(capacity, 1)) + 1):
        rounds += 1
        fills = (choice >= 0) & (queue_positions(choice, e) == capacity - 1)
        fills &= torch.gather(full_at == t, 1, choice.clamp(min=0))
        when = torch.full((g, e + 1), t, dtype=torch.long, device=device)
        when.scatter_reduce_(1, torch.where(fills, choice, e), torch.where(fills, token, t).expand(g, t), "amin")
        first = when[:, :e].min(dim=1)
        new = first.values < t
        if check_doubling(device, r) and not bool(new.any()):
            break
        at = first.indices.unsqueeze(1)
        full_at.scatter_(1, at, torch.where(new, first.values, full_at.gather(1, at).squeeze(1)).unsqueeze(1))
        # Closing expert f at time tau changes only the choice of the later tokens that chose f (removing any other
        # expert from a row leaves its first maximum where it was): re-choose those rows alone (on an accelerator,
        # every row, masked, which needs no host synchronisation).
        redo = new.unsqueeze(1) & (choice == first.indices.unsqueeze(1)) & (token.unsqueeze(0) > first.values.unsqueeze(1))
        if accelerator:
            rechosen = _open_argmax(scores, token.view(1, t, 1) <= full_at.unsqueeze(1))
            choice = torch.where(redo, rechosen, choice)
        else:
            gi, ti = torch.nonzero(redo, as_tuple=True)
            choice[gi, ti] = _open_argmax(scores[gi, ti], ti.unsqueeze(1) <= full_at[gi])
    return choice, rounds


def _open_argmax(scores: torch.Tensor, open_to: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Each row's best open expert (first among equals), ``-1`` where none is open or finite: long ``[...]`` of
    ``scores`` / ``open_to`` ``[..., E]`` (``None``: all open)."""
    masked = scores if open_to is None else torch.where(open_to, scores, torch.full_like(scores, _NEG))
    best = torch.max(masked, dim=-1)
    return torch.where(torch.isfinite(best.values), best.indices, -1)


def argmax_top1(scores: torch.Tensor, capacity: int) -> tuple[torch.Tensor, int]:
    """Plain top-1, the first ``C`` comers (token order) kept: long ``[G, T]``, ``-1`` for the overflow; and the
    number of overflowed tokens."""
    choice = torch.argmax(scores, dim=2)
    keep = keep_within_capacity(choice, capacity, scores.shape[2])
    return torch.where(keep, choice, -1), int((~keep).sum())


# ---------------------------------------------------------------- stage 2


def _first_open(experts: torch.Tensor) -> torch.Tensor:
    """Bool ``[G, T, R]``: each token's first empty slot."""
    empty = experts < 0
    return empty & (torch.cumsum(empty.long(), dim=2) == 1)


def residual_plan(
    scores: torch.Tensor, experts: torch.Tensor, capacity: int, eps: float, iters: int, tol: float, joint: bool = False
) -> tuple[torch.Tensor, int]:
    """Sinkhorn plan of stage 2 on the residual: expert ``e`` offers its room ``C - load_e``, cells of experts the
    token holds are ``-inf``. A token wants one more expert (``joint=False``: row marginal 1, so no cell can exceed
    1) or all its open slots at once (``joint=True``: row marginal = open slots, cells capped at 1 -- the
    ``k-1 >= 2`` trap). A slack row (or column) with a flat kernel takes the surplus room (or the tokens that cannot
    all fit); flat, so it does not change which real cells are chosen. Returns the log plan over real cells
    ``[G, T, E]`` (``-inf`` where not allowed) and the iterations run.
    """
    g, t, e = scores.shape
    r = experts.shape[2]
    room = (capacity - expert_load(experts, e)).clamp(min=0)
    # Which rows and columns have an allowed cell (open token, expert with room, not held), counted from the
    # O(G T R) slots instead of an [G, T, E] mask: slots of a token hold distinct experts.
    open_tok = (experts < 0).any(dim=2)  # [G, T]
    has_room = room > 0  # [G, E]
    slot_room = torch.gather(has_room, 1, experts.clamp(min=0).reshape(g, -1)).view(g, t, r) & (experts >= 0)
    row_ok = open_tok & (has_room.sum(dim=1, keepdim=True) > slot_room.sum(dim=2))
    holders = torch.zeros(g, e + 1, dtype=torch.long, device=scores.device)
    held_by_open = torch.where((experts >= 0) & open_tok.unsqueeze(2), experts, e).reshape(g, -1)
    holders.scatter_add_(1, held_by_open, torch.ones_like(held_by_open))
    col_ok = has_room & (open_tok.sum(dim=1, keepdim=True) > holders[:, :e])
    # A row or column without any allowed cell gets marginal 0: a positive marginal there makes Sinkhorn NaN.
    want = (experts < 0).sum(dim=2) if joint else torch.ones_like(experts[:, :, 0])
    rows = torch.where(row_ok, want, torch.zeros_like(want)).to(scores.dtype)
    cols = torch.where(col_ok, room, torch.zeros_like(room)).to(scores.dtype)
    slack_row = (cols.sum(1) - rows.sum(1)).clamp(min=0)
    slack_col = (rows.sum(1) - cols.sum(1)).clamp(min=0)
    kernel = torch.empty((g, t + 1, e + 1), dtype=scores.dtype, device=scores.device)
    core = kernel[:, :t, :e]
    torch.div(scores, eps, out=core)
    core.masked_fill_(~row_ok.unsqueeze(2), _NEG)
    core.masked_fill_(~has_room.unsqueeze(1), _NEG)
    held = torch.where(experts >= 0, experts, e)  # e: a scratch column, reset below
    kernel[:, :t, :].scatter_(2, held, _NEG)
    kernel[:, t, e] = _NEG
    kernel[:, :t, e] = torch.where(rows > 0, 0.0, _NEG)
    kernel[:, t, :e] = torch.where(cols > 0, 0.0, _NEG)
    row_m = torch.cat([rows, slack_row.unsqueeze(1)], dim=1)
    col_m = torch.cat([cols, slack_col.unsqueeze(1)], dim=1)
    if joint:
        capped = torch.zeros(g, t + 1, e + 1, dtype=torch.bool, device=scores.device)
        capped[:, :t, :e] = True
        result = sinkhorn_capped_log(kernel, row_m, col_m, capped, max_iters=iters, tol=tol)
    else:
        result = sinkhorn_log(kernel, row_m, col_m, max_iters=iters, tol=tol)
    # Not-allowed cells are -inf in the kernel, hence in the plan: the slice needs no mask.
    return result.log_plan[:, :t, :e], result.iterations


def stage2_sinkhorn(
    scores: torch.Tensor, experts: torch.Tensor, capacity: int, eps: float, iters: int, tol: float, joint: bool = False
) -> tuple[torch.Tensor, int]:
    """Fill the empty slots of ``experts`` ``[G, T, R]`` from Sinkhorn plans on the residual: each token proposes
    its largest plan cells, experts keep the largest cells up to their room, the rest reroute down their plan
    ranking. One slot per token per round (``joint=False``), or every open slot from one capped plan
    (``joint=True``). Returns the slots and the total Sinkhorn iterations."""
    total_iters = 0
    need = int((experts < 0).sum(dim=2).max()) if experts.numel() else 0
    if joint and need >= 2:
        fill = experts < 0
        log_plan, total_iters = residual_plan(scores, experts, capacity, eps, iters, tol, joint=True)
        top = torch.topk(log_plan, experts.shape[2], dim=2)
        # The j-th open slot of a token proposes its j-th largest plan cell; queues are rank-major by plan mass.
        which = (torch.cumsum(fill.long(), dim=2) - 1).clamp(min=0)
        value = torch.gather(top.values, 2, which)
        proposal = torch.where(fill & torch.isfinite(value), torch.gather(top.indices, 2, which), -1)
        keep = keep_within_capacity(
            rank_major(proposal), capacity, scores.shape[2], priority=rank_major(value),
            used=expert_load(experts, scores.shape[2]),
        )
        experts = torch.where(token_major(keep, experts.shape[1]), proposal, experts)
        experts, _ = reroute_rounds(log_plan, experts, capacity, fill)
        return experts, total_iters
    # As many rounds as the neediest token has open slots; what a round cannot place is left to the repair.
    for _ in range(need):
        slot = _first_open(experts)
        if not bool(slot.any()):
            break
        log_plan, it = residual_plan(scores, experts, capacity, eps, iters, tol)
        total_iters += it
        best = log_plan.max(dim=2)
        wants = slot.any(dim=2) & torch.isfinite(best.values)
        proposal = torch.where(wants, best.indices, -1)
        keep = keep_within_capacity(
            proposal, capacity, scores.shape[2], priority=best.values, used=expert_load(experts, scores.shape[2])
        )
        experts = torch.where(slot & keep.unsqueeze(2), best.indices.unsqueeze(2), experts)
        experts, _ = reroute_rounds(log_plan, experts, capacity, slot)
    return experts, total_iters


def stage2_dual_compiled(
    scores: torch.Tensor, experts: torch.Tensor, capacity: int, config: AuctionConfig
) -> tuple[torch.Tensor, int]:
    """:func:`stage2_dual` on CPU by the compiled auction (moeroute/solvers/auction.py): the j-th empty slot of a
    token takes its j-th new expert by score. Returns the slots and the auction's sweeps."""
    e = scores.shape[2]
    empty = experts < 0
    demand = empty.sum(dim=2)
    room = (capacity - expert_load(experts, e)).clamp(min=0)
    result = auction_route(scores, demand, room, experts.shape[2], config, fixed=experts)
    which = (torch.cumsum(empty.long(), dim=2) - 1).clamp(min=0)
    filled = torch.where(empty, torch.gather(result.experts, 2, which), experts)
    return filled, int(result.sweeps.max()) if experts.shape[0] else 0


def stage2_dual(
    scores: torch.Tensor, experts: torch.Tensor, capacity: int, config: PriceConfig
) -> tuple[torch.Tensor, int]:
    """Fill the empty slots by expert prices on the residual problem (moeroute/solvers/prices.py): each token wants
    its open slots, each expert offers its room, a token's own experts are excluded; units the experts cannot
    take go to the drop node. Returns the slots and the auction's price updates."""
    g, t, r = experts.shape
    e = scores.shape[2]
    demand = (experts < 0).sum(dim=2)
    room = (capacity - expert_load(experts, e)).clamp(min=0)
    drop = (demand.sum(dim=1) - room.sum(dim=1)).clamp(min=0)
    result = solve_prices(scores, demand, r, room, config, excluded=experts, drop=drop)
    filled, _, _ = place_units(scores, experts, capacity, result)
    return filled, result.iterations


def stage2_exact(scores: torch.Tensor, experts: torch.Tensor, capacity: int) -> torch.Tensor:
    """Fill the empty slots by the exact min-cost max-flow of the residual problem (OR-tools on the CPU)."""
    e = scores.shape[2]
    demand = (experts < 0).sum(dim=2)
    room = (capacity - expert_load(experts, e)).clamp(min=0)
    solution = solve_residual(scores, demand, room, ~held_mask(experts, e))
    chosen = torch.from_numpy(solution.assignment).to(scores.device)
    picked = slots_from_mask(chosen, scores, experts.shape[2])
    # The j-th empty slot of a token takes its j-th chosen expert.
    which = (torch.cumsum((experts < 0).long(), dim=2) - 1).clamp(min=0)
    return torch.where(experts < 0, torch.gather(picked, 2, which), experts)


# ---------------------------------------------------------------- the router


def rank_slots(scores: torch.Tensor, experts: torch.Tensor, stage1: torch.Tensor) -> torch.Tensor:
    """Order each token's slots: its stage-1 expert first (rank 1), then the rest by score, empty slots last."""
    if experts.shape[2] == 2 and bool((stage1 >= 0).all()):
        # Slot 0 holds the stage-1 expert (never moved), slot 1 the one other: already in order.
        return experts
    mask = held_mask(experts, scores.shape[2])
    first = torch.nn.functional.one_hot(stage1.clamp(min=0), scores.shape[2]).bool() & (stage1 >= 0).unsqueeze(2)
    rank = torch.where(first, torch.full_like(scores, float("inf")), scores)
    return slots_from_mask(mask, rank, experts.shape[2])


@register_router(
    "maxscore",
    MaxScoreOptions,
    "MaxScore two-stage: capacity-aware top-1, then the other k-1 slots on the residual problem "
    "(stage2=auto|dual|sinkhorn|exact|iterative), every feasible slot filled",
    "MaxScore (Dong et al. 2025, arXiv 2508.12801) and its released code",
)
def maxscore(x: RouterInput, opts: MaxScoreOptions) -> Slots:
    scores = x.scores.detach()
    g, t, e = scores.shape
    k = x.k
    capacity = x.capacity if x.capacity is not None else t
    meta: dict = {"stage1": opts.stage1, "stage2": opts.stage2}
    compiled = use_numpy(scores.device)
    if opts.stage1 == "greedy" and compiled:
        first, meta["stage1_diverted"] = greedy_first(scores, capacity)
    elif opts.stage1 == "greedy":
        top1 = _open_argmax(scores)
        first, meta["stage1_rounds"] = greedy_top1(scores, capacity, top1)
        meta["stage1_diverted"] = int((first != top1).sum())
    else:
        first, meta["stage1_overflow"] = argmax_top1(scores, capacity)
    experts = torch.full((g, t, k), EMPTY, dtype=torch.long, device=scores.device)
    experts[:, :, 0] = first
    fill = experts < 0
    stage2 = opts.stage2
    if stage2 == "auto":
        # CPU: the compiled auction is near the exact residual optimum and cheaper than a Sinkhorn plan. Elsewhere,
        # one open slot per token (k <= 2): the plain Sinkhorn plan is cheap and near the residual optimum; several
        # (k >= 3): a capped joint plan needs a top-k per row and column every iteration, prices need none.
        stage2 = "dual" if compiled or k > 2 else "sinkhorn"
    meta["stage2"] = stage2
    if stage2 == "dual" and compiled:
        experts, meta["price_iters"] = stage2_dual_compiled(
            scores, experts, capacity, AuctionConfig(opts.price_step, opts.price_sweeps)
        )
    elif stage2 == "dual":
        experts, meta["price_iters"] = stage2_dual(
            scores, experts, capacity, PriceConfig(opts.price_iters, 0, opts.price_eps, opts.price_eps / 100)
        )
    elif stage2 == "sinkhorn":
        experts, meta["sinkhorn_iters"] = stage2_sinkhorn(
            scores, experts, capacity, opts.eps, opts.iters, opts.tol, joint=opts.plan == "joint"
        )
    elif stage2 == "exact":
        experts = stage2_exact(scores, experts, capacity)
    else:
        experts, meta["reroute_rounds"] = reroute_rounds(scores, experts, capacity, fill)
    if opts.repair:
        experts, meta["repaired_slots"] = augment_open_slots(scores, experts, capacity, fill, fill & (experts >= 0))
    experts = rank_slots(scores, experts, first)
    return Slots(experts, meta=meta)

"""Capacity enforcement shared by every queue-based router: who gets a slot when more tokens want an expert than
it can take."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def _queue_positions_numpy(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """:func:`queue_positions` in token order on CPU: the same integer arithmetic in numpy, whose stable argsort
    of 16-bit keys is a radix sort. Measured at P = 32768 on 2 threads: 0.15 ms for the sort where torch 2.13's
    stable sort took 250 ms, and each torch index/gather of P elements 12 ms on a loaded machine (its parallel
    regions wait for the second thread), so the whole queue runs single-threaded in numpy."""
    g, p = ids.shape
    n_keys = g * (num_experts + 1)
    bucket = np.where(ids < 0, num_experts, ids)
    keys = (bucket + np.arange(g)[:, None] * (num_experts + 1)).reshape(-1)
    perm = np.argsort(keys.astype(np.uint16 if n_keys <= 1 << 16 else np.int64), kind="stable")
    counts = np.bincount(keys, minlength=n_keys)
    starts = np.cumsum(counts) - counts
    pos = np.empty(g * p, dtype=np.int64)
    pos[perm] = np.arange(g * p) - starts[keys[perm]]
    return pos.reshape(g, p)


def queue_positions(
    proposals: torch.Tensor, num_experts: int, priority: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Each proposal's place in its expert's queue: long ``[G, P]``, 0 for the first in line.

    ``proposals`` ``[G, P]`` holds expert ids (``-1`` = no proposal, which queues for nothing). The queue is the
    proposal order along ``P`` (first come, first served), or ``priority`` ``[G, P]`` descending with the proposal
    order breaking ties. Implemented as a stable sort of the expert ids, not a one-hot cumsum: at 16384 x 64 the
    one-hot ``[P, E]`` cumsum took 34 ms and the sort 6.5 ms on 2 cores (reference note §4), bit-identical.
    On CPU the sort and the index arithmetic run in numpy (see :func:`_queue_positions_numpy`).
    """
    g, p = proposals.shape
    device = proposals.device
    if device.type == "cpu":
        ids = proposals.numpy()
        order = None
        if priority is not None:
            # Descending and stable, like torch.sort(descending=True, stable=True): ties keep proposal order.
            order = np.argsort(-priority.detach().numpy(), axis=1, kind="stable")
            ids = np.take_along_axis(ids, order, axis=1)
        pos = _queue_positions_numpy(ids, num_experts)
        if order is not None:
            out = np.empty_like(pos)
            np.put_along_axis(out, order, pos, axis=1)
            pos = out
        return torch.from_numpy(pos)
    return _queue_positions_torch(proposals, num_experts, priority)


def _queue_positions_torch(
    proposals: torch.Tensor, num_experts: int, priority: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """:func:`queue_positions` in torch, for any device (used off CPU)."""
    g, p = proposals.shape
    device = proposals.device
    order = torch.arange(p, device=device).expand(g, p)
    ids = proposals
    if priority is not None:
        order = torch.sort(priority, dim=1, descending=True, stable=True).indices
        ids = torch.gather(proposals, 1, order)
    # One flat key space: group g, expert e -> g*(E+1) + e; the empty proposal -1 gets its own bucket E.
    bucket = torch.where(ids < 0, torch.full_like(ids, num_experts), ids)
    keys = (bucket + torch.arange(g, device=device).unsqueeze(1) * (num_experts + 1)).reshape(-1)
    sorted_keys, perm = torch.sort(keys, stable=True)
    counts = torch.bincount(keys, minlength=g * (num_experts + 1))
    starts = torch.cumsum(counts, 0) - counts
    pos_sorted = torch.arange(keys.numel(), device=device) - starts[sorted_keys]
    pos_in_order = torch.empty_like(pos_sorted).scatter_(0, perm, pos_sorted).reshape(g, p)
    if priority is None:
        return pos_in_order
    return torch.empty_like(pos_in_order).scatter_(1, order, pos_in_order)


def keep_within_capacity(
    proposals: torch.Tensor,
    capacity: Optional[int],
    num_experts: int,
    priority: Optional[torch.Tensor] = None,
    used: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Bool ``[G, P]``: which proposals fit, given ``capacity`` and the load ``used`` ``[G, E]`` already taken.

    A proposal of ``-1`` is never kept. ``capacity=None`` keeps every real proposal.
    """
    real = proposals >= 0
    if capacity is None:
        return real
    pos = queue_positions(proposals, num_experts, priority)
    if used is not None:
        pos = pos + torch.gather(used, 1, proposals.clamp(min=0))
    return real & (pos < capacity)


def expert_load(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Long ``[G, E]``: how many entries of ``experts`` ``[G, ...]`` name each expert (``-1`` ignored)."""
    g = experts.shape[0]
    flat = experts.reshape(g, -1)
    idx = torch.where(flat < 0, torch.full_like(flat, num_experts), flat)
    out = torch.zeros(g, num_experts + 1, dtype=torch.long, device=experts.device)
    out.scatter_add_(1, idx, torch.ones_like(idx))
    return out[:, :num_experts]


def reroute_rounds(
    choice_scores: torch.Tensor,
    experts: torch.Tensor,
    capacity: int,
    fill: torch.Tensor,
    max_rounds: Optional[int] = None,
) -> tuple[torch.Tensor, int]:
    """Iterative rerouting: empty slots re-propose to their next-best expert that has room, in rounds.

    ``choice_scores`` ``[G, T, E]`` rank the experts (``-inf`` = never propose there); ``experts`` ``[G, T, R]`` the
    current slots (``-1`` empty); ``fill`` bool ``[G, T, R]`` which empty slots may be refilled. In each round every
    open slot proposes the best expert that had room at the start of the round and that its token does not hold
    (a token's j-th open slot takes its j-th best such expert, so one token never proposes an expert twice); the
    proposals queue rank-major in token order, like GShard, behind the load already placed. Every round places at
    least one proposal or ends the loop, so it stops after at most ``G*T*R`` rounds (or ``max_rounds``).
    Returns the new slots and the number of rounds that placed something.
    """
    g, t, r = experts.shape
    e = choice_scores.shape[2]
    # Only tokens with a slot to fill ever change: work on their rows alone (usually a few percent of the tokens),
    # so a round costs O(open rows x E) plus the O(G T R) queue, not a top-k over every [G, T, E] cell.
    gi, ti = torch.nonzero((fill & (experts < 0)).any(dim=2), as_tuple=True)  # sorted by (group, token)
    if gi.numel() == 0:
        return experts, 0
    sub_scores = choice_scores[gi, ti]  # [n, E]
    sub_experts = experts[gi, ti]  # [n, R]
    sub_fill = fill[gi, ti]
    load = expert_load(experts, e)
    neg = torch.tensor(-float("inf"), device=choice_scores.device, dtype=choice_scores.dtype)
    n = gi.numel()
    slot_ids = torch.arange(r, device=experts.device).unsqueeze(0)
    rounds = 0
    while max_rounds is None or rounds < max_rounds:
        open_slots = sub_fill & (sub_experts < 0)
        if not bool(open_slots.any()):
            break
        held = torch.zeros(n, e + 1, dtype=torch.bool, device=experts.device)
        held.scatter_(1, torch.where(sub_experts < 0, torch.full_like(sub_experts, e), sub_experts), True)
        eligible = (load[gi] < capacity) & ~held[:, :e]
        cand = torch.topk(torch.where(eligible, sub_scores, neg), r, dim=-1)
        # The j-th open slot of a token takes that token's j-th best candidate.
        which = (torch.cumsum(open_slots.long(), dim=1) - 1).clamp(min=0)
        prop = torch.gather(cand.indices, 1, which)
        ok = open_slots & torch.isfinite(torch.gather(cand.values, 1, which))
        if not bool(ok.any()):
            break
        proposals = torch.where(ok, prop, torch.full_like(prop, -1))
        # The queue is rank-major in token order within each group, like GShard's: order the n x R proposals by
        # (group, slot, token) and fold the group into the expert id, so one queue over them alone gives every
        # group's queues (no [G, R*T] proposal table, no sort of it).
        order = torch.argsort(((gi.unsqueeze(1) * r + slot_ids) * t + ti.unsqueeze(1)).reshape(-1))
        ids = torch.where(proposals >= 0, gi.unsqueeze(1) * e + proposals, -1).reshape(-1)[order]
        kept = keep_within_capacity(ids.unsqueeze(0), capacity, g * e, used=load.reshape(1, -1)).squeeze(0)
        keep = torch.empty_like(kept).scatter_(0, order, kept).view(n, r)
        sub_experts = torch.where(keep, proposals, sub_experts)
        load = load.index_put(
            (gi.unsqueeze(1).expand(n, r)[keep], proposals[keep]), torch.ones_like(proposals[keep]), accumulate=True
        )
        rounds += 1
    experts = experts.clone()
    experts[gi, ti] = sub_experts
    return experts, rounds

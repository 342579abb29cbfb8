"""Iterative rerouting shared by the rerouting routers: empty slots re-propose to their next-best expert with room,
in rounds, queued like GShard's first come."""

from __future__ import annotations

from typing import Optional

import torch

from moeroute.routers._capacity import expert_load, keep_within_capacity
from moeroute.solvers.sync import check_now


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
    Returns the new slots and the number of rounds that placed something. Host synchronisations (docs/gpu.md): one
    to find the open rows, a convergence test every few rounds on an accelerator, one for the count.
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
    order = torch.argsort(((gi.unsqueeze(1) * r + slot_ids) * t + ti.unsqueeze(1)).reshape(-1))
    # Every round that proposes anything places at least one proposal, so G*T*R rounds always suffice.
    limit = n * r if max_rounds is None else max_rounds
    placed_rounds = torch.zeros((), dtype=torch.long, device=experts.device)
    done = 0
    while done < limit:
        open_slots = sub_fill & (sub_experts < 0)
        held = torch.zeros(n, e + 1, dtype=torch.bool, device=experts.device)
        held.scatter_(1, torch.where(sub_experts < 0, torch.full_like(sub_experts, e), sub_experts), True)
        eligible = (load[gi] < capacity) & ~held[:, :e]
        cand = torch.topk(torch.where(eligible, sub_scores, neg), r, dim=-1)
        # The j-th open slot of a token takes that token's j-th best candidate.
        which = (torch.cumsum(open_slots.long(), dim=1) - 1).clamp(min=0)
        prop = torch.gather(cand.indices, 1, which)
        ok = open_slots & torch.isfinite(torch.gather(cand.values, 1, which))
        # No host synchronisation per round on an accelerator: the test below runs every few rounds; a round
        # without proposals changes nothing.
        if check_now(experts.device, done) and not bool(ok.any()):
            break
        proposals = torch.where(ok, prop, torch.full_like(prop, -1))
        # The queue is rank-major in token order within each group, like GShard's: order the n x R proposals by
        # (group, slot, token) and fold the group into the expert id, so one queue over them alone gives every
        # group's queues (no [G, R*T] proposal table, no sort of it).
        ids = torch.where(proposals >= 0, gi.unsqueeze(1) * e + proposals, -1).reshape(-1)[order]
        kept = keep_within_capacity(ids.unsqueeze(0), capacity, g * e, used=load.reshape(1, -1)).squeeze(0)
        keep = torch.empty_like(kept).scatter_(0, order, kept).view(n, r)
        sub_experts = torch.where(keep, proposals, sub_experts)
        # A scatter of the kept proposals (no boolean indexing: its size would need a host synchronisation).
        slots_at = (gi.unsqueeze(1) * e + proposals.clamp(min=0)).reshape(-1)
        load = load.reshape(-1).scatter_add(0, slots_at, keep.reshape(-1).long()).view(g, e)
        placed_rounds += keep.any()
        done += 1
    rounds = int(placed_rounds)
    experts = experts.clone()
    experts[gi, ti] = sub_experts
    return experts, rounds

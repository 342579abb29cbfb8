"""Turn expert prices into slots: the units each token holds at the prices (moeroute/solvers/prices.py) fill its open
slots, capacity keeps on every over-full expert the units that lose most by leaving, and the units left over
reroute to their best expert with room by reduced value. Shared by the ``dual`` router and MaxScore's stage 2."""

from __future__ import annotations

from typing import Optional

import torch

from moeroute.routers._capacity import expert_load, keep_within_capacity, rank_major, token_major
from moeroute.routers._reroute import reroute_rounds
from moeroute.solvers.prices import PriceResult


def open_slot_units(experts: torch.Tensor, units: int) -> torch.Tensor:
    """Long ``[G, T, R]``: for each empty slot of ``experts`` ``[G, T, R]``, which of the token's units fills it (the
    ``j``-th empty slot takes unit ``j``); ``units`` (a spare index past the last unit) for filled slots."""
    empty = experts < 0
    which = torch.cumsum(empty.long(), dim=2) - 1
    return torch.where(empty, which, torch.full_like(which, units))


def place_units(
    scores: torch.Tensor,
    experts: torch.Tensor,
    capacity: int,
    result: PriceResult,
    excluded_scores: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fill the empty slots of ``experts`` long ``[G, T, R]`` from the units of ``result`` (unit ``j`` of a token goes
    to its ``j``-th empty slot), then by rerouting. Returns the slots and, as 0-dim device tensors (no host
    synchronisation), the units the prices placed directly and the slots placed by rerouting.

    Over-full experts keep the units with the largest margin (what a unit loses by moving to the token's next
    option); the others, and units on the drop node or outside the candidates, leave their slot empty for the
    rerouting rounds, which rank each token's experts by reduced value ``scores - prices`` (``excluded_scores``: the
    same with ``-inf`` already set where a token may not go; default: computed from ``scores``).
    """
    g, t, r = experts.shape
    e = scores.shape[2]
    nodes, margin = result.units.nodes, result.units.margin
    k = nodes.shape[2]
    which = open_slot_units(experts, k)
    pad = torch.full((g, t, 1), -1, dtype=nodes.dtype, device=nodes.device)
    proposal = torch.gather(torch.cat([nodes, pad], dim=2), 2, which)
    proposal = torch.where(proposal < e, proposal, torch.full_like(proposal, -1))  # drop node: empty
    priority = torch.gather(torch.cat([margin, margin.new_zeros(g, t, 1)], dim=2), 2, which)
    keep = keep_within_capacity(
        rank_major(proposal), capacity, e, priority=rank_major(priority), used=expert_load(experts, e)
    )
    keep = token_major(keep, t)
    fill = experts < 0
    out = torch.where(keep, proposal, experts)
    placed = keep.sum()
    choice = excluded_scores if excluded_scores is not None else scores - result.prices[:, :e].unsqueeze(1)
    out, _ = reroute_rounds(choice, out, capacity, fill)
    rerouted = ((out >= 0) & fill).sum() - placed
    return out, placed, rerouted

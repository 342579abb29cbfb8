"""Global greedy: all (token, expert) pairs in descending score order, each taken while its token has fewer than
``k`` experts and its expert fewer than ``C`` tokens — a ½-approximation of the max-weight b-matching."""

from __future__ import annotations

from typing import Optional

import torch

from moeroute.core.problem import RouterInput
from moeroute.core.routing import Slots, slots_from_mask
from moeroute.routers._topk import ScoreOptions
from moeroute.routers.registry import register_router


def _rank_among(alive: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """For each pair, how many alive pairs of its list come up to and including it, ``[G, T*E]``.

    ``alive`` int32 ``[G, T*E]`` (flat; int32 because gathering bools is slower); ``perm`` ``[G, T*E]`` the flat
    pair ids list after list (``shape`` = ``[G, lists, list length]``); ``inverse`` its inverse permutation."""
    seen = torch.cumsum(torch.gather(alive, 1, perm).view(shape), dim=2)
    return torch.gather(seen.view(alive.shape), 1, inverse)


def descending_key(values: torch.Tensor) -> torch.Tensor:
    """int64 keys whose ascending order is the descending order of float32 ``values`` (equal values, equal keys).

    Sorting integers is far faster than sorting floats in torch on CPU (benchmarks/PERF.md), so the orders below
    sort these keys. The float's bits, with the non-sign bits flipped for negatives,
    are a monotone signed integer; ``+ 0.0`` first turns ``-0.0`` into ``+0.0``.
    """
    bits = (values.float() + 0.0).view(torch.int32)
    mono = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
    return -mono


def _flat_orders(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat pair ids ``t*E + e`` ``[G, T*E]`` listed token by token (each token's experts best first) and expert by
    expert (each expert's tokens best first), with their inverse permutations. Stable sorts of the flat ids: ties
    keep the lower ``t*E + e`` first, as the sequential definition's tie rule does."""
    g, t, e = scores.shape
    device = scores.device
    key = descending_key(scores) + (1 << 32)  # in [0, 2^33): room for a list id above it
    tok_id = torch.arange(t, device=device).view(1, t, 1)
    exp_id = torch.arange(e, device=device).view(1, 1, e)
    tok_perm = torch.sort((key + (tok_id << 34)).reshape(g, t * e), dim=1, stable=True).indices
    exp_perm = torch.sort((key + (exp_id << 34)).reshape(g, t * e), dim=1, stable=True).indices
    flat = torch.arange(t * e, device=device).expand(g, t * e)
    tok_inv = torch.empty_like(tok_perm).scatter_(1, tok_perm, flat)
    exp_inv = torch.empty_like(exp_perm).scatter_(1, exp_perm, flat)
    return tok_perm, tok_inv, exp_perm, exp_inv


def greedy_assignment(scores: torch.Tensor, k: int, capacity: Optional[int]) -> tuple[torch.Tensor, int]:
    """Bool ``[G, T, E]``: the sequential greedy b-matching, computed in parallel rounds; and the rounds run.

    The sequential definition: pairs sorted by score descending (ties: lower ``t*E + e`` first), each accepted
    iff its token holds fewer than ``k`` and its expert fewer than ``C`` accepted pairs at that moment. Equivalently
    a pair is accepted iff fewer than ``k`` accepted pairs of its token and fewer than ``C`` of its expert precede it.

    A round accepts every *open* pair (not yet accepted, token and expert both with room) that is among the
    ``k - held_t`` best open pairs of its token **and** among the ``C - load_e`` best open pairs of its expert.
    Such a pair is accepted by the sequential greedy too: whatever happens later, fewer than ``k - held_t`` of its
    token's open pairs precede it, so fewer than ``k`` accepted ones can; likewise for the expert. A token (expert)
    that becomes full has accepted exactly its best open pairs, so the sequential greedy rejects all its others —
    they close. The best open pair of all is first for its token and its expert, so every round accepts at least
    one pair; the loop ends when no pair is open.
    """
    g, t, e = scores.shape
    cap = t if capacity is None else min(int(capacity), t)
    tok_perm, tok_inv, exp_perm, exp_inv = _flat_orders(scores)
    accepted = torch.zeros(g, t, e, dtype=torch.bool, device=scores.device)
    room_tok = torch.full((g, t, 1), k, dtype=torch.int32, device=scores.device)
    room_exp = torch.full((g, 1, e), cap, dtype=torch.int32, device=scores.device)
    rounds = 0
    while True:
        alive = ~accepted & torch.logical_and(room_tok > 0, room_exp > 0)
        if not bool(alive.any()):
            break
        flat = alive.view(g, t * e).to(torch.int32)
        # rank < room  <=>  (alive pairs up to and including this one) <= room, for an alive pair
        ok_tok = _rank_among(flat, tok_perm, tok_inv, (g, t, e)).view(g, t, e) <= room_tok
        ok_exp = _rank_among(flat, exp_perm, exp_inv, (g, e, t)).view(g, t, e) <= room_exp
        take = alive & ok_tok & ok_exp
        accepted |= take
        room_tok -= take.sum(dim=2, keepdim=True, dtype=torch.int32)
        room_exp -= take.sum(dim=1, keepdim=True, dtype=torch.int32)
        rounds += 1
    return accepted, rounds


@register_router(
    "global_greedy",
    ScoreOptions,
    "all (token, expert) pairs by descending score, each taken while token (k) and expert (C) have room",
    "greedy b-matching (a ½-approximation), beyond the MaxScore paper",
    examples=("global_greedy:score=sqrt_softplus",),
)
def global_greedy(x: RouterInput, opts: ScoreOptions) -> Slots:
    mask, rounds = greedy_assignment(x.scores, x.k, x.capacity)
    experts = slots_from_mask(mask, x.scores, x.k)
    return Slots(experts, meta={"rounds": rounds})

"""Fill the empty slots that capacity still allows, by augmenting paths: the repair that turns a maximal routing
(no open slot can take an expert with room directly) into a maximum one (no slot is dropped that the network could
carry).

A slot stays open after greedy filling when every expert with room is one its token already holds. It can still be
filled by a chain of moves: the token takes a full expert ``f0``, some token ``u1`` holding ``f0`` moves to ``f1``,
..., and the last move lands on an expert with room. This is an augmenting path of the bipartite b-matching; when
none exists from any open slot the number of filled slots is the maximum (Berge).
"""

from __future__ import annotations

from typing import Optional

import torch

from moeroute.routers._capacity import expert_load

_NEG = -float("inf")


def held_mask(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Bool ``[G, T, E]``: which experts each token holds in any slot of ``experts`` ``[G, T, R]``."""
    g, t, _ = experts.shape
    held = torch.zeros(g, t, num_experts + 1, dtype=torch.bool, device=experts.device)
    held.scatter_(2, torch.where(experts < 0, torch.full_like(experts, num_experts), experts), True)
    return held[..., :num_experts]


def _push_gain(scores: torch.Tensor, experts: torch.Tensor, movable: torch.Tensor) -> torch.Tensor:
    """``gain [G, E, E]`` of :func:`_push_graph` alone. Slots where nothing is movable (stage 1's, typically) are
    skipped: they would only feed the spare row. The held experts are struck out by a scatter over the ``R``
    slots (a spare column takes the empty ones) instead of an ``[G, T, E]`` mask."""
    g, t, r = experts.shape
    e = scores.shape[2]
    gain = torch.full((g, e + 1, e), _NEG, dtype=scores.dtype, device=scores.device)
    can_move = movable & (experts >= 0)
    held_at = torch.where(experts >= 0, experts, e)
    for j in range(r):
        if not bool(can_move[:, :, j].any()):
            continue
        f = torch.where(can_move[:, :, j], experts[:, :, j], e)  # e = spare row
        own = torch.gather(scores, 2, f.clamp(max=e - 1).unsqueeze(2))
        delta = torch.empty((g, t, e + 1), dtype=scores.dtype, device=scores.device)
        torch.sub(scores, own, out=delta[:, :, :e])
        delta.scatter_(2, held_at, _NEG)  # [G, T, to]: -inf where the token holds the target
        gain.scatter_reduce_(1, f.unsqueeze(2).expand(g, t, e), delta[:, :, :e], "amax")
    return gain[:, :e]


def _push_token(
    scores: torch.Tensor,
    experts: torch.Tensor,
    movable: torch.Tensor,
    gain: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
) -> torch.Tensor:
    """``who[g, src[g], dst[g]]`` of :func:`_push_graph` for one move per group, long ``[G]``: the lowest token
    whose move ``src -> dst`` realises ``gain``. ``O(G T R)`` instead of the full ``[G, E, E]`` table, which an
    augmenting step only reads along its one chain."""
    g, t, _ = experts.shape
    groups = torch.arange(g, device=scores.device)
    holds = ((experts == src.view(g, 1, 1)) & movable).any(dim=2)  # [G, T]
    s_src = torch.gather(scores, 2, src.view(g, 1, 1).expand(g, t, 1)).squeeze(2)
    s_dst = torch.gather(scores, 2, dst.view(g, 1, 1).expand(g, t, 1)).squeeze(2)
    free = ~(experts == dst.view(g, 1, 1)).any(dim=2)
    # Same float arithmetic as _push_graph (S[u, to] - S[u, from]), so the equality is exact.
    best = holds & free & (s_dst - s_src == gain[groups, src, dst].unsqueeze(1))
    return torch.argmax(best.to(torch.int8), dim=1)


def _push_graph(
    scores: torch.Tensor, experts: torch.Tensor, movable: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where one unit of load can move: ``gain [G, E, E]`` (``-inf`` = no move) and ``who [G, E, E]``.

    ``gain[g, f, f2]`` is the best score change ``S[u, f2] - S[u, f]`` over tokens ``u`` that hold ``f`` in a
    movable slot and do not hold ``f2``; ``who`` is that token (the lowest index among equals). Computed per slot
    with a scatter-max over the ``from`` expert: ``O(G T E R)``, not ``O(G T E^2)``. (The repair reads ``who``
    lazily, :func:`_push_token`; this full table is the definition the tests check.)
    """
    g, t, r = experts.shape
    e = scores.shape[2]
    held = held_mask(experts, e)
    gain = torch.full((g, e + 1, e), _NEG, dtype=scores.dtype, device=scores.device)
    deltas = []
    for j in range(r):
        f = torch.where(movable[:, :, j] & (experts[:, :, j] >= 0), experts[:, :, j], e)  # e = spare row
        own = torch.gather(scores, 2, f.clamp(max=e - 1).unsqueeze(2))
        delta = torch.where(held, torch.full_like(scores, _NEG), scores - own)  # [G, T, to]
        index = f.unsqueeze(2).expand(g, t, e)
        gain.scatter_reduce_(1, index, delta, "amax")
        deltas.append((index, delta))
    who = torch.full((g, e + 1, e), t, dtype=torch.long, device=scores.device)
    token = torch.arange(t, device=scores.device).view(1, t, 1).expand(g, t, e)
    for index, delta in deltas:
        best = (delta == torch.gather(gain, 1, index)) & torch.isfinite(delta)
        who.scatter_reduce_(1, index, torch.where(best, token, t), "amin")
    return gain[:, :e], who[:, :e].clamp(max=t - 1)


def _reach(gain: torch.Tensor, room: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Breadth-first from the experts with room, backwards along moves: ``value [G, E]`` the score change of the
    best chain found that pushes a unit out of ``f`` into an expert with room (0 at experts with room, ``-inf`` if
    unreachable) and ``succ [G, E]`` the next expert of that chain. Each expert is reached from experts of strictly
    lower level, so following ``succ`` never revisits an expert."""
    g, e = room.shape
    value = torch.where(room, torch.zeros_like(gain[:, 0]), torch.full_like(gain[:, 0], _NEG))
    succ = torch.full((g, e), -1, dtype=torch.long, device=room.device)
    reached = room.clone()
    for _ in range(e):
        through = gain + value.unsqueeze(1)  # [G, from, to]
        through = torch.where(reached.unsqueeze(1), through, torch.full_like(through, _NEG))
        best = through.max(dim=2)
        new = ~reached & torch.isfinite(best.values)
        if not bool(new.any()):
            break
        value = torch.where(new, best.values, value)
        succ = torch.where(new, best.indices, succ)
        reached = reached | new
    return value, succ


def augment_open_slots(
    scores: torch.Tensor,
    experts: torch.Tensor,
    capacity: int,
    fill: torch.Tensor,
    movable: torch.Tensor,
    max_steps: Optional[int] = None,
) -> tuple[torch.Tensor, int]:
    """Fill open slots of ``experts`` ``[G, T, R]`` by augmenting paths until none is left in any group.

    ``fill`` bool ``[G, T, R]``: slots that may be filled; ``movable`` bool ``[G, T, R]``: filled slots whose expert
    may be exchanged for another (the others stay fixed). Each step fills one slot per group, choosing the open
    token, entry expert and chain of maximum total score change. Returns the new slots and the number of slots
    filled. Only needed for the few slots greedy filling leaves; cost ``O(G T E^2)`` per step.
    """
    g, t, r = experts.shape
    e = scores.shape[2]
    device = experts.device
    # Groups are independent and one without an open slot never moves: run on the others alone (typically a
    # few of G = 32 after stage 2), each step then costs O(open groups x T x E).
    busy = (fill & (experts < 0)).flatten(1).any(dim=1)
    if not bool(busy.all()):
        out = experts.clone()
        if bool(busy.any()):
            idx = torch.nonzero(busy).squeeze(1)
            out[idx], placed = augment_open_slots(scores[idx], experts[idx], capacity, fill[idx], movable[idx], max_steps)
            return out, placed
        return out, 0
    experts = experts.clone()
    movable = movable.clone()
    placed = 0
    groups = torch.arange(g, device=device)
    steps = 0
    while max_steps is None or steps < max_steps:
        open_slot = fill & (experts < 0)
        open_token = open_slot.any(dim=2)
        if not bool(open_token.any()):
            break
        room = expert_load(experts, e) < capacity
        gain = _push_gain(scores, experts, movable)
        value, succ = _reach(gain, room)
        # Entry: the open token and expert of largest score + chain value, the first (token, expert) among equals,
        # as a max over the flattened [T * E] would pick; computed on the open tokens' rows alone.
        gi, ti = torch.nonzero(open_token, as_tuple=True)  # sorted by (group, token)
        n = gi.numel()
        rows = scores[gi, ti] + value[gi]
        rows.masked_fill_(held_mask(experts[gi, ti].unsqueeze(0), e).squeeze(0), _NEG)
        row_best = rows.max(dim=1)
        group_best = torch.full((g,), _NEG, dtype=rows.dtype, device=device)
        group_best.scatter_reduce_(0, gi, row_best.values, "amax")
        active = torch.isfinite(group_best)
        if not bool(active.any()):
            break
        at_best = (row_best.values == group_best[gi]) & torch.isfinite(row_best.values)
        first = torch.full((g,), n, dtype=torch.long, device=device)
        first.scatter_reduce_(0, gi, torch.where(at_best, torch.arange(n, device=device), n), "amin")
        first = first.clamp(max=n - 1)
        # The chain's movers are chosen in the state before this step's moves, as the table of _push_graph was.
        before, movable_before = experts.clone(), movable.clone()
        tok = ti[first]
        cur = row_best.indices[first]
        # The open token takes the entry expert in its first open slot.
        slot = torch.argmax(open_slot[groups, tok].long(), dim=1)
        experts[groups[active], tok[active], slot[active]] = cur[active]
        movable[groups[active], tok[active], slot[active]] = True
        # Walk the chain: while the current expert is over capacity, its chosen holder moves on to the next one.
        walking = active & ~room[groups, cur]
        while bool(walking.any()):
            nxt = succ[groups, cur]
            u = _push_token(scores, before, movable_before, gain, cur, nxt.clamp(min=0))
            row = experts[groups, u]
            at = torch.argmax(((row == cur.unsqueeze(1)) & movable[groups, u]).long(), dim=1)
            wg = groups[walking]
            experts[wg, u[walking], at[walking]] = nxt[walking]
            cur = torch.where(walking, nxt, cur)
            walking = walking & ~room[groups, cur]
        placed += int(active.sum())
        steps += 1
    return experts, placed

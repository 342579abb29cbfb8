"""Fill the empty slots that capacity still allows, by augmenting paths: the repair that turns a maximal routing
(no open slot can take an expert with room directly) into a maximum one (no slot is dropped that the network could
carry).

A slot stays open after greedy filling when every expert with room is one its token already holds. It can still be
filled by a chain of moves: the token takes a full expert ``f0``, some token ``u1`` holding ``f0`` moves to ``f1``,
..., and the last move lands on an expert with room. This is an augmenting path of the bipartite b-matching; when
none exists from any open slot the number of filled slots is the maximum (Berge).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from moeroute.routers._capacity import expert_load
from moeroute.solvers.sync import check_doubling, on_accelerator

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
    slots (a spare column takes the empty ones) instead of an ``[G, T, E]`` mask, and the maximum over the holders
    of each expert is one ``index_reduce_`` over the flattened (group, expert) rows, far cheaper on CPU than
    ``scatter_reduce_`` along the token dim (benchmarks/PERF.md)."""
    g, t, r = experts.shape
    e = scores.shape[2]
    gain = torch.full((g * (e + 1), e), _NEG, dtype=scores.dtype, device=scores.device)
    can_move = movable & (experts >= 0)
    held_at = torch.where(experts >= 0, experts, e)
    base = (torch.arange(g, device=scores.device) * (e + 1)).view(g, 1)
    for j in range(r):
        f = torch.where(can_move[:, :, j], experts[:, :, j], e)  # e = spare row
        own = torch.gather(scores, 2, f.clamp(max=e - 1).unsqueeze(2))
        delta = torch.empty((g, t, e + 1), dtype=scores.dtype, device=scores.device)
        torch.sub(scores, own, out=delta[:, :, :e])
        delta.scatter_(2, held_at, _NEG)  # [G, T, to]: -inf where the token holds the target
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "index_reduce() is in beta"
            gain.index_reduce_(0, (f + base).reshape(-1), delta[:, :, :e].reshape(g * t, e), "amax")
    return gain.view(g, e + 1, e)[:, :e]


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


def best_chains(gain: torch.Tensor, room: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Longest paths in the move graph by Bellman-Ford: ``value [G, E]`` the largest total score change of a chain
    that pushes one unit out of expert ``f`` into an expert with room (0 for stopping at an expert with room;
    ``-inf`` if none is reachable), ``succ [G, E]`` the next expert of that chain (``-1``: stop here), and
    ``cycle [G]``: whether the group's graph has a move cycle of positive total gain that reaches an expert with
    room (then ``value`` and ``succ`` of that group are not chains; see :func:`augment_open_slots`).

    ``gain [G, E, E]``: the best single move (``-inf`` = none), ``room [G, E]`` bool. A value only counts as better
    when it gains more than ``tol`` (float rounding is not a better chain). Without a positive cycle, every longest
    path has at most ``E - 1`` moves, is simple (a walk that repeats an expert would contain a cycle of gain
    ``<= tol``, which the rule above never adds) and so is a chain; ``E - 1`` rounds find it, and a further
    improvement in round ``E`` proves a positive cycle. Around such a cycle the longest walk grows without bound and
    is not a chain (it would move the same token twice).
    """
    g, e = room.shape
    neg = torch.full_like(gain[:, 0], _NEG)
    value = torch.where(room, torch.zeros_like(neg), neg)
    succ = torch.full((g, e), -1, dtype=torch.long, device=room.device)
    cycle = torch.zeros(g, dtype=torch.bool, device=room.device)
    for r in range(e):
        best = (gain + value.unsqueeze(1)).max(dim=2)
        better = best.values > value + tol
        if r == e - 1:
            cycle = better.any(dim=1)  # round E improved: a positive cycle
            break
        if check_doubling(gain.device, r) and not bool(better.any()):
            break
        value = torch.where(better, best.values, value)
        succ = torch.where(better, best.indices, succ)
    return value, succ, cycle


def layered_chains(gain: torch.Tensor, room: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fallback where the move graph has a positive cycle: breadth-first from the experts with room, backwards
    along moves, each expert's chain value the best over experts reached in earlier rounds. Every chain found is
    simple (an expert's successor was reached strictly before it), but it is the best chain only among those that
    respect this layering. Returns ``value [G, E]`` and ``succ [G, E]`` as :func:`best_chains` does."""
    g, e = room.shape
    value = torch.where(room, torch.zeros_like(gain[:, 0]), torch.full_like(gain[:, 0], _NEG))
    succ = torch.full((g, e), -1, dtype=torch.long, device=room.device)
    reached = room.clone()
    for r in range(e):
        through = gain + value.unsqueeze(1)  # [G, from, to]
        through = torch.where(reached.unsqueeze(1), through, torch.full_like(through, _NEG))
        best = through.max(dim=2)
        new = ~reached & torch.isfinite(best.values)
        if check_doubling(gain.device, r) and not bool(new.any()):
            break
        value = torch.where(new, best.values, value)
        succ = torch.where(new, best.indices, succ)
        reached = reached | new
    return value, succ


def _move_along(
    scores: torch.Tensor, experts: torch.Tensor, movable: torch.Tensor, gain: torch.Tensor, path: torch.Tensor,
    active: torch.Tensor,
) -> torch.Tensor:
    """Apply the moves ``path[:, i] -> path[:, i + 1]`` (``-1`` ends a path) in the groups where ``active``: each
    by the token that realises ``gain`` in the state before any of them (as the graph was computed)."""
    g = experts.shape[0]
    groups = torch.arange(g, device=experts.device)
    before, movable_before = experts, movable
    experts = experts.clone()
    for i in range(path.shape[1] - 1):
        src, dst = path[:, i], path[:, i + 1]
        step = active & (src >= 0) & (dst >= 0)
        if not on_accelerator(experts.device) and not bool(step.any()):
            break
        u = _push_token(scores, before, movable_before, gain, src.clamp(min=0), dst.clamp(min=0))
        row = experts[groups, u]
        at = torch.argmax(((row == src.unsqueeze(1)) & movable[groups, u]).long(), dim=1)
        experts[groups, u, at] = torch.where(step, dst, experts[groups, u, at])  # masked: no dynamic shapes
    return experts


def augment_open_slots(
    scores: torch.Tensor,
    experts: torch.Tensor,
    capacity: int,
    fill: torch.Tensor,
    movable: torch.Tensor,
    max_steps: Optional[int] = None,
) -> tuple[torch.Tensor, int]:
    """Fill open slots of ``experts`` ``[G, T, R]`` by augmenting chains until none is left in any group.

    ``fill`` bool ``[G, T, R]``: slots that may be filled; ``movable`` bool ``[G, T, R]``: filled slots whose expert
    may be exchanged for another (the others stay fixed). Each step fills one slot per group by the chain of the
    largest total score change over every open token, entry expert and chain (:func:`best_chains`, a Bellman-Ford
    over the ``E x E`` move graph; ties: the first open token, then the lowest expert).

    That is exact when the move graph has no cycle of positive gain, which holds whenever the movable slots are
    optimal for their loads (e.g. after an exact stage 2). A positive cycle means the routing could be improved
    without changing any load; the longest walk then loops and is not a chain, and the best *simple* chain is a
    longest-simple-path problem (NP-hard in general). In such a group this step takes the best chain that respects
    breadth-first layers (:func:`layered_chains`): always a valid chain, not always the best one. Returns the new
    slots and the number of slots filled. Each step costs ``O(G T E R)`` for the move graph and up to ``O(G E^3)``
    for Bellman-Ford.
    """
    g, t, r = experts.shape
    e = scores.shape[2]
    device = experts.device
    # Groups are independent and one without an open slot never moves: on CPU, run on the others alone (typically a
    # few of G = 32 after stage 2), each step then costs O(open groups x T x E). On an accelerator choosing them
    # would cost host synchronisations; idle groups are masked instead.
    busy = (fill & (experts < 0)).flatten(1).any(dim=1)
    if not on_accelerator(device) and not bool(busy.all()):
        out = experts.clone()
        if bool(busy.any()):
            idx = torch.nonzero(busy).squeeze(1)
            out[idx], placed = augment_open_slots(scores[idx], experts[idx], capacity, fill[idx], movable[idx], max_steps)
            return out, placed
        return out, 0
    experts = experts.clone()
    movable = movable.clone()
    # A chain or cycle only counts as better by more than float rounding of a few score differences.
    tol = float(scores.abs().max()) * 1e-6 if scores.numel() else 0.0
    placed = 0
    groups = torch.arange(g, device=device)
    steps = 0
    while max_steps is None or steps < max_steps:
        open_slot = fill & (experts < 0)
        open_token = open_slot.any(dim=2)
        room = expert_load(experts, e) < capacity
        gain = _push_gain(scores, experts, movable)
        value, succ, cycle = best_chains(gain, room, tol)
        any_open, any_cycle = torch.stack([open_token.any(), cycle.any()]).tolist()
        if not any_open:
            break
        steps += 1
        if any_cycle:
            layered_value, layered_succ = layered_chains(gain, room)
            value = torch.where(cycle.unsqueeze(1), layered_value, value)
            succ = torch.where(cycle.unsqueeze(1), layered_succ, succ)
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
        filled = int(active.sum())
        if filled == 0:
            break
        at_best = (row_best.values == group_best[gi]) & torch.isfinite(row_best.values)
        first = torch.full((g,), n, dtype=torch.long, device=device)
        first.scatter_reduce_(0, gi, torch.where(at_best, torch.arange(n, device=device), n), "amin")
        first = first.clamp(max=n - 1)
        tok = ti[first]
        entry = row_best.indices[first]
        # The chain from the entry expert, then the open token takes the entry expert in its first open slot.
        path = torch.full((g, e + 1), -1, dtype=torch.long, device=device)
        path[:, 0] = entry
        cur = entry
        for i in range(1, e + 1):
            cur = torch.where(cur >= 0, succ[groups, cur.clamp(min=0)], cur)
            path[:, i] = cur
        slot = torch.argmax(open_slot[groups, tok].long(), dim=1)
        moved = _move_along(scores, experts, movable, gain, path, active)
        moved[groups, tok, slot] = torch.where(active, entry, moved[groups, tok, slot])
        movable[groups, tok, slot] = active | movable[groups, tok, slot]
        experts = moved
        placed += filled
    return experts, placed

"""Plain Python loop references of the routers' definitions (docs/routing.md, docs/routers.md), for small cases.

Readable, slow and independent of the vectorised code: lists and loops over tokens, experts and rounds. Scores
come in as nested lists ``[T][E]`` of one group; results are nested lists of expert ids (``-1`` = empty slot).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np


def ranked(row: list[float], allowed=None) -> list[int]:
    """Expert ids best first (ties: lower id first), optionally only those in ``allowed``."""
    ids = [e for e in range(len(row)) if allowed is None or e in allowed]
    return sorted(ids, key=lambda e: (-row[e], e))


def gshard_loop(prefs: list[list[int]], num_experts: int, capacity: Optional[int]) -> list[list[int]]:
    """First come, rank-major: every token's rank-0 proposal in token order, then rank 1, ..."""
    t_count, k = len(prefs), len(prefs[0])
    load = [0] * num_experts
    out = [[-1] * k for _ in range(t_count)]
    for r in range(k):
        for t in range(t_count):
            e = prefs[t][r]
            if e >= 0 and (capacity is None or load[e] < capacity):
                out[t][r] = e
                load[e] += 1
    return out


def reroute_loop(
    scores: list[list[float]], slots: list[list[int]], capacity: int, fill: list[list[bool]], max_rounds=None
) -> tuple[list[list[int]], int]:
    """Rounds: each open slot proposes (j-th open slot of a token -> its j-th best expert that had room at the
    round's start and that it does not hold); proposals queue rank-major in token order behind the load."""
    slots = [list(row) for row in slots]
    t_count, r_count, e_count = len(slots), len(slots[0]), len(scores[0])
    rounds = 0
    while max_rounds is None or rounds < max_rounds:
        open_slots = [(t, r) for t in range(t_count) for r in range(r_count) if fill[t][r] and slots[t][r] < 0]
        if not open_slots:
            break
        load = [sum(row.count(e) for row in slots) for e in range(e_count)]
        proposal = {}
        for t in range(t_count):
            held = {e for e in slots[t] if e >= 0}
            candidates = ranked(scores[t], {e for e in range(e_count) if load[e] < capacity and e not in held})
            j = 0
            for r in range(r_count):
                if fill[t][r] and slots[t][r] < 0:
                    if j < len(candidates):
                        proposal[(t, r)] = candidates[j]
                    j += 1
        if not proposal:
            break
        for r in range(r_count):
            for t in range(t_count):
                e = proposal.get((t, r))
                if e is not None and load[e] < capacity:
                    slots[t][r] = e
                    load[e] += 1
        rounds += 1
    return slots, rounds


def sinkhorn_loop(logits: list[list[float]], eps: float, iters: int) -> list[list[float]]:
    """Plain Sinkhorn scaling of ``exp(L/eps)`` to rows ``1/T`` and columns ``1/E`` (float64, no log domain)."""
    t_count, e_count = len(logits), len(logits[0])
    kernel = [[math.exp(v / eps) for v in row] for row in logits]
    u, v = [1.0] * t_count, [1.0] * e_count
    for _ in range(iters):
        u = [(1.0 / t_count) / sum(kernel[t][e] * v[e] for e in range(e_count)) for t in range(t_count)]
        v = [(1.0 / e_count) / sum(kernel[t][e] * u[t] for t in range(t_count)) for e in range(e_count)]
    return [[u[t] * kernel[t][e] * v[e] for e in range(e_count)] for t in range(t_count)]


def expert_choice_loop(scores: list[list[float]], capacity: int) -> list[set[int]]:
    """Each expert takes its ``min(C, T)`` best tokens (ties: lower token first); the experts of each token."""
    t_count, e_count = len(scores), len(scores[0])
    got = [set() for _ in range(t_count)]
    for e in range(e_count):
        order = sorted(range(t_count), key=lambda t: (-scores[t][e], t))
        for t in order[:capacity]:
            got[t].add(e)
    return got


def global_greedy_loop(scores: list[list[float]], k: int, capacity: Optional[int]) -> list[set[int]]:
    """All pairs by score descending (ties: lower ``t*E + e`` first), each taken while its token holds < k and its
    expert < C."""
    t_count, e_count = len(scores), len(scores[0])
    cap = t_count if capacity is None else capacity
    pairs = sorted(((t, e) for t in range(t_count) for e in range(e_count)), key=lambda p: (-scores[p[0]][p[1]], p[0] * e_count + p[1]))
    held = [set() for _ in range(t_count)]
    load = [0] * e_count
    for t, e in pairs:
        if len(held[t]) < k and load[e] < cap:
            held[t].add(e)
            load[e] += 1
    return held


def auction_loop(scores: list[list[float]], eps: float) -> list[int]:
    """The ε-auction of ``base``: each round every expert with ``f`` free slots bids ``s - w + step`` for its ``f``
    best tokens by ``s - price`` it does not hold (``w`` = the ``(f+1)``-th best value); tokens go to the highest
    bid (ties: lower expert), the previous holder losing them, until every token is held."""
    t_count, e_count = len(scores), len(scores[0])
    per = t_count // e_count
    flat = [v for row in scores for v in row]
    step = eps * max(max(flat) - min(flat), 1e-12)
    owner = [-1] * t_count
    price = [0.0] * t_count
    while any(o < 0 for o in owner):
        best: dict[int, tuple[float, int]] = {}
        for e in range(e_count):
            free = per - owner.count(e)
            if free == 0:
                continue
            values = sorted(((scores[t][e] - price[t], t) for t in range(t_count) if owner[t] != e), key=lambda p: (-p[0], p[1]))
            w = values[free][0]
            for _, t in values[:free]:
                bid = scores[t][e] - w + step
                if t not in best or bid > best[t][0]:
                    best[t] = (bid, e)
        for t, (bid, e) in best.items():
            owner[t], price[t] = e, bid
    return owner


def aux_free_loop(scores: np.ndarray, k: int, rate: float) -> tuple[list[list[list[int]]], list[np.ndarray]]:
    """Per group in order: top-k of ``scores + bias`` (float32), then ``bias += rate * sign(mean - load)``."""
    g_count, t_count, e_count = scores.shape
    bias = np.zeros(e_count, dtype=np.float32)
    prefs, seen = [], []
    for g in range(g_count):
        seen.append(bias.copy())
        group = []
        load = [0] * e_count
        for t in range(t_count):
            biased = [float(np.float32(scores[g, t, e]) + bias[e]) for e in range(e_count)]
            top = ranked(biased)[:k]
            group.append(top)
            for e in top:
                load[e] += 1
        prefs.append(group)
        mean = sum(load) / e_count
        bias = (bias + np.float32(rate) * np.sign(np.array([mean - x for x in load], dtype=np.float32))).astype(np.float32)
    return prefs, seen

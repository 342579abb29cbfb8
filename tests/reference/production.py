"""Plain-loop references of the production routing rules (Megatron-Core top-k with score functions, group-limited
routing, token dropping in both orders, the expert-bias stream, Quantile Balancing, top-p), for small cases.

Written from the rules as docs/routers.md states them, token by token and expert by expert, in float32 numpy so
that selections agree with the vectorised code on the same float values. Inputs are one group ``[T][E]`` (numpy
float32 arrays) unless said otherwise; expert lists are best first, ``-1`` = empty.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np


def score_fn(logits: np.ndarray, score: str) -> np.ndarray:
    """The score function, row by row, in float64 then rounded to float32 (compared with tolerance)."""
    x = logits.astype(np.float64)
    if score == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        out = e / e.sum(axis=-1, keepdims=True)
    elif score == "sigmoid":
        out = 1.0 / (1.0 + np.exp(-x))
    else:
        out = np.sqrt(np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0))
    return out.astype(np.float32)


def best_first(row, allowed=None) -> list[int]:
    """Expert ids by value descending (ties: lower id first), only ``allowed`` ones if given."""
    ids = [e for e in range(len(row)) if allowed is None or e in allowed]
    return sorted(ids, key=lambda e: (-float(row[e]), e))


def topk_loop(select: np.ndarray, k: int, groups: Optional[int] = None, group_topk: Optional[int] = None) -> list[list[int]]:
    """Each token's top-``k`` of ``select`` ``[T, E]``, inside its ``group_topk`` best groups when group-limited (a
    group's score: the sum of its ``k // group_topk`` largest entries)."""
    t_count, e_count = select.shape
    out = []
    for t in range(t_count):
        row = select[t]
        allowed = None
        if groups:
            size = e_count // groups
            group_score = []
            for grp in range(groups):
                members = sorted((float(row[grp * size + j]) for j in range(size)), reverse=True)
                group_score.append(sum(members[: k // group_topk]))
            best_groups = sorted(range(groups), key=lambda grp: (-group_score[grp], grp))[:group_topk]
            allowed = {grp * size + j for grp in best_groups for j in range(size)}
        out.append(best_first(row, allowed)[:k])
    return out


def megatron_probs(logits_row: np.ndarray, scores_row: np.ndarray, experts: list[int], score: str, pre_softmax: bool,
                   scaling: Optional[float]) -> list[float]:
    """The probs of a token's chosen experts by Megatron-Core's rules (float64)."""
    if score == "softmax" and pre_softmax:
        probs = [float(scores_row[e]) for e in experts]
    elif score == "softmax":
        chosen = [float(logits_row[e]) for e in experts]
        top = max(chosen)
        ex = [math.exp(v - top) for v in chosen]
        probs = [v / sum(ex) for v in ex]
    else:
        chosen = [float(scores_row[e]) for e in experts]
        probs = [v / (sum(chosen) + 1e-20) for v in chosen] if len(experts) > 1 else chosen
    return [p * scaling for p in probs] if scaling else probs


def capacity_loop(prefs: list[list[int]], priority: list[list[float]], num_experts: int, capacity: Optional[int],
                  policy: str, order: str) -> list[list[int]]:
    """Token dropping: proposals listed rank-major (``order="rank"``: every first choice, then every second ...) or
    token-major (``"token"``); ``position`` keeps each expert's first ``capacity`` proposals in that order,
    ``probs`` its ``capacity`` highest priorities (equal ones in that order)."""
    t_count, r_count = len(prefs), len(prefs[0])
    if order == "rank":
        listed = [(t, r) for r in range(r_count) for t in range(t_count)]
    else:
        listed = [(t, r) for t in range(t_count) for r in range(r_count)]
    out = [list(row) for row in prefs]
    if capacity is None:
        return out
    for e in range(num_experts):
        wanting = [(t, r) for (t, r) in listed if prefs[t][r] == e]
        if policy == "probs":
            wanting = sorted(wanting, key=lambda tr: -priority[tr[0]][tr[1]])  # stable: ties keep the order
        for t, r in wanting[capacity:]:
            out[t][r] = -1
    return out


def expert_bias_stream_loop(logits: np.ndarray, k: int, capacity: Optional[int], rate: float, update_every: int,
                            policy: str, score: str = "sigmoid", count_kept: bool = True):
    """The aux-loss-free stream over groups ``[G, T, E]``: selection on ``score + bias``, probs of the unbiased
    scores, token dropping, loads counted (after dropping when ``count_kept``), every ``update_every`` groups
    ``bias += rate * sign(mean - load)``. Returns the slots per group and the final bias."""
    g_count, _, e_count = logits.shape
    bias = np.zeros(e_count, dtype=np.float32)
    tokens = np.zeros(e_count, dtype=np.float32)
    pending = 0
    slots = []
    for g in range(g_count):
        scores = score_fn(logits[g], score)
        prefs = topk_loop((scores + bias).astype(np.float32), k)
        priority = [megatron_probs(logits[g][t], scores[t], p, score, True, None) for t, p in enumerate(prefs)]
        kept = capacity_loop(prefs, priority, e_count, capacity, policy, "rank")
        slots.append(kept)
        for row in kept if count_kept else prefs:
            for e in row:
                if e >= 0:
                    tokens[e] += 1
        pending += 1
        if update_every and pending == update_every:
            mean = np.float32(tokens.sum() / e_count)
            bias = (bias + np.sign(mean - tokens).astype(np.float32) * np.float32(rate)).astype(np.float32)
            tokens[:] = 0
            pending = 0
    return slots, bias


def qb_loop(s: np.ndarray, k: int, iters: int, ema: float, update_every: int):
    """Quantile Balancing over groups ``s`` ``[G, T, E]`` float32: each group routed (top-k of ``s - beta``) after
    ``iters`` alternations, its candidate ``beta_e`` = the ``(T*k // E + 1)``-th largest ``s[t, e] - alpha_t``
    (``alpha_t`` = the token's ``(k+1)``-th largest ``s - beta``), every ``update_every`` groups
    ``beta = centre(ema * beta + (1 - ema) * mean candidate)``. Returns the experts per group and the final beta."""
    g_count, t_count, e_count = s.shape
    target = t_count * k // e_count

    def step(group: np.ndarray, beta: np.ndarray):
        experts, alpha = [], []
        for t in range(t_count):
            shifted = (group[t] - beta).astype(np.float32)
            order = best_first(shifted)
            experts.append(order[:k])
            alpha.append(shifted[order[k]])
        candidate = np.zeros(e_count, dtype=np.float32)
        for e in range(e_count):
            column = sorted((np.float32(group[t, e] - alpha[t]) for t in range(t_count)), reverse=True)
            candidate[e] = column[target]
        return experts, candidate

    beta = np.zeros(e_count, dtype=np.float32)
    accum = np.zeros(e_count, dtype=np.float32)
    count = 0
    routed = []
    for g in range(g_count):
        work = beta
        for _ in range(iters):
            _, work = step(s[g], work)
        experts, candidate = step(s[g], work)
        routed.append(experts)
        accum = (accum + candidate).astype(np.float32)
        count += 1
        if update_every and count == update_every:
            new = (np.float32(ema) * beta + np.float32(1.0 - ema) * (accum / np.float32(count))).astype(np.float32)
            beta = (new - new.mean()).astype(np.float32)
            accum[:] = 0
            count = 0
    return routed, beta


def top_p_loop(probs: np.ndarray, p: float, max_k: Optional[int]) -> list[list[int]]:
    """Each token's experts by descending probability (ties: lower id) until the running sum exceeds ``p``
    (that expert included), at most ``max_k``."""
    out = []
    for row in probs:
        chosen, total = [], 0.0
        for e in best_first(row):
            chosen.append(e)
            total += float(row[e])
            if np.float32(total) > np.float32(p):  # the running sum as a float32 tensor holds it, against p in float32
                break
        out.append(chosen[:max_k] if max_k else chosen)
    return out

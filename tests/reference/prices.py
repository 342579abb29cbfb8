"""Plain-loop reference of the ascending price auction of moeroute/solvers/prices.py (docs/dual.md), one group at a
time, with every expert a candidate and no drop node.

The arithmetic is float32 step by step (numpy scalars), in the order the vectorised code uses, so the two agree
exactly on inputs without ties.
"""

from __future__ import annotations

import math

import numpy as np


def best_response(scores: list[list[np.float32]], prices: list[np.float32], k: int) -> list[tuple[list[int], float]]:
    """For each token, its ``k`` experts of largest ``score - price`` (ties: lower expert) and the value of the best
    one it does not take (``-inf`` if none)."""
    out = []
    for row in scores:
        red = [np.float32(s - p) for s, p in zip(row, prices)]
        order = sorted(range(len(row)), key=lambda e: (-float(red[e]), e))
        alt = red[order[k]] if k < len(order) else np.float32(-math.inf)
        out.append((order[:k], alt))
    return out


def auction_loop(
    scores: list[list[np.float32]], k: int, capacity: int, epsilons: list[np.float32]
) -> tuple[list[np.float32], int, bool]:
    """Prices after the auction: in iteration ``i`` every expert holding more than ``capacity`` units rises by the
    ``excess``-th smallest margin of its holders (held value minus the holder's best value not held) plus
    ``epsilons[i]``; it stops when no expert is over-full. Returns the prices, the price updates made and whether it
    stopped by itself."""
    experts = len(scores[0])
    prices = [np.float32(0.0)] * experts
    for it, eps in enumerate(epsilons):
        held = best_response(scores, prices, k)
        margins: list[list[np.float32]] = [[] for _ in range(experts)]
        for t, (top, alt) in enumerate(held):
            for e in top:
                margins[e].append(np.float32(np.float32(scores[t][e] - prices[e]) - alt))
        over = [e for e in range(experts) if len(margins[e]) > capacity]
        if not over:
            return prices, it, True
        for e in over:
            kth = sorted(margins[e], key=float)[len(margins[e]) - capacity - 1]
            if math.isfinite(kth):
                prices[e] = np.float32(prices[e] + np.float32(kth + eps))
    return prices, len(epsilons), False

"""Plain-loop reference of the compiled Gauss-Seidel price auction (moeroute/solvers/auction.py, docs/dual.md), one
group, no drop node needed (capacity suffices), every margin computed from scratch: no cached alternatives, no
stored margin bounds, no pooled start. The kernel's shortcuts must not change a single step of it.

Values are the kernel's integers ``round(S * scale)`` and the step ``int(eps * mean unit value)``, so that the two
agree exactly on inputs without ties.
"""

from __future__ import annotations

import numpy as np


def integer_values(scores: np.ndarray, scale: float) -> list[list[int]]:
    """``round(S * scale)`` as Python ints, row by row (the kernel's rounding: half to even)."""
    return [[int(np.rint(np.float64(s) * scale)) for s in row] for row in scores]


def best_free(row: list[int], prices: list[int], held: set[int], forbidden: set[int]) -> tuple[int, int]:
    """The free expert of largest ``v - p`` (first among equals) and its reduced value."""
    best, at = None, -1
    for e, v in enumerate(row):
        if e in held or e in forbidden:
            continue
        r = v - prices[e]
        if best is None or r > best:
            best, at = r, e
    return at, best


def gauss_seidel(values: list[list[int]], k: int, capacity: list[int], eps: float, sweeps: int,
                 forbidden: list[set[int]] | None = None) -> tuple[list[int], list[set[int]], int, bool]:
    """Prices, each token's held experts, the sweeps run and whether it converged. Every token starts with its
    ``k`` best experts at price 0. A sweep visits the experts in order; an over-full one (``x`` units too many)
    raises its price by ``max(m[x], m[x-1] + step)`` (``m`` its holders' margins, sorted: value there minus value
    of the best expert the holder does not hold) and its ``x`` holders of smallest margin move to their best
    free expert."""
    t_count, e_count = len(values), len(values[0])
    forbidden = forbidden or [set() for _ in range(t_count)]
    prices = [0] * e_count
    held: list[set[int]] = []
    units = []
    for t in range(t_count):
        mine: set[int] = set()
        for _ in range(k):
            at, _ = best_free(values[t], prices, mine, forbidden[t])
            mine.add(at)
            units.append(values[t][at])
        held.append(mine)
    step = int(eps * (sum(units) / max(len(units), 1)))
    done = 0
    while done < sweeps:
        over = False
        for e in range(e_count):
            holders = [t for t in range(t_count) if e in held[t]]
            x = len(holders) - capacity[e]
            if x <= 0:
                continue
            over = True
            margins = []
            for t in holders:
                alt, alt_red = best_free(values[t], prices, held[t], forbidden[t])
                margins.append((values[t][e] - prices[e] - alt_red, t, alt))
            margins.sort()
            prices[e] += max(margins[x][0], margins[x - 1][0] + step)
            for _, t, alt in margins[:x]:
                held[t].remove(e)
                held[t].add(alt)
        if not over:
            return prices, held, done, True
        done += 1
    return prices, held, done, False

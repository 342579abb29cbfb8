"""A fast exact solver that exploits ``E << T``: expert prices, then successive shortest paths over the expert
nodes only.

**The problem as a transportation problem.** Every token ships exactly ``k`` units, each to a distinct expert (arc
capacity 1) or to a *drop* node ``D`` (cost 0; a token may put several units there). ``D`` takes what the network
cannot carry: its capacity is ``k*T - max_flow`` for the ``mcmf`` optimum (so the experts carry exactly the maximum
flow) and ``k*T`` for ``maxweight`` (flow is free, a unit goes wherever it pays). A virtual *filler* ``Z`` ships the
spare capacity ``sum(cap) - k*T`` at cost 0 (several units per node), so that at the end every node (the ``E``
experts and ``D``) is exactly full. Costs are the project's integer costs ``-round(S * SCALE)``: the optimum is
exact and equal to OR-tools' one (same integer cost, same flow through the experts).

**Algorithm.** With node prices ``p`` (``E + 1``), let every token hold its ``k`` cheapest units under the reduced
costs ``c[t, e] + p[e]`` (ties either way). With ``Z`` on the cheapest nodes, such a pseudo-flow is min-cost for
its node imbalances (every residual move has reduced cost >= 0: no negative cycle), and it is optimal once no node
is over-full. Two phases, per group:

1. *Prices* (an ascending auction; the bulk of the work): an over-full node raises its price by exactly the
   amount that pushes out its excess (the excess-th smallest gap between a holder's unit there and that token's
   next cheapest node) and those units move to their next cheapest node. Prices start at 0 and only rise, so a
   node with a positive price is always at least full, and each token's next cheapest node can be cached until
   that node's price moves. Near-ties make it ping-pong, so it stops after a step budget or when the excess has
   stopped falling, leaving a small excess (tens of units at 16384 x 64).
2. *Successive shortest paths over the ``E + 1`` nodes*: the arc ``a -> b`` costs the cheapest move of one unit
   from ``a`` to ``b`` (``min c[t, b] - c[t, a]`` over tokens that hold ``a`` and not ``b``; 0 for a ``Z`` unit),
   kept in a dense ``(E+1) x (E+1)`` matrix updated only where a move can change it. Bellman-Ford from the
   over-full nodes finds the shortest path to a node with room and one unit moves along it (one token per hop);
   a shortest path keeps the pseudo-flow min-cost, and each removes one unit of excess.

Its cost is the price phase plus one shortest path over the ``E + 1`` nodes per unit of excess it leaves, plus
Python overhead per group: it pays off for large groups with few experts and small ``k``, where OR-tools' network
of ``T * E`` arcs is the larger problem. ``auto`` picks by the measured crossovers (benchmarks/PERF.md).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from moeroute.solvers.flow_network import (
    FlowSolution,
    Objective,
    effective_capacity,
    finish,
    integer_costs,
    max_flow_value,
)

STEPS_PER_NODE = 10
PATIENCE_PER_NODE = 1
MIN_GAIN_PER_SHED = 0.0
BIG = 1 << 60
"""Marks an impossible move or an unusable drop node; far above any reduced cost and far from int64 overflow."""


def node_capacities(tokens: int, experts: int, k: int, capacity: Optional[int], objective: Objective) -> np.ndarray:
    """Capacities of the ``E`` experts and the drop node (last), int64 ``[E + 1]``."""
    flow = max_flow_value(tokens, experts, k, capacity)
    drop = k * tokens if objective == "maxweight" else k * tokens - flow
    return np.append(np.full(experts, effective_capacity(capacity, tokens), dtype=np.int64), drop)


class _Group:
    """The state of one group: integer costs ``c`` ``[T, E+1]`` (column ``E`` is the drop node, cost 0), node
    capacities ``cap``, prices ``p``, which token holds which expert (``member``, and ``hold`` expert-major for
    fast look-ups), units on the drop node per token, filler units per node."""

    def __init__(self, costs: np.ndarray, cap: np.ndarray, k: int) -> None:
        t, n = costs.shape
        e = n - 1
        self.t, self.n, self.k, self.d = t, n, k, e
        self.c, self.cap = costs, cap
        self.has_drop = bool(cap[-1] > 0)
        self.p = np.zeros(n, dtype=np.int64)
        if not self.has_drop:
            self.p[self.d] = BIG // 4  # no drop node: never a token's cheapest option
        # Start at price 0: every token takes its k cheapest experts (a drop, cost 0, is never cheaper).
        first = np.argpartition(costs[:, :e], k - 1, axis=1)[:, :k] if k < e else np.broadcast_to(np.arange(e), (t, e))
        self.member = np.zeros((t, n), dtype=bool)  # column d unused: a drop never blocks a move
        np.put_along_axis(self.member, first, True, axis=1)
        self.hold = np.ascontiguousarray(self.member.T)
        self.on_drop = np.zeros(t, dtype=np.int64)
        self.load = self.member.sum(0).astype(np.int64)
        self.z = np.zeros(n, dtype=np.int64)
        # Each token's cheapest node it does not hold, cached with the price that node had then: prices only
        # rise in phase 1, so the cache stays right until that node's price moves or the token moves.
        self.alt_node = np.zeros(t, dtype=np.int64)
        self.alt_val = np.zeros(t, dtype=np.int64)
        self.alt_price = np.full(t, -1, dtype=np.int64)

    def holders(self, a: int) -> np.ndarray:
        return np.flatnonzero(self.on_drop > 0) if a == self.d else np.flatnonzero(self.hold[a])

    def move_many(self, tokens: np.ndarray, src: int, dst: np.ndarray) -> None:
        """Move one unit of each token in ``tokens`` (distinct) from node ``src`` to ``dst`` (same length)."""
        self.alt_price[tokens] = -1
        if src == self.d:
            self.on_drop[tokens] -= 1
        else:
            self.member[tokens, src] = False
            self.hold[src, tokens] = False
        to_drop = dst == self.d
        if to_drop.any():
            np.add.at(self.on_drop, tokens[to_drop], 1)
        keep = ~to_drop
        self.member[tokens[keep], dst[keep]] = True
        self.hold[dst[keep], tokens[keep]] = True
        self.load[src] -= len(tokens)
        self.load += np.bincount(dst, minlength=self.n)

    # -- phase 1: prices --------------------------------------------------------------------------------------
    def shed(self, a: int) -> None:
        """Raise node ``a``'s price by exactly what makes its excess units leave; move them to their next cheapest
        node. A drop-node unit's alternative is its token's j-th cheapest free expert for its j-th unit, so units
        are ranked by (margin, j) and a token's units leave in order."""
        idx = self.holders(a)
        excess = int(self.load[a] - self.cap[a])
        if a == self.d:
            red = self.c[idx] + self.p
            red[self.member[idx]] = BIG
            red[:, a] = BIG
            units = self.on_drop[idx]
            depth = int(units.max())
            order = np.argsort(red, axis=1, kind="stable")[:, :depth]
            margin = np.take_along_axis(red, order, axis=1) - self.p[a]
            margin[np.arange(depth)[None, :] >= units[:, None]] = BIG
            flat = np.argsort(margin.reshape(-1), kind="stable")[:excess]
            rows, cols = np.divmod(flat, depth)
            self.p[a] += margin.reshape(-1)[flat].max()
            # A token leaving with two units leaves them in two calls (distinct tokens per call).
            for j in range(depth):
                sel = cols == j
                if sel.any():
                    self.move_many(idx[rows[sel]], a, order[rows[sel], j])
            return
        stale = idx[self.p[self.alt_node[idx]] != self.alt_price[idx]]
        if len(stale):
            red = self.c[stale] + self.p
            red[self.member[stale]] = BIG
            node = red.argmin(axis=1)
            self.alt_node[stale] = node
            self.alt_val[stale] = red[np.arange(len(stale)), node]
            self.alt_price[stale] = self.p[node]
        margin = self.alt_val[idx] - (self.c[idx, a] + self.p[a])
        sel = np.argpartition(margin, excess - 1)[:excess] if excess < len(idx) else np.arange(len(idx))
        self.p[a] += margin[sel].max()
        self.move_many(idx[sel], a, self.alt_node[idx[sel]])

    def price_phase(self, max_steps: int, patience: int, min_gain: float = 0.0) -> int:
        """Shed over-full nodes in turn until none is, ``max_steps`` sheds were made, the total excess has not
        fallen for ``patience`` sheds (near-ties ping-pong between nodes; phase 2 settles them exactly), or a sweep
        removed less than ``min_gain`` units of excess per shed (then a shortest path per unit is cheaper)."""
        steps, since_best = 0, 0
        best = int(np.maximum(self.load - self.cap, 0).sum())
        while steps < max_steps and since_best < patience:
            over = np.flatnonzero(self.load > self.cap)
            if len(over) == 0:
                break
            before, sheds = best, 0
            for a in over:
                if self.load[a] > self.cap[a]:
                    self.shed(int(a))
                    sheds += 1
            steps += sheds
            total = int(np.maximum(self.load - self.cap, 0).sum())
            since_best = 0 if total < best else since_best + len(over)
            best = min(best, total)
            if before - total < min_gain * sheds:
                break
        return steps

    # -- phase 2: successive shortest paths -------------------------------------------------------------------
    def row(self, a: int, cols: Optional[np.ndarray] = None) -> None:
        """Recompute the cheapest move out of node ``a`` to the nodes ``cols`` (default: all), on raw costs
        (prices cancel along cycles): ``min c[t, x] - c[t, a]`` over tokens holding ``a`` and not ``x``, or 0 when
        a filler unit on ``a`` can move to ``x``."""
        cols = np.arange(self.n) if cols is None else cols
        idx = self.holders(a)
        if len(idx):
            delta = self.c[np.ix_(idx, cols)] - self.c[idx, a][:, None]
            delta[self.member[np.ix_(idx, cols)]] = BIG
            delta[:, cols == a] = BIG
            if not self.has_drop:
                delta[:, cols == self.d] = BIG
            best = delta.argmin(axis=0)
            self.w[a, cols] = delta[best, np.arange(len(cols))]
            self.who[a, cols] = idx[best]
        else:
            self.w[a, cols] = BIG
        if self.z[a] > 0:
            free = (self.z[cols] < self.cap[cols]) & (self.w[a, cols] > 0) & (cols != a)
            self.w[a, cols[free]] = 0
            self.who[a, cols[free]] = -1

    def column(self, a: int, x: int) -> None:
        """:meth:`row` for the one entry ``a -> x`` (the common update; fewer numpy calls)."""
        idx = self.holders(a)
        if x == a or not len(idx) or (x == self.d and not self.has_drop):
            self.w[a, x] = BIG
        else:
            delta = self.c[idx, x] - self.c[idx, a]
            delta[self.member[idx, x]] = BIG
            j = int(delta.argmin())
            self.w[a, x], self.who[a, x] = delta[j], idx[j]
        if self.z[a] > 0 and x != a and self.z[x] < self.cap[x] and self.w[a, x] > 0:
            self.w[a, x], self.who[a, x] = 0, -1

    def offer(self, tok: int, a: int, cols: np.ndarray) -> None:
        """Token ``tok`` (a holder of ``a``) may now move from ``a`` to ``cols``: lower those entries if cheaper."""
        cand = self.c[tok, cols] - self.c[tok, a]
        ok = ~self.member[tok, cols] & (cols != a)
        if not self.has_drop:
            ok &= cols != self.d
        better = ok & (cand < self.w[a, cols])
        self.w[a, cols[better]] = cand[better]
        self.who[a, cols[better]] = tok

    def held_by(self, tok: int) -> np.ndarray:
        held = np.flatnonzero(self.member[tok])
        return np.append(held, self.d) if self.on_drop[tok] > 0 else held

    def move(self, tok: int, src: int, dst: int) -> None:
        """Move one unit of token ``tok`` (``-1``: the filler) from ``src`` to ``dst`` and update the arc matrix
        ``w`` only where that move can change it."""
        n = self.n
        if tok < 0:
            self.z[src] -= 1
            self.z[dst] += 1
            if self.z[src] == 0:
                self.row(src, np.flatnonzero(self.who[src] == -1))
            if self.z[dst] == self.cap[dst]:
                for r in np.flatnonzero(self.who[:, dst] == -1):
                    self.row(int(r), np.array([dst]))
            if self.z[dst] == 1:
                self.row(dst)
            if self.z[src] == self.cap[src] - 1:
                for r in np.flatnonzero(self.z > 0):
                    if r != src and self.w[r, src] > 0:
                        self.w[r, src], self.who[r, src] = 0, -1
            return
        self.move_many(np.array([tok]), src, np.array([dst]))
        # src lost a holder (unless tok keeps drop units there): entries it supplied need a new minimum.
        lost = np.flatnonzero(self.who[src] == tok)
        if len(lost) > 2:
            self.row(src, lost)
        else:
            for x in lost:
                self.column(src, int(x))
        held = self.held_by(tok)
        # dst gained a holder.
        self.offer(tok, dst, np.arange(n))
        for h in held:
            if h == dst:
                continue
            # tok now holds dst, so it can no longer supply h -> dst; it no longer holds src, so h -> src opens.
            if self.who[h, dst] == tok:
                self.column(int(h), dst)
            self.offer(tok, int(h), np.array([src]))

    def place_filler(self) -> None:
        """The filler takes the spare room (``sum(cap) - k*T`` units) of the cheapest nodes with room; with the
        price-phase invariant (a node with a positive price is full) every node with room has price 0, the least."""
        room = np.maximum(self.cap - self.load, 0)
        amount = int(self.cap.sum()) - self.k * self.t
        order = np.lexsort((np.arange(self.n), self.p))
        before = np.cumsum(room[order]) - room[order]
        self.z[order] = np.clip(amount - before, 0, room[order])

    def ssp_phase(self) -> int:
        n = self.n
        self.w = np.full((n, n), BIG, dtype=np.int64)
        self.who = np.zeros((n, n), dtype=np.int64)
        for a in range(n):
            self.row(a)
        paths = 0
        cols = np.arange(n)
        while True:
            excess = self.load + self.z - self.cap
            over = excess > 0
            if not over.any():
                return paths
            dist = np.where(over, 0, BIG)
            pred = np.full(n, -1)
            for _ in range(n + 1):
                cand = dist[:, None] + self.w
                src = cand.argmin(axis=0)
                best = cand[src, cols]
                better = best < dist
                if not better.any():
                    break
                dist = np.where(better, best, dist)
                pred = np.where(better, src, pred)
            else:
                raise RuntimeError("expert_ssp: negative cycle among the experts (the pseudo-flow lost optimality)")
            target = int(np.argmin(np.where(excess < 0, dist, BIG)))
            if excess[target] >= 0 or dist[target] >= BIG // 2:
                raise RuntimeError("expert_ssp: no augmenting path (the problem should always be feasible)")
            path = [target]
            while pred[path[-1]] >= 0:
                path.append(int(pred[path[-1]]))
            path.reverse()
            # The tokens are read off before any move: a later hop must use the arc the path was priced with.
            hops = [(int(self.who[a, b]), a, b) for a, b in zip(path, path[1:])]
            for tok, a, b in hops:
                self.move(tok, a, b)
            paths += 1


def solve_expert_ssp(
    scores: np.ndarray, k: int, capacity: Optional[int], objective: Objective = "mcmf", max_steps: Optional[int] = None
) -> FlowSolution:
    """Exact optimum of every group of ``scores`` ``[G, T, E]`` (see the module docstring)."""
    g, t, e = scores.shape
    cap = node_capacities(t, e, k, capacity, objective)
    costs = np.zeros((g, t, e + 1), dtype=np.int64)
    costs[..., :e] = integer_costs(scores)
    out = np.zeros((g, t, e), dtype=bool)
    for i in range(g):
        group = _Group(costs[i], cap, k)
        budget = STEPS_PER_NODE * (e + 1) if max_steps is None else max_steps
        group.price_phase(budget, patience=PATIENCE_PER_NODE * (e + 1), min_gain=MIN_GAIN_PER_SHED)
        group.place_filler()
        group.ssp_phase()
        out[i] = group.member[:, :e]
    return finish(out, scores, "expert_ssp", costs[..., :e])

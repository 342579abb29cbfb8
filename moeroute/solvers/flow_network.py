"""The MaxScore flow network and what every exact solver returns.

``source --(cap k, cost 0)--> token t --(cap 1, cost -S[t,e])--> expert e --(cap C, cost 0)--> sink``

Two optima: **mcmf** (maximum flow first, then minimum cost: drop nothing that capacity allows; MaxScore's
target) and **maxweight** (maximise the score sum with the flow free; it may leave slots empty and can score above
the MCMF optimum). Solvers work on integer costs ``-round(S * SCALE)``; objectives are reported in float scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

import numpy as np

if TYPE_CHECKING:
    import networkx as nx

Objective = Literal["mcmf", "maxweight"]
SCALE = 1_000_000
"""Scores are multiplied by this and rounded to integer costs (OR-tools and network simplex need integers)."""


@dataclass(frozen=True)
class FlowSolution:
    """An exact solution for ``G`` groups.

    ``assignment`` bool ``[G, T, E]``; ``flow`` int ``[G]`` assignments made; ``int_cost`` int ``[G]`` the minimum
    integer cost (negative); ``objective`` float ``[G]`` the sum of the original scores of the assignment.
    """

    assignment: np.ndarray
    flow: np.ndarray
    int_cost: np.ndarray
    objective: np.ndarray
    solver: str


def integer_costs(scores: np.ndarray) -> np.ndarray:
    """``-round(scores * SCALE)`` as int64: the arc costs of token -> expert (two passes and one temporary)."""
    tmp = np.multiply(np.asarray(scores, dtype=np.float64), -SCALE)
    np.rint(tmp, out=tmp)
    return tmp.astype(np.int64)


def effective_capacity(capacity: Optional[int], tokens: int) -> int:
    """No capacity means an expert can take every token once."""
    return tokens if capacity is None else min(int(capacity), tokens)


def max_flow_value(tokens: int, experts: int, k: int, capacity: Optional[int]) -> int:
    """The maximum flow of the complete bipartite network: ``min(k*T, E*min(C, T))``.

    Every token reaches every expert, so filling experts round-robin achieves this bound (tests check it against
    networkx's max flow).
    """
    return min(k * tokens, experts * effective_capacity(capacity, tokens))


def finish(assignment: np.ndarray, scores: np.ndarray, solver: str, costs: Optional[np.ndarray] = None) -> FlowSolution:
    """Build the :class:`FlowSolution` of a bool assignment ``[G, T, E]`` (``costs``: the integer costs, if the
    solver already has them)."""
    costs = integer_costs(scores) if costs is None else costs
    g = assignment.shape[0]
    flat = assignment.reshape(g, -1)
    return FlowSolution(
        assignment=assignment,
        flow=flat.sum(axis=1).astype(np.int64),
        # A bool-mask matrix product is far cheaper than np.where over [G, T, E] (exact: int64 and float64 sums).
        int_cost=np.einsum("gi,gi->g", flat, costs.reshape(g, -1), dtype=np.int64),
        objective=np.einsum("gi,gi->g", flat, np.asarray(scores, dtype=np.float64).reshape(g, -1)),
        solver=solver,
    )


def finish_selected(
    cells: np.ndarray, shape: tuple[int, int, int], scores: np.ndarray, costs: np.ndarray, solver: str
) -> FlowSolution:
    """:func:`finish` from the flat indices ``cells`` of the assigned (token, expert) pairs of ``[G, T, E]``: the totals
    cost ``O(k T)`` instead of a pass over every pair (float64 sums of int64 costs are exact below ``2**53``)."""
    g, t, e = shape
    assignment = np.zeros(g * t * e, dtype=bool)
    assignment[cells] = True
    group = cells // (t * e)
    flat_costs = costs.reshape(-1)[cells]
    return FlowSolution(
        assignment=assignment.reshape(g, t, e),
        flow=np.bincount(group, minlength=g).astype(np.int64),
        int_cost=np.rint(np.bincount(group, weights=flat_costs, minlength=g)).astype(np.int64),
        objective=np.bincount(group, weights=np.asarray(scores, dtype=np.float64).reshape(-1)[cells], minlength=g),
        solver=solver,
    )


SOURCE, SINK = "s", "t"


def build_graph(scores: np.ndarray, k: int, capacity: Optional[int], objective: Objective = "mcmf") -> "nx.DiGraph":
    """The networkx flow network of one group (``scores`` ``[T, E]``).

    Nodes: ``"s"``, ``"t"``, ``("tok", i)``, ``("exp", e)``. Edge attributes ``capacity`` and integer ``weight``.
    For ``maxweight`` a zero-cost bypass ``s -> t`` lets flow skip the network; node demands are set so that
    network simplex can solve either problem directly.
    """
    import networkx as nx  # only the networkx solvers build this graph

    t_count, e_count = scores.shape
    costs = integer_costs(scores)
    cap = effective_capacity(capacity, t_count)
    g = nx.DiGraph()
    for i in range(t_count):
        g.add_edge(SOURCE, ("tok", i), capacity=k, weight=0)
        for e in range(e_count):
            g.add_edge(("tok", i), ("exp", e), capacity=1, weight=int(costs[i, e]))
    for e in range(e_count):
        g.add_edge(("exp", e), SINK, capacity=cap, weight=0)
    flow = max_flow_value(t_count, e_count, k, capacity)
    if objective == "maxweight":
        flow = k * t_count
        g.add_edge(SOURCE, SINK, capacity=flow, weight=0)
    g.nodes[SOURCE]["demand"] = -flow
    g.nodes[SINK]["demand"] = flow
    return g


def assignment_from_flow(flow: dict, tokens: int, experts: int) -> np.ndarray:
    """Bool ``[T, E]`` from a networkx-style flow dict ``flow[u][v]``."""
    out = np.zeros((tokens, experts), dtype=bool)
    for i in range(tokens):
        for node, units in flow[("tok", i)].items():
            if units > 0:
                out[i, node[1]] = True
    return out

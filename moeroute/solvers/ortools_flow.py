"""The fast exact solver: OR-tools ``SimpleMinCostFlow`` on int64-scaled costs, all groups in one network.

Groups share only the source and the sink, so the max flow and its min cost decompose over groups and one call
solves them all; arcs are added from numpy arrays (no Python loop over tokens).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from ortools.graph.python import min_cost_flow

from moeroute.solvers.flow_network import (
    FlowSolution,
    Objective,
    effective_capacity,
    finish,
    finish_selected,
    integer_costs,
)


def solve_ortools(scores: np.ndarray, k: int, capacity: Optional[int], objective: Objective = "mcmf") -> FlowSolution:
    """Exact optimum of every group of ``scores`` ``[G, T, E]``: the same arc arrays a direct call of OR-tools builds
    (no pair selection, no ``[G, T, E]`` index tables beyond what ``add_arcs`` needs) and totals from the ``k T``
    assigned pairs only, so the wrapper costs little beyond OR-tools itself (benchmarks/PERF.md)."""
    g, t, e = scores.shape
    costs = integer_costs(scores)
    n_tok, n_pair = g * t, g * t * e
    tokens = np.arange(2, 2 + n_tok, dtype=np.int64)
    experts = np.arange(2 + n_tok, 2 + n_tok + g * e, dtype=np.int64)
    tails = np.concatenate([np.zeros(n_tok, np.int64), np.repeat(tokens, e), experts])
    heads = np.concatenate(
        [tokens, np.broadcast_to(experts.reshape(g, 1, e), (g, t, e)).reshape(-1), np.ones(g * e, np.int64)]
    )
    caps = np.concatenate(
        [np.full(n_tok, k, np.int64), np.ones(n_pair, np.int64), np.full(g * e, effective_capacity(capacity, t), np.int64)]
    )
    arc_costs = np.concatenate([np.zeros(n_tok, np.int64), costs.reshape(-1), np.zeros(g * e, np.int64)])
    solver = min_cost_flow.SimpleMinCostFlow()
    solver.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, arc_costs)
    total = k * n_tok
    solver.set_node_supply(0, total)
    solver.set_node_supply(1, -total)
    if objective == "maxweight":
        solver.add_arc_with_capacity_and_unit_cost(0, 1, total, 0)
        status = solver.solve()
    else:
        status = solver.solve_max_flow_with_min_cost()
    if status != solver.OPTIMAL:
        raise RuntimeError(f"OR-tools min-cost flow returned status {status}")
    cells = np.flatnonzero(solver.flows(np.arange(n_tok, n_tok + n_pair)))
    return finish_selected(cells, (g, t, e), scores, costs, "ortools")


def solve_ortools_transport(
    scores: np.ndarray,
    token_caps: np.ndarray,
    expert_caps: np.ndarray,
    allowed: Optional[np.ndarray] = None,
    objective: Objective = "mcmf",
) -> FlowSolution:
    """The same network with a capacity per token ``[G, T]`` and per expert ``[G, E]`` and only the token ->
    expert arcs where ``allowed`` ``[G, T, E]`` is true (all when ``None``): the general form, e.g. MaxScore's
    residual problem after stage 1."""
    g, t, e = scores.shape
    source, sink = 0, 1
    tokens = 2 + np.arange(g * t, dtype=np.int64).reshape(g, t)
    experts = 2 + g * t + np.arange(g * e, dtype=np.int64).reshape(g, e)
    pair_tail = np.broadcast_to(tokens[:, :, None], (g, t, e)).reshape(-1)
    pair_head = np.broadcast_to(experts[:, None, :], (g, t, e)).reshape(-1)
    int_costs = integer_costs(scores)
    pair_cost = int_costs.reshape(-1)
    pair_cells = np.arange(g * t * e) if allowed is None else np.flatnonzero(np.asarray(allowed, dtype=bool).reshape(-1))
    tails = np.concatenate([np.full(g * t, source), pair_tail[pair_cells], experts.reshape(-1)])
    heads = np.concatenate([tokens.reshape(-1), pair_head[pair_cells], np.full(g * e, sink)])
    caps = np.concatenate(
        [np.asarray(token_caps, np.int64).reshape(-1), np.ones(pair_cells.size, dtype=np.int64), np.asarray(expert_caps, np.int64).reshape(-1)]
    )
    costs = np.concatenate([np.zeros(g * t, dtype=np.int64), pair_cost[pair_cells], np.zeros(g * e, dtype=np.int64)])
    solver = min_cost_flow.SimpleMinCostFlow()
    solver.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, costs)
    total = int(np.asarray(token_caps).sum())
    solver.set_node_supply(source, total)
    solver.set_node_supply(sink, -total)
    if objective == "maxweight":
        # A free bypass lets flow skip the network where an assignment would not pay.
        solver.add_arc_with_capacity_and_unit_cost(source, sink, total, 0)
        status = solver.solve()
    else:
        # Supplies larger than the max flow are allowed here: it sends as much as the network carries.
        status = solver.solve_max_flow_with_min_cost()
    if status != solver.OPTIMAL:
        raise RuntimeError(f"OR-tools min-cost flow returned status {status}")
    flows = solver.flows(np.arange(g * t, g * t + pair_cells.size)) > 0
    assignment = np.zeros(g * t * e, dtype=bool)
    assignment[pair_cells] = flows
    return finish(assignment.reshape(g, t, e), scores, "ortools", int_costs)

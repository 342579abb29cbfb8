"""The fast exact solver: OR-tools ``SimpleMinCostFlow`` on int64-scaled costs, all groups in one network.

Groups share only the source and the sink, so the max flow and its min cost decompose over groups and one call
solves them all; arcs are added from numpy arrays (no Python loop over tokens).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from ortools.graph.python import min_cost_flow

from moeroute.solvers.flow_network import FlowSolution, Objective, effective_capacity, finish, integer_costs


def solve_ortools(scores: np.ndarray, k: int, capacity: Optional[int], objective: Objective = "mcmf") -> FlowSolution:
    """Exact optimum of every group of ``scores`` ``[G, T, E]``."""
    g, t, e = scores.shape
    cap = effective_capacity(capacity, t)
    source, sink = 0, 1
    tokens = 2 + np.arange(g * t, dtype=np.int64).reshape(g, t)
    experts = 2 + g * t + np.arange(g * e, dtype=np.int64).reshape(g, e)
    pair_tail = np.broadcast_to(tokens[:, :, None], (g, t, e)).reshape(-1)
    pair_head = np.broadcast_to(experts[:, None, :], (g, t, e)).reshape(-1)
    tails = np.concatenate([np.full(g * t, source), pair_tail, experts.reshape(-1)])
    heads = np.concatenate([tokens.reshape(-1), pair_head, np.full(g * e, sink)])
    caps = np.concatenate([np.full(g * t, k), np.ones(g * t * e, dtype=np.int64), np.full(g * e, cap)])
    costs = np.concatenate([np.zeros(g * t, dtype=np.int64), integer_costs(scores).reshape(-1), np.zeros(g * e, dtype=np.int64)])
    solver = min_cost_flow.SimpleMinCostFlow()
    solver.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, costs)
    total = k * t * g
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
    pair_arcs = np.arange(g * t, g * t + g * t * e)
    assignment = solver.flows(pair_arcs).reshape(g, t, e) > 0
    return finish(assignment, scores, "ortools")

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
    int_costs = integer_costs(scores)
    # Node ids: source 0, sink 1, tokens 2 .. 2+G*T-1, then experts (group-major). Arcs: source->token, every
    # token->expert pair (token-major, so arc ids of pairs are 2-D like the scores), expert->sink.
    n_tok, n_exp, n_pair = g * t, g * e, g * t * e
    tokens = np.arange(2, 2 + n_tok, dtype=np.int64)
    experts = np.arange(2 + n_tok, 2 + n_tok + n_exp, dtype=np.int64)
    tails = np.empty(n_tok + n_pair + n_exp, dtype=np.int64)
    heads = np.empty_like(tails)
    tails[:n_tok], heads[:n_tok] = source, tokens
    tails[n_tok : n_tok + n_pair] = np.repeat(tokens, e)
    heads[n_tok : n_tok + n_pair].reshape(g, t, e)[:] = experts.reshape(g, 1, e)
    tails[n_tok + n_pair :], heads[n_tok + n_pair :] = experts, sink
    caps = np.ones_like(tails)
    caps[:n_tok], caps[n_tok + n_pair :] = k, cap
    costs = np.zeros_like(tails)
    costs[n_tok : n_tok + n_pair] = int_costs.reshape(-1)
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
    assignment = solver.flows(np.arange(n_tok, n_tok + n_pair)).reshape(g, t, e) > 0
    return finish(assignment, scores, "ortools", int_costs)

"""networkx's own min-cost flow algorithms on the same network: the independent cross-check of the exact optimum."""

from __future__ import annotations

from typing import Optional

import networkx as nx
import numpy as np

from moeroute.solvers.flow_network import (
    SINK,
    SOURCE,
    FlowSolution,
    Objective,
    assignment_from_flow,
    build_graph,
    finish,
)


def solve_network_simplex(
    scores: np.ndarray, k: int, capacity: Optional[int], objective: Objective = "mcmf"
) -> FlowSolution:
    """Exact optimum per group with ``nx.network_simplex`` (demands set to the max flow, or a bypass arc)."""
    out = []
    for group in scores:
        _, flow = nx.network_simplex(build_graph(group, k, capacity, objective))
        out.append(assignment_from_flow(flow, *group.shape))
    return finish(np.stack(out), scores, "network_simplex")


def solve_max_flow_min_cost(
    scores: np.ndarray, k: int, capacity: Optional[int], objective: Objective = "mcmf"
) -> FlowSolution:
    """MCMF optimum per group with ``nx.max_flow_min_cost`` (it has no max-weight mode)."""
    if objective != "mcmf":
        raise ValueError("max_flow_min_cost computes only the mcmf optimum")
    out = []
    for group in scores:
        flow = nx.max_flow_min_cost(build_graph(group, k, capacity, "mcmf"), SOURCE, SINK)
        out.append(assignment_from_flow(flow, *group.shape))
    return finish(np.stack(out), scores, "max_flow_min_cost")

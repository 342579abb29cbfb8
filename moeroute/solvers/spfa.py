"""The paper's exact method: successive shortest augmenting paths, each found by SPFA (queue-based Bellman-Ford,
which handles the negative costs), on the networkx flow network. Written to be read; slow by design (one SPFA per
unit of flow), the ground truth for small groups."""

from __future__ import annotations

from collections import deque
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

INF = float("inf")


class Residual:
    """Residual network of a networkx DiGraph: for every arc ``u -> v`` a reverse arc ``v -> u`` of cost
    ``-w`` and capacity 0, stored as dict-of-dicts so SPFA can scan a node's arcs directly."""

    def __init__(self, graph: nx.DiGraph) -> None:
        self.cap: dict = {u: {} for u in graph}
        self.cost: dict = {u: {} for u in graph}
        for u, v, data in graph.edges(data=True):
            self.cap[u][v] = data["capacity"]
            self.cost[u][v] = data["weight"]
            self.cap[v].setdefault(u, 0)
            self.cost[v][u] = -data["weight"]
        self.original = graph

    def push(self, path: list, units: int) -> None:
        for u, v in zip(path, path[1:]):
            self.cap[u][v] -= units
            self.cap[v][u] += units

    def flow(self) -> dict:
        """Flow on each original arc: the capacity its reverse arc gained."""
        return {u: {v: self.cap[v][u] for v in self.original.succ[u]} for u in self.original}


def spfa(res: Residual, source) -> tuple[dict, dict]:
    """Shortest distances and predecessors from ``source`` over arcs with residual capacity."""
    dist = {source: 0}
    parent: dict = {}
    queue = deque([source])
    queued = {source}
    while queue:
        u = queue.popleft()
        queued.discard(u)
        du = dist[u]
        for v, cap in res.cap[u].items():
            if cap <= 0:
                continue
            nd = du + res.cost[u][v]
            if nd < dist.get(v, INF):
                dist[v] = nd
                parent[v] = u
                if v not in queued:
                    queue.append(v)
                    queued.add(v)
    return dist, parent


def successive_shortest_paths(graph: nx.DiGraph, source=SOURCE, sink=SINK, stop_at_nonnegative: bool = False) -> dict:
    """Min-cost max-flow by SSP with SPFA; returns the flow dict ``flow[u][v]``.

    With ``stop_at_nonnegative`` it stops once the cheapest path no longer lowers the cost: the max-weight optimum.
    Augmenting a shortest path each time keeps the flow min-cost for its value, so the last flow is optimal.
    """
    res = Residual(graph)
    while True:
        dist, parent = spfa(res, source)
        if sink not in dist or (stop_at_nonnegative and dist[sink] >= 0):
            break
        path = [sink]
        while path[-1] != source:
            path.append(parent[path[-1]])
        path.reverse()
        units = min(res.cap[u][v] for u, v in zip(path, path[1:]))
        res.push(path, units)
    return res.flow()


def solve_spfa(scores: np.ndarray, k: int, capacity: Optional[int], objective: Objective = "mcmf") -> FlowSolution:
    """Exact optimum of every group of ``scores`` ``[G, T, E]`` by SPFA successive shortest paths."""
    out = []
    for group in scores:
        graph = build_graph(group, k, capacity, "mcmf")
        flow = successive_shortest_paths(graph, stop_at_nonnegative=objective == "maxweight")
        out.append(assignment_from_flow(flow, *group.shape))
    return finish(np.stack(out), scores, "spfa")

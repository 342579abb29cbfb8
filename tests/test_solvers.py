"""The three exact solvers agree on the optimum, on hand-checked and random problems, for both optima."""

import itertools

import networkx as nx
import numpy as np
import pytest
import torch

from moeroute import expert_capacity, solve_optimum
from moeroute.solvers import SCALE, SOLVERS, max_flow_value
from moeroute.solvers.flow_network import SINK, SOURCE, build_graph

# 3 tokens, 3 experts, k=2, cf=1 -> C=2. t0 and t1 want e0 and e1; t2 wants e2.
# Max-weight: t0{e0,e1}, t1{e0,e1}, t2{e2} = 0.96 + 0.96 + 0.90 = 2.82 with 5 slots (e2's second place is
# reachable only by t2, which holds e2 already). Filling the 6th slot forces t0 (or t1) to swap e1 for e2 and t2
# to take e1: 2.82 - 0.48 + 0.04 + 0.05 = 2.43. So MCMF = 2.43 with 6 slots < max-weight.
TRAP = np.array([[[0.48, 0.48, 0.04], [0.48, 0.48, 0.04], [0.05, 0.05, 0.90]]])


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_mcmf_fills_every_slot_and_can_score_below_maxweight(solver):
    sol = solve_optimum(TRAP, k=2, capacity=2, solver=solver, objective="mcmf")
    assert sol.flow.tolist() == [6]
    assert sol.objective[0] == pytest.approx(2.43)
    assert sol.int_cost[0] == -2_430_000
    assert sol.assignment.sum(axis=1).tolist() == [[2, 2, 2]]
    assert sol.assignment[0, 2].tolist() == [True, False, True] or sol.assignment[0, 2].tolist() == [False, True, True]
    if solver != "max_flow_min_cost":
        mw = solve_optimum(TRAP, k=2, capacity=2, solver=solver, objective="maxweight")
        assert mw.flow.tolist() == [5]
        assert mw.objective[0] == pytest.approx(2.82)


def test_assignment_golden_k1():
    # 3 tokens, 3 experts, k=1, C=1: the best permutation is the diagonal (0.6 + 0.45 + 0.25 = 1.30),
    # checked against all 6 permutations.
    s = np.array([[0.6, 0.3, 0.1], [0.5, 0.45, 0.05], [0.4, 0.35, 0.25]])
    best = max(sum(s[t, p[t]] for t in range(3)) for p in itertools.permutations(range(3)))
    sol = solve_optimum(s, k=1, capacity=1)
    assert sol.objective[0] == pytest.approx(best) == pytest.approx(1.30)
    assert sol.assignment[0].tolist() == np.eye(3, dtype=bool).tolist()


def random_scores(rng, g, t, e, kind):
    if kind == "ties":
        return rng.integers(0, 3, size=(g, t, e)) / 4.0
    logits = rng.normal(size=(g, t, e)) + (rng.normal(size=e) * 1.5 if kind == "skew" else 0.0)
    return torch.from_numpy(logits).softmax(-1).numpy()


CASES = [
    (k, cf, kind, seed)
    for k in (1, 2, 4)
    for cf in (0.5, 1.0, 1.25)
    for kind in ("flat", "skew", "ties")
    for seed in (0, 1)
]


@pytest.mark.parametrize("k,cf,kind,seed", CASES)
def test_all_solvers_agree(k, cf, kind, seed):
    rng = np.random.default_rng(seed * 100 + k)
    g, t, e = 2, 10, 5
    scores = random_scores(rng, g, t, e, kind)
    cap = expert_capacity(cf, k, t, e)
    results = {name: solve_optimum(scores, k, cap, name, "mcmf") for name in SOLVERS}
    reference = results["ortools"]
    assert reference.flow.tolist() == [max_flow_value(t, e, k, cap)] * g
    for name, sol in results.items():
        assert sol.int_cost.tolist() == reference.int_cost.tolist(), name
        assert sol.flow.tolist() == reference.flow.tolist(), name
        assert (sol.assignment.sum(axis=2) <= k).all() and (sol.assignment.sum(axis=1) <= cap).all(), name
    for name in ("ortools", "spfa", "network_simplex"):
        mw = solve_optimum(scores, k, cap, name, "maxweight")
        assert mw.int_cost.tolist() == solve_optimum(scores, k, cap, "ortools", "maxweight").int_cost.tolist(), name
        assert (mw.int_cost <= reference.int_cost).all(), name  # max-weight >= MCMF objective


@pytest.mark.parametrize("t,e,k,cap", [(7, 3, 2, 2), (5, 4, 4, 1), (6, 6, 3, None), (4, 2, 1, 9)])
def test_max_flow_formula_matches_networkx(t, e, k, cap):
    graph = build_graph(np.full((t, e), 0.5), k, cap)
    assert nx.maximum_flow_value(graph, SOURCE, SINK) == max_flow_value(t, e, k, cap)


def test_objective_is_reported_in_float_scores():
    rng = np.random.default_rng(3)
    scores = random_scores(rng, 1, 12, 4, "flat")
    sol = solve_optimum(torch.from_numpy(scores), 2, 6)
    assert sol.objective[0] == pytest.approx(scores[0][sol.assignment[0]].sum())
    assert abs(-sol.int_cost[0] / SCALE - sol.objective[0]) <= 0.5 * sol.flow[0] / SCALE + 1e-9

"""The fast exact solver (``expert_ssp``) and ``auto`` agree exactly with OR-tools and network simplex."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import moeroute.solvers as solvers
from moeroute.core.problem import expert_capacity
from moeroute.solvers import solve_optimum
from moeroute.solvers.expert_ssp import solve_expert_ssp
from moeroute.solvers.flow_network import max_flow_value


def make_scores(kind: str, groups: int, tokens: int, experts: int, seed: int) -> np.ndarray:
    """Softmax scores ``[G, T, E]``: flat (Gaussian), skewed (hot experts) or full of ties (3 logit levels)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "ties":
        logits = torch.randint(0, 3, (groups, tokens, experts), generator=gen).double()
    else:
        logits = torch.randn(groups, tokens, experts, generator=gen, dtype=torch.float64)
        if kind == "skew":
            logits = logits + 2.0 * torch.randn(experts, generator=gen, dtype=torch.float64)
    return logits.softmax(-1).numpy()


def check_valid(assignment: np.ndarray, k: int, capacity) -> None:
    assert (assignment.sum(axis=2) <= k).all()
    if capacity is not None:
        assert (assignment.sum(axis=1) <= capacity).all()


problems = st.tuples(
    st.sampled_from(["flat", "skew", "ties"]),
    st.integers(1, 2),  # groups
    st.integers(1, 24),  # tokens
    st.sampled_from([1, 2, 4]),  # k
    st.integers(0, 4),  # extra experts beyond k
    st.sampled_from([0.5, 1.0, 1.25, None]),
    st.integers(0, 2**31 - 1),
)


@settings(max_examples=150, deadline=None)
@given(problems, st.sampled_from([None, 0]))
def test_matches_ortools_exactly(problem, max_steps):
    """Same integer cost and flow as OR-tools; ``max_steps=0`` skips the price phase (pure shortest paths)."""
    kind, g, t, k, extra, cf, seed = problem
    e = k + extra
    scores = make_scores(kind, g, t, e, seed)
    cap = expert_capacity(cf, k, t, e)
    for objective in ("mcmf", "maxweight"):
        ref = solve_optimum(scores, k, cap, "ortools", objective)
        got = solve_expert_ssp(scores, k, cap, objective, max_steps=max_steps)
        check_valid(got.assignment, k, cap)
        np.testing.assert_array_equal(got.int_cost, ref.int_cost)
        np.testing.assert_allclose(got.objective, ref.objective, rtol=0, atol=1e-6 * t * k)
        if objective == "mcmf":
            np.testing.assert_array_equal(got.flow, ref.flow)
            assert (got.flow == max_flow_value(t, e, k, cap)).all()
        else:
            # The max-weight flow is not unique where a move nets a zero integer cost; its cost is.
            assert (got.flow <= max_flow_value(t, e, k, cap)).all()


@settings(max_examples=40, deadline=None)
@given(problems)
def test_matches_network_simplex(problem):
    kind, g, t, k, extra, cf, seed = problem
    e = k + extra
    scores = make_scores(kind, g, t, e, seed)
    cap = expert_capacity(cf, k, t, e)
    for objective in ("mcmf", "maxweight"):
        ref = solve_optimum(scores, k, cap, "network_simplex", objective)
        got = solve_optimum(scores, k, cap, "expert_ssp", objective)
        np.testing.assert_array_equal(got.int_cost, ref.int_cost)


@pytest.mark.parametrize(
    "kind,groups,tokens,experts,k,cf",
    [
        ("skew", 1, 2048, 32, 2, 1.0),
        ("flat", 1, 2048, 32, 2, 1.0),
        ("skew", 4, 512, 16, 2, 1.25),
        ("flat", 2, 512, 16, 4, 0.5),
        ("ties", 1, 1024, 16, 2, 1.0),
    ],
)
def test_medium_problems(kind, groups, tokens, experts, k, cf):
    scores = make_scores(kind, groups, tokens, experts, seed=7)
    cap = expert_capacity(cf, k, tokens, experts)
    for objective in ("mcmf", "maxweight"):
        ref = solve_optimum(scores, k, cap, "ortools", objective)
        got = solve_optimum(scores, k, cap, "expert_ssp", objective)
        check_valid(got.assignment, k, cap)
        np.testing.assert_array_equal(got.int_cost, ref.int_cost)
        if objective == "mcmf":
            np.testing.assert_array_equal(got.flow, ref.flow)


def test_auto_dispatches_by_group_size_experts_and_k(monkeypatch):
    scores = make_scores("skew", 2, 64, 8, seed=3)
    cap = expert_capacity(1.0, 2, 64, 8)
    assert solvers.DEFAULT_SOLVER == "auto"
    assert solve_optimum(scores, 2, cap).solver == "ortools"  # small groups
    monkeypatch.setattr(solvers, "AUTO_MIN_PAIRS", 64 * 8)
    monkeypatch.setattr(solvers, "AUTO_MIN_TOKENS_PER_EXPERT", 8)
    got = solve_optimum(scores, 2, cap)
    assert got.solver == "expert_ssp"
    np.testing.assert_array_equal(got.int_cost, solve_optimum(scores, 2, cap, "ortools").int_cost)
    cap8 = expert_capacity(1.0, 8, 64, 8)
    assert solve_optimum(scores, 8, cap8).solver == "ortools"  # k = 8: OR-tools wins at every measured size
    monkeypatch.setattr(solvers, "AUTO_MAX_EXPERTS", 4)
    assert solve_optimum(scores, 2, cap).solver == "ortools"  # too many experts for the expert graph
    monkeypatch.setattr(solvers, "AUTO_MAX_EXPERTS", 64)
    monkeypatch.setattr(solvers, "AUTO_MIN_TOKENS_PER_EXPERT", 16)
    assert solve_optimum(scores, 2, cap).solver == "ortools"  # too few tokens per expert (64 < 16 * 8)


def test_exact_router_accepts_the_new_solvers():
    from moeroute import route

    logits = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(0))
    a = route(logits, "exact:solver=expert_ssp", k=2)
    b = route(logits, "exact:solver=ortools", k=2)
    assert a.meta["objective"] == pytest.approx(b.meta["objective"], abs=1e-9)

"""`base` (BASE layers): preconditions, a hand-worked case, exact = brute force = scipy LSA, and the ε-auction
against a plain loop and against its ε bound."""

from __future__ import annotations

import itertools

import pytest
import torch

from moeroute import MoeRouteError, route
from moeroute.core.problem import make_input
from moeroute.routers.base import balanced_auction, balanced_exact
from moeroute.solvers import solve_optimum

from conftest import seeded_logits
from reference.assignment import balanced_lsa
from reference.loops import auction_loop


def probs(rows):
    return torch.log(torch.tensor([rows], dtype=torch.float32))


def test_preconditions():
    logits = seeded_logits(1, 8, 4, seed=0)
    with pytest.raises(MoeRouteError, match="k=1"):
        route(logits, "base", k=2)
    with pytest.raises(MoeRouteError, match="not divisible"):
        route(seeded_logits(1, 6, 4), "base", k=1)
    with pytest.raises(MoeRouteError, match="cf < 1"):
        route(logits, "base", k=1, capacity_factor=0.5)
    with pytest.raises(MoeRouteError):
        route(logits, "base:eps=0", k=1)


@pytest.mark.parametrize("solver", ["exact", "auction"])
def test_golden(solver):
    # E=2, 2 tokens each. Expert 0 should take the tokens where p0 - p1 is largest: 0.8, 0.6 (t0, t1) beat 0.4, 0.2.
    logits = probs([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    r = route(logits, f"base:solver={solver},eps=0.001", k=1)
    assert r.experts[0, :, 0].tolist() == [0, 0, 1, 1]
    # Without a capacity factor the problem has no capacity, and BASE still gives every expert exactly T/E.
    free = route(logits, "base", k=1, capacity_factor=None)
    assert free.capacity is None and free.load().tolist() == [[2, 2]]


@pytest.mark.parametrize("solver", ["exact", "auction"])
def test_golden_three_experts(solver):
    # T/E = 2. t0, t1, t2 all prefer e0; one must leave. Moving t0 costs 0.7, t1 0.5 (to e1), t2 only 0.3 (to e2).
    # Then e2 = {t4, t2} is full, so t5 takes e1 (0.4) beside t3. Total 0.8+0.7+0.3+0.8+0.8+0.4 = 3.8; the next
    # best (t1 -> e1, t5 -> e2) gives 3.6.
    rows = [[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.6, 0.1, 0.3], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.2, 0.4, 0.4]]
    r = route(probs(rows), f"base:solver={solver},eps=0.001", k=1)
    assert r.experts[0, :, 0].tolist() == [0, 0, 2, 1, 2, 1]
    assert brute_force(torch.tensor(rows))[0] == pytest.approx(3.8)


def brute_force(scores):
    """Best balanced assignment of one small group by enumerating every one."""
    t, e = scores.shape
    per = t // e
    best, arg = -1.0, None
    for owners in itertools.product(range(e), repeat=t):
        if all(owners.count(j) == per for j in range(e)):
            value = sum(float(scores[i, owners[i]]) for i in range(t))
            if value > best:
                best, arg = value, owners
    return best, arg


@pytest.mark.parametrize("seed", range(6))
def test_exact_is_optimal(seed):
    t, e = [(4, 2), (6, 3), (6, 2), (4, 4), (8, 2), (6, 3)][seed]
    x = make_input(seeded_logits(2, t, e, seed=seed, skew=1.0), 1, 1.0)
    owner = balanced_exact(x.scores)
    assert torch.equal(torch.bincount(owner[0], minlength=e), torch.full((e,), t // e))
    for g in range(2):
        best, _ = brute_force(x.scores[g])
        assert float(x.scores[g].gather(1, owner[g : g + 1].T).sum()) == pytest.approx(best, abs=1e-5)


def test_flow_and_lsa_agree():
    x = make_input(seeded_logits(2, 64, 8, seed=7, skew=1.0), 1, 1.0)
    a, b = balanced_exact(x.scores), balanced_lsa(x.scores)
    value = lambda owner: float(x.scores.gather(2, owner.unsqueeze(2)).sum())
    assert value(a) == pytest.approx(value(b), abs=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_auction_matches_loop_reference(seed):
    t, e = [(4, 2), (6, 3), (9, 3), (8, 4), (12, 4), (10, 2)][seed]
    eps = [0.02, 0.1, 0.005][seed % 3]
    x = make_input(seeded_logits(1, t, e, seed=seed, skew=1.0), 1, 1.0)
    owner, rounds, fallback = balanced_auction(x.scores, eps, 10_000)
    assert fallback == 0
    assert owner[0].tolist() == auction_loop(x.scores[0].double().tolist(), eps)


def test_auction_gap_within_its_eps_bound():
    x = make_input(seeded_logits(2, 128, 8, seed=11, skew=1.0), 1, 1.0)
    optimum = solve_optimum(x.scores, 1, 16).objective
    span = (x.scores.amax(dim=(1, 2)) - x.scores.amin(dim=(1, 2))).double().numpy()
    for eps in (0.02, 0.002):
        owner, _, fallback = balanced_auction(x.scores, eps, 10_000)
        assert fallback == 0
        assert torch.equal(torch.bincount(owner[0], minlength=8), torch.full((8,), 16))
        value = x.scores.double().gather(2, owner.unsqueeze(2)).sum(dim=(1, 2)).numpy()
        gap = optimum - value
        assert (gap >= -1e-5).all() and (gap <= 128 * eps * span + 1e-5).all()


def test_auction_round_cap_falls_back_to_a_balanced_assignment():
    r = route(seeded_logits(1, 32, 4, seed=2, skew=2.0), "base:solver=auction,max_rounds=1", k=1)
    assert r.meta["auction_rounds"] == 1 and r.meta["auction_fallback"] > 0
    assert r.load().tolist() == [[8, 8, 8, 8]]

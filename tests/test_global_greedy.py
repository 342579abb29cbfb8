"""`global_greedy`: a hand-worked case, the parallel rounds equal to the sequential loop (ties included), and the
½-approximation bound."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeroute import route
from moeroute.core.problem import make_input
from moeroute.routers.global_greedy import greedy_assignment
from moeroute.solvers import solve_optimum

from conftest import seeded_logits
from reference.loops import global_greedy_loop


def test_golden():
    # C = 1. Pairs by score: (t1,e0) .6 taken; (t0,e0) .5 and (t2,e0) .45 find e0 full; (t2,e1) .45 taken (ties go
    # to the lower t*E+e, so (t2,e0) came first); (t0,e1) .4 e1 full; (t1,e1) t1 full; ...; (t0,e2) .1 taken.
    logits = torch.log(torch.tensor([[[0.5, 0.4, 0.1], [0.6, 0.3, 0.1], [0.45, 0.45, 0.1]]]))
    r = route(logits, "global_greedy", k=1)
    assert r.experts[0, :, 0].tolist() == [2, 0, 1]


def test_golden_k2_rank_order():
    # No capacity: greedy gives every token its top-2, ranked by score.
    logits = torch.log(torch.tensor([[[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]]))
    assert route(logits, "global_greedy", k=2, capacity_factor=None).experts[0].tolist() == [[1, 2], [0, 2]]


def check_against_loop(logits, k, cf):
    x = make_input(logits, k, cf)
    mask, rounds = greedy_assignment(x.scores, k, x.capacity)
    for g in range(x.groups):
        want = global_greedy_loop(x.scores[g].tolist(), k, x.capacity)
        got = [set(torch.nonzero(mask[g, t]).flatten().tolist()) for t in range(x.tokens)]
        assert got == want
    return rounds


@pytest.mark.parametrize("seed", range(8))
def test_matches_loop_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    t = int(torch.randint(2, 30, (1,), generator=gen))
    e = int(torch.randint(2, 7, (1,), generator=gen))
    k = int(torch.randint(1, min(e, 3) + 1, (1,), generator=gen))
    check_against_loop(seeded_logits(2, t, e, seed=seed, skew=1.5), k, [0.5, 1.0, 1.5, None][seed % 4])


@settings(max_examples=40, deadline=None)
@given(
    t=st.integers(1, 9), e=st.integers(1, 5), k=st.integers(1, 3),
    cf=st.sampled_from([0.5, 0.8, 1.0, 1.3, None]), data=st.data(),
)
def test_matches_loop_reference_with_ties(t, e, k, cf, data):
    """Integer logits in 0..2 make many exactly equal scores, within and across tokens."""
    k = min(k, e)
    values = data.draw(st.lists(st.integers(0, 2), min_size=t * e, max_size=t * e))
    check_against_loop(torch.tensor(values, dtype=torch.float32).view(1, t, e), k, cf)


def test_half_approximation_and_rounds():
    logits = seeded_logits(2, 256, 16, seed=3, skew=1.0)
    x = make_input(logits, 2, 1.0)
    rounds = check_against_loop(logits, 2, 1.0)
    assert rounds < 40  # a few tens of rounds, not one per pair
    best = solve_optimum(x.scores, 2, x.capacity, objective="maxweight").objective.sum()
    got = float(route(logits, "global_greedy", k=2).weights.double().sum())
    assert 0.5 * best <= got <= best + 1e-5
    assert got >= 0.97 * best  # a ½-approximation in theory; within about 1% of the optimum on these logits in practice

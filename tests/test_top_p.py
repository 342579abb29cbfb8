"""`top_p` (dynamic k, Huang et al. 2024): hand-worked sets, the loop reference, the cap, capacity and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeroute import MoeRouteError, evaluate, route
from moeroute.core.problem import make_input

from reference.production import top_p_loop


def probs(rows):
    return torch.log(torch.tensor([rows], dtype=torch.float32))


def test_golden_sets():
    logits = probs([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25], [0.9, 0.05, 0.03, 0.02]])
    r = route(logits, "top_p:p=0.7", k=2, capacity_factor=None)
    # 0.5 -> 0.8 > 0.7: two experts; 0.25, 0.5, 0.75 > 0.7: three; 0.9 > 0.7: one.
    assert [[e for e in row if e >= 0] for row in r.indices()[0].tolist()] == [[0, 1], [0, 1, 2], [0]]
    capped = route(logits, "top_p:p=0.7,max_k=2", k=2, capacity_factor=None)
    assert capped.slots == 2 and capped.indices()[0, 1].tolist() == [0, 1]
    m = evaluate(logits, "top_p:p=0.7", k=2, capacity_factor=None, repeats=1, optimum=False)
    assert m.mean_experts_per_token == pytest.approx(2.0) and m.over_k_rate == pytest.approx(1 / 3)


@settings(max_examples=60, deadline=None)
@given(t=st.integers(1, 16), e=st.integers(1, 8), p=st.floats(0.05, 1.0), max_k=st.sampled_from([None, 1, 2, 3]),
       seed=st.integers(0, 10_000))
def test_matches_the_loop(t, e, p, max_k, seed):
    max_k = None if max_k is None else min(max_k, e)
    logits = torch.randn(1, t, e, generator=torch.Generator().manual_seed(seed)) * 2
    x = make_input(logits, 1, None)
    spec = f"top_p:p={p}" + (f",max_k={max_k}" if max_k else "")
    r = route(logits, spec, k=1, capacity_factor=None)
    expected = top_p_loop(x.scores[0].numpy(), p, max_k)
    assert [[v for v in row if v >= 0] for row in r.indices()[0].tolist()] == expected


def test_capacity_drops_the_overflow_of_the_selection():
    logits = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(1)) + torch.tensor([2.0] + [0.0] * 7)
    free = route(logits, "top_p:p=0.6", k=2, capacity_factor=None)
    capped = route(logits, "top_p:p=0.6", k=2, capacity_factor=1.0)
    assert torch.equal(free.selected, capped.selected)
    assert int(capped.load().max()) <= capped.capacity < int(free.load().max())
    m = evaluate(logits, "top_p:p=0.6", k=2, capacity_factor=1.0, repeats=1)
    assert m.selection_drop_rate > 0 and m.mean_experts_per_token < float(free.experts_per_token().double().mean())


def test_weights_are_the_kept_probabilities():
    logits = torch.randn(1, 8, 4, generator=torch.Generator().manual_seed(2))
    r = route(logits, "top_p:p=0.5", k=1, capacity_factor=None)
    x = make_input(logits, 1, None)
    want = torch.where(r.experts >= 0, torch.gather(x.scores, 2, r.experts.clamp(min=0)), torch.zeros(1))
    assert np.allclose(r.weights.numpy(), want.numpy())


@pytest.mark.parametrize("spec, message", [("top_p:p=0", "p must be in"), ("top_p:p=1.5", "p must be in"),
                                           ("top_p:max_k=9", "exceeds the E=4"), ("top_p:score=sigmoid", "no score=")])
def test_refusals(spec, message):
    with pytest.raises(MoeRouteError, match=message):
        route(torch.randn(1, 8, 4), spec, k=1)

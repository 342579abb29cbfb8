"""Combine-weight operators (softtopk, sparsemax, entmax15) and the SoftTopk temperature schedule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeroute import SoftTopkSchedule, route
from moeroute.core.errors import MoeRouteError
from moeroute.weights import CommonOptions, combine_weights, weight_ops
from moeroute.weights.sparse import entmax15, sparsemax

from conftest import seeded_logits


def threshold_reference(z: list[float], alpha: float) -> list[float]:
    """The definition by bisection on ``tau``: ``p_i = max((alpha-1) z_i - tau, 0)^(1/(alpha-1))``, ``sum p = 1``
    (sparsemax: alpha = 2; 1.5-entmax: alpha = 1.5). ``-inf`` entries get 0."""
    finite = [x for x in z if x != -math.inf]
    if not finite:
        return [0.0] * len(z)
    a = alpha - 1
    scaled = [a * x for x in finite]
    lo, hi = max(scaled) - 1.0, max(scaled)

    def mass(tau: float) -> float:
        return sum(max(x - tau, 0.0) ** (1 / a) for x in scaled)

    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass(mid) > 1 else (lo, mid)
    tau = (lo + hi) / 2
    return [0.0 if x == -math.inf else max(a * x - tau, 0.0) ** (1 / a) for x in z]


def test_softtopk_golden() -> None:
    scores = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]])
    experts = torch.tensor([[[0, 2], [1, -1]]])
    w = combine_weights(scores, experts, CommonOptions(weights="softtopk", temperature=2.5))
    assert torch.allclose(w, torch.tensor([[[0.5, 0.5], [0.6, 0.0]]]))
    # t = None is the evaluation value 1: plain scores.
    w1 = combine_weights(scores, experts, CommonOptions(weights="softtopk"))
    assert torch.allclose(w1, torch.tensor([[[0.5, 0.2], [0.6, 0.0]]]))


def test_operators_are_registered_and_usable_from_any_router() -> None:
    assert {"softmax", "softtopk", "sparsemax", "entmax15"} <= set(weight_ops())
    logits = seeded_logits(2, 32, 8, seed=4)
    for router in ("gshard", "maxscore"):
        for op in ("softtopk", "sparsemax", "entmax15"):
            r = route(logits, f"{router}:weights={op},temperature=3", k=2, capacity_factor=1.0)
            assert r.weights.shape == r.experts.shape
            assert bool((r.weights[r.experts < 0] == 0).all())


@settings(max_examples=60, deadline=None)
@given(
    z=st.lists(st.one_of(st.floats(-50, 50), st.just(-math.inf)), min_size=1, max_size=6),
    op=st.sampled_from(["sparsemax", "entmax15"]),
)
def test_sparse_maps_match_their_definition(z: list[float], op: str) -> None:
    fn, alpha = (sparsemax, 2.0) if op == "sparsemax" else (entmax15, 1.5)
    got = fn(torch.tensor([z], dtype=torch.float64))[0]
    want = torch.tensor(threshold_reference(z, alpha), dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-7)
    total = float(got.sum())
    assert total == pytest.approx(1.0 if any(x != -math.inf for x in z) else 0.0, abs=1e-9)
    assert bool((got >= 0).all())


def test_sparse_maps_are_sparse_and_keep_the_order() -> None:
    z = torch.tensor([[3.0, 0.0, -1.0], [0.2, 0.1, 0.0]])
    sm, em = sparsemax(z), entmax15(z)
    assert sm[0].tolist() == [1.0, 0.0, 0.0] and em[0].tolist() == [1.0, 0.0, 0.0]  # a large gap: one expert
    assert bool((sm[1] > 0).all()) and bool((em[1] > 0).all())  # close logits: all kept
    assert bool((sm[1][:-1] >= sm[1][1:]).all()) and bool((em[1][:-1] >= em[1][1:]).all())


@pytest.mark.parametrize("op", ["softtopk", "sparsemax", "entmax15"])
def test_weights_are_differentiable_even_at_extreme_logits(op: str) -> None:
    logits = (torch.randint(-1, 2, (1, 16, 6), generator=torch.Generator().manual_seed(0)).float() * 50)
    logits = (logits + torch.randn(1, 16, 6, generator=torch.Generator().manual_seed(1))).requires_grad_()
    r = route(logits, f"maxscore:weights={op}", k=3, capacity_factor=1.0, check=False)
    (r.weights * torch.arange(1, 4)).sum().backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    assert float(logits.grad.abs().sum()) > 0


def test_sparse_weights_sum_to_one_over_the_assigned_experts() -> None:
    logits = seeded_logits(2, 32, 8, seed=5, skew=1.0)
    for op in ("sparsemax", "entmax15"):
        r = route(logits, f"maxscore:stage2=iterative,weights={op}", k=3, capacity_factor=1.25)
        has = r.assigned().any(dim=2)
        assert torch.allclose(r.weights.sum(dim=2)[has], torch.ones(int(has.sum())), atol=1e-5)


# ---------------------------------------------------------------- schedule


def test_schedule_follows_the_paper() -> None:
    s = SoftTopkSchedule()
    assert s.temperature == 4.0
    s.step(15000)
    assert s.temperature == pytest.approx(2.5)
    s.step(15000)
    assert s.temperature == 1.0
    s.step(5000)
    assert s.temperature == 1.0  # holds at the end value
    assert SoftTopkSchedule.paper("iterative").temperature_at(20000) == pytest.approx(4 - 3 * 20000 / 40000)
    s.step(-35000)
    s.eval()
    assert s.temperature == 1.0  # evaluation uses t = 1 whatever the step
    s.train()
    assert s.temperature == 4.0


def test_schedule_state_round_trip() -> None:
    s = SoftTopkSchedule(start=3.0, end=1.5, steps=100)
    s.step(40)
    t = SoftTopkSchedule()
    t.load_state_dict(s.state_dict())
    assert t.step_count == 40 and t.temperature == pytest.approx(s.temperature) == pytest.approx(3.0 - 1.5 * 0.4)


def test_schedule_rejects_bad_settings() -> None:
    with pytest.raises(MoeRouteError):
        SoftTopkSchedule(steps=0)
    with pytest.raises(MoeRouteError):
        SoftTopkSchedule(start=-1.0)

"""`MaxScoreRouter`: the module a user drops into an MoE layer."""

from __future__ import annotations

import io

import pytest
import torch

from moeroute import MaxScoreRouter, SoftTopkSchedule
from moeroute.core.errors import MoeRouteError


def make(**kw) -> MaxScoreRouter:
    torch.manual_seed(0)
    return MaxScoreRouter(32, 8, **kw)


def test_forward_shapes_and_capacity() -> None:
    m = make(k=2, capacity_factor=1.0)
    out = m(torch.randn(3, 64, 32))
    assert out.experts.shape == (3, 64, 2) and out.weights.shape == (3, 64, 2) and out.logits.shape == (3, 64, 8)
    out.routing.check()
    assert out.routing.groups == 3 and out.routing.capacity == 16  # each sequence is a group
    assert bool((out.experts >= 0).all())  # cf = 1: every slot filled


@pytest.mark.parametrize("weights", ["softtopk", "softmax", "sparsemax", "entmax15"])
def test_gradients_reach_the_gate(weights: str) -> None:
    m = make(weights=weights)
    hidden = torch.randn(2, 32, 32, requires_grad=True)
    out = m(hidden)
    (out.weights * torch.randn_like(out.weights)).sum().backward()
    grad = m.gate.weight.grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    assert hidden.grad is not None


def test_softtopk_weights_follow_the_schedule() -> None:
    m = make(schedule=SoftTopkSchedule(start=4.0, end=1.0, steps=100))
    hidden = torch.randn(1, 32, 32)
    out = m(hidden)
    probs = out.logits.softmax(-1)
    picked = torch.gather(probs, -1, out.experts)
    assert torch.allclose(out.weights, picked * torch.tensor([1.0, 4.0]))
    assert m.step(50) == pytest.approx(2.5)
    assert torch.allclose(m(hidden).weights, picked * torch.tensor([1.0, 2.5]))
    m.eval()
    assert torch.allclose(m(hidden).weights, picked)  # t = 1 at evaluation


def test_schedule_state_goes_into_the_state_dict() -> None:
    m = make()
    m.step(12000)
    buffer = io.BytesIO()
    torch.save(m.state_dict(), buffer)
    assert int(m.state_dict()["schedule_step"]) == 12000
    fresh = make()
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    assert fresh.schedule.step_count == 12000 and fresh.temperature == pytest.approx(m.temperature)
    assert torch.equal(fresh.gate.weight, m.gate.weight)


def test_other_routers_and_flat_input() -> None:
    m = make(router="gshard", k=2, group_size=16)
    out = m(torch.randn(48, 32))
    assert out.routing.groups == 3 and out.experts.shape == (48, 2)
    with pytest.raises(MoeRouteError):
        MaxScoreRouter(8, 4, k=5)

"""Metrics worked out by hand on a tiny routing."""

import math

import pytest
import torch

from moeroute import Routing, evaluate, route
from moeroute.core.metrics import routing_metrics
from moeroute.core.problem import make_input

GOLDEN = torch.tensor([[3.0, 2.0, 0.0], [3.0, 0.0, 2.0], [4.0, 2.0, 0.0], [2.0, 3.0, 0.0]])


def test_gshard_golden_metrics():
    # Routing (see test_gshard): [[0,1],[0,2],[-1,-1],[1,-1]], C = 2, k = 2, T = 4, E = 3.
    x = make_input(GOLDEN, 2, 0.75)
    r = route(GOLDEN, "gshard", k=2, capacity_factor=0.75)
    m = routing_metrics(x, r)
    assert m.slot_drop_rate == pytest.approx(1 - 5 / 8)
    assert m.token_drop_rate == pytest.approx(1 / 4)
    assert m.second_choice_drop_rate == pytest.approx(2 / 4)
    assert m.mean_load_ratio == pytest.approx(5 / (3 * 2))
    assert m.max_load_ratio == pytest.approx(1.0)
    assert m.sorted_load_ratios == pytest.approx([2 / 2, 2 / 2, 1 / 2])  # loads e0=2, e1=2, e2=1
    s = x.scores[0]
    assert m.objective == pytest.approx(float(s[0, 0] + s[0, 1] + s[1, 0] + s[1, 2] + s[3, 1]))
    assert m.rank1_affinity == pytest.approx(float(s[0, 0] + s[1, 0] + s[3, 1]) / 3)
    assert m.rank2_affinity == pytest.approx(float(s[0, 1] + s[1, 2]) / 2)
    assert m.padding_factor == pytest.approx(2 / (2 * 4 / 3))


def test_dropless_padding_factor():
    m = evaluate(GOLDEN, "dropless", k=2, capacity_factor=None, repeats=1)
    assert m.capacity is None
    assert m.slot_drop_rate == 0.0
    assert m.padding_factor == pytest.approx(4 / (8 / 3))
    assert m.max_load_ratio == pytest.approx(m.padding_factor)


def test_over_k_tokens_do_not_hide_drops():
    x = make_input(GOLDEN, 1, 1.0)
    ex = torch.tensor([[[0, 1, 2], [-1, -1, -1], [0, -1, -1], [1, -1, -1]]])
    r = Routing(ex, None, 3, 1, x.capacity, "hand", max_per_token=None)
    m = routing_metrics(x, r)
    assert m.slot_drop_rate == pytest.approx(1 / 4)
    assert m.over_k_rate == pytest.approx(1 / 4)
    assert m.second_choice_drop_rate is None


def test_evaluate_accepts_routings_and_lists():
    r = route(GOLDEN, "gshard", k=2, capacity_factor=0.75)
    m = evaluate(GOLDEN, r, k=2, capacity_factor=0.75)
    assert m.latency_ms is None and m.router == "gshard"
    ms = evaluate(GOLDEN, ["gshard", "dropless"], k=2, capacity_factor=0.75, repeats=2)
    assert [x.router for x in ms] == ["gshard", "dropless"]
    assert all(x.latency_ms > 0 and 1 <= x.latency_calls <= 2 for x in ms)
    assert ms[0].gap == pytest.approx((ms[0].optimum - ms[0].objective) / ms[0].optimum)
    assert not math.isnan(ms[0].maxweight_optimum)

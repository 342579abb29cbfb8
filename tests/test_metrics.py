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
    # Affinity over every token, a dropped slot counting 0 (token 2 lost both, token 3 its second) ...
    assert m.rank1_affinity == pytest.approx(float(s[0, 0] + s[1, 0] + s[3, 1]) / 4)
    assert m.rank2_affinity == pytest.approx(float(s[0, 1] + s[1, 2]) / 4)
    # ... and over the kept slots only.
    assert m.rank1_affinity_kept == pytest.approx(float(s[0, 0] + s[1, 0] + s[3, 1]) / 3)
    assert m.rank2_affinity_kept == pytest.approx(float(s[0, 1] + s[1, 2]) / 2)
    assert m.padding_factor == pytest.approx(2 / (2 * 4 / 3))


def test_affinity_agrees_with_the_training_log():
    """The sweep's rank-r affinity and the training log's ``rank{1,2}_affinity_with_drops`` are one definition."""
    from moeroute.train.moe import MoEStats
    from moeroute.train.step_stats import layer_values

    logits = torch.randn(2, 32, 8, generator=torch.Generator().manual_seed(0)) * 2
    for k, router in ((2, "gshard"), (2, "expert_choice"), (1, "gshard")):
        x = make_input(logits, k, 0.75)
        r = route(logits, router, k=k, capacity_factor=0.75)
        m = routing_metrics(x, r)
        assert m.slot_drop_rate > 0  # drops, so "over all tokens" and "over kept slots" differ
        values = layer_values(MoEStats(x, x, r))
        assert m.rank1_affinity == pytest.approx(values["rank1_affinity_with_drops"])
        assert m.rank1_affinity < m.rank1_affinity_kept
        if k == 1:
            assert m.rank2_affinity is None and m.rank2_affinity_kept is None
        else:
            assert m.rank2_affinity == pytest.approx(values["rank2_affinity_with_drops"])


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


def test_balance_of_the_selection_golden():
    # gshard's selection before capacity: loads e0=4, e1=3, e2=1 (mean 8/3); kept loads 2, 2, 1.
    x = make_input(GOLDEN, 2, 0.75)
    r = route(GOLDEN, "gshard", k=2, capacity_factor=0.75)
    m = routing_metrics(x, r, ep_ranks=3)
    assert m.max_vio == pytest.approx(4 / (8 / 3) - 1)
    assert m.max_vio_global == pytest.approx(m.max_vio)
    # Gini: pairwise |differences| of (4, 3, 1) summed over ordered pairs = 2 * (1 + 3 + 2) = 12; / (2 * 9 * 8/3).
    assert m.gini == pytest.approx(12 / (2 * 9 * 8 / 3))
    assert m.selection_drop_rate == pytest.approx(3 / 8)
    assert m.mean_experts_per_token == pytest.approx(5 / 4)
    assert m.ep_rank_tokens == [2, 2, 1] and m.ep_max_over_mean == pytest.approx(2 / (5 / 3))
    assert m.score == "softmax"


def test_balanced_and_collapsed_loads():
    from moeroute.core.metrics import gini, max_violation

    assert float(max_violation(torch.tensor([3, 3, 3]))) == 0.0 and float(gini(torch.tensor([3, 3, 3]))) == 0.0
    assert float(max_violation(torch.tensor([6, 0, 0]))) == pytest.approx(2.0)
    assert float(gini(torch.tensor([6, 0, 0]))) == pytest.approx(1 - 1 / 3)
    assert float(max_violation(torch.tensor([0, 0]))) == 0.0


def test_ep_view_sums_groups_per_rank_and_refuses_bad_rank_counts():
    logits = torch.randn(4, 32, 8, generator=torch.Generator().manual_seed(0))
    m = evaluate(logits, "dropless", k=2, capacity_factor=None, repeats=1, ep_ranks=2, optimum=False)
    r = route(logits, "dropless", k=2, capacity_factor=None)
    load = r.load().sum(dim=0)
    assert m.ep_rank_tokens == [int(load[:4].sum()), int(load[4:].sum())]
    assert sum(m.ep_rank_tokens) == 4 * 32 * 2
    from moeroute import MoeRouteError

    with pytest.raises(MoeRouteError, match="divide the E=8"):
        evaluate(logits, "dropless", k=2, ep_ranks=3)


def test_a_routing_measured_on_other_scores_gets_its_own_optimum():
    from moeroute.evaluation import measure, optima

    logits = torch.randn(2, 32, 8, generator=torch.Generator().manual_seed(1))
    x = make_input(logits, 2, 1.0)
    mcmf, mw = optima(x)  # softmax optima, as a sweep solves them
    m = measure(x, "exact:score=sigmoid", mcmf, mw, repeats=1)
    assert m.score == "sigmoid" and m.gap == pytest.approx(0.0, abs=1e-7)
    assert m.optimum != pytest.approx(float(mcmf.objective.sum()))

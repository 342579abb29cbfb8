"""The shared top-k selection (score functions, pre_softmax, scaling, group-limited routing) and the capacity order,
in gshard / dropless / reroute: hand-worked cases, refusals, the weights rule, and the vectorised code against the
plain-loop reference of the rules (tests/reference/production.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeroute import MoeRouteError, evaluate, route
from moeroute.core.problem import make_input

from reference.production import capacity_loop, megatron_probs, score_fn, topk_loop

# 4 tokens, 3 experts, k = 2, cf = 0.75 -> C = 2 (see test_gshard). Preferences: t0: 0,1  t1: 0,2  t2: 0,1  t3: 1,0
GOLDEN = torch.tensor([[3.0, 2.0, 0.0], [3.0, 0.0, 2.0], [4.0, 2.0, 0.0], [2.0, 3.0, 0.0]])


def test_order_token_goes_token_by_token():
    # Token-major first come: t0 -> 0, 1; t1 -> 0 (e0 full), 2; t2 -> 0 dropped, 1 (e1 full); t3 -> 1 dropped, 0
    # dropped. Rank-major (the default) gives [[0,1],[0,2],[-1,-1],[1,-1]] instead.
    r = route(GOLDEN, "gshard:order=token", k=2, capacity_factor=0.75)
    assert r.indices()[0].tolist() == [[0, 1], [0, 2], [-1, 1], [-1, -1]]
    assert route(GOLDEN, "gshard:order=rank", k=2, capacity_factor=0.75).indices()[0].tolist() == [
        [0, 1], [0, 2], [-1, -1], [1, -1]]


def test_selection_before_capacity_is_reported():
    r = route(GOLDEN, "gshard", k=2, capacity_factor=0.75)
    assert r.selected[0].tolist() == [[0, 1], [0, 2], [0, 1], [1, 0]]
    assert r.selected_load()[0].tolist() == [4, 3, 1]


def test_pre_softmax_false_takes_the_softmax_over_the_chosen_logits():
    r = route(GOLDEN, "dropless:pre_softmax=false", k=2, capacity_factor=None)
    chosen = torch.tensor([[3.0, 2.0], [3.0, 2.0], [4.0, 2.0], [3.0, 2.0]]).softmax(-1)
    assert torch.allclose(r.weights[0], chosen)
    assert torch.allclose(r.weights.sum(-1), torch.ones(1, 4))


def test_sigmoid_probs_normalised_for_k_above_one_and_scaled():
    s = torch.sigmoid(GOLDEN)
    r1 = route(GOLDEN, "dropless:score=sigmoid", k=1, capacity_factor=None)
    assert torch.equal(r1.weights[0, :, 0], s.max(-1).values)
    r2 = route(GOLDEN, "dropless:score=sigmoid,scaling=2.5", k=2, capacity_factor=None)
    top = s.topk(2, dim=-1).values
    assert torch.allclose(r2.weights[0], 2.5 * top / top.sum(-1, keepdim=True))
    assert r2.score == "sigmoid"


def test_sqrt_softplus_scores():
    x = make_input(GOLDEN, 1, None, score="sqrt_softplus")
    assert torch.allclose(x.scores, torch.log1p(torch.exp(GOLDEN)).sqrt())


def test_group_limited_chooses_inside_the_best_groups():
    # 4 experts in 2 groups {0,1} and {2,3}, k = 2, one group per token: a group's score is the sum of its top-2.
    logits = torch.tensor([[[5.0, -5.0, 3.0, 3.0]]])  # group 0: 5-5, group 1: 3+3 (in sigmoid scores: 1.0 vs 1.9)
    plain = route(logits, "dropless:score=sigmoid", k=2, capacity_factor=None)
    limited = route(logits, "dropless:score=sigmoid,groups=2,group_topk=1", k=2, capacity_factor=None)
    assert plain.indices()[0, 0].tolist() == [0, 2]
    assert sorted(limited.indices()[0, 0].tolist()) == [2, 3]


@pytest.mark.parametrize("spec, k, e, message", [
    ("gshard:groups=3,group_topk=1", 2, 8, "does not divide"),
    ("gshard:groups=4,group_topk=2", 1, 8, "k >= group_topk"),
    ("gshard:groups=4,group_topk=1", 3, 8, "exceeds the 2 experts"),
    ("gshard:groups=4", 2, 8, "both groups= and group_topk="),
    ("gshard:groups=2,group_topk=3", 2, 8, "exceeds groups"),
    ("gshard:score=sigmoid,pre_softmax=false", 2, 8, "pre_softmax=false applies to score=softmax"),
    ("gshard:scaling=0", 2, 8, "scaling must be > 0"),
    ("gshard:score=tanh", 2, 8, "must be one of"),
    ("sinkhorn:score=sigmoid", 2, 8, "takes no score= option"),
])
def test_bad_options_are_refused_in_one_line(spec, k, e, message):
    with pytest.raises(MoeRouteError, match=message):
        route(torch.randn(1, 8, e), spec, k=k)


def test_default_weights_are_the_softmax_operators_and_other_operators_still_apply():
    logits = torch.randn(3, 32, 8, generator=torch.Generator().manual_seed(3))
    x = make_input(logits, 2, 1.0)
    from moeroute.core.routing import gather_scores

    r = route(logits, "gshard", k=2, capacity_factor=1.0)
    assert torch.equal(r.weights, gather_scores(x.scores, r.experts))
    soft = route(logits, "gshard:weights=softtopk,temperature=2", k=2, capacity_factor=1.0)
    assert torch.equal(soft.weights[..., 1], 2 * gather_scores(x.scores, r.experts)[..., 1])
    sig = route(logits, "gshard:score=sigmoid,renormalize=true", k=2, capacity_factor=1.0)
    kept = sig.weights.sum(-1)
    assert torch.allclose(kept[sig.experts_per_token() > 0], torch.ones(1))


def test_weights_stay_differentiable():
    logits = torch.randn(2, 16, 8, requires_grad=True)
    for spec in ("gshard", "gshard:pre_softmax=false", "dropless:score=sigmoid,scaling=2", "qb", "aux_free"):
        r = route(logits, spec, k=2, capacity_factor=1.0)
        (grad,) = torch.autograd.grad(r.weights.sum(), logits)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, spec


def test_each_router_is_compared_with_the_optimum_of_its_own_scores():
    logits = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(4))
    soft, sig, exact_sig = evaluate(logits, ["gshard", "gshard:score=sigmoid", "exact:score=sigmoid"], k=2,
                                    capacity_factor=1.0, repeats=1)
    assert soft.score == "softmax" and sig.score == "sigmoid"
    assert sig.optimum == pytest.approx(exact_sig.objective) and exact_sig.gap == pytest.approx(0.0, abs=1e-7)
    assert soft.optimum != pytest.approx(sig.optimum)
    # Sigmoid and softmax are monotone per token: without a bias or groups they select the same experts.
    r1 = route(logits, "gshard", k=2)
    r2 = route(logits, "gshard:score=sigmoid", k=2)
    assert torch.equal(r1.experts, r2.experts)


@settings(max_examples=80, deadline=None)
@given(
    g=st.integers(1, 2), t=st.integers(1, 20), groups=st.sampled_from([None, 1, 2, 4]), k=st.integers(1, 4),
    cf=st.sampled_from([None, 0.5, 1.0, 1.3]), score=st.sampled_from(["softmax", "sigmoid", "sqrt_softplus"]),
    pre_softmax=st.booleans(), scaling=st.sampled_from([None, 2.5]), policy=st.sampled_from(["position", "probs"]),
    order=st.sampled_from(["rank", "token"]), seed=st.integers(0, 10_000),
)
def test_vectorised_topk_matches_the_loop(g, t, groups, k, cf, score, pre_softmax, scaling, policy, order, seed):
    e = 8
    pre_softmax = pre_softmax or score != "softmax"
    group_topk = None if groups is None else max(1, min(groups, k // 2 or 1))
    if groups is not None and k > group_topk * (e // groups):
        k = group_topk * (e // groups)
    opts = [f"score={score}", f"pre_softmax={pre_softmax}", f"drop_policy={policy}", f"order={order}"]
    opts += [f"scaling={scaling}"] if scaling else []
    opts += [f"groups={groups},group_topk={group_topk}"] if groups else []
    logits = torch.randn(g, t, e, generator=torch.Generator().manual_seed(seed)) * 3
    x = make_input(logits, k, cf, score=score)
    r = route(logits, "gshard:" + ",".join(opts), k=k, capacity_factor=cf)
    for gi in range(g):
        scores = x.scores[gi].numpy()
        select = scores if (score != "softmax" or pre_softmax) else logits[gi].numpy()
        prefs = topk_loop(select, k, groups, group_topk)
        probs = [megatron_probs(logits[gi, ti].numpy(), scores[ti], p, score, pre_softmax, scaling)
                 for ti, p in enumerate(prefs)]
        expected = capacity_loop(prefs, probs, e, x.capacity, policy, order)
        assert r.indices()[gi].tolist() == expected
        want = np.where(np.array(expected) >= 0, np.array(probs), 0.0)
        assert np.allclose(r.weights[gi].numpy(), want, rtol=1e-5, atol=1e-6)
    assert math.isfinite(float(r.weights.sum()))


def test_reroute_stays_inside_the_chosen_groups():
    logits = torch.randn(2, 32, 8, generator=torch.Generator().manual_seed(5))
    r = route(logits, "reroute:score=sigmoid,groups=4,group_topk=1", k=2, capacity_factor=1.0)
    limited = route(logits, "dropless:score=sigmoid,groups=4,group_topk=1", k=2, capacity_factor=None)
    group_of = lambda ex: torch.where(ex >= 0, ex // 2, -1)  # noqa: E731
    allowed = group_of(limited.experts)[..., :1]  # each token's one chosen group
    held = group_of(r.experts)
    assert bool(((held == allowed) | (held < 0)).all())


def test_score_functions_of_the_loop_agree_with_the_framework():
    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(6)) * 4
    for score in ("softmax", "sigmoid", "sqrt_softplus"):
        assert np.allclose(make_input(logits, 1, None, score=score).scores[0].numpy(),
                           score_fn(logits.numpy(), score), rtol=1e-5, atol=1e-7)

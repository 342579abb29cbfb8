"""`sinkhorn` (S-BASE): a hand-solved 2x2 plan, POT agreement, a plain-loop reference, and the k >= 2 trap."""

from __future__ import annotations

import math

import pytest
import torch

from moeroute import MoeRouteError, evaluate, route
from moeroute.core.problem import make_input
from moeroute.routers._capacity import expert_load
from moeroute.routers.sinkhorn import SinkhornOptions, balanced_plan

from conftest import seeded_logits
from reference.loops import gshard_loop, sinkhorn_loop


def test_golden_two_tokens_both_prefer_expert_0():
    # Kernel [[e^2, 1], [e, 1]], marginals 1/2: the balanced plan is [[x, 1/2 - x], [1/2 - x, x]] with
    # (x / (1/2 - x))^2 = K00 K11 / (K01 K10) = e^2 / e = e, so x = sqrt(e) / (2 (1 + sqrt(e))) = 0.3112 > 1/4.
    logits = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]])
    plan = balanced_plan(logits, SinkhornOptions(iters=200, tol=0)).log_plan.exp()[0]
    x = math.sqrt(math.e) / (2 * (1 + math.sqrt(math.e)))
    assert torch.allclose(plan, torch.tensor([[x, 0.5 - x], [0.5 - x, x]]), atol=1e-6)
    # So token 1 goes to expert 1, where GShard (C = 1) would have dropped it.
    assert route(logits, "sinkhorn", k=1).experts[0, :, 0].tolist() == [0, 1]
    assert route(logits, "gshard", k=1).experts[0, :, 0].tolist() == [0, -1]
    # Combine weights are the original softmax scores, not the plan.
    r = route(logits, "sinkhorn", k=1)
    assert torch.allclose(r.weights[0, :, 0], torch.tensor([logits[0, 0].softmax(0)[0], logits[0, 1].softmax(0)[1]]))


def test_golden_circulant_three_experts():
    # A circulant kernel has equal row sums and equal column sums, so it is balanced already: the plan is
    # exp(L) / (T * row sum) and each token keeps its own ranking: top-2 = (t, t+1 mod 3).
    logits = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0]]])
    plan = balanced_plan(logits, SinkhornOptions(iters=10, tol=0)).log_plan.exp()[0]
    assert torch.allclose(plan, logits[0].exp() / (3 * (math.e**2 + math.e + 1)), atol=1e-7)
    assert route(logits, "sinkhorn", k=2).experts[0].tolist() == [[0, 1], [1, 2], [2, 0]]


def test_marginals_match_pot():
    ot = pytest.importorskip("ot")
    for seed, eps in [(0, 1.0), (1, 0.5), (2, 0.2)]:
        logits = seeded_logits(2, 24, 5, seed=seed, skew=1.0)
        plan = balanced_plan(logits, SinkhornOptions(iters=2000, tol=1e-6, eps=eps)).log_plan.exp().double()
        t, e = 24, 5
        for g in range(2):
            ref = ot.sinkhorn(
                torch.full((t,), 1.0 / t, dtype=torch.float64), torch.full((e,), 1.0 / e, dtype=torch.float64),
                -logits[g].double(), reg=eps, numItermax=20000, stopThr=1e-11,
            )
            assert torch.allclose(plan[g].sum(1), ref.sum(1), atol=1e-7)
            assert torch.allclose(plan[g].sum(0), ref.sum(0), atol=1e-7)
            assert torch.allclose(plan[g], ref, rtol=1e-3, atol=1e-7)


def test_iteration_cap_and_tolerance():
    logits = seeded_logits(1, 64, 8, seed=4, skew=2.0)
    capped = route(logits, "sinkhorn:iters=3,tol=0", k=2)
    assert capped.meta["sinkhorn_iterations"] == 3
    early = route(logits, "sinkhorn:iters=1000,tol=1e-3", k=2)
    assert early.meta["sinkhorn_iterations"] < 1000 and early.meta["sinkhorn_error"] <= 1e-3 / 64
    for bad in ("iters=0", "tol=-1", "eps=0"):
        with pytest.raises(MoeRouteError):
            route(logits, f"sinkhorn:{bad}", k=2)


def test_extreme_logits_stay_finite():
    logits = torch.tensor([[[50.0, -50.0, 0.0], [50.0, -50.0, 0.0], [-50.0, 50.0, 50.0]]])
    r = route(logits, "sinkhorn:eps=0.05", k=2, capacity_factor=1.0)
    assert r.experts.min() >= -1 and torch.isfinite(r.weights).all()


@pytest.mark.parametrize("seed", range(8))
def test_matches_loop_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    t = int(torch.randint(3, 10, (1,), generator=gen))
    e = int(torch.randint(2, 5, (1,), generator=gen))
    k = int(torch.randint(1, e + 1, (1,), generator=gen))
    eps = [1.0, 0.5][seed % 2]
    logits = seeded_logits(1, t, e, seed=seed, skew=1.0)
    x = make_input(logits, k, 1.0)
    got = route(logits, f"sinkhorn:iters=500,tol=0,eps={eps}", k=k)
    plan = sinkhorn_loop(logits[0].tolist(), eps, 500)
    prefs = [sorted(range(e), key=lambda j: (-plan[i][j], j))[:k] for i in range(t)]
    assert got.experts[0].tolist() == gshard_loop(prefs, e, x.capacity)


def test_k2_trap_second_choices_are_not_balanced():
    """The plan balances one unit of mass per token: its top-1 gets more balanced with iterations (and smaller
    eps); its second choices do not, and the objective gap stays flat however long Sinkhorn runs. Measured here
    (G=2, T=128, E=16, skewed, eps=0.1): rank-0 max/mean load 1.125, rank-1 1.81 after 30 iterations and 1.75
    after 200; gap 0.0551 at both 5 and 100 iterations (eps=1). At G=4, T=256 (workload skew, seed 1): rank-0
    1.12, rank-1 1.53; gap 0.0406 at 5, 20 and 100 iterations."""
    logits = seeded_logits(2, 128, 16, seed=1, skew=1.0)

    def imbalance(iters):
        top = torch.topk(balanced_plan(logits, SinkhornOptions(iters=iters, tol=0, eps=0.1)).log_plan, 2, -1).indices
        out = []
        for r in range(2):
            load = expert_load(top[:, :, r], 16).float()
            out.append(float((load.max(1).values / load.mean(1)).mean()))
        return out

    (_, r1_short), (r0_long, r1_long) = imbalance(30), imbalance(200)
    assert r0_long < 1.3 and r1_long > r0_long + 0.3
    assert abs(r1_long - r1_short) < 0.1
    gaps = [m.gap for m in evaluate(logits, [f"sinkhorn:iters={i},tol=0" for i in (5, 100)], k=2, capacity_factor=1.0, repeats=1)]
    assert gaps[0] > 0.01 and abs(gaps[1] - gaps[0]) < 0.1 * gaps[0]

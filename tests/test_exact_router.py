"""The exact router: the MCMF optimum as a routing, with zero gap, and every solver behind it."""

import numpy as np
import pytest
import torch

from moeroute import evaluate, route

TRAP_LOGITS = torch.log(torch.tensor([[0.48, 0.48, 0.04], [0.48, 0.48, 0.04], [0.05, 0.05, 0.90]]))


@pytest.mark.parametrize("solver", ["ortools", "spfa", "network_simplex", "max_flow_min_cost"])
def test_exact_router_fills_every_slot_at_maximum_score(solver):
    r = route(TRAP_LOGITS, f"exact:solver={solver}", k=2, capacity_factor=1.0)
    assert r.assigned().all()
    assert r.load().tolist() == [[2, 2, 2]]
    # t2 holds e2 as its first rank (0.90) and one of e0/e1 second.
    assert r.indices()[0, 2, 0] == 2
    assert r.meta["objective"] == pytest.approx(2.43, abs=1e-6)


def test_maxweight_objective_leaves_the_trap_slot_empty():
    r = route(TRAP_LOGITS, "exact:objective=maxweight", k=2, capacity_factor=1.0)
    assert int(r.assigned().sum()) == 5
    assert r.meta["objective"] == pytest.approx(2.82, abs=1e-6)


def test_exact_has_zero_gap_and_beats_gshard():
    logits = torch.randn(4, 64, 8, generator=torch.Generator().manual_seed(0)) + torch.linspace(0, 2, 8)
    gshard, exact = evaluate(logits, ["gshard", "exact"], k=2, capacity_factor=1.0, repeats=1)
    assert exact.gap == pytest.approx(0.0, abs=1e-12)
    assert exact.slot_drop_rate == 0.0 and exact.mean_load_ratio == 1.0
    assert gshard.objective <= exact.maxweight_optimum + 1e-9
    assert gshard.gap > 0 and gshard.slot_drop_rate > 0


def test_without_capacity_the_optimum_is_top_k():
    logits = torch.randn(2, 16, 6, generator=torch.Generator().manual_seed(1))
    exact = route(logits, "exact", k=2, capacity_factor=None)
    dropless = route(logits, "dropless", k=2, capacity_factor=None)
    assert torch.equal(exact.dispatch_mask(), dropless.dispatch_mask())
    assert np.allclose(exact.weights.numpy(), dropless.weights.numpy())

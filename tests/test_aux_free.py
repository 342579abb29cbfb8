"""`aux_free` (DeepSeek-V3 bias balancing): hand-worked bias updates, a plain-loop reference, and its effect."""

from __future__ import annotations

import pytest
import torch

from moeroute import MoeRouteError, evaluate, route
from moeroute.core.problem import make_input

from conftest import seeded_logits
from reference.loops import aux_free_loop, gshard_loop


def two_groups():
    # Group 0: both tokens prefer e0 (0.6 vs 0.4). Group 1: both prefer e0 slightly (0.55 vs 0.45).
    return torch.log(torch.tensor([[[0.6, 0.4], [0.6, 0.4]], [[0.55, 0.45], [0.55, 0.45]]]))


def test_golden_bias_updates():
    # Group 0, bias [0, 0]: both take e0; loads [2, 0], mean 1 -> bias += 0.2 * sign([1-2, 1-0]) = [-0.2, +0.2].
    # Group 1: biased scores [0.35, 0.65]: both take e1; loads [0, 2] -> bias back to [0, 0].
    r = route(two_groups(), "aux_free:rate=0.2", k=1, capacity_factor=None)
    assert r.experts[:, :, 0].tolist() == [[0, 0], [1, 1]]
    assert torch.allclose(r.meta["bias"], torch.tensor([[0.0, 0.0], [-0.2, 0.2]]))
    assert torch.allclose(r.meta["final_bias"], torch.zeros(2))
    # Combine weights are the original scores, not the biased ones.
    assert torch.allclose(r.weights[1, :, 0], torch.tensor([0.45, 0.45]))


def test_golden_with_capacity():
    # C = ceil(1 * 1 * 2 / 2) = 1: the second token of each group finds its expert full.
    r = route(two_groups(), "aux_free:rate=0.2", k=1, capacity_factor=1.0)
    assert r.experts[:, :, 0].tolist() == [[0, -1], [1, -1]]


def test_rate_zero_is_gshard_and_bad_rate_refused():
    logits = seeded_logits(3, 32, 4, seed=2, skew=1.0)
    assert torch.equal(route(logits, "aux_free:rate=0", k=2).experts, route(logits, "gshard", k=2).experts)
    with pytest.raises(MoeRouteError):
        route(logits, "aux_free:rate=-1", k=2)


@pytest.mark.parametrize("seed", range(8))
def test_matches_loop_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    t = int(torch.randint(2, 12, (1,), generator=gen))
    e = int(torch.randint(2, 6, (1,), generator=gen))
    k = int(torch.randint(1, min(e, 3) + 1, (1,), generator=gen))
    cf = [0.75, 1.0, 1.5, None][seed % 4]
    rate = [0.25, 0.0625, 0.5][seed % 3]
    logits = seeded_logits(4, t, e, seed=seed, skew=1.0)
    x = make_input(logits, k, cf)
    r = route(logits, f"aux_free:rate={rate}", k=k, capacity_factor=cf)
    prefs, seen = aux_free_loop(x.scores.numpy(), k, rate)
    for g in range(4):
        assert r.experts[g].tolist() == gshard_loop(prefs[g], e, x.capacity)
        assert torch.equal(r.meta["bias"][g], torch.from_numpy(seen[g]))


def test_balances_a_skewed_stream():
    # A stream of 32 groups with the same hot experts: the bias learns to push tokens away from them.
    logits = seeded_logits(32, 64, 8, seed=4, skew=1.5)
    g, a = evaluate(logits, ["gshard", "aux_free:rate=0.01"], k=2, capacity_factor=1.0, repeats=1, optimum=False)
    assert a.slot_drop_rate < g.slot_drop_rate - 0.05
    hot = torch.argmax(logits.softmax(-1).mean(dim=(0, 1)))
    assert route(logits, "aux_free:rate=0.01", k=2).meta["final_bias"][hot] < 0

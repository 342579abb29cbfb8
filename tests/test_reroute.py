"""`reroute`: hand-worked cases and the vectorised rounds against a plain loop of their definition."""

from __future__ import annotations

import pytest
import torch

from moeroute import MoeRouteError, evaluate, route
from moeroute.core.problem import make_input

from conftest import seeded_logits
from reference.loops import gshard_loop, reroute_loop


def probs(rows):
    """Logits whose softmax is exactly the given probability rows (one group)."""
    return torch.log(torch.tensor([rows], dtype=torch.float32))


def test_golden_k1_everyone_wants_expert_0():
    # C = ceil(1 * 1 * 3 / 3) = 1. GShard: t0 takes e0; t1, t2 drop. Round 1: both propose e1 (best with room),
    # t1 comes first and gets it. Round 2: only e2 has room; t2 takes it.
    logits = probs([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.7, 0.2, 0.1]])
    r = route(logits, "reroute", k=1, capacity_factor=1.0)
    assert r.experts[0, :, 0].tolist() == [0, 1, 2]
    assert r.meta["rounds"] == 2
    # variant=second: a first choice never reroutes.
    r2 = route(logits, "reroute:variant=second", k=1, capacity_factor=1.0)
    assert r2.experts[0, :, 0].tolist() == [0, -1, -1]


def test_golden_k2_variants():
    # C = ceil(1 * 2 * 3 / 3) = 2. Everyone prefers (e0, e1): t0 and t1 fill both, t2 loses both slots.
    logits = probs([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.4, 0.35, 0.25]])
    assert route(logits, "gshard", k=2).experts[0].tolist() == [[0, 1], [0, 1], [-1, -1]]
    # all: t2's slot 0 takes e2 (the only expert with room); its slot 1 has no second candidate. Round 2: e2 has
    # room but t2 holds it, so nothing more is placed.
    r = route(logits, "reroute", k=2)
    assert r.experts[0].tolist() == [[0, 1], [0, 1], [2, -1]]
    assert r.meta["rounds"] == 1
    # second: slot 0 stays dropped, slot 1 takes e2.
    assert route(logits, "reroute:variant=second", k=2).experts[0].tolist() == [[0, 1], [0, 1], [-1, 2]]


def test_max_rounds_zero_is_gshard():
    logits = seeded_logits(2, 24, 4, seed=3, skew=1.5)
    a = route(logits, "reroute:max_rounds=0", k=2)
    b = route(logits, "gshard", k=2)
    assert torch.equal(a.experts, b.experts)
    with pytest.raises(MoeRouteError):
        route(logits, "reroute:max_rounds=-1", k=2)


def test_no_capacity_means_top_k():
    logits = seeded_logits(1, 10, 5, seed=1)
    assert torch.equal(route(logits, "reroute", k=2, capacity_factor=None).experts, torch.topk(logits.softmax(-1), 2).indices)


@pytest.mark.parametrize("variant", ["all", "second"])
@pytest.mark.parametrize("seed", range(12))
def test_matches_loop_reference(variant, seed):
    gen = torch.Generator().manual_seed(seed)
    t = int(torch.randint(3, 14, (1,), generator=gen))
    e = int(torch.randint(2, 6, (1,), generator=gen))
    k = int(torch.randint(1, min(e, 3) + 1, (1,), generator=gen))
    cf = [0.5, 0.75, 1.0, 1.25][seed % 4]
    logits = seeded_logits(2, t, e, seed=seed, skew=2.0)
    x = make_input(logits, k, cf)
    got = route(logits, f"reroute:variant={variant}", k=k, capacity_factor=cf)
    for g in range(2):
        scores = x.scores[g].tolist()
        prefs = [sorted(range(e), key=lambda j: (-scores[i][j], j))[:k] for i in range(t)]
        slots = gshard_loop(prefs, e, x.capacity)
        fill = [[variant == "all" or r > 0 for r in range(k)] for _ in range(t)]
        want, rounds = reroute_loop(scores, slots, x.capacity, fill, e - 1 if variant == "second" else None)
        assert got.experts[g].tolist() == want


def test_places_what_gshard_drops():
    logits = seeded_logits(4, 128, 8, seed=5, skew=1.0)
    g, r, s = evaluate(logits, ["gshard", "reroute", "reroute:variant=second"], k=2, capacity_factor=1.0, repeats=1, optimum=False)
    assert g.slot_drop_rate > 0.1
    assert r.slot_drop_rate < 0.01  # every slot finds room except a token whose only expert with room it holds
    assert r.slot_drop_rate <= s.slot_drop_rate < g.slot_drop_rate
    assert s.second_choice_drop_rate < g.second_choice_drop_rate
    # variant=second keeps GShard's first choices, drops included.
    first = route(logits, "gshard", k=2).experts[:, :, 0]
    assert torch.equal(route(logits, "reroute:variant=second", k=2).experts[:, :, 0], first)

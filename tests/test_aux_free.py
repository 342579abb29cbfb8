"""`aux_free` (DeepSeek-V3 bias balancing): hand-worked bias updates, a plain-loop reference, and its effect."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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


# ---------------------------------------------------------------- mode=megatron (Megatron-Core's expert bias)


@settings(max_examples=40, deadline=None)
@given(t=st.integers(2, 24), e=st.integers(2, 8), k=st.integers(1, 3), cf=st.sampled_from([0.5, 0.75, 1.0, None]),
       every=st.integers(0, 3), policy=st.sampled_from(["probs", "position"]), seed=st.integers(0, 10_000))
def test_megatron_mode_matches_the_stream_loop(t, e, k, cf, every, policy, seed):
    from reference.production import expert_bias_stream_loop

    k = min(k, e)
    logits = seeded_logits(6, t, e, seed=seed, skew=1.0)
    x = make_input(logits, k, cf)
    r = route(logits, f"aux_free:mode=megatron,score=sigmoid,rate=0.05,update_every={every},drop_policy={policy}",
              k=k, capacity_factor=cf)
    slots, bias = expert_bias_stream_loop(logits.numpy(), k, x.capacity, 0.05, every, policy)
    assert r.indices().tolist() == slots
    assert torch.equal(r.state["bias"], torch.from_numpy(bias))


def test_megatron_mode_counts_loads_after_dropping():
    # Every token wants e0 first; C = 1. Selected loads [2, 2] would leave the bias alone; kept loads [1, 1] too,
    # but with k = 1 the kept load is [1, 0] against a selection of [2, 0]: both push e1 up, e0 down.
    logits = torch.tensor([[[2.0, 0.0], [2.0, 0.0]]])
    kept = route(logits, "aux_free:mode=megatron,score=sigmoid,rate=0.1", k=1, capacity_factor=0.5)
    assert kept.indices()[0].tolist() == [[0], [-1]]
    assert torch.allclose(kept.state["bias"], torch.tensor([-0.1, 0.1]))
    assert kept.state["tokens"].tolist() == [0.0, 0.0] and int(kept.state["pending"]) == 0


def test_state_carries_across_calls_and_update_every_zero_never_updates():
    logits = seeded_logits(6, 16, 4, seed=3, skew=1.0)
    spec = "aux_free:mode=megatron,score=sigmoid,rate=0.02,update_every=4"
    whole = route(logits, spec, k=2, capacity_factor=1.0)
    first = route(logits[:3], spec, k=2, capacity_factor=1.0)
    rest = route(logits[3:], spec, k=2, capacity_factor=1.0, state=first.state)
    assert torch.equal(torch.cat([first.experts, rest.experts]), whole.experts)
    assert torch.equal(rest.state["bias"], whole.state["bias"]) and torch.equal(rest.state["tokens"], whole.state["tokens"])
    frozen = route(logits, "aux_free:mode=megatron,score=sigmoid,rate=0.02,update_every=0", k=2, capacity_factor=1.0,
                   state={"bias": torch.full((4,), 0.5)})
    assert torch.equal(frozen.state["bias"], torch.full((4,), 0.5))
    assert float(frozen.state["tokens"].sum()) == float(frozen.assigned().sum())


def test_step_update_sums_loads_over_ranks_then_moves_the_bias():
    from moeroute.routers import bind_router
    from moeroute.routers.aux_free import updated_bias

    bound = bind_router("aux_free:mode=megatron,score=sigmoid,rate=0.1,update_every=0")
    state = {"bias": torch.zeros(3), "tokens": torch.tensor([3.0, 1.0, 2.0]), "pending": torch.tensor(2)}
    other_rank = torch.tensor([0.0, 4.0, 2.0])  # the loads the other data-parallel rank counted
    calls = []

    def all_reduce(t, op):
        calls.append(op)
        return t + other_rank if op == "sum" else t

    new = bound.entry.step_update(state, all_reduce, bound.options)
    assert calls == ["sum"]
    # Summed loads [3, 5, 4], mean 4: e0 under (+), e1 over (-), e2 at the mean (sign 0).
    assert torch.allclose(new["bias"], torch.tensor([0.1, -0.1, 0.0]))
    assert torch.equal(new["tokens"], torch.zeros(3))
    assert torch.equal(updated_bias(torch.tensor([3.0, 5.0, 4.0]), torch.zeros(3), 0.1), new["bias"])


def test_megatron_mode_refuses_softmax():
    with pytest.raises(MoeRouteError, match="score=sigmoid or sqrt_softplus"):
        route(seeded_logits(1, 8, 4), "aux_free:mode=megatron", k=2)

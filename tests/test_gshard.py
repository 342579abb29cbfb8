"""GShard top-k with capacity and dropless top-k: golden cases worked out by hand, and a plain-loop reference."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeroute import route
from moeroute.core.problem import make_input

from reference.loops import gshard_loop

# 4 tokens, 3 experts, k = 2, cf = 0.75 -> C = ceil(0.75 * 2 * 4 / 3) = 2.
# Preferences (best first): t0: 0,1   t1: 0,2   t2: 0,1   t3: 1,0
GOLDEN = torch.tensor([[3.0, 2.0, 0.0], [3.0, 0.0, 2.0], [4.0, 2.0, 0.0], [2.0, 3.0, 0.0]])


def test_position_policy_golden():
    # First choices in token order: t0->0, t1->0 (expert 0 now full), t2->0 dropped, t3->1.
    # Then second choices: t0->1 (expert 1 now full), t1->2, t2->1 dropped, t3->0 dropped.
    r = route(GOLDEN, "gshard", k=2, capacity_factor=0.75)
    assert r.capacity == 2
    assert r.indices()[0].tolist() == [[0, 1], [0, 2], [-1, -1], [1, -1]]


def test_probs_policy_golden():
    # Expert 0 is wanted by t0, t1, t2 (first) and t3 (second); highest scores: t2 (logit 4), then t0 and t1 tie
    # (same score) and the earlier proposal, t0, wins. Expert 1: t3 (0.705), t0 (0.245) beat t2 (0.117).
    r = route(GOLDEN, "gshard:drop_policy=probs", k=2, capacity_factor=0.75)
    assert r.indices()[0].tolist() == [[0, 1], [-1, 2], [0, -1], [1, -1]]


def test_weights_are_scores_and_renormalise_on_request():
    scores = GOLDEN.softmax(-1)
    r = route(GOLDEN, "gshard", k=2, capacity_factor=0.75)
    assert torch.allclose(r.weights[0, 0], scores[0, [0, 1]])
    assert r.weights[0, 2].tolist() == [0.0, 0.0]
    assert r.weights[0, 3, 1] == 0.0
    rn = route(GOLDEN, "gshard:renormalize=true", k=2, capacity_factor=0.75)
    assert torch.allclose(rn.weights[0, 0].sum(), torch.tensor(1.0))
    assert torch.allclose(rn.weights[0, 3], torch.tensor([1.0, 0.0]))
    assert torch.allclose(route(GOLDEN, "gshard", k=2, capacity_factor=0.75, renormalize=True).weights, rn.weights)


def test_dropless_gives_every_token_its_top_k():
    r = route(GOLDEN, "dropless", k=2, capacity_factor=0.75)
    assert r.indices()[0].tolist() == [[0, 1], [0, 2], [0, 1], [1, 0]]
    assert r.capacity is None
    assert r.load()[0].tolist() == [4, 3, 1]


def gshard_probs_loop(group: torch.Tensor, prefs: list, capacity: int) -> list:
    """Drop policy ``probs``, one expert at a time: the ``capacity`` best-scoring proposals win (earlier
    proposals, rank-major in token order, win ties)."""
    t_count, e_count = group.shape
    k = len(prefs[0])
    slots = [[-1] * k for _ in range(t_count)]
    for e in range(e_count):
        wanting = [(r, t) for r in range(k) for t in range(t_count) if prefs[t][r] == e]
        wanting.sort(key=lambda rt: -float(group[rt[1], e]))  # stable sort keeps proposal order on ties
        for r, t in wanting[:capacity]:
            slots[t][r] = e
    return slots


def gshard_reference(scores: torch.Tensor, k: int, capacity: int, policy: str) -> list:
    """The definition per group (preferences from the same topk the router uses, so ties agree)."""
    out = []
    for group in scores:
        prefs = torch.topk(group, k, dim=-1).indices.tolist()
        if policy == "position":
            out.append(gshard_loop(prefs, group.shape[1], capacity))
        else:
            out.append(gshard_probs_loop(group, prefs, capacity))
    return out


@settings(max_examples=60, deadline=None)
@given(
    g=st.integers(1, 3), t=st.integers(1, 24), e=st.integers(1, 8), k=st.integers(1, 4),
    cf=st.sampled_from([0.25, 0.5, 1.0, 1.3]), seed=st.integers(0, 10_000),
    policy=st.sampled_from(["position", "probs"]), ties=st.booleans(),
)
def test_vectorised_gshard_matches_the_loop(g, t, e, k, cf, seed, policy, ties):
    k = min(k, e)
    logits = torch.randn(g, t, e, generator=torch.Generator().manual_seed(seed))
    if ties:
        logits = logits.round()
    x = make_input(logits, k, cf)
    r = route(logits, f"gshard:drop_policy={policy}", k=k, capacity_factor=cf)
    assert r.indices().tolist() == gshard_reference(x.scores, k, x.capacity, policy)
    assert int(r.load().max()) <= x.capacity == math.ceil(round(cf * k * t / e, 9))

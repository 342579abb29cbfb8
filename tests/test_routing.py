"""The Routing type, the capacity queue and the invariant checks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeroute import Routing, RoutingInvariantError
from moeroute.core.routing import slots_from_mask
from moeroute.routers._capacity import expert_load, keep_within_capacity, queue_positions


def make(experts, e=3, k=2, cap=2, per_token=2):
    ex = torch.tensor([experts])
    return Routing(ex, torch.ones_like(ex, dtype=torch.float), e, k, cap, "t", max_per_token=per_token)


def test_dispatch_mask_indices_and_load():
    r = make([[0, 1], [2, -1], [-1, -1]])
    assert r.dispatch_mask()[0].tolist() == [[True, True, False], [False, False, True], [False, False, False]]
    assert r.load().tolist() == [[1, 1, 1]]
    assert r.experts_per_token().tolist() == [[2, 1, 0]]
    assert r.combine_weights()[0].tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    r.check()


@pytest.mark.parametrize(
    "experts,kwargs,message",
    [
        ([[1, 1], [0, -1]], {}, "twice"),
        ([[0, 1], [0, 2], [0, -1]], {}, "capacity"),
        ([[3, -1]], {}, "out of range"),
        ([[0, 1, 2]], {"k": 2, "cap": 3}, "more than 2"),
    ],
)
def test_check_catches_broken_routings(experts, kwargs, message):
    with pytest.raises(RoutingInvariantError, match=message):
        make(experts, **kwargs).check()


def test_a_token_may_hold_more_than_k_when_allowed():
    make([[0, 1, 2]], cap=3, per_token=None).check()


def test_slots_from_mask_orders_by_score():
    mask = torch.tensor([[[True, False, True], [False, False, False]]])
    scores = torch.tensor([[[0.1, 0.5, 0.4], [0.3, 0.3, 0.4]]])
    assert slots_from_mask(mask, scores, 2).tolist() == [[[2, 0], [-1, -1]]]


def loop_positions(proposals, priority):
    out = []
    for g, row in enumerate(proposals):
        order = sorted(range(len(row)), key=lambda i: (-priority[g][i], i)) if priority else range(len(row))
        seen, pos = {}, [0] * len(row)
        for i in order:
            pos[i] = seen.get(row[i], 0)
            seen[row[i]] = pos[i] + 1
        out.append(pos)
    return out


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 3).flatmap(
        lambda g: st.integers(1, 30).flatmap(
            lambda p: st.lists(st.lists(st.integers(-1, 4), min_size=p, max_size=p), min_size=g, max_size=g)
        )
    ),
    use_priority=st.booleans(),
    seed=st.integers(0, 99),
)
def test_queue_positions_match_a_loop(rows, use_priority, seed):
    proposals = torch.tensor(rows)
    priority = None
    if use_priority:
        priority = torch.randint(0, 4, proposals.shape, generator=torch.Generator().manual_seed(seed)).float()
    got = queue_positions(proposals, 5, priority)
    expected = loop_positions(rows, priority.tolist() if priority is not None else None)
    real = proposals >= 0
    assert got[real].tolist() == torch.tensor(expected)[real].tolist()
    keep = keep_within_capacity(proposals, 2, 5, priority, used=torch.ones(len(rows), 5, dtype=torch.long))
    assert keep.tolist() == (real & (torch.tensor(expected) + 1 < 2)).tolist()
    assert expert_load(torch.where(keep, proposals, -1), 5).max() <= 1

"""The CPU (numpy) queue of ``queue_positions`` is bit-identical to the torch one and to a plain loop."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeroute.routers._capacity import _queue_positions_torch, queue_positions


def loop_positions(proposals: torch.Tensor, num_experts: int, priority=None) -> torch.Tensor:
    """Plain reference: walk each group's proposals in queue order and count per expert."""
    out = torch.zeros_like(proposals)
    for g in range(proposals.shape[0]):
        idx = list(range(proposals.shape[1]))
        if priority is not None:
            idx.sort(key=lambda i: -float(priority[g, i]))  # Python's sort is stable: ties keep proposal order
        seen: dict[int, int] = {}
        for i in idx:
            e = int(proposals[g, i])
            e = num_experts if e < 0 else e
            out[g, i] = seen.get(e, 0)
            seen[e] = seen.get(e, 0) + 1
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 60), st.integers(1, 9), st.booleans(), st.integers(0, 2**31 - 1))
def test_numpy_queue_matches_torch_and_loop(groups, proposals_n, experts, with_priority, seed):
    gen = torch.Generator().manual_seed(seed)
    proposals = torch.randint(-1, experts, (groups, proposals_n), generator=gen)
    # Few distinct priorities, so that ties (kept in proposal order) are common.
    priority = torch.randint(0, 3, (groups, proposals_n), generator=gen).float() if with_priority else None
    got = queue_positions(proposals, experts, priority)
    assert torch.equal(got, _queue_positions_torch(proposals, experts, priority))
    assert torch.equal(got, loop_positions(proposals, experts, priority))

"""Bit-for-bit against Megatron-Core (the ``crosscheck`` extra): top-k with every score function option and token
dropping, the aux-loss-free expert-bias stream, QB where the library has it; and what Megatron's own rules do that
moeroute's do not (the ``position`` policy, ``sinkhorn`` on large logits). Skipped, with the reason, without the
extra."""

from __future__ import annotations

import pytest
import torch
from crosscheck_data import logit_sets, require

require("megatron.core")

from moeroute import route  # noqa: E402
from moeroute.crosscheck import COMPARISONS, run_comparison  # noqa: E402
from moeroute.crosscheck import libraries as lib  # noqa: E402

MEGATRON = [c for c in COMPARISONS if c.library == "megatron.core" and c.equivalent]
DATA = logit_sets()


@pytest.mark.parametrize("comparison", MEGATRON, ids=[c.name for c in MEGATRON])
def test_identical_to_megatron(comparison):
    why = comparison.unavailable()
    if why:
        pytest.skip(why)
    for name, logits in DATA.items():
        for k in (1, 2, 4, 8):
            for cf in (0.5, 1.0, 1.25, 2.0) if comparison.capacity else (None,):
                out = run_comparison(comparison, logits, k, cf)
                if out.skipped:
                    continue
                where = f"{name} k={k} cf={cf}"
                assert out.identical == out.compared, f"{where}: groups {out.differing} differ"
                assert out.max_weight_diff == 0.0, where
                assert out.state_identical in (None, True), f"{where}: final state differs"


def test_megatron_position_policy_keeps_a_topk_tie_subset_not_the_first_comers():
    # Every one of 70 tokens wants expert 0 (k = 1) and C = 61: moeroute keeps tokens 0..60, Megatron's position
    # policy keeps whichever 61 rows torch.topk returns among equal ones of the 0/1 routing map.
    logits = torch.zeros(1, 70, 2)
    logits[..., 0] = 5.0
    cf = 61 / 35  # C = ceil(70 * 1 / 2 * cf) = 61
    maps, _ = lib.megatron_topk(logits, 1, cf, pre_softmax=True, drop_policy="position")
    kept = maps[0, :, 0].nonzero().squeeze(1).tolist()
    ours = route(logits, "gshard", k=1, capacity_factor=cf).experts[0, :, 0]
    assert len(kept) == 61 and (ours >= 0).nonzero().squeeze(1).tolist() == list(range(61))
    assert kept != list(range(61))


def test_capacity_above_the_group_size_does_not_crash_megatron_any_more():
    # megatron-core 0.13.1 raised when C > T (torch.topk over too few rows); 0.16.1 skips the dropping.
    logits = torch.randn(1, 8, 4)
    maps, _ = lib.megatron_topk(logits, 2, 4.0, drop_policy="probs")
    assert torch.equal(maps, route(logits, "gshard:drop_policy=probs", k=2, capacity_factor=4.0).dispatch_mask())


def test_megatron_sinkhorn_overflows_where_the_router_does_not():
    # exp(L) overflows float32 above ~88: Megatron's sinkhorn divides inf by inf. moeroute's is in the log domain.
    mu = lib.megatron_utils()
    logits = torch.randn(32, 4) + torch.tensor([90.0, 0.0, 0.0, 0.0])
    assert torch.isnan(mu.sinkhorn(logits.clone())).any()
    r = route(logits, "sinkhorn", k=1, capacity_factor=1.0)
    assert bool((r.experts >= 0).any()) and torch.isfinite(r.weights).all()

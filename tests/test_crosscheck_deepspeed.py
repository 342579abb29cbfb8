"""Against DeepSpeed's gating functions (the ``crosscheck`` extra, ``DS_BUILD_OPS=0 DS_ACCELERATOR=cpu``):
``order=token`` is ``topkgating``'s position order, ``order=rank`` is ``top2gating``'s, ``drop_policy=probs`` is
``topkgating``'s probs; ``top1gating`` keeps a ``torch.topk`` tie subset (no equivalent). Weights agree to the
float rounding of a sum taken in another order (DeepSpeed sums over all experts, moeroute over the kept slots)."""

from __future__ import annotations

import pytest
import torch
from crosscheck_data import logit_sets, require

require("deepspeed")

from moeroute import route  # noqa: E402
from moeroute.crosscheck import COMPARISONS, run_comparison  # noqa: E402
from moeroute.crosscheck import libraries as lib  # noqa: E402

DEEPSPEED = [c for c in COMPARISONS if c.library == "deepspeed" and c.equivalent]
DATA = logit_sets()


@pytest.mark.parametrize("comparison", DEEPSPEED, ids=[c.name for c in DEEPSPEED])
def test_identical_to_deepspeed(comparison):
    for name, logits in DATA.items():
        for k in (1, 2, 4, 8):
            for cf in (0.5, 1.0, 1.25, 2.0):
                out = run_comparison(comparison, logits, k, cf)
                if out.skipped:
                    continue
                assert out.identical == out.compared, f"{name} k={k} cf={cf}: groups {out.differing} differ"
                assert out.max_weight_diff <= 3e-7, f"{name} k={k} cf={cf}"


def test_top1gating_without_rts_is_not_first_come():
    logits = torch.zeros(1, 70, 2)
    logits[..., 0] = 5.0
    maps, _ = lib.deepspeed_gate(logits, 1, 61 / 35, "top1")
    kept = maps[0, :, 0].nonzero().squeeze(1).tolist()
    assert len(kept) == 61 and kept != list(range(61))
    assert (route(logits, "gshard", k=1, capacity_factor=61 / 35).experts[0, :, 0] >= 0).sum() == 61

"""``dropless`` against the Hugging Face routers (tiny random configs, offline, the gate set to the identity):
Mixtral and Qwen3-MoE (normalised top-k: ``renormalize=true``), Qwen2-MoE and OLMoE (plain top-k), DeepSeek-V3
(sigmoid, group-limited, normalised, scaled by 2.5; with an expert bias: ``aux_free:mode=megatron``)."""

from __future__ import annotations

import pytest
from crosscheck_data import logit_sets, require

require("transformers")

from moeroute.crosscheck import COMPARISONS, run_comparison  # noqa: E402

HF = [c for c in COMPARISONS if c.library == "transformers"]
DATA = logit_sets()


@pytest.mark.parametrize("comparison", HF, ids=[c.name for c in HF])
def test_identical_to_hugging_face(comparison):
    why = comparison.unavailable()
    if why:
        pytest.skip(why)
    for name, logits in DATA.items():
        for k in (1, 2, 4, 8):
            out = run_comparison(comparison, logits, k, None)
            if out.skipped:
                continue
            assert out.identical == out.compared, f"{name} k={k}: groups {out.differing} differ"
            # DeepSeek-V3 sums its top-k unsorted (sorted=False): the normalisation may round differently.
            assert out.max_weight_diff <= 3e-7, f"{name} k={k}"

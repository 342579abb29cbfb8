"""Logits the cross-check tests route both ways: random (Megatron's force_biased benchmark logits) and captured
from the trained model (data/captured), a few small groups each."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from moeroute.workloads import workload_logits

CAPTURED = Path(__file__).resolve().parent.parent / "data" / "captured" / "ablation_maxscore.safetensors"

os.environ.setdefault("DS_BUILD_OPS", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def logit_sets(groups: int = 4, tokens: int = 64) -> dict[str, torch.Tensor]:
    """``{"random": [G, T, 16], "captured": [G, T, 16]}`` (half the captured groups from each layer)."""
    half = groups // 2
    captured = torch.cat([
        workload_logits(f"captured:{CAPTURED}:layer0", half, tokens, None, seed=1),
        workload_logits(f"captured:{CAPTURED}:layer1", groups - half, tokens, None, seed=2),
    ])
    return {"random": workload_logits("force_biased:std=1", groups, tokens, 16, seed=0), "captured": captured}


def require(module: str) -> None:
    """Skip the test, with the reason, where the crosscheck extra is not installed."""
    pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[crosscheck]' (see .ci/run)")

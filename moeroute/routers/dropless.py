"""Dropless top-k: every token gets its k best experts; no capacity (MegaBlocks, HF Mixtral/Qwen-MoE/OLMoE)."""

from __future__ import annotations

import torch

from moeroute.core.problem import RouterInput
from moeroute.core.routing import Slots
from moeroute.routers.registry import NoOptions, register_router


@register_router(
    "dropless",
    NoOptions,
    "top-k by score, no capacity: nothing drops, the cost is padding to the busiest expert",
    "MegaBlocks (Gale et al. 2023); Hugging Face Mixtral / Qwen-MoE / OLMoE",
    capacity="ignored",
)
def dropless(x: RouterInput, opts: NoOptions) -> Slots:
    return Slots(torch.topk(x.scores, x.k, dim=-1).indices)

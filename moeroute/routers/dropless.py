"""Dropless top-k: every token gets its k best experts; no capacity (MegaBlocks, HF Mixtral/Qwen-MoE/OLMoE)."""

from __future__ import annotations

import torch

from moeroute.problem import RouterInput
from moeroute.routers.registry import NoOptions, register_router
from moeroute.routing import Routing


@register_router(
    "dropless",
    NoOptions,
    "top-k by score, no capacity: nothing drops, the cost is padding to the busiest expert",
    "MegaBlocks (Gale et al. 2023); Hugging Face Mixtral / Qwen-MoE / OLMoE",
)
def dropless(x: RouterInput, opts: NoOptions) -> Routing:
    experts = torch.topk(x.scores, x.k, dim=-1).indices
    # Capacity is reported as None whatever cf says: this router ignores it by definition.
    return Routing(experts, None, x.experts, x.k, None, max_per_token=x.k)

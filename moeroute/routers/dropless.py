"""Dropless top-k: every token gets its k best experts; no capacity (MegaBlocks, Megatron-Core without a capacity
factor, HF Mixtral / Qwen-MoE / OLMoE / DeepSeek-V3), with the top-k options of routers/_topk.py."""

from __future__ import annotations

from dataclasses import dataclass

from moeroute.core.problem import RouterInput
from moeroute.core.routing import Slots
from moeroute.routers._topk import TopKOptions, topk_refusal, topk_select
from moeroute.routers.registry import register_router


@dataclass(frozen=True)
class DroplessOptions(TopKOptions):
    """Top-k options only (``score``, ``pre_softmax``, ``scaling``, ``groups``, ``group_topk``); see
    :class:`moeroute.routers._topk.TopKOptions`. ``renormalize=true`` gives Mixtral's / Qwen3's normalised
    weights; ``score=sigmoid,groups=8,group_topk=4,scaling=2.5`` DeepSeek-V3's."""


@register_router(
    "dropless",
    DroplessOptions,
    "top-k by score, no capacity: nothing drops, the cost is padding to the busiest expert",
    "MegaBlocks (Gale et al. 2023); Megatron-Core without capacity; Hugging Face Mixtral / Qwen-MoE / OLMoE / "
    "DeepSeek-V3 routers",
    capacity="ignored",
    requires=topk_refusal,
    examples=("dropless:score=sigmoid,groups=2,group_topk=1,scaling=2.5", "dropless:pre_softmax=false"),
)
def dropless(x: RouterInput, opts: DroplessOptions) -> Slots:
    top = topk_select(x, opts)
    return Slots(top.experts, weights=top.probs)

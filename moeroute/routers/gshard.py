"""GShard top-k with capacity (DeepSpeed ``top2gating``/``topkgating``, Tutel, the MaxScore paper's baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from moeroute.core.problem import RouterInput
from moeroute.core.routing import Slots
from moeroute.routers._capacity import apply_capacity
from moeroute.routers.registry import register_router


@dataclass(frozen=True)
class GShardOptions:
    """``drop_policy``: ``position`` keeps the first comers (token order, every first choice before any second
    choice); ``probs`` keeps the highest-scoring tokens per expert (Megatron/DeepSpeed ``probs``)."""

    drop_policy: Literal["position", "probs"] = "position"


@register_router(
    "gshard",
    GShardOptions,
    "top-k by score, then capacity C: first come (token order, first choices before second) or best score",
    "GShard (Lepikhin et al. 2020); DeepSpeed top2gating/topkgating; Tutel",
)
def gshard(x: RouterInput, opts: GShardOptions) -> Slots:
    preferred = torch.topk(x.scores, x.k, dim=-1).indices
    return Slots(apply_capacity(x, preferred, opts.drop_policy))

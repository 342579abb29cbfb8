"""GShard top-k with capacity (DeepSpeed ``top2gating``/``topkgating``, Tutel, the MaxScore paper's baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from moeroute.dispatch import keep_within_capacity
from moeroute.problem import RouterInput
from moeroute.routers.registry import register_router
from moeroute.routing import EMPTY, Routing


@dataclass(frozen=True)
class GShardOptions:
    """``drop_policy``: ``position`` keeps the first comers (token order, every first choice before any second
    choice); ``probs`` keeps the highest-scoring tokens per expert (Megatron/DeepSpeed ``probs``)."""

    drop_policy: Literal["position", "probs"] = "position"


def rank_major(x: torch.Tensor) -> torch.Tensor:
    """``[G, T, R] -> [G, R*T]`` so that all rank-0 entries come first, in token order, then rank 1, ..."""
    return x.transpose(1, 2).reshape(x.shape[0], -1)


def token_major(x: torch.Tensor, tokens: int) -> torch.Tensor:
    """Inverse of :func:`rank_major`: ``[G, R*T] -> [G, T, R]``."""
    return x.reshape(x.shape[0], -1, tokens).transpose(1, 2)


def capacity_top_k(x: RouterInput, preferred: torch.Tensor, drop_policy: str = "position") -> torch.Tensor:
    """Apply capacity to ranked proposals ``preferred`` ``[G, T, k]``; returns them with dropped slots ``-1``."""
    proposals = rank_major(preferred)
    priority = rank_major(torch.gather(x.scores, 2, preferred)) if drop_policy == "probs" else None
    keep = keep_within_capacity(proposals, x.capacity, x.experts, priority)
    return torch.where(token_major(keep, x.tokens), preferred, torch.full_like(preferred, EMPTY))


@register_router(
    "gshard",
    GShardOptions,
    "top-k by score, then capacity C: first come (token order, first choices before second) or best score",
    "GShard (Lepikhin et al. 2020); DeepSpeed top2gating/topkgating; Tutel",
)
def gshard(x: RouterInput, opts: GShardOptions) -> Routing:
    preferred = torch.topk(x.scores, x.k, dim=-1).indices
    experts = capacity_top_k(x, preferred, opts.drop_policy)
    return Routing(experts, None, x.experts, x.k, x.capacity, max_per_token=x.k)

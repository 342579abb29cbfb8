"""GShard top-k with capacity (DeepSpeed ``top2gating``/``topkgating``, Tutel, Megatron-Core's token dropping, the
MaxScore paper's baseline), with Megatron-Core's score functions, ``pre_softmax``, scaling and group-limited
routing (routers/_topk.py)."""

from __future__ import annotations

from dataclasses import dataclass

from moeroute.core.problem import RouterInput
from moeroute.core.routing import Slots
from moeroute.routers._topk import CapacityOptions, TopKOptions, topk_refusal, topk_with_capacity
from moeroute.routers.registry import register_router


@dataclass(frozen=True)
class GShardOptions(CapacityOptions, TopKOptions):
    """Top-k options (``score``, ``pre_softmax``, ``scaling``, ``groups``, ``group_topk``: see
    :class:`moeroute.routers._topk.TopKOptions`) and capacity options (``drop_policy``: ``position`` keeps the
    first comers, ``probs`` the highest probs per expert; ``order``: ``rank`` puts every first choice before any
    second choice, ``token`` goes token by token)."""

    def validate(self) -> None:
        TopKOptions.validate(self)
        CapacityOptions.validate(self)


@register_router(
    "gshard",
    GShardOptions,
    "top-k by score, then capacity C: first come (order=rank|token) or best probs (drop_policy=probs); "
    "score=softmax|sigmoid|sqrt_softplus, pre_softmax, scaling, group-limited (groups, group_topk)",
    "GShard (Lepikhin et al. 2020); DeepSpeed top2gating/topkgating; Megatron-Core topk_routing_with_score_function "
    "+ apply_router_token_dropping; Tutel",
    requires=topk_refusal,
    examples=(
        "gshard:drop_policy=probs",
        "gshard:order=token",
        "gshard:pre_softmax=false,drop_policy=probs",
        "gshard:score=sigmoid,scaling=2.5,drop_policy=probs",
        "gshard:score=sqrt_softplus,groups=2,group_topk=1",
    ),
)
def gshard(x: RouterInput, opts: GShardOptions) -> Slots:
    """Combine weights are Megatron's probs of the kept slots (with the defaults: the softmax scores)."""
    return topk_with_capacity(x, opts, opts)

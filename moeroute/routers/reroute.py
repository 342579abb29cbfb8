"""Iterative rerouting: GShard, then dropped assignments re-propose to their next-best expert with room, in rounds
(the MaxScore paper's "iterative" baseline and its generalisation to every dropped slot)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import RouterInput
from moeroute.core.routing import Slots
from moeroute.routers._capacity import apply_capacity
from moeroute.routers._reroute import reroute_rounds
from moeroute.routers._topk import TopKOptions, topk_refusal, topk_select
from moeroute.routers.registry import register_router


@dataclass(frozen=True)
class RerouteOptions(TopKOptions):
    """Top-k options (``score``, ``pre_softmax``, ``scaling``, ``groups``, ``group_topk``) choose the first
    proposals and rank the later ones (a token never reroutes outside its chosen groups). ``variant``: ``all`` reroutes every dropped slot until placed or no expert has room; ``second`` is the
    paper's baseline: first-choice drops stay dropped, only later-ranked slots reroute, for at most ``E - 1``
    rounds. ``max_rounds``: a cap on the rounds (``None`` = until nothing more can be placed, or ``E - 1`` for
    ``second``)."""

    variant: Literal["all", "second"] = "all"
    max_rounds: Optional[int] = None

    def validate(self) -> None:
        super().validate()
        if self.max_rounds is not None and self.max_rounds < 0:
            raise MoeRouteError(f"max_rounds must be >= 0, got {self.max_rounds}")


@register_router(
    "reroute",
    RerouteOptions,
    "GShard top-k with capacity, then dropped slots re-propose to their next-best expert with room, in rounds",
    "MaxScore (Dong et al. 2025) iterative-rerouting baseline; variant=second is the paper's own",
    requires=topk_refusal,
    examples=("reroute:variant=second", "reroute:score=sigmoid,groups=2,group_topk=1"),
)
def reroute(x: RouterInput, opts: RerouteOptions) -> Slots:
    """Rerouted slots keep the rank of the choice they replace (slot ``r`` stays the token's ``r``-th slot).
    Combine weights come from the weight operator (a rerouted expert has no Megatron prob)."""
    top = topk_select(x, opts)
    preferred = top.experts
    experts = apply_capacity(x, preferred)
    rounds = 0
    if x.capacity is not None:
        fill = torch.ones_like(experts, dtype=torch.bool)
        max_rounds = opts.max_rounds
        if opts.variant == "second":
            fill[:, :, 0] = False
            max_rounds = x.experts - 1 if max_rounds is None else min(max_rounds, x.experts - 1)
        experts, rounds = reroute_rounds(top.ranking, experts, x.capacity, fill, max_rounds)
    return Slots(experts, meta={"rounds": rounds}, selected=preferred)

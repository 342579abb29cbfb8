"""Expert Choice: each expert takes its top-``C`` tokens by score; a token may get no expert or more than ``k``."""

from __future__ import annotations

import torch

from moeroute.core.problem import RouterInput
from moeroute.core.routing import Slots, slots_from_mask
from moeroute.routers._topk import ScoreOptions
from moeroute.routers.registry import register_router


def expert_choice_mask(scores: torch.Tensor, capacity: int) -> torch.Tensor:
    """Bool ``[G, T, E]``: token ``t`` is among expert ``e``'s ``min(C, T)`` best tokens by score."""
    g, t, e = scores.shape
    top = torch.topk(scores, min(capacity, t), dim=1).indices  # [G, C, E]
    mask = torch.zeros(g, t, e, dtype=torch.bool, device=scores.device)
    return mask.scatter_(1, top, True)


@register_router(
    "expert_choice",
    ScoreOptions,
    "each expert takes its top-C tokens by score; tokens may get no expert or more than k (slots R >= k)",
    "Expert Choice routing (Zhou et al. 2022); flaxformer ExpertsChooseMaskedRouter",
    experts_per_token="any",
    requires=lambda x, opts: None if x.capacity is not None else "needs a capacity factor: each expert takes its top-C tokens",
    examples=("expert_choice:score=sigmoid",),
)
def expert_choice(x: RouterInput, opts: ScoreOptions) -> Slots:
    """Slots are as wide as the most experts any token got (at least ``k``), ordered by score."""
    mask = expert_choice_mask(x.scores, x.capacity)
    slots = max(x.k, int(mask.sum(dim=2).max()))
    experts = slots_from_mask(mask, x.scores, slots)
    return Slots(experts)

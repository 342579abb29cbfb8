"""DeepSeek-V3 auxiliary-loss-free balancing: a per-expert bias steers selection only, updated between groups."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import RouterInput
from moeroute.core.routing import Slots
from moeroute.routers._capacity import apply_capacity, expert_load
from moeroute.routers.registry import register_router


@dataclass(frozen=True)
class AuxFreeOptions:
    """``rate``: the bias step ``γ`` per group (DeepSeek-V3 uses 0.001 on sigmoid affinities; here the bias is
    added to softmax scores)."""

    rate: float = 0.001

    def validate(self) -> None:
        if not self.rate >= 0:
            raise MoeRouteError(f"rate must be >= 0, got {self.rate}")


def biased_top_k(scores: torch.Tensor, k: int, rate: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each group's top-``k`` of ``scores + bias`` ``[G, T, k]``, the bias ``[G, E]`` each group saw, and the bias
    ``[E]`` left after the last group.

    The bias starts at zero; after group ``g`` it moves by ``rate * sign(mean_load - load_e)`` where ``load_e``
    counts group ``g``'s selections (before capacity: at ``cf = 1`` the kept load of an overloaded expert equals
    the mean, so it could never signal overload). Underloaded experts go up. The loop over groups is the
    definition: each group's selection depends on the bias the earlier groups left.
    """
    g, t, e = scores.shape
    bias = torch.zeros(e, dtype=scores.dtype, device=scores.device)
    chosen = []
    seen = []
    for i in range(g):
        top = torch.topk(scores[i] + bias, k, dim=-1).indices  # [T, k]
        chosen.append(top)
        seen.append(bias)
        load = expert_load(top.unsqueeze(0), e)[0].to(scores.dtype)
        bias = bias + rate * torch.sign(load.mean() - load)
    return torch.stack(chosen), torch.stack(seen), bias


@register_router(
    "aux_free",
    AuxFreeOptions,
    "top-k of scores + a per-expert bias (selection only) updated between groups by rate*sign(mean-load), then capacity",
    "DeepSeek-V3 auxiliary-loss-free load balancing (Wang et al. 2024; DeepSeek-AI 2024)",
)
def aux_free(x: RouterInput, opts: AuxFreeOptions) -> Slots:
    """Groups are routed in order, as a stream; ``meta['bias']`` ``[G, E]`` holds the bias each group saw and
    ``meta['final_bias']`` ``[E]`` the one a next group would get. Combine weights are the unbiased scores."""
    preferred, seen, final = biased_top_k(x.scores, x.k, opts.rate)
    experts = apply_capacity(x, preferred)
    return Slots(experts, meta={"bias": seen, "final_bias": final}, state={"bias": final})

"""Top-p (dynamic-k) routing (Huang et al. 2024, *Harder Tasks Need More Experts*): each token takes the smallest
set of its best experts whose softmax probabilities add up to more than ``p``, optionally capped at ``max_k``.

How it fits the routing contract: the number of experts varies per token, so the router registers
``experts_per_token="any"`` and returns ``max_k`` slots (``E`` without a cap), empty slots ``-1``. The problem's
``k`` no longer picks experts; it sizes the capacity ``C = ceil(cf * k * T / E)`` (pass the mean number of experts
per token you budget for) and the slot accounting of the metrics. With a capacity factor the shared capacity rule
drops the overflow (``drop_policy``, ``order``); ``mean_experts_per_token`` in the metrics row says how many
experts a token got.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import RouterInput
from moeroute.core.routing import EMPTY, Slots
from moeroute.routers._capacity import apply_capacity
from moeroute.routers._topk import CapacityOptions
from moeroute.routers.registry import register_router


@dataclass(frozen=True)
class TopPOptions(CapacityOptions):
    """``p``: the probability mass to exceed (the paper's threshold; 0.4 in its released configuration).
    ``max_k``: at most this many experts per token (``None``: no cap). ``drop_policy``, ``order``: the capacity
    rule, when there is a capacity."""

    p: float = 0.4
    max_k: Optional[int] = None

    def validate(self) -> None:
        CapacityOptions.validate(self)
        if not 0.0 < self.p <= 1.0:
            raise MoeRouteError(f"p must be in (0, 1], got {self.p}")
        if self.max_k is not None and self.max_k < 1:
            raise MoeRouteError(f"max_k must be >= 1, got {self.max_k}")


def top_p_experts(scores: torch.Tensor, p: float, slots: int) -> torch.Tensor:
    """Long ``[G, T, slots]``: each token's experts by descending probability (ties: lower id first), up to and
    including the first at which the running sum exceeds ``p`` (all of them if it never does), ``-1`` after.
    The rule of the paper's released code (``cumsum > p`` marks the cut)."""
    values, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    over = torch.cumsum(values, dim=-1) > p
    # An expert is dropped once an earlier one already pushed the running sum past p.
    passed_before = (torch.cumsum(over.int(), dim=-1) - over.int()) > 0
    chosen = torch.where(passed_before, torch.full_like(order, EMPTY), order)
    return chosen[..., :slots]


def _top_p_refusal(x: RouterInput, opts: TopPOptions) -> Optional[str]:
    if opts.max_k is not None and opts.max_k > x.experts:
        return f"max_k={opts.max_k} exceeds the E={x.experts} experts"
    return None


@register_router(
    "top_p",
    TopPOptions,
    "dynamic k: each token takes its best experts until their probabilities exceed p (at most max_k), then capacity",
    "Huang et al. 2024, Harder Tasks Need More Experts: Dynamic Routing in MoE Models (ACL 2024)",
    experts_per_token="any",
    requires=_top_p_refusal,
    selects_by="softmax probabilities (a cumulative threshold needs a distribution)",
    examples=("top_p:p=0.8,max_k=3", "top_p:p=0.5,drop_policy=probs,order=token"),
)
def top_p(x: RouterInput, opts: TopPOptions) -> Slots:
    """Combine weights: the probabilities of the kept experts, not renormalised (as the paper's code)."""
    slots = opts.max_k if opts.max_k is not None else x.experts
    selected = top_p_experts(x.scores, opts.p, slots)
    experts = apply_capacity(x, selected, opts.drop_policy, opts.order)
    return Slots(experts, selected=selected)

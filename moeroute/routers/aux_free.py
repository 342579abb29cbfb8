"""Auxiliary-loss-free balancing (DeepSeek-V3; Wang et al. 2024): a per-expert bias steers the top-k selection
only, moved by ``rate * sign(mean load - load)`` between groups.

Two rules, named by ``mode``:

- ``selected`` (the default, this project's original rule): any score function; each group's loads are counted on
  its *selection*, before capacity (at ``cf = 1`` the kept load of an overloaded expert equals the mean, so counting
  after dropping would hide the overload); the bias moves after every ``update_every`` groups.
- ``megatron``: Megatron-Core's ``moe_router_enable_expert_bias``: ``score=sigmoid`` or ``sqrt_softplus`` only (it
  refuses softmax), the bias added to those scores for selection (group-limited routing included), loads counted
  from the routing map *after* token dropping, accumulated over a "step" of ``update_every`` groups (a global batch)
  and turned into a new bias by :func:`updated_bias` (Megatron's ``get_updated_expert_bias``).

The bias comes in as ``x.state["bias"]`` ``[E]`` (absent: zeros) and leaves in ``Slots.state`` with the loads
counted since the last update (``tokens``) and how many groups they cover (``pending``). A trainer that routes each
data-parallel rank's groups with ``update_every=0`` (never inside the call) updates once per optimizer step with
the registered :func:`aux_free_step` from loads summed over the ranks, as Megatron does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import RouterInput
from moeroute.core.routing import Slots
from moeroute.routers._capacity import apply_capacity, expert_load
from moeroute.routers._topk import CapacityOptions, TopKOptions, kept_weights, topk_refusal, topk_select
from moeroute.routers.registry import AllReduce, register_router


@dataclass(frozen=True)
class AuxFreeOptions(CapacityOptions, TopKOptions):
    """``rate``: the bias step ``γ`` per update (DeepSeek-V3 and Megatron: 0.001). ``mode``: ``selected`` (loads of
    the selection before capacity, any score function) or ``megatron`` (sigmoid / sqrt_softplus scores, loads after
    dropping); see the module docstring. ``update_every``: groups per bias update (a "step"; ``0`` = never inside
    the call: a trainer calls the router's ``step_update``). Also the top-k options (``score``, ``pre_softmax``,
    ``scaling``, ``groups``, ``group_topk``) and the capacity options (``drop_policy``, ``order``)."""

    rate: float = 0.001
    mode: Literal["selected", "megatron"] = "selected"
    update_every: int = 1

    def validate(self) -> None:
        TopKOptions.validate(self)
        CapacityOptions.validate(self)
        if not self.rate >= 0:
            raise MoeRouteError(f"rate must be >= 0, got {self.rate}")
        if self.update_every < 0:
            raise MoeRouteError(f"update_every must be >= 0, got {self.update_every}")
        if self.mode == "megatron" and self.score == "softmax":
            raise MoeRouteError("mode=megatron needs score=sigmoid or sqrt_softplus (Megatron-Core refuses an expert "
                                "bias on softmax scores)")


def updated_bias(tokens_per_expert: torch.Tensor, bias: torch.Tensor, rate: float) -> torch.Tensor:
    """The next expert bias ``[..., E]``: ``bias + rate * sign(mean - tokens)``, the mean over the experts of
    ``tokens_per_expert`` ``[..., E]`` (already summed over whatever ranks share the bias). Underloaded experts go
    up. Megatron-Core's ``get_updated_expert_bias`` after its all-reduce, with the same operations."""
    with torch.no_grad():
        average = tokens_per_expert.sum(dim=-1, keepdim=True) / tokens_per_expert.shape[-1]
        return bias + torch.sign(average - tokens_per_expert) * rate


def _state_tensors(x: RouterInput) -> tuple[torch.Tensor, torch.Tensor, int]:
    e, device = x.experts, x.scores.device
    bias = x.state.get("bias")
    bias = torch.zeros(e, device=device) if bias is None else bias.detach().to(device, torch.float32).reshape(e)
    tokens = x.state.get("tokens")
    tokens = torch.zeros(e, device=device) if tokens is None else tokens.detach().to(device, torch.float32).reshape(e)
    pending = int(x.state.get("pending", torch.tensor(0)))
    return bias, tokens, pending


def aux_free_step(state: dict[str, torch.Tensor], all_reduce: AllReduce, opts: AuxFreeOptions) -> dict[str, torch.Tensor]:
    """Once per optimizer step: sum the loads counted since the last update over the data-parallel ranks and move
    the bias (:func:`updated_bias`); the counts start again from zero."""
    tokens = all_reduce(state["tokens"].clone(), "sum")
    bias = updated_bias(tokens, state["bias"], opts.rate)
    return {"bias": bias, "tokens": torch.zeros_like(tokens), "pending": torch.tensor(0)}


@register_router(
    "aux_free",
    AuxFreeOptions,
    "top-k of score + a per-expert bias (selection only) moved by rate*sign(mean-load) every update_every groups, "
    "then capacity; mode=megatron: Megatron-Core's expert bias (sigmoid scores, loads after dropping)",
    "DeepSeek-V3 auxiliary-loss-free load balancing (Wang et al. 2024; DeepSeek-AI 2024); Megatron-Core "
    "get_updated_expert_bias",
    requires=topk_refusal,
    step_update=aux_free_step,
    examples=("aux_free:rate=0.05", "aux_free:mode=megatron,score=sigmoid,rate=0.05,update_every=2,drop_policy=probs"),
)
def aux_free(x: RouterInput, opts: AuxFreeOptions) -> Slots:
    """Groups are routed in order, as a stream; ``meta['bias']`` ``[G, E]`` holds the bias each group saw and
    ``meta['final_bias']`` ``[E]`` the one a next group would get. Combine weights are the probs of the unbiased
    scores (Megatron's)."""
    bias, tokens, pending = _state_tensors(x)
    slots, probs, chosen, seen = [], [], [], []
    for g in range(x.groups):
        xg = replace(x, logits=x.logits[g : g + 1], scores=x.scores[g : g + 1])
        top = topk_select(xg, opts, bias=bias)
        kept = apply_capacity(xg, top.experts, opts.drop_policy, opts.order, priority=top.probs)
        seen.append(bias)
        slots.append(kept)
        probs.append(top.probs)
        chosen.append(top.experts)
        counted = kept if opts.mode == "megatron" else top.experts
        tokens = tokens + expert_load(counted, x.experts)[0].to(tokens.dtype)
        pending += 1
        if opts.update_every and pending == opts.update_every:
            bias = updated_bias(tokens, bias, opts.rate)
            tokens, pending = torch.zeros_like(tokens), 0
    experts = torch.cat(slots)
    state = {"bias": bias, "tokens": tokens, "pending": torch.tensor(pending)}
    meta = {"bias": torch.stack(seen), "final_bias": bias}
    return Slots(experts, weights=kept_weights(torch.cat(probs), experts), meta=meta, state=state,
                 selected=torch.cat(chosen))

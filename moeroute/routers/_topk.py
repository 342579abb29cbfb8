"""The top-k selection the production routers share, written once: a score function, Megatron-Core's
``pre_softmax`` and top-k scaling factor, group-limited routing, and an optional per-expert selection bias.

The rule is Megatron-Core's ``topk_routing_with_score_function`` (with ``group_limited_topk``), computed with the
same tensor operations on ``[G, T, E]`` so that both agree bit for bit (tests/test_crosscheck_megatron.py):

- ``score=softmax, pre_softmax=true``: top-k of the softmax scores; ``probs`` are those scores.
- ``score=softmax, pre_softmax=false`` (Megatron's default): top-k of the *logits*; ``probs`` are the softmax
  over the k chosen logits (they sum to 1).
- ``score=sigmoid`` / ``sqrt_softplus``: top-k of the scores (plus the bias, for selection only); ``probs`` are the
  chosen scores divided by their sum (``+ 1e-20``) when ``k > 1``, the score itself when ``k = 1``.
- ``groups=N, group_topk=M``: the experts form ``N`` contiguous groups; a group's score is the sum of its top
  ``k // M`` selection scores; a token chooses its k experts inside its ``M`` best groups only.
- ``scaling=F``: ``probs`` times ``F``.

Options shared by the routers built on it are mixin dataclasses (:class:`ScoreOptions`, :class:`TopKOptions`,
:class:`CapacityOptions`); a router's options class inherits them and calls ``super().validate()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import RouterInput
from moeroute.core.routing import Slots
from moeroute.routers._capacity import apply_capacity

ScoreName = Literal["softmax", "sigmoid", "sqrt_softplus"]


@dataclass(frozen=True)
class ScoreOptions:
    """``score``: the score function the router selects by (softmax, sigmoid, sqrt_softplus); its objective, the
    exact optimum and the gap use the same scores."""

    score: ScoreName = "softmax"

    def validate(self) -> None:
        return None


@dataclass(frozen=True)
class TopKOptions(ScoreOptions):
    """Megatron-Core's top-k options. ``pre_softmax``: with ``score=softmax``, ``true`` selects by the softmax
    scores and keeps them as probs (GShard, DeepSpeed, Mixtral); ``false`` selects by the logits and takes the
    softmax over the k chosen (Megatron's default). ``scaling``: multiply the probs by this factor
    (``moe_router_topk_scaling_factor``; DeepSeek-V3 2.5). ``groups``/``group_topk``: group-limited routing, the
    experts in ``groups`` contiguous groups, each token choosing inside its ``group_topk`` best groups (a group's
    score: the sum of its top ``k // group_topk`` selection scores)."""

    pre_softmax: bool = True
    scaling: Optional[float] = None
    groups: Optional[int] = None
    group_topk: Optional[int] = None

    def validate(self) -> None:
        super().validate()
        if not self.pre_softmax and self.score != "softmax":
            raise MoeRouteError(f"pre_softmax=false applies to score=softmax only, got score={self.score}")
        if self.scaling is not None and not self.scaling > 0:
            raise MoeRouteError(f"scaling must be > 0, got {self.scaling}")
        if (self.groups is None) != (self.group_topk is None):
            raise MoeRouteError("group-limited routing needs both groups= and group_topk=")
        if self.groups is not None and self.group_topk is not None:
            if self.groups < 1 or self.group_topk < 1:
                raise MoeRouteError(f"groups and group_topk must be >= 1, got {self.groups} and {self.group_topk}")
            if self.group_topk > self.groups:
                raise MoeRouteError(f"group_topk={self.group_topk} exceeds groups={self.groups}")


@dataclass(frozen=True)
class CapacityOptions:
    """How the shared capacity rule drops (only when there is a capacity). ``drop_policy``: ``position`` keeps the
    first comers, ``probs`` the highest probs per expert (Megatron-Core and DeepSpeed's ``probs``). ``order``: the
    first-come order: ``rank`` (every first choice of the group before any second choice: DeepSpeed
    ``top2gating``) or ``token`` (token by token: DeepSpeed ``topkgating``)."""

    drop_policy: Literal["position", "probs"] = "position"
    order: Literal["rank", "token"] = "rank"

    def validate(self) -> None:
        return None


class TopK(NamedTuple):
    """The top-k selection: ``experts`` long ``[G, T, k]`` (best first), ``probs`` ``[G, T, k]`` (Megatron-Core's
    routing probs of those experts: the combine weights and the ``probs`` drop priority), and ``ranking``
    ``[G, T, E]``: the selection scores each token ranked its experts by (bias included, ``-inf`` outside its
    chosen groups), for routers that look past the k-th choice (rerouting)."""

    experts: torch.Tensor
    probs: torch.Tensor
    ranking: torch.Tensor


def topk_refusal(x: RouterInput, opts: TopKOptions, k: Optional[int] = None) -> Optional[str]:
    """Why the top-k selection cannot run on ``x`` (``None``: it can): group-limited routing needs ``E`` divisible
    by ``groups``, ``k >= group_topk`` (each chosen group contributes its top ``k // group_topk``) and enough
    experts in the chosen groups."""
    k = x.k if k is None else k
    if opts.groups is None or opts.group_topk is None:
        return None
    if x.experts % opts.groups:
        return f"groups={opts.groups} does not divide the E={x.experts} experts"
    if k < opts.group_topk:
        return f"group-limited routing needs k >= group_topk (a group's score is its top k // group_topk), got k={k}"
    if k > opts.group_topk * (x.experts // opts.groups):
        return f"k={k} exceeds the {opts.group_topk * (x.experts // opts.groups)} experts of the {opts.group_topk} chosen groups"
    return None


def selection_scores(x: RouterInput, opts: ScoreOptions) -> torch.Tensor:
    """``[G, T, E]``: what the top-k ranks by: the logits for ``score=softmax, pre_softmax=false``, else the
    scores."""
    if opts.score == "softmax" and not getattr(opts, "pre_softmax", True):
        return x.logits
    return x.scores


def limit_to_groups(ranked: torch.Tensor, k: int, groups: int, group_topk: int) -> torch.Tensor:
    """``ranked`` ``[G, T, E]`` with ``-inf`` outside each token's ``group_topk`` best expert groups (groups of
    ``E / groups`` contiguous experts, scored by the sum of their top ``k // group_topk`` entries)."""
    g, t, e = ranked.shape
    group_scores = ranked.view(g, t, groups, e // groups).topk(k // group_topk, dim=-1)[0].sum(dim=-1)
    chosen = torch.topk(group_scores, k=group_topk, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(2, chosen, 1)
    expert_mask = group_mask.unsqueeze(-1).expand(g, t, groups, e // groups).reshape(g, t, e)
    return ranked.masked_fill(~expert_mask.bool(), float("-inf"))


def probs_of(x: RouterInput, opts: ScoreOptions, experts: torch.Tensor) -> torch.Tensor:
    """Megatron-Core's routing probs ``[G, T, R]`` of the chosen ``experts`` (long ``[G, T, R]``, no empty
    slots), before any capacity; see the module docstring."""
    chosen = torch.gather(selection_scores(x, opts), 2, experts)
    if opts.score == "softmax":
        probs = chosen if getattr(opts, "pre_softmax", True) else torch.softmax(chosen, dim=-1, dtype=torch.float32)
    else:
        probs = chosen / (chosen.sum(dim=-1, keepdim=True) + 1e-20) if experts.shape[-1] > 1 else chosen
    scaling = getattr(opts, "scaling", None)
    return probs * scaling if scaling else probs


def topk_select(
    x: RouterInput, opts: TopKOptions, k: Optional[int] = None, bias: Optional[torch.Tensor] = None
) -> TopK:
    """Each token's top-``k`` (default ``x.k``) by the router's selection scores, plus ``bias`` (``[E]`` or
    ``[G, 1, E]``, for selection only; Megatron-Core's expert bias), inside its chosen groups."""
    k = x.k if k is None else k
    base = selection_scores(x, opts)
    ranked = base if bias is None else base + bias
    if opts.groups is not None and opts.group_topk is not None:
        ranked = limit_to_groups(ranked, k, opts.groups, opts.group_topk)
    values, experts = torch.topk(ranked, k=k, dim=-1)
    if bias is None and opts.score != "softmax":
        # Megatron divides the top-k values themselves (bit for bit the gathered scores).
        probs = values / (values.sum(dim=-1, keepdim=True) + 1e-20) if k > 1 else values
        probs = probs * opts.scaling if opts.scaling else probs
    elif bias is None and opts.pre_softmax:
        probs = values * opts.scaling if opts.scaling else values
    else:
        probs = probs_of(x, opts, experts)
    return TopK(experts, probs, ranked)


def kept_weights(probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """``probs`` ``[G, T, R]`` zeroed on the slots capacity emptied (``experts == -1``): Megatron's
    ``routing_probs * routing_map`` after dropping."""
    return torch.where(experts >= 0, probs, torch.zeros_like(probs))


def topk_with_capacity(
    x: RouterInput, opts: TopKOptions, capacity: CapacityOptions, bias: Optional[torch.Tensor] = None
) -> Slots:
    """Top-k selection, then the shared capacity rule (``capacity.drop_policy`` by the probs, in
    ``capacity.order``): the slots, their probs as combine weights, and the selection before capacity."""
    top = topk_select(x, opts, bias=bias)
    experts = apply_capacity(x, top.experts, capacity.drop_policy, capacity.order, priority=top.probs)
    return Slots(experts, weights=kept_weights(top.probs, experts), selected=top.experts)

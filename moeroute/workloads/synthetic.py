"""The synthetic workload families: seeded generators of router logits ``[G, T, E]``.

Each family is one function registered with a frozen dataclass of options; the dataclass docstring documents
the parameters (``moeroute workloads`` would print them; the sweep configs name them as spec strings such as
``hot:hot=2,boost=3``). All randomness comes from the ``torch.Generator`` the registry seeds, so a workload spec
and a seed give the same tensor on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.workloads.registry import register_workload


def _positive(name: str, value: float) -> None:
    if not value > 0 or math.isinf(value):
        raise MoeRouteError(f"workload option {name} must be a finite number > 0, got {value}")


def _noise(groups: int, tokens: int, experts: int, gen: torch.Generator, temperature: float) -> torch.Tensor:
    """The i.i.d. ``N(0, 1) / temperature`` part every family starts from, ``[G, T, E]``."""
    return torch.randn(groups, tokens, experts, generator=gen) / temperature


def _count_within(name: str, count: int, experts: int) -> None:
    if count > experts:
        raise MoeRouteError(f"workload option {name}={count} exceeds the number of experts E={experts}")


@dataclass(frozen=True)
class GaussOptions:
    """``temperature``: logits are ``N(0, 1) / temperature`` (lower = sharper preferences)."""

    temperature: float = 1.0

    def validate(self) -> None:
        _positive("temperature", self.temperature)


@register_workload("gauss", GaussOptions, "i.i.d. Gaussian logits divided by a temperature")
def gauss(groups: int, tokens: int, experts: int, gen: torch.Generator, opts: GaussOptions) -> torch.Tensor:
    return torch.randn(groups, tokens, experts, generator=gen) / opts.temperature


@dataclass(frozen=True)
class SkewOptions:
    """Gaussian logits plus a per-expert popularity bias ``N(0, bias^2)`` shared by every token of a run.

    ``bias = 0.3`` (the default) makes GShard drop about 35% of second choices at ``cf = 1, k = 2, E = 16,
    T = 512`` (mean over 20 seeds: 34.5%, range 24-46%), the figure the MaxScore paper reports for a trained
    model's logits. ``bias = 1`` drops about 58%.
    """

    temperature: float = 1.0
    bias: float = 0.3

    def validate(self) -> None:
        _positive("temperature", self.temperature)
        if not self.bias >= 0:
            raise MoeRouteError(f"workload option bias must be >= 0, got {self.bias}")


@register_workload("skew", SkewOptions, "Gaussian logits plus a per-expert popularity bias (some experts hot)")
def skew(groups: int, tokens: int, experts: int, gen: torch.Generator, opts: SkewOptions) -> torch.Tensor:
    popularity = torch.randn(experts, generator=gen) * opts.bias
    return torch.randn(groups, tokens, experts, generator=gen) / opts.temperature + popularity


@dataclass(frozen=True)
class ZipfOptions:
    """Zipf-distributed expert popularity: the expert of popularity rank ``r`` (1 = most popular, ranks shuffled
    over experts by the seed) gets ``log(r^-alpha / H)`` added to ``N(0, 1) / temperature`` logits, so that with
    flat noise its share of first choices is proportional to ``r^-alpha``. ``alpha = 0`` is ``gauss``."""

    alpha: float = 1.0
    temperature: float = 1.0

    def validate(self) -> None:
        _positive("temperature", self.temperature)
        if not self.alpha >= 0:
            raise MoeRouteError(f"workload option alpha must be >= 0, got {self.alpha}")


@register_workload("zipf", ZipfOptions, "Zipf-distributed expert popularity (rank r gets share ~ r^-alpha)")
def zipf(groups: int, tokens: int, experts: int, gen: torch.Generator, opts: ZipfOptions) -> torch.Tensor:
    ranks = torch.randperm(experts, generator=gen).double() + 1.0
    weights = ranks.pow(-opts.alpha)
    popularity = (weights / weights.sum()).log().float()
    return _noise(groups, tokens, experts, gen, opts.temperature) + popularity


@dataclass(frozen=True)
class HotOptions:
    """A few hot experts: ``hot`` experts (chosen by the seed, the same for the whole run) get ``boost`` added to
    ``N(0, 1) / temperature`` logits; every token then prefers them."""

    hot: int = 2
    boost: float = 2.0
    temperature: float = 1.0

    def validate(self) -> None:
        _positive("temperature", self.temperature)
        if self.hot < 1:
            raise MoeRouteError(f"workload option hot must be >= 1, got {self.hot}")


@register_workload("hot", HotOptions, "a few hot experts (fixed for the run) with a logit boost")
def hot(groups: int, tokens: int, experts: int, gen: torch.Generator, opts: HotOptions) -> torch.Tensor:
    _count_within("hot", opts.hot, experts)
    chosen = torch.randperm(experts, generator=gen)[: opts.hot]
    bias = torch.zeros(experts)
    bias[chosen] = opts.boost
    return _noise(groups, tokens, experts, gen, opts.temperature) + bias


@dataclass(frozen=True)
class ClusteredOptions:
    """Tokens drawn from ``clusters`` clusters: each cluster has a centroid ``N(0, separation^2)`` over the experts
    (shared by the run); each token takes a uniformly drawn cluster's centroid plus ``N(0, noise^2)``. Inside a
    group the tokens are ordered by cluster, so neighbours want the same experts (the worst case for first-come
    capacity: the first cluster in a group fills its experts before the later ones arrive)."""

    clusters: int = 4
    separation: float = 2.0
    noise: float = 1.0

    def validate(self) -> None:
        _positive("noise", self.noise)
        if self.clusters < 1:
            raise MoeRouteError(f"workload option clusters must be >= 1, got {self.clusters}")
        if not self.separation >= 0:
            raise MoeRouteError(f"workload option separation must be >= 0, got {self.separation}")


@register_workload("clustered", ClusteredOptions, "tokens from a few clusters, neighbours in the same cluster")
def clustered(groups: int, tokens: int, experts: int, gen: torch.Generator, opts: ClusteredOptions) -> torch.Tensor:
    centroids = torch.randn(opts.clusters, experts, generator=gen) * opts.separation
    members = torch.randint(opts.clusters, (groups, tokens), generator=gen).sort(dim=1).values
    return centroids[members] + torch.randn(groups, tokens, experts, generator=gen) * opts.noise


@dataclass(frozen=True)
class RotatingOptions:
    """A hot set that moves from group to group: group ``g`` boosts experts ``(o + g*step + i) mod E`` for
    ``i < hot`` by ``boost`` (``o`` drawn by the seed; ``step`` defaults to ``hot``, so consecutive groups have
    disjoint hot sets). A router carrying state across groups (aux-loss-free bias) is always one group late."""

    hot: int = 4
    boost: float = 2.0
    step: Optional[int] = None
    temperature: float = 1.0

    def validate(self) -> None:
        _positive("temperature", self.temperature)
        if self.hot < 1:
            raise MoeRouteError(f"workload option hot must be >= 1, got {self.hot}")
        if self.step is not None and self.step < 0:
            raise MoeRouteError(f"workload option step must be >= 0, got {self.step}")


@register_workload("rotating", RotatingOptions, "a hot set of experts that moves from group to group")
def rotating(groups: int, tokens: int, experts: int, gen: torch.Generator, opts: RotatingOptions) -> torch.Tensor:
    _count_within("hot", opts.hot, experts)
    step = opts.hot if opts.step is None else opts.step
    offset = int(torch.randint(experts, (1,), generator=gen))
    ids = (offset + torch.arange(groups)[:, None] * step + torch.arange(opts.hot)[None, :]) % experts
    bias = torch.zeros(groups, experts).scatter_(1, ids, opts.boost)
    return _noise(groups, tokens, experts, gen, opts.temperature) + bias[:, None, :]


@dataclass(frozen=True)
class CollapseOptions:
    """Router collapse: each token, with probability ``fraction``, gets ``boost`` added to one expert (drawn by the
    seed, the same for the run) on top of ``N(0, 1) / temperature``; nearly every first choice is that expert."""

    fraction: float = 0.95
    boost: float = 5.0
    temperature: float = 1.0

    def validate(self) -> None:
        _positive("temperature", self.temperature)
        if not 0.0 <= self.fraction <= 1.0:
            raise MoeRouteError(f"workload option fraction must be in [0, 1], got {self.fraction}")


@register_workload("collapse", CollapseOptions, "nearly all tokens prefer one expert (router collapse)")
def collapse(groups: int, tokens: int, experts: int, gen: torch.Generator, opts: CollapseOptions) -> torch.Tensor:
    victim = int(torch.randint(experts, (1,), generator=gen))
    logits = _noise(groups, tokens, experts, gen, opts.temperature)
    hit = torch.rand(groups, tokens, generator=gen) < opts.fraction
    logits[:, :, victim] += hit.float() * opts.boost
    return logits


@dataclass(frozen=True)
class TiesOptions:
    """Many exactly equal logits: each logit is an integer drawn uniformly from ``0 .. levels-1``, times ``scale``.
    With ``E = 16`` and 3 levels a token has about 5 experts tied for its first choice, so routers must break ties
    deterministically and the optimum has many solutions (``levels = 1``: every logit equal)."""

    levels: int = 3
    scale: float = 1.0

    def validate(self) -> None:
        _positive("scale", self.scale)
        if self.levels < 1:
            raise MoeRouteError(f"workload option levels must be >= 1, got {self.levels}")


@register_workload("ties", TiesOptions, "quantised logits with many exact ties")
def ties(groups: int, tokens: int, experts: int, gen: torch.Generator, opts: TiesOptions) -> torch.Tensor:
    return torch.randint(opts.levels, (groups, tokens, experts), generator=gen).float() * opts.scale


@dataclass(frozen=True)
class ForceBiasedOptions:
    """Megatron-Core's ``moe_router_force_biased`` benchmark logits: the router's logits replaced by ``N(0, 1)`` and
    one per-expert bias ``N(0, std^2)`` added, the same bias for every group (Megatron draws it with a seed shared by
    all ranks, so every rank's local batch -- here every group -- sees the same hot experts). Megatron draws a new
    bias each forward pass for ``std > 0`` and keeps one per layer for ``std < 0``; one workload is one draw."""

    std: float = 1.0

    def validate(self) -> None:
        if not self.std >= 0 or math.isinf(self.std):
            raise MoeRouteError(f"workload option std must be a finite number >= 0, got {self.std}")


@register_workload("force_biased", ForceBiasedOptions,
                   "N(0,1) logits plus one per-expert N(0, std^2) bias shared by all groups (Megatron force_biased)")
def force_biased(groups: int, tokens: int, experts: int, gen: torch.Generator, opts: ForceBiasedOptions) -> torch.Tensor:
    logits = torch.randn(groups, tokens, experts, generator=gen)
    bias = torch.randn(experts, generator=gen) * opts.std
    return logits + bias

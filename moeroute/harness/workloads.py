"""Seeded synthetic router logits ``[G, T, E]``: named generators with documented parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from moeroute.errors import MoeRouteError
from moeroute.options import build_options, parse_spec

Generator = Callable[[int, int, int, torch.Generator, Any], torch.Tensor]


@dataclass(frozen=True)
class Workload:
    name: str
    fn: Generator
    options: type
    description: str


_WORKLOADS: dict[str, Workload] = {}


def register_workload(name: str, options: type, description: str) -> Callable[[Generator], Generator]:
    def wrap(fn: Generator) -> Generator:
        _WORKLOADS[name] = Workload(name, fn, options, description)
        return fn

    return wrap


def workload_names() -> list[str]:
    return sorted(_WORKLOADS)


def workload(name: str) -> Workload:
    if name not in _WORKLOADS:
        raise MoeRouteError(f"unknown workload {name!r} (known: {', '.join(workload_names())})")
    return _WORKLOADS[name]


def synthetic_logits(spec: str, groups: int, tokens: int, experts: int, seed: int = 0) -> torch.Tensor:
    """Logits ``[groups, tokens, experts]`` from the workload ``spec`` (``name`` or ``name:key=value,...``),
    the same for the same seed on every machine (a CPU ``torch.Generator``)."""
    for what, value in (("groups", groups), ("tokens", tokens), ("experts", experts)):
        if value < 1:
            raise MoeRouteError(f"{what} must be >= 1, got {value}")
    name, raw = parse_spec(spec)
    w = workload(name)
    opts = build_options(w.options, raw, f"workload {name!r}")
    gen = torch.Generator().manual_seed(int(seed))
    return w.fn(groups, tokens, experts, gen, opts).float()


@dataclass(frozen=True)
class GaussOptions:
    """``temperature``: logits are ``N(0, 1) / temperature`` (lower = sharper preferences)."""

    temperature: float = 1.0

    def validate(self) -> None:
        if not self.temperature > 0:
            raise MoeRouteError(f"temperature must be > 0, got {self.temperature}")


@register_workload("gauss", GaussOptions, "i.i.d. Gaussian logits divided by a temperature")
def gauss(groups: int, tokens: int, experts: int, gen: torch.Generator, opts: GaussOptions) -> torch.Tensor:
    return torch.randn(groups, tokens, experts, generator=gen) / opts.temperature


@dataclass(frozen=True)
class SkewOptions:
    """Gaussian logits plus a per-expert popularity bias ``N(0, bias^2)`` shared by every token of a run."""

    temperature: float = 1.0
    bias: float = 1.0

    def validate(self) -> None:
        GaussOptions(self.temperature).validate()


@register_workload("skew", SkewOptions, "Gaussian logits plus a per-expert popularity bias (some experts hot)")
def skew(groups: int, tokens: int, experts: int, gen: torch.Generator, opts: SkewOptions) -> torch.Tensor:
    popularity = torch.randn(experts, generator=gen) * opts.bias
    return torch.randn(groups, tokens, experts, generator=gen) / opts.temperature + popularity

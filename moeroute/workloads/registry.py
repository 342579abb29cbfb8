"""The registry of seeded synthetic workloads: a generator of logits ``[G, T, E]`` registered by name with a
dataclass of documented options (its docstring is the documentation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.options import build_options, parse_spec
from moeroute.core.registry import Registry

Generator = Callable[[int, int, int, torch.Generator, Any], torch.Tensor]


@dataclass(frozen=True)
class Workload:
    name: str
    fn: Generator
    options: type
    description: str


WORKLOADS: Registry[Workload] = Registry("workload")


def register_workload(name: str, options: type, description: str) -> Callable[[Generator], Generator]:
    def wrap(fn: Generator) -> Generator:
        WORKLOADS.add(name, Workload(name, fn, options, description), same=lambda old: old.fn is fn)
        return fn

    return wrap


def workload_names() -> list[str]:
    return WORKLOADS.names()


def workload(name: str) -> Workload:
    return WORKLOADS.get(name)


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

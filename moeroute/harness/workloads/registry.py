"""The registry of seeded synthetic workloads: a generator of logits ``[G, T, E]`` registered by name with a
dataclass of documented options (its docstring is the documentation)."""

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

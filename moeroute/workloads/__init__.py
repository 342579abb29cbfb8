"""Workloads: where router logits ``[G, T, E]`` come from. Seeded synthetic families (``registry.py`` +
``synthetic.py``) and logits captured from a real model (``captured.py``, spec ``captured:PATH[:KEY]``; readers in ``files.py`` and
``megatron.py``); recorded routings without scores (``routings.py``)."""

from __future__ import annotations

from typing import Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.options import build_options, parse_spec
from moeroute.workloads import synthetic as _synthetic  # noqa: F401  (registers the families)
from moeroute.workloads.captured import (
    captured_experts,
    captured_logits,
    captured_settings,
    captured_shape,
    captured_source,
    captured_tokens,
    expand_captured,
    is_captured,
    leftover_note,
    parse_captured,
    read_windows,
)
from moeroute.workloads.registry import (
    Workload,
    register_workload,
    synthetic_logits,
    workload,
    workload_names,
)


def check_workload(spec: str) -> None:
    """Refuse an unknown workload, a bad option or an unreadable captured file before any work."""
    if is_captured(spec):
        captured_experts(spec)
        return
    name, raw = parse_spec(spec)
    build_options(workload(name).options, raw, f"workload {name!r}")


def workload_logits(spec: str, groups: int, tokens: int, experts: Optional[int], seed: int = 0) -> torch.Tensor:
    """Logits ``[groups, tokens, E]`` for any workload spec: a synthetic family (``E = experts``) or
    ``captured:PATH[:KEY]`` (``E`` is the file's; ``experts``, when given, must match it)."""
    if is_captured(spec):
        logits = captured_logits(spec, groups, tokens, seed)
        if experts is not None and experts != logits.shape[2]:
            raise MoeRouteError(f"{spec}: the logits have E={logits.shape[2]} experts, not {experts}")
        return logits
    if experts is None:
        raise MoeRouteError(f"workload {spec!r} needs a number of experts")
    return synthetic_logits(spec, groups, tokens, experts, seed)


__all__ = [
    "Workload",
    "captured_experts",
    "captured_logits",
    "captured_settings",
    "captured_shape",
    "captured_source",
    "captured_tokens",
    "expand_captured",
    "leftover_note",
    "read_windows",
    "check_workload",
    "is_captured",
    "parse_captured",
    "register_workload",
    "synthetic_logits",
    "workload",
    "workload_logits",
    "workload_names",
]

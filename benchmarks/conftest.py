"""Shared set-up of the pytest-benchmark suite (benchmarks/README.md): one torch thread, as ``moeroute bench``, and
prepared routing problems cached per session so that only the timed calls count."""

from __future__ import annotations

from functools import lru_cache

import torch

from moeroute.core.problem import RouterInput, make_input
from moeroute.workloads import synthetic_logits

torch.set_num_threads(1)


@lru_cache(maxsize=None)
def problem(workload: str, groups: int, tokens: int, experts: int, k: int, cf: float = 1.0) -> RouterInput:
    """A routing problem of the given shape (seed 0), built once per session."""
    return make_input(synthetic_logits(workload, groups, tokens, experts, 0), k, cf)

"""Shared test helpers: seeded logits and the invariant checks every router must pass."""

from __future__ import annotations

import torch


def seeded_logits(groups: int, tokens: int, experts: int, seed: int = 0, skew: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    bias = torch.randn(experts, generator=gen) * skew
    return torch.randn(groups, tokens, experts, generator=gen) + bias

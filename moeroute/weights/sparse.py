"""Sparse combine weights: sparsemax and 1.5-entmax over each token's *assigned* experts.

Decision: the mapping runs over the experts the router assigned (the logits ``log p`` of the filled slots; both
maps are shift-invariant, so ``log softmax`` equals the logits here), not over all ``E`` experts. Over all experts,
an assigned expert could get weight 0 while an unassigned one takes mass that is then lost; over the assigned
ones, every token with at least one expert gets weights that sum to 1, with the weakest of its experts possibly
at exactly 0. Empty slots get 0; a token with no expert gets all zeros. ``temperature`` does not apply.
"""

from __future__ import annotations

import torch

from moeroute.core.routing import EMPTY
from moeroute.weights import CommonOptions, register_weight_op

_NEG = -float("inf")


def _slot_logits(scores: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """``log S`` of each filled slot ``[G, T, R]``, ``-inf`` on empty slots and on zero scores (gradient-safe:
    no ``log 0`` on the backward path)."""
    picked = torch.gather(scores, 2, experts.clamp(min=0))
    ok = (experts != EMPTY) & (picked > 0)
    logs = torch.log(torch.where(ok, picked, torch.ones_like(picked)))
    return torch.where(ok, logs, torch.full_like(logs, _NEG))


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Sparsemax along the last dim (Martins & Astudillo 2016): the Euclidean projection of ``z`` onto the
    simplex, ``max(z - tau, 0)``. ``-inf`` entries get 0; an all ``-inf`` row gives zeros. Sort-based, exact."""
    n = z.shape[-1]
    finite = torch.isfinite(z)
    zs, _ = torch.sort(torch.where(finite, z, torch.full_like(z, _NEG)), dim=-1, descending=True)
    valid = torch.isfinite(zs)
    zs0 = torch.where(valid, zs, torch.zeros_like(zs))
    rho = torch.arange(1, n + 1, device=z.device, dtype=z.dtype)
    csum = torch.cumsum(zs0, dim=-1)
    support = valid & (1 + rho * zs0 > csum)
    size = support.sum(dim=-1, keepdim=True)
    tau = (torch.gather(csum, -1, (size - 1).clamp(min=0)) - 1) / size.clamp(min=1).to(z.dtype)
    out = torch.clamp(torch.where(finite, z, torch.zeros_like(z)) - tau, min=0)
    return torch.where(finite & (size > 0), out, torch.zeros_like(out))


def entmax15(z: torch.Tensor) -> torch.Tensor:
    """1.5-entmax along the last dim (Peters, Niculae & Martins 2019): ``max(z/2 - tau, 0)^2`` with ``tau`` such
    that the result sums to 1; exact sort-based threshold. ``-inf`` entries get 0; an all ``-inf`` row gives zeros."""
    n = z.shape[-1]
    finite = torch.isfinite(z)
    half = torch.where(finite, z / 2, torch.zeros_like(z))
    zs, _ = torch.sort(torch.where(finite, half, torch.full_like(z, _NEG)), dim=-1, descending=True)
    valid = torch.isfinite(zs)
    zs0 = torch.where(valid, zs, torch.zeros_like(zs))
    rho = torch.arange(1, n + 1, device=z.device, dtype=z.dtype)
    mean = torch.cumsum(zs0, dim=-1) / rho
    mean_sq = torch.cumsum(zs0 * zs0, dim=-1) / rho
    delta = (1 - rho * (mean_sq - mean * mean)) / rho
    # sqrt of a clamped value: its gradient is infinite at exactly 0, so keep it off the gradient path there.
    root = torch.sqrt(torch.where(delta > 0, delta, torch.ones_like(delta)))
    tau = torch.where(valid, mean - torch.where(delta > 0, root, torch.zeros_like(root)), torch.full_like(zs, float("inf")))
    size = (valid & (tau <= zs0)).sum(dim=-1, keepdim=True)
    tau_star = torch.gather(tau, -1, (size - 1).clamp(min=0))
    out = torch.clamp(half - tau_star, min=0) ** 2
    return torch.where(finite & (size > 0), out, torch.zeros_like(out))


@register_weight_op("sparsemax")
def sparsemax_weights(scores: torch.Tensor, experts: torch.Tensor, options: CommonOptions) -> torch.Tensor:
    """Sparsemax of the assigned experts' logits ``[G, T, R]`` (sums to 1 per token with an expert)."""
    return sparsemax(_slot_logits(scores, experts))


@register_weight_op("entmax15")
def entmax15_weights(scores: torch.Tensor, experts: torch.Tensor, options: CommonOptions) -> torch.Tensor:
    """1.5-entmax of the assigned experts' logits ``[G, T, R]`` (sums to 1 per token with an expert)."""
    return entmax15(_slot_logits(scores, experts))

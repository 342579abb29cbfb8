"""Capacity enforcement shared by every queue-based router: who gets a slot when more tokens want an expert than
it can take."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import RouterInput
from moeroute.core.routing import EMPTY, expert_load
from moeroute.solvers.sync import use_numpy

__all__ = ["apply_capacity", "expert_load", "keep_within_capacity", "queue_positions", "rank_major", "token_major"]


def _queue_positions_numpy(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """:func:`queue_positions` in token order on CPU: the same integer arithmetic in numpy, whose stable argsort
    of 16-bit keys is a radix sort, orders of magnitude faster than torch's stable sort on CPU, and torch's index
    and gather ops of this size wait for their parallel regions on a loaded machine, so the whole queue runs
    single-threaded in numpy (benchmarks/PERF.md)."""
    g, p = ids.shape
    n_keys = g * (num_experts + 1)
    bucket = np.where(ids < 0, num_experts, ids)
    keys = (bucket + np.arange(g)[:, None] * (num_experts + 1)).reshape(-1)
    perm = np.argsort(keys.astype(np.uint16 if n_keys <= 1 << 16 else np.int64), kind="stable")
    counts = np.bincount(keys, minlength=n_keys)
    starts = np.cumsum(counts) - counts
    pos = np.empty(g * p, dtype=np.int64)
    pos[perm] = np.arange(g * p) - starts[keys[perm]]
    return pos.reshape(g, p)


def queue_positions(
    proposals: torch.Tensor, num_experts: int, priority: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Each proposal's place in its expert's queue: long ``[G, P]``, 0 for the first in line.

    ``proposals`` ``[G, P]`` holds expert ids (``-1`` = no proposal, which queues for nothing). The queue is the
    proposal order along ``P`` (first come, first served), or ``priority`` ``[G, P]`` descending with the proposal
    order breaking ties. Implemented as a stable sort of the expert ids, not a one-hot ``[P, E]`` cumsum: the same
    positions, bit for bit, for ``O(P log P)`` instead of ``O(P E)`` work (benchmarks/PERF.md).
    On CPU the sort and the index arithmetic run in numpy (see :func:`_queue_positions_numpy`).
    """
    g, p = proposals.shape
    device = proposals.device
    if use_numpy(device):
        ids = proposals.numpy()
        order = None
        if priority is not None:
            # Descending and stable, like torch.sort(descending=True, stable=True): ties keep proposal order.
            order = np.argsort(-priority.detach().numpy(), axis=1, kind="stable")
            ids = np.take_along_axis(ids, order, axis=1)
        pos = _queue_positions_numpy(ids, num_experts)
        if order is not None:
            out = np.empty_like(pos)
            np.put_along_axis(out, order, pos, axis=1)
            pos = out
        return torch.from_numpy(pos)
    return _queue_positions_torch(proposals, num_experts, priority)


def _queue_positions_torch(
    proposals: torch.Tensor, num_experts: int, priority: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """:func:`queue_positions` in torch, for any device (used off CPU)."""
    g, p = proposals.shape
    device = proposals.device
    order = torch.arange(p, device=device).expand(g, p)
    ids = proposals
    if priority is not None:
        order = torch.sort(priority, dim=1, descending=True, stable=True).indices
        ids = torch.gather(proposals, 1, order)
    # One flat key space: group g, expert e -> g*(E+1) + e; the empty proposal -1 gets its own bucket E.
    bucket = torch.where(ids < 0, torch.full_like(ids, num_experts), ids)
    keys = (bucket + torch.arange(g, device=device).unsqueeze(1) * (num_experts + 1)).reshape(-1)
    sorted_keys, perm = torch.sort(keys, stable=True)
    counts = torch.bincount(keys, minlength=g * (num_experts + 1))
    starts = torch.cumsum(counts, 0) - counts
    pos_sorted = torch.arange(keys.numel(), device=device) - starts[sorted_keys]
    pos_in_order = torch.empty_like(pos_sorted).scatter_(0, perm, pos_sorted).reshape(g, p)
    if priority is None:
        return pos_in_order
    return torch.empty_like(pos_in_order).scatter_(1, order, pos_in_order)


def keep_within_capacity(
    proposals: torch.Tensor,
    capacity: Optional[int],
    num_experts: int,
    priority: Optional[torch.Tensor] = None,
    used: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Bool ``[G, P]``: which proposals fit, given ``capacity`` and the load ``used`` ``[G, E]`` already taken.

    A proposal of ``-1`` is never kept. ``capacity=None`` keeps every real proposal.
    """
    real = proposals >= 0
    if capacity is None:
        return real
    pos = queue_positions(proposals, num_experts, priority)
    if used is not None:
        pos = pos + torch.gather(used, 1, proposals.clamp(min=0))
    return real & (pos < capacity)


def rank_major(x: torch.Tensor) -> torch.Tensor:
    """``[G, T, R] -> [G, R*T]`` so that all rank-0 entries come first, in token order, then rank 1, ..."""
    return x.transpose(1, 2).reshape(x.shape[0], -1)


def token_major(x: torch.Tensor, tokens: int) -> torch.Tensor:
    """Inverse of :func:`rank_major`: ``[G, R*T] -> [G, T, R]``."""
    return x.reshape(x.shape[0], -1, tokens).transpose(1, 2)


def apply_capacity(
    x: RouterInput,
    preferred: torch.Tensor,
    drop_policy: str = "position",
    order: str = "rank",
    priority: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The project's capacity rule applied to ranked proposals: ``preferred`` long ``[G, T, R]`` (each token's
    experts, best first; ``-1`` = no proposal) comes back with the slots that do not fit ``x.capacity`` set to
    ``-1``. Without a capacity (``x.capacity is None``) nothing is dropped. This is the helper a plugin router
    builds on.

    ``drop_policy="position"``: first come, first served, in the proposal order ``order``:
    ``"rank"`` -- every rank-0 proposal of the group in token order, then every rank-1 proposal, ... (DeepSpeed
    ``top2gating``); ``"token"`` -- token by token, each token's proposals together (DeepSpeed ``topkgating``).
    ``drop_policy="probs"``: per expert the highest ``priority`` ``[G, T, R]`` are kept (default: the scores of
    the proposals, ``x.scores``; the top-k routers pass their Megatron-Core probs), equal priorities in the proposal
    order ``order``. Megatron-Core's ``position`` policy has no equivalent: it keeps the subset ``torch.topk``
    picks among equal 0/1 entries (docs/routers.md)."""
    if drop_policy not in ("position", "probs"):
        raise MoeRouteError(f"drop_policy must be 'position' or 'probs', got {drop_policy!r}")
    if order not in ("rank", "token"):
        raise MoeRouteError(f"order must be 'rank' or 'token', got {order!r}")
    if x.capacity is None:
        return preferred
    g, t, r = preferred.shape
    if order == "rank":
        flat, unflat = rank_major, lambda a: token_major(a, t)
    else:
        flat, unflat = (lambda a: a.reshape(g, t * r)), (lambda a: a.reshape(g, t, r))
    rank_by = None
    if drop_policy == "probs":
        if priority is None:
            priority = torch.gather(x.scores, 2, preferred.clamp(min=0))
        rank_by = flat(priority.detach())
    keep = keep_within_capacity(flat(preferred), x.capacity, x.experts, rank_by)
    return torch.where(unflat(keep), preferred, torch.full_like(preferred, EMPTY))

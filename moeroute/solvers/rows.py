"""Two sorting primitives the price solver and the routers built on it need many times per call, with one meaning
on every device and a faster path on CPU.

- :func:`row_top`: the ``m`` largest entries of each row, values and positions, ties to the lower position.
- :func:`segment_kth`: the ``k``-th smallest value of each segment of a flat list (a per-expert order statistic).

Both sort integer keys that hold a float's order in their upper bits (:func:`order_key`): integers sort faster than
floats and the key makes ties deterministic. On CPU they run in numpy, whose row and flat sorts use SIMD sorting
networks and are several times faster than ``torch.topk``/``torch.sort`` on the small rows routing produces (the
measurements are in benchmarks/PERF.md); elsewhere they are plain torch ops, with no host synchronisation.
"""

from __future__ import annotations

import numpy as np
import torch

from moeroute.solvers.sync import use_numpy

_LOW = 0xFFFFFFFF
_HALF = 1 << 31


def order_key(values: torch.Tensor) -> torch.Tensor:
    """int64 keys, same shape, whose ascending order is the ascending order of float32 ``values`` (equal values,
    equal keys; ``-0.0 == +0.0``). The float's bits with the non-sign bits flipped for negatives are a monotone
    signed integer."""
    bits = (values.float() + 0.0).view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()


def _from_order_key(keys: torch.Tensor) -> torch.Tensor:
    """float32 values of :func:`order_key` keys (the inverse map)."""
    bits = keys.to(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).view(torch.float32)


def row_top(values: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m`` largest entries along the last dim of float32 ``values`` ``[..., N]``, largest first, ties to the
    lower position: float32 values ``[..., m]`` and long positions ``[..., m]``. Where ``m > N`` the missing entries
    are ``-inf`` at position ``N`` (there is no such entry)."""
    *lead, n = values.shape
    take = min(m, n)
    flat = values.reshape(-1, n)
    # Upper 32 bits: the value's order; lower 32: the position reversed, so that among equals the lower one wins.
    keys = (order_key(flat) << 32) | (_LOW - torch.arange(n, device=values.device))
    if use_numpy(values.device) and flat.shape[0] > 0:
        k = keys.numpy()
        part = np.partition(k, n - take, axis=1)[:, n - take:] if take < n else k
        top = torch.from_numpy(np.ascontiguousarray(np.sort(part, axis=1)[:, ::-1]))
    else:
        top = torch.topk(keys, take, dim=1).values
    vals = _from_order_key(top >> 32)
    pos = _LOW - (top & _LOW)
    if take < m:
        pad = m - take
        vals = torch.cat([vals, vals.new_full((vals.shape[0], pad), -float("inf"))], dim=1)
        pos = torch.cat([pos, pos.new_full((pos.shape[0], pad), n)], dim=1)
    return vals.view(*lead, m), pos.view(*lead, m)


def segment_kth(values: torch.Tensor, segment: torch.Tensor, num_segments: int, kth: torch.Tensor) -> torch.Tensor:
    """The ``kth[s]``-th smallest (1-based) of the float32 ``values`` ``[P]`` whose ``segment`` ``[P]`` is ``s``, for
    every ``s < num_segments``: float32 ``[num_segments]``; 0 where ``kth[s] < 1``, the segment's largest value where
    ``kth[s]`` exceeds its size. Entries whose segment is outside ``[0, num_segments)`` are ignored (a spare
    segment for entries that belong nowhere). One sort of ``(segment, value)`` keys."""
    seg = segment.clamp(0, num_segments)
    # The value's order shifted to an unsigned 32-bit field below the segment id.
    keys = (seg << 32) | (order_key(values) + _HALF)
    if use_numpy(keys.device):
        ordered = torch.from_numpy(np.sort(keys.numpy()))
    else:
        ordered = torch.sort(keys).values
    counts = torch.bincount(seg, minlength=num_segments + 1)[:num_segments]
    starts = torch.cumsum(counts, 0) - counts
    want = torch.minimum(kth, counts).clamp(min=1)
    at = (starts + want - 1).clamp(0, max(ordered.numel() - 1, 0))
    picked = _from_order_key((ordered[at] & _LOW) - _HALF) if ordered.numel() else values.new_zeros(num_segments)
    return torch.where((kth >= 1) & (counts > 0), picked, torch.zeros_like(picked))

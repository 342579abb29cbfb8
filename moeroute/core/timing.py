"""Latency: the median of repeated calls after warm-up, with device synchronisation on GPU."""

from __future__ import annotations

import statistics
import time
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_latency(
    fn: Callable[[], T], device: torch.device, repeats: int = 5, warmup: int = 1, budget_s: float = 2.0
) -> tuple[T, float, int]:
    """Call ``fn`` ``warmup`` times, then up to ``repeats`` times (stopping early once ``budget_s`` is spent, but
    after at least one timed call). Returns the first result, the median milliseconds and the timed calls."""
    result = fn()
    for _ in range(max(0, warmup - 1)):
        fn()
    synchronize(device)
    times = []
    spent = 0.0
    while len(times) < max(1, repeats) and (not times or spent < budget_s):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return result, statistics.median(times) * 1e3, len(times)

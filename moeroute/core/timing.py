"""One timer for every latency the project reports: round-robin calls after warm-up, medians, and device
synchronisation around every timed call on an accelerator (a GPU kernel is only done once the device says so)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Optional, TypeVar

import torch

T = TypeVar("T")


def synchronize(device: Optional[torch.device]) -> None:
    """Wait for the device's queued work (CUDA, MPS); nothing on CPU."""
    if device is None:
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 1,
    budget_s: float = 5.0,
    device: Optional[torch.device] = None,
) -> dict[str, tuple[Any, float, int]]:
    """Time several callables round-robin (one call of each per round), so that load from other processes hits
    all of them alike. Each is called ``warmup`` times first (the first call's result is kept), then up to
    ``repeats`` timed times; one stops being timed once it has spent ``budget_s`` (after at least one timed call).
    Returns ``name -> (first result, median ms, timed calls)``."""
    first = {}
    for name, fn in fns.items():
        first[name] = fn()
    for _ in range(max(0, warmup - 1)):
        for fn in fns.values():
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            if times[name] and sum(times[name]) > budget_s:
                continue
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: (first[name], statistics.median(times[name]) * 1e3, len(times[name])) for name in fns}


def median_latency(
    fn: Callable[[], T], device: Optional[torch.device] = None, repeats: int = 5, warmup: int = 1, budget_s: float = 2.0
) -> tuple[T, float, int]:
    """:func:`interleaved` for one callable: its first result, the median milliseconds and the timed calls."""
    return interleaved({"fn": fn}, repeats, warmup, budget_s, device)["fn"]

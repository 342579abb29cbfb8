"""When an iterative loop may ask the host whether it is done.

Reading a device value on the host (``bool(t)``, ``t.item()``, ``t.tolist()``, ``torch.nonzero``) waits for every
queued kernel: on a GPU, one such synchronisation per iteration can cost more than the iteration. Loops in this
project therefore test convergence every :data:`CHECK_EVERY` iterations on an accelerator and cap their iterations;
on CPU a test is free, so they test every iteration and may take numpy fast paths. docs/gpu.md lists the
synchronisations of every router.

:func:`as_on_accelerator` makes CPU code take the accelerator paths, so that tests can count the
synchronisations a GPU would make (tests/test_gpu_ready.py).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

CHECK_EVERY = 4
"""Iterations between two convergence tests on an accelerator."""

_SIMULATE = [False]


def on_accelerator(device: torch.device) -> bool:
    """Whether code on ``device`` must avoid host synchronisation (any device but the CPU, or a simulated one)."""
    return device.type != "cpu" or _SIMULATE[0]


def use_numpy(device: torch.device) -> bool:
    """Whether a CPU fast path in numpy may be taken on ``device``."""
    return not on_accelerator(device)


def check_now(device: torch.device, it: int, every: int = CHECK_EVERY) -> bool:
    """Whether iteration ``it`` (0-based) of a loop should test convergence on the host: every iteration on CPU,
    every ``every``-th one (``it = every - 1, 2 * every - 1, ...``) on an accelerator."""
    return not on_accelerator(device) or (it + 1) % max(1, every) == 0


def check_doubling(device: torch.device, it: int) -> bool:
    """:func:`check_now` for loops whose length grows with the problem (e.g. one round per expert that fills): on an
    accelerator, test after rounds 4, 16, 64, 256, ... only, so that ``E <= 256`` rounds cost at most four
    synchronisations and at most ``4x`` the rounds needed."""
    if not on_accelerator(device):
        return True
    n = it + 1
    return n >= 4 and (n & (n - 1)) == 0 and (n.bit_length() - 1) % 2 == 0


@contextlib.contextmanager
def as_on_accelerator() -> Iterator[None]:
    """Within the block, CPU tensors take the accelerator code paths (no numpy, sparse convergence tests)."""
    before = _SIMULATE[0]
    _SIMULATE[0] = True
    try:
        yield
    finally:
        _SIMULATE[0] = before

"""Count the host synchronisations a router would make on a GPU, on a CPU machine.

Inside :func:`moeroute.solvers.sync.as_on_accelerator` the code takes its accelerator paths; every torch call that
would make the host wait for a GPU is seen by a ``TorchFunctionMode`` and counted: reading a value (``item``, ``tolist``, ``bool``/``int``/``float``
of a tensor, ``numpy``, ``cpu``), ``nonzero`` (its size is data), and indexing with a boolean mask (its result's
size is data). Used by tests/test_gpu_ready.py and to write the table of docs/gpu.md
(``python tests/sync_counter.py``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.overrides import TorchFunctionMode

from moeroute.solvers.sync import as_on_accelerator

_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu", "nonzero", "masked_select",
          "unique", "unique_consecutive"}


def _has_bool_index(index: object) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class _SyncCounter(TorchFunctionMode):
    """Counts the torch calls that would synchronise a GPU (torch calls ``func`` with this mode switched off, so
    nested calls are not counted twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        name = getattr(func, "__name__", "")
        if name in _READS or (name in ("__getitem__", "__setitem__") and len(args) > 1 and _has_bool_index(args[1])):
            self.count += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counting_syncs() -> Iterator[list[int]]:
    """Within the block, ``counter[0]`` counts synchronising calls made with the accelerator paths on (read it
    after the block)."""
    counter = [0]
    mode = _SyncCounter()
    with as_on_accelerator(), mode:
        yield counter
    counter[0] = mode.count


def syncs_of(spec: str, groups: int, tokens: int, experts: int, k: int, workload: str = "skew", seed: int = 0) -> int:
    """Host synchronisations one call of router ``spec`` makes on a problem of the given size (inputs prepared
    outside the count, the routing not checked)."""
    from moeroute.core.problem import make_input
    from moeroute.routers import bind_router
    from moeroute.workloads import synthetic_logits

    x = make_input(synthetic_logits(workload, groups, tokens, experts, seed), k, 1.0)
    bound = bind_router(spec)
    with counting_syncs() as counter:
        bound(x, check=False)
    return counter[0]


if __name__ == "__main__":
    from moeroute.routers import router_names

    sizes = [(4, 256, 16, 2), (2, 2048, 64, 2), (1, 1024, 256, 8)]
    print("| router | " + " | ".join(f"{g}x{t}x{e}, k={k}" for g, t, e, k in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name in router_names():
        cells = []
        for g, t, e, k in sizes:
            try:
                cells.append(str(syncs_of(name, g, t, e, k)))
            except Exception as exc:  # a router that refuses the size (BASE needs k = 1)
                cells.append(f"n/a ({type(exc).__name__})")
        print(f"| {name} | " + " | ".join(cells) + " |")

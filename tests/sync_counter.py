"""Count the host synchronisations a router would make on a GPU, on a CPU machine.

Inside :func:`moeroute.solvers.sync.as_on_accelerator` the code takes its accelerator paths; every call that would
make the host wait for a GPU is wrapped and counted: reading a value (``item``, ``tolist``, ``bool``/``int``/``float``
of a tensor, ``numpy``, ``cpu``), ``nonzero`` (its size is data), and indexing with a boolean mask (its result's
size is data). Used by tests/test_gpu_ready.py and to write the table of docs/gpu.md
(``python tests/sync_counter.py``).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from moeroute.solvers.sync import as_on_accelerator

_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu")


def _has_bool_index(index: object) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


@contextlib.contextmanager
def counting_syncs() -> Iterator[list[int]]:
    """Within the block, ``counter[0]`` counts synchronising calls made with the accelerator paths on."""
    counter = [0]
    saved: dict[str, Callable] = {}
    depth = [0]

    def wrap(fn: Callable) -> Callable:
        def inner(*args, **kwargs):
            if depth[0] == 0:
                counter[0] += 1
            depth[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
        return inner

    def wrap_index(fn: Callable) -> Callable:
        def inner(self, index, *rest):
            if depth[0] == 0 and _has_bool_index(index):
                counter[0] += 1
            return fn(self, index, *rest)
        return inner

    for name in _METHODS:
        saved[name] = getattr(torch.Tensor, name)
        setattr(torch.Tensor, name, wrap(saved[name]))
    saved["nonzero"] = torch.Tensor.nonzero
    torch.Tensor.nonzero = wrap(saved["nonzero"])
    saved["torch.nonzero"] = torch.nonzero
    torch.nonzero = wrap(saved["torch.nonzero"])
    for name in ("__getitem__", "__setitem__"):
        saved[name] = getattr(torch.Tensor, name)
        setattr(torch.Tensor, name, wrap_index(saved[name]))
    try:
        with as_on_accelerator():
            yield counter
    finally:
        for name, fn in saved.items():
            if name == "torch.nonzero":
                torch.nonzero = fn
            else:
                setattr(torch.Tensor, name, fn)


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

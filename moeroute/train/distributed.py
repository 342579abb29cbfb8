"""Data parallelism for the training ablation on ``torch.distributed`` (see docs/training.md).

``torchrun --nproc_per_node N -m moeroute train CONFIG`` starts N processes; each builds the same model from the
same seed, takes its share of every global batch (:func:`moeroute.train.data.rank_micro_batches`) and averages
gradients with DDP. The backend follows the device: gloo on CPU, nccl on CUDA (one GPU per process, chosen by
``LOCAL_RANK``). Outside torchrun the same code runs in one process with every collective the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from moeroute.core.device import resolve_device
from moeroute.core.errors import MoeRouteError

REDUCE_OPS = ("sum", "mean", "max")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world`` data-parallel processes, its ``device``, and the
    ``backend`` of the process group (empty: one process, no group)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = ""

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files (logs, checkpoints, captures, reports)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return bool(self.backend) and self.world > 1

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``tensor`` reduced over the data-parallel ranks (``op`` ``"sum"``, ``"mean"`` or ``"max"``), as a new
        tensor (the argument is left as it was); the identity, as a copy, in one process. This is the
        ``all_reduce`` a router's ``step_update`` receives (moeroute/routers/registry.py)."""
        if op not in REDUCE_OPS:
            raise MoeRouteError(f"all_reduce op must be one of {', '.join(REDUCE_OPS)}, got {op!r}")
        out = tensor.detach().clone()
        if not self.distributed:
            return out
        import torch.distributed as dist

        if op == "max":
            dist.all_reduce(out, op=dist.ReduceOp.MAX)
            return out
        dist.all_reduce(out, op=dist.ReduceOp.SUM)  # gloo has no AVG: sum, then divide
        return out / self.world if op == "mean" else out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or anything that sets its ``RANK``/``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError:
        raise MoeRouteError(f"environment variable {name}={text!r} is not an integer") from None


def init_distributed(device: str, timeout_s: Optional[float] = None) -> DistContext:
    """The :class:`DistContext` of this process, with the process group started when torchrun launched it.

    The device is resolved first, so ``--device cuda`` without CUDA is one line (exit 2) before any process group
    or file exists. Under torchrun a ``cuda`` device becomes ``cuda:LOCAL_RANK`` and the backend nccl; ``cpu``
    uses gloo. One process (or ``WORLD_SIZE=1``) starts no group."""
    base = resolve_device(device)
    if not launched_by_torchrun():
        return DistContext(device=base)
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise MoeRouteError(f"RANK={rank} and WORLD_SIZE={world} are not a valid data-parallel layout")
    if base.type == "cuda":
        if local >= torch.cuda.device_count():
            raise MoeRouteError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        base = torch.device("cuda", local)
        torch.cuda.set_device(base)
        backend = "nccl"
    elif base.type == "cpu":
        backend = "gloo"
    else:
        raise MoeRouteError(f"data-parallel training runs on cpu (gloo) or cuda (nccl), not {base.type}")
    if world == 1:
        return DistContext(rank, world, local, base, "")
    import datetime

    import torch.distributed as dist

    if not dist.is_available():
        raise MoeRouteError("this torch build has no torch.distributed")
    if not dist.is_initialized():
        kwargs = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
        dist.init_process_group(backend, rank=rank, world_size=world, **kwargs)
    return DistContext(rank, world, local, base, backend)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group ``ctx`` started (a no-op in one process)."""
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``model`` under DDP when there are several ranks (gradients averaged over them in backward), else itself.
    DDP starts by broadcasting rank 0's parameters and buffers, so every replica starts equal."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


__all__ = ["DistContext", "init_distributed", "launched_by_torchrun", "shutdown", "wrap_model"]

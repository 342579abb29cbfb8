"""Recorded routings: which experts a model picked for each token, without the scores (vLLM-style
``routed_experts`` arrays, a Megatron-LM router trace's ``top_indices``). They can be replayed
(:mod:`moeroute.replay`: loads, balance, the drops a capacity would cause) but not re-routed: there are no logits.

An array file (``.npy``, ``.pt``, ``.safetensors``) holds integer expert ids ``(tokens, layers, k)`` (one layer:
``(tokens, k)``), the tensor named ``routed_experts`` or the only integer tensor unless a key names one; ``-1``
marks an empty slot. Formats in docs/traces.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.workloads.files import natural_key, open_tensors

ROUTED_EXPERTS = "routed_experts"


@dataclass(frozen=True)
class RecordedRouting:
    """One layer's recorded routing: expert ids ``experts`` long ``[N, k]`` (``-1``: no expert)."""

    source: str
    layer: str
    experts: torch.Tensor


def _is_trace(path: str) -> bool:
    target = Path(path)
    return target.is_dir() or target.suffix.lower() == ".jsonl"


def _pick_integer(path: str, key: Optional[str]) -> tuple[str, torch.Tensor]:
    tf = open_tensors(path)
    if key is None:
        ints = [k for k in tf.keys() if not tf.tensors[k].dtype.is_floating_point and tf.tensors[k].shape]
        key = ROUTED_EXPERTS if ROUTED_EXPERTS in tf.tensors else (ints[0] if len(ints) == 1 else None)
        if key is None and len(tf.tensors) == 1:  # one tensor, not integer: say what it is below
            key = next(iter(tf.tensors))
        if key is None and ints:
            raise MoeRouteError(f"{path}: holds several integer tensors; choose one with --key ({', '.join(ints)})")
        if key is None:
            raise MoeRouteError(f"{path}: holds no integer expert ids (a routed_experts array (tokens, layers, k)); "
                                f"for router logits use --logits")
    name, info = tf.pick(key or None)
    where = f"{path}" + (f" [{name}]" if name else "")
    if info.dtype.is_floating_point or info.dtype == torch.bool:
        raise MoeRouteError(f"{where}: expected integer expert ids (tokens, layers, k), found {info.dtype}; "
                            f"for router logits use --logits")
    if len(info.shape) not in (2, 3) or 0 in info.shape:
        raise MoeRouteError(f"{where}: expected expert ids of shape (tokens, layers, k) or (tokens, k), got {info.shape}")
    return name, info.read(0, info.shape[0]).long()


def read_routings(path: str, key: Optional[str] = None, layer: Optional[str] = None) -> list[RecordedRouting]:
    """The recorded routings of ``path``, one per layer (``layer`` picks one: an index of the array's layer axis,
    or a Megatron trace's ``layer3`` / ``3`` / ``mtp0.layer1``)."""
    if _is_trace(path):
        from moeroute.workloads.megatron import megatron_routings

        if key is not None:
            raise MoeRouteError(f"{path}: a Megatron router trace has layers, not keys: use --layer")
        layers = megatron_routings(path)
        found = [RecordedRouting(path, name, layers[name]) for name in sorted(layers, key=natural_key)]
    else:
        name, ids = _pick_integer(path, key)
        label = path + (f" [{name}]" if name else "")
        if ids.dim() == 2:
            found = [RecordedRouting(label, "0", ids)]
        else:
            found = [RecordedRouting(label, str(i), ids[:, i, :].contiguous()) for i in range(ids.shape[1])]
    if layer is not None:
        wanted = {layer, f"layer{layer}", layer.removeprefix("layer")}
        found = [r for r in found if r.layer in wanted]
        if not found:
            raise MoeRouteError(f"{path}: no layer {layer!r} (layers: {', '.join(r.layer for r in read_routings(path, key))})")
    return found

"""Read router logits (and recorded routings) from files without loading more than is asked for.

Formats (docs/traces.md):

- ``.safetensors``: named tensors, read through ``safe_open`` slices (only the rows asked for leave the disk);
- ``.pt`` / ``.pth``: a tensor, a dict of tensors, a tuple or list of tensors (Hugging Face
  ``output_router_logits``: one ``[N, E]`` tensor per layer, chosen by index ``0``, ``1``, ...) or any nesting of
  them (keys are dotted paths: ``logits.layer1``, ``router_logits.3``); memory-mapped where the file allows it;
- ``.npy``: one array, memory-mapped;
- a Megatron-LM router trace folder (or one of its ``router_trace_rank*.jsonl`` files): see
  :mod:`moeroute.workloads.megatron`.

A tensor is ``[N, E]``, or ``[G', T', E]`` read as its ``G' * T'`` rows in order. :class:`LogitsSource` reads rows
``[start, stop)`` lazily; :func:`read_tensors` / :func:`load_logits` read whole tensors (small files, tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from moeroute.core.errors import MoeRouteError

SUFFIXES = (".pt", ".pth", ".npy", ".safetensors")
_KIND = {".pt": "PyTorch tensor file", ".pth": "PyTorch tensor file", ".npy": "NumPy .npy file",
         ".safetensors": "safetensors file"}


def natural_key(name: str) -> list:
    """Sort ``layer2`` before ``layer10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of nested dicts, tuples and lists, keyed by its dotted path (list items by index)."""
    if isinstance(data, dict):
        items = [(str(k), v) for k, v in data.items()]
    elif isinstance(data, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(data)]
    else:
        return {prefix: data}
    out: dict[str, Any] = {}
    for name, value in items:
        out.update(flatten(value, f"{prefix}.{name}" if prefix else name))
    return out


def _checked_file(path: str) -> tuple[Path, str]:
    file = Path(path)
    if file.is_dir():
        return file, "dir"
    if not file.is_file():
        raise MoeRouteError(f"logits file not found: {path}")
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        return file, suffix
    if suffix not in SUFFIXES:
        raise MoeRouteError(f"{path}: unsupported file type {suffix!r} (use {', '.join(SUFFIXES)}, or a Megatron "
                            f"router trace folder)")
    if file.stat().st_size == 0:
        raise MoeRouteError(f"{path}: empty file (0 bytes), not a {_KIND[suffix]}")
    return file, suffix


def _damaged(path: str, suffix: str) -> MoeRouteError:
    return MoeRouteError(f"{path}: not a readable {_KIND[suffix]} (damaged or another format)")


@dataclass
class TensorInfo:
    """A tensor in a file, not yet read: its shape, dtype and how to read a range of its first dimension."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    read: Callable[[int, int], torch.Tensor]
    """``read(a, b)``: entries ``[a, b)`` along the first dimension, as a tensor."""


@dataclass
class TensorFile:
    """The tensors of one file by key (``""`` for a file holding a single tensor), unread."""

    path: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)

    def keys(self) -> list[str]:
        return sorted(self.tensors, key=natural_key)

    def pick(self, key: Optional[str]) -> tuple[str, TensorInfo]:
        """The tensor named ``key`` (``None``: the only one)."""
        if not self.tensors:
            raise MoeRouteError(f"{self.path}: holds no tensors")
        if key is None:
            if len(self.tensors) == 1:
                return next(iter(self.tensors.items()))
            raise MoeRouteError(f"{self.path}: holds several tensors; choose one with a key ({_listing(self.keys())})")
        if list(self.tensors) == [""]:
            raise MoeRouteError(f"{self.path}: holds a single tensor; --key {key!r} does not apply")
        if key not in self.tensors:
            raise MoeRouteError(f"{self.path}: no tensor named {key!r} (keys: {_listing(self.keys())})")
        return key, self.tensors[key]


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _from_tensor(t: torch.Tensor) -> TensorInfo:
    if t.dim() == 0:
        return TensorInfo((), t.dtype, lambda a, b: t)
    return TensorInfo(tuple(t.shape), t.dtype, lambda a, b: t[a:b])


def _safetensors(path: str) -> TensorFile:
    from safetensors import safe_open

    _DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
               "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
               "BOOL": torch.bool}
    try:
        with safe_open(path, framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            infos = {}
            for name in fh.keys():
                piece = fh.get_slice(name)
                infos[name] = (tuple(piece.get_shape()), _DTYPES.get(piece.get_dtype(), torch.float32))
    except Exception:  # safetensors raises SafetensorError / OSError / ValueError for a damaged header
        raise _damaged(path, ".safetensors") from None

    def reader(name: str) -> Callable[[int, int], torch.Tensor]:
        def read(a: int, b: int) -> torch.Tensor:
            with safe_open(path, framework="pt") as fh:
                return fh.get_slice(name)[a:b]
        return read

    return TensorFile(path, {name: TensorInfo(shape, dtype, reader(name)) for name, (shape, dtype) in infos.items()},
                      metadata)


def _torch_file(path: str) -> TensorFile:
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a file in the legacy (non-zip) format cannot be memory-mapped
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types (UnpicklingError, RuntimeError, EOFError) for a damaged file
        raise _damaged(path, ".pt") from None
    if isinstance(data, torch.Tensor):
        return TensorFile(path, {"": _from_tensor(data)})
    leaves = flatten(data)
    tensors = {name: _from_tensor(v) for name, v in leaves.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        found = type(data).__name__ if not leaves else f"{type(data).__name__} without tensors"
        raise MoeRouteError(f"{path}: expected a tensor or a (nested) dict, list or tuple of tensors, found {found}")
    return TensorFile(path, tensors)


def _numpy_file(path: str) -> TensorFile:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:  # ValueError / OSError / pickle refusal for a damaged or object array
        raise _damaged(path, ".npy") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiub":
        raise _damaged(path, ".npy")
    dtype = torch.from_numpy(np.zeros(0, dtype=array.dtype)).dtype
    return TensorFile(path, {"": TensorInfo(tuple(array.shape), dtype, lambda a, b: torch.from_numpy(np.array(array[a:b])))})


def open_tensors(path: str) -> TensorFile:
    """The tensors of ``path`` (any supported format, a Megatron trace folder included), not yet read."""
    file, kind = _checked_file(path)
    if kind in ("dir", ".jsonl"):
        from moeroute.workloads.megatron import megatron_logits

        return megatron_logits(path)
    if kind == ".safetensors":
        return _safetensors(str(file))
    if kind == ".npy":
        return _numpy_file(str(file))
    return _torch_file(str(file))


@dataclass
class LogitsSource:
    """Router logits ``[N, E]`` in a file, read lazily: :meth:`rows` reads only the rows asked for."""

    path: str
    key: Optional[str]
    tokens: int
    experts: int
    dtype: torch.dtype
    _info: TensorInfo
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def group_tokens(self) -> Optional[int]:
        """``T'`` of a file stored as ``[G', T', E]`` (its own groups); ``None`` for ``[N, E]``."""
        return self._info.shape[1] if len(self._info.shape) == 3 else None

    @property
    def label(self) -> str:
        return self.path + (f" [{self.key}]" if self.key else "")

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` as float32 ``[stop - start, E]``."""
        shape = self._info.shape
        if len(shape) == 2:
            block = self._info.read(start, stop)
        else:  # [G', T', E]: read the groups that hold the rows, then cut
            per = shape[1]
            first, last = start // per, (stop - 1) // per + 1
            block = self._info.read(first, last).reshape(-1, shape[2])[start - first * per: stop - first * per]
        return block.float()

    def windows(self, indices: "list[int] | torch.Tensor", size: int) -> torch.Tensor:
        """Windows ``i * size .. (i + 1) * size`` for each ``i`` of ``indices``, as float32 ``[len, size, E]``."""
        picked = [int(i) for i in indices]
        if not picked:
            return torch.empty(0, size, self.experts)
        return torch.stack([self.rows(i * size, (i + 1) * size) for i in picked])


def open_logits(path: str, key: Optional[str] = None) -> LogitsSource:
    """The logits tensor ``key`` of ``path`` as a lazy :class:`LogitsSource`; its rank and dtype are checked from
    the file's header alone (NaN and infinite values are refused when rows are read)."""
    tf = open_tensors(path)
    name, info = tf.pick(key)
    where = path + (f" [{name}]" if name else "")
    if not (info.dtype.is_floating_point):
        raise MoeRouteError(f"{where}: logits must be floating point, got dtype {info.dtype}")
    if len(info.shape) not in (2, 3):
        raise MoeRouteError(f"{where}: logits must have shape [N, E] or [G, T, E], got {info.shape}")
    tokens = int(np.prod(info.shape[:-1]))
    if tokens == 0 or info.shape[-1] == 0:
        raise MoeRouteError(f"{where}: logits are empty: shape {info.shape}")
    return LogitsSource(path, name or None, tokens, int(info.shape[-1]), info.dtype, info, tf.metadata)


def logit_keys(path: str) -> list[str]:
    """The keys of ``path`` that hold logits (floating-point ``[N, E]`` or ``[G, T, E]`` tensors), in natural order;
    ``[""]`` for a file holding one such tensor."""
    tf = open_tensors(path)
    keys = [k for k in tf.keys() if tf.tensors[k].dtype.is_floating_point and len(tf.tensors[k].shape) in (2, 3)]
    if not keys:
        raise MoeRouteError(f"{path}: holds no logits ([N, E] floating-point tensors; keys: {_listing(tf.keys())})")
    return keys


def read_tensors(path: str) -> "torch.Tensor | dict[str, torch.Tensor]":
    """Everything a logits file holds, read whole: one tensor, or a dict of named tensors (dotted paths for nested
    containers)."""
    tf = open_tensors(path)
    whole = {name: info.read(0, info.shape[0] if info.shape else 1) for name, info in tf.tensors.items()}
    return whole[""] if list(whole) == [""] else whole


def load_logits(path: str, key: Optional[str] = None) -> torch.Tensor:
    """The whole tensor ``key`` of ``path`` (``None``: its only one); its shape is checked by the router input."""
    tf = open_tensors(path)
    _, info = tf.pick(key)
    return info.read(0, info.shape[0] if info.shape else 1)

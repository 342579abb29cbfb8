"""Load router logits from ``.pt`` (a tensor, or a dict of tensors chosen by key), ``.npy`` or ``.safetensors``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from moeroute.core.errors import MoeRouteError

SUFFIXES = (".pt", ".pth", ".npy", ".safetensors")
_KIND = {".pt": "PyTorch tensor file", ".pth": "PyTorch tensor file", ".npy": "NumPy .npy file",
         ".safetensors": "safetensors file"}


def _pick(tensors: dict, key: Optional[str], path: str) -> torch.Tensor:
    if not tensors:
        raise MoeRouteError(f"{path}: holds no tensors")
    if key is None:
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        raise MoeRouteError(f"{path}: holds several tensors; choose one with a key ({', '.join(map(str, tensors))})")
    if key not in tensors:
        raise MoeRouteError(f"{path}: no tensor named {key!r} (keys: {', '.join(map(str, tensors))})")
    return tensors[key]


def read_tensors(path: str) -> "torch.Tensor | dict[str, torch.Tensor]":
    """Everything a logits file holds: one tensor, or a dict of named tensors."""
    file = Path(path)
    if not file.is_file():
        raise MoeRouteError(f"logits file not found: {path}")
    suffix = file.suffix.lower()
    if suffix in SUFFIXES and file.stat().st_size == 0:
        raise MoeRouteError(f"{path}: empty file (0 bytes), not a {_KIND[suffix]}")
    try:
        if suffix in (".pt", ".pth"):
            data = torch.load(file, map_location="cpu", weights_only=True)
        elif suffix == ".npy":
            data = torch.from_numpy(np.load(file, allow_pickle=False))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(file))
        else:
            raise MoeRouteError(f"{path}: unsupported file type {suffix!r} (use {', '.join(SUFFIXES)})")
    except MoeRouteError:
        raise
    except Exception as exc:  # torch/numpy/safetensors each raise their own types (and texts) for a damaged file
        raise MoeRouteError(f"{path}: not a readable {_KIND[suffix]} (damaged or another format: {type(exc).__name__})") from None
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values()):
        return {str(k): v for k, v in data.items()}
    raise MoeRouteError(f"{path}: expected a tensor or a dict of tensors, found {type(data).__name__}")


def load_logits(path: str, key: Optional[str] = None) -> torch.Tensor:
    """The logits tensor in ``path`` (``key`` picks one from a dict); its shape is checked by the router input."""
    data = read_tensors(path)
    if isinstance(data, dict):
        return _pick(data, key, path)
    if key is not None:
        raise MoeRouteError(f"{path}: holds a single tensor; --key {key!r} does not apply")
    return data

"""The ``captured:PATH[:KEY]`` workload: router logits recorded from a real model (``moeroute capture``), cut into
groups of ``T`` consecutive tokens.

A file holds one tensor ``[N, E]`` (or ``[G', T', E]``, flattened back to ``[N, E]`` in order) or a dict of them
(``layer0``, ``layer1``, ... as ``moeroute capture`` writes); ``KEY`` picks one. The number of experts is the
file's own ``E``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import as_groups
from moeroute.workloads.files import load_logits

PREFIX = "captured:"


def is_captured(spec: str) -> bool:
    return isinstance(spec, str) and spec.strip().startswith(PREFIX)


def parse_captured(spec: str) -> tuple[str, Optional[str]]:
    """Split ``captured:PATH[:KEY]`` into ``(PATH, KEY or None)``.

    A path that itself contains ``:`` works when the whole remainder names an existing file; otherwise the text
    after the last ``:`` is the key.
    """
    rest = spec.strip()[len(PREFIX):]
    if not rest:
        raise MoeRouteError(f"workload {spec!r}: expected captured:PATH or captured:PATH:KEY")
    if ":" not in rest or Path(rest).is_file():
        return rest, None
    path, _, key = rest.rpartition(":")
    if not path or not key:
        raise MoeRouteError(f"workload {spec!r}: expected captured:PATH or captured:PATH:KEY")
    return path, key


@lru_cache(maxsize=8)
def _tokens_cached(path: str, key: Optional[str], mtime_ns: int, size: int) -> torch.Tensor:
    data = load_logits(path, key)
    where = f"{path}" + (f" [{key}]" if key else "")
    try:
        groups = as_groups(data)  # the one validation of logits: dtype, rank, emptiness, NaN/inf
    except MoeRouteError as exc:
        raise MoeRouteError(f"{where}: {exc}") from None
    return groups.reshape(-1, groups.shape[-1]).contiguous()


def captured_tokens(path: str, key: Optional[str] = None) -> torch.Tensor:
    """The validated logits of a captured file as float32 ``[N, E]`` (cached while the file is unchanged)."""
    try:
        st = os.stat(path)
    except OSError:
        raise MoeRouteError(f"logits file not found: {path}") from None
    return _tokens_cached(path, key, st.st_mtime_ns, st.st_size)


def captured_experts(spec: str) -> int:
    """``E`` of the logits a ``captured:`` spec names (validates the file)."""
    return int(captured_tokens(*parse_captured(spec)).shape[1])


def captured_logits(spec: str, groups: int, tokens: int, seed: int = 0) -> torch.Tensor:
    """``groups`` windows of ``tokens`` consecutive tokens from a captured file, ``[groups, tokens, E]``.

    The file's ``N`` tokens are cut into ``N // tokens`` non-overlapping windows in order; the seed picks which
    ``groups`` of them (a seeded draw without replacement, kept in file order). With exactly ``groups`` windows
    available every seed gives the same tensor.
    """
    path, key = parse_captured(spec)
    data = captured_tokens(path, key)
    if groups < 1 or tokens < 1:
        raise MoeRouteError(f"groups and tokens must be >= 1, got {groups} and {tokens}")
    windows = data.shape[0] // tokens
    if windows < groups:
        raise MoeRouteError(
            f"{spec}: holds {data.shape[0]} tokens, too few for {groups} group(s) of {tokens} tokens"
        )
    gen = torch.Generator().manual_seed(int(seed))
    picked = torch.randperm(windows, generator=gen)[:groups].sort().values
    cut = data[: windows * tokens].reshape(windows, tokens, data.shape[1])
    return cut[picked].clone()

"""The ``captured:PATH[:KEY]`` workload: router logits recorded from a real model (``moeroute capture``, Hugging
Face ``output_router_logits``, a Megatron-LM router trace; formats in docs/traces.md), cut into groups of ``T``
consecutive tokens.

The file is opened lazily (:class:`moeroute.workloads.files.LogitsSource`): building a sweep reads only its
header, and a point reads only the windows it uses, so a capture of a million tokens per layer costs a point's
``G x T x E`` floats, not the file. ``KEY`` picks a tensor (``layer3``, a dotted path ``logits.layer1``, a list
index ``3``); ``captured:PATH:*`` in a sweep config stands for every layer of the file. The number of experts is
the file's own ``E``. Tokens that fill no whole window (``N mod T``) are left out.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import as_groups
from moeroute.workloads.files import LogitsSource, logit_keys, open_logits
from moeroute.workloads.settings import RoutingSettings, read_settings

PREFIX = "captured:"
ALL_LAYERS = "*"


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
    if ":" not in rest or Path(rest).exists():
        return rest, None
    path, _, key = rest.rpartition(":")
    if not path or not key:
        raise MoeRouteError(f"workload {spec!r}: expected captured:PATH or captured:PATH:KEY")
    return path, key


def _stamp(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        raise MoeRouteError(f"logits file not found: {path}") from None
    return st.st_mtime_ns, st.st_size


@lru_cache(maxsize=64)
def _source_cached(path: str, key: Optional[str], stamp: tuple[int, int]) -> LogitsSource:
    return open_logits(path, key)


def captured_source(path: str, key: Optional[str] = None) -> LogitsSource:
    """The lazy logits of a captured file (its header read once while the file is unchanged)."""
    return _source_cached(path, key, _stamp(path))


def expand_captured(spec: str) -> list[str]:
    """``captured:PATH:*`` -> one ``captured:PATH:KEY`` per layer of the file (every floating-point ``[N, E]``
    tensor, in natural order); any other spec -> itself."""
    if not is_captured(spec):
        return [spec]
    path, key = parse_captured(spec)
    if key != ALL_LAYERS:
        return [spec]
    return [f"{PREFIX}{path}" + (f":{k}" if k else "") for k in logit_keys(path)]


def captured_tokens(path: str, key: Optional[str] = None) -> torch.Tensor:
    """All the validated logits of a captured file as float32 ``[N, E]`` (reads the whole tensor: for small files;
    sweeps read windows through :func:`captured_logits`)."""
    source = captured_source(path, key)
    try:
        groups = as_groups(source.rows(0, source.tokens))  # the one validation of logits: dtype, NaN/inf
    except MoeRouteError as exc:
        raise MoeRouteError(f"{source.label}: {exc}") from None
    return groups.reshape(-1, groups.shape[-1])


def captured_shape(spec: str) -> tuple[int, int]:
    """``(N, E)`` of the logits a ``captured:`` spec names, from the file's header."""
    source = captured_source(*parse_captured(spec))
    return source.tokens, source.experts


def captured_settings(spec: str) -> Optional[RoutingSettings]:
    """The routing settings recorded with a ``captured:`` file (``moeroute capture`` writes them), or ``None``."""
    path, key = parse_captured(spec)
    return read_settings(path, captured_source(path, key).metadata)


def captured_experts(spec: str) -> int:
    """``E`` of the logits a ``captured:`` spec names (checks the file's header)."""
    return captured_shape(spec)[1]


def sample_windows(windows: int, groups: int, seed: int) -> torch.Tensor:
    """Which ``groups`` of ``windows`` windows a seed picks: a seeded draw without replacement, in file order."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(windows, generator=gen)[:groups].sort().values


def read_windows(source: LogitsSource, groups: int, tokens: int, seed: int = 0) -> torch.Tensor:
    """``groups`` seeded windows of ``tokens`` consecutive tokens of ``source``, validated, ``[groups, tokens, E]``.
    Only those windows are read."""
    if groups < 1 or tokens < 1:
        raise MoeRouteError(f"groups and tokens must be >= 1, got {groups} and {tokens}")
    windows = source.tokens // tokens
    if windows < groups:
        raise MoeRouteError(f"{source.label}: holds {source.tokens} tokens, too few for {groups} group(s) of {tokens} tokens")
    picked = source.windows(sample_windows(windows, groups, seed), tokens)
    try:
        return as_groups(picked)
    except MoeRouteError as exc:
        raise MoeRouteError(f"{source.label}: {exc}") from None


def captured_logits(spec: str, groups: int, tokens: int, seed: int = 0) -> torch.Tensor:
    """``groups`` windows of ``tokens`` consecutive tokens from a captured file, ``[groups, tokens, E]``.

    The file's ``N`` tokens are cut into ``N // tokens`` non-overlapping windows in order; the seed picks which
    ``groups`` of them (a seeded draw without replacement, kept in file order). With exactly ``groups`` windows
    available every seed gives the same tensor. Only the picked windows are read from the file.
    """
    path, key = parse_captured(spec)
    return read_windows(captured_source(path, key), groups, tokens, seed)


def leftover_note(spec: str, tokens: int) -> Optional[str]:
    """A line saying how many tokens of a captured file fill no window of ``tokens`` (``None``: none)."""
    n, _ = captured_shape(spec)
    left = n % tokens
    if not left or n < tokens:
        return None
    return f"{spec}: the last {left} of its {n} tokens fill no group of {tokens} and are left out"

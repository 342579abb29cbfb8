"""Megatron-LM's router trace (``--moe-routing-trace-path``), read from the format its writer documents
(``megatron/core/transformer/moe/router_trace.py``; docs/traces.md):

- one ``router_trace_rank{r}.jsonl`` per rank, one JSON record per (step, block, layer):
  ``{"step", "stage", "block", "layer", "rank", "num_tokens", "topk", "top_indices"}`` (``top_indices``: a
  ``num_tokens x topk`` list of expert ids; MTP records add ``"mtp_idx"``);
- optionally ``logits_rank{r}.bin`` beside it: bfloat16 pre-top-k router logits, each record pointing at its
  ``[num_tokens, E]`` block by ``logit_offset`` / ``logit_bytes`` / ``logit_shape``.

A layer is keyed ``layer{L}`` (decoder) or ``mtp{i}.layer{L}`` (multi-token prediction); its tokens are the records
of that layer in rank order, then file order (steps). A path may name the folder (every rank) or one ``.jsonl``
file (that rank only: with tensor or expert parallelism several ranks may record the same tokens).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from moeroute.core.errors import MoeRouteError

TRACE_GLOB = "router_trace_rank*.jsonl"
FIELDS = ("step", "block", "layer", "rank", "num_tokens", "topk", "top_indices")


@dataclass(frozen=True)
class TraceRecord:
    """One record: where it is, which layer, and its top-k expert ids ``[num_tokens, topk]``."""

    file: str
    line: int
    step: int
    layer_key: str
    rank: int
    top_indices: np.ndarray
    logits: Optional[tuple[int, int, tuple[int, ...]]]
    """``(offset, bytes, shape)`` of its block in ``logits_rank{rank}.bin``, when recorded."""


def trace_files(path: str) -> list[Path]:
    """The trace's JSONL files: every rank's in a folder (by rank number), or the one file named."""
    target = Path(path)
    if target.is_dir():
        files = sorted(target.glob(TRACE_GLOB), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
        if not files:
            raise MoeRouteError(f"{path}: no {TRACE_GLOB} files (expected a Megatron-LM --moe-routing-trace-path folder)")
        return files
    if not target.is_file():
        raise MoeRouteError(f"router trace not found: {path}")
    return [target]


def _record(file: Path, number: int, text: str) -> TraceRecord:
    where = f"{file}:{number}"
    try:
        raw = json.loads(text)
    except ValueError:
        raise MoeRouteError(f"{where}: not a JSON record (a Megatron router trace has one per line)") from None
    if not isinstance(raw, dict):
        raise MoeRouteError(f"{where}: not a JSON object")
    missing = [f for f in FIELDS if f not in raw]
    if missing:
        raise MoeRouteError(f"{where}: not a Megatron router trace record (missing {', '.join(missing)})")
    try:
        top = np.asarray(raw["top_indices"], dtype=np.int64)
        n, k, layer, rank = int(raw["num_tokens"]), int(raw["topk"]), int(raw["layer"]), int(raw["rank"])
    except (TypeError, ValueError, OverflowError):
        raise MoeRouteError(f"{where}: top_indices must be a list of lists of expert ids") from None
    if top.shape != (n, k) and not (n == 0 and top.size == 0):
        raise MoeRouteError(f"{where}: top_indices has shape {top.shape}, the record says {n} tokens x topk {k}")
    key = f"layer{layer}" if raw["block"] != "mtp" else f"mtp{int(raw.get('mtp_idx', 0))}.layer{layer}"
    logits = None
    if "logit_offset" in raw:
        try:
            logits = (int(raw["logit_offset"]), int(raw["logit_bytes"]), tuple(int(d) for d in raw["logit_shape"]))
        except (KeyError, TypeError, ValueError):
            raise MoeRouteError(f"{where}: logit_offset needs logit_bytes and logit_shape") from None
    return TraceRecord(str(file), number, int(raw["step"]), key, rank, top.reshape(n, k), logits)


@lru_cache(maxsize=4)
def _read(files: tuple[str, ...], stamps: tuple[tuple[int, int], ...]) -> dict[str, list[TraceRecord]]:
    layers: dict[str, list[TraceRecord]] = {}
    for name in files:
        file = Path(name)
        with open(file, encoding="utf-8", errors="replace") as fh:
            for number, text in enumerate(fh, start=1):
                if text.strip():
                    rec = _record(file, number, text)
                    layers.setdefault(rec.layer_key, []).append(rec)
    if not layers:
        raise MoeRouteError(f"{files[0]}: the router trace holds no records")
    for key, records in layers.items():
        if len({r.top_indices.shape[1] for r in records}) > 1:
            raise MoeRouteError(f"{records[0].file}: {key} has records with different topk")
    return layers


def read_trace(path: str) -> dict[str, list[TraceRecord]]:
    """The trace's records by layer key (cached while the files are unchanged)."""
    files = trace_files(path)
    stamps = tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    return _read(tuple(str(f) for f in files), stamps)


def megatron_routings(path: str) -> dict[str, torch.Tensor]:
    """Each layer's recorded top-k expert ids, long ``[N, k]`` (records concatenated in rank, then file order)."""
    return {key: torch.from_numpy(np.concatenate([r.top_indices for r in recs])) for key, recs in read_trace(path).items()}


def _sidecar(record: TraceRecord) -> Path:
    return Path(record.file).with_name(f"logits_rank{record.rank}.bin")


def _logit_layer(key: str, records: list[TraceRecord]) -> Optional[Any]:
    """A :class:`moeroute.workloads.files.TensorInfo` reading the layer's logits from the sidecars lazily, or
    ``None`` when its records carry no logits."""
    from moeroute.workloads.files import TensorInfo

    if not all(r.logits is not None for r in records):
        return None
    experts = {r.logits[2][-1] for r in records}
    if len(experts) != 1:
        raise MoeRouteError(f"{records[0].file}: {key} has logits of different widths {sorted(experts)}")
    e = experts.pop()
    for r in records:
        offset, size, shape = r.logits
        side = _sidecar(r)
        if tuple(shape) != (r.top_indices.shape[0], e) or size != 2 * shape[0] * e:
            raise MoeRouteError(f"{r.file}:{r.line}: logit_shape {list(shape)} / logit_bytes {size} do not match "
                                f"{r.top_indices.shape[0]} tokens of bfloat16")
        if not side.is_file() or side.stat().st_size < offset + size:
            raise MoeRouteError(f"{r.file}:{r.line}: its logits ({size} bytes at {offset}) are not in {side}")
    starts = np.cumsum([0] + [r.top_indices.shape[0] for r in records])

    def read(a: int, b: int) -> torch.Tensor:
        pieces = []
        for i in range(int(np.searchsorted(starts, a, side="right")) - 1, len(records)):
            lo, hi = int(starts[i]), int(starts[i + 1])
            if lo >= b:
                break
            offset, _, shape = records[i].logits
            block = np.memmap(_sidecar(records[i]), dtype=np.int16, mode="r", offset=offset, shape=(shape[0], e))
            pieces.append(np.array(block[max(a, lo) - lo: min(b, hi) - lo]))
        raw = np.concatenate(pieces) if pieces else np.zeros((0, e), dtype=np.int16)
        return torch.from_numpy(raw).view(torch.bfloat16)

    return TensorInfo((int(starts[-1]), e), torch.bfloat16, read)


def megatron_logits(path: str) -> Any:
    """The trace's recorded logits as a :class:`moeroute.workloads.files.TensorFile`, one ``[N, E]`` bfloat16 tensor
    per layer that has them (read lazily from the ``logits_rank{r}.bin`` sidecars)."""
    from moeroute.workloads.files import TensorFile

    layers = read_trace(path)
    tensors = {key: info for key, recs in layers.items() if (info := _logit_layer(key, recs)) is not None}
    if not tensors:
        raise MoeRouteError(f"{path}: the router trace records no logits (no logit_offset; Megatron writes them "
                            f"with logits capture on); its routings can be replayed: moeroute eval --routing {path}")
    return TensorFile(path, tensors)

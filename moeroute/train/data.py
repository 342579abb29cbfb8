"""Byte-level text for the training ablation: a corpus that needs no download (the CPython documentation shipped
as ``pydoc_data``) or the user's file, a fixed train/validation split, and batches that depend only on
(seed, step) so every arm of an ablation sees the same tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.train.config import DataConfig


def builtin_corpus() -> bytes:
    """The CPython documentation topics bundled with every Python (``pydoc_data.topics``), sorted by topic name and
    joined by blank lines, as UTF-8 bytes (about 465 kB on Python 3.11)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics)).encode("utf-8")


def read_corpus(text: str = "") -> bytes:
    """The bytes of ``text`` (a file path), or :func:`builtin_corpus` when ``text`` is empty."""
    if not text:
        return builtin_corpus()
    file = Path(text)
    if not file.is_file():
        raise MoeRouteError(f"text file not found: {text}")
    data = file.read_bytes()
    if not data:
        raise MoeRouteError(f"text file is empty: {text}")
    return data


def split_blocks(data: bytes, val_fraction: float, block_bytes: int) -> tuple[bytes, bytes]:
    """Cut ``data`` into blocks of ``block_bytes`` and send block ``i`` to validation when
    ``floor((i + 1) * f) > floor(i * f)`` (``f = val_fraction``): held-out blocks spread evenly through the corpus,
    so validation text is not one topic at its end. A small corpus is cut into at least 50 blocks (smaller ones),
    so it still gets a validation split. Returns ``(train, validation)``; the same for the same input."""
    block_bytes = max(1, min(block_bytes, len(data) // 50))
    n = -(-len(data) // block_bytes)
    train, val = [], []
    for i in range(n):
        block = data[i * block_bytes:(i + 1) * block_bytes]
        (val if int((i + 1) * val_fraction) > int(i * val_fraction) else train).append(block)
    return b"".join(train), b"".join(val)


@dataclass(frozen=True)
class Corpus:
    """Train and validation bytes as uint8 tensors ``[n]``."""

    train: torch.Tensor
    val: torch.Tensor

    @staticmethod
    def from_config(cfg: DataConfig) -> "Corpus":
        train, val = split_blocks(read_corpus(cfg.text), cfg.val_fraction, cfg.block_bytes)
        need = cfg.seq_len + 1
        for name, part in (("training", train), ("validation", val)):
            if len(part) < need:
                raise MoeRouteError(
                    f"the {name} split has {len(part)} bytes, fewer than seq_len + 1 = {need}: use a larger text"
                    " or a smaller seq_len / val_fraction"
                )
        as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8).clone()  # noqa: E731
        return Corpus(as_tensor(train), as_tensor(val))


def _windows(data: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts.unsqueeze(1) + torch.arange(seq_len + 1)
    chunk = data[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


def train_batch(corpus: Corpus, cfg: DataConfig, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-byte targets, long ``[batch_size, seq_len]`` each, at random offsets of the training split.

    The offsets come from a generator seeded by ``(seed, step)`` only: every arm and a resumed run draw the same
    batch at the same step."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, corpus.train.numel() - cfg.seq_len, (cfg.batch_size,), generator=gen)
    return _windows(corpus.train, starts, cfg.seq_len)


def micro_batch_size(batch_size: int, world: int, micro_batches: int) -> int:
    """Sequences per micro-batch per rank, ``batch_size / (world * micro_batches)``; a one-line error when the
    global batch does not divide."""
    if batch_size % (world * micro_batches):
        raise MoeRouteError(
            f"[data] batch_size={batch_size} does not divide over {world} process(es) x {micro_batches} "
            "micro-batch(es): the global batch must be a multiple of their product"
        )
    return batch_size // (world * micro_batches)


def rank_micro_batches(x: torch.Tensor, y: torch.Tensor, rank: int, world: int, micro_batches: int
                       ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rows of global batch ``x``, ``y`` ``[B, S]`` that rank ``rank`` of ``world`` trains on, cut into
    ``micro_batches`` micro-batches of ``b = B / (world * micro_batches)`` sequences.

    Micro-batch ``m`` of rank ``r`` is rows ``[(m * world + r) * b, (m * world + r + 1) * b)``, so micro-batch
    ``m`` of all ranks together is rows ``[m * world * b, (m + 1) * world * b)``: the same tokens, in the same
    micro-batch, whatever the number of ranks. A batch that does not divide is refused with one line."""
    b = micro_batch_size(x.shape[0], world, micro_batches)
    rows = [slice((m * world + rank) * b, (m * world + rank + 1) * b) for m in range(micro_batches)]
    return [(x[r], y[r]) for r in rows]


def val_windows(corpus: Corpus, cfg: DataConfig, sequences: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed validation set, inputs and targets ``[V, S]``: ``sequences`` (default ``cfg.val_sequences``)
    windows spread evenly over the validation split."""
    count = sequences or cfg.val_sequences
    last = corpus.val.numel() - cfg.seq_len - 1
    starts = torch.linspace(0, last, count).long() if count > 1 else torch.zeros(1, dtype=torch.long)
    return _windows(corpus.val, starts, cfg.seq_len)


def val_batches(corpus: Corpus, cfg: DataConfig, sequences: int | None = None, rank: int = 0, world: int = 1,
                batch: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The validation windows of :func:`val_windows` that rank ``rank`` of ``world`` evaluates (a contiguous
    share; ranks may get one sequence more or less), in batches of ``batch`` (default ``batch_size``)."""
    x, y = val_windows(corpus, cfg, sequences)
    x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
    size = batch or cfg.batch_size
    return list(zip(x.split(size), y.split(size)))

"""Record a trained model's gate logits on validation text, for the harness's ``captured:PATH[:KEY]`` workload."""

from __future__ import annotations

from pathlib import Path

import torch

from moeroute.core.atomic import atomic_write_bytes
from moeroute.train.config import DataConfig
from moeroute.train.data import Corpus, val_batches
from moeroute.train.model import MoELM


@torch.no_grad()
def capture_gate_logits(model: MoELM, corpus: Corpus, data: DataConfig, sequences: int) -> dict[str, torch.Tensor]:
    """``{"layer0": [N, E], "layer1": ...}``: each MoE layer's router logits (float32) on ``sequences`` fixed
    validation sequences at evaluation temperature; ``N = sequences * seq_len`` tokens in order, so groups of
    ``seq_len`` rows are the model's own routing groups."""
    model.eval()
    device = next(model.parameters()).device
    per_layer: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    for x, _ in val_batches(corpus, data, sequences):
        _, stats = model(x.to(device))
        for i, s in enumerate(stats):
            per_layer[i].append(s.inputs.logits.reshape(-1, s.inputs.experts).float().cpu())
    return {f"layer{i}": torch.cat(chunks).contiguous() for i, chunks in enumerate(per_layer)}


def save_captured(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> Path:
    """Write ``tensors`` to ``path`` as safetensors (with string ``metadata``: arm, seed, step, group size),
    atomically (:mod:`moeroute.core.atomic`)."""
    from safetensors.torch import save

    out = Path(path)
    atomic_write_bytes(out, save(tensors, metadata=metadata))
    return out

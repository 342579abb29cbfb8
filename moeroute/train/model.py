"""A small byte-level decoder-only language model whose every block is causal self-attention + an MoE layer."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from moeroute.train.config import ModelConfig
from moeroute.train.moe import MoELayer, MoEStats
from moeroute.weights.schedule import SoftTopkSchedule


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy in nats: logits ``[B, S, vocab]``, targets long ``[B, S]``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + moe(ln(x))``."""

    def __init__(self, cfg: ModelConfig, router: str, weights: str, schedule: SoftTopkSchedule) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        nn.init.normal_(self.proj.weight, std=0.02 / (2 * cfg.layers) ** 0.5)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.moe = MoELayer(cfg.d_model, cfg.expert_hidden, cfg.experts, cfg.k, cfg.capacity_factor,
                            router, weights, cfg.layers, schedule)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, MoEStats]:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(att)
        y, stats = self.moe(self.ln2(x))
        return x + y, stats


class MoELM(nn.Module):
    """Bytes ``[B, S]`` -> next-byte logits ``[B, S, vocab]``; each sequence is one routing group.

    ``softtopk`` = ``(start, end, steps)`` of every layer's SoftTopk schedule (the paper: 4, 1, 30000); call
    :meth:`step_schedule` once per optimizer step. The steps live in the state dict (``schedule_step`` buffers).
    """

    def __init__(self, cfg: ModelConfig, seq_len: int, router: str = "gshard", weights: str = "softmax",
                 softtopk: tuple[float, float, int] = (4.0, 1.0, 30000)) -> None:
        super().__init__()
        self.cfg, self.seq_len = cfg, seq_len
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Parameter(torch.zeros(seq_len, cfg.d_model))
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        start, end, steps = softtopk
        self.blocks = nn.ModuleList(
            Block(cfg, router, weights, SoftTopkSchedule(start=start, end=end, steps=steps)) for _ in range(cfg.layers)
        )
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[MoEStats]]:
        """Logits ``[B, S, vocab]`` (output head tied to the embedding) and each MoE layer's stats."""
        x = self.embed(idx) + self.pos[: idx.shape[1]]
        stats = []
        for block in self.blocks:
            x, s = block(x)
            stats.append(s)
        return self.ln_f(x) @ self.embed.weight.t(), stats

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, list[MoEStats]]:
        """Mean next-byte cross-entropy (nats) and the layer stats (the router losses are the trainer's:
        :mod:`moeroute.train.losses`)."""
        logits, stats = self(idx)
        return cross_entropy(logits, targets), stats

    def gate_parameters(self) -> list[nn.Parameter]:
        return [b.moe.gate.weight for b in self.blocks]

    def step_schedule(self) -> None:
        """Advance every layer's SoftTopk schedule by one optimizer step."""
        for block in self.blocks:
            block.moe.router.step()

    def step_router_states(self, all_reduce: Callable[[torch.Tensor, str], torch.Tensor]) -> None:
        """After an optimizer step: every layer's stateful router reduces its statistics over the data-parallel
        ranks (:meth:`MoELayer.step_router_state`)."""
        for block in self.blocks:
            block.moe.step_router_state(all_reduce)

    @property
    def temperature(self) -> float:
        """SoftTopk's current ``t`` (the scheduled value in training mode, 1 in eval mode)."""
        return self.blocks[0].moe.router.temperature

    def schedule_state(self) -> dict:
        """The SoftTopk schedule's state (every layer's is the same)."""
        return self.blocks[0].moe.router.schedule.state_dict()

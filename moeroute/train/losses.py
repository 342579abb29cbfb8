"""The router's training losses: the GShard balance loss over three scopes (one routing group, the rank's
micro-batch, or the global batch over data-parallel ranks and micro-batches) and ST-MoE's router z-loss.

Every arm of an ablation gets the same losses, so a comparison of routers is not a comparison of losses. See
docs/training.md.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

AllReduce = Callable[[torch.Tensor, str], torch.Tensor]


def first_choice_fraction(scores: torch.Tensor) -> torch.Tensor:
    """``c_e`` ``[G, E]``: the fraction of each group's tokens whose first choice (argmax of ``scores``
    ``[G, T, E]``) is expert ``e``, before capacity (as DeepSpeed's ``top2gating``); no gradient."""
    e = scores.shape[-1]
    return F.one_hot(scores.detach().argmax(dim=-1), e).to(scores.dtype).mean(dim=1)


def group_balance_loss(scores: torch.Tensor, coef: float) -> torch.Tensor:
    """GShard's ``coef * E * sum_e m_e c_e`` per routing group, averaged over groups: ``m_e`` the mean score of
    expert ``e`` over the group's tokens (with gradient), ``c_e`` :func:`first_choice_fraction`."""
    e = scores.shape[-1]
    return coef * e * (scores.mean(dim=1) * first_choice_fraction(scores)).sum(dim=-1).mean()


def micro_batch_balance_loss(scores: torch.Tensor, coef: float) -> torch.Tensor:
    """The same loss with ``m_e`` and ``c_e`` taken over all tokens of the rank's micro-batch ``[G, T, E]``
    (Megatron's default ``aux_loss``): one statistic per micro-batch, not per group."""
    e = scores.shape[-1]
    flat = scores.reshape(1, -1, e)
    return coef * e * (flat.mean(dim=1) * first_choice_fraction(flat)).sum()


def z_loss(logits: torch.Tensor, coef: float) -> torch.Tensor:
    """ST-MoE's router z-loss ``coef * mean over tokens of logsumexp(logits)^2`` (logits ``[..., E]`` with
    gradient): it keeps the gate's logits small, which keeps the softmax out of its saturated range."""
    return coef * torch.logsumexp(logits.float(), dim=-1).square().mean()


class GlobalBalance:
    """The global-batch balance loss of one optimizer step (Qwen, arXiv 2501.11873; Megatron-Core's
    ``global_aux_loss``): ``coef * E * sum_e m_e c_e`` where ``c_e`` counts first choices over every token the
    step has routed so far, summed over data-parallel ranks and over the micro-batches done, and ``m_e`` is the
    mean score over the rank's own micro-batch (local, with gradient).

    Each micro-batch adds its counts (one all-reduce of ``[layers, E]``) before its loss is taken, as Megatron
    does; with one micro-batch per step ``c_e`` is exactly the global batch's. Because the loss is linear in
    ``m_e`` and DDP averages gradients over ranks, N ranks give the gradient of one process holding the whole
    batch. Call :meth:`reset` after every optimizer step.
    """

    def __init__(self, coef: float, all_reduce: AllReduce) -> None:
        self.coef = coef
        self.all_reduce = all_reduce
        self.reset()

    def reset(self) -> None:
        self.counts: torch.Tensor | None = None  # [layers, E] first choices so far this step, all ranks
        self.tokens = 0.0

    def loss(self, layer_scores: list[torch.Tensor]) -> torch.Tensor:
        """The loss of one micro-batch, summed over layers; ``layer_scores`` each ``[G, T, E]`` with gradient."""
        e = layer_scores[0].shape[-1]
        local = torch.stack([F.one_hot(s.detach().argmax(dim=-1), e).reshape(-1, e).sum(dim=0) for s in layer_scores])
        # counts and the token total travel in one collective: [layers, E + 1]
        ones = torch.full((local.shape[0], 1), float(layer_scores[0][..., 0].numel()), device=local.device)
        summed = self.all_reduce(torch.cat([local.double(), ones.double()], dim=1), "sum")
        self.counts = summed[:, :e] if self.counts is None else self.counts + summed[:, :e]
        self.tokens += float(summed[0, e])
        frac = (self.counts / self.tokens).to(layer_scores[0].dtype)
        m = torch.stack([s.reshape(-1, e).mean(dim=0) for s in layer_scores])
        return self.coef * e * (m * frac).sum()


__all__ = ["GlobalBalance", "first_choice_fraction", "group_balance_loss", "micro_batch_balance_loss", "z_loss"]

"""The router's training losses: the balance loss over three scopes (one routing group, the rank's micro-batch, or
the global batch over data-parallel ranks and micro-batches) and ST-MoE's router z-loss.

The balance loss is ``coef * E * sum_e m_e c_e``: ``m_e`` the mean over tokens of a per-token affinity ``p[t, e]``
(with gradient), ``c_e`` the mean over tokens of each token's share ``f[t, e]`` of the counts (no gradient). What
``p`` and ``f`` are follows the score function the arm's router selects by (:func:`balance_terms`):

- ``softmax`` (GShard, the MaxScore paper's code, DeepSpeed's ``top2gating``): ``p`` the softmax scores, ``f`` the
  one-hot of each token's first choice.
- ``sigmoid`` / ``sqrt_softplus`` (DeepSeek-V3's sequence-wise loss; Megatron-Core's
  ``compute_routing_scores_for_aux_loss``): ``p`` the scores normalised over the experts, ``s / sum_e s``, and ``f``
  the token's top-``k`` of those scores (without any selection bias) divided by ``k``. The raw sigmoid scores do
  not sum to one per token, so their mean would reward pushing every score down rather than spreading tokens.

Either way ``f`` sums to 1 per token and a perfectly balanced router scores ``coef``. See docs/training.md.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from moeroute.core.problem import score_function

AllReduce = Callable[[torch.Tensor, str], torch.Tensor]
BalanceTerms = tuple[torch.Tensor, torch.Tensor]


def balance_terms(logits: torch.Tensor, scores: torch.Tensor, score: str, k: int) -> BalanceTerms:
    """``(p, f)``, each ``[G, T, E]``, for the balance loss of a router selecting by score function ``score``:
    ``p`` the per-token affinities (with gradient through ``logits`` ``[G, T, E]``, or ``scores``, the softmax of
    the logits, for ``softmax``), ``f`` each token's share of the expert counts (rows sum to 1, no gradient). See
    the module docstring for the two rules."""
    e = logits.shape[-1]
    if score == "softmax":
        return scores, F.one_hot(scores.detach().argmax(dim=-1), e).to(scores.dtype)
    raw = score_function(score)(logits)
    p = raw / (raw.sum(dim=-1, keepdim=True) + 1e-20)
    top = p.detach().topk(k, dim=-1).indices
    f = torch.zeros_like(p, requires_grad=False).scatter(-1, top, 1.0 / k)
    return p, f


def group_balance_loss(p: torch.Tensor, f: torch.Tensor, coef: float) -> torch.Tensor:
    """``coef * E * sum_e m_e c_e`` per routing group, averaged over groups: ``m_e`` the mean of ``p`` ``[G, T, E]``
    over the group's tokens, ``c_e`` that of ``f`` (:func:`balance_terms`). With ``score=sigmoid`` this is
    DeepSeek-V3's sequence-wise balance loss (one group = one sequence)."""
    e = p.shape[-1]
    return coef * e * (p.mean(dim=1) * f.mean(dim=1)).sum(dim=-1).mean()


def micro_batch_balance_loss(p: torch.Tensor, f: torch.Tensor, coef: float) -> torch.Tensor:
    """The same loss with ``m_e`` and ``c_e`` taken over all tokens of the rank's micro-batch ``[G, T, E]``
    (Megatron's default ``aux_loss``): one statistic per micro-batch, not per group."""
    e = p.shape[-1]
    return coef * e * (p.reshape(-1, e).mean(dim=0) * f.reshape(-1, e).mean(dim=0)).sum()


def z_loss(logits: torch.Tensor, coef: float) -> torch.Tensor:
    """ST-MoE's router z-loss ``coef * mean over tokens of logsumexp(logits)^2`` (logits ``[..., E]`` with
    gradient): it keeps the gate's logits small, which keeps the softmax out of its saturated range."""
    return coef * torch.logsumexp(logits.float(), dim=-1).square().mean()


class GlobalBalance:
    """The global-batch balance loss of one optimizer step (Qwen, arXiv 2501.11873; Megatron-Core's
    ``global_aux_loss``): ``coef * E * sum_e m_e c_e`` where ``c_e`` is the mean of ``f`` over every token the
    step has routed so far, summed over data-parallel ranks and over the micro-batches done, and ``m_e`` is the
    mean of ``p`` over the rank's own micro-batch (local, with gradient).

    Each micro-batch adds its counts (one all-reduce of ``[layers, E + 1]``) before its loss is taken, as Megatron
    does; with one micro-batch per step ``c_e`` is exactly the global batch's. Because the loss is linear in
    ``m_e`` and DDP averages gradients over ranks, N ranks give the gradient of one process holding the whole
    batch. Call :meth:`reset` after every optimizer step.
    """

    def __init__(self, coef: float, all_reduce: AllReduce) -> None:
        self.coef = coef
        self.all_reduce = all_reduce
        self.reset()

    def reset(self) -> None:
        self.counts: torch.Tensor | None = None  # [layers, E] counts (sums of f) so far this step, all ranks
        self.tokens = 0.0

    def loss(self, terms: list[BalanceTerms]) -> torch.Tensor:
        """The loss of one micro-batch, summed over layers; ``terms`` one ``(p, f)`` per layer, each ``[G, T, E]``
        (:func:`balance_terms`)."""
        e = terms[0][0].shape[-1]
        local = torch.stack([f.detach().reshape(-1, e).sum(dim=0) for _, f in terms]).double()
        # counts and the token total travel in one collective: [layers, E + 1]
        ones = torch.full((local.shape[0], 1), float(terms[0][1][..., 0].numel()), dtype=torch.float64,
                          device=local.device)
        summed = self.all_reduce(torch.cat([local, ones], dim=1), "sum")
        self.counts = summed[:, :e] if self.counts is None else self.counts + summed[:, :e]
        self.tokens += float(summed[0, e])
        frac = (self.counts / self.tokens).to(terms[0][0].dtype)
        m = torch.stack([p.reshape(-1, e).mean(dim=0) for p, _ in terms])
        return self.coef * e * (m * frac).sum()


__all__ = ["BalanceTerms", "GlobalBalance", "balance_terms", "group_balance_loss", "micro_batch_balance_loss", "z_loss"]

"""SoftTopk, the MaxScore paper's combine weights: ``g_1 = p_1``, later ranks ``t * p_r`` (not renormalised)."""

from __future__ import annotations

import torch

from moeroute.weights import CommonOptions, gather_scores, register_weight_op


@register_weight_op("softtopk")
def softtopk_weights(scores: torch.Tensor, experts: torch.Tensor, options: CommonOptions) -> torch.Tensor:
    """``[G, T, R]``: slot 0 (rank 1) keeps its softmax score, every later slot gets ``t`` times its score, as the
    released code computes it; ``t = options.temperature`` (``None`` = 1, the evaluation value; see
    :class:`moeroute.weights.schedule.SoftTopkSchedule` for the training schedule). Zero on empty slots.
    Differentiable in ``scores``."""
    t = 1.0 if options.temperature is None else float(options.temperature)
    picked = gather_scores(scores, experts)
    factor = torch.full((experts.shape[-1],), t, dtype=picked.dtype, device=picked.device)
    factor[0] = 1.0
    return picked * factor

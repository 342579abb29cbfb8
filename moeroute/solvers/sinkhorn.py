"""Entropic optimal transport by Sinkhorn iterations in the log domain, batched over groups, on any device."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SinkhornResult:
    """``log_plan`` ``[G, T, E]``: log of the transport plan (``-inf`` where the kernel is zero);
    ``iterations`` run; ``error`` the final max absolute row-marginal error (columns are exact after each step)."""

    log_plan: torch.Tensor
    iterations: int
    error: float


def _safe_log(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, torch.log(x.clamp(min=torch.finfo(x.dtype).tiny)), torch.full_like(x, -float("inf")))


def _minus(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a - b`` where ``-inf - -inf`` (a zero marginal on an all-zero row) is ``-inf``, not NaN."""
    return torch.where(torch.isinf(a) & (a < 0), a, a - b)


def sinkhorn_log(
    log_kernel: torch.Tensor,
    row_marginals: torch.Tensor,
    col_marginals: torch.Tensor,
    max_iters: int = 50,
    tol: float = 1e-4,
    check_every: int = 5,
) -> SinkhornResult:
    """Scale ``exp(log_kernel)`` ``[G, T, E]`` to rows summing to ``row_marginals`` ``[G, T]`` and columns to
    ``col_marginals`` ``[G, E]``, alternating row and column updates of the dual potentials.

    The totals must balance per group (``row.sum() == col.sum()``); give unbalanced problems a slack row or column.
    Stops after ``max_iters`` or once the row error is below ``tol * max(row_marginals)`` (checked every
    ``check_every`` iterations, since each check syncs a GPU). ``-inf`` kernel entries stay exactly zero.
    """
    log_r = _safe_log(row_marginals)
    log_c = _safe_log(col_marginals)
    f = torch.zeros_like(log_r)
    g = torch.zeros_like(log_c)
    scale = float(row_marginals.max()) if row_marginals.numel() else 1.0
    error = float("inf")
    it = 0
    for it in range(1, max_iters + 1):
        f = _minus(log_r, torch.logsumexp(log_kernel + g.unsqueeze(1), dim=2))
        g = _minus(log_c, torch.logsumexp(log_kernel + f.unsqueeze(2), dim=1))
        if it % check_every == 0 or it == max_iters:
            rows = torch.logsumexp(log_kernel + f.unsqueeze(2) + g.unsqueeze(1), dim=2).exp()
            error = float((rows - row_marginals).abs().max())
            if error <= tol * scale:
                break
    log_plan = log_kernel + f.unsqueeze(2) + g.unsqueeze(1)
    return SinkhornResult(torch.nan_to_num(log_plan, nan=-float("inf")), it, error)

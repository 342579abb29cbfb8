"""Entropic optimal transport by Sinkhorn iterations, batched over groups, on any device.

The inner loop scales in the exp domain (two batched matrix-vector products per iteration, far cheaper than
log-sum-exp on CPU; benchmarks/PERF.md) and is stabilised in the log domain (Schmitzer 2019, "absorption"): the
scalings are folded into log potentials whenever the convergence is checked, so the kernel never overflows, and
the first half-steps are taken in the log domain so it starts on the right scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SinkhornResult:
    """``log_plan`` ``[G, T, E]``: log of the transport plan (``-inf`` where the kernel is zero);
    ``iterations`` run; ``error`` the final max absolute row-marginal error (columns are exact after each step)."""

    log_plan: torch.Tensor
    iterations: int
    error: float


_ABSORB_AT = 15.0
"""Absorb the scalings into the log potentials once one of them reaches ``exp(±15)``."""
_CUTOFF = -50.0
"""Kernel entries below ``exp(-50)`` (a plan mass below 2e-22) are set to 0 until the next absorption (and
``exp(-50)`` is subtracted from the others, :func:`_cut_exp_`). Besides
being negligible, they would otherwise turn into denormal floats, which made one small ``bmm`` 1000x slower on
CPU. Between absorptions ``|log u|, |log v| <= 15``, so no product in the loop can leave the normal range (but for
the odd entry within float rounding of the cutoff) and no cut entry can grow past ``exp(-20)`` before it is rebuilt
from its logarithm."""


def _safe_log(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, torch.log(x.clamp(min=torch.finfo(x.dtype).tiny)), torch.full_like(x, -float("inf")))


def _minus(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a - b`` where ``-inf - -inf`` (a zero marginal on an all-zero row) is ``-inf``, not NaN."""
    return torch.where(torch.isinf(a) & (a < 0), a, a - b)


def _ratio(marginal: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """``marginal / mass``, 0 where the mass is 0 (a zero marginal, or a row with no kernel left).

    One division and one ``nan_to_num`` (0/0 and m/0 -> 0): several times cheaper than a ``where`` with a clamped
    denominator (benchmarks/PERF.md). In the loop the mass is 0 or far above the smallest normal
    float (kernel entries >= exp(_CUTOFF), scalings within exp(+-_ABSORB_AT)), so nothing else overflows."""
    return torch.nan_to_num(marginal / mass, nan=0.0, posinf=0.0)


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


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
    The result equals the plain log-domain iteration (:func:`sinkhorn_log_reference`) up to rounding.
    """
    log_r = _safe_log(row_marginals)
    log_c = _safe_log(col_marginals)
    scale = float(row_marginals.max()) if row_marginals.numel() else 1.0
    # First iteration in the log domain: potentials f [G, T], g [G, E] put every row and column on its scale.
    f = _minus(log_r, _logsumexp(log_kernel, dim=2))
    # Column step on the transposed copy: reductions along the contiguous dim are faster on CPU.
    row_scaled_t = _plus_potentials(log_kernel, f, None).transpose(1, 2).contiguous()
    g = _minus(log_c, _logsumexp(row_scaled_t, dim=2))
    # The kernel from log_kernel + f (with f's non-finite entries as -inf, as _scaled_kernel does) plus g: one pass.
    kernel_t = _cut_exp_(row_scaled_t.add_(torch.where(torch.isfinite(g), g, -float("inf")).unsqueeze(2)))
    kernel = kernel_t.transpose(1, 2).contiguous()
    # Both products as row-vector x matrix: on CPU, [1, E] x [E, T] is much faster than [T, E] x [E, 1].
    u = torch.ones_like(row_marginals)
    v = torch.ones_like(col_marginals)
    error = _check(kernel_t, u, v, row_marginals)[0] if max_iters <= 1 or check_every == 1 else float("inf")
    it = 1
    while it < max_iters and not error <= tol * scale:
        it += 1
        u = _ratio(row_marginals, torch.bmm(v.unsqueeze(1), kernel_t).squeeze(1))
        v = _ratio(col_marginals, torch.bmm(u.unsqueeze(1), kernel).squeeze(1))
        if it % check_every == 0 or it == max_iters:
            error, spread = _check(kernel_t, u, v, row_marginals)
            if spread > _ABSORB_AT and it < max_iters:
                # Fold the scalings into the potentials and rebuild the kernel before u or v can overflow.
                f = f + _safe_log(u)
                g = g + _safe_log(v)
                kernel = _scaled_kernel(log_kernel, f, g)
                kernel_t = kernel.transpose(1, 2).contiguous()
                u = torch.ones_like(u)
                v = torch.ones_like(v)
    f = f + _safe_log(u)
    g = g + _safe_log(v)
    return SinkhornResult(_plus_potentials(log_kernel, f, g), it, error)


def _scaled_kernel(log_kernel: torch.Tensor, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``exp(log_kernel + f + g)`` ``[G, T, E]``, exactly 0 below ``exp(_CUTOFF)`` and on rows or columns whose
    potential is infinite (a zero marginal, or an infeasible row with no kernel at all)."""
    return _cut_exp_(_plus_potentials(log_kernel, f, g))


def _cut_exp_(arg: torch.Tensor, cutoff: float = _CUTOFF) -> torch.Tensor:
    """``exp(max(arg, cutoff)) - exp(cutoff)`` in place: ``exp(arg)`` less a constant far below float32 resolution
    of any entry that matters (``exp(-50)`` = 2e-22), exactly 0 where ``arg <= cutoff`` (``-inf`` included), and
    never a denormal float, whose ``exp`` is far slower on CPU. Three passes and no mask: cheaper than a compare and
    a ``masked_fill_`` (benchmarks/PERF.md)."""
    return arg.clamp_(min=cutoff).exp_().sub_(math.exp(cutoff))


def _logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.logsumexp(x, dim)`` for ``x`` finite or ``-inf``, dropping the terms below ``exp(-80)`` of the max
    (and 2e-35 from each term), which cannot change a float32 sum whose largest term is 1 -- and the ``exp`` of
    such terms would be a slow denormal."""
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    total = _cut_exp_(x - m, -80.0).sum(dim=dim)
    return torch.log(total) + m.squeeze(dim)


def _plus_potentials(log_kernel: torch.Tensor, f: torch.Tensor, g: Optional[torch.Tensor]) -> torch.Tensor:
    """``log_kernel + f + g`` ``[G, T, E]`` (a new tensor), ``-inf`` on rows or columns whose potential is not
    finite: mapping those potentials to ``-inf`` first keeps NaN (``-inf + inf``) out with two passes over the
    kernel instead of a ``nan_to_num`` and masks."""
    neg = -float("inf")
    f = torch.where(torch.isfinite(f), f, neg)
    out = log_kernel + f.unsqueeze(2)
    if g is None:  # g = 0
        return out
    return out.add_(torch.where(torch.isfinite(g), g, neg).unsqueeze(1))


def _check(kernel_t: torch.Tensor, u: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> tuple[float, float]:
    """Max absolute row-marginal error of the plan ``u K v`` (``kernel_t`` = ``K`` transposed) and the largest
    ``|log|`` of a positive scaling, in one device sync."""
    mass = u * torch.bmm(v.unsqueeze(1), kernel_t).squeeze(1)
    error = (mass - rows).abs().max()
    # max |log x| over positive x = max(log max x, -log min positive x): four reductions, no [G, T] logs.
    inf = torch.tensor(float("inf"), dtype=u.dtype, device=u.device)
    big = torch.stack([u.max(), v.max()]).max()
    small = torch.stack([torch.where(u > 0, u, inf).min(), torch.where(v > 0, v, inf).min()]).min()
    error, big, small = torch.stack([error, big, small]).tolist()
    spread = max(math.log(big) if big > 0 else 0.0, -math.log(small) if 0 < small < math.inf else 0.0)
    return error, spread


def sinkhorn_log_reference(
    log_kernel: torch.Tensor,
    row_marginals: torch.Tensor,
    col_marginals: torch.Tensor,
    max_iters: int = 50,
) -> torch.Tensor:
    """The plain log-domain iteration, ``max_iters`` row+column updates by log-sum-exp: the definition that
    :func:`sinkhorn_log` computes faster. Returns the log plan ``[G, T, E]``."""
    log_r = _safe_log(row_marginals)
    log_c = _safe_log(col_marginals)
    g = torch.zeros_like(log_c)
    f = torch.zeros_like(log_r)
    for _ in range(max_iters):
        f = _minus(log_r, torch.logsumexp(log_kernel + g.unsqueeze(1), dim=2))
        g = _minus(log_c, torch.logsumexp(log_kernel + f.unsqueeze(2), dim=1))
    return torch.nan_to_num(log_kernel + f.unsqueeze(2) + g.unsqueeze(1), nan=-float("inf"), neginf=-float("inf"))


def _capped_potential(a: torch.Tensor, capped: torch.Tensor, marginal: torch.Tensor, most: int) -> torch.Tensor:
    """The log scaling ``f`` ``[B, N]`` with ``sum_j min(exp(a_j + f), 1 if capped_j else inf) = marginal`` over the
    last dim of ``a`` ``[B, N, M]``: the KL projection of one row onto its marginal with cells capped at 1.

    With the ``j`` largest capped cells saturated, ``f_j = log(marginal - j) - log(sum of exp(a) over the others)``;
    the answer is the smallest ``j`` whose saturated cells are all >= 1 and whose next capped cell is <= 1. Only
    ``j < marginal`` can hold, so the ``most = ceil(max marginal)`` largest capped cells are all that need sorting
    (``topk``, not a sort of the whole row). A row that cannot reach its marginal gets ``-inf``.
    """
    neg = torch.full_like(a, -float("inf"))
    key = torch.where(capped, a, neg)  # uncapped cells never saturate
    m = max(1, min(int(most), a.shape[-1]))
    top = torch.topk(key, m, dim=-1)
    # Sums in float64 around the row max: exact suffix sums without log-cumsum-exp (10x slower on CPU), and 700
    # nats of range, far more than a kernel S/eps plus potentials spans.
    shift = a.amax(dim=-1, keepdim=True)  # a is finite or -inf
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    w = torch.exp((a - shift).double())
    chosen = torch.zeros_like(capped).scatter_(-1, top.indices, True)
    rest = torch.where(chosen, torch.zeros_like(w), w).sum(dim=-1, keepdim=True)
    w_top = torch.exp((torch.gather(a, -1, top.indices) - shift).double())
    suffix = rest + torch.flip(torch.cumsum(torch.flip(w_top, [-1]), dim=-1), [-1])  # [B, N, m]: j = 0..m-1
    log_suffix = (torch.log(suffix) + shift.double()).to(a.dtype)
    j = torch.arange(m, device=a.device, dtype=a.dtype)
    left = marginal.unsqueeze(-1) - j
    f = torch.where(left > 0, torch.log(left.clamp(min=torch.finfo(a.dtype).tiny)), neg[..., :1].expand_as(left)) - log_suffix
    key_top = top.values
    prev = torch.cat([torch.full_like(key_top[..., :1], float("inf")), key_top[..., :-1]], dim=-1)  # cell j-1
    ok = (left > 0) & torch.isfinite(f) & (prev + f >= -1e-6) & (key_top + f <= 1e-6)
    first = torch.argmax(ok.to(torch.int8), dim=-1, keepdim=True)
    out = torch.gather(f, -1, first).squeeze(-1)
    return torch.where(torch.gather(ok, -1, first).squeeze(-1), out, torch.full_like(out, -float("inf")))


def sinkhorn_capped_log(
    log_kernel: torch.Tensor,
    row_marginals: torch.Tensor,
    col_marginals: torch.Tensor,
    capped: torch.Tensor,
    max_iters: int = 50,
    tol: float = 1e-4,
    check_every: int = 5,
) -> SinkhornResult:
    """Sinkhorn with a cap of 1 on the cells where ``capped`` ``[G, T, E]`` is true: alternate KL projections of
    ``P = min(exp(log_kernel + f + g), 1)`` onto the row and the column marginals, each solved exactly per row or
    column by a sort (:func:`_capped_potential`). Capping the columns too matters: with plain column updates the
    iteration stalled far from feasible (50 iterations, 3% worse routing at k=3). This is the plan a token with
    ``d > 1`` open slots needs: without the cap it can put all ``d`` units on one expert, so its later choices are
    noise (the ``k - 1 >= 2`` trap, docs/dual.md and the MaxScore notes in docs/).
    Without Dykstra's corrections the limit is a feasible capped plan, not necessarily the entropic optimum.
    Returns the log of the plan, clipped at 0 on capped cells; ``error``: the max row error of that clipped plan."""
    f = torch.zeros_like(row_marginals)
    g = torch.zeros_like(col_marginals)
    scale = float(row_marginals.max()) if row_marginals.numel() else 1.0
    row_most = math.ceil(scale)
    col_most = math.ceil(float(col_marginals.max())) if col_marginals.numel() else 1
    capped_t = capped.transpose(1, 2)
    error = float("inf")
    it = 0
    for it in range(1, max_iters + 1):
        f = _capped_potential(log_kernel + g.unsqueeze(1), capped, row_marginals, row_most)
        g = _capped_potential((log_kernel + f.unsqueeze(2)).transpose(1, 2), capped_t, col_marginals, col_most)
        if it % check_every == 0 or it == max_iters:
            rows = _capped_log_plan(log_kernel, f, g, capped).exp().sum(dim=2)
            error = float((rows - row_marginals).abs().max())
            if error <= tol * scale:
                break
    return SinkhornResult(_capped_log_plan(log_kernel, f, g, capped), it, error)


def _capped_log_plan(log_kernel: torch.Tensor, f: torch.Tensor, g: torch.Tensor, capped: torch.Tensor) -> torch.Tensor:
    lp = torch.nan_to_num(log_kernel + f.unsqueeze(2) + g.unsqueeze(1), nan=-float("inf"), neginf=-float("inf"))
    return torch.where(capped, lp.clamp(max=0.0), lp)

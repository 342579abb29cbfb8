"""Quantile Balancing (QB): routing by the dual of the balanced assignment LP, as Megatron-Core's
``quantile_balancing`` routing type computes it (``qb_dual_update`` in Megatron-LM's ``moe_utils.py``, the bias
update in ``finalize_model_grads._update_router_qb_beta``) after Jianlin Su's derivation (kexue.fm 11619).

The LP: maximise ``sum s[t, e] x[t, e]`` with ``k`` experts per token and ``target = T*k // E`` tokens per expert.
Its dual prices are ``alpha`` per token and ``beta`` per expert; QB alternates exact coordinate steps:

- route with the *previous* ``beta``: each token's top ``k + 1`` of ``s - beta``; the first ``k`` are its experts,
  the ``(k+1)``-th value is ``alpha_t``;
- the new ``beta_e`` is the ``(target + 1)``-th largest of ``s[:, e] - alpha`` over the group's tokens.

In training (``iters=0``, streaming) each group is routed with the ``beta`` earlier groups left, its candidate
``beta`` is accumulated, and every ``update_every`` groups (a step) ``beta`` becomes
``ema * beta + (1 - ema) * mean(candidates)``, re-centred to mean zero (:func:`updated_beta`). ``iters >= 1``
first alternates that many times inside each group (``beta <- candidate``) and routes with the result.

``select=logits`` (Megatron's) runs this on the logits, ``select=scores`` on the scores of the ``score`` function.
The logits of a token differ from its log-softmax by a constant, and QB is blind to per-token constants, so
``select=logits`` solves the LP of summed log-probabilities; the gap is measured, as for every router, on the scores.
QB has no capacity of its own: its load can exceed ``target`` (see ``max_vio``); with a capacity factor the shared
capacity rule drops the overflow afterwards (``drop_policy``, ``order``), as Megatron's token dropping does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import RouterInput
from moeroute.core.routing import Slots
from moeroute.routers._capacity import apply_capacity
from moeroute.routers._topk import CapacityOptions, TopKOptions, kept_weights, probs_of
from moeroute.routers.registry import AllReduce, register_router


@dataclass(frozen=True)
class QBOptions(CapacityOptions, TopKOptions):
    """``iters``: QB alternations inside each group before routing it (``0``: streaming, the ``beta`` of earlier
    groups, as in training). ``ema``: weight of the old ``beta`` in each update (Megatron's
    ``moe_router_quantile_balancing_ema``, default 0). ``update_every``: groups per ``beta`` update (``0`` = never
    inside the call: a trainer calls the router's ``step_update``). ``select``: ``logits`` (Megatron) or ``scores``.
    ``score``, ``pre_softmax``, ``scaling`` shape the probs (combine weights) as for gshard; group-limited routing is
    not supported (nor by Megatron). ``drop_policy``, ``order``: the capacity rule, when there is a capacity."""

    iters: int = 0
    ema: float = 0.0
    update_every: int = 1
    select: Literal["logits", "scores"] = "logits"

    def validate(self) -> None:
        TopKOptions.validate(self)
        CapacityOptions.validate(self)
        if self.groups is not None:
            raise MoeRouteError("qb does not support group-limited routing (neither does Megatron-Core)")
        if self.iters < 0:
            raise MoeRouteError(f"iters must be >= 0, got {self.iters}")
        if not 0.0 <= self.ema <= 1.0:
            raise MoeRouteError(f"ema must be in [0, 1], got {self.ema}")
        if self.update_every < 0:
            raise MoeRouteError(f"update_every must be >= 0, got {self.update_every}")


def qb_route(s: torch.Tensor, k: int, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One QB step on one group: each token's experts ``[T, k]`` (top-``k`` of ``s - beta``, best first) and the
    candidate ``beta`` ``[E]``: per expert the ``(T*k // E + 1)``-th largest of ``s - alpha`` over the tokens,
    ``alpha_t`` the token's ``(k+1)``-th largest ``s - beta``. ``s`` ``[T, E]`` float32, ``beta`` ``[E]``."""
    t, e = s.shape
    top = (s - beta).topk(k + 1, dim=1)
    alpha = top.values[:, -1:]
    target = t * k // e
    candidate = (s - alpha).topk(target + 1, dim=0).values[-1].contiguous()
    return top.indices[:, :-1], candidate


def updated_beta(beta: torch.Tensor, candidate: torch.Tensor, ema: float) -> torch.Tensor:
    """The next ``beta`` ``[..., E]``: ``ema * beta + (1 - ema) * candidate``, minus its mean over the experts (QB is
    blind to a constant shift of ``beta``; centring keeps it from drifting). Megatron-Core's update after its
    data-parallel average."""
    with torch.no_grad():
        new = ema * beta + (1.0 - ema) * candidate
        return new - new.mean(dim=-1, keepdim=True)


def qb_step_update(state: dict[str, torch.Tensor], all_reduce: AllReduce, opts: QBOptions) -> dict[str, torch.Tensor]:
    """Once per optimizer step: the mean of the candidates accumulated since the last update (``beta_accum /
    beta_count``), averaged over the data-parallel ranks, moves ``beta`` (:func:`updated_beta`)."""
    count = state["beta_count"].clamp(min=1).to(state["beta_accum"].dtype)
    local = all_reduce(state["beta_accum"] / count, "mean")
    beta = updated_beta(state["beta"], local, opts.ema)
    return {"beta": beta, "beta_accum": torch.zeros_like(beta), "beta_count": torch.tensor(0)}


def _qb_refusal(x: RouterInput, opts: QBOptions) -> Optional[str]:
    if x.k >= x.experts:
        return f"reads each token's (k+1)-th score: needs k < E, got k={x.k}, E={x.experts}"
    return None


def _state(x: RouterInput) -> tuple[torch.Tensor, torch.Tensor, int]:
    e, device = x.experts, x.logits.device

    def vector(key: str) -> torch.Tensor:
        v = x.state.get(key)
        return torch.zeros(e, device=device) if v is None else v.detach().to(device, torch.float32).reshape(e)

    return vector("beta"), vector("beta_accum"), int(x.state.get("beta_count", torch.tensor(0)))


@register_router(
    "qb",
    QBOptions,
    "Quantile Balancing: top-k of s - beta, beta the per-expert quantile of s - alpha (the LP dual), carried "
    "between groups (iters=0) or alternated inside each group; no capacity of its own",
    "Megatron-Core quantile_balancing (qb_dual_update); Su, kexue.fm 11619 (2026)",
    requires=_qb_refusal,
    step_update=qb_step_update,
    examples=("qb:iters=3", "qb:select=scores,ema=0.5,update_every=2", "qb:score=sigmoid,drop_policy=probs"),
)
def qb(x: RouterInput, opts: QBOptions) -> Slots:
    """``meta['beta']`` ``[G, E]``: the ``beta`` each group was routed with; the state carries ``beta``, the
    candidates accumulated since the last update and their count."""
    s_all = (x.logits if opts.select == "logits" else x.scores).detach().float()
    beta, accum, count = _state(x)
    chosen, seen = [], []
    for g in range(x.groups):
        s = s_all[g]
        work = beta
        for _ in range(opts.iters):
            _, work = qb_route(s, x.k, work)
        experts, candidate = qb_route(s, x.k, work)
        chosen.append(experts)
        seen.append(work)
        accum, count = accum + candidate, count + 1
        if opts.update_every and count == opts.update_every:
            beta = updated_beta(beta, accum / count, opts.ema)
            accum, count = torch.zeros_like(accum), 0
    selected = torch.stack(chosen)
    probs = probs_of(x, opts, selected)
    experts = apply_capacity(x, selected, opts.drop_policy, opts.order, priority=probs)
    state = {"beta": beta, "beta_accum": accum, "beta_count": torch.tensor(count)}
    meta = {"beta": torch.stack(seen), "target": x.tokens * x.k // x.experts}
    return Slots(experts, weights=kept_weights(probs, experts), meta=meta, state=state, selected=selected)

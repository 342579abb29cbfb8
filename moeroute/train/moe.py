"""The MoE feed-forward layer of the training ablation: any registered router assigns tokens to experts, any
combine-weight operator weights them, and a gather/scatter dispatch runs the experts.

Gate, routing and combine weights come from :class:`moeroute.nn.MaxScoreRouter`: the assignment is discrete (no
gradient), the combine weights are the weight operator applied to the live softmax scores, so the gate learns
through them, as in GShard/Tutel. A dropped slot contributes nothing: the block's residual connection carries the
token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from moeroute.core.problem import RouterInput
from moeroute.core.routing import Routing
from moeroute.nn import MaxScoreRouter
from moeroute.weights.schedule import SoftTopkSchedule


@dataclass
class MoEStats:
    """What one MoE layer did on one batch: its router input with detached logits/scores ``[G, T, E]``
    (``inputs``, for metrics and captures), the same input with live logits and softmax scores (``live``, with
    gradient, for the balance and z-losses of :mod:`moeroute.train.losses`), and the routing."""

    inputs: RouterInput
    live: RouterInput
    routing: Routing


def dispatch_experts(
    x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor:
    """``sum_r weights[n, r] * FFN_{experts[n, r]}(x[n])`` for tokens ``x`` ``[N, D]``; slots ``-1`` add nothing.

    ``experts``/``weights`` ``[N, R]``; ``w1`` ``[E, D, H]``, ``w2`` ``[E, H, D]``; ``FFN_e(v) = gelu(v w1_e) w2_e``.
    The kept (token, slot) pairs are sorted by expert, gathered into one contiguous ``[A, D]`` block (``A`` = kept
    assignments), each expert runs on its own segment, and the outputs are scattered back with ``index_add``:
    memory ``O(N k D)``, never a ``[T, E, C]`` one-hot, and no padding, so a dropless router's busiest expert
    costs its real load and not ``E`` times it.
    """
    r = experts.shape[1]
    flat = experts.reshape(-1)
    kept = (flat >= 0).nonzero().squeeze(1)
    if kept.numel() == 0:
        return torch.zeros_like(x)
    ids, order = torch.sort(flat[kept], stable=True)
    slot = kept[order]
    token = slot // r
    counts = torch.bincount(ids, minlength=w1.shape[0]).tolist()
    segments = x[token].split(counts)
    out = torch.cat([F.gelu(seg @ w1[e]) @ w2[e] for e, seg in enumerate(segments) if counts[e]])
    out = out * weights.reshape(-1)[slot].unsqueeze(1).to(out.dtype)
    return torch.zeros_like(x).index_add(0, token, out)


class MoELayer(nn.Module):
    """A top-``k`` MoE feed-forward layer routed by the router spec ``router`` (``gshard``,
    ``maxscore:stage2=exact``, ...) with combine-weight operator ``weights``.

    The gate, routing and combine weights are a :class:`moeroute.nn.MaxScoreRouter` (its SoftTopk schedule is this
    layer's; the step is the ``schedule_step`` buffer of the state dict). Input ``[G, T, D]``: each of the ``G``
    sequences is one routing group of ``T`` tokens with capacity ``C = ceil(cf * k * T / E)``.

    A stateful router's state (a dict of tensors) lives in :attr:`router_state`: handed in as
    ``RouterInput.state`` on every forward, replaced by the returned ``Routing.state`` after a training forward
    (evaluation reads it and leaves it alone), advanced by :meth:`step_router_state` after every optimizer step,
    and saved in the state dict (its ``_extra_state``), so checkpoints carry it.
    """

    def __init__(
        self, d_model: int, hidden: int, experts: int, k: int, capacity_factor: Optional[float],
        router: str = "gshard", weights: str = "softmax", layers: int = 1,
        schedule: Optional[SoftTopkSchedule] = None,
    ) -> None:
        super().__init__()
        self.k, self.capacity_factor = k, capacity_factor
        self.router = MaxScoreRouter(d_model, experts, k, capacity_factor, router=router, weights=weights,
                                     schedule=schedule or SoftTopkSchedule())
        self.w1 = nn.Parameter(torch.randn(experts, d_model, hidden) / math.sqrt(d_model))
        # Output projections scaled down by depth, as GPT-2 does, so the residual stream starts calm.
        self.w2 = nn.Parameter(torch.randn(experts, hidden, d_model) / math.sqrt(hidden) / math.sqrt(2 * layers))
        nn.init.normal_(self.router.gate.weight, std=0.02)
        self.router_state: dict[str, torch.Tensor] = {}

    @property
    def gate(self) -> nn.Linear:
        return self.router.gate

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, MoEStats]:
        """``x`` ``[G, T, D]`` -> ``[G, T, D]`` and the layer's :class:`MoEStats`. The SoftTopk temperature is the
        router's schedule in training mode and ``t = 1`` in eval mode."""
        g, t, d = x.shape
        out = self.router(x, state=self.router_state)
        if self.training:
            # detached: a state must not hold this step's graph into the next
            self.router_state = {key: value.detach() for key, value in out.routing.state.items()}
        y = dispatch_experts(x.reshape(g * t, d), out.experts.reshape(g * t, -1), out.weights.reshape(g * t, -1),
                             self.w1, self.w2)
        # The router already grouped the logits per sequence and took their softmax: reuse both.
        live = out.inputs
        stats_input = replace(live, logits=live.logits.detach(), scores=live.scores.detach(), state={})
        return y.reshape(g, t, d), MoEStats(stats_input, live, out.routing)

    def step_router_state(self, all_reduce: Callable[[torch.Tensor, str], torch.Tensor]) -> None:
        """Once per optimizer step: the router's registered ``step_update(state, all_reduce, opts)`` (if it has
        one) turns the statistics its state gathered over the step into the next step's state; ``all_reduce``
        reduces over the data-parallel ranks (the identity in one process)."""
        bound = self.router.bound
        update = bound.entry.step_update
        if update is not None:
            new = update(dict(self.router_state), all_reduce, bound.options)
            self.router_state = {key: value.detach() for key, value in dict(new).items()}

    def get_extra_state(self) -> Any:
        return {"router_state": dict(self.router_state)}

    def set_extra_state(self, state: Any) -> None:
        device = self.w1.device
        saved = state.get("router_state", {}) if isinstance(state, dict) else {}
        self.router_state = {key: value.to(device) for key, value in saved.items()}

"""`MaxScoreRouter`: the router as a ``torch.nn.Module`` to drop into an MoE layer -- a learnable linear gate, a
registered router for the (discrete) assignment and a combine-weight operator for the (differentiable) weights."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import RouterInput, make_input
from moeroute.core.routing import Routing
from moeroute.routers import bind_router
from moeroute.routers.registry import with_common
from moeroute.weights.schedule import SoftTopkSchedule


class RouterOutput(NamedTuple):
    """``experts`` long ``[..., k]`` (``-1`` = dropped slot, slot 0 = rank 1); ``weights`` ``[..., k]`` combine
    weights (zero on dropped slots, differentiable w.r.t. the gate); ``routing`` the grouped :class:`Routing`
    (``routing.combine_weights()`` gives the dense ``[G, T, E]`` form); ``logits`` ``[..., E]`` the gate output;
    ``inputs`` the grouped router input (logits and live softmax scores ``[G, T, E]``, capacity), so callers need
    not validate and softmax the logits a second time."""

    experts: torch.Tensor
    weights: torch.Tensor
    routing: Routing
    logits: torch.Tensor
    inputs: RouterInput


class MaxScoreRouter(torch.nn.Module):
    """Linear gate ``d_model -> num_experts``, then routing by ``router`` (a spec string, default the MaxScore
    two-stage router) with combine weights by ``weights`` (default SoftTopk with ``schedule``).

    Groups: ``group_size`` tokens each; by default each sequence of ``hidden [..., S, d_model]`` is a group (the
    paper routes each sequence on its own) and a 2-d ``hidden [N, d_model]`` is one group. Gradients reach the
    gate through the combine weights only: the assignment is discrete. Call :meth:`step` once per optimizer step
    to advance the SoftTopk temperature; ``eval()`` uses ``t = 1``. The step count is the buffer
    ``schedule_step`` of the ``state_dict``.
    """

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        k: int = 2,
        capacity_factor: Optional[float] = 1.0,
        router: str = "maxscore",
        weights: str = "softtopk",
        schedule: Optional[SoftTopkSchedule] = None,
        group_size: Optional[int] = None,
        renormalize: bool = False,
        bias: bool = False,
        device: Any = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if k < 1 or k > num_experts:
            raise MoeRouteError(f"k must be in [1, num_experts={num_experts}], got {k}")
        self.num_experts = num_experts
        self.k = k
        self.capacity_factor = capacity_factor
        self.group_size = group_size
        self.gate = torch.nn.Linear(d_model, num_experts, bias=bias, device=device, dtype=dtype)
        self.schedule = schedule if schedule is not None else SoftTopkSchedule()
        self.bound = bind_router(router, weights=weights, renormalize=renormalize)
        self.register_buffer("schedule_step", torch.tensor(self.schedule.step_count, dtype=torch.long, device=device))
        self.register_load_state_dict_post_hook(MaxScoreRouter._restore_schedule)

    @staticmethod
    def _restore_schedule(module: "MaxScoreRouter", incompatible_keys: Any) -> None:
        module.schedule.step_count = int(module.schedule_step)

    def train(self, mode: bool = True) -> "MaxScoreRouter":
        super().train(mode)
        self.schedule.train(mode)
        return self

    def step(self, n: int = 1) -> float:
        """Advance the temperature schedule by ``n`` optimizer steps; returns the new training temperature."""
        t = self.schedule.step(n)
        self.schedule_step.fill_(self.schedule.step_count)
        return t

    @property
    def temperature(self) -> float:
        return self.schedule.temperature

    def forward(self, hidden: torch.Tensor, state: Optional[Mapping[str, torch.Tensor]] = None) -> RouterOutput:
        """Route ``hidden`` ``[..., d_model]``; see :class:`RouterOutput`. ``state``: a stateful router's state
        from an earlier call (its ``routing.state``), handed in as ``RouterInput.state``; ``None`` = cold start."""
        if hidden.dim() < 2:
            raise MoeRouteError(f"hidden must be [..., tokens, d_model], got shape {tuple(hidden.shape)}")
        lead = hidden.shape[:-1]
        logits = self.gate(hidden)
        flat = logits.reshape(-1, self.num_experts)
        group = self.group_size if self.group_size is not None else hidden.shape[-2]
        x = make_input(flat, self.k, self.capacity_factor, group, state)
        bound = with_common(self.bound, temperature=self.schedule.temperature)
        routing = bound(x)
        width = routing.experts.shape[-1]
        experts = routing.experts.reshape(*lead, width)
        weights = routing.weights.reshape(*lead, width).to(hidden.dtype)
        return RouterOutput(experts, weights, routing, logits, x)

    def extra_repr(self) -> str:
        return f"k={self.k}, capacity_factor={self.capacity_factor}, router={self.bound.spec!r}"

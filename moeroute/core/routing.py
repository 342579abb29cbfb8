"""`Routing`: which experts each token got, in which rank, and with which combine weight."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from moeroute.core.errors import RoutingInvariantError

EMPTY = -1
"""Expert id of an empty (dropped or unused) slot."""


def expert_load(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Long ``[G, E]``: how many entries of ``experts`` ``[G, ...]`` name each expert (``-1`` ignored)."""
    g = experts.shape[0]
    flat = experts.reshape(g, -1)
    idx = torch.where(flat < 0, torch.full_like(flat, num_experts), flat)
    out = torch.zeros(g, num_experts + 1, dtype=torch.long, device=experts.device)
    out.scatter_add_(1, idx, torch.ones_like(idx))
    return out[:, :num_experts]


@dataclass
class Slots:
    """What a router returns: ``experts`` long ``[G, T, R]`` (expert of each token's rank-``r`` slot, ``-1`` when
    empty), optional combine ``weights`` ``[G, T, R]`` (``None``: the spec's weight operator computes them; a
    router's own weights are used while the spec keeps the default ``weights=softmax`` without ``renormalize``),
    ``meta`` (diagnostics such as iterations or rounds; numbers and strings reach result tables), ``state``: what a
    next call should receive as :attr:`RouterInput.state` (e.g. the bias after the last group), and ``selected``:
    long ``[G, T, R']``, what the router chose *before* a capacity rule dropped anything (``None``: the router has no
    separate selection, its slots are what it chose; see docs/metrics.md). The framework turns it into a
    :class:`Routing` with the problem's own ``k`` and capacity."""

    experts: torch.Tensor
    weights: Optional[torch.Tensor] = None
    meta: dict[str, Any] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    selected: Optional[torch.Tensor] = None


@dataclass
class Routing:
    """A routing of ``G`` groups of ``T`` tokens to ``E`` experts, built by the framework from a router's
    :class:`Slots` and the problem (routers never construct it themselves).

    ``experts[g, t, r]`` is the expert of token ``t``'s rank-``r`` slot (``r = 0`` the first choice) or ``-1`` when
    that slot was dropped. ``R`` is usually ``k``; routers where a token may get more than ``k`` experts (Expert
    Choice) use a wider ``R`` and set ``max_per_token=None``. ``weights`` ``[G, T, R]`` are the combine weights,
    zero on empty slots. ``selected`` (long ``[G, T, R']`` or ``None``) is what the router chose before capacity
    dropped anything (``None``: the same as ``experts``); ``score`` names the score function of the scores the
    router selected by (softmax, sigmoid, sqrt_softplus).
    """

    experts: torch.Tensor
    weights: Optional[torch.Tensor]
    num_experts: int
    k: int
    capacity: Optional[int]
    router: str = ""
    max_per_token: Optional[int] = None
    meta: dict[str, Any] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    selected: Optional[torch.Tensor] = None
    score: str = "softmax"

    @property
    def groups(self) -> int:
        return self.experts.shape[0]

    @property
    def tokens(self) -> int:
        return self.experts.shape[1]

    @property
    def slots(self) -> int:
        return self.experts.shape[2]

    def indices(self) -> torch.Tensor:
        """Expert ids ``[G, T, R]`` (long), ``-1`` for a dropped slot."""
        return self.experts

    def assigned(self) -> torch.Tensor:
        """Bool ``[G, T, R]``: which slots hold an expert."""
        return self.experts >= 0

    def dispatch_mask(self) -> torch.Tensor:
        """Bool ``[G, T, E]``: ``True`` where token ``t`` is sent to expert ``e``."""
        g, t, _ = self.experts.shape
        counts = torch.zeros(g, t, self.num_experts + 1, dtype=torch.int32, device=self.experts.device)
        # Empty slots go to a spare column E that is cut off, so no masking pass is needed.
        idx = torch.where(self.assigned(), self.experts, torch.full_like(self.experts, self.num_experts))
        counts.scatter_add_(2, idx, torch.ones_like(idx, dtype=torch.int32))
        return counts[..., : self.num_experts] > 0

    def combine_weights(self) -> torch.Tensor:
        """Float ``[G, T, E]``: each token's combine weight per expert (zero where not dispatched)."""
        if self.weights is None:
            raise ValueError("this routing carries no combine weights")
        g, t, _ = self.experts.shape
        out = torch.zeros(g, t, self.num_experts + 1, dtype=self.weights.dtype, device=self.experts.device)
        idx = torch.where(self.assigned(), self.experts, torch.full_like(self.experts, self.num_experts))
        out.scatter_add_(2, idx, torch.where(self.assigned(), self.weights, torch.zeros_like(self.weights)))
        return out[..., : self.num_experts]

    def load(self) -> torch.Tensor:
        """Long ``[G, E]``: tokens each expert received in each group."""
        return self.dispatch_mask().sum(dim=1)

    def selection(self) -> torch.Tensor:
        """Long ``[G, T, R']``: what the router chose before any capacity (``experts`` when it reports nothing
        separate)."""
        return self.experts if self.selected is None else self.selected

    def selected_load(self) -> torch.Tensor:
        """Long ``[G, E]``: how many tokens selected each expert, before any capacity was applied."""
        return expert_load(self.selection(), self.num_experts)

    def experts_per_token(self) -> torch.Tensor:
        """Long ``[G, T]``: how many experts each token got."""
        return self.assigned().sum(dim=2)

    def check(self) -> None:
        """Raise :class:`RoutingInvariantError` unless ids are in range, no token holds an expert twice, no token
        exceeds ``max_per_token`` and no expert exceeds ``capacity``."""
        ex = self.experts
        if ex.dim() != 3 or ex.dtype != torch.long:
            raise RoutingInvariantError(f"{self.router}: experts must be a long [G, T, R] tensor, got {ex.dtype} {tuple(ex.shape)}")
        if bool(((ex < EMPTY) | (ex >= self.num_experts)).any()):
            raise RoutingInvariantError(f"{self.router}: expert id out of range [-1, {self.num_experts})")
        per_token = self.experts_per_token()
        distinct = self.dispatch_mask().sum(dim=2)
        if bool((distinct != per_token).any()):
            raise RoutingInvariantError(f"{self.router}: a token was given the same expert twice")
        if self.max_per_token is not None and bool((per_token > self.max_per_token).any()):
            raise RoutingInvariantError(f"{self.router}: a token got more than {self.max_per_token} experts")
        if self.capacity is not None:
            worst = int(self.load().max())
            if worst > self.capacity:
                raise RoutingInvariantError(f"{self.router}: an expert took {worst} tokens, capacity is {self.capacity}")
        if self.weights is not None and self.weights.shape != ex.shape:
            raise RoutingInvariantError(f"{self.router}: weights shape {tuple(self.weights.shape)} != {tuple(ex.shape)}")
        sel = self.selected
        if sel is not None:
            if sel.dim() != 3 or sel.dtype != torch.long or tuple(sel.shape[:2]) != tuple(ex.shape[:2]):
                raise RoutingInvariantError(f"{self.router}: selected must be a long [G, T, R'] tensor like the slots")
            if bool(((sel < EMPTY) | (sel >= self.num_experts)).any()):
                raise RoutingInvariantError(f"{self.router}: selected expert id out of range [-1, {self.num_experts})")


def gather_scores(scores: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """``scores[g, t, experts[g, t, r]]`` ``[G, T, R]``, zero where the slot is empty."""
    picked = torch.gather(scores, 2, experts.clamp(min=0))
    return torch.where(experts == EMPTY, torch.zeros_like(picked), picked)


def slots_from_mask(mask: torch.Tensor, rank_scores: torch.Tensor, slots: int) -> torch.Tensor:
    """Turn a dispatch mask ``[G, T, E]`` into rank slots ``[G, T, slots]``, best ``rank_scores`` first.

    Used by routers whose solver returns a set of experts per token (exact flow, Expert Choice) rather than a
    ranked list. ``slots`` must be at least the largest number of experts any token holds.
    """
    masked = torch.where(mask, rank_scores, torch.full_like(rank_scores, -float("inf")))
    top = torch.topk(masked, slots, dim=-1)
    keep = torch.gather(mask, 2, top.indices)
    return torch.where(keep, top.indices, torch.full_like(top.indices, EMPTY))

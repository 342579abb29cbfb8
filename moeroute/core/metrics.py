"""The metrics, written once and used for every router (docs/metrics.md)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import RouterInput
from moeroute.core.routing import Routing, gather_scores

TABLE_KEYS = (
    "router", "score", "groups", "tokens", "experts", "k", "capacity", "slot_drop_rate", "token_drop_rate",
    "second_choice_drop_rate", "selection_drop_rate", "over_k_rate", "mean_experts_per_token", "mean_load_ratio",
    "max_load_ratio", "padding_factor", "rank1_affinity", "rank2_affinity", "rank1_affinity_kept", "rank2_affinity_kept",
    "max_vio", "gini", "ep_ranks", "ep_max_over_mean", "ep_rank_tokens", "objective", "optimum", "gap", "latency_ms",
)
"""The keys of ``moeroute eval --format json`` (and csv), in order (docs/metrics.md)."""


@dataclass
class RoutingMetrics:
    """What one router did on one set of logits ``[G, T, E]``.

    Rates are fractions in [0, 1]. Load ratios divide each expert's load by the capacity ``C`` (by ``k*T/E`` when
    there is none). ``objective`` and the optima are totals over groups of the scores of the assignments, the
    scores of the score function the router selects by (``score``: softmax, sigmoid or sqrt_softplus);
    ``gap = (optimum - objective) / optimum`` against the MCMF optimum of those same scores (negative for a router
    that drops slots it could fill yet scores more: the max-weight optimum bounds every router, the MCMF one only
    those that fill as many slots).

    Balance of what the router *selected*, before any capacity dropped anything (its ``Routing.selection()``):
    ``max_vio`` is each group's ``max_e load_e / mean_e load_e - 1`` averaged over the groups (DeepSeek's MaxVio of
    a batch; 0 = perfectly balanced), ``max_vio_global`` the same on the loads summed over all groups (a global
    batch), ``gini`` the Gini coefficient of each group's expert loads, averaged (0 = equal, ``1 - 1/E`` = one
    expert takes all). ``selection_drop_rate``: the fraction of selected (token, expert) pairs missing from the
    final routing (0 for routers without a separate selection). ``mean_experts_per_token``: experts a token kept.

    Affinity: ``rank1_affinity`` (``rank2_affinity``) is the mean over *all* tokens of the score of the token's
    rank-1 (rank-2) slot, an empty (dropped) slot counting 0, so dropping never raises it (the training log's
    ``rank{1,2}_affinity_with_drops``); ``rank1_affinity_kept`` / ``rank2_affinity_kept`` are the means over the
    tokens whose slot is filled. Rank 2 is ``None`` when ``k = 1``.

    Expert-parallel view (``ep_ranks = R``, experts placed contiguously, ``E / R`` per rank; one group is one
    sending rank's local batch, so capacity was counted per sending rank and the drops happened before the
    all-to-all, as in Megatron-Core): ``ep_rank_tokens`` the (token, expert) assignments each rank receives from all
    groups together, ``ep_max_over_mean`` its max over its mean.
    """

    router: str
    groups: int
    tokens: int
    experts: int
    k: int
    capacity: Optional[int]
    slot_drop_rate: float
    token_drop_rate: float
    second_choice_drop_rate: Optional[float]
    over_k_rate: float
    mean_load_ratio: float
    max_load_ratio: float
    padding_factor: float
    sorted_load_ratios: list[float]
    objective: float
    optimum: Optional[float] = None
    gap: Optional[float] = None
    maxweight_optimum: Optional[float] = None
    rank1_affinity: Optional[float] = None
    rank2_affinity: Optional[float] = None
    rank1_affinity_kept: Optional[float] = None
    rank2_affinity_kept: Optional[float] = None
    latency_ms: Optional[float] = None
    latency_calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    score: str = "softmax"
    selection_drop_rate: float = 0.0
    mean_experts_per_token: float = 0.0
    max_vio: float = 0.0
    max_vio_global: float = 0.0
    gini: float = 0.0
    ep_ranks: Optional[int] = None
    ep_rank_tokens: Optional[list[int]] = None
    ep_max_over_mean: Optional[float] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table_row(self) -> dict[str, Any]:
        """The flat row of ``moeroute eval`` (keys :data:`TABLE_KEYS`)."""
        d = self.as_dict()
        return {key: d[key] for key in TABLE_KEYS}


def _mean(x: torch.Tensor) -> Optional[float]:
    return float(x.double().mean()) if x.numel() else None


def max_violation(load: torch.Tensor) -> torch.Tensor:
    """``max / mean - 1`` of each row of expert loads ``[..., E]`` (0 for a row without load): ``[...]``."""
    load = load.double()
    mean = load.mean(dim=-1)
    return torch.where(mean > 0, load.amax(dim=-1) / mean.clamp(min=1e-300) - 1.0, torch.zeros_like(mean))


def gini(load: torch.Tensor) -> torch.Tensor:
    """The Gini coefficient of each row of expert loads ``[..., E]``: ``sum_ij |x_i - x_j| / (2 E^2 mean)``, 0 for
    equal loads (and for a row without load), ``1 - 1/E`` when one expert takes everything: ``[...]``."""
    load = load.double()
    e = load.shape[-1]
    spread = (load.unsqueeze(-1) - load.unsqueeze(-2)).abs().sum(dim=(-1, -2))
    mean = load.mean(dim=-1)
    return torch.where(mean > 0, spread / (2 * e * e * mean.clamp(min=1e-300)), torch.zeros_like(mean))


def ep_rank_tokens(load: torch.Tensor, ranks: int) -> list[int]:
    """Assignments each of ``ranks`` expert-parallel ranks receives, experts placed contiguously (``E / ranks``
    each), from the loads ``[G, E]`` of all groups (every group a sending rank)."""
    e = load.shape[-1]
    if ranks < 1 or e % ranks:
        raise MoeRouteError(f"ep_ranks={ranks} must be >= 1 and divide the E={e} experts")
    return [int(v) for v in load.sum(dim=0).view(ranks, e // ranks).sum(dim=1)]


def selection_dropped(routing: Routing) -> float:
    """The fraction of the router's selected (token, expert) pairs that its final routing does not hold."""
    if routing.selected is None:
        return 0.0
    sel = routing.selected
    chosen = int((sel >= 0).sum())
    if chosen == 0:
        return 0.0
    held = (sel.unsqueeze(-1) == routing.experts.unsqueeze(-2)) & (sel >= 0).unsqueeze(-1)
    return 1.0 - float(held.any(dim=-1).sum()) / chosen


def routing_metrics(x: RouterInput, routing: Routing, ep_ranks: Optional[int] = None) -> RoutingMetrics:
    """Drop rates, loads, balance and affinities of ``routing`` on input ``x`` (optimum and latency are filled by
    the caller, who knows whether they were computed); ``ep_ranks`` adds the expert-parallel view."""
    g, t, e, k = x.groups, x.tokens, x.experts, x.k
    assigned = routing.assigned()
    per_token = assigned.sum(dim=2)
    # min(n, k): a token holding more than k experts (Expert Choice) does not make up for another's drop.
    slot_drop = 1.0 - float(per_token.clamp(max=k).sum()) / (g * t * k)
    token_drop = float((per_token == 0).double().mean())
    second = None
    if k >= 2:
        second = float((~assigned[:, :, 1]).double().mean()) if routing.slots >= 2 else 1.0
    load = routing.load().double()
    reference = float(x.capacity) if x.capacity is not None else k * t / e
    ratios = load / reference
    sorted_ratios = torch.sort(ratios, dim=1, descending=True).values.mean(dim=0)
    picked = gather_scores(x.scores, routing.experts).double()  # [G, T, R], 0 on empty slots
    # Rank r's slot of every token, an empty slot scoring 0 (a router with fewer slots than k left rank 2 empty).
    rank = [picked[:, :, r] if routing.slots > r else picked.new_zeros(g, t) for r in range(min(k, 2))]
    kept = [picked[:, :, r][assigned[:, :, r]] if routing.slots > r else picked.new_zeros(0) for r in range(min(k, 2))]
    selected_load = routing.selected_load()
    ranks = ep_rank_tokens(routing.load(), ep_ranks) if ep_ranks is not None else None
    ep_ratio = None
    if ranks is not None:
        mean_rank = sum(ranks) / len(ranks)
        ep_ratio = max(ranks) / mean_rank if mean_rank > 0 else 0.0
    return RoutingMetrics(
        router=routing.router,
        groups=g,
        tokens=t,
        experts=e,
        k=k,
        capacity=x.capacity,
        slot_drop_rate=max(0.0, slot_drop),
        token_drop_rate=token_drop,
        second_choice_drop_rate=second,
        over_k_rate=float((per_token > k).double().mean()),
        mean_load_ratio=float(load.sum()) / (g * e * reference),
        max_load_ratio=float(ratios.max()),
        padding_factor=float(load.max()) / (k * t / e),
        sorted_load_ratios=[round(v, 6) for v in sorted_ratios.tolist()],
        objective=float(picked.sum()),
        rank1_affinity=_mean(rank[0]),
        rank2_affinity=_mean(rank[1]) if k >= 2 else None,
        rank1_affinity_kept=_mean(kept[0]),
        rank2_affinity_kept=_mean(kept[1]) if k >= 2 else None,
        score=x.score,
        selection_drop_rate=selection_dropped(routing),
        mean_experts_per_token=float(per_token.double().mean()),
        max_vio=float(max_violation(selected_load).mean()),
        max_vio_global=float(max_violation(selected_load.sum(dim=0))),
        gini=float(gini(selected_load).mean()),
        ep_ranks=ep_ranks,
        ep_rank_tokens=ranks,
        ep_max_over_mean=ep_ratio,
    )


def objective_gap(objective: float, optimum: Optional[float]) -> Optional[float]:
    """``(optimum - objective) / optimum``; ``None`` without an optimum."""
    if optimum is None or optimum == 0 or math.isnan(optimum):
        return None
    return (optimum - objective) / optimum

"""The metrics of docs/metrics.md, written once and used for every router."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from moeroute.core.problem import RouterInput
from moeroute.core.routing import Routing, gather_scores

TABLE_KEYS = (
    "router", "groups", "tokens", "experts", "k", "capacity", "slot_drop_rate", "token_drop_rate",
    "second_choice_drop_rate", "over_k_rate", "mean_load_ratio", "max_load_ratio", "padding_factor",
    "rank1_affinity", "rank2_affinity", "objective", "optimum", "gap", "latency_ms",
)
"""The keys of ``moeroute eval --format json`` (and csv), in order."""


@dataclass
class RoutingMetrics:
    """What one router did on one set of logits ``[G, T, E]``.

    Rates are fractions in [0, 1]. Load ratios divide each expert's load by the capacity ``C`` (by ``k*T/E`` when
    there is none). ``objective`` and the optima are totals over groups of the softmax scores of the assignments;
    ``gap = (optimum - objective) / optimum`` against the MCMF optimum (negative for a router that drops slots it
    could fill yet scores more: the max-weight optimum bounds every router, the MCMF one only those that fill as
    many slots).
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
    latency_ms: Optional[float] = None
    latency_calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table_row(self) -> dict[str, Any]:
        """The flat row of ``moeroute eval`` (keys :data:`TABLE_KEYS`)."""
        d = self.as_dict()
        return {key: d[key] for key in TABLE_KEYS}


def _mean(x: torch.Tensor) -> Optional[float]:
    return float(x.double().mean()) if x.numel() else None


def routing_metrics(x: RouterInput, routing: Routing) -> RoutingMetrics:
    """Drop rates, loads and affinities of ``routing`` on input ``x`` (optimum and latency are filled by the
    caller, who knows whether they were computed)."""
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
    picked = gather_scores(x.scores, routing.experts).double()
    rank1 = picked[:, :, 0][assigned[:, :, 0]]
    rank2 = picked[:, :, 1][assigned[:, :, 1]] if routing.slots >= 2 else picked.new_zeros(0)
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
        rank1_affinity=_mean(rank1),
        rank2_affinity=_mean(rank2),
    )


def objective_gap(objective: float, optimum: Optional[float]) -> Optional[float]:
    """``(optimum - objective) / optimum``; ``None`` without an optimum."""
    if optimum is None or optimum == 0 or math.isnan(optimum):
        return None
    return (optimum - objective) / optimum

"""Replay a recorded routing: what a model's own expert choices (ids only, no scores: vLLM ``routed_experts``, a
Megatron router trace) did to the experts and ranks, and what a capacity would have dropped.

Measured per layer, on expert ids ``[N, k]`` (``-1``: no expert):

- ``loads``: tokens per expert over the whole trace, and ``max_vio = max load / mean load - 1`` (0 = perfectly
  balanced; the mean is over all ``E`` experts);
- per-rank balance with experts laid out contiguously over ``ep_ranks`` expert-parallel ranks (rank ``r`` holds
  experts ``r*E/R .. (r+1)*E/R - 1``): tokens per rank and ``max/mean`` of them;
- the drops a capacity would cause: the trace cut into groups of ``T`` tokens, ``C = ceil(cf * k * T / E)`` per
  group, slots kept first come in token order, every first choice before any second (the project's capacity rule,
  :func:`moeroute.routers.apply_capacity`; the recorded slot order is taken as the rank order); slot, token and
  second-choice drop rates and load ratios as :mod:`moeroute.core.metrics` defines them.

Everything that needs scores (objective, optimum, gap, affinities) is ``None`` (shown as n/a): a replay has no
scores and invents none. Formats and the command in docs/traces.md.

The balance helpers here are deliberately small and local; they compute the same quantities as the expert-parallel
metrics of :mod:`moeroute.core.metrics` will once those land (one definition per quantity is the goal).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.metrics import ep_rank_tokens, max_violation
from moeroute.core.problem import RouterInput, expert_capacity
from moeroute.routers import apply_capacity

REPLAY_KEYS = (
    "layer", "groups", "tokens", "experts", "k", "capacity", "max_vio", "ep_ranks", "rank_max_over_mean",
    "slot_drop_rate", "token_drop_rate", "second_choice_drop_rate", "mean_load_ratio", "max_load_ratio",
    "padding_factor", "objective", "optimum", "gap", "rank1_affinity", "rank2_affinity", "latency_ms",
)
"""The keys of a replay row (``moeroute eval --routing``), in order; the score-based ones are always ``None``."""


@dataclass
class ReplayMetrics:
    """What a recorded routing did on one layer (rates are fractions; see the module docstring)."""

    source: str
    layer: str
    groups: int
    tokens: int
    experts: int
    k: int
    capacity: Optional[int]
    max_vio: float
    ep_ranks: int
    rank_max_over_mean: float
    slot_drop_rate: float
    token_drop_rate: float
    second_choice_drop_rate: Optional[float]
    mean_load_ratio: float
    max_load_ratio: float
    padding_factor: float
    loads: list[int] = field(default_factory=list)
    rank_tokens: list[int] = field(default_factory=list)
    left_out: int = 0
    """Tokens at the end of the trace that fill no group of ``tokens`` (not replayed)."""
    objective: None = None
    optimum: None = None
    gap: None = None
    rank1_affinity: None = None
    rank2_affinity: None = None
    latency_ms: None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table_row(self) -> dict[str, Any]:
        d = self.as_dict()
        return {key: d[key] for key in REPLAY_KEYS}


def expert_loads(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Long ``[E]``: how many slots of ``experts`` (any shape; ``-1`` ignored) name each expert."""
    flat = experts.reshape(-1)
    return torch.bincount(flat[flat >= 0], minlength=num_experts)[:num_experts]


def group_expert_loads(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Long ``[G, E]``: per group, how many slots of ``experts`` ``[G, ...]`` name each expert (``-1`` ignored)."""
    g = experts.shape[0]
    flat = experts.reshape(g, -1)
    ids = (flat + torch.arange(g).unsqueeze(1) * num_experts)[flat >= 0]
    return torch.bincount(ids, minlength=g * num_experts).reshape(g, num_experts)


def kept_by_capacity(experts: torch.Tensor, num_experts: int, capacity: Optional[int]) -> torch.Tensor:
    """``experts`` ``[G, T, k]`` with the slots a per-group capacity drops set to ``-1`` (the shared rule, first
    come in token order, rank-major)."""
    g, t, _ = experts.shape
    # apply_capacity reads only the shapes of the input for the first-come rule; a zero-stride tensor stands in for
    # the scores a replay does not have.
    shape_only = torch.zeros(1, 1, 1).expand(g, t, num_experts)
    x = RouterInput(shape_only, shape_only, experts.shape[2], capacity, None)
    return apply_capacity(x, experts, "position")


def check_ids(experts: torch.Tensor, num_experts: Optional[int], where: str) -> int:
    """Validate recorded ids ``[N, k]`` and return ``E`` (``num_experts``, or the largest id + 1)."""
    if experts.dim() != 2 or experts.numel() == 0:
        raise MoeRouteError(f"{where}: expected expert ids [tokens, k], got shape {tuple(experts.shape)}")
    if bool((experts < -1).any()):
        raise MoeRouteError(f"{where}: expert ids must be >= 0 (or -1 for no expert), found {int(experts.min())}")
    top = int(experts.max())
    if num_experts is None:
        return max(top + 1, 1)
    if top >= num_experts:
        raise MoeRouteError(f"{where}: expert id {top} is out of range for E={num_experts}")
    return num_experts


def replay(
    experts: torch.Tensor,
    num_experts: Optional[int] = None,
    capacity_factor: Optional[float] = None,
    group_size: Optional[int] = None,
    ep_ranks: int = 1,
    source: str = "",
    layer: str = "",
) -> ReplayMetrics:
    """Replay recorded expert ids ``[N, k]`` (see the module docstring). ``num_experts`` defaults to the largest id
    + 1; ``group_size`` (default: all ``N`` tokens as one group) sets the capacity's group; leftover tokens that
    fill no group are left out of the capacity part and counted in ``left_out``."""
    where = f"{source} {layer}".strip() or "routing"
    e = check_ids(experts, num_experts, where)
    n, k = experts.shape
    loads = expert_loads(experts, e)
    per_rank = torch.tensor(ep_rank_tokens(loads.unsqueeze(0), ep_ranks))  # the metrics' own EP view
    t = n if group_size is None else group_size
    if t < 1 or t > n:
        raise MoeRouteError(f"{where}: group size {t} must be between 1 and the {n} recorded tokens")
    g = n // t
    grouped = experts[: g * t].reshape(g, t, k)
    capacity = expert_capacity(capacity_factor, k, t, e)
    kept = kept_by_capacity(grouped, e, capacity)
    recorded, assigned = grouped >= 0, kept >= 0
    slots = int(recorded.sum())
    had = recorded.any(dim=2)
    second = None
    if k >= 2:
        wanted = int(recorded[:, :, 1].sum())
        second = float((recorded[:, :, 1] & ~assigned[:, :, 1]).sum()) / wanted if wanted else 0.0
    group_loads = group_expert_loads(kept, e).double()
    reference = float(capacity) if capacity is not None else k * t / e
    return ReplayMetrics(
        source=source, layer=layer, groups=g, tokens=t, experts=e, k=k, capacity=capacity,
        max_vio=float(max_violation(loads)), ep_ranks=ep_ranks,
        rank_max_over_mean=float(per_rank.max()) / float(per_rank.double().mean()) if int(per_rank.sum()) else 1.0,
        slot_drop_rate=1.0 - float(assigned.sum()) / slots if slots else 0.0,
        token_drop_rate=float((had & ~assigned.any(dim=2)).sum()) / max(1, int(had.sum())),
        second_choice_drop_rate=second,
        mean_load_ratio=float(group_loads.sum()) / (g * e * reference),
        max_load_ratio=float(group_loads.max()) / reference,
        padding_factor=float(group_loads.max()) / (k * t / e),
        loads=loads.tolist(), rank_tokens=per_rank.tolist(), left_out=n - g * t,
    )

"""The routing numbers of one optimizer step, gathered over its micro-batches and reduced over the data-parallel
ranks, so the log of an N-process run reads like that of one process holding the whole global batch."""

from __future__ import annotations

import math
from typing import Callable

import torch

from moeroute.core.metrics import routing_metrics
from moeroute.core.routing import gather_scores
from moeroute.train.moe import MoEStats

AllReduce = Callable[[torch.Tensor, str], torch.Tensor]

ROUTING_COLUMNS = (
    "slot_drop_rate", "second_choice_drop_rate", "mean_load_ratio", "max_load_ratio", "balance_violation",
    "rank1_affinity_with_drops", "rank2_affinity_with_drops",
)
"""Per step, averaged over MoE layers: drop rates and the mean load ratio (means over the step's tokens or groups),
``max_load_ratio`` (the largest expert load over capacity in any group of the step), ``balance_violation``
(``max_e L_e / mean_e L_e - 1`` with ``L_e`` the tokens expert ``e`` received over the whole global batch, after
capacity: MaxVio of Wang et al. 2024), and the rank-r affinity: the mean over *all* tokens of the softmax score of
the token's rank-r slot, a dropped slot counting 0 (so a router that drops a slot is not credited with the scores
of the slots it kept)."""

# The columns that are means over equal shares of the step's tokens: averaged over micro-batches and ranks.
_MEANS = ("slot_drop_rate", "second_choice_drop_rate", "mean_load_ratio", "rank1_affinity_with_drops",
          "rank2_affinity_with_drops")


def layer_values(stats: MoEStats) -> dict[str, float]:
    """The per-layer means of :data:`_MEANS` and the max load ratio of one micro-batch (NaN where undefined,
    e.g. rank 2 when ``k = 1``)."""
    m = routing_metrics(stats.inputs, stats.routing)
    picked = gather_scores(stats.inputs.scores, stats.routing.experts).double()  # [G, T, R], 0 on dropped slots
    rank = [float(picked[:, :, r].mean()) if picked.shape[2] > r else math.nan for r in (0, 1)]
    return {
        "slot_drop_rate": m.slot_drop_rate,
        "second_choice_drop_rate": math.nan if m.second_choice_drop_rate is None else m.second_choice_drop_rate,
        "mean_load_ratio": m.mean_load_ratio,
        "max_load_ratio": m.max_load_ratio,
        "rank1_affinity_with_drops": rank[0],
        "rank2_affinity_with_drops": rank[1] if stats.inputs.k >= 2 else math.nan,
    }


class StepTally:
    """Adds up one optimizer step: losses and routing numbers of every micro-batch on this rank; :meth:`reduce`
    turns them into the step's log values with two collectives (sums, maxima)."""

    def __init__(self, layers: int, experts: int, device: torch.device) -> None:
        self.sums = torch.zeros(layers, len(_MEANS), dtype=torch.float64)
        self.max_ratio = torch.zeros(layers, dtype=torch.float64)
        self.load = torch.zeros(layers, experts, dtype=torch.float64)
        self.losses: dict[str, float] = {}
        self.micro = 0
        self.device = device

    def add(self, stats: list[MoEStats], losses: dict[str, float]) -> None:
        for i, s in enumerate(stats):
            values = layer_values(s)
            self.sums[i] += torch.tensor([values[k] for k in _MEANS], dtype=torch.float64)
            self.max_ratio[i] = max(float(self.max_ratio[i]), values["max_load_ratio"])
            self.load[i] += s.routing.load().sum(dim=0).double().cpu()
        for key, value in losses.items():
            self.losses[key] = self.losses.get(key, 0.0) + value
        self.micro += 1

    def reduce(self, all_reduce: AllReduce, world: int) -> dict[str, float]:
        """The step's values over all ranks and micro-batches: losses and :data:`ROUTING_COLUMNS`."""
        names = list(self.losses)
        loss = torch.tensor([self.losses[k] for k in names], dtype=torch.float64)
        packed = torch.cat([loss, self.sums.reshape(-1), self.load.reshape(-1)]).to(self.device)
        packed = all_reduce(packed, "sum").cpu() / (self.micro * world)
        worst = all_reduce(self.max_ratio.to(self.device), "max").cpu()
        n, layers = len(names), self.sums.shape[0]
        out = {k: float(v) for k, v in zip(names, packed[:n])}
        means = packed[n:n + self.sums.numel()].reshape(self.sums.shape)
        load = packed[n + self.sums.numel():].reshape(self.load.shape)
        for j, key in enumerate(_MEANS):
            out[key] = float(means[:, j].mean())  # NaN stays NaN: a column undefined for this k
        out["max_load_ratio"] = float(worst.mean())
        mean_load = load.mean(dim=1)
        violation = torch.where(mean_load > 0, load.max(dim=1).values / mean_load.clamp(min=1e-30) - 1, 0.0)
        out["balance_violation"] = float(violation.mean()) if layers else math.nan
        return out


__all__ = ["ROUTING_COLUMNS", "StepTally", "layer_values"]

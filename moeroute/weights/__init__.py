"""Combine-weight operators: turn a routing's chosen experts and the scores into combine weights.

Kept apart from the assignment so any router can take any operator (``weights=softmax`` ...). An operator is a
function ``(scores [G, T, E], experts [G, T, R], options) -> weights [G, T, R]``, zero on empty slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.registry import Registry
from moeroute.core.routing import gather_scores

WeightOp = Callable[[torch.Tensor, torch.Tensor, "CommonOptions"], torch.Tensor]
WEIGHT_OPS: Registry[WeightOp] = Registry("weight operator")


@dataclass(frozen=True)
class CommonOptions:
    """Options every router accepts, applied after the assignment.

    ``weights``: the combine-weight operator. ``renormalize``: divide each token's weights by their sum over the
    experts it kept (the paper's code does not). ``temperature``: SoftTopk's ``t`` for later ranks (``None`` = 1,
    the evaluation value).
    """

    weights: str = "softmax"
    renormalize: bool = False
    temperature: Optional[float] = None

    def validate(self) -> None:
        WEIGHT_OPS.get(self.weights)  # refuses an unknown operator, naming the known ones
        if self.temperature is not None and not self.temperature > 0:
            raise MoeRouteError(f"temperature must be > 0, got {self.temperature}")


COMMON_KEYS = frozenset(CommonOptions.__dataclass_fields__)


def register_weight_op(name: str) -> Callable[[WeightOp], WeightOp]:
    def wrap(fn: WeightOp) -> WeightOp:
        WEIGHT_OPS.add(name, fn, same=lambda old: old is fn)
        return fn

    return wrap


def weight_ops() -> list[str]:
    return WEIGHT_OPS.names()


def combine_weights(scores: torch.Tensor, experts: torch.Tensor, options: CommonOptions) -> torch.Tensor:
    """Apply the operator named in ``options`` and the optional renormalisation: ``[G, T, R]``."""
    w = WEIGHT_OPS.get(options.weights)(scores, experts, options)
    if options.renormalize:
        total = w.sum(dim=-1, keepdim=True)
        w = torch.where(total > 0, w / total.clamp(min=torch.finfo(w.dtype).tiny), w)
    return w


@register_weight_op("softmax")
def softmax_weights(scores: torch.Tensor, experts: torch.Tensor, options: CommonOptions) -> torch.Tensor:
    """The softmax score of each chosen expert, not renormalised (GShard, DeepSpeed, the paper)."""
    return gather_scores(scores, experts)


def _load_operators() -> None:
    from moeroute.core.plugins import import_submodules

    import_submodules(__name__)


_load_operators()

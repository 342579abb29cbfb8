"""The routing problem: logits validated into groups, the capacity rule, and the inputs every router receives."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from moeroute.core.errors import MoeRouteError


def expert_capacity(capacity_factor: Optional[float], k: int, tokens: int, experts: int) -> Optional[int]:
    """Tokens one expert may take in one group: ``C = ceil(cf * k * T / E)``; ``None`` when ``cf`` is ``None``.

    The one capacity rule of the project (Megatron and DeepSpeed share it). The product is rounded to 9 decimals
    before the ceiling so that e.g. ``cf = 1.1`` does not gain a slot from binary floating point.
    """
    if capacity_factor is None:
        return None
    if not capacity_factor > 0:
        raise MoeRouteError(f"capacity factor must be > 0, got {capacity_factor}")
    return max(1, math.ceil(round(capacity_factor * k * tokens / experts, 9)))


def as_logits_tensor(logits: Any) -> torch.Tensor:
    """Turn a tensor or array into a float tensor, or raise a one-line :class:`MoeRouteError`."""
    if isinstance(logits, np.ndarray):
        logits = torch.from_numpy(logits)
    if not isinstance(logits, torch.Tensor):
        raise MoeRouteError(f"logits must be a torch.Tensor or numpy array, got {type(logits).__name__}")
    if not (logits.is_floating_point()):
        raise MoeRouteError(f"logits must be floating point, got dtype {logits.dtype}")
    return logits


def as_groups(logits: Any, group_size: Optional[int] = None) -> torch.Tensor:
    """Validate logits ``[N, E]`` or ``[G, T, E]`` and return them as float32 ``[G, T, E]``.

    ``group_size`` splits ``[N, E]`` into ``N / group_size`` groups of ``group_size`` tokens; with ``[G, T, E]`` it
    must equal ``T`` or be ``None``. NaN or infinite logits are refused, since every score would be meaningless.
    """
    x = as_logits_tensor(logits)
    if x.numel() == 0:
        raise MoeRouteError(f"logits are empty: shape {tuple(x.shape)}")
    if x.dim() == 2:
        n, e = x.shape
        t = n if group_size is None else group_size
        if t < 1 or n % t != 0:
            raise MoeRouteError(f"{n} tokens are not divisible into groups of {group_size}")
        x = x.reshape(n // t, t, e)
    elif x.dim() == 3:
        if group_size is not None and group_size != x.shape[1]:
            raise MoeRouteError(
                f"logits are already grouped as {tuple(x.shape)}; group size {group_size} != T={x.shape[1]}"
            )
    else:
        raise MoeRouteError(f"logits must have shape [N, E] or [G, T, E], got {tuple(x.shape)}")
    if x.numel() == 0:
        raise MoeRouteError(f"logits are empty: shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "infinite"
        raise MoeRouteError(f"logits contain {bad} values")
    return x.float()


def _sqrt_softplus(logits: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(logits).sqrt()


SCORE_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda logits: logits.softmax(dim=-1),
    "sigmoid": torch.sigmoid,
    "sqrt_softplus": _sqrt_softplus,
}
"""The score functions a router can select by, from logits ``[..., E]`` (float32 in, float32 out): ``softmax``
over the experts (GShard, Mixtral, Qwen), ``sigmoid`` per expert (DeepSeek-V3), ``sqrt_softplus``
``sqrt(log(1 + e^L))`` per expert (DeepSeek-V4). The same formulas as Megatron-Core's
``topk_routing_with_score_function`` (docs/routers.md)."""


def score_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The score function called ``name``, or a one-line :class:`MoeRouteError` naming the known ones."""
    fn = SCORE_FUNCTIONS.get(name)
    if fn is None:
        raise MoeRouteError(f"unknown score function {name!r} (known: {', '.join(SCORE_FUNCTIONS)})")
    return fn


@dataclass(frozen=True)
class RouterInput:
    """What a router receives: logits and scores ``[G, T, E]``, ``k`` and the capacity ``C`` (or None).

    ``scores`` are ``score_fn(logits)`` for the score function named ``score`` (softmax unless the router's spec
    says ``score=sigmoid`` or ``score=sqrt_softplus``: the framework re-derives the input for such a router, see
    :meth:`with_score`). Whatever a router selects by is what its objective, the exact optimum and the gap use.

    ``state`` is what a router carries between calls (e.g. ``{"bias": [E]}`` of aux-loss-free balancing, expert
    ``prices`` of a dual method), handed in explicitly by the caller: empty means a cold start. A router returns
    the state a next call should get in :attr:`Slots.state`; routers stay pure functions of (input, options).
    """

    logits: torch.Tensor
    scores: torch.Tensor
    k: int
    capacity: Optional[int]
    capacity_factor: Optional[float]
    state: Mapping[str, torch.Tensor] = field(default_factory=dict)
    score: str = "softmax"

    @property
    def groups(self) -> int:
        return self.logits.shape[0]

    @property
    def tokens(self) -> int:
        return self.logits.shape[1]

    @property
    def experts(self) -> int:
        return self.logits.shape[2]

    def with_score(self, score: str) -> "RouterInput":
        """This input with the scores of score function ``score`` (``self`` when it already has them)."""
        if score == self.score:
            return self
        return replace(self, scores=score_function(score)(self.logits), score=score)

    def with_state(self, state: Optional[Mapping[str, torch.Tensor]]) -> "RouterInput":
        """This input with a router state handed in (``None``: a cold start)."""
        return replace(self, state=dict(state or {}))


def make_input(
    logits: Any,
    k: int,
    capacity_factor: Optional[float],
    group_size: Optional[int] = None,
    state: Optional[Mapping[str, torch.Tensor]] = None,
    score: str = "softmax",
) -> RouterInput:
    """Validate everything a router needs and compute the scores ``score_fn(L)`` once (softmax by default; see
    :data:`SCORE_FUNCTIONS`)."""
    x = as_groups(logits, group_size)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MoeRouteError(f"k must be an integer >= 1, got {k!r}")
    e = x.shape[2]
    if k > e:
        raise MoeRouteError(f"k={k} is larger than the number of experts E={e}")
    cap = expert_capacity(capacity_factor, int(k), x.shape[1], e)
    return RouterInput(
        logits=x, scores=score_function(score)(x), k=int(k), capacity=cap, capacity_factor=capacity_factor,
        state=dict(state or {}), score=score,
    )

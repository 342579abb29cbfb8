"""The router registry and the routing contract.

A router is a function ``fn(x: RouterInput, opts) -> Slots`` (or a bare long tensor of slots) registered under a
name with a dataclass of options. It returns *what it chose*; the framework builds the :class:`Routing` from the
problem (``k``, the capacity ``C`` computed from the capacity factor, ``E``) and checks it against the problem,
never against numbers the router reports about itself. What a router deliberately does differently is declared
when it registers:

- ``capacity="ignored"``: it routes without capacity (dropless); its routing is checked without ``C``.
- ``experts_per_token="any"``: a token may get more than ``k`` experts (Expert Choice); slots may be wider.
- ``requires``: a precondition on the input (BASE needs ``k = 1``), refused with one line before any work.
- ``selects_by``: for a router without a ``score=`` option, what it selects by (Sinkhorn: the logits); a spec
  giving it ``score=`` is refused with that sentence.
- ``examples``: specs with non-default options that the invariant tests run besides the bare name.

Score functions: a router whose options have a ``score`` field (``softmax``, ``sigmoid``, ``sqrt_softplus``)
selects by those scores. The framework re-derives the input (:meth:`RouterInput.with_score`) before calling it, so
its slots, its objective, the exact optimum it is compared with and its gap all use the same scores.

Combine weights: a router may return its own (``Slots.weights``; the top-k routers return Megatron-Core's
``probs``). They are used while the spec keeps the default weight operator (``weights=softmax``) and no
``renormalize``; a spec naming another operator gets that operator applied to the router's scores instead.

A router that carries state between calls (a bias, prices) reads it from ``RouterInput.state`` and returns the
next state in ``Slots.state``. In training, statistics are global over data-parallel ranks: such a router may also
register ``step_update(state, all_reduce, opts) -> state``, which the trainer calls once per optimizer step with
``all_reduce(tensor, op)`` (``op`` ``"sum"`` or ``"mean"`` over the data-parallel ranks; the identity in one
process) to turn the statistics the router accumulated in its state into the next step's state.

The invariant tests read these declarations instead of keeping a list of exceptions by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Optional, Union

import torch

from moeroute.core.errors import MoeRouteError, RouterFailure, RoutingInvariantError
from moeroute.core.options import build_options, format_spec, parse_spec, resolved_options
from moeroute.core.problem import RouterInput, make_input
from moeroute.core.registry import Registry
from moeroute.core.routing import Routing, Slots
from moeroute.weights import COMMON_KEYS, CommonOptions, combine_weights

RouterFn = Callable[[RouterInput, Any], Union[Slots, torch.Tensor]]
Requirement = Callable[[RouterInput, Any], Optional[str]]
AllReduce = Callable[[torch.Tensor, str], torch.Tensor]
StepUpdate = Callable[[dict[str, torch.Tensor], AllReduce, Any], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class NoOptions:
    """For routers without options of their own."""


@dataclass(frozen=True)
class RouterEntry:
    """A registered router: its function, options dataclass, text for listings, and its declared contract."""

    name: str
    fn: RouterFn
    options: type
    description: str
    source: str
    capacity: Literal["enforced", "ignored"] = "enforced"
    experts_per_token: Literal["k", "any"] = "k"
    requires: Optional[Requirement] = None
    step_update: Optional[StepUpdate] = None
    selects_by: Optional[str] = None
    examples: tuple[str, ...] = ()

    def refusal(self, x: RouterInput, opts: Any) -> Optional[str]:
        """Why this router cannot route ``x`` with ``opts`` (``None``: it can)."""
        return self.requires(x, opts) if self.requires is not None else None

    @property
    def has_score_option(self) -> bool:
        """Whether the router takes ``score=`` (its options dataclass has a ``score`` field)."""
        return "score" in getattr(self.options, "__dataclass_fields__", {})


ROUTERS: Registry[RouterEntry] = Registry("router")


def register_router(
    name: str,
    options: type = NoOptions,
    description: str = "",
    source: str = "",
    *,
    capacity: Literal["enforced", "ignored"] = "enforced",
    experts_per_token: Literal["k", "any"] = "k",
    requires: Optional[Requirement] = None,
    step_update: Optional[StepUpdate] = None,
    selects_by: Optional[str] = None,
    examples: tuple[str, ...] = (),
) -> Callable[[RouterFn], RouterFn]:
    """Register ``fn(x: RouterInput, opts) -> Slots`` as router ``name`` (see the module docstring).

    ``fn`` returns ranked slots ``[G, T, R]`` (``-1`` for an empty slot; ``R = k`` unless
    ``experts_per_token="any"``), optionally with combine weights and ``meta``. Combine weights are otherwise
    computed afterwards by the weight operator the spec names, so routers never duplicate that logic.
    """
    if capacity not in ("enforced", "ignored"):
        raise MoeRouteError(f"router {name!r}: capacity must be 'enforced' or 'ignored', got {capacity!r}")
    if experts_per_token not in ("k", "any"):
        raise MoeRouteError(f"router {name!r}: experts_per_token must be 'k' or 'any', got {experts_per_token!r}")

    def wrap(fn: RouterFn) -> RouterFn:
        entry = RouterEntry(
            name, fn, options, description.strip(), source.strip(), capacity, experts_per_token, requires, step_update,
            selects_by, tuple(examples),
        )
        ROUTERS.add(name, entry, same=lambda old: old.fn is fn)
        return fn

    return wrap


def router_names() -> list[str]:
    return ROUTERS.names()


def router_entry(name: str) -> RouterEntry:
    return ROUTERS.get(name)


@dataclass(frozen=True)
class BoundRouter:
    """A parsed spec, ready to call on validated input; build once, call many times (latency loops).

    ``spec`` is the spec as canonicalised from what was written; ``resolved`` names every option with its
    value, defaults filled in (``maxscore`` and ``maxscore:eps=0.01`` resolve to the same string), and is what
    identifies a configuration in stored results.
    """

    spec: str
    entry: RouterEntry
    options: Any
    common: CommonOptions
    resolved: str = field(default="")

    @property
    def score(self) -> str:
        """The score function this router selects by (its ``score=`` option; softmax for routers without one)."""
        return getattr(self.options, "score", "softmax")

    def input_for(self, x: RouterInput) -> RouterInput:
        """``x`` with the scores this router selects by (``x`` itself when they are the same)."""
        return x.with_score(self.score)

    def __call__(self, x: RouterInput, check: bool = True) -> Routing:
        """Route ``x``: the router's slots turned into a :class:`Routing` built and (``check=True``) checked by the
        framework. The input is re-derived first when the router selects by another score function than ``x``'s
        (:meth:`input_for`). A router that raises anything but a :class:`MoeRouteError` is reported as a
        :class:`RouterFailure` naming it (one line), with the original exception chained."""
        x = self.input_for(x)
        reason = self.entry.refusal(x, self.options)
        if reason:
            raise MoeRouteError(f"{self.entry.name}: {reason}")
        try:
            out = self.entry.fn(x, self.options)
        except (MoeRouteError, RoutingInvariantError):
            raise
        except Exception as exc:  # a router's own bug or a plugin's ValueError: one line, never a traceback
            first = (str(exc).splitlines() or [""])[0][:200]
            raise RouterFailure(f"router {self.spec!r} failed: {type(exc).__name__}: {first}") from exc
        routing = self.build(x, out)
        if check:
            routing.check()
        # A router's own weights (e.g. Megatron's probs) stand unless the spec names another operator.
        own = routing.weights is not None and self.common.weights == "softmax" and not self.common.renormalize
        if not own:
            routing.weights = combine_weights(x.scores, routing.experts, self.common)
        return routing

    def build(self, x: RouterInput, out: Union[Slots, torch.Tensor]) -> Routing:
        """The :class:`Routing` of slots ``out`` on problem ``x``, with the capacity and ``k`` of the problem (combine
        weights are added by :meth:`__call__` once the slots are checked)."""
        if isinstance(out, torch.Tensor):
            out = Slots(out)
        if not isinstance(out, Slots):
            raise RoutingInvariantError(
                f"{self.spec}: a router must return Slots or a long [G, T, R] tensor, got {type(out).__name__}"
            )
        experts = out.experts
        if not isinstance(experts, torch.Tensor) or experts.dim() != 3 or experts.dtype != torch.long:
            got = f"{experts.dtype} {tuple(experts.shape)}" if isinstance(experts, torch.Tensor) else type(experts).__name__
            raise RoutingInvariantError(f"{self.spec}: slots must be a long [G, T, R] tensor, got {got}")
        if tuple(experts.shape[:2]) != (x.groups, x.tokens):
            raise RoutingInvariantError(
                f"{self.spec}: slots {tuple(experts.shape)} do not match the problem's G={x.groups}, T={x.tokens}"
            )
        wide = self.entry.experts_per_token == "any"
        if not wide and experts.shape[2] != x.k:
            raise RoutingInvariantError(f"{self.spec}: slots have R={experts.shape[2]}, the problem has k={x.k}")
        routing = Routing(
            experts=experts,
            weights=out.weights,
            num_experts=x.experts,
            k=x.k,
            capacity=x.capacity if self.entry.capacity == "enforced" else None,
            router=self.spec,
            max_per_token=None if wide else x.k,
            meta=dict(out.meta),
            state=dict(out.state),
            selected=out.selected,
            score=x.score,
        )
        return routing


def bind_router(spec: str, **overrides: Any) -> BoundRouter:
    """Parse ``spec`` (``name:key=value,...``) plus keyword overrides into a :class:`BoundRouter`."""
    name, raw = parse_spec(spec)
    raw = {**raw, **overrides}
    entry = router_entry(name)
    if "score" in raw and not entry.has_score_option:
        why = entry.selects_by or "its own rule"
        raise MoeRouteError(f"router {name!r} takes no score= option: it selects by {why}")
    common_raw = {k: v for k, v in raw.items() if k in COMMON_KEYS}
    own_raw = {k: v for k, v in raw.items() if k not in COMMON_KEYS}
    options = build_options(entry.options, own_raw, f"router {name!r}")
    common = build_options(CommonOptions, common_raw, f"router {name!r}")
    resolved = format_spec(name, {**resolved_options(options), **resolved_options(common)})
    return BoundRouter(format_spec(name, raw), entry, options, common, resolved)


def resolve_spec(spec: str) -> str:
    """``spec`` with every option of the router and of the combine weights named, defaults filled in."""
    return bind_router(spec).resolved


def route(
    logits: Any,
    router: str = "gshard",
    k: int = 2,
    capacity_factor: Optional[float] = 1.0,
    group_size: Optional[int] = None,
    check: bool = True,
    state: Optional[dict[str, torch.Tensor]] = None,
    **options: Any,
) -> Routing:
    """Route logits ``[N, E]`` or ``[G, T, E]`` with the router named by ``router`` (a spec string).

    Capacity is per group, ``C = ceil(capacity_factor * k * T / E)``; ``capacity_factor=None`` means none.
    Keyword ``options`` override those in the spec. The returned :class:`Routing` is always grouped
    (``[G, T, R]``) and, with ``check=True``, has been checked against the problem's capacity and ``k``. ``state``
    is what a stateful router carried from an earlier call (its ``Routing.state``); ``None`` is a cold start.
    """
    bound = bind_router(router, **options)
    x = make_input(logits, k, capacity_factor, group_size, state)
    return bound(x, check=check)


def with_common(bound: BoundRouter, **changes: Any) -> BoundRouter:
    """``bound`` with some common options changed (e.g. the SoftTopk temperature of a training step)."""
    return replace(bound, common=replace(bound.common, **changes))

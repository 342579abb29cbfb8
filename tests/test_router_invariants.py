"""Every registered router (iterated from ``router_names()``, so routers added later are covered too) on random
cases across shapes, k, capacity factors (0.5..2 and none), ties and extreme logits (±50):

- the routing passes ``Routing.check()``: no token gets an expert twice, no expert exceeds C, ids in range;
- the drop rates are in [0, 1];
- ``exact`` reaches the MCMF optimum (zero gap);
- every router whose routing is feasible (no token over k, no expert over C; Expert Choice and dropless may not
  be) scores at most the max-weight optimum;
- the MCMF optimum scores at least every router that fills as many slots.

A router refuses a case only through the precondition it declared when it registered (``requires=``); any other
``MoeRouteError`` fails the test. What it checks against comes from its declarations too (``capacity="ignored"``,
``experts_per_token="any"``), so no list of exceptions is kept here by hand.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moeroute import MoeRouteError, router_names
from moeroute.core.metrics import routing_metrics
from moeroute.core.problem import make_input
from moeroute.evaluation import optima
from moeroute.routers import bind_router

EXTRA_SPECS = {
    "gshard": ["gshard:drop_policy=probs"],
    "reroute": ["reroute:variant=second"],
    "sinkhorn": ["sinkhorn:eps=0.1,iters=20"],
    "base": ["base:solver=auction"],
    "aux_free": ["aux_free:rate=0.05"],
}
"""Non-default options worth covering too (only for routers that are registered)."""


def all_specs() -> list[str]:
    specs = []
    for name in router_names():
        specs.append(name)
        specs.extend(EXTRA_SPECS.get(name, []))
    return specs


def logits_strategy(kind: str, g: int, t: int, e: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "gauss":
        return torch.randn(g, t, e, generator=gen) * 2
    if kind == "ties":  # small integers: many exactly equal scores within and across tokens
        return torch.randint(0, 3, (g, t, e), generator=gen).float()
    # extreme: ±50 and 0, so softmax scores are exactly 0 or 1 (or 1/2, 1/3 ...)
    return (torch.randint(-1, 2, (g, t, e), generator=gen) * 50).float()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    g=st.integers(1, 2),
    t=st.integers(1, 12),
    e=st.integers(1, 6),
    k=st.integers(1, 3),
    cf=st.one_of(st.none(), st.floats(0.5, 2.0), st.sampled_from([0.5, 1.0, 2.0])),
    kind=st.sampled_from(["gauss", "ties", "extreme"]),
    seed=st.integers(0, 10_000),
)
def test_every_router_obeys_the_invariants(g, t, e, k, cf, kind, seed):
    k = min(k, e)
    logits = logits_strategy(kind, g, t, e, seed)
    x = make_input(logits, k, cf)
    mcmf, maxweight = optima(x)
    slack = 1e-6 * g * t * k + 1e-9  # the solvers optimise integer costs round(S * 1e6)
    for spec in all_specs():
        bound = bind_router(spec)
        if bound.entry.refusal(x, bound.options):
            with pytest.raises(MoeRouteError):
                bound(x)
            continue
        routing = bound(x)  # a MoeRouteError here is a refusal the router did not declare: the test fails
        routing.check()
        if bound.entry.capacity == "enforced" and x.capacity is not None:
            assert routing.capacity == x.capacity
        if bound.entry.experts_per_token == "k":
            assert routing.slots == k
        assert routing.experts.shape[:2] == (g, t)
        if routing.weights is not None:
            assert torch.isfinite(routing.weights).all()
            assert (routing.weights[routing.experts < 0] == 0).all()
        m = routing_metrics(x, routing)
        for rate in (m.slot_drop_rate, m.token_drop_rate, m.over_k_rate):
            assert 0.0 <= rate <= 1.0
        if m.second_choice_drop_rate is not None:
            assert 0.0 <= m.second_choice_drop_rate <= 1.0
        if x.capacity is not None and routing.capacity is not None:
            assert int(routing.load().max()) <= x.capacity
        over_k = bool((routing.experts_per_token() > k).any())
        over_c = x.capacity is not None and int(routing.load().max()) > x.capacity
        if over_k or over_c:
            continue  # outside the problem (Expert Choice over k, dropless ignoring C): the optima do not bound it
        assert m.objective <= float(maxweight.objective.sum()) + slack, spec
        filled = int(routing.assigned().sum())
        assert filled <= int(mcmf.flow.sum())
        if filled == int(mcmf.flow.sum()):
            assert m.objective <= float(mcmf.objective.sum()) + slack, spec
        if spec == "exact":
            assert filled == int(mcmf.flow.sum())
            assert m.objective == pytest.approx(float(mcmf.objective.sum()), abs=slack)


@pytest.mark.parametrize("spec", all_specs())
def test_every_router_routes_some_ordinary_case(spec):
    """The invariant test above only means something for a router that is not refused everywhere: each registered
    router (and listed variant) must route at least one of a few ordinary cases."""
    bound = bind_router(spec)
    cases = [(k, cf) for k in (1, 2) for cf in (1.0, None)]
    routed = 0
    for k, cf in cases:
        x = make_input(logits_strategy("gauss", 2, 16, 4, seed=k), k, cf)
        if not bound.entry.refusal(x, bound.options):
            routed += int(bound(x).assigned().any())
    assert routed >= 1, f"{spec} routed none of {cases}"

"""Every registered router (iterated from ``router_names()``, each with the non-default specs it declares as
``examples``, so routers added later are covered too) on random cases across shapes, k, capacity factors
(0.5..2 and none), ties and extreme logits (±50):

- a router refuses a case exactly when its declared ``requires`` says so (one-line ``MoeRouteError``);
- the routing passes ``Routing.check()``: no token gets an expert twice, no expert exceeds C (unless the router
  declared ``capacity="ignored"``), no token exceeds k (unless ``experts_per_token="any"``), ids in range;
- drop rates and balance metrics are in range; combine weights are finite and zero on empty slots;
- ``exact`` reaches the MCMF optimum of the scores it selects by (zero gap), whatever the score function;
- every router whose routing is feasible scores at most the max-weight optimum of its own scores;
- the MCMF optimum scores at least every router that fills as many slots;
- a stateful router accepts the state it returned, and its ``step_update`` returns a state of the same keys.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moeroute import MoeRouteError, router_names
from moeroute.core.metrics import routing_metrics
from moeroute.core.problem import make_input
from moeroute.evaluation import Optima
from moeroute.routers import bind_router, router_entry


def all_specs() -> list[str]:
    """Every router by name, plus the specs with non-default options it declares (``examples``)."""
    specs = []
    for name in router_names():
        specs.append(name)
        specs.extend(router_entry(name).examples)
    return specs


def logits_strategy(kind: str, g: int, t: int, e: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "gauss":
        return torch.randn(g, t, e, generator=gen) * 2
    if kind == "ties":  # small integers: many exactly equal scores within and across tokens
        return torch.randint(0, 3, (g, t, e), generator=gen).float()
    # extreme: ±50 and 0, so softmax scores are exactly 0 or 1 (or 1/2, 1/3 ...)
    return (torch.randint(-1, 2, (g, t, e), generator=gen) * 50).float()


def _check_metrics(x, routing):
    m = routing_metrics(x, routing, ep_ranks=1)
    for rate in (m.slot_drop_rate, m.token_drop_rate, m.over_k_rate, m.selection_drop_rate):
        assert 0.0 <= rate <= 1.0
    if m.second_choice_drop_rate is not None:
        assert 0.0 <= m.second_choice_drop_rate <= 1.0
    assert m.max_vio >= 0 and m.max_vio_global >= 0 and 0.0 <= m.gini < 1.0
    assert m.ep_rank_tokens == [int(routing.assigned().sum())]
    return m


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
    optimum = Optima(x)
    slack = 1e-6 * g * t * k + 1e-9  # the solvers optimise integer costs round(S * 1e6)
    for spec in all_specs():
        bound = bind_router(spec)
        xr = bound.input_for(x)
        if bound.entry.refusal(xr, bound.options):
            with pytest.raises(MoeRouteError):
                bound(x)
            continue
        routing = bound(x)  # a MoeRouteError here is a refusal the router did not declare: the test fails
        routing.check()
        assert routing.score == xr.score == bound.score
        if bound.entry.capacity == "enforced" and x.capacity is not None:
            assert routing.capacity == x.capacity
        if bound.entry.experts_per_token == "k":
            assert routing.slots == k
        assert routing.experts.shape[:2] == (g, t)
        assert torch.isfinite(routing.weights).all(), spec
        assert (routing.weights[routing.experts < 0] == 0).all(), spec
        m = _check_metrics(xr, routing)
        if x.capacity is not None and bound.entry.capacity == "enforced":
            assert int(routing.load().max()) <= x.capacity
        over_k = bool((routing.experts_per_token() > k).any())
        over_c = x.capacity is not None and int(routing.load().max()) > x.capacity
        if over_k or over_c:
            continue  # outside the problem (Expert Choice over k, dropless ignoring C): the optima do not bound it
        mcmf, maxweight = optimum.get(xr.score)
        assert m.objective <= float(maxweight.objective.sum()) + slack, spec
        filled = int(routing.assigned().sum())
        assert filled <= int(mcmf.flow.sum())
        if filled == int(mcmf.flow.sum()):
            assert m.objective <= float(mcmf.objective.sum()) + slack, spec
        if bound.entry.name == "exact":
            assert filled == int(mcmf.flow.sum())
            assert m.objective == pytest.approx(float(mcmf.objective.sum()), abs=slack)


def _identity(tensor, op):
    return tensor


@pytest.mark.parametrize("spec", [s for s in all_specs() if router_entry(s.partition(":")[0]).step_update])
def test_stateful_routers_take_their_own_state_back(spec):
    bound = bind_router(spec)
    x = make_input(logits_strategy("gauss", 3, 16, 4, 7), 2, 1.0)
    first = bound(x)
    assert first.state, spec
    second = bound(x.with_state(first.state))
    second.check()
    stepped = bound.entry.step_update(second.state, _identity, bound.options)
    assert set(stepped) == set(second.state)
    bound(x.with_state(stepped)).check()


@pytest.mark.parametrize("spec", all_specs())
def test_every_router_routes_some_ordinary_case(spec):
    """The invariant test above only means something for a router that is not refused everywhere: each registered
    router (and declared example) must route at least one of a few ordinary cases."""
    bound = bind_router(spec)
    cases = [(k, cf) for k in (1, 2) for cf in (1.0, None)]
    routed = 0
    for k, cf in cases:
        x = bound.input_for(make_input(logits_strategy("gauss", 2, 16, 4, seed=k), k, cf))
        if not bound.entry.refusal(x, bound.options):
            routed += int(bound(x).assigned().any())
    assert routed >= 1, f"{spec} routed none of {cases}"

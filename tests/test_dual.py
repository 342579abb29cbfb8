"""The ``dual`` router and its price solver: the vectorised auction against a plain loop, invariants, the certified
gap bound against the exact optimum, warm starts and the data-parallel price update."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeroute import route
from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import make_input
from moeroute.routers import bind_router, router_entry
from moeroute.solvers import solve_optimum
from moeroute.solvers.flow_network import max_flow_value
from moeroute.solvers.prices import PriceConfig, solve_prices
from moeroute.solvers.sync import as_on_accelerator

from reference.prices import auction_loop, best_response


def _softmax_scores(seed: int, groups: int, tokens: int, experts: int, skew: float = 0.5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(groups, tokens, experts, generator=gen) + skew * torch.randn(experts, generator=gen)
    return logits.softmax(dim=-1)


def _objective(scores: torch.Tensor, experts: torch.Tensor) -> float:
    picked = torch.gather(scores, 2, experts.clamp(min=0))
    return float(torch.where(experts >= 0, picked, torch.zeros_like(picked)).double().sum())


# ---------------------------------------------------------------- the auction against its plain loop


@pytest.mark.parametrize("seed", range(6))
def test_auction_equals_the_plain_loop(seed: int) -> None:
    g, t, e, k = 2, 24, 5, 2
    scores = _softmax_scores(seed, g, t, e)
    cap = math.ceil(k * t / e)
    config = PriceConfig(iters=10, width=e)
    result = solve_prices(
        scores, torch.full((g, t), k), k, torch.full((g, e), cap), config,
    )
    scale = scores.amax(dim=2).mean(dim=1)  # the eps unit, computed as the solver does
    for gi in range(g):
        rows = [[np.float32(v) for v in row] for row in scores[gi].tolist()]
        epsilons = [np.float32(np.float32(scale[gi].item()) * config.eps(i)) for i in range(config.iters)]
        prices, iterations, _ = auction_loop(rows, k, cap, epsilons)
        assert result.prices[gi, :e].tolist() == [float(p) for p in prices]
        assert result.iterations >= iterations if g > 1 else result.iterations == iterations
        held = best_response(rows, prices, k)
        got = result.units.nodes[gi].tolist()
        assert [sorted(h) for h in got] == [sorted(top) for top, _ in held]


def test_auction_stops_once_no_expert_is_over_full() -> None:
    # Every token's top-2 already fits: no price moves, no iteration runs.
    scores = torch.tensor([[[0.6, 0.3, 0.1], [0.1, 0.6, 0.3], [0.3, 0.1, 0.6]]])
    result = solve_prices(scores, torch.full((1, 3), 2), 2, torch.full((1, 3), 2))
    assert result.iterations == 0 and result.converged and float(result.prices.abs().max()) == 0.0


# ---------------------------------------------------------------- invariants


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    groups=st.integers(1, 3),
    tokens=st.integers(1, 40),
    experts=st.integers(1, 12),
    k=st.integers(1, 4),
    cf=st.sampled_from([0.25, 0.5, 1.0, 1.25, 2.0, None]),
    kind=st.sampled_from(["gauss", "ties", "extreme", "skew"]),
    iters=st.sampled_from([0, 1, 4, 16]),
    width=st.sampled_from([0, 1, 3]),
)
def test_invariants_and_no_droppable_slot(seed, groups, tokens, experts, k, cf, kind, iters, width) -> None:
    k = min(k, experts)
    gen = torch.Generator().manual_seed(seed)
    if kind == "ties":
        logits = torch.randint(0, 2, (groups, tokens, experts), generator=gen).float()
    elif kind == "extreme":
        logits = torch.randint(-1, 2, (groups, tokens, experts), generator=gen).float() * 60
    elif kind == "skew":
        logits = torch.randn(groups, tokens, experts, generator=gen) + 2 * torch.randn(experts, generator=gen)
    else:
        logits = torch.randn(groups, tokens, experts, generator=gen) * 2
    r = route(logits, f"dual:iters={iters},width={width}", k=k, capacity_factor=cf)  # route() checks the contract
    per_group = r.assigned().sum(dim=(1, 2))
    want = k * tokens if r.capacity is None else max_flow_value(tokens, experts, k, r.capacity)
    assert bool((per_group == want).all()), "a slot was dropped that capacity allows"
    # Slots are compact and ranked by score.
    assert bool((r.assigned()[:, :, :-1] >= r.assigned()[:, :, 1:]).all())
    picked = torch.gather(logits.softmax(-1), 2, r.experts.clamp(min=0))
    picked = torch.where(r.assigned(), picked, torch.full_like(picked, -1.0))
    assert bool((picked[:, :, :-1] >= picked[:, :, 1:]).all())


# ---------------------------------------------------------------- the guarantee, against the exact optimum


@pytest.mark.parametrize("path", ["cpu", "accelerator"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_certified_gap_bound_holds_against_the_exact_optimum(k: int, path: str) -> None:
    """docs/dual.md: OPT - objective <= gap_bound * objective on every call, and a converged auction on a tight
    problem (k*T = E*C) is optimal: the torch (accelerator) auction as it is, the compiled CPU auction with
    ``step=0`` (with a step, each unit is within it of its best response)."""
    checked_converged = 0
    context = as_on_accelerator if path == "accelerator" else contextlib.nullcontext
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        g, e = 2, int(torch.randint(3, 9, (1,), generator=gen))
        t = e * int(torch.randint(2, 7, (1,), generator=gen))
        kk = min(k, e)
        logits = torch.randn(g, t, e, generator=gen) + torch.randn(e, generator=gen) * 1.5
        x = make_input(logits, kk, 1.0)
        iters = int(torch.randint(0, 20, (1,), generator=gen))
        width = int(torch.randint(0, e + 1, (1,), generator=gen))
        optimum = float(solve_optimum(x.scores, kk, x.capacity).objective.sum())
        specs = [f"dual:iters={iters},width={width},sweeps={iters}"]
        if path == "cpu":
            specs.append(f"dual:sweeps={iters * 10},step=0")
        for spec in specs:
            with context():
                r = bind_router(spec)(x)
            got = _objective(x.scores, r.experts)
            bound = r.meta["gap_bound"]
            assert bound >= -1e-6
            assert optimum - got <= bound * got + 1e-5 * optimum
            exact_when_converged = path == "accelerator" or "step=0" in spec
            if exact_when_converged and r.meta["converged"] and kk * t == e * x.capacity:
                checked_converged += 1
                assert got == pytest.approx(optimum, rel=1e-5)
    assert checked_converged > 0


def test_near_exact_on_skewed_logits() -> None:
    x = make_input(torch.randn(4, 256, 16, generator=torch.Generator().manual_seed(0)) + torch.randn(16) * 0.5, 2, 1.0)
    r = bind_router("dual")(x)
    optimum = float(solve_optimum(x.scores, 2, x.capacity).objective.sum())
    assert (optimum - _objective(x.scores, r.experts)) / optimum < 5e-3


# ---------------------------------------------------------------- state, options


def test_prices_are_carried_and_averaged_over_ranks() -> None:
    logits = torch.randn(4, 64, 8, generator=torch.Generator().manual_seed(1)) + torch.randn(8) * 2
    cold = route(logits, "dual", k=2)
    prices = cold.state["prices"]
    assert prices.shape == (8,) and bool((prices >= 0).all()) and float(prices.max()) > 0
    warm = route(logits, "dual", k=2, state={"prices": prices})
    assert warm.meta["converged"] and warm.meta["gap_bound"] < 5e-3
    with as_on_accelerator():
        cold_torch = route(logits, "dual", k=2)
        warm_torch = route(logits, "dual", k=2, state={"prices": cold_torch.state["prices"]})
    assert warm_torch.meta["iterations"] <= cold_torch.meta["iterations"]
    ignored = route(logits, "dual:carry=false", k=2, state={"prices": prices * 100})
    assert torch.equal(ignored.experts, cold.experts)
    update = router_entry("dual").step_update
    ranks = [prices, prices * 3]
    averaged = update({"prices": prices}, lambda tensor, op: torch.stack(ranks).mean(0), bind_router("dual").options)
    assert torch.allclose(averaged["prices"], prices * 2)
    with pytest.raises(MoeRouteError, match="state"):
        route(logits, "dual", k=2, state={"prices": torch.zeros(3)})


def test_carried_prices_work_on_scores_that_require_grad() -> None:
    # Training hands the router logits that require grad and the prices of the previous step (a regression: the
    # warm start read live scores and the compiled auction could not turn them into numpy).
    logits = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(5)) + torch.randn(8) * 2
    prices = route(logits, "dual", k=2).state["prices"]
    live = logits.clone().requires_grad_(True)
    warm = route(live, "dual", k=2, state={"prices": prices.clone().requires_grad_(True)})
    assert torch.equal(warm.experts, route(logits, "dual", k=2, state={"prices": prices}).experts)
    with as_on_accelerator():
        torch_warm = route(live, "dual", k=2, state={"prices": prices})
    assert torch_warm.experts.shape == (2, 64, 2)


def test_without_capacity_it_is_top_k() -> None:
    logits = torch.randn(2, 16, 6, generator=torch.Generator().manual_seed(2))
    r = route(logits, "dual", k=2, capacity_factor=None)
    assert torch.equal(r.experts, torch.topk(logits.softmax(-1), 2, dim=-1).indices)


def test_bad_options_are_one_line_errors() -> None:
    for spec in ("dual:iters=-1", "dual:eps=0", "dual:width=-2", "dual:check_every=0", "dual:slack=-1"):
        with pytest.raises(MoeRouteError):
            route(torch.randn(1, 4, 3), spec)

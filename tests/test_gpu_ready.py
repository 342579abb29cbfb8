"""Ready for a GPU without one: with the accelerator code paths on (moeroute/solvers/sync.py), count the host
synchronisations one router call makes at two sizes; the count must not grow with T and E (docs/gpu.md)."""

from __future__ import annotations

import pytest
import torch
from sync_counter import counting_syncs, syncs_of

from moeroute.core.metrics import routing_metrics
from moeroute.core.problem import make_input
from moeroute.routers import bind_router
from moeroute.routers.maxscore import greedy_top1
from moeroute.solvers.auction import greedy_first
from moeroute.solvers.prices import PriceConfig, solve_prices
from moeroute.solvers.sync import as_on_accelerator

SMALL = (4, 256, 16)
LARGE = (2, 2048, 64)
BOUND = {"gshard": 0, "dropless": 0, "aux_free": 1, "qb": 1, "top_p": 0, "sinkhorn": 2, "reroute": 6, "dual": 24, "maxscore": 24}
"""Most synchronisations one call may make (docs/gpu.md explains each count)."""


@pytest.mark.parametrize("spec", sorted(BOUND))
@pytest.mark.parametrize("k", [2, 4])
def test_host_synchronisations_do_not_grow_with_the_problem(spec: str, k: int) -> None:
    # The count depends on the data (a loop that converges early tests less often) but its bound does not depend on
    # T or E: both sizes stay within the same constant.
    small = syncs_of(spec, *SMALL, k)
    large = syncs_of(spec, *LARGE, k)
    assert small <= BOUND[spec] and large <= BOUND[spec], (small, large)


def test_the_counter_sees_a_synchronisation() -> None:
    x = torch.arange(4.0)
    with counting_syncs() as counter:
        bool((x > 1).any())
        x[x > 1]
        torch.nonzero(x)
        x.tolist()
        x + 1  # not a synchronisation
    assert counter[0] == 4
    assert torch.tensor([torch.tensor(1.0), torch.tensor(2.0)]).tolist() == [1.0, 2.0]  # torch left as it was


def test_accelerator_paths_give_the_cpu_results() -> None:
    """The CPU paths (numpy, the compiled greedy stage 1) and the torch paths an accelerator takes make the same
    routing (no ties here)."""
    gen = torch.Generator().manual_seed(4)
    x = make_input(torch.randn(3, 96, 8, generator=gen) + torch.randn(8, generator=gen), 3, 1.0)
    for spec in ("maxscore:stage2=exact", "maxscore:stage2=sinkhorn", "maxscore:stage2=iterative", "gshard", "reroute"):
        cpu = bind_router(spec)(x)
        with as_on_accelerator():
            acc = bind_router(spec)(x)
        assert torch.equal(cpu.experts, acc.experts), spec


@pytest.mark.parametrize("seed,skew", [(2, 0.3), (3, 0.3), (6, 1.0)])
def test_compiled_and_torch_auctions_reach_the_same_optimum(seed: int, skew: float) -> None:
    """The two price auctions differ (Gauss-Seidel, compiled, on CPU; Jacobi in torch elsewhere). On a tight problem
    where the torch auction converges and the CPU one runs without its extra step, both hold the unique LP optimum:
    the same routing, bit for bit."""
    gen = torch.Generator().manual_seed(seed)
    x = make_input(torch.randn(3, 96, 8, generator=gen) + skew * torch.randn(8, generator=gen), 3, 1.0)
    assert x.experts * x.capacity == x.k * x.tokens  # tight
    spec = "dual:step=0,sweeps=1000,iters=100"
    cpu = bind_router(spec)(x)
    with as_on_accelerator():
        acc = bind_router(spec)(x)
    assert cpu.meta["converged"] and acc.meta["converged"]
    assert torch.equal(cpu.experts, acc.experts)


def test_compiled_stage2_is_the_exact_residual_without_its_step() -> None:
    """MaxScore's stage 2 by the compiled auction (``price_step=0``, run to the end) is the exact residual optimum,
    at least as good as the torch auction's."""
    gen = torch.Generator().manual_seed(4)
    x = make_input(torch.randn(3, 96, 8, generator=gen) + torch.randn(8, generator=gen), 3, 1.0)
    spec = "maxscore:stage2=dual,price_step=0,price_sweeps=1000,price_iters=100"
    cpu = routing_metrics(x, bind_router(spec)(x)).objective
    with as_on_accelerator():
        acc = routing_metrics(x, bind_router(spec)(x)).objective
    exact = routing_metrics(x, bind_router("maxscore:stage2=exact")(x)).objective
    assert cpu == pytest.approx(exact, rel=1e-6) and cpu >= acc - 1e-6


def test_price_solver_paths_agree_with_refreshes() -> None:
    gen = torch.Generator().manual_seed(5)
    scores = (torch.randn(2, 200, 32, generator=gen) + 2 * torch.randn(32, generator=gen)).softmax(-1)
    args = (scores, torch.full((2, 200), 2), 2, torch.full((2, 32), 13), PriceConfig(iters=12, width=6))
    cpu = solve_prices(*args)
    with as_on_accelerator():
        acc = solve_prices(*args)
    # On an accelerator the candidates are refreshed at the convergence tests only, so prices may differ; both
    # must certify the same kind of result: units within candidates, and prices that only rose.
    assert bool((cpu.prices >= 0).all()) and bool((acc.prices >= 0).all())
    assert not bool((acc.units.nodes == -2).any()) and not bool((cpu.units.nodes == -2).any())


def test_greedy_stage_one_is_the_same_on_both_paths() -> None:
    gen = torch.Generator().manual_seed(6)
    scores = torch.rand(2, 300, 12, generator=gen) + torch.rand(12, generator=gen)
    with as_on_accelerator():
        acc = greedy_top1(scores, 40)
    assert torch.equal(greedy_top1(scores, 40)[0], acc[0])
    compiled, diverted = greedy_first(scores, 40)
    assert torch.equal(compiled, acc[0]) and diverted == int((acc[0] != scores.argmax(dim=2)).sum())

"""The compiled CPU auction (moeroute/solvers/auction.py) against its plain loop, its warm starts and certificate,
MaxScore's compiled greedy stage 1, and that ``import moeroute`` does not load numba."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from moeroute.core.problem import make_input
from moeroute.solvers import solve_optimum
from moeroute.solvers.auction import AuctionConfig, auction_route, greedy_first, integer_scale

from reference.gauss_seidel import gauss_seidel, integer_values
from reference.loops import ranked

ROOT = Path(__file__).resolve().parent.parent


def _kernel(scores: torch.Tensor, k: int, capacity: int, eps: float, sweeps: int, cached: int = 2):
    from moeroute.solvers import _auction_jit as kernels

    t, e = scores.shape
    s = scores.numpy()
    out = np.empty((t, k), np.int64)
    prices = np.zeros(e + 1)
    stats = np.zeros(kernels.STATS, np.int64)
    cert = np.zeros(kernels.CERT)
    scale = integer_scale(scores)
    kernels.auction_group(s, scale, np.empty((t, 0), np.int64), np.full(t, k, np.int64), np.full(e, capacity, np.int64),
                          k, eps, sweeps, cached, out, prices, stats, cert)
    return out, [int(round(p * scale)) for p in prices[:e]], stats, scale


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("eps", [0.0, 0.02, 0.2])
def test_kernel_equals_the_plain_gauss_seidel_loop(seed: int, eps: float) -> None:
    """Every price and every holding, sweep for sweep: the cached alternatives, stored margin bounds and contiguous
    holder arrays change nothing (random scores: no ties)."""
    from moeroute.solvers import _auction_jit as kernels

    gen = torch.Generator().manual_seed(seed)
    e = int(torch.randint(3, 12, (1,), generator=gen))
    k = int(torch.randint(1, min(e - 1, 3) + 1, (1,), generator=gen))
    t = int(torch.randint(10, 90, (1,), generator=gen))
    cf = [1.0, 1.0, 1.3][seed % 3]
    scores = (torch.randn(t, e, generator=gen) + 1.5 * torch.randn(e, generator=gen)).softmax(-1)
    capacity = min(t, int(np.ceil(cf * k * t / e)))
    for sweeps in (1, 3, 200):
        out, prices, stats, scale = _kernel(scores, k, capacity, eps, sweeps, cached=1 + seed % 3)
        ref_prices, ref_held, ref_sweeps, converged = gauss_seidel(
            integer_values(scores.numpy(), scale), k, [capacity] * e, eps, sweeps)
        assert prices == ref_prices, sweeps
        assert int(stats[kernels.S_SWEEPS]) == ref_sweeps and bool(stats[kernels.S_CONVERGED]) == converged
        if converged:
            assert [set(row.tolist()) - {-1} for row in out] == ref_held
            # Slots come ordered by score, best first.
            for row, got in zip(scores.tolist(), out.tolist()):
                assert got == [i for i in ranked(row) if i in set(got)]


def test_certificate_and_drop_node() -> None:
    """With capacity for fewer units than tokens need (cf < 1) the surplus goes to the drop node and is the only
    thing missing: every expert full, the certificate above the optimum."""
    gen = torch.Generator().manual_seed(3)
    x = make_input(torch.randn(2, 60, 6, generator=gen) + torch.randn(6, generator=gen), 2, 0.5)
    demand = torch.full((2, 60), 2)
    capacity = torch.full((2, 6), x.capacity)
    result = auction_route(x.scores, demand, capacity, 2, AuctionConfig(eps=0.02, sweeps=100))
    load = torch.stack([torch.bincount(result.experts[g][result.experts[g] >= 0], minlength=6) for g in range(2)])
    assert bool((load == x.capacity).all())
    optimum = solve_optimum(x.scores, 2, x.capacity).objective
    forced = 2 * 60 - 6 * x.capacity
    bound = result.dual - result.drop * forced
    got = result.objective
    assert bool((bound >= optimum - 1e-9).all()) and bool((optimum >= got - 1e-9).all())


@pytest.mark.parametrize("workload_seed", range(3))
def test_pooled_start_keeps_the_routing_near_exact(workload_seed: int) -> None:
    """Groups started from pooled-subsample prices (tight capacity) end as near the optimum as cold ones."""
    gen = torch.Generator().manual_seed(workload_seed)
    logits = torch.randn(8, 512, 16, generator=gen) + 1.5 * torch.randn(16, generator=gen)
    x = make_input(logits, 2, 1.0)
    demand, capacity = torch.full((8, 512), 2), torch.full((8, 16), x.capacity)
    optimum = float(solve_optimum(x.scores, 2, x.capacity).objective.sum())
    pooled = auction_route(x.scores, demand, capacity, 2, AuctionConfig(pool=True))
    cold = auction_route(x.scores, demand, capacity, 2, AuctionConfig(pool=False))
    assert pooled.pooled_levels >= 1 and cold.pooled_levels == 0
    for result in (pooled, cold):
        assert (optimum - float(result.objective.sum())) / optimum < 5e-4
        assert float(result.dual.sum()) >= optimum - 1e-9


def test_greedy_stage_one_is_the_token_loop() -> None:
    gen = torch.Generator().manual_seed(7)
    scores = torch.rand(2, 50, 6, generator=gen)
    scores[1, :, 2] = -float("inf")
    got, diverted = greedy_first(scores, 9)
    for g in range(2):
        load = [0] * 6
        for t, row in enumerate(scores[g].tolist()):
            choice = next((e for e in ranked(row) if load[e] < 9 and row[e] > -float("inf")), -1)
            assert int(got[g, t]) == choice
            if choice >= 0:
                load[choice] += 1
    assert diverted == int((got != scores.argmax(dim=2)).sum())


def test_import_moeroute_does_not_load_numba() -> None:
    code = ("import sys, moeroute; moeroute.route; import moeroute.routers.dual, moeroute.routers.maxscore, "
            "moeroute.solvers.auction; print([m for m in ('numba', 'llvmlite') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

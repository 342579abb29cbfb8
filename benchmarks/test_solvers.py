"""Exact-solver latency with pytest-benchmark (benchmarks/README.md): OR-tools called directly (the baseline
``moeroute bench`` compares with), the project's wrapper, ``expert_ssp`` and ``auto``, grouped by problem size."""

from __future__ import annotations

import pytest

from moeroute.experiments.bench import ortools_direct
from moeroute.solvers import solve_optimum

from conftest import problem

CASES = [("skew", 1, 1024, 16, 2), ("skew", 32, 512, 16, 2), ("skew", 1, 16384, 64, 2), ("skew", 1, 4096, 64, 8)]
SOLVERS = ["ortools direct", "ortools", "expert_ssp", "auto"]


def _id(case: tuple) -> str:
    workload, g, t, e, k = case
    return f"{workload}-{g}x{t}x{e}-k{k}"


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("solver", SOLVERS)
def test_solver_latency(benchmark, case: tuple, solver: str) -> None:
    x = problem(*case)
    scores = x.scores.double().numpy()
    benchmark.group = f"solvers {_id(case)}"
    benchmark.extra_info.update({"solver": solver, "size": _id(case)})
    if solver == "ortools direct":
        cost = benchmark.pedantic(ortools_direct, args=(scores, x.k, x.capacity), rounds=3, warmup_rounds=1)
    else:
        cost = int(benchmark.pedantic(
            solve_optimum, args=(scores, x.k, x.capacity, solver), rounds=3, warmup_rounds=1
        ).int_cost.sum())
    assert cost == ortools_direct(scores, x.k, x.capacity)  # every solver is exact

"""Router latency with pytest-benchmark (not part of the default test run; benchmarks/README.md):

    python -m pytest benchmarks --benchmark-autosave          # times and saves .benchmarks/<machine>/NNNN_*.json
    python -m pytest benchmarks --benchmark-compare           # compares with the last saved run

Each benchmark is grouped by problem size, so a table row reads as "this router at this size"; the ratio to
``gshard`` in the same group is the number to watch (absolute times vary with the machine's load).
"""

from __future__ import annotations

import pytest

from moeroute.routers import bind_router

from conftest import problem

CASES = [("skew", 32, 512, 16, 2), ("skew", 1, 16384, 64, 2), ("skew", 1, 4096, 256, 8)]
ROUTERS = ["gshard", "dual", "maxscore", "sinkhorn", "reroute"]


def _id(case: tuple) -> str:
    workload, g, t, e, k = case
    return f"{workload}-{g}x{t}x{e}-k{k}"


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("spec", ROUTERS)
def test_router_latency(benchmark, case: tuple, spec: str) -> None:
    x = problem(*case)
    bound = bind_router(spec)
    benchmark.group = f"routers {_id(case)}"
    benchmark.extra_info.update({"router": bound.resolved, "size": _id(case)})
    routing = benchmark.pedantic(bound, args=(x,), kwargs={"check": False}, rounds=5, warmup_rounds=1, iterations=1)
    assert routing.experts.shape == (x.groups, x.tokens, x.k)

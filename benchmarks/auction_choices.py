"""The CPU price auction's design choices, measured side by side (moeroute/solvers/auction.py, docs/dual.md).

For each workload and size, the compiled auction routes the same scores (cold start, cf = 1) under variants that
differ in one choice only, round-robin, and prints median milliseconds, sheds (price raises), sweeps and the
certified gap bound:

- ``pool``: every group starts from prices solved on a pooled subsample of all groups, against a cold start at 0;
- ``cached``: how many free experts each token keeps at hand (2 and 8; the default takes 2 for ``E <= 64``, 8 above);
- ``step``: the extra price step (0.02, the default, against 0.1).

Also the first call of a fresh process, which compiles the kernels when numba's on-disk cache is empty.

    python benchmarks/auction_choices.py                       # the issue's sizes, about 2 minutes
    python benchmarks/auction_choices.py --sizes 32x512x16 --k 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from moeroute.solvers.auction import AuctionConfig, auction_route
from moeroute.workloads import workload_logits

VARIANTS = {
    "default": AuctionConfig(),
    "pool=false": AuctionConfig(pool=False),
    "cached=2": AuctionConfig(cached=2),
    "cached=8": AuctionConfig(cached=8),
    "step=0.1": AuctionConfig(eps=0.1),
}


def gap_bound(scores: torch.Tensor, experts: torch.Tensor, dual: float) -> float:
    """Relative certificate ``(D(p) - objective) / objective`` of one routing ``[G, T, k]`` (at cf = 1 with ``E``
    dividing ``k T`` no unit is forced onto the drop node, so ``D(p)`` is the kernels' bound as it stands)."""
    held = torch.gather(scores, 2, experts.clamp(min=0))
    objective = float(torch.where(experts >= 0, held, torch.zeros_like(held)).double().sum())
    return (dual - objective) / objective


def measure(scores: torch.Tensor, k: int, repeats: int) -> list[tuple[str, float, int, int, float]]:
    """(variant, median ms, sheds, sweeps, gap bound) of each variant on ``scores`` ``[G, T, E]`` at cf = 1."""
    g, t, e = scores.shape
    demand = torch.full((g, t), k, dtype=torch.long)
    capacity = torch.full((g, e), -(-k * t // e), dtype=torch.long)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    last = {}
    for config in VARIANTS.values():  # warm-up
        auction_route(scores, demand, capacity, k, config)
    for _ in range(repeats):
        for name, config in VARIANTS.items():
            start = time.perf_counter()
            last[name] = auction_route(scores, demand, capacity, k, config)
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, result in last.items():
        bound = gap_bound(scores, result.experts, float(result.dual.sum()))
        rows.append((name, statistics.median(times[name]) * 1e3, int(result.sheds.sum()), int(result.sweeps.max()),
                     bound))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32x512x16:2,1x16384x64:2,4x4096x256:8,1x16384x256:8",
                        help="GxTxE:k, comma list")
    parser.add_argument("--workloads", default="skew,zipf,hot")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    auction_route(torch.rand(1, 8, 4), torch.ones(1, 8, dtype=torch.long), torch.full((1, 4), 2), 1)
    print(f"first call (compiles the kernels unless numba's cache has them): {time.perf_counter() - start:.1f} s")
    print(f"{'workload':>9} {'GxTxE':>11} {'k':>2} {'variant':>11} {'ms':>8} {'sheds':>7} {'sweeps':>6} {'gap bound':>9}")
    for size in args.sizes.split(","):
        shape, k = size.split(":")
        g, t, e = (int(n) for n in shape.split("x"))
        for workload in args.workloads.split(","):
            scores = workload_logits(workload, g, t, e).softmax(-1)
            for name, ms, sheds, sweeps, bound in measure(scores, int(k), args.repeats):
                print(f"{workload:>9} {shape:>11} {k:>2} {name:>11} {ms:8.2f} {sheds:7d} {sweeps:6d} {bound:9.4%}")


if __name__ == "__main__":
    main()

"""What persisting one finished sweep point costs, against the rows already stored.

For each table size R (default 10^4 and 10^6 rows of the real sweep columns, about 600 bytes a row), a table of
R sealed rows is written to a scratch folder; then, in a fresh Python process each (so that peak memory is the
store's own):

- ``store``: open a :class:`ResultStore` on it (read, check and index every row), add ``--points`` points of
  ``--rows-per-point`` rows each (one segment each: the per-point cost), close it (one streamed compaction);
- ``rewrite`` (for contrast, ``--no-rewrite`` to skip): what the store did before segments, rewrite the whole
  table from rows held in memory through the same atomic writer after each point.

Prints one table: milliseconds per point (median over the points), open and compaction seconds, peak resident
memory. Timings on a shared machine are noisy; compare the columns of one run.

    python benchmarks/store_cost.py                         # 10^4 and 10^6 rows (about 5 minutes, 1.5 GB disk)
    python benchmarks/store_cost.py --rows 10000 --points 50
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moeroute.core.atomic import atomic_open  # noqa: E402
from moeroute.experiments.sweep.run import COLUMNS  # noqa: E402
from moeroute.experiments.sweep.store import CHECKSUM, ResultStore, row_checksum  # noqa: E402


def fake_row(i: int, rng: random.Random) -> dict[str, str]:
    """A row with the real columns and realistic widths (16 sorted load ratios, floats printed in full)."""
    row = {col: "" for col in COLUMNS}
    row.update({
        "key": f"{i:016x}", "sweep": "scale", "grid": "main", "router": "maxscore", "router_resolved":
        "maxscore:eps=0.01,iters=100,stage1=greedy,stage2=sinkhorn,tol=0.0001,weights=softmax,renormalize=false",
        "router_name": "maxscore", "workload": "skew", "groups": "4", "tokens": "512", "experts": "16", "k": "2",
        "cf": "1.0", "capacity": "64", "seed": str(i), "repeats": "5", "solver": "auto", "device": "cpu",
        "code": "0123456789ab", "moeroute_version": "0.1.0", "git_revision": "abcdef012345", "device_name": "x86_64",
        "host": "bench", "worker": "serial:1", "threads": "1", "torch_version": "2.13.0+cpu",
        "python_version": "3.11.7", "timestamp": "2026-12-01T00:00:00+00:00",
    })
    for col in ("slot_drop_rate", "token_drop_rate", "second_choice_drop_rate", "over_k_rate", "mean_load_ratio",
                "max_load_ratio", "padding_factor", "objective", "optimum", "gap", "maxweight_optimum",
                "rank1_affinity", "rank2_affinity", "latency_ms", "optimum_ms"):
        row[col] = repr(rng.random())
    row["latency_calls"] = "5"
    row["sorted_load_ratios"] = json.dumps(sorted((round(rng.random() * 2, 6) for _ in range(16)), reverse=True))
    return row


def write_table(path: Path, rows: int) -> None:
    rng = random.Random(0)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        for i in range(rows):
            row = fake_row(i, rng)
            row[CHECKSUM] = row_checksum(row, COLUMNS)
            writer.writerow([row[c] for c in COLUMNS])


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_store(path: str, points: int, per_point: int, out: "multiprocessing.Queue") -> None:
    rng = random.Random(1)
    t0 = time.perf_counter()
    store = ResultStore(path, COLUMNS)
    opened = time.perf_counter() - t0
    times = []
    for p in range(points):
        rows = [fake_row(10**9 + p * per_point + j, rng) for j in range(per_point)]
        t0 = time.perf_counter()
        store.add(rows)
        times.append((time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter()
    store.__exit__(None, None, None)
    out.put({"open_s": opened, "point_ms": statistics.median(times), "max_ms": max(times),
             "compact_s": time.perf_counter() - t0, "peak_mb": peak_mb()})


def measure_rewrite(path: str, points: int, per_point: int, out: "multiprocessing.Queue") -> None:
    """The old way: every row in memory as a dict, the whole table rewritten after each point."""
    with open(path, newline="") as fh:
        rows = {r["key"]: r for r in csv.DictReader(fh)}
    rng = random.Random(1)
    times = []
    for p in range(points):
        for j in range(per_point):
            row = fake_row(10**9 + p * per_point + j, rng)
            row[CHECKSUM] = row_checksum(row, COLUMNS)
            rows[row["key"]] = row
        t0 = time.perf_counter()
        with atomic_open(path, "w") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows.values())
        times.append((time.perf_counter() - t0) * 1e3)
    out.put({"point_ms": statistics.median(times), "max_ms": max(times), "peak_mb": peak_mb()})


def in_child(fn, *args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=fn, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000], help="rows already stored")
    parser.add_argument("--points", type=int, default=20, help="points added per measurement (default 20)")
    parser.add_argument("--rows-per-point", type=int, default=12, help="rows per point (default 12: a router set)")
    parser.add_argument("--rewrite-points", type=int, default=3, help="points timed for the old rewrite (default 3)")
    parser.add_argument("--no-rewrite", action="store_true", help="skip the old whole-file rewrite")
    parser.add_argument("--dir", help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args()
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="store_cost_"))
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"{args.rows_per_point} rows per point; median over {args.points} points (rewrite: {args.rewrite_points})")
    print(f"{'rows stored':>12} {'table MB':>9} | {'segment ms/pt':>13} {'max ms':>7} {'open s':>7} {'compact s':>9} "
          f"{'peak MB':>8} | {'rewrite ms/pt':>13} {'peak MB':>8}")
    try:
        for rows in args.rows:
            table = scratch / "scale.csv"
            write_table(table, rows)
            size = table.stat().st_size / 1e6
            seg = in_child(measure_store, str(table), args.points, args.rows_per_point)
            old = {"point_ms": float("nan"), "peak_mb": float("nan")}
            if not args.no_rewrite:
                write_table(table, rows)
                old = in_child(measure_rewrite, str(table), args.rewrite_points, args.rows_per_point)
            print(f"{rows:>12,} {size:>9.0f} | {seg['point_ms']:>13.2f} {seg['max_ms']:>7.1f} {seg['open_s']:>7.1f} "
                  f"{seg['compact_s']:>9.1f} {seg['peak_mb']:>8.0f} | {old['point_ms']:>13.1f} {old['peak_mb']:>8.0f}",
                  flush=True)
            for leftover in scratch.iterdir():
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    finally:
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

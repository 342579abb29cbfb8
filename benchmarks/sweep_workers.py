"""Speed-up of a sweep on N local worker processes against the same sweep run serially.

Runs ``python -m moeroute run CONFIG`` from scratch (a fresh results folder each time) serially and with
``--workers N``, alternating, ``--repeats`` times each, and prints each wall time, the medians and their ratio,
with the CPU seconds each run used (the sweep and its workers) and the machine's load average (on a shared machine
the ratio is only as good as the load was steady: CPU seconds close to wall seconds x workers mean the cores were
free). Wall time includes the start-up of Python and of the workers, as a user sees it.

    python benchmarks/sweep_workers.py configs/default.toml --workers 2 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    """CPU time (user + system) of every finished child and grandchild so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(config: str, workers: int, executor: str) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the run and its workers) of one sweep from scratch."""
    cpu = cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="sweep_workers_") as out:
        cmd = [sys.executable, "-m", "moeroute", "run", config, "--out", out, "--no-progress", "--allow-errors",
               "--workers", str(workers), "--executor", executor]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        return time.perf_counter() - start, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/default.toml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    args = parser.parse_args()
    print(f"{args.config}: serial vs {args.workers} workers ({args.executor}), {args.repeats} alternating runs each; "
          f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}")
    times: dict[str, list[float]] = {"serial": [], "workers": []}
    for i in range(args.repeats):
        for name, workers, executor in (("serial", 1, "local"), ("workers", args.workers, args.executor)):
            seconds, cpu = one_run(args.config, workers, executor)
            times[name].append(seconds)
            print(f"  run {i + 1} {name:>7}: {seconds:6.1f} s wall, {cpu:6.1f} s CPU (load {os.getloadavg()[0]:.2f})",
                  flush=True)
    serial, parallel = statistics.median(times["serial"]), statistics.median(times["workers"])
    print(f"median serial {serial:.1f} s, {args.workers} workers {parallel:.1f} s: speed-up {serial / parallel:.2f}x; "
          f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Run a sweep: for each grid point, logits once, the optimum once, then every router on the same logits; one
row per (router, point, seed) into ``<out>/<sweep>.csv``, persisted point by point so a killed run resumes."""

from __future__ import annotations

import json
import platform
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from moeroute.core.device import device_name, resolve_device
from moeroute.core.errors import MoeRouteError, RoutingInvariantError
from moeroute.core.metrics import RoutingMetrics
from moeroute.core.options import parse_spec
from moeroute.core.problem import make_input
from moeroute.core.version import code_fingerprint, git_revision, package_version
from moeroute.evaluation import measure, optima
from moeroute.experiments.sweep.config import Point, SweepConfig
from moeroute.experiments.sweep.store import CHECKSUM, ResultStore, damaged_path
from moeroute.workloads import workload_logits

CONFIG_COLUMNS = ["key", "sweep", "grid", "router", "router_resolved", "router_name", "workload", "groups", "tokens",
                  "experts", "k", "cf", "capacity", "seed", "repeats", "solver", "device"]
METRIC_COLUMNS = ["slot_drop_rate", "token_drop_rate", "second_choice_drop_rate", "over_k_rate", "mean_load_ratio",
                  "max_load_ratio", "padding_factor", "objective", "optimum", "gap", "maxweight_optimum",
                  "rank1_affinity", "rank2_affinity", "latency_ms", "latency_calls", "sorted_load_ratios", "extra"]
CODE_COLUMNS = ["code", "moeroute_version", "git_revision"]
ENV_COLUMNS = ["error", "optimum_ms", "device_name", "host", "threads", "torch_version", "python_version", "timestamp"]
COLUMNS = CONFIG_COLUMNS + METRIC_COLUMNS + CODE_COLUMNS + ENV_COLUMNS + [CHECKSUM]
"""A row: what was run (``router`` as written, ``router_resolved`` with every option), what it measured, which
code measured it (``code``: the source fingerprint rows are matched on), and where."""


def code_fields() -> dict[str, str]:
    """The code columns of a row measured by this process."""
    return {"code": code_fingerprint(), "moeroute_version": package_version(), "git_revision": git_revision()}


def _environment(device: torch.device) -> dict[str, Any]:
    return {
        "device_name": device_name(device),
        "host": socket.gethostname(),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def _metric_fields(m: RoutingMetrics) -> dict[str, Any]:
    d = m.as_dict()
    row = {key: d[key] for key in METRIC_COLUMNS if key in d and key not in ("sorted_load_ratios", "extra")}
    row["sorted_load_ratios"] = json.dumps(m.sorted_load_ratios)
    row["extra"] = json.dumps(m.extra, sort_keys=True) if m.extra else ""
    return {key: ("" if value is None else value) for key, value in row.items()}


@dataclass
class SweepSummary:
    """What a run did: points run, rows written, rows already done (``rows_stale``: of them, kept from other code
    because of ``reuse_stale``), rows that errored in this run, pairs the routers refuse, seconds, results path."""

    points: int
    rows_written: int
    rows_skipped: int
    errors: int
    seconds: float
    path: Path
    rows_stale: int = 0
    refused: int = 0
    damaged: int = 0


def run_sweep(
    config: SweepConfig,
    out_dir: "str | Path" = "results",
    device: str = "cpu",
    console: Optional[Console] = None,
    progress: Optional[bool] = None,
    threads: Optional[int] = 1,
    reuse_stale: bool = False,
) -> SweepSummary:
    """Run every (point, router) of ``config`` not already in ``<out_dir>/<name>.csv`` and add their rows.

    A row is done when its key (the point, the router with every option resolved, the device) is stored without an
    error **and** was measured by the same code (:func:`moeroute.core.version.code_fingerprint`); rows from other
    code are re-run and replaced, unless ``reuse_stale``. Pairs a router refuses by its declared precondition (BASE
    at k > 1) are skipped with a note, not run.

    ``threads`` sets torch's intra-op CPU threads (``None``: torch's default). One thread is the default because
    the routing ops of a sweep are small and torch's spinning worker threads make timings erratic on a shared
    machine (measurements in benchmarks/PERF.md). The count is recorded in every row.
    """
    dev = resolve_device(device)
    if threads is not None:
        if threads < 1:
            raise MoeRouteError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    console = console or Console(stderr=True, soft_wrap=True)
    show_bar = console.is_terminal if progress is None else progress
    env = {**_environment(dev), **code_fields()}
    path = Path(out_dir) / f"{config.name}.csv"
    start = time.perf_counter()
    written = skipped = stale = errors = points_run = 0
    with ResultStore(path, COLUMNS) as store:
        for file, line, reason, _ in store.damaged:
            console.print(f"[yellow]damaged row[/yellow] {file}:{line}: {reason}; moved to {damaged_path(path).name}, re-run")
        todo, refused = [], 0
        for grid, point, routers in config.points:
            pending = []
            for spec in routers:
                if config.refusal(point, spec):
                    refused += 1
                    continue
                row = store.rows.get(point.row_key(config.resolved[spec], str(dev)))
                if row is None or row.get("error"):
                    pending.append(spec)
                elif row.get("code") == env["code"] or reuse_stale:
                    skipped += 1
                    stale += row.get("code") != env["code"]
                else:
                    pending.append(spec)
            if pending:
                todo.append((grid, point, pending))
        total = sum(len(p) for _, _, p in todo)
        if skipped:
            kept = f" ({stale} from other code, kept by --reuse-stale)" if stale else ""
            console.print(f"[dim]{path}: {skipped} row(s) already done{kept}, {total} to run[/dim]")
        if refused:
            console.print(f"[dim]{refused} (router, point) pair(s) skipped: refused by the router's precondition "
                          f"(see `moeroute routers`)[/dim]")
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("left"), TimeRemainingColumn())
        with Progress(*columns, console=console, disable=not show_bar, transient=False) as bar:
            task = bar.add_task(config.name, total=total)
            for n, (grid, point, pending) in enumerate(todo, 1):
                rows = _run_point(config, grid, point, pending, dev, env, bar, task)
                store.add(rows)
                points_run += 1
                written += len(rows)
                bad = [r for r in rows if r["error"]]
                errors += len(bad)
                for row in bad:
                    console.print(f"[red]error[/red] {row['router']} on {point.label()}: {row['error']}")
                if not show_bar:
                    console.print(f"[{n}/{len(todo)}] {point.label()}: {len(rows)} router(s)")
            bar.update(task, description=f"{config.name}: done")
        damaged = len(store.damaged)
    return SweepSummary(points_run, written, skipped, errors, time.perf_counter() - start, path, stale, refused, damaged)


def _run_point(config: SweepConfig, grid: str, point: Point, routers: list[str], dev: torch.device,
               env: dict[str, Any], bar: Progress, task: Any) -> list[dict[str, Any]]:
    """Logits, optimum and every pending router of one point; one row each (errors become rows, not crashes)."""
    bar.update(task, description=f"{point.label()} · optimum")
    logits = workload_logits(point.workload, point.groups, point.tokens, point.experts, point.seed).to(dev)
    x = make_input(logits, point.k, point.cf)
    t0 = time.perf_counter()
    mcmf, mw = optima(x, point.solver)
    optimum_ms = (time.perf_counter() - t0) * 1e3
    rows = []
    for spec in routers:
        bar.update(task, description=f"{point.label()} · {spec}")
        row: dict[str, Any] = {
            "key": point.row_key(config.resolved[spec], str(dev)), "sweep": config.name, "grid": grid,
            "router": spec, "router_resolved": config.resolved[spec], "router_name": parse_spec(spec)[0], "workload": point.workload, "groups": point.groups,
            "tokens": point.tokens, "experts": point.experts, "k": point.k,
            "cf": "none" if point.cf is None else point.cf, "capacity": "" if x.capacity is None else x.capacity,
            "seed": point.seed, "repeats": point.repeats, "solver": point.solver, "device": str(dev),
            "error": "", "optimum_ms": round(optimum_ms, 3), **env,
        }
        try:
            row.update(_metric_fields(measure(x, spec, mcmf, mw, repeats=point.repeats)))
        except RoutingInvariantError as exc:  # a router bug: recorded loudly, never a data point
            row["error"] = f"invariant broken: {str(exc).splitlines()[0][:200]}"
        except MoeRouteError as exc:  # the router refuses this point (e.g. k=1 only)
            row["error"] = str(exc).splitlines()[0][:300]
        except Exception as exc:  # a crash inside one router must not lose the sweep; it is retried on re-run
            where = traceback.extract_tb(exc.__traceback__)[-1]
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]} ({Path(where.filename).name}:{where.lineno})"
        row["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows.append(row)
        bar.advance(task)
    return rows

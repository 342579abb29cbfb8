"""Run a sweep: for each grid point, logits once, the optimum once, then every router on the same logits; one
row per (router, point, seed) into ``<out>/<sweep>.csv``, persisted point by point so a killed run resumes.

Points are computed by an executor (in this process, in local worker processes, or as Ray tasks; see
moeroute/experiments/sweep/executors.py) and only this driver writes the results."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from moeroute.core.device import resolve_device
from moeroute.core.errors import MoeRouteError
from moeroute.core.version import code_fingerprint, git_revision, package_version
from moeroute.experiments.sweep.config import Point, SweepConfig
from moeroute.experiments.sweep.executors import Executor
from moeroute.experiments.sweep.point import METRIC_COLUMNS, PointTask, RouterRun
from moeroute.experiments.sweep.store import CHECKSUM, ResultStore, damaged_path

CONFIG_COLUMNS = ["key", "sweep", "grid", "router", "router_resolved", "router_name", "workload", "groups", "tokens",
                  "experts", "k", "cf", "capacity", "seed", "repeats", "solver", "device"]
CODE_COLUMNS = ["code", "moeroute_version", "git_revision"]
ENV_COLUMNS = ["error", "optimum_ms", "device_name", "host", "worker", "threads", "torch_version", "python_version",
               "timestamp"]
COLUMNS = CONFIG_COLUMNS + METRIC_COLUMNS + CODE_COLUMNS + ENV_COLUMNS + [CHECKSUM]
"""A row: what was run (``router`` as written, ``router_resolved`` with every option), what it measured, which
code measured it (``code``: the source fingerprint rows are matched on), and where (``host``, ``worker``: the
executor and process that measured the latencies, ``threads``: its torch threads)."""

EXECUTION_COLUMNS = ("latency_ms", "latency_calls", "optimum_ms", "timestamp", "host", "worker")
"""The columns that depend on where and when a point ran, not on what it computed: every other column of a row is
the same whichever executor ran it."""


def code_fields() -> dict[str, str]:
    """The code columns of the rows this driver stores (a worker's own fingerprint must equal its ``code``)."""
    return {"code": code_fingerprint(), "moeroute_version": package_version(), "git_revision": git_revision()}
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
    executor: str = "serial, in this process"


def run_sweep(
    config: SweepConfig,
    out_dir: "str | Path" = "results",
    device: str = "cpu",
    console: Optional[Console] = None,
    progress: Optional[bool] = None,
    threads: Optional[int] = 1,
    reuse_stale: bool = False,
    executor: Optional[Executor] = None,
) -> SweepSummary:
    """Run every (point, router) of ``config`` not already in ``<out_dir>/<name>.csv`` and add their rows.

    A row is done when its key (the point, the router with every option resolved, the device) is stored without an
    error **and** was measured by the same code (:func:`moeroute.core.version.code_fingerprint`); rows from other
    code are re-run and replaced, unless ``reuse_stale``. Pairs a router refuses by its declared precondition (BASE
    at k > 1) are skipped with a note, not run.

    ``threads`` sets torch's intra-op CPU threads (``None``: torch's default) of whoever computes a point. One
    thread is the default because the routing ops of a sweep are small and torch's spinning worker threads make
    timings erratic on a shared machine (measurements in benchmarks/PERF.md). The count is recorded in every row.

    ``executor`` computes the points (default: serially in this process; see
    :func:`moeroute.experiments.sweep.executors.make_executor`); this function alone writes the results.
    """
    dev = resolve_device(device)
    executor = executor or Executor()
    if threads is not None and threads < 1:
        raise MoeRouteError(f"threads must be >= 1, got {threads}")
    if executor.name == "serial" and threads is not None:
        torch.set_num_threads(threads)
    per_task = threads if executor.name == "serial" else executor.threads
    console = console or Console(stderr=True, soft_wrap=True)
    show_bar = console.is_terminal if progress is None else progress
    fields = code_fields()
    code = fields["code"]
    path = Path(out_dir) / f"{config.name}.csv"
    start = time.perf_counter()
    written = skipped = stale = errors = points_run = 0
    for note in config.notes:
        console.print(f"[dim]note: {note}[/dim]")
    with ResultStore(path, COLUMNS) as store:
        for file, line, reason, _ in store.damaged:
            console.print(f"[yellow]damaged row[/yellow] {file}:{line}: {reason}; moved to {damaged_path(path).name}, re-run")
        plan = _plan(config, store, str(dev), code, reuse_stale)
        todo = [PointTask(config.name, grid, point, pending, str(dev), per_task, executor.name)
                for grid, point, pending in plan.todo]
        skipped, stale, refused = plan.skipped, plan.stale, plan.refused
        total = sum(len(t.routers) for t in todo)
        if skipped:
            kept = f" ({stale} from other code, kept by --reuse-stale)" if stale else ""
            console.print(f"[dim]{path}: {skipped} row(s) already done{kept}, {total} to run[/dim]")
        if refused:
            console.print(f"[dim]{refused} (router, point) pair(s) skipped: refused by the router's precondition "
                          f"(see `moeroute routers`)[/dim]")
        if executor.name != "serial" and todo:
            console.print(f"[dim]{len(todo)} point(s) on {executor.describe()}[/dim]")
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("left"), TimeRemainingColumn())
        with Progress(*columns, console=console, disable=not show_bar, transient=False) as bar:
            task_id = bar.add_task(config.name, total=total)
            for n, (task, rows) in enumerate(executor.run(todo), 1):
                if executor.name != "serial":
                    _check_code(rows, code)
                for row in rows:
                    row.update(fields)
                store.add(rows)
                points_run += 1
                written += len(rows)
                bad = [r for r in rows if r["error"]]
                errors += len(bad)
                for row in bad:
                    console.print(f"[red]error[/red] {row['router']} on {task.point.label()}: {row['error']}")
                bar.update(task_id, advance=len(rows), description=task.point.label())
                if not show_bar:
                    console.print(f"[{n}/{len(todo)}] {task.point.label()}: {len(rows)} router(s)")
            bar.update(task_id, description=f"{config.name}: done")
        damaged = len(store.damaged)
    return SweepSummary(points_run, written, skipped, errors, time.perf_counter() - start, path, stale, refused,
                        damaged, executor.describe())


@dataclass
class _Plan:
    todo: list[tuple[str, Point, tuple[RouterRun, ...]]]
    skipped: int = 0
    stale: int = 0
    refused: int = 0


def _plan(config: SweepConfig, store: ResultStore, device: str, code: str, reuse_stale: bool) -> _Plan:
    """Which routers of which points still need a run: not stored, stored with an error, or stored by other code
    (unless ``reuse_stale``); pairs a router's precondition refuses are counted, not run."""
    plan = _Plan([])
    for grid, point, routers in config.points:
        pending = []
        seen: set[str] = set()
        for spec in routers:
            if config.refusal(point, spec):
                plan.refused += 1
                continue
            run_spec, resolved = config.run_spec(point, spec)
            if resolved in seen:  # two spellings of one configuration (`maxscore`, `maxscore:eps=<default>`): one row
                continue
            seen.add(resolved)
            done = store.rows.get(point.row_key(resolved, device))
            if done is None or done.error or (done.code != code and not reuse_stale):
                pending.append(RouterRun(spec, run_spec, resolved))
            else:
                plan.skipped += 1
                plan.stale += done.code != code
        if pending:
            plan.todo.append((grid, point, tuple(pending)))
    return plan


def _check_code(rows: list[dict], code: str) -> None:
    """Refuse rows a worker measured with other moeroute code than the driver's (a cluster node with another
    version installed): stored, they would look current and never be re-run."""
    for row in rows:
        if row.get("code") != code:
            raise MoeRouteError(
                f"worker {row.get('worker')} on {row.get('host')} runs other moeroute code (fingerprint "
                f"{row.get('code')}, this driver {code}): install the same moeroute on every node"
            )

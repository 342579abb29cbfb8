"""``moeroute bench``: exact solvers and routers timed side by side in one process, printed as tables."""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any, Callable, NamedTuple, Optional

import torch
from rich.console import Console
from rich.table import Table

from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import expert_capacity
from moeroute.experiments import bench
from moeroute.routers import router_names

NAME = "bench"
HELP = "time exact solvers and routers side by side (ratios to OR-tools, gshard and torch.topk; gaps; peak memory)"

SECTIONS = ("solvers", "routers", "memory", "curve")
FULL = {
    "solver_sizes": "1024x16,4096x64,16384x64,32x512x16",
    "router_sizes": "32x512x16,16384x64",
    "memory_size": "16384x64",
    "curve_size": "32x512x16",
    "curve": "5:0.01,10:0.01,20:0.01,50:0.01,100:0.01,50:0.05,50:0.1",
    "workloads": "skew,gauss",
    "repeats": 7,
    "budget": 8.0,
}
QUICK = {
    "solver_sizes": "1024x16,4096x64",
    "router_sizes": "32x512x16",
    "memory_size": "4096x64",
    "curve_size": "32x512x16",
    "curve": "10:0.01,50:0.01",
    "workloads": "skew",
    "repeats": 3,
    "budget": 1.5,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, one workload, 3 calls per cell, no SPFA, two routers' memory: about 1 min")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--router", action="append", default=None, metavar="SPEC",
                        help="router spec to time (repeatable; default: every registered router and variants)")
    parser.add_argument("--workloads", default=None, help="synthetic workloads, comma list (default skew,gauss; --quick: skew)")
    parser.add_argument("--solver-sizes", default=None, help="GxTxE or TxE, comma list")
    parser.add_argument("--router-sizes", default=None, help="GxTxE or TxE, comma list")
    parser.add_argument("--memory-size", default=None, help="size for the peak-memory table")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--cf", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per cell (median; fewer once a cell spent its budget); default 7, --quick 3")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--slow-cap", type=float, default=60.0, help="seconds allowed to each SPFA / network-simplex run")
    parser.add_argument("--slow-sizes", default="1024x16,4096x64", help="sizes the slow solvers are started on")
    parser.add_argument("--curve-router", default="maxscore", help="router for the iterations/eps trade-off")
    parser.add_argument("--curve", default=None, help="ITERS:EPS points, comma list")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _sizes(text: str) -> list[bench.Size]:
    return [bench.Size.parse(part) for part in text.split(",") if part.strip()]


def _fmt(value: Any, kind: str = "ms") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if kind == "ms":
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    if kind == "ratio":
        return f"{value:.2f}x"
    if kind == "pct":
        return f"{100 * value:.3f}%"
    if kind == "mb":
        return f"{value:.0f}"
    return str(value)


class _Context(NamedTuple):
    """What every section needs: the preset, workloads, calls per cell, cf, router specs, console and logger."""

    preset: dict
    workloads: list
    repeats: int
    cf: Optional[float]
    specs: list
    console: Any
    log: Callable[[str], None]


def _solvers_section(args: argparse.Namespace, ctx: _Context) -> None:
    preset, workloads, repeats, cf, specs, console, log = ctx
    slow = [] if args.quick else ["spfa", "network_simplex"]
    rows = []
    for i, workload in enumerate(workloads):
        # The slow references run on the first workload only: they take minutes.
        rows += bench.solver_rows(
            _sizes(args.solver_sizes or preset["solver_sizes"]), [workload], args.k, cf, repeats,
            slow if i == 0 else [], args.slow_cap, _sizes(args.slow_sizes), log, preset["budget"],
        )
    fast = [c for c in rows[0] if c not in ("workload", "size", "ortools direct") and not c.endswith(" exact")
            and c not in ("spfa", "network_simplex")] if rows else []
    table = Table(title="Exact MCMF optimum: ms per call (ratio to OR-tools called directly); "
                        "= same integer optimum as OR-tools")
    for col in ["workload", "G x T x E", "C", "ortools direct", *fast, "spfa", "network_simplex"]:
        table.add_column(col, justify="right")
    for row in rows:
        size = bench.Size.parse(row["size"])
        cells = [row["workload"], row["size"], str(expert_capacity(cf, args.k, size.tokens, size.experts)),
                 _fmt(row["ortools direct"])]
        for name in [*fast, "spfa", "network_simplex"]:
            value = row.get(name)
            if isinstance(value, float):
                ok = "=" if row.get(f"{name} exact") else "WRONG"
                cells.append(f"{_fmt(value)} ({value / row['ortools direct']:.2f}x) {ok}")
            else:
                cells.append(_fmt(value))
        table.add_row(*cells)
    console.print(table)
    console.print("ortools = the project's wrapper (arrays from [G,T,E], one network for all groups, "
                  "FlowSolution); its ratio to 'ortools direct' is the wrapper's overhead. "
                  "spfa/network_simplex: one run each in a child process, capped; ~ = extrapolated by "
                  "(units of flow) x (arcs) from the smallest size.")


def _routers_section(args: argparse.Namespace, ctx: _Context) -> None:
    preset, workloads, repeats, cf, specs, console, log = ctx
    rows = bench.router_rows(specs, _sizes(args.router_sizes or preset["router_sizes"]), workloads, args.k, cf,
                             repeats, log, preset["budget"])
    table = Table(title="Routers: median ms per call on prepared scores; ratio to gshard and to a bare torch.topk; "
                        "objective gap to the MCMF optimum")
    for col in ["workload", "G x T x E", "router", "ms", "x gshard", "x topk", "gap", "slot drop"]:
        table.add_column(col, justify="right" if col not in ("router",) else "left")
    errors = {}
    for row in rows:
        if "error" in row:
            errors[row["router"]] = row["error"]
            table.add_row(row["workload"], row["size"], row["router"], "n/a", "", "", "", "")
            continue
        table.add_row(row["workload"], row["size"], row["router"], _fmt(row["ms"]), _fmt(row["x gshard"], "ratio"),
                      _fmt(row["x topk"], "ratio"), _fmt(row["gap"], "pct"), _fmt(row["drop"], "pct"))
    console.print(table)
    for spec, msg in errors.items():
        console.print(f"n/a: {spec}: {msg}")


def _memory_section(args: argparse.Namespace, ctx: _Context) -> None:
    preset, workloads, repeats, cf, specs, console, log = ctx
    size = bench.Size.parse(args.memory_size or preset["memory_size"])
    mem_specs = ["gshard", "dropless"] if args.quick and not args.router else specs
    rows = bench.memory_rows(mem_specs, size, workloads[0], args.k, cf, args.threads, log)
    cap = expert_capacity(cf, args.k, size.tokens, size.experts) or size.tokens
    tec_mb = size.groups * size.tokens * size.experts * cap / 2**20
    table = Table(title=f"Peak memory per router at {size} ({workloads[0]}): MB of resident memory one call adds "
                        f"(peak RSS, VmHWM, in a fresh process; a bool [T,E,C] alone would be {tec_mb:.0f} MB)")
    for col in ["router", "peak MB", "x topk", "below a bool [T,E,C]"]:
        table.add_column(col, justify="right" if col != "router" else "left")
    base = next((r.get("peak_mb") for r in rows if r["router"] == "torch.topk"), None)
    mem_errors = {}
    for row in rows:
        if "error" in row:
            mem_errors[row["router"]] = row["error"]
            table.add_row(row["router"], "n/a", "", "")
            continue
        ratio = row["peak_mb"] / base if base else None
        table.add_row(row["router"], _fmt(row["peak_mb"], "mb"), _fmt(ratio, "ratio") if ratio else "-",
                      "yes" if row["peak_mb"] < tec_mb else "NO")
    console.print(table)
    for spec, msg in mem_errors.items():
        console.print(f"n/a: {spec}: {msg}")


def _curve_section(args: argparse.Namespace, ctx: _Context) -> None:
    preset, workloads, repeats, cf, specs, console, log = ctx
    if args.curve_router.split(":")[0] not in router_names():
        console.print(f"curve: router {args.curve_router!r} is not registered in this build; skipped")
    else:
        points = []
        for part in (args.curve or preset["curve"]).split(","):
            iters, eps = part.split(":")
            points.append((int(iters), float(eps)))
        size = bench.Size.parse(preset["curve_size"])
        try:
            rows = bench.curve_rows(args.curve_router, points, size, workloads[0], args.k, cf, repeats, log,
                                    preset["budget"] / 2)
        except MoeRouteError as exc:
            console.print(f"curve: {exc}; skipped")
            rows = []
        if rows:
            table = Table(title=f"{args.curve_router}: Sinkhorn iterations / eps vs time and gap at {size} ({workloads[0]})")
            for col in ["spec", "ms", "x gshard", "gap"]:
                table.add_column(col, justify="right" if col != "spec" else "left")
            for row in rows:
                table.add_row(row["spec"], _fmt(row["ms"]), _fmt(row["x gshard"], "ratio"), _fmt(row["gap"], "pct"))
            console.print(table)


SECTION_FUNCS = {name: globals()[f"_{name}_section"] for name in SECTIONS}


def run(args: argparse.Namespace) -> int:
    preset = QUICK if args.quick else FULL
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for s in sections:
        if s not in SECTIONS:
            raise MoeRouteError(f"unknown bench section {s!r} (known: {', '.join(SECTIONS)})")
    workloads = [w.strip() for w in (args.workloads or preset["workloads"]).split(",") if w.strip()]
    repeats = args.repeats or preset["repeats"]
    cf: Optional[float] = args.cf
    torch.set_num_threads(args.threads)
    console = Console(width=max(Console().width, 170))  # wide tables stay on one line when piped
    log = (lambda msg: None) if args.quiet else (lambda msg: console.print(f"[dim]{msg}[/dim]"))
    started = time.perf_counter()
    console.print(
        f"moeroute bench: k={args.k}, cf={cf}, torch {torch.__version__} on {args.threads} threads, "
        f"{platform.processor() or platform.machine()}; medians of up to {repeats} round-robin calls after warm-up"
    )
    specs = args.router or bench.default_router_specs()
    ctx = _Context(preset, workloads, repeats, cf, specs, console, log)
    for name in sections:
        SECTION_FUNCS[name](args, ctx)
    console.print(f"[dim]bench took {time.perf_counter() - started:.0f} s[/dim]")
    return 0

"""``moeroute bench``: exact solvers and routers timed side by side in one process, printed as tables."""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any, Callable, NamedTuple, Optional

import torch
from rich.console import Console
from rich.table import Table

from moeroute.core.device import DEVICE_HELP, resolve_device
from moeroute.core.errors import MoeRouteError
from moeroute.core.problem import expert_capacity
from moeroute.experiments import bench
from moeroute.routers import router_names

NAME = "bench"
HELP = "time exact solvers and routers side by side (ratios to OR-tools, gshard and torch.topk; gaps; peak memory)"

SECTIONS = ("solvers", "routers", "memory", "curve")
CAPTURED = "captured:data/captured/ablation_maxscore.safetensors:layer0,captured:data/captured/ablation_maxscore.safetensors:layer1"
FULL = {
    "k": "2,8",
    "solver_sizes": {2: "1024x16,32x512x16,4096x64,16384x64,4096x128,16384x256",
                     8: "32x512x16,4096x64,16384x64,4096x256,16384x256"},
    "router_sizes": {2: "32x512x16,16384x64,8192x128", 8: "4096x256,16384x256,8192x128"},
    "memory_size": {2: "16384x64", 8: "16384x256"},
    "curve_size": "32x512x16",
    "curve": "5:0.01,10:0.01,20:0.01,50:0.01,100:0.01,50:0.05,50:0.1",
    "workloads": "skew,gauss,zipf,hot",
    "router_workloads": "skew,gauss,zipf,hot," + CAPTURED,
    "repeats": 5,
    "budget": 6.0,
}
QUICK = {
    "k": "2",
    "solver_sizes": {2: "1024x16,4096x64", 8: "4096x64"},
    "router_sizes": {2: "32x512x16", 8: "4096x256"},
    "memory_size": {2: "4096x64", 8: "4096x256"},
    "curve_size": "32x512x16",
    "curve": "10:0.01,50:0.01",
    "workloads": "skew",
    "router_workloads": "skew",
    "repeats": 3,
    "budget": 1.0,
}
"""Sizes per ``k``: the issue's targets (32x512x16 and 16384x64 at k=2; 4096x256 and 16384x256 at k=8) and E=128.
The captured logits have E=16: they join the E=16 router sizes only (and hold 8192 tokens: 16 groups of 512)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, k=2, one workload, 3 calls per cell, no SPFA, two routers' memory: about 1 min")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--router", action="append", default=None, metavar="SPEC",
                        help="router spec to time (repeatable; default: every registered router and variants)")
    parser.add_argument("--workloads", default=None,
                        help="workloads, comma list: synthetic specs or captured:PATH:KEY (default: skew,gauss,zipf,hot "
                             "and, for routers, the two captured layers; --quick: skew)")
    parser.add_argument("--solver-sizes", default=None, help="GxTxE or TxE, comma list (for every k)")
    parser.add_argument("--router-sizes", default=None, help="GxTxE or TxE, comma list (for every k)")
    parser.add_argument("--memory-size", default=None, help="size for the peak-memory table (for every k)")
    parser.add_argument("--k", default=None, help="experts per token, a comma list (default 2,8; --quick: 2)")
    parser.add_argument("--cf", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per cell (median; fewer once a cell spent its budget); default 5, --quick 3")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: routing ops are small, and a shared machine's second core is noise)")
    parser.add_argument("--device", default="cpu",
                        help=f"device the routers run on ({DEVICE_HELP}); timed calls end with a device "
                             "synchronisation; solvers stay on the host")
    parser.add_argument("--no-gap", action="store_true", help="skip the exact optimum (and the gap column) of the router table")
    parser.add_argument("--slow-cap", type=float, default=60.0, help="seconds allowed to each SPFA / network-simplex run")
    parser.add_argument("--slow-sizes", default="1024x16,4096x64", help="sizes the slow solvers are started on")
    parser.add_argument("--curve-router", default="maxscore", help="router for the iterations/eps trade-off")
    parser.add_argument("--curve", default=None, help="ITERS:EPS points, comma list")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _sizes(text: str) -> list[bench.Size]:
    return [bench.Size.parse(part) for part in text.split(",") if part.strip()]


def _ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise MoeRouteError(f"--k must be a comma list of integers >= 1, got {text!r}")
    return ks


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
    """What every section needs: the preset, workloads, calls per cell, cf, router specs, console, logger, device."""

    preset: dict
    workloads: list
    router_workloads: list
    repeats: int
    cf: Optional[float]
    specs: list
    console: Any
    log: Callable[[str], None]
    device: torch.device


def _per_k(args_value: Optional[str], preset_value: Any, k: int) -> str:
    if args_value:
        return args_value
    return preset_value[k] if k in preset_value else preset_value[max(preset_value)]


def _solvers_section(args: argparse.Namespace, ctx: _Context, k: int) -> None:
    slow = [] if args.quick or k != 2 else ["spfa", "network_simplex"]
    rows = []
    synthetic = [w for w in ctx.workloads if not w.startswith("captured:")]
    for i, workload in enumerate(synthetic):
        # The slow references run on the first workload only: they take minutes.
        rows += bench.solver_rows(
            _sizes(_per_k(args.solver_sizes, ctx.preset["solver_sizes"], k)), [workload], k, ctx.cf, ctx.repeats,
            slow if i == 0 else [], args.slow_cap, _sizes(args.slow_sizes), ctx.log, ctx.preset["budget"],
        )
    fast = [c for c in rows[0] if c not in ("workload", "size", "k", "ortools direct") and not c.endswith(" exact")
            and c not in ("spfa", "network_simplex")] if rows else []
    table = Table(title=f"Exact MCMF optimum, k={k}: ms per call (ratio to OR-tools called directly); "
                        "= same integer optimum as OR-tools")
    for col in ["workload", "G x T x E", "C", "ortools direct", *fast, "spfa", "network_simplex"]:
        table.add_column(col, justify="right")
    for row in rows:
        size = bench.Size.parse(row["size"])
        cells = [row["workload"], row["size"], str(expert_capacity(ctx.cf, k, size.tokens, size.experts)),
                 _fmt(row["ortools direct"])]
        for name in [*fast, "spfa", "network_simplex"]:
            value = row.get(name)
            if isinstance(value, float):
                ok = "=" if row.get(f"{name} exact") else "WRONG"
                cells.append(f"{_fmt(value)} ({value / row['ortools direct']:.2f}x) {ok}")
            else:
                cells.append(_fmt(value))
        table.add_row(*cells)
    ctx.console.print(table)
    ctx.console.print("ortools direct = SimpleMinCostFlow called on the float scores rounded to int64 costs, as a user "
                      "would; ortools = the project's wrapper (FlowSolution out); auto = the default. "
                      "spfa/network_simplex: one run each in a child process, capped; ~ = extrapolated by "
                      "(units of flow) x (arcs) from the smallest size.")


def _routers_section(args: argparse.Namespace, ctx: _Context, k: int) -> None:
    rows = bench.router_rows(ctx.specs, _sizes(_per_k(args.router_sizes, ctx.preset["router_sizes"], k)),
                             ctx.router_workloads, k, ctx.cf, ctx.repeats, ctx.log, ctx.preset["budget"],
                             device=ctx.device, gap=not args.no_gap)
    table = Table(title=f"Routers, k={k}, on {ctx.device}: median ms per call on prepared scores; ratio to gshard and "
                        "to a bare torch.topk; objective gap to the MCMF optimum")
    for col in ["workload", "G x T x E", "router", "ms", "x gshard", "x topk", "gap", "slot drop"]:
        table.add_column(col, justify="right" if col not in ("router",) else "left")
    errors = {}
    for row in rows:
        workload = row["workload"].replace("captured:data/captured/ablation_maxscore.safetensors:", "captured ")
        if "error" in row:
            errors[row["router"]] = row["error"]
            table.add_row(workload, row["size"], row["router"], "n/a", "", "", "", "")
            continue
        table.add_row(workload, row["size"], row["router"], _fmt(row["ms"]), _fmt(row["x gshard"], "ratio"),
                      _fmt(row["x topk"], "ratio"), _fmt(row["gap"], "pct"), _fmt(row["drop"], "pct"))
    ctx.console.print(table)
    for spec, msg in errors.items():
        ctx.console.print(f"n/a: {spec}: {msg}")


def _memory_section(args: argparse.Namespace, ctx: _Context, k: int) -> None:
    size = bench.Size.parse(_per_k(args.memory_size, ctx.preset["memory_size"], k))
    mem_specs = ["gshard", "dropless"] if args.quick and not args.router else ctx.specs
    workload = next(w for w in ctx.workloads if not w.startswith("captured:"))
    if ctx.device.type == "cuda":
        rows = bench.device_memory_rows(mem_specs, size, workload, k, ctx.cf, ctx.device, ctx.log)
        how = "torch.cuda.max_memory_allocated during one call"
    elif ctx.device.type == "cpu":
        rows = bench.memory_rows(mem_specs, size, workload, k, ctx.cf, args.threads, ctx.log)
        how = "peak RSS, VmHWM, in a fresh process"
    else:
        ctx.console.print(f"memory: no peak-memory measure on {ctx.device}; skipped")
        return
    cap = expert_capacity(ctx.cf, k, size.tokens, size.experts) or size.tokens
    tec_mb = size.groups * size.tokens * size.experts * cap / 2**20
    table = Table(title=f"Peak memory per router at {size}, k={k} ({workload}): MB one call adds "
                        f"({how}; a bool [T,E,C] alone would be {tec_mb:.0f} MB)")
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
    ctx.console.print(table)
    for spec, msg in mem_errors.items():
        ctx.console.print(f"n/a: {spec}: {msg}")


def _curve_section(args: argparse.Namespace, ctx: _Context, k: int) -> None:
    if args.curve_router.split(":")[0] not in router_names():
        ctx.console.print(f"curve: router {args.curve_router!r} is not registered in this build; skipped")
        return
    points = []
    for part in (args.curve or ctx.preset["curve"]).split(","):
        iters, eps = part.split(":")
        points.append((int(iters), float(eps)))
    size = bench.Size.parse(ctx.preset["curve_size"])
    workload = next(w for w in ctx.workloads if not w.startswith("captured:"))
    try:
        rows = bench.curve_rows(args.curve_router, points, size, workload, k, ctx.cf, ctx.repeats, ctx.log,
                                ctx.preset["budget"] / 2)
    except MoeRouteError as exc:
        ctx.console.print(f"curve: {exc}; skipped")
        return
    table = Table(title=f"{args.curve_router}: iterations / eps vs time and gap at {size}, k={k} ({workload})")
    for col in ["spec", "ms", "x gshard", "gap"]:
        table.add_column(col, justify="right" if col != "spec" else "left")
    for row in rows:
        table.add_row(row["spec"], _fmt(row["ms"]), _fmt(row["x gshard"], "ratio"), _fmt(row["gap"], "pct"))
    ctx.console.print(table)


SECTION_FUNCS = {name: globals()[f"_{name}_section"] for name in SECTIONS}


def run(args: argparse.Namespace) -> int:
    preset = QUICK if args.quick else FULL
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for s in sections:
        if s not in SECTIONS:
            raise MoeRouteError(f"unknown bench section {s!r} (known: {', '.join(SECTIONS)})")
    ks = _ks(args.k or preset["k"])
    device = resolve_device(args.device)
    workloads = [w.strip() for w in (args.workloads or preset["workloads"]).split(",") if w.strip()]
    router_workloads = workloads if args.workloads else [w.strip() for w in preset["router_workloads"].split(",")]
    repeats = args.repeats or preset["repeats"]
    cf: Optional[float] = args.cf
    torch.set_num_threads(args.threads)
    console = Console(width=max(Console().width, 170))  # wide tables stay on one line when piped
    log = (lambda msg: None) if args.quiet else (lambda msg: console.print(f"[dim]{msg}[/dim]"))
    started = time.perf_counter()
    console.print(
        f"moeroute bench: k={','.join(map(str, ks))}, cf={cf}, torch {torch.__version__} on {args.threads} thread(s), "
        f"{platform.processor() or platform.machine()}, routers on {device}; medians of up to {repeats} round-robin "
        f"calls after warm-up ({time.strftime('%Y-%m-%d %H:%M')})"
    )
    specs = args.router or bench.default_router_specs()
    ctx = _Context(preset, workloads, router_workloads, repeats, cf, specs, console, log, device)
    for k in ks:
        for name in sections:
            if name == "curve" and k != ks[0]:
                continue  # the Sinkhorn trade-off is MaxScore's stage 2 at k = 2; once is enough
            SECTION_FUNCS[name](args, ctx, k)
    console.print(f"[dim]bench took {time.perf_counter() - started:.0f} s[/dim]")
    return 0

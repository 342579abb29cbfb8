"""``moeroute eval``: run routers on logits from a file or a synthetic workload and print their metrics."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from moeroute.core.device import resolve_device
from moeroute.core.errors import MoeRouteError
from moeroute.core.metrics import TABLE_KEYS
from moeroute.evaluation import evaluate
from moeroute.solvers import DEFAULT_SOLVER, SOLVERS
from moeroute.workloads import synthetic_logits, workload_names
from moeroute.workloads.files import load_logits

NAME = "eval"
HELP = "evaluate routers on logits (a file, or a synthetic workload) against the exact optimum"


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--logits", metavar="PATH", help="a .pt, .npy or .safetensors file, shape [N, E] or [G, T, E]")
    src.add_argument("--synthetic", metavar="WORKLOAD", help=f"generate logits ({', '.join(workload_names())})")
    p.add_argument("--key", help="which tensor of a dict file (.pt / .safetensors)")
    p.add_argument("--router", action="append", metavar="SPEC", help="router spec, repeatable (default: gshard, dropless, exact)")
    p.add_argument("--k", type=int, default=2, help="experts per token (default 2)")
    p.add_argument("--cf", default="1.0", help="capacity factor, or 'none' for no capacity (default 1.0)")
    p.add_argument("--group-size", type=int, help="tokens per group T when the logits are [N, E]")
    p.add_argument("--tokens", type=int, default=512, help="synthetic: tokens per group (default 512)")
    p.add_argument("--groups", type=int, default=1, help="synthetic: groups (default 1)")
    p.add_argument("--experts", type=int, default=16, help="synthetic: experts (default 16)")
    p.add_argument("--seed", type=int, default=0, help="synthetic: seed (default 0)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per router (default 5)")
    p.add_argument("--solver", default=DEFAULT_SOLVER,
                   help=f"exact solver for the optimum: {', '.join(SOLVERS)} (default {DEFAULT_SOLVER})")
    p.add_argument("--ep-ranks", type=int, metavar="R",
                   help="expert-parallel view: experts placed contiguously on R ranks, each group one sending rank")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1, as sweeps: small routing ops gain little from more threads and "
                        "their timings stay stable on a shared machine; 0 = torch's default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default cpu)")


def parse_cf(text: str) -> "float | None":
    if text.strip().lower() in {"none", "inf", "dropless"}:
        return None
    try:
        value = float(text)
    except ValueError:
        raise MoeRouteError(f"capacity factor must be a number or 'none', got {text!r}") from None
    if not value > 0:
        raise MoeRouteError(f"capacity factor must be > 0, got {text}")
    return value


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.endswith("rate") or key == "gap":
        return f"{100 * value:.2f}%"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def run(args: argparse.Namespace) -> int:
    cf = parse_cf(args.cf)
    device = resolve_device(args.device)
    if args.threads < 0:
        raise MoeRouteError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.logits:
        logits = load_logits(args.logits, args.key)
    else:
        if args.key:
            raise MoeRouteError("--key applies to --logits files only")
        logits = synthetic_logits(args.synthetic, args.groups, args.tokens, args.experts, args.seed)
    routers = args.router or ["gshard", "dropless", "exact"]
    results = evaluate(logits.to(device), routers, k=args.k, capacity_factor=cf, group_size=args.group_size,
                       repeats=args.repeats, solver=args.solver, ep_ranks=args.ep_ranks)
    rows = [m.table_row() for m in results]
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(TABLE_KEYS))
        writer.writeheader()
        writer.writerows(rows)
    else:
        first = rows[0]
        title = f"{first['groups']} group(s) x {first['tokens']} tokens, E={first['experts']}, k={first['k']}, C={first['capacity']}"
        if args.ep_ranks:
            title += f", {args.ep_ranks} EP ranks"
        table = Table(title=title + f"; {device}, {torch.get_num_threads()} thread(s)")
        shared = ("groups", "tokens", "experts", "k", "capacity", "ep_ranks", "ep_rank_tokens")
        # Columns no router filled (the expert-parallel view without --ep-ranks) are left out of the table.
        keys = [k for k in TABLE_KEYS if k not in shared and k != "router" and any(row[k] is not None for row in rows)]
        # One column per router, one row per metric: a terminal fits many metrics, and a few routers side by side.
        table.add_column("metric", justify="left")
        for row in rows:
            table.add_column(row["router"], justify="right", overflow="fold")
        for key in keys:
            table.add_row(key.replace("_", " "), *(_fmt(key, row[key]) for row in rows))
        Console(width=max(120, Console().width)).print(table)
    return 0

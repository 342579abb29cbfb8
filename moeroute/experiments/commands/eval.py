"""``moeroute eval``: run routers on logits from a file or a synthetic workload and print their metrics; or replay a
recorded routing (expert ids without scores, ``--routing``: docs/traces.md)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any, Optional

import torch
from rich.console import Console
from rich.table import Table

from moeroute.core.device import resolve_device
from moeroute.core.errors import MoeRouteError
from moeroute.core.metrics import TABLE_KEYS
from moeroute.evaluation import evaluate
from moeroute.replay import REPLAY_KEYS, replay
from moeroute.solvers import DEFAULT_SOLVER, SOLVERS
from moeroute.workloads import read_windows, synthetic_logits, workload_names
from moeroute.workloads.files import open_logits
from moeroute.workloads.routings import read_routings
from moeroute.workloads.settings import RoutingSettings, read_settings, with_settings

NAME = "eval"
HELP = "evaluate routers on logits (a file, or a synthetic workload) against the exact optimum"


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--logits", metavar="PATH", help="a .pt, .npy or .safetensors file, shape [N, E] or [G, T, E]")
    src.add_argument("--synthetic", metavar="WORKLOAD", help=f"generate logits ({', '.join(workload_names())})")
    src.add_argument("--routing", metavar="PATH",
                     help="replay a recorded routing: expert ids (tokens, layers, k) in .npy/.pt/.safetensors (vLLM "
                          "routed_experts) or a Megatron router trace folder; no scores, so score metrics are n/a")
    p.add_argument("--key", help="which tensor of a file: a key (layer3), a dotted path into nested dicts "
                                 "(logits.layer1), an index into a list or tuple (3: HF output_router_logits)")
    p.add_argument("--router", action="append", metavar="SPEC", help="router spec, repeatable (default: gshard, dropless, exact)")
    p.add_argument("--k", type=int, default=None,
                   help="experts per token (default: the file's recorded k, else 2)")
    p.add_argument("--cf", default="1.0", help="capacity factor, or 'none' for no capacity (default 1.0)")
    p.add_argument("--group-size", type=int,
                   help="tokens per group T when the logits are [N, E] (tokens that fill no group are left out)")
    p.add_argument("--max-groups", type=int, metavar="M",
                   help="evaluate M groups drawn by --seed instead of all (only those are read from the file)")
    p.add_argument("--tokens", type=int, default=512, help="synthetic: tokens per group (default 512)")
    p.add_argument("--groups", type=int, default=1, help="synthetic: groups (default 1)")
    p.add_argument("--experts", type=int, default=None,
                   help="synthetic: experts (default 16); --routing: E (default: the largest id + 1)")
    p.add_argument("--layer", help="--routing: replay this layer only (an index, or layer3 / mtp0.layer1 of a trace)")
    p.add_argument("--ep-ranks", type=int, default=None, metavar="R",
                   help="expert-parallel view: experts placed contiguously on R ranks, each group one sending rank "
                        "(--routing: default 1)")
    p.add_argument("--seed", type=int, default=0, help="synthetic: seed (default 0)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per router (default 5)")
    p.add_argument("--solver", default=DEFAULT_SOLVER,
                   help=f"exact solver for the optimum: {', '.join(SOLVERS)} (default {DEFAULT_SOLVER})")
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
        return "n/a"
    if key.endswith("rate") or key == "gap":
        return f"{100 * value:.2f}%"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def _notes() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def _file_logits(args: argparse.Namespace) -> tuple[torch.Tensor, Optional[RoutingSettings]]:
    """The logits ``--logits`` names, read lazily: only the groups evaluated leave the disk."""
    source = open_logits(args.logits, args.key)
    settings = read_settings(args.logits, source.metadata)
    tokens = args.group_size or source.group_tokens
    if tokens is None:
        if args.max_groups is not None:
            raise MoeRouteError("--max-groups needs --group-size for [N, E] logits")
        return source.rows(0, source.tokens), settings
    if tokens < 1 or tokens > source.tokens:
        raise MoeRouteError(f"--group-size must be between 1 and the {source.tokens} tokens of {source.label}")
    windows = source.tokens // tokens
    if source.tokens % tokens:
        _notes().print(f"note: the last {source.tokens % tokens} of {source.tokens} tokens fill no group of {tokens} "
                       f"and are left out")
    groups = windows if args.max_groups is None else min(args.max_groups, windows)
    if groups < windows:
        _notes().print(f"note: {groups} of {windows} groups of {tokens}, drawn by seed {args.seed}")
    return read_windows(source, groups, tokens, args.seed if groups < windows else 0), settings


def run(args: argparse.Namespace) -> int:
    cf = parse_cf(args.cf)
    device = resolve_device(args.device)
    if args.threads < 0:
        raise MoeRouteError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.max_groups is not None and args.max_groups < 1:
        raise MoeRouteError(f"--max-groups must be >= 1, got {args.max_groups}")
    if args.routing:
        return _replay(args, cf)
    for flag in ("layer",):
        if getattr(args, flag) is not None:
            raise MoeRouteError(f"--{flag} applies to --routing only")
    settings = None
    if args.logits:
        logits, settings = _file_logits(args)
    else:
        if args.key:
            raise MoeRouteError("--key applies to --logits files only")
        logits = synthetic_logits(args.synthetic, args.groups, args.tokens, args.experts or 16, args.seed)
    routers = args.router or ["gshard", "dropless", "exact"]
    k = args.k if args.k is not None else (settings.k if settings and settings.k else 2)
    if settings is not None:
        runs = [with_settings(r, settings) for r in routers]
        changed = [f"{r} as {run}" for r, run in zip(routers, runs) if run != r]
        _notes().print(f"note: routing settings recorded with {args.logits}: {settings.describe()} (defaults; "
                       f"--k and router options win)" + (f"; running {', '.join(changed)}" if changed else ""))
        routers = runs
    group_size = None if args.logits else args.group_size  # a file's groups were cut by _file_logits
    results = evaluate(logits.to(device), routers, k=k, capacity_factor=cf, group_size=group_size,
                       repeats=args.repeats, solver=args.solver, ep_ranks=args.ep_ranks)
    _print([m.table_row() for m in results], list(TABLE_KEYS), args.format,
           lambda first: f"{first['groups']} group(s) x {first['tokens']} tokens, E={first['experts']}, k={first['k']}, "
                         f"C={first['capacity']}" + (f", {args.ep_ranks} EP ranks" if args.ep_ranks else "")
                         + f"; {device}, {torch.get_num_threads()} thread(s)",
           ("groups", "tokens", "experts", "k", "capacity", "ep_ranks", "ep_rank_tokens"))
    return 0


def _print(rows: list[dict[str, Any]], keys: list[str], fmt: str, title: Any, in_title: tuple[str, ...],
           extra: Optional[list[dict[str, Any]]] = None) -> None:
    """Rows as JSON (plus ``extra`` fields per row), CSV or a table whose title holds the ``in_title`` keys."""
    if fmt == "json":
        json.dump([{**row, **(extra[i] if extra else {})} for i, row in enumerate(rows)], sys.stdout, indent=2)
        print()
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    else:
        table = Table(title=title(rows[0]))
        label = "layer" if "layer" in keys else "router"
        # One column per router (layer), one row per metric: a terminal fits many metrics and a few routers side by
        # side. Metrics no row filled (the expert-parallel view without --ep-ranks) are left out.
        shown = [k for k in keys if k not in in_title and k != label and any(row[k] is not None for row in rows)]
        table.add_column("metric", justify="left")
        for row in rows:
            table.add_column(str(row[label]), justify="right", overflow="fold")
        for key in shown:
            table.add_row(key.replace("_", " "), *(_fmt(key, row[key]) for row in rows))
        Console(width=max(120, Console().width)).print(table)


def _replay(args: argparse.Namespace, cf: Optional[float]) -> int:
    """``--routing``: replay each recorded layer (loads, max_vio, per-rank balance, drops at ``--cf``)."""
    for flag, value in (("router", args.router), ("k", args.k), ("max-groups", args.max_groups)):
        if value is not None:
            raise MoeRouteError(f"--{flag} does not apply to --routing (a recording has its own experts and k)")
    if args.experts is not None and args.experts < 1:
        raise MoeRouteError(f"--experts must be >= 1, got {args.experts}")
    found = read_routings(args.routing, args.key, args.layer)
    e = args.experts
    if e is None:
        e = max(int(r.experts.max()) for r in found) + 1
    ranks = args.ep_ranks or 1
    results = [replay(r.experts, e, cf, args.group_size, ranks, r.source, r.layer) for r in found]
    if args.experts is None:
        _notes().print(f"note: E={e} taken from the largest expert id (give --experts if some experts were never used)")
    if results[0].left_out:
        _notes().print(f"note: the last {results[0].left_out} token(s) of each layer fill no group of {args.group_size} "
                       f"and are left out of the capacity replay")
    extra = [{"source": m.source, "loads": m.loads, "rank_tokens": m.rank_tokens, "left_out": m.left_out} for m in results]
    _print([m.table_row() for m in results], list(REPLAY_KEYS), args.format,
           lambda first: f"replayed routing {args.routing}: {first['groups']} group(s) x {first['tokens']} tokens, "
                         f"E={first['experts']}, k={first['k']}, C={first['capacity']}, {ranks} EP rank(s); "
                         f"score-based metrics n/a (no scores recorded)",
           ("groups", "tokens", "experts", "k", "capacity", "ep_ranks"), extra)
    return 0

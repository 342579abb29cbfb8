"""``moeroute run CONFIG``: run a sweep config (TOML or YAML) and append its rows to ``<out>/<sweep>.csv``."""

from __future__ import annotations

import argparse

from rich.console import Console

from moeroute.core.errors import MoeRouteError
from moeroute.experiments.sweep.config import load_config
from moeroute.experiments.sweep.executors import make_executor
from moeroute.experiments.sweep.run import run_sweep

NAME = "run"
HELP = "run a sweep config (routers x workloads x sizes x seeds); resumes where a previous run stopped"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="a sweep config (.toml, .yaml), e.g. configs/default.toml")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--out", default="results", metavar="DIR", help="results folder (default results/)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: small routing ops gain little from more, and timings stay "
                        "stable on a shared machine; 0 = torch's default)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="compute points in N local worker processes (default 1: in this process); with --executor "
                        "ray, at most N tasks at a time (default: every CPU of the cluster)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local (this machine, --workers processes) or ray (Ray tasks; needs moeroute[cluster])")
    p.add_argument("--address", metavar="ADDR",
                   help="with --executor ray: an existing Ray cluster (e.g. ray://head:10001 or auto); default: "
                        "start a local Ray")
    p.add_argument("--no-progress", action="store_true", help="one line per point instead of a progress bar")
    p.add_argument("--reuse-stale", action="store_true",
                   help="keep rows measured by other code (a different source fingerprint) instead of re-running them")
    p.add_argument("--allow-errors", action="store_true",
                   help="exit 0 even when some router errored on some point (the rows record the errors)")


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True, soft_wrap=True)
    config = load_config(args.config)
    if args.threads < 0:
        raise MoeRouteError(f"--threads must be >= 0, got {args.threads}")
    with make_executor(args.executor, args.workers, args.threads or None, args.address) as executor:
        summary = run_sweep(config, args.out, args.device, console, progress=False if args.no_progress else None,
                            threads=args.threads or None, reuse_stale=args.reuse_stale, executor=executor)
    extra = f", {summary.damaged} damaged row(s) moved aside and re-run" if summary.damaged else ""
    console.print(
        f"{summary.path}: {summary.rows_written} row(s) written from {summary.points} point(s), "
        f"{summary.rows_skipped} already done, {summary.errors} error(s){extra}, {summary.seconds:.1f} s "
        f"({summary.executor})"
    )
    if summary.errors and not args.allow_errors:
        # Errored rows are kept (and retried by a re-run); the exit status says the sweep is not complete.
        console.print(f"moeroute: {summary.errors} row(s) errored (see their 'error' column in {summary.path}); "
                      f"a re-run retries them, --allow-errors exits 0")
        return 1
    return 0

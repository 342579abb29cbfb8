"""``moeroute workloads``: list the synthetic workload families with their options."""

from __future__ import annotations

import argparse
import inspect

from rich.console import Console
from rich.table import Table

from moeroute.harness.workloads import workload, workload_names
from moeroute.options import options_table

NAME = "workloads"
HELP = "list the synthetic workload families (and the captured:PATH[:KEY] form) with their options"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plain", action="store_true", help="one line per workload, no table")


def run(args: argparse.Namespace) -> int:
    rows = []
    for name in workload_names():
        w = workload(name)
        opts = ", ".join(f"{n}={d}" for n, _, d in options_table(w.options))
        rows.append((name, w.description, opts, inspect.cleandoc(w.options.__doc__ or "")))
    rows.append(("captured:PATH[:KEY]", "router logits recorded by `moeroute capture` (or any [N, E] file)", "",
                 "cut into groups of T consecutive tokens; the seed picks which windows; E is the file's"))
    if args.plain:
        for name, desc, opts, _ in rows:
            print(f"{name}: {desc}" + (f" [{opts}]" if opts else ""))
        return 0
    table = Table(title="moeroute workloads (spec: name:key=value,...)", show_lines=True)
    for col in ("workload", "what it generates", "options (defaults)", "details"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    return 0

"""``moeroute routers``: list the registered routers."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from moeroute.options import options_table
from moeroute.routers import router_entry, router_names

NAME = "routers"
HELP = "list the registered routers with their options"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plain", action="store_true", help="one line per router, no table")


def run(args: argparse.Namespace) -> int:
    rows = []
    for name in router_names():
        entry = router_entry(name)
        opts = ", ".join(f"{n}={d}" for n, _, d in options_table(entry.options))
        rows.append((name, entry.description, opts, entry.source))
    if args.plain:
        for name, desc, opts, _ in rows:
            print(f"{name}: {desc}" + (f" [{opts}]" if opts else ""))
        return 0
    table = Table(title="moeroute routers (every router also takes weights=, renormalize=, temperature=)")
    for col in ("router", "what it does", "options (defaults)", "from"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    return 0

"""``moeroute routers``: list the registered routers."""

from __future__ import annotations

import argparse

from moeroute.experiments.listing import defaults_text, print_listing
from moeroute.routers import router_entry, router_names

NAME = "routers"
HELP = "list the registered routers with their options"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plain", action="store_true", help="one line per router, no table")


def run(args: argparse.Namespace) -> int:
    rows = []
    for name in router_names():
        entry = router_entry(name)
        rows.append((name, entry.description, defaults_text(entry.options), entry.source))
    print_listing(
        rows, "moeroute routers (every router also takes weights=, renormalize=, temperature=)",
        ("router", "what it does", "options (defaults)", "from"), args.plain,
    )
    return 0

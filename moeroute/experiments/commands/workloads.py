"""``moeroute workloads``: list the synthetic workload families with their options."""

from __future__ import annotations

import argparse
import inspect

from moeroute.experiments.listing import defaults_text, print_listing
from moeroute.workloads import workload, workload_names

NAME = "workloads"
HELP = "list the synthetic workload families (and the captured:PATH[:KEY] form) with their options"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plain", action="store_true", help="one line per workload, no table")


def run(args: argparse.Namespace) -> int:
    rows = []
    for name in workload_names():
        w = workload(name)
        rows.append((name, w.description, defaults_text(w.options), inspect.cleandoc(w.options.__doc__ or "")))
    rows.append(("captured:PATH[:KEY]", "router logits recorded by `moeroute capture` (or any [N, E] file; KEY = * for every layer)", "",
                 "cut into groups of T consecutive tokens; the seed picks which windows; E is the file's"))
    print_listing(
        rows, "moeroute workloads (spec: name:key=value,...)",
        ("workload", "what it generates", "options (defaults)", "details"), args.plain, show_lines=True,
    )
    return 0

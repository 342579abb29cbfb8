"""``moeroute report [RESULTS...]``: build ``REPORT.md`` (and ``REPORT.html``), ``summary.csv`` and the figures from
results files."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "report"
HELP = "write results/report/REPORT.md and REPORT.html (tables, Pareto view, figures, generated readings) from results"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="*", metavar="RESULTS", help="results CSVs (default: every results/*.csv)")
    p.add_argument("--out", default="results/report", metavar="DIR",
                   help="output folder (default results/report/, beside the results and ignored by git; the committed "
                        "example report in reports/ is written with --out reports)")
    p.add_argument("--note", metavar="TEXT",
                   help="a sentence of your own printed under the header as such (e.g. what else ran on the machine)")
    p.add_argument("--no-html", action="store_true", help="write no REPORT.html")


def run(args: argparse.Namespace) -> int:
    from moeroute.experiments.report import build_report  # matplotlib is imported only for this command

    paths = args.results or sorted(str(p) for p in Path("results").glob("*.csv"))
    report = build_report(paths, args.out, note=args.note, html=not args.no_html)
    print(f"wrote {report}, its figures{'' if args.no_html else ' and REPORT.html'}")
    return 0

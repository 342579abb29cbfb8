"""``moeroute report [RESULTS...]``: build ``REPORT.md``, ``summary.csv`` and the figures from results CSVs."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "report"
HELP = "write results/report/REPORT.md (summary tables, figures, generated readings) from sweep results"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="*", metavar="RESULTS", help="results CSVs (default: every results/*.csv)")
    p.add_argument("--out", default="results/report", metavar="DIR",
                   help="output folder (default results/report/, beside the results and ignored by git; the committed "
                        "example report in reports/ is written with --out reports)")


def run(args: argparse.Namespace) -> int:
    from moeroute.experiments.report import build_report  # matplotlib is imported only for this command

    paths = args.results or sorted(str(p) for p in Path("results").glob("*.csv"))
    report = build_report(paths, args.out)
    print(f"wrote {report} and its figures")
    return 0

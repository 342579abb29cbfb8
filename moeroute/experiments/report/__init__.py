"""``moeroute report``: results CSVs into ``REPORT.md`` (and ``REPORT.html``): a one-screen summary (the main
setting's table, the Pareto view of every router against the LP optimum, the paper's load-ratio figure, drop vs cf),
then a section for everything that varies, every sentence generated from the numbers."""

from moeroute.experiments.report.build import build_report

__all__ = ["build_report"]

"""``moeroute report``: results CSVs into ``REPORT.md`` with summary tables, PNG figures and generated readings."""

from moeroute.experiments.report.build import build_report, markdown_table

__all__ = ["build_report", "markdown_table"]

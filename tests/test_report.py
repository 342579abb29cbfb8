"""`moeroute report` builds REPORT.md, summary.csv and the figures from a small results file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest

from moeroute.core.errors import MoeRouteError
from moeroute.experiments.cli import main
from moeroute.experiments.report import build_report
from moeroute.experiments.report.data import load_results, main_settings, summary_table
from moeroute.experiments.sweep.config import load_config
from moeroute.experiments.sweep.run import run_sweep

CONFIG = """
    name = "tiny"
    groups = 1
    tokens = 64
    experts = 8
    seeds = 2
    repeats = 1
    [[grid]]
    name = "main"
    routers = ["gshard", "gshard:drop_policy=probs", "dropless", "exact"]
    workloads = ["gauss", "skew"]
    [[grid]]
    name = "cf"
    groups = 2
    routers = ["gshard", "exact"]
    workloads = ["skew"]
    cf = [0.5, 1.0, 2.0]
    [[grid]]
    name = "tokens"
    seeds = 1
    routers = ["gshard", "dropless"]
    workloads = ["skew"]
    tokens = [32, 64, 128]
    experts = 4
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A real small sweep, plus rows that look like a Sinkhorn iters/eps sweep (copies of gshard rows with
    maxscore/sinkhorn specs and made-up gaps), so the generated readings can be checked against known values."""
    root = tmp_path_factory.mktemp("results")
    cfg = root / "tiny.toml"
    cfg.write_text(textwrap.dedent(CONFIG))
    run_sweep(load_config(str(cfg)), root, progress=False)
    path = root / "tiny.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    base = df[(df["router"] == "gshard") & (df["grid"] == "main") & (df["workload"] == "skew")]
    fake = []
    for name in ("maxscore", "sinkhorn"):
        for option, values in (("iters", [1, 10, 100]), ("eps", [0.1, 1.0])):
            for v in values:
                rows = base.copy()
                rows["router"], rows["router_name"] = f"{name}:{option}={v}", name
                rows["key"] = rows["key"] + f"-{name}-{option}-{v}"
                rows["gap"] = 0.01 / v
                fake.append(rows)
    broken = base.head(1).copy()
    broken["router"], broken["key"], broken["error"] = "gshard:renormalize=true", "broken", "invariant broken: test"
    # A hand-made results file (no row checksums: the reader verifies them only where a file has them).
    pd.concat([df, *fake, broken]).drop(columns="row_sha").to_csv(root / "tiny_plus.csv", index=False)
    return root


def test_report_builds_tables_figures_and_readings(results, tmp_path):
    report = build_report([results / "tiny_plus.csv"], tmp_path / "rep")
    text = report.read_text()
    for figure in ("load_ratios.png", "drop_vs_cf.png", "gap_vs_iters.png", "gap_vs_eps.png",
                   "latency_vs_tokens.png", "affinity.png"):
        assert (tmp_path / "rep" / figure).stat().st_size > 5000, figure
        assert f"({figure})" in text
    assert "### `gauss` (G=1, T=64, E=8, k=2, cf=1)" in text and "### `skew` (G=1, T=64, E=8, k=2, cf=1)" in text
    assert "| router | slot drop % | 2nd-choice drop % | mean load ratio | max load ratio | gap to optimum % |" in text
    assert "| `exact` | 0.00 | 0.00 | 1.0000 | 1.000 | 0.000 |" in text
    assert "Fewest slots dropped:" in text and "`gshard` drops" in text
    assert "`maxscore`: gap 1.000% at iters=1, 0.010% at iters=100" in text
    assert "latency grows as T^" in text
    assert "## Errors" in text and "invariant broken: test" in text
    assert "_Skipped" not in text
    summary = pd.read_csv(tmp_path / "rep" / "summary.csv")
    assert set(summary["workload"]) == {"gauss", "skew"}
    assert set(summary[summary["workload"] == "gauss"]["router"]) == {"gshard", "gshard:drop_policy=probs", "dropless", "exact"}
    assert (summary[summary["router"] == "gshard"]["latency_vs_gshard"] == 1.0).all()


def test_summary_means_over_seeds(results):
    df = load_results([results / "tiny.csv"])
    ok = df[df["error"] == ""]
    settings = main_settings(ok)
    assert settings["skew"] == {"groups": 1, "tokens": 64, "experts": 8, "k": 2, "cf_label": "1"}
    rows = ok[(ok["workload"] == "skew") & (ok["grid"] == "main")]
    table = summary_table(rows)
    g = rows[rows["router"] == "gshard"]
    assert table.loc["gshard", "slot_drop_pct"] == pytest.approx(100 * g["slot_drop_rate"].mean())
    assert table.loc["gshard", "seeds"] == 2
    assert table.loc["exact", "gap_pct"] == pytest.approx(0.0, abs=1e-6)


def test_missing_data_skips_figures_with_a_line(results, tmp_path):
    df = pd.read_csv(results / "tiny.csv", dtype=str, keep_default_na=False)  # as written: checksums still hold
    df[df["grid"] == "main"].to_csv(tmp_path / "main_only.csv", index=False)
    assert main(["report", str(tmp_path / "main_only.csv"), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "REPORT.md").read_text()
    assert "_Skipped: drop rate vs cf" in text and "_Skipped: latency vs tokens" in text
    assert "_Skipped: gap vs iters" in text
    assert not (tmp_path / "rep" / "drop_vs_cf.png").exists()
    assert (tmp_path / "rep" / "load_ratios.png").exists()


def test_bad_results_inputs(tmp_path):
    with pytest.raises(MoeRouteError, match="no results files"):
        build_report([], tmp_path)
    with pytest.raises(MoeRouteError, match="not found"):
        build_report([tmp_path / "nope.csv"], tmp_path)
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(MoeRouteError, match="not a moeroute results CSV"):
        build_report([tmp_path / "other.csv"], tmp_path)

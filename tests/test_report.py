"""`moeroute report` end to end on a real small sweep: the files it writes, the sections it finds by what varies,
what it skips with a line, and the inputs it refuses. The readings themselves are checked against a hand-made
results file in tests/test_report_reading.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest

from moeroute.core.errors import MoeRouteError
from moeroute.experiments.cli import main
from moeroute.experiments.report import build_report
from moeroute.experiments.report.data import load_results
from moeroute.experiments.report.sections import find_settings, find_sweeps
from moeroute.experiments.report.tables import router_table
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
    routers = ["gshard", "gshard:drop_policy=probs", "dropless", "maxscore", "dual", "exact"]
    workloads = ["gauss", "skew"]
    [[grid]]
    name = "cf"
    groups = 2
    routers = ["gshard", "maxscore", "exact"]
    workloads = ["skew"]
    cf = [0.5, 1.0, 2.0]
    [[grid]]
    name = "iters"
    groups = 2
    seeds = [7]
    routers = ["dual:iters=1", "dual:iters=4", "dual:iters=16"]
    workloads = ["skew"]
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
    """A real small sweep, plus one row that failed (the report lists it)."""
    root = tmp_path_factory.mktemp("results")
    cfg = root / "tiny.toml"
    cfg.write_text(textwrap.dedent(CONFIG))
    run_sweep(load_config(str(cfg)), root, progress=False)
    df = pd.read_csv(root / "tiny.csv", dtype=str, keep_default_na=False)
    broken = df.head(1).copy()
    broken["router"], broken["key"], broken["error"] = "gshard:renormalize=true", "broken", "invariant broken: test"
    # A hand-made results file (no row checksums: the reader verifies them only where a file has them).
    pd.concat([df, broken]).drop(columns="row_sha").to_csv(root / "tiny_plus.csv", index=False)
    return root


def test_report_writes_every_file_and_section(results, tmp_path):
    assert main(["report", str(results / "tiny_plus.csv"), "--out", str(tmp_path / "rep"), "--note", "a test"]) == 0
    out = tmp_path / "rep"
    text = (out / "REPORT.md").read_text()
    for figure in ("pareto.png", "load_ratios.png", "drop_vs_cf.png", "gap_vs_options.png", "latency_vs_size.png"):
        assert (out / figure).stat().st_size > 5000, figure
        assert f"({figure})" in text
    assert "**Setting: G = 1, T = 64, E = 8, k = 2, cf = 1; 2 workload(s) × 2 seed(s)**" in text
    assert "### Capacity factor at G = 2, T = 64, E = 8, k = 2 (figure above)" in text
    assert "### Router options (`iters=`)" in text
    assert "### Sizes (tokens per group T)" in text
    assert "Pareto front (latency × `gshard`" in text and "Outside the LP" in text
    assert "## Errors" in text and "invariant broken: test" in text
    assert "_Skipped" not in text and "> Note from whoever ran it: a test" in text
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["router"]) == {"gshard", "gshard:drop_policy=probs", "dropless", "maxscore", "dual", "exact"}
    assert (summary[summary["router"] == "gshard"]["latency_vs_baseline"] == 1.0).all()
    assert summary.set_index("router").loc["exact", "gap_pct"] == pytest.approx(0.0, abs=1e-6)
    html = (out / "REPORT.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("data:image/png;base64,") == 5


def test_sections_follow_what_varies(results):
    df = load_results([results / "tiny.csv"])
    ok = df[df["error"] == ""]
    sweeps = find_sweeps(ok)
    assert [s.axis for s in sweeps] == ["cf_value", "tokens", "opt_iters"]
    assert set(sweeps[0].rows["router"]) == {"gshard", "maxscore", "exact"}
    settings = find_settings(ok, sweeps)
    assert [s.values for s in settings] == [{"groups": 1, "tokens": 64, "experts": 8, "k": 2, "cf_label": "1"}]
    table = router_table(settings[0])
    g = ok[(ok["router"] == "gshard") & (ok["groups"] == 1) & (ok["tokens"] == 64) & (ok["experts"] == 8)]
    # means over seeds, then over the two workloads
    expected = g.groupby("workload")["slot_drop_rate"].mean().mean()
    assert table.loc["gshard", "slot_drop_rate"] == pytest.approx(expected)
    assert table.loc["exact", "gap"] == pytest.approx(0.0, abs=1e-9) and table.loc["gshard", "seeds"] == 2
    assert table.loc["gshard", "x_base"] == pytest.approx(1.0) and bool(table.loc["dropless", "over"])


def test_missing_data_skips_figures_with_a_line(results, tmp_path):
    df = pd.read_csv(results / "tiny.csv", dtype=str, keep_default_na=False)  # as written: checksums still hold
    df[df["grid"] == "main"].to_csv(tmp_path / "main_only.csv", index=False)
    assert main(["report", str(tmp_path / "main_only.csv"), "--out", str(tmp_path / "rep"), "--no-html"]) == 0
    text = (tmp_path / "rep" / "REPORT.md").read_text()
    assert "_Skipped: drop rate vs capacity factor — no point was run at three or more capacity factors._" in text
    assert "### Sizes" not in text and "### Router options" not in text
    assert not (tmp_path / "rep" / "drop_vs_cf.png").exists() and not (tmp_path / "rep" / "REPORT.html").exists()
    assert (tmp_path / "rep" / "load_ratios.png").exists()


def test_only_errors_gives_a_report_that_says_so(results, tmp_path):
    df = pd.read_csv(results / "tiny_plus.csv", dtype=str, keep_default_na=False)
    df[df["error"] != ""].to_csv(tmp_path / "errors.csv", index=False)
    text = build_report([tmp_path / "errors.csv"], tmp_path / "rep").read_text()
    assert "_Skipped: summary — no setting compares routers" in text and "## Errors" in text


def test_rows_of_other_code_are_flagged(results, tmp_path):
    df = pd.read_csv(results / "tiny_plus.csv", dtype=str, keep_default_na=False)
    df["code"] = "0123456789ab"
    df.to_csv(tmp_path / "old.csv", index=False)
    text = build_report([tmp_path / "old.csv"], tmp_path / "rep", html=False).read_text()
    ok = int((df["error"] == "").sum())
    assert f"**{ok} of {ok} rows were measured by other code** than this checkout" in text


def test_bad_results_inputs(tmp_path):
    with pytest.raises(MoeRouteError, match="no results files"):
        build_report([], tmp_path)
    with pytest.raises(MoeRouteError, match="not found"):
        build_report([tmp_path / "nope.csv"], tmp_path)
    (tmp_path / "other.csv").write_text("key,b\n1,2\n")
    with pytest.raises(MoeRouteError, match="not a moeroute results CSV"):
        build_report([tmp_path / "other.csv"], tmp_path)

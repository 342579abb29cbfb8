"""Results a researcher can trust: rows are keyed on the resolved router options and the code that measured them,
damaged results files are repaired and reported, and a sweep with errors says so in its exit status."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import moeroute.experiments.sweep.run as sweep_run
from moeroute.experiments.cli import main
from moeroute.experiments.report import build_report
from moeroute.experiments.sweep.config import load_config
from moeroute.experiments.sweep.run import run_sweep
from moeroute.experiments.sweep.store import read_results
from moeroute.routers import apply_capacity, register_router, resolve_spec

ROOT = Path(__file__).resolve().parents[1]


def config(tmp_path: Path, routers: list[str], seeds: int = 2) -> str:
    path = tmp_path / "trust.toml"
    path.write_text(textwrap.dedent(f"""
        name = "trust"
        routers = {routers!r}
        workloads = ["gauss"]
        tokens = 32
        groups = 1
        experts = 4
        seeds = {seeds}
        repeats = 1
    """).replace("'", '"'))
    return str(path)


def register_scaled(default: float) -> None:
    """A test router ``scaled`` whose option ``bias`` defaults to ``default`` (re-registered with another default
    to play 'a maintainer changed a router's default')."""

    @dataclass(frozen=True)
    class ScaledOptions:
        bias: float = default

    def scaled(x, opts):
        return apply_capacity(x, (x.scores + opts.bias).topk(x.k, dim=-1).indices)

    register_router("scaled", ScaledOptions, "top-k of scores + a bias (test)")(scaled)


def test_default_spelled_out_shares_the_row(tmp_path):
    default = resolve_spec("maxscore")
    assert default == resolve_spec("maxscore:eps=0.01") == resolve_spec("maxscore:eps=1e-2,weights=softmax")
    assert default != resolve_spec("maxscore:eps=0.02")
    cfg = load_config(config(tmp_path, ["maxscore", "gshard"], seeds=1))
    run_sweep(cfg, tmp_path, progress=False)
    again = load_config(config(tmp_path, ["maxscore:eps=0.01", "gshard:drop_policy=position"], seeds=1))
    summary = run_sweep(again, tmp_path, progress=False)
    assert summary.rows_written == 0 and summary.rows_skipped == 2


def test_changing_a_router_default_reruns_only_that_router(tmp_path, scratch_routers):
    register_scaled(0.0)
    path = config(tmp_path, ["scaled", "gshard"])
    first = run_sweep(load_config(path), tmp_path, progress=False)
    assert first.rows_written == 4
    scratch_routers.remove("scaled")
    register_scaled(0.5)
    second = run_sweep(load_config(path), tmp_path, progress=False)
    assert second.rows_written == 2 and second.rows_skipped == 2  # the two 'scaled' rows, not gshard's
    rows = read_results(tmp_path / "trust.csv")
    resolved = {r["router_resolved"] for r in rows if r["router"] == "scaled"}
    assert any("bias=0.5" in r for r in resolved)


def test_rows_from_other_code_are_rerun_unless_reuse_stale(tmp_path, monkeypatch):
    path = config(tmp_path, ["gshard"])
    run_sweep(load_config(path), tmp_path, progress=False)
    monkeypatch.setattr(sweep_run, "code_fingerprint", lambda: "000000000000")
    kept = run_sweep(load_config(path), tmp_path, progress=False, reuse_stale=True)
    assert kept.rows_written == 0 and kept.rows_stale == 2
    rerun = run_sweep(load_config(path), tmp_path, progress=False)
    assert rerun.rows_written == 2
    assert {r["code"] for r in read_results(tmp_path / "trust.csv")} == {"000000000000"}


def test_truncated_last_row_is_moved_aside_and_rerun(tmp_path, capsys):
    path = config(tmp_path, ["gshard", "dropless"])
    assert main(["run", path, "--out", str(tmp_path), "--no-progress"]) == 0
    table = tmp_path / "trust.csv"
    text = table.read_text()
    table.write_text(text[: len(text) - 25])  # cut the last row short, as a crash outside the program would
    capsys.readouterr()
    assert main(["run", path, "--out", str(tmp_path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "damaged row" in err and "trust.csv:5" in err and "1 row(s) written" in err
    damaged = list(csv.reader((tmp_path / "trust.csv.damaged").open()))
    assert damaged[0] == ["file", "line", "reason", "raw"] and damaged[1][1] == "5"
    assert len(read_results(table)) == 4


@pytest.mark.parametrize("garbage", [b"\x00\x00garbage\n", b"not,a,row\n", "héllo,\u2603\n".encode()])
def test_garbage_rows_never_break_the_report(tmp_path, garbage):
    path = config(tmp_path, ["gshard"], seeds=1)
    run_sweep(load_config(path), tmp_path, progress=False)
    table = tmp_path / "trust.csv"
    table.write_bytes(table.read_bytes() + garbage)
    report = build_report([table], tmp_path / "rep")  # the report reads past the damaged row
    assert report.is_file()
    summary = run_sweep(load_config(path), tmp_path, progress=False)
    assert summary.damaged == 1 and summary.rows_written == 0
    assert (tmp_path / "trust.csv.damaged").is_file()
    assert len(read_results(table)) == 1


def test_errors_make_the_exit_status_nonzero_unless_allowed(tmp_path, capsys, scratch_routers):
    @register_router("always_fails", description="raises on every input (test)")
    def always_fails(x, opts):
        raise ValueError("no luck")

    path = config(tmp_path, ["gshard", "always_fails"], seeds=1)
    assert main(["run", path, "--out", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "1 row(s) errored" in err and "--allow-errors" in err
    assert main(["run", path, "--out", str(tmp_path), "--no-progress", "--allow-errors"]) == 0
    rows = read_results(tmp_path / "trust.csv")
    assert [r["error"] for r in rows if r["router"] == "always_fails"][0].startswith("router 'always_fails' failed")


def test_preconditions_skip_pairs_instead_of_erroring(tmp_path):
    path = config(tmp_path, ["gshard", "base"], seeds=1)  # base needs k = 1; the grid has k = 2
    summary = run_sweep(load_config(path), tmp_path, progress=False)
    assert summary.refused == 1 and summary.errors == 0 and summary.rows_written == 1


def test_import_moeroute_is_light():
    code = ("import sys, moeroute; moeroute.route; moeroute.evaluate; moeroute.MaxScoreRouter; "
            "heavy = [m for m in ('ortools', 'networkx', 'scipy', 'pandas', 'matplotlib') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_two_spellings_of_one_configuration_in_one_grid_make_one_row(tmp_path):
    cfg = load_config(config(tmp_path, ["maxscore", "maxscore:eps=0.01", "gshard"], seeds=1))
    summary = run_sweep(cfg, tmp_path, progress=False)
    assert summary.rows_written == 2
    assert sorted(r["router"] for r in read_results(tmp_path / "trust.csv")) == ["gshard", "maxscore"]

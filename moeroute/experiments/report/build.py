"""Assemble ``REPORT.md``: summary tables (Markdown + ``summary.csv``), figures and their generated readings."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pandas as pd

from moeroute.core.atomic import atomic_write_text
from moeroute.core.presentation import fmt
from moeroute.core.presentation import markdown_table as presentation_table
from moeroute.experiments.report import figures, reading
from moeroute.experiments.report.data import (
    load_results,
    main_settings,
    rows_at,
    setting_label,
    sorted_ratios,
    summary_table,
    varying,
)

TABLE_FORMAT = {  # column -> (header, decimals)
    "slot_drop_pct": ("slot drop %", 2),
    "second_choice_drop_pct": ("2nd-choice drop %", 2),
    "mean_load_ratio": ("mean load ratio", 4),
    "max_load_ratio": ("max load ratio", 3),
    "gap_pct": ("gap to optimum %", 3),
    "latency_ms": ("latency ms", 3),
    "latency_vs_gshard": ("x gshard", 2),
    "seeds": ("seeds", 0),
}


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub Markdown table of a summary (router rows), numbers right-aligned."""
    cols = [c for c in TABLE_FORMAT if c in table.columns]
    rows = ([f"`{router}`"] + [fmt(row[c], TABLE_FORMAT[c][1]) for c in cols] for router, row in table.iterrows())
    return presentation_table(["router", *(TABLE_FORMAT[c][0] for c in cols)], rows)


def _bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def _skipped(what: str, why: str) -> str:
    return f"_Skipped: {what} — {why}._"


def build_report(paths: Sequence["str | Path"], out_dir: "str | Path" = "reports") -> Path:
    """Write ``<out_dir>/REPORT.md``, ``summary.csv`` and the PNG figures from results CSVs; returns the report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = load_results(paths)
    errors = df[df["error"] != ""]
    ok = df[df["error"] == ""].copy()
    style = figures.Style(list(dict.fromkeys(list(ok["router"]) + list(ok["router_no_iters"]) + list(ok["router_no_eps"]))))
    settings = main_settings(ok) if not ok.empty else {}

    md = ["# moeroute report", ""]
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    versions = ", ".join(sorted({f"torch {t}" for t in df.get("torch_version", pd.Series(dtype=str)).astype(str)}))
    devices = ", ".join(sorted(set(df.get("device", pd.Series(dtype=str)).astype(str))))
    md.append(
        f"Generated {stamp} by `moeroute report` from {', '.join(f'`{p}`' for p in map(str, paths))}: "
        f"{len(df)} rows ({len(errors)} with errors), {ok['router'].nunique()} router specs, "
        f"{ok['workload'].nunique()} workloads; device {devices or '-'}; {versions or '-'}. "
        "Every number below is a mean over seeds (latency: the median of timed calls per row, then the mean)."
    )
    stale = ok[ok["stale"]]
    if len(stale):
        md += ["", f"**{len(stale)} of {len(ok)} rows were measured by other code** than this checkout (source "
               f"fingerprint differs; routers: {', '.join(sorted(stale['router'].unique())[:8])}"
               f"{', ...' if stale['router'].nunique() > 8 else ''}); `moeroute run` re-runs them."]
    md += ["", "Gap = (MCMF optimum - objective) / MCMF optimum: the optimum fills every slot capacity allows, so a router "
           "that drops slots can show a negative gap. Load ratio = expert load / capacity C (k*T/E without capacity).", ""]

    md += ["## Summary tables", ""]
    frames = []
    if not settings:
        md.append(_skipped("summary tables", "no rows without errors"))
    for workload, setting in settings.items():
        rows = rows_at(ok, workload, setting)
        table = summary_table(rows)
        md += [f"### `{workload}` ({setting_label(setting)})", "", markdown_table(table), "", _bullets(reading.summary_reading(table)), ""]
        flat = table.reset_index()
        for key, value in reversed(list(setting.items())):
            flat.insert(0, key, value)
        flat.insert(0, "workload", workload)
        frames.append(flat)
    if frames:
        atomic_write_text(out / "summary.csv", pd.concat(frames, ignore_index=True).to_csv(index=False))
        md += ["All summary tables as CSV: [summary.csv](summary.csv).", ""]

    md += ["## Sorted expert-to-capacity load ratios", ""]
    name = figures.load_ratio_figure(ok, settings, style, out) if settings else None
    if name:
        curves = {w: sorted_ratios(rows_at(ok, w, s)) for w, s in settings.items()}
        md += [f"![sorted load ratios]({name})", "", _bullets(reading.load_ratio_reading(curves)), ""]
    else:
        md += [_skipped("sorted load ratios", "no rows carry load ratios"), ""]

    md += ["## Drop rate vs capacity factor", ""]
    name = figures.drop_vs_cf_figure(ok, style, out)
    if name:
        key, rows = varying(ok, "cf_value", ["workload", "groups", "tokens", "experts", "k"], "router")[0]
        md += [f"![drop vs cf]({name})", "", f"On `{key[0]}` (G={key[1]}, T={key[2]}, E={key[3]}, k={key[4]}):", "",
               _bullets(reading.cf_reading(rows)), ""]
    else:
        md += [_skipped("drop rate vs cf", "no setting was run at two or more capacity factors"), ""]

    for option in ("iters", "eps"):
        md += [f"## Objective gap vs Sinkhorn {option} (`maxscore`, `sinkhorn`)", ""]
        name = figures.gap_vs_option_figure(ok, option, style, out)
        if name:
            subset = ok[ok["router_name"].isin(["maxscore", "sinkhorn"])]
            key, rows = varying(subset, f"opt_{option}", ["workload", "groups", "tokens", "experts", "k", "cf_label"],
                                f"router_no_{option}")[0]
            md += [f"![gap vs {option}]({name})", "", f"On `{key[0]}`:", "", _bullets(reading.option_reading(rows, option)), ""]
        else:
            md += [_skipped(f"gap vs {option}", f"no maxscore/sinkhorn rows with two or more `{option}=` values in their specs"), ""]

    md += ["## Latency vs tokens per group", ""]
    name = figures.latency_figure(ok, style, out)
    if name:
        key, rows = varying(ok.dropna(subset=["latency_ms"]), "tokens", ["workload", "groups", "experts", "k", "cf_label"], "router")[0]
        md += [f"![latency vs tokens]({name})", "", f"On `{key[0]}` (G={key[1]}, E={key[2]}, k={key[3]}, cf={key[4]}):", "",
               _bullets(reading.latency_reading(rows)), ""]
    else:
        md += [_skipped("latency vs tokens", "no setting was run at two or more tokens per group"), ""]

    md += ["## Mean rank-1 vs rank-2 affinity", ""]
    name = figures.affinity_figure(ok, settings, out) if settings else None
    if name:
        lines = []
        for workload, setting in settings.items():
            means = rows_at(ok, workload, setting).groupby("router", sort=False)[["rank1_affinity", "rank2_affinity"]].mean()
            lines += [f"`{workload}`: {line}" for line in reading.affinity_reading(means)]
        md += [f"![affinity]({name})", "", _bullets(lines), ""]
    else:
        md += [_skipped("affinities", "no rows carry affinities"), ""]

    if not errors.empty:
        md += ["## Errors", "", "Rows that failed (a re-run of `moeroute run` retries them):", ""]
        summary = errors.groupby(["router", "error"], sort=False).size().reset_index(name="rows")
        md += [f"- `{r.router}` ({r.rows} rows): {r.error}" for r in summary.itertuples()]
        md.append("")

    report = out / "REPORT.md"
    atomic_write_text(report, "\n".join(md))
    return report

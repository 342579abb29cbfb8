"""Assemble ``REPORT.md`` (and ``REPORT.html``, ``summary.csv``, the figures): a one-screen summary first (the main
setting's table, the Pareto view, the paper's load-ratio figure, drop vs cf), then one section per thing that
varies (settings across workloads, capacity factor, router options, sizes), then the errors."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from moeroute.core.atomic import atomic_write_text
from moeroute.core.presentation import fmt, markdown_table
from moeroute.experiments.report import figures, reading
from moeroute.experiments.report.data import fixed_label, load_results, setting_label, sorted_ratios
from moeroute.experiments.report.html import write_html
from moeroute.experiments.report.sections import AXES, Setting, Sweep, find_settings, find_sweeps
from moeroute.experiments.report.tables import (
    WIDE,
    router_table,
    setting_markdown,
    summary_frame,
    workload_gaps,
    workload_markdown,
)

PAPER_MEAN_LOAD = {"gshard": 0.8237, "maxscore": 0.9996}
"""The MaxScore paper's mean expert-to-capacity load ratios (its trained 16-expert model, cf = 1): GShard vs
MaxScore, shown beside the measured ones at the paper's setting."""
FOCUS = ("maxscore", "qb", "dual", "sinkhorn", "base", "aux_free", "global_greedy")
"""The balanced routers whose place on the Pareto front the summary states for the settings after the main one."""


def bullets(lines: list[str]) -> list[str]:
    return [f"- {line}" for line in lines] + ([""] if lines else [])


def skipped(what: str, why: str) -> list[str]:
    return [f"_Skipped: {what} — {why}._", ""]


def build_report(paths: Sequence["str | Path"], out_dir: "str | Path" = "results/report", note: Optional[str] = None,
                 html: bool = True) -> Path:
    """Write ``REPORT.md``, ``summary.csv``, the PNG figures and (``html``) a self-contained ``REPORT.html`` into
    ``out_dir`` from results files; returns the Markdown report's path. ``note``: a sentence of the person who
    ran it (e.g. the machine's conditions), printed as such under the header."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = load_results(paths)
    ok = df[df["error"] == ""].copy()
    sweeps = find_sweeps(ok)
    settings = find_settings(ok, sweeps)
    tables = [router_table(s) for s in settings]
    style = figures.RouterStyle(list(dict.fromkeys(list(ok["router"]) + [r for s in sweeps for r in s.rows[s.line]])))

    md = header(df, paths, note)
    md += summary(ok, settings, tables, sweeps, style, out)
    md += details(settings, tables, sweeps, style, out)
    md += errors_section(df[df["error"] != ""])
    if settings:
        atomic_write_text(out / "summary.csv", summary_csv(settings, tables).to_csv(index=False))
    report = out / "REPORT.md"
    text = "\n".join(md).rstrip() + "\n"
    atomic_write_text(report, text)
    if html:
        write_html(text, out, out / "REPORT.html")
    return report


def header(df: pd.DataFrame, paths: Sequence["str | Path"], note: Optional[str]) -> list[str]:
    ok = df[df["error"] == ""]
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    where = ", ".join(sorted({f"{d} (`{h}`)" if h else d for d, h in zip(df["device"], df["host"])})) or "-"
    torch = ", ".join(sorted({t for t in df["torch_version"] if t})) or "-"
    threads = ", ".join(sorted({str(t) for t in df.get("threads", pd.Series(dtype=str)) if str(t)})) or "-"
    stale = int(ok["stale"].sum())
    md = ["# moeroute report", "",
          f"Generated {stamp} by `moeroute report` from {', '.join(f'`{p}`' for p in map(str, paths))}: {len(df)} rows "
          f"({len(df) - len(ok)} with errors, {stale} measured by other code than this checkout), "
          f"{ok['router'].nunique()} router specs, {ok['workload'].nunique()} workloads; {where}, torch {torch}, "
          f"{threads} torch thread(s) per row. Numbers are means over seeds, then over workloads.", "",
          "**Gap** = (LP optimum − objective) / LP optimum, the LP being the routing problem every balanced router "
          "solves or approximates (k experts per token, C per expert; `exact` solves it by min-cost flow: "
          "docs/routing.md, docs/dual.md), on the scores the router selects by (`score`). Beside a gap, `[x]` is "
          "the % of slots the router dropped and `(>C)` marks a router that exceeded capacity: neither is a solution "
          "of the LP. **max_vio**: the imbalance of what a router *selected*, before capacity (0 = balanced). "
          "**Affinity**: the mean score of each token's rank-1 / rank-2 slot over all tokens, a dropped slot "
          "counting 0 (docs/metrics.md). **Latency** is a ratio to the baseline on the same logits in the same run.",
          ""]
    if stale:
        md += [f"**{stale} of {len(ok)} rows were measured by other code** than this checkout (source fingerprint "
               "differs); `moeroute run` re-runs them.", ""]
    if note:
        md += [f"> Note from whoever ran it: {note}", ""]
    return md


def summary(ok: pd.DataFrame, settings: list[Setting], tables: list[pd.DataFrame], sweeps: list[Sweep],
            style: figures.RouterStyle, out: Path) -> list[str]:
    md = ["## Summary", ""]
    if not settings:
        return md + skipped("summary", "no setting compares routers (no rows without errors outside a sweep)")
    main, table = settings[0], tables[0]
    md += [f"**{title(main)}**", "", setting_markdown(main, table), ""]
    noise = reading.noise_clause(main.rows, main.baseline)
    lines = reading.ranking(table) + reading.pareto_reading(table, main.baseline, noise=noise)
    if len(main.workloads) > 1:
        gaps, drops, _ = workload_gaps(main)
        lines += reading.maxscore_reading(gaps, drops, table, int(main.values["k"]))
    for other, other_table in zip(settings[1:], tables[1:]):
        if other.is_modern:
            front, _ = reading.pareto(other_table)
            lines += [f"In {other.tag} ({setting_label(other.values, groups=False)}; table below) the Pareto front "
                      f"is {reading.names(front)}. {line}"
                      for line in reading.pareto_reading(other_table, other.baseline, FOCUS, front_too=False)]
    md += bullets(lines)
    md += figure("pareto", figures.pareto_figure(settings[:3], tables[:3], style, out),
                 "one LP, every router", "no setting to draw")
    md += load_ratios(settings, style, out)
    cf = cf_sweeps(sweeps)
    md += figure("drop vs cf", figures.drop_vs_cf_figure(cf, style, out), "drop rate vs capacity factor",
                 "no point was run at three or more capacity factors")
    return md


def title(setting: Setting) -> str:
    seeds = int(setting.rows["seed"].nunique())
    return (f"{setting.tag[0].upper()}{setting.tag[1:]}: {setting_label(setting.values)}; {len(setting.workloads)} "
            f"workload(s) × {seeds} seed(s)")


def figure(alt: str, name: Optional[str], what: str, why: str) -> list[str]:
    return [f"![{alt}]({name})", ""] if name else skipped(what, why)


def load_ratios(settings: list[Setting], style: figures.RouterStyle, out: Path) -> list[str]:
    """The paper's figure on the paper's setting (else the main one): GShard vs MaxScore on the captured
    workloads (else skew, else the first two)."""
    setting = next((s for s in settings if s.is_paper), settings[0])
    labels = dict(zip(setting.rows["workload"], setting.rows["workload_label"]))
    chosen = ([w for w in setting.workloads if w.startswith("captured:")]
              or [w for w in setting.workloads if w == "skew"] or setting.workloads[:2])[:3]
    routers = [r for r in ("gshard", "maxscore") if r in set(setting.rows["router"])]
    panels = {}
    for w in chosen:
        curves = sorted_ratios(setting.rows[(setting.rows["workload"] == w) & setting.rows["router"].isin(routers)])
        panels[labels[w]] = {r: curves[r] for r in routers if r in curves}
    paper = PAPER_MEAN_LOAD if setting.is_paper else {}
    name = figures.load_ratio_figure(panels, paper, setting_label(setting.values), style, out)
    if not name:
        return skipped("sorted load ratios", "no gshard or maxscore rows with load ratios")
    return [f"![sorted load ratios]({name})", ""] + bullets(reading.load_ratio_reading(panels, paper))


def cf_sweeps(sweeps: list[Sweep]) -> list[Sweep]:
    """Capacity-factor sweeps, captured workloads first (the paper's figure was on a trained model's logits)."""
    cf = [s for s in sweeps if s.axis == "cf_value"]
    return sorted(cf, key=lambda s: not str(s.fixed["workload"]).startswith("captured:"))


def details(settings: list[Setting], tables: list[pd.DataFrame], sweeps: list[Sweep], style: figures.RouterStyle,
            out: Path) -> list[str]:
    md = ["## Details", ""]
    for i, (setting, table) in enumerate(zip(settings, tables)):
        md += [f"### {title(setting)}", ""]
        if i > 0:
            md += [setting_markdown(setting, table), ""]
        elif len(setting.workloads) > WIDE:
            md += ["Gap % per workload (`[x]`: % of slots dropped, `(>C)`: over capacity):", "",
                   workload_markdown(setting), ""]
        lines = []
        if i > 0:  # the main setting's ranking, Pareto front and MaxScore reading are in the summary
            noise = reading.noise_clause(setting.rows, setting.baseline)
            lines += reading.ranking(table) + reading.pareto_reading(table, setting.baseline, noise=noise)
            if len(setting.workloads) > 1:
                gaps, drops, _ = workload_gaps(setting)
                lines += reading.maxscore_reading(gaps, drops, table, int(setting.values["k"]))
        lines += reading.cold_state_reading(table, int(setting.values["groups"]), setting.baseline)
        md += bullets(lines)
    md += cf_details(cf_sweeps(sweeps))
    md += option_details([s for s in sweeps if s.option], style, out)
    md += size_details([s for s in sweeps if s.axis in ("tokens", "experts", "groups")], style, out)
    return md


def cf_details(sweeps: list[Sweep], threshold: float = 0.01) -> list[str]:
    """One table for every capacity-factor sweep: each router's drops at cf = 1 and the cf from which it drops
    under ``threshold``; then who keeps every slot capacity allows."""
    if not sweeps:
        return []
    points = [reading.cf_points(s.rows, threshold) for s in sweeps]
    routers = list(dict.fromkeys(r for p in points for r in p.index))
    header = ["router"]
    for s in sweeps:
        w = s.rows["workload_label"].iloc[0]
        header += [f"{w}: drop % at cf = 1", f"{w}: under {threshold:.0%} from cf"]
    rows = []
    for router in routers:
        cells = [f"`{router}`"]
        for p in points:
            if router not in p.index:
                cells += ["-", "-"]
                continue
            x = p.loc[router]
            cells += [fmt(100 * x["at1"], 2),
                      f"{x['under']:g}" if not pd.isna(x["under"]) else f"never (to {x['top']:g})"]
        rows.append(cells)
    held = list(dict.fromkeys(fixed_label(s.fixed) for s in sweeps))
    md = [f"### Capacity factor at {'; '.join(held)} (figure above)", "", markdown_table(header, rows), ""]
    return md + bullets(reading.floor_reading(list(zip([s.rows['workload_label'].iloc[0] for s in sweeps],
                                                           [s.rows for s in sweeps]))))


def option_details(sweeps: list[Sweep], style: figures.RouterStyle, out: Path) -> list[str]:
    if not sweeps:
        return []
    options = ", ".join(dict.fromkeys(f"`{s.option}=`" for s in sweeps))
    md = [f"### Router options ({options})", ""]
    md += figure("gap vs options", figures.option_figure(sweeps, style, out), "gap vs options", "no curve")
    for label in dict.fromkeys(where(s) for s in sweeps):
        md += [f"{label}:", ""]
        md += bullets([line for s in sweeps if where(s) == label
                       for line in reading.option_reading(s.rows, s.line, s.axis, s.option)])
    return md


def where(sweep: Sweep) -> str:
    """``skew (G = 2, T = 512, E = 16, k = 2, cf = 1)``: the workload and the held values of a sweep."""
    return f"{sweep.rows['workload_label'].iloc[0]} ({fixed_label(sweep.fixed)})"


def size_details(sweeps: list[Sweep], style: figures.RouterStyle, out: Path) -> list[str]:
    if not sweeps:
        return []
    md = [f"### Sizes ({', '.join(dict.fromkeys(AXES[s.axis] for s in sweeps))})", ""]
    md += figure("latency vs size", figures.size_figure(sweeps, style, out), "latency vs size", "no latencies")
    for sweep in sweeps[:2]:
        md += [f"{where(sweep)}:", ""]
        md += bullets(reading.size_reading(sweep.rows, sweep.axis))
    return md


def errors_section(errors: pd.DataFrame) -> list[str]:
    if errors.empty:
        return []
    md = ["## Errors", "", "Rows that failed (a re-run of `moeroute run` retries them):", ""]
    counts = errors.groupby(["router", "error"], sort=False).size().reset_index(name="rows")
    return md + [f"- `{r.router}` ({r.rows} rows): {r.error}" for r in counts.itertuples()] + [""]


def summary_csv(settings: list[Setting], tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The settings' router tables as one CSV: fractions as percent where the name says so."""
    frame = summary_frame(settings, tables).drop(columns=["options", "router_name"], errors="ignore")
    for col in ("gap", "gap_worst", "slot_drop_rate", "second_choice_drop_rate", "over_k_rate"):
        frame[col] = frame[col] * 100
    names = {"gap": "gap_pct", "gap_worst": "gap_worst_pct", "slot_drop_rate": "slot_drop_pct",
             "second_choice_drop_rate": "second_choice_drop_pct", "over_k_rate": "over_k_pct",
             "over": "over_capacity", "x_base": "latency_vs_baseline"}
    return frame.rename(columns=names)

"""The numbers behind a setting's tables and readings: per router, means over workloads of the means over seeds;
gaps per workload; latency as a ratio to the baseline measured on the same logits in the same run."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from moeroute.core.presentation import fmt, markdown_table
from moeroute.experiments.report.sections import Setting

MEANS = ["gap", "slot_drop_rate", "second_choice_drop_rate", "over_k_rate", "max_vio", "mean_load_ratio", "max_load_ratio",
         "rank1_affinity", "rank2_affinity", "rank1_affinity_kept", "rank2_affinity_kept", "latency_ms"]
OVER = 1e-9
"""A kept load above ``C * (1 + OVER)`` exceeds capacity (a router that ignores it, e.g. dropless)."""
SHOWN_DROP = 0.005
"""Slot drops (percent) at or above this are shown beside a gap."""
WIDE = 4
"""A setting with at most this many workloads shows each workload's gap as a column of its router table."""


def per_workload(rows: pd.DataFrame) -> pd.DataFrame:
    """Means over seeds, indexed by (router, workload), routers and workloads in order of first appearance."""
    out = rows.groupby(["router", "workload"], sort=False)[MEANS].mean()
    return out


def router_table(setting: Setting) -> pd.DataFrame:
    """One row per router spec (order of first appearance): ``MEANS`` averaged over the workloads it ran on;
    ``gap_worst`` and its ``worst_workload``; ``over`` (its kept load exceeded capacity somewhere); ``score``;
    ``workloads``/``seeds`` counts; ``x_base``, the median over points of its latency over the baseline's on the
    same logits (NaN without a baseline)."""
    rows = setting.rows
    per = per_workload(rows)
    table = per.groupby(level="router", sort=False).mean()
    gaps = per["gap"].dropna()
    table["gap_worst"] = gaps.groupby(level="router", sort=False).max()
    labels = dict(zip(rows["workload"], rows["workload_label"]))
    worst = gaps.groupby(level="router", sort=False).idxmax()
    table["worst_workload"] = [labels[w[1]] if isinstance(w, tuple) else "" for w in worst.reindex(table.index)]
    grouped = rows.groupby("router", sort=False)
    table["over"] = grouped["max_load_ratio"].max() > 1.0 + OVER
    table["score"] = grouped["score"].first()
    table["router_name"] = grouped["router_name"].first()
    table["options"] = grouped["options"].first()
    table["workloads"] = grouped["workload"].nunique()
    table["seeds"] = grouped["seed"].nunique()
    table["x_base"] = latency_ratio(rows, setting.baseline)
    return table


def latency_ratio(rows: pd.DataFrame, baseline: Optional[str]) -> pd.Series:
    """Per router, the median over (workload, seed) of its latency / the baseline's latency on the same logits: the
    median, because on a shared machine one slow call of the baseline would otherwise scale a whole point."""
    order = list(dict.fromkeys(rows["router"]))
    if baseline is None:
        return pd.Series(np.nan, index=order)
    base = rows[rows["router"] == baseline].set_index(["workload", "seed"])["latency_ms"]
    joined = rows.join(base.rename("base"), on=["workload", "seed"])
    ratio = joined["latency_ms"] / joined["base"]
    return ratio.groupby(joined["router"], sort=False).median().reindex(order)


def workload_gaps(setting: Setting) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(gap %, slot drop %, over capacity) as router x workload-label frames (means over seeds)."""
    per = per_workload(setting.rows).reset_index()
    labels = dict(zip(setting.rows["workload"], setting.rows["workload_label"]))
    per["workload"] = per["workload"].map(labels)
    cols = list(dict.fromkeys(labels[w] for w in setting.workloads))
    idx = list(dict.fromkeys(per["router"]))

    def pivot(values: pd.Series) -> pd.DataFrame:
        return per.assign(v=values).pivot(index="router", columns="workload", values="v").reindex(index=idx, columns=cols)

    return pivot(per["gap"] * 100), pivot(per["slot_drop_rate"] * 100), pivot(per["max_load_ratio"] > 1.0 + OVER)


def gap_cell(gap: float, drop: float, over: bool) -> str:
    """A gap in percent with the slots the router dropped beside it (``[drop %]``) or ``(>C)`` when it exceeded
    capacity, so no gap is read without the drops that bought it."""
    if gap is None or np.isnan(gap):
        return "-"
    text = f"{gap:.2f}"
    if drop is not None and not np.isnan(drop) and drop >= SHOWN_DROP:
        text += f" [{drop:.2f}]"
    exceeded = isinstance(over, (bool, np.bool_)) and bool(over)  # NaN where the router did not run there
    return text + (" (>C)" if exceeded else "")


def setting_markdown(setting: Setting, table: pd.DataFrame) -> str:
    """The setting's router table: with at most :data:`WIDE` workloads, each workload's gap is a column; otherwise
    the mean and the worst gap (and where)."""
    base = f"× `{setting.baseline}`" if setting.baseline else "× baseline"
    wide = len(setting.workloads) <= WIDE
    if wide:
        gaps, drops, over = workload_gaps(setting)
        gap_header = [f"gap % {w}" for w in gaps.columns]
    else:
        gap_header = ["gap % (mean)", "worst gap % (workload)"]
    header = ["router", "score", *gap_header, "slot drop %", "max_vio", "max load / C", "rank-1 / rank-2 affinity",
              base]
    rows = []
    for router, r in table.iterrows():
        if wide:
            cells = [gap_cell(gaps.loc[router, w], drops.loc[router, w], over.loc[router, w]) for w in gaps.columns]
        else:
            cells = [fmt(100 * r["gap"], 2), f"{fmt(100 * r['gap_worst'], 2)} ({r['worst_workload']})"]
        affinity = f"{fmt(r['rank1_affinity'], 3)} / {fmt(r['rank2_affinity'], 3)}"
        rows.append([f"`{router}`", r["score"], *cells, fmt(100 * r["slot_drop_rate"], 2), fmt(r["max_vio"], 2),
                     fmt(r["max_load_ratio"], 2), affinity, fmt(r["x_base"], 2)])
    return markdown_table(header, rows, align="ll" + "r" * (len(header) - 2))


def workload_markdown(setting: Setting) -> str:
    """Router x workload gaps, each with its drops (``[%]``) or ``(>C)`` beside it."""
    gaps, drops, over = workload_gaps(setting)
    rows = [[f"`{router}`", *(gap_cell(gaps.loc[router, w], drops.loc[router, w], over.loc[router, w])
                              for w in gaps.columns)] for router in gaps.index]
    return markdown_table(["router", *gaps.columns], rows)


def summary_frame(settings: list[Setting], tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Every setting's router table as one flat frame (``summary.csv``): the setting, the router, its numbers."""
    frames = []
    for setting, table in zip(settings, tables):
        flat = table.reset_index().rename(columns={"index": "router"})
        for key, value in reversed(list(setting.values.items())):
            flat.insert(0, key, value)
        flat.insert(0, "baseline", setting.baseline or "")
        frames.append(flat)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

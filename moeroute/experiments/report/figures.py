"""The report's PNG figures (matplotlib, Agg backend). Each function draws one figure from the results frame and
returns the file name, or ``None`` with nothing written when the results hold no data for it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from moeroute.core.presentation import SeriesStyle as Style
from moeroute.core.presentation import pyplot, save_figure
from moeroute.experiments.report.data import rows_at, setting_label, sorted_ratios, varying

plt = pyplot()  # headless Agg backend, the project's figure style
CLIP = 2.0  # y limit of the load-ratio figure


def _grid(n: int, width: float = 4.6, height: float = 3.4, cols: int = 4) -> tuple:
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _legend(fig, axes) -> None:
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(4, len(handles)),
                   fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    # Reserve the legend's height in inches (about 0.2 in a row of 8-pt labels), whatever the figure's height.
    legend_in = 0.15 + 0.2 * math.ceil(len(handles) / 4)
    fig.tight_layout(rect=(0, min(0.5, legend_in / fig.get_figheight()), 1, 1))


def _save(fig, out: Path, name: str) -> str:
    save_figure(fig, out / name)
    return name


def load_ratio_figure(ok: pd.DataFrame, settings: dict, style: Style, out: Path) -> Optional[str]:
    """The paper's figure: each expert's load / capacity, experts sorted from most to least loaded, per router."""
    panels = [(w, s, sorted_ratios(rows_at(ok, w, s))) for w, s in settings.items()]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    fig, axes = _grid(len(panels))
    for ax, (workload, setting, curves) in zip(axes, panels):
        for router, ratios in curves.items():
            x = np.arange(1, len(ratios) + 1)
            ax.plot(x, ratios, label=router, lw=1.3, ms=3, **style(router))
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        top = max(float(v.max()) for v in curves.values())
        if top > CLIP:  # a dropless router's hot expert would squash every capacity router into a flat line
            ax.set_ylim(0, CLIP)
            ax.text(0.98, 0.97, f"clipped at {CLIP:g}; max {top:.2f}", transform=ax.transAxes, ha="right", va="top", fontsize=7)
        ax.set_title(f"{workload}\n{setting_label(setting)}", fontsize=9)
        ax.set_xlabel("expert (sorted by load)")
        ax.set_ylabel("load / capacity")
    fig.suptitle("Sorted expert-to-capacity load ratios (mean over seeds)", fontsize=11)
    _legend(fig, axes)
    return _save(fig, out, "load_ratios.png")


def drop_vs_cf_figure(ok: pd.DataFrame, style: Style, out: Path, limit: int = 4) -> Optional[str]:
    """Slot and second-choice drop rate against the capacity factor, per router (settings where cf varies)."""
    found = varying(ok, "cf_value", ["workload", "groups", "tokens", "experts", "k"], "router")[:limit]
    if not found:
        return None
    fig, axes = _grid(2 * len(found), cols=2)
    for i, (key, rows) in enumerate(found):
        workload, groups, tokens, experts, k = key
        for j, (col, what) in enumerate((("slot_drop_rate", "slot drop %"), ("second_choice_drop_rate", "2nd-choice drop %"))):
            ax = axes[2 * i + j]
            for router, g in rows.groupby("router", sort=False):
                curve = g.groupby("cf_value")[col].mean() * 100
                if len(curve) < 2:  # a router measured at one cf only (another grid's point) is no curve
                    continue
                ax.plot(curve.index, curve.values, label=router, lw=1.3, ms=4, **style(router))
            ax.set_title(f"{workload}: G={groups}, T={tokens}, E={experts}, k={k}", fontsize=9)
            ax.set_xlabel("capacity factor")
            ax.set_ylabel(what)
    fig.suptitle("Drop rate vs capacity factor (mean over seeds)", fontsize=11)
    _legend(fig, axes)
    return _save(fig, out, "drop_vs_cf.png")


def gap_vs_option_figure(ok: pd.DataFrame, option: str, style: Style, out: Path, limit: int = 4) -> Optional[str]:
    """Objective gap to the MCMF optimum against a Sinkhorn option (``iters`` or ``eps``) parsed from the router
    specs, one line per router spec without that option, for the maxscore and sinkhorn routers."""
    col, line = f"opt_{option}", f"router_no_{option}"
    subset = ok[ok["router_name"].isin(["maxscore", "sinkhorn"])]
    found = varying(subset, col, ["workload"] + ["groups", "tokens", "experts", "k", "cf_label"], line)[:limit]
    if not found:
        return None
    fig, axes = _grid(len(found), cols=2, width=5.5)
    for ax, (key, rows) in zip(axes, found):
        for spec, g in rows.groupby(line, sort=False):
            curve = g.groupby(col)["gap"].mean() * 100
            if len(curve) >= 2:
                ax.plot(curve.index, curve.values, label=spec, lw=1.3, ms=4, **style(spec))
        ax.set_xscale("log")
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        workload = key[0]
        ax.set_title(f"{workload}: {setting_label(dict(zip(['groups', 'tokens', 'experts', 'k', 'cf_label'], key[1:])))}", fontsize=9)
        ax.set_xlabel(f"Sinkhorn {option} (log)")
        ax.set_ylabel("gap to MCMF optimum %")
    fig.suptitle(f"Objective gap vs Sinkhorn {option} (mean over seeds)", fontsize=11)
    _legend(fig, axes)
    return _save(fig, out, f"gap_vs_{option}.png")


def latency_figure(ok: pd.DataFrame, style: Style, out: Path, limit: int = 4) -> Optional[str]:
    """Median latency per call against tokens per group, log-log, per router (settings where T varies)."""
    found = varying(ok.dropna(subset=["latency_ms"]), "tokens", ["workload", "groups", "experts", "k", "cf_label"], "router")[:limit]
    if not found:
        return None
    fig, axes = _grid(len(found), cols=2, width=5.5, height=4.0)
    for ax, (key, rows) in zip(axes, found):
        for router, g in rows.groupby("router", sort=False):
            curve = g.groupby("tokens")["latency_ms"].median()
            if len(curve) < 2:
                continue
            ax.plot(curve.index, curve.values, label=router, lw=1.3, ms=4, **style(router))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        workload, groups, experts, k, cf = key
        ax.set_title(f"{workload}: G={groups}, E={experts}, k={k}, cf={cf}", fontsize=9)
        ax.set_xlabel("tokens per group T (log)")
        ax.set_ylabel("latency ms (log)")
    fig.suptitle("Latency vs tokens per group (median over seeds)", fontsize=11)
    _legend(fig, axes)
    return _save(fig, out, "latency_vs_tokens.png")


def affinity_figure(ok: pd.DataFrame, settings: dict, out: Path) -> Optional[str]:
    """Mean score (softmax affinity) of the rank-1 and rank-2 assignments per router, per workload."""
    panels = []
    for workload, setting in settings.items():
        rows = rows_at(ok, workload, setting)
        means = rows.groupby("router", sort=False)[["rank1_affinity", "rank2_affinity"]].mean()
        if means.notna().any().any():
            panels.append((workload, setting, means))
    if not panels:
        return None
    fig, axes = _grid(len(panels), width=5.0, height=3.8)
    for ax, (workload, setting, means) in zip(axes, panels):
        x = np.arange(len(means))
        ax.bar(x - 0.2, means["rank1_affinity"].fillna(0), 0.4, label="rank 1", color="tab:blue")
        ax.bar(x + 0.2, means["rank2_affinity"].fillna(0), 0.4, label="rank 2", color="tab:orange")
        ax.set_xticks(x, means.index, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{workload}\n{setting_label(setting)}", fontsize=9)
        ax.set_ylabel("mean score of the assignment")
    fig.suptitle("Mean rank-1 vs rank-2 affinity per router", fontsize=11)
    _legend(fig, axes)
    return _save(fig, out, "affinity.png")

"""The report's PNG figures, in the project's shared style (moeroute/core/presentation.py: the same router keeps its
colour and marker in every figure). Each function draws one figure and returns its file name, or ``None`` with
nothing written when the results hold no data for it. Lines that coincide are drawn once, with one label naming
them all, so no curve hides another."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from moeroute.core.options import parse_spec
from moeroute.core.presentation import MARKERS, SeriesStyle, pyplot, save_figure
from moeroute.experiments.report.data import fixed_label, setting_label
from moeroute.experiments.report.reading import DROP_TOL, EXACT, curves, outside_lp, pareto, same_curves
from moeroute.experiments.report.sections import Setting, Sweep

ZOOM = 2.0
"""Percent: the drop-vs-cf figure's lower panel shows 0 to this, where the near-dropless routers differ."""
GAP_LINEAR = 0.1
"""Percent: gaps are drawn on a symmetric log axis, linear within this of 0 (so 0, the optimum, is on the axis)."""


FAMILIES = ("gshard", "maxscore", "dual", "qb", "sinkhorn", "base", "aux_free", "expert_choice", "top_p",
            "global_greedy", "reroute", "dropless")
"""Router names in the order they take the shared palette's colours: the ones the report compares most (GShard,
MaxScore, the near-exact dual router) get the most distinct colours; `exact`, the reference, is black (grey goes
to the rarely run top_p, so nothing is confused with the grey band of the maximum flow)."""


class RouterStyle:
    """A router's look in every figure of the report: the colour of its family (router name), the marker of its
    variant within the family (so `maxscore:stage2=exact` is a MaxScore colour with its own marker)."""

    def __init__(self, specs: list[str]):
        names = [parse_spec(s)[0] for s in specs]
        self.colours = SeriesStyle(list(FAMILIES) + names)
        self.variants: dict[str, list[str]] = {}
        for spec, name in zip(specs, names):
            variants = self.variants.setdefault(name, [])
            if spec not in variants:
                variants.append(spec)

    def __call__(self, spec: str) -> dict:
        name = parse_spec(spec)[0]
        variants = self.variants.setdefault(name, [])
        if spec not in variants:
            variants.append(spec)
        family = self.colours.index(name)
        colour = "black" if name == EXACT else self.colours(name)["color"]
        return {"color": colour, "marker": MARKERS[(family + variants.index(spec)) % len(MARKERS)]}


def _save(fig, out: Path, name: str) -> str:
    save_figure(fig, out / name)
    return name


def _plain_numbers(axis) -> None:
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _gap_axis(ax) -> None:
    ax.set_yscale("symlog", linthresh=GAP_LINEAR)
    _plain_numbers(ax.yaxis)
    ax.axhline(0.0, color="grey", lw=0.8, ls="--", zorder=0)
    ax.set_ylabel("gap to the LP optimum % (symlog)")


def pareto_figure(settings: list[Setting], tables: list[pd.DataFrame], style: RouterStyle, out: Path) -> Optional[str]:
    """Per setting (a row of panels): every router's mean gap to the LP optimum against its latency (× the
    baseline), its slot drops and the imbalance of its selection (max_vio). Filled markers: the Pareto front over
    (latency, gap, drops); hollow: dominated. Routers whose kept load exceeds capacity (dropless) are left out:
    they solve another problem, and their gap would squash the axis."""
    if not settings:
        return None
    plt = pyplot()
    n = len(settings)
    fig, axes = plt.subplots(n, 3, figsize=(16.5, 3.9 * n), squeeze=False)
    for row, (setting, table) in zip(axes, zip(settings, tables)):
        front, _ = pareto(table)
        t = table[~table["over"]].dropna(subset=["gap"])
        outside = set(t.index[outside_lp(t)])
        xs = (("x_base", f"latency × {setting.baseline or 'baseline'} (log)"),
              ("slot_drop_rate", "slot drop % (symlog)"), ("max_vio", "max_vio of the selection (symlog)"))
        top = 100 * float(t["gap"].max()) if len(t) else 1.0
        for ax, (col, xlabel) in zip(row, xs):
            for router, x in t.iterrows():
                value = x[col] * (100 if col == "slot_drop_rate" else 1)
                if np.isnan(value):
                    continue
                st = style(router)
                filled = router in front
                label = router + (" (some tokens > k experts)" if router in outside else "")
                ax.plot([value], [100 * x["gap"]], linestyle="none", marker=st["marker"], ms=8, mew=1.6,
                        color=st["color"], mfc=st["color"] if filled else "white", label=label, alpha=0.9)
            if col == "x_base":
                ax.set_xscale("log")
            else:
                ax.set_xscale("symlog", linthresh=0.1 if col == "slot_drop_rate" else 0.01)
            _plain_numbers(ax.xaxis)
            ax.set_xlabel(xlabel)
            _gap_axis(ax)
            ax.set_ylim(top=max(1.0, top) * 2.5)  # room above the highest point on the log part of the axis
        title = f"{setting.tag}: {setting_label(setting.values)}, {len(setting.workloads)} workload(s)"
        row[0].set_title(title, loc="left", fontsize=10, fontweight="bold")
        handles, labels = row[0].get_legend_handles_labels()
        row[2].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7.5, frameon=False,
                      title="filled: on the Pareto front", title_fontsize=7.5)
    fig.suptitle("One LP, every router: mean gap to the optimum vs latency, drops and selection imbalance "
                 "(dropless, over capacity, not drawn)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return _save(fig, out, "pareto.png")


def load_ratio_figure(panels: dict[str, dict[str, np.ndarray]], paper: dict[str, float], title: str,
                      style: RouterStyle, out: Path) -> Optional[str]:
    """The paper's figure, one panel per workload: each expert's load / capacity, experts sorted from most to
    least loaded, one bar series per router (GShard and MaxScore), the paper's mean ratios in the legend."""
    panels = {w: c for w, c in panels.items() if c}
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 3.8), squeeze=False)
    for ax, (workload, by_router) in zip(axes[0], panels.items()):
        width = 0.8 / len(by_router)
        for i, (router, ratios) in enumerate(by_router.items()):
            x = np.arange(1, len(ratios) + 1) + (i - (len(by_router) - 1) / 2) * width
            label = f"{router}: mean {ratios.mean():.4f}"
            if router in paper:
                label += f" (paper {paper[router]:.4f})"
            ax.bar(x, ratios, width, color=style(router)["color"], label=label)
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        n = max(len(v) for v in by_router.values())
        ax.set_xticks(range(1, n + 1, 1 if n <= 16 else max(1, n // 16)))
        ax.set_title(workload)
        ax.set_xlabel("expert (sorted by load)")
        ax.set_ylabel("load / capacity")
        ax.set_ylim(0, max(1.45, max(float(v.max()) for v in by_router.values()) * 1.3))
        ax.legend(loc="upper right", fontsize=7.5, framealpha=0.95)
    fig.suptitle(f"Sorted expert-to-capacity load ratios ({title}, mean over groups and seeds)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out, "load_ratios.png")


def drop_vs_cf_figure(sweeps: list[Sweep], style: RouterStyle, out: Path, limit: int = 3) -> Optional[str]:
    """Slot drop % against the capacity factor, one column per swept point: the full range above, 0 to
    :data:`ZOOM` % below. Routers with the same curve share one line."""
    sweeps = sweeps[:limit]
    if not sweeps:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(2, len(sweeps), figsize=(6.4 * len(sweeps), 7.6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    for col, sweep in enumerate(sweeps):
        by = curves(sweep.rows, "router", "cf_value", "slot_drop_rate")
        for ax in axes[:, col]:
            for group in same_curves(by, DROP_TOL):
                curve = by[group[0]] * 100
                if EXACT in group:  # the max-flow floor: a wide band under the others, so none hides it
                    ax.plot(curve.index, curve.values, color="black", lw=6, alpha=0.25, zorder=1,
                            label=" = ".join(group) + " (max flow)")
                    continue
                st = style(group[0])
                ax.plot(curve.index, curve.values, color=st["color"], marker=st["marker"], ms=4, lw=1.4, zorder=2,
                        label=" = ".join(group))
            ax.set_xlabel("capacity factor")
        top, zoom = axes[0, col], axes[1, col]
        top.set_ylabel("slot drop %")
        top.set_title(f"{sweep.rows['workload_label'].iloc[0]}: {fixed_label(sweep.fixed)}")
        zoom.set_ylim(-0.1, ZOOM)
        zoom.set_ylabel(f"slot drop %, 0–{ZOOM:g}%")
        zoom.legend(loc="upper left", bbox_to_anchor=(0.0, -0.22), fontsize=7.5, ncol=2, frameon=False)
    fig.suptitle("Drop rate vs capacity factor (mean over seeds; lower panels zoom into 0–2%)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out, "drop_vs_cf.png")


def option_figure(sweeps: list[Sweep], style: RouterStyle, out: Path, limit: int = 4) -> Optional[str]:
    """Gap to the optimum against a router option (``iters=``, ``eps=``), log x, one panel per swept point."""
    sweeps = sweeps[:limit]
    if not sweeps:
        return None
    plt = pyplot()
    cols = min(2, len(sweeps))
    rows = math.ceil(len(sweeps) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat[len(sweeps):]:
        ax.set_visible(False)
    for ax, sweep in zip(axes.flat, sweeps):
        for spec, curve in curves(sweep.rows, sweep.line, sweep.axis, "gap").items():
            st = style(spec)
            ax.plot(curve.index, curve.values * 100, color=st["color"], marker=st["marker"], ms=4, lw=1.4, label=spec)
        ax.set_xscale("log")
        _gap_axis(ax)
        ax.set_ylim(top=max(1.0, 100 * float(sweep.rows["gap"].max())) * 2.5)
        ax.set_xlabel(f"{sweep.option}= (log)")
        ax.set_title(f"{sweep.rows['workload_label'].iloc[0]}: {fixed_label(sweep.fixed)}")
        ax.legend(fontsize=7, framealpha=0.9)
    fig.suptitle("Gap to the optimum vs a router option (mean over seeds)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out, "gap_vs_options.png")


def size_figure(sweeps: list[Sweep], style: RouterStyle, out: Path, limit: int = 2) -> Optional[str]:
    """Median latency against a size (tokens per group, experts or groups), log-log, one panel per swept point,
    with each router's overhead floor visible at the small sizes."""
    sweeps = [s for s in sweeps if s.rows["latency_ms"].notna().any()][:limit]
    if not sweeps:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(sweeps), figsize=(7.0 * len(sweeps), 4.6), squeeze=False)
    for ax, sweep in zip(axes[0], sweeps):
        for router, curve in curves(sweep.rows.dropna(subset=["latency_ms"]), "router", sweep.axis, "latency_ms",
                                    "median").items():
            st = style(router)
            ax.plot(curve.index, curve.values, color=st["color"], marker=st["marker"], ms=4, lw=1.4, label=router)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(sweep.rows[sweep.axis].unique()))
        _plain_numbers(ax.xaxis)
        ax.set_yscale("log")
        _plain_numbers(ax.yaxis)
        ax.set_xlabel(f"{sweep.title} (log)")
        ax.set_ylabel("latency ms (log)")
        ax.set_title(f"{sweep.rows['workload_label'].iloc[0]}: {fixed_label(sweep.fixed)}")
        ax.legend(loc="upper left", fontsize=7, ncol=2, framealpha=0.9)
    fig.suptitle("Latency vs size (median of timed calls, median over seeds; one torch thread)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out, "latency_vs_size.png")

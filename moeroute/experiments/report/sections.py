"""Sort a results frame into what the report shows, by what varies (never by the grid names a config used, which a
sweep merges when two grids share a point):

- a **sweep**: one point held fixed but for one axis (the capacity factor, tokens per group, experts, groups, or a
  numeric router option such as ``iters=``) that takes at least :data:`MIN_VALUES` values for some router;
- a **setting** (G, T, E, k, cf): routers compared across workloads, unless every row of it belongs to a sweep
  (then it is one slice of that sweep, shown there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

from moeroute.experiments.report.data import POINT, SETTING, number, without_option

MIN_VALUES = 3
"""A sweep needs at least this many values of its axis for one line: two points make no curve worth a section."""
AXES = {"cf_value": "capacity factor", "tokens": "tokens per group T", "experts": "experts E", "groups": "groups G"}
BASELINE = "gshard"
PAPER = {"tokens": 512, "experts": 16, "k": 2, "cf_label": "1"}
"""The MaxScore paper's setting (its tables and figures: 512-token sequences, 16 experts, top-2, cf = 1)."""


@dataclass
class Sweep:
    """Rows at one point (``fixed``) where ``axis`` varies; ``line`` names the column that tells the curves apart
    (``router``, or for an option sweep the spec without that option)."""

    axis: str
    fixed: dict
    rows: pd.DataFrame
    line: str = "router"

    @property
    def option(self) -> Optional[str]:
        return self.axis[len("opt_"):] if self.axis.startswith("opt_") else None

    @property
    def title(self) -> str:
        return f"`{self.option}=`" if self.option else AXES[self.axis]


@dataclass
class Setting:
    """The rows of one setting (G, T, E, k, cf) that are not merely a slice of a sweep, across its workloads."""

    values: dict
    rows: pd.DataFrame
    workloads: list[str] = field(default_factory=list)
    baseline: Optional[str] = None
    """The spec latencies are divided by: plain ``gshard`` when present, else the first gshard spec, else none."""

    @property
    def is_paper(self) -> bool:
        return all(self.values.get(k) == v for k, v in PAPER.items())

    @property
    def is_modern(self) -> bool:
        """Many experts, many per token (DeepSeek-V3: E = 256, k = 8)."""
        return int(self.values["experts"]) >= 64 and int(self.values["k"]) >= 4

    @property
    def tag(self) -> str:
        if self.is_paper:
            return "the paper's setting"
        if int(self.values["k"]) == 1:
            return "BASE's setting, k = 1"
        if self.is_modern:
            return "a modern setting"
        return "setting"


def find_sweeps(ok: pd.DataFrame) -> list[Sweep]:
    """Every sweep in ``ok`` (rows without errors), the axes of :data:`AXES` first, then router options; within
    an axis, the sweeps with the most values first."""
    sweeps = []
    for axis in AXES:
        fixed = [c for c in POINT if c != ("cf_label" if axis == "cf_value" else axis)]
        clean = ok.dropna(subset=[axis])
        for key, rows in clean.groupby(fixed, sort=False):
            counts = rows.groupby("router", sort=False)[axis].nunique()
            # A grid that sweeps the axis holds several of its values; points of other grids that merely differ
            # in it (a size grid at G = 1 beside a main grid at G = 4) are no sweep.
            per_grid = rows.groupby(["router", "grid"], sort=False)[axis].nunique().groupby(level=0).max()
            lines = counts[(counts >= MIN_VALUES) & (per_grid.reindex(counts.index) >= MIN_VALUES - 1)].index
            if len(lines):
                sweeps.append(Sweep(axis, dict(zip(fixed, key)), rows[rows["router"].isin(lines)]))
    sweeps += option_sweeps(ok)
    order = list(AXES) + sorted({s.axis for s in sweeps if s.option})
    sweeps.sort(key=lambda s: (order.index(s.axis), -s.rows[s.axis].nunique()))
    return sweeps


def option_sweeps(ok: pd.DataFrame) -> list[Sweep]:
    """Sweeps over a numeric option of router specs (``sinkhorn:iters=1`` ... ``sinkhorn:iters=100``): one per
    (option, point), a line per spec without that option."""
    names = sorted({key for options in ok["options"] for key, v in options.items() if not np.isnan(number(v))})
    out = []
    for name in names:
        has = ok[[name in o and not np.isnan(number(o[name])) for o in ok["options"]]].copy()
        axis, line = f"opt_{name}", f"line_{name}"
        has[axis] = [number(o[name]) for o in has["options"]]
        has[line] = [without_option(r, name) for r in has["router"]]
        for key, rows in has.groupby(POINT, sort=False):
            counts = rows.groupby(line, sort=False)[axis].nunique()
            lines = counts[counts >= MIN_VALUES].index
            if len(lines):
                out.append(Sweep(axis, dict(zip(POINT, key)), rows[rows[line].isin(lines)], line))
    return out


def find_settings(ok: pd.DataFrame, sweeps: list[Sweep]) -> list[Setting]:
    """The settings that compare routers across workloads: the paper's first, then the others, most rows first. A
    setting whose every row belongs to a sweep is left to that sweep."""
    in_sweep = set().union(*(set(s.rows["key"]) for s in sweeps)) if sweeps else set()
    out = []
    for key, rows in ok.groupby(SETTING, sort=False):
        if set(rows["key"]) <= in_sweep:
            continue
        values = dict(zip(SETTING, key))
        workloads = list(dict.fromkeys(rows["workload"]))
        out.append(Setting(values, rows, workloads, baseline_of(rows)))
    out.sort(key=lambda s: (not s.is_paper, -len(s.rows)))
    return out


def baseline_of(rows: pd.DataFrame) -> Optional[str]:
    """The spec latencies are divided by: ``gshard`` if it ran, else the first gshard spec that ran, else None."""
    specs = list(dict.fromkeys(rows.loc[rows["router_name"] == BASELINE, "router"]))
    if BASELINE in specs:
        return BASELINE
    return specs[0] if specs else None

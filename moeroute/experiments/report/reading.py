"""The written reading of each table and figure, generated from the numbers (never typed by hand)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moeroute.experiments.report.data import BASELINE, fmt_number

EXACT = "exact"
TIE = 1e-6  # percent points: drop rates and gaps this close are a tie


def _names(routers: list[str]) -> str:
    return ", ".join(f"`{r}`" for r in routers)


def _best(series: pd.Series, lowest: bool = True, tol: float = TIE) -> tuple[list[str], float]:
    s = series.dropna()
    if s.empty:
        return [], float("nan")
    value = s.min() if lowest else s.max()
    return [str(r) for r, v in s.items() if abs(v - value) <= tol], float(value)


def summary_reading(table: pd.DataFrame) -> list[str]:
    """Bullets naming which router wins on drops, gap to the optimum, balance and latency in one summary table."""
    lines = []
    winners, value = _best(table["slot_drop_pct"])
    if winners:
        lines.append(f"Fewest slots dropped: {_names(winners)} ({fmt_number(value)}%).")
    if BASELINE in table.index:
        g = table.loc[BASELINE]
        lines.append(
            f"`{BASELINE}` drops {fmt_number(g['slot_drop_pct'])}% of slots and "
            f"{fmt_number(g['second_choice_drop_pct'])}% of second choices (mean load ratio "
            f"{fmt_number(g['mean_load_ratio'], 4)})."
        )
    # The gap is comparable only between routers that respect capacity and fill as many slots as the best one
    # (the MCMF optimum's own terms); `exact` is that optimum, so it is the reference, not a contender.
    within = table[table["max_load_ratio"] <= 1.0 + 1e-9]
    if not within.empty:
        fills = within[(within["slot_drop_pct"] <= within["slot_drop_pct"].min() + 1e-9) & (within.index != EXACT)]
        if not fills.empty and fills["gap_pct"].notna().any():
            winners, value = _best(fills["gap_pct"])
            others = [r for r in fills.index if r not in winners]
            tail = ("; the others that fill as many: " + ", ".join(
                f"`{r}` {fmt_number(fills.loc[r, 'gap_pct'], 3)}%" for r in others)) if others else ""
            lines.append(
                f"Closest to the MCMF optimum among the capacity-respecting routers that drop the fewest slots "
                f"({fmt_number(within['slot_drop_pct'].min())}%, not counting `{EXACT}`): {_names(winners)} "
                f"(gap {fmt_number(value, 3)}%){tail}."
            )
    capacity = table[table["max_load_ratio"] <= 1.0 + 1e-9]
    over = table[table["max_load_ratio"] > 1.0 + 1e-9]
    if not over.empty:
        lines.append(
            "Over capacity (no cap): " + ", ".join(
                f"`{r}` max load {fmt_number(over.loc[r, 'max_load_ratio'], 2)}x C" for r in over.index
            ) + "."
        )
    if not capacity.empty:
        winners, value = _best(capacity["mean_load_ratio"], lowest=False, tol=1e-9)
        lines.append(f"Highest mean load ratio within capacity: {_names(winners)} ({fmt_number(value, 4)}).")
    lat = table["latency_ms"].dropna()
    if not lat.empty:
        fast, slow = lat.idxmin(), lat.idxmax()
        ratio = table.loc[slow, "latency_vs_gshard"]
        extra = f", {fmt_number(ratio, 1)}x `{BASELINE}`" if not np.isnan(ratio) else ""
        lines.append(
            f"Fastest: `{fast}` ({fmt_number(lat[fast], 3)} ms); slowest: `{slow}` ({fmt_number(lat[slow], 3)} ms{extra})."
        )
    return lines


def load_ratio_reading(curves_by_workload: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """Per workload: which routers fill every expert to capacity and which leave the least-loaded expert emptiest."""
    lines = []
    for workload, curves in curves_by_workload.items():
        if not curves:
            continue
        full = [r for r, v in curves.items() if v.min() >= 1.0 - 1e-6 and v.max() <= 1.0 + 1e-6]
        lows, value = _best(pd.Series({r: float(v.min()) for r, v in curves.items()}), tol=1e-9)
        text = f"`{workload}`: "
        text += f"every expert at exactly its capacity with {_names(full)}; " if full else "no router fills every expert; "
        text += f"the least loaded expert is emptiest under {_names(lows)} ({fmt_number(value, 2)} of C on average)"
        over = {r: v.max() for r, v in curves.items() if v.max() > 1.0 + 1e-6}
        if over:
            top = max(over, key=over.get)
            text += f"; above capacity: the most loaded expert of `{top}` averages {fmt_number(over[top], 2)}x C (no cap)"
        lines.append(text + ".")
    return lines


def cf_reading(rows: pd.DataFrame, threshold_pct: float = 1.0) -> list[str]:
    """For each router, the smallest capacity factor at which it drops under ``threshold_pct`` % of slots."""
    lines = []
    for router, g in rows.groupby("router", sort=False):
        curve = g.groupby("cf_value")["slot_drop_rate"].mean() * 100
        ok = curve[curve < threshold_pct]
        if ok.empty:
            lines.append(f"`{router}` drops at least {threshold_pct:g}% of slots at every cf tried (up to {curve.index.max():g}).")
        else:
            lines.append(f"`{router}` drops under {threshold_pct:g}% of slots from cf = {ok.index.min():g}.")
    return lines


def option_reading(rows: pd.DataFrame, option: str) -> list[str]:
    col, line = f"opt_{option}", f"router_no_{option}"
    lines = []
    for spec, g in rows.groupby(line, sort=False):
        curve = g.groupby(col)["gap"].mean() * 100
        if len(curve) < 2:
            continue
        lines.append(
            f"`{spec}`: gap {fmt_number(curve.iloc[0], 3)}% at {option}={curve.index[0]:g}, "
            f"{fmt_number(curve.iloc[-1], 3)}% at {option}={curve.index[-1]:g}; best {fmt_number(curve.min(), 3)}% "
            f"at {option}={curve.idxmin():g}."
        )
    return lines


def latency_reading(rows: pd.DataFrame) -> list[str]:
    """The fitted log-log slope of latency in T per router (1 = linear in T) and the latency at the largest T."""
    lines = []
    for router, g in rows.groupby("router", sort=False):
        curve = g.groupby("tokens")["latency_ms"].median().dropna()
        if len(curve) < 2:
            continue
        slope = np.polyfit(np.log(curve.index.values.astype(float)), np.log(curve.values), 1)[0]
        lines.append(
            f"`{router}`: latency grows as T^{slope:.2f}; {fmt_number(curve.iloc[-1], 3)} ms at T={int(curve.index[-1])}."
        )
    return lines


def affinity_reading(means: pd.DataFrame) -> list[str]:
    """Which routers keep the highest rank-2 affinity (fewest forced second choices)."""
    rank2 = means["rank2_affinity"].dropna()
    if rank2.empty:
        return []
    hi, lo = rank2.idxmax(), rank2.idxmin()
    return [
        f"Highest mean rank-2 affinity: `{hi}` ({fmt_number(rank2[hi], 4)}); lowest: `{lo}` ({fmt_number(rank2[lo], 4)}). "
        f"Rank-1 affinity ranges {fmt_number(means['rank1_affinity'].min(), 4)}-{fmt_number(means['rank1_affinity'].max(), 4)}."
    ]

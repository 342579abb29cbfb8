"""The written readings of the report, generated from the numbers (never typed by hand). Each function takes the
frames of tables.py or a sweep's rows and returns sentences; tests/test_report_reading.py checks each against a
small hand-made results file whose right reading is known.

Rules every reading follows: a gap is never stated without the drops beside it; a router that exceeds capacity or
gives tokens more than k experts is outside the LP, so its gap is not ranked with the others; latency is a ratio to
the baseline measured on the same logits, with a tolerance for the machine's noise; no exponent is fitted to fewer
than :data:`MIN_FIT` points above a router's overhead floor."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from moeroute.experiments.report.tables import SHOWN_DROP

EXACT = "exact"
MAXSCORE = "maxscore"
LATENCY_TOL = 0.15
"""Latency ratios within 15% count as a tie in the Pareto reading (timings on a shared machine are that noisy)."""
GAP_TOL = 0.01e-2
"""Mean gaps up to this are read as "within 0.01% of the LP optimum" (the ranking sentence)."""
GAP_EQ = 1e-6
"""Gaps closer than this count as equal in the Pareto reading: the exact solvers' integer costs round S to 1e-6,
so a smaller difference is rounding, while any larger one (e.g. 0.005% against the optimum) is a real loss."""
DROP_TOL = SHOWN_DROP * 1e-2
LOSS = 5.0
"""Percent: a workload where MaxScore's gap is at least this is one it loses on."""
MIN_FIT = 4
FLOOR = 2.0
"""A latency at least this times the router's smallest is above its overhead floor."""


def pct(value: float, digits: int = 2) -> str:
    return "-" if value is None or np.isnan(value) else f"{100 * value:.{digits}f}%"


def span(values: pd.Series, digits: int = 2, scale: float = 100.0) -> str:
    """``a–b%`` (or ``a%`` when equal at the precision) of percentages given as fractions."""
    lo, hi = f"{scale * values.min():.{digits}f}", f"{scale * values.max():.{digits}f}"
    return f"{lo}%" if lo == hi else f"{lo}–{hi}%"


def names(routers: list[str]) -> str:
    return ", ".join(f"`{r}`" for r in routers)


def outside_lp(table: pd.DataFrame) -> pd.Series:
    """Routers outside the LP: their kept load exceeded capacity, or they gave tokens more than k experts."""
    over_k = table["over_k_rate"] > 0 if "over_k_rate" in table else False
    return table["over"] | over_k


def dropped(rate: float) -> str:
    """``no drops`` or ``x% of slots dropped``."""
    return "no drops" if rate < DROP_TOL else f"{pct(rate)} of slots dropped"


def ranking(table: pd.DataFrame, top: int = 4) -> list[str]:
    """One sentence: the routers at the optimum, the ``top`` closest others with their drops beside their gaps, the
    farthest, and the routers outside the LP with the reason their gap ranks nothing."""
    inside = table[~outside_lp(table)].dropna(subset=["gap"])
    at_opt = [r for r, g in inside["gap"].items() if abs(g) <= GAP_TOL]
    rest = inside.drop(index=at_opt).sort_values("gap")
    parts = []
    if len(rest):
        close = ", ".join(f"`{r}` {pct(x['gap'])} ({dropped(x['slot_drop_rate'])})" for r, x in rest.head(top).iterrows())
        head = f"Within {pct(GAP_TOL)} of the LP optimum: {names(at_opt)}. Closest after them" if at_opt else "Closest to the LP optimum"
        parts.append(f"{head} (mean gap): {close}; farthest: `{rest.index[-1]}` {pct(rest['gap'].iloc[-1])} "
                     f"({dropped(rest['slot_drop_rate'].iloc[-1])}).")
    out = table[outside_lp(table)]
    if len(out):
        reasons = []
        for r, x in out.iterrows():
            why = [f"max load {x['max_load_ratio']:.2f}× C"] if x["over"] else []
            if x.get("over_k_rate", 0) > 0:
                why.append(f"{pct(x['over_k_rate'], 1)} of tokens get more than k experts")
            reasons.append(f"`{r}` ({', '.join(why)})")
        parts.append("Outside the LP, so their gaps rank nothing: " + ", ".join(reasons) + ".")
    return [" ".join(parts)] if parts else []


def dominates(a: pd.Series, b: pd.Series) -> bool:
    """``a`` is at least as good as ``b`` on latency (within :data:`LATENCY_TOL`), gap (within :data:`GAP_EQ`) and
    drops, and clearly better on one of them."""
    lat = not (np.isnan(a["x_base"]) or np.isnan(b["x_base"]))
    no_worse = ((not lat or a["x_base"] <= b["x_base"] * (1 + LATENCY_TOL)) and a["gap"] <= b["gap"] + GAP_EQ
                and a["slot_drop_rate"] <= b["slot_drop_rate"] + DROP_TOL)
    better = ((lat and a["x_base"] * (1 + LATENCY_TOL) < b["x_base"]) or a["gap"] < b["gap"] - GAP_EQ
              or a["slot_drop_rate"] < b["slot_drop_rate"] - DROP_TOL)
    return bool(no_worse and better)


def pareto(table: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """Among the routers inside the LP: those no other dominates, and for each dominated one the dominating
    router closest to the optimum."""
    t = table[~outside_lp(table)].dropna(subset=["gap"])
    front, beaten = [], {}
    for r, x in t.iterrows():
        by = [o for o, y in t.iterrows() if o != r and dominates(y, x)]
        if by:
            beaten[str(r)] = str(min(by, key=lambda o: t.loc[o, "gap"]))
        else:
            front.append(str(r))
    return front, beaten


def described(table: pd.DataFrame, router: str, baseline: Optional[str]) -> str:
    """```router` (1.23×, 0.45%, no drops)``: latency ratio, mean gap, drops."""
    x = table.loc[router]
    lat = f"{x['x_base']:.2f}×, " if baseline and not np.isnan(x["x_base"]) else ""
    return f"`{router}` ({lat}{pct(x['gap'])}, {dropped(x['slot_drop_rate'])})"


def pareto_reading(table: pd.DataFrame, baseline: Optional[str], focus: tuple[str, ...] = (),
                   front_too: bool = True, noise: str = "") -> list[str]:
    """The Pareto front over (latency × baseline, gap, drops) among the routers inside the LP, each with its
    numbers; the front members that only their speed keeps there (:func:`near_front`); who dominates the others
    (only those whose router name is in ``focus``, when given). ``noise``: a clause on the baseline's own spread."""
    front, beaten = pareto(table)
    if not front:
        return []
    lines = []
    if front_too:
        base = f"latency × `{baseline}`{noise}" if baseline else "latency"
        text = (f"Pareto front ({base}, within {LATENCY_TOL:.0%} counted as equal; mean gap; slot drops; no router inside "
                "the LP is as good on all three and better on one): "
                + ", ".join(described(table, r, baseline) for r in front) + ".")
        lines.append(" ".join([text] + near_front(table, front)))
    shown = [r for r in beaten if table.loc[r, "router_name"] in focus] if focus else list(beaten)
    if shown:
        lines.append("Dominated: " + "; ".join(
            f"{described(table, r, baseline)} by {described(table, beaten[r], baseline)}" for r in shown) + ".")
    return [" ".join(lines)]


def near_front(table: pd.DataFrame, front: list[str], slower: float = 1.5) -> list[str]:
    """Front members kept there by speed alone: another router inside the LP at most ``slower`` times as slow,
    with no more drops, is at least twice as close to the optimum."""
    lines = []
    for r in front:
        x = table.loc[r]
        if np.isnan(x["x_base"]) or x["gap"] <= GAP_TOL:
            continue
        rivals = [o for o in front if o != r and table.loc[o, "x_base"] <= slower * x["x_base"]
                  and table.loc[o, "gap"] < x["gap"] / 2 - GAP_TOL
                  and table.loc[o, "slot_drop_rate"] <= x["slot_drop_rate"] + DROP_TOL]
        if not rivals:
            continue
        o = min(rivals, key=lambda v: table.loc[v, "gap"])
        y = table.loc[o]
        ratio = x["gap"] / y["gap"] if y["gap"] > GAP_TOL else np.inf
        closer = "at the optimum" if np.isinf(ratio) else f"{ratio:.{1 if ratio < 10 else 0}f}× closer to it"
        lines.append(f"`{r}` is on the front by speed alone: `{o}` takes {y['x_base'] / x['x_base']:.2f}× its time "
                     f"and is {closer} ({pct(y['gap'])} vs {pct(x['gap'])}, {dropped(y['slot_drop_rate'])}).")
    return lines


def maxscore_reading(gaps: pd.DataFrame, drops: pd.DataFrame, table: pd.DataFrame, k: int = 2) -> list[str]:
    """Where MaxScore's two stages lose to the optimum (workloads where its gap is at least :data:`LOSS` %), what
    the closest routers inside the LP reach there, and whether an exact stage 2 recovers it (if not, the loss is
    stage 1's). ``gaps``/``drops``: router x workload, percent."""
    main = next((r for r in gaps.index if table.loc[r, "router_name"] == MAXSCORE
                 and set(table.loc[r, "options"]) <= {"score"}), None)
    if main is None:
        return []
    ms = gaps.loc[main].dropna()
    lossy = [w for w, g in ms.items() if g >= LOSS]
    if not lossy:
        return [f"`{main}` stays within {ms.max():.2f}% of the optimum on every workload (worst: {ms.idxmax()})."]
    text = f"`{main}` is {_span_pct(ms[lossy])} from the optimum on {', '.join(lossy)}"
    inside = table[~outside_lp(table)].index
    others = [r for r in gaps.index if r in inside and table.loc[r, "router_name"] not in (EXACT, MAXSCORE)
              and drops.loc[r, lossy].mean() < 1.0]
    best = sorted(others, key=lambda r: gaps.loc[r, lossy].mean())[:2]
    if best:
        text += ", where " + " and ".join(
            f"`{r}` is {_span_pct(gaps.loc[r, lossy])}" + _drop_span(drops.loc[r, lossy]) for r in best)
    rest = [w for w in ms.index if w not in lossy]
    if rest:
        text += f"; on the other workloads it is within {ms[rest].max():.2f}%"
    lines = [text + (" (at k = 1 MaxScore is its greedy stage 1 alone)." if k == 1 else ".")]
    own = table.loc[main, "options"]
    variants = [r for r in gaps.index if r != main and table.loc[r, "router_name"] == MAXSCORE]
    if variants:
        lines.append("Its variants there: " + ", ".join(f"`{r}` {_span_pct(gaps.loc[r, lossy])}" for r in variants)
                     + ".")
    exact2 = next((r for r in variants if table.loc[r, "options"] == {**own, "stage2": "exact"}), None)
    if exact2 is not None:
        kept = gaps.loc[exact2, lossy] / ms[lossy]
        first = [w for w in lossy if kept[w] >= 0.5]
        second = [w for w in lossy if kept[w] < 0.5]
        if first:
            lines.append(f"On {', '.join(first)} an exact stage 2 (`{exact2}`) keeps {_span_pct(100 * kept[first])} of "
                         "that loss, so it is stage 1's: stage 1 gives each token its best expert with room in token "
                         "order, the popular experts fill with whichever tokens come first, and no stage 2 moves a "
                         "first choice.")
        if second:
            lines.append(f"On {', '.join(second)} an exact stage 2 recovers more than half of the loss: there it is "
                         "the stage-2 solver's.")
    return [" ".join(lines)]


def _span_pct(values: pd.Series) -> str:
    return span(values, scale=1.0)


def _drop_span(values: pd.Series) -> str:
    return "" if values.max() < SHOWN_DROP else f" (dropping {_span_pct(values)} of slots)"


def cold_state_reading(table: pd.DataFrame, groups: int, baseline: Optional[str]) -> list[str]:
    """Routers that carry a bias or threshold from group to group (``aux_free``, ``qb`` with ``iters=0``) start
    cold in a sweep: say so, with their gaps beside the baseline's."""
    cold = [r for r, x in table.iterrows() if x["router_name"] == "aux_free"
            or (x["router_name"] == "qb" and x["options"].get("iters", "0") in ("0", ""))]
    if not cold:
        return []
    ref = f" (`{baseline}` {pct(table.loc[baseline, 'gap'])})" if baseline in table.index else ""
    gaps = ", ".join(f"`{r}` {pct(table.loc[r, 'gap'])}" for r in cold)
    return [f"{gaps}: a bias (threshold) carried from group to group, from zero in each call, so over G = {groups} "
            f"groups they stay close to plain top-k{ref}; a trained model's steady state is not measured here."]


def noise_clause(rows: pd.DataFrame, baseline: Optional[str]) -> str:
    """How much the baseline's own latency varied across the points of a setting (same shapes: the machine's noise
    in this run), as a clause: ``, itself 0.80 ms (0.51–1.02) over 30 points of the same shape``."""
    if baseline is None:
        return ""
    lat = rows.loc[rows["router"] == baseline, "latency_ms"].dropna()
    if len(lat) < 2:
        return ""
    return (f", itself a median {lat.median():.2f} ms ({lat.min():.2f}–{lat.max():.2f}) over {len(lat)} points of "
            "the same shape; the median ratio is shown")


def load_ratio_reading(curves: dict[str, dict[str, np.ndarray]], paper: dict[str, float]) -> list[str]:
    """Per workload: each router's mean load ratio (with the paper's beside it when given) and its emptiest
    expert."""
    lines = []
    for workload, by_router in curves.items():
        parts = []
        for router, ratios in by_router.items():
            mine = f"mean {ratios.mean():.4f}"
            if router in paper:
                mine += f" (paper {paper[router]:.4f})"
            parts.append(f"`{router}` {mine}, emptiest expert {ratios.min():.2f} of C")
        lines.append(f"{workload}: " + "; ".join(parts) + ".")
    return lines


def curves(rows: pd.DataFrame, line: str, axis: str, value: str, how: str = "mean") -> dict[str, pd.Series]:
    """Per line, the ``how`` (mean, median) of ``value`` over rows (seeds) at each ``axis`` value, lines in order
    of first appearance."""
    return {str(k): g.groupby(axis)[value].agg(how) for k, g in rows.groupby(line, sort=False)}


def same_curves(by_line: dict[str, pd.Series], tol: float) -> list[list[str]]:
    """Lines whose curves agree within ``tol`` at every x, grouped (first appearance order)."""
    groups: list[list[str]] = []
    for name, curve in by_line.items():
        for group in groups:
            other = by_line[group[0]]
            if curve.index.equals(other.index) and bool(np.all(np.abs(curve.values - other.values) <= tol)):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups


def cf_points(rows: pd.DataFrame, threshold: float = 0.01) -> pd.DataFrame:
    """Per router of a capacity-factor sweep: ``at1`` its slot drop at cf = 1 (NaN when not measured there),
    ``under`` the smallest cf from which it stays under ``threshold`` (NaN when it never does), ``top`` the largest
    cf measured."""
    out = {}
    for router, curve in curves(rows, "router", "cf_value", "slot_drop_rate").items():
        under = np.nan
        for cf in reversed(curve.index):  # from the largest cf down, while it stays under the threshold
            if curve[cf] >= threshold:
                break
            under = cf
        out[router] = {"at1": curve.get(1.0, np.nan), "under": under, "top": curve.index.max()}
    return pd.DataFrame.from_dict(out, orient="index")


def floor_reading(sweeps: list[tuple[str, pd.DataFrame]]) -> list[str]:
    """Per swept point (label, rows): the routers whose drop curve is `exact`'s at every cf, i.e. that keep every
    slot capacity allows (the maximum flow)."""
    parts = []
    for label, rows in sweeps:
        by = curves(rows, "router", "cf_value", "slot_drop_rate")
        group = next((g for g in same_curves(by, DROP_TOL) if EXACT in g), [])
        mates = [r for r in group if r != EXACT]
        if mates:
            parts.append(f"{label}: {names(mates)}")
    if not parts:
        return []
    return [f"Drop exactly what `{EXACT}` drops at every cf (every slot capacity allows is kept; below cf = 1 the "
            f"experts hold fewer slots than the tokens want): " + "; ".join(parts) + "."]


def option_reading(rows: pd.DataFrame, line: str, axis: str, option: str) -> list[str]:
    """Per line of an option sweep: the gap at the smallest and largest value and the best value."""
    lines = []
    for spec, curve in curves(rows, line, axis, "gap").items():
        drop = rows.loc[rows[line] == spec, "slot_drop_rate"].mean()
        lines.append(
            f"`{spec}`: gap {pct(curve.iloc[0], 3)} at {option}={curve.index[0]:g}, {pct(curve.iloc[-1], 3)} at "
            f"{option}={curve.index[-1]:g}; best {pct(curve.min(), 3)} at {option}={curve.idxmin():g} "
            f"({dropped(drop)} on average)."
        )
    return lines


def size_reading(rows: pd.DataFrame, axis: str = "tokens") -> list[str]:
    """Two sentences over the routers of a size sweep (``axis``: tokens, experts or groups; latency: the median over
    seeds): those whose points at the large end all stay at :data:`FLOOR` times their smallest latency or more (past
    the call overhead), at least :data:`MIN_FIT` of them, with the log-log slope fitted to those points; and those
    with fewer, for which no exponent is fitted. Each router with its latency at the smallest and largest size."""
    sym = {"tokens": "T", "experts": "E", "groups": "G"}[axis]
    fitted, unfitted = [], []
    for router, curve in curves(rows.dropna(subset=["latency_ms"]), "router", axis, "latency_ms", "median").items():
        if len(curve) < 2:
            continue
        ends = f"{curve.iloc[0]:.3g} → {curve.iloc[-1]:.3g} ms"
        tail = overhead_tail(curve)
        if len(tail) >= MIN_FIT:
            slope = np.polyfit(np.log(tail.index.values.astype(float)), np.log(tail.values), 1)[0]
            fitted.append(f"`{router}` {sym}^{slope:.2f} ({ends}; fitted on {sym} = {tail.index[0]:g}–"
                          f"{tail.index[-1]:g})")
        else:
            unfitted.append(f"`{router}` ({ends}; {len(tail)} such point(s))")
    if not fitted and not unfitted:
        return []
    sizes = sorted(rows[axis].dropna().unique())
    lines = []
    if fitted:
        lines.append(f"Growth fitted on the largest sizes whose latencies all stay at {FLOOR:g}× the router's smallest "
                     f"or more, where there are at least {MIN_FIT} (below that, call overhead dominates): "
                     + ", ".join(fitted) + ".")
    if unfitted:
        lines.append(f"Fewer than {MIN_FIT} such points, so no exponent: " + ", ".join(unfitted) + ".")
    lines[0] = f"From {sym} = {sizes[0]:g} to {sizes[-1]:g}. {lines[0]}"
    return lines


def overhead_tail(curve: pd.Series) -> pd.Series:
    """The points at the large end of a latency curve that all stay at :data:`FLOOR` times its smallest latency or
    more: past the call overhead. A slow call at a small size (noise) is not part of it."""
    floor = FLOOR * curve.min()
    start = len(curve)
    while start > 0 and curve.iloc[start - 1] >= floor:
        start -= 1
    return curve.iloc[start:]

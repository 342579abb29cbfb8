"""Results CSVs into a pandas frame, the main setting of each workload, and the per-workload summary table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from moeroute.core.errors import MoeRouteError
from moeroute.core.options import format_spec, parse_spec
from moeroute.core.version import code_fingerprint
from moeroute.experiments.sweep.store import parts_dir, read_results

SETTING = ["groups", "tokens", "experts", "k", "cf_label"]
NUMERIC = ["groups", "tokens", "experts", "k", "capacity", "seed", "repeats", "slot_drop_rate", "token_drop_rate",
           "second_choice_drop_rate", "over_k_rate", "mean_load_ratio", "max_load_ratio", "padding_factor",
           "objective", "optimum", "gap", "maxweight_optimum", "rank1_affinity", "rank2_affinity", "latency_ms",
           "latency_calls", "optimum_ms"]
SUMMARY_COLUMNS = {  # summary CSV column -> (source column, scale)
    "slot_drop_pct": ("slot_drop_rate", 100.0),
    "second_choice_drop_pct": ("second_choice_drop_rate", 100.0),
    "mean_load_ratio": ("mean_load_ratio", 1.0),
    "max_load_ratio": ("max_load_ratio", 1.0),
    "gap_pct": ("gap", 100.0),
    "latency_ms": ("latency_ms", 1.0),
    "rank1_affinity": ("rank1_affinity", 1.0),
    "rank2_affinity": ("rank2_affinity", 1.0),
}
BASELINE = "gshard"


def load_results(paths: Sequence["str | Path"]) -> pd.DataFrame:
    """All rows of the given results CSVs, typed: numbers as floats, ``cf`` as ``cf_value`` (NaN = no capacity)
    plus ``cf_label``, and the router's spec options parsed (``opt_iters``, ``opt_eps``)."""
    if not paths:
        raise MoeRouteError("no results files given (and none found in results/): run `moeroute run CONFIG` first")
    frames = []
    for path in paths:
        file = Path(path)
        if not file.is_file() and not parts_dir(file).is_dir():
            raise MoeRouteError(f"results file not found: {path}")
        # The sweep's own reader: damaged rows are skipped (a sweep moves them aside), segments not yet folded in
        # are included, so the report never dies on a row the sweep accepted.
        rows = read_results(file)
        frame = pd.DataFrame(rows, dtype=str)
        missing = {"key", "router", "workload", "slot_drop_rate"} - set(frame.columns)
        if missing:
            raise MoeRouteError(f"{path}: not a moeroute results CSV (missing {', '.join(sorted(missing))})")
        frame["source"] = file.name
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True).fillna("")
    df = df.drop_duplicates(subset="key", keep="last").reset_index(drop=True)
    for col in NUMERIC:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    df["cf_value"] = pd.to_numeric(df["cf"], errors="coerce")
    df["cf_label"] = [("none" if np.isnan(v) else f"{v:g}") for v in df["cf_value"]]
    if "error" not in df.columns:
        df["error"] = ""
    # Rows measured by other code than this checkout's (a different source fingerprint) are marked, not hidden.
    df["stale"] = df["code"].astype(str) != code_fingerprint() if "code" in df.columns else True
    df["error"] = df["error"].fillna("").astype(str)
    options = [parse_spec(r)[1] for r in df["router"]]
    df["opt_iters"] = pd.to_numeric(pd.Series([o.get("iters", "") for o in options]), errors="coerce")
    df["opt_eps"] = pd.to_numeric(pd.Series([o.get("eps", "") for o in options]), errors="coerce")
    df["router_no_iters"] = [_without(r, "iters") for r in df["router"]]
    df["router_no_eps"] = [_without(r, "eps") for r in df["router"]]
    return df


def _without(spec: str, key: str) -> str:
    name, options = parse_spec(spec)
    options.pop(key, None)
    return format_spec(name, options)


def setting_label(row: "pd.Series | dict") -> str:
    return f"G={int(row['groups'])}, T={int(row['tokens'])}, E={int(row['experts'])}, k={int(row['k'])}, cf={row['cf_label']}"


def main_settings(ok: pd.DataFrame) -> dict[str, dict]:
    """For each workload, the setting its summary table uses: the one with the most distinct routers (by name,
    so a sweep over one router's options does not win), then the most rows. Other settings feed the figures."""
    out = {}
    for workload, rows in ok.groupby("workload", sort=False):
        stats = rows.groupby(SETTING, sort=False).agg(names=("router_name", "nunique"), n=("key", "size")).reset_index()
        best = stats.sort_values(["names", "n", "tokens"], ascending=[False, False, False], kind="stable").iloc[0]
        out[str(workload)] = {key: best[key] for key in SETTING}
    return out


def rows_at(ok: pd.DataFrame, workload: str, setting: dict) -> pd.DataFrame:
    mask = ok["workload"] == workload
    for key, value in setting.items():
        mask &= ok[key] == value
    return ok[mask]


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Router x metrics (means over seeds) for the rows of one workload at one setting, routers in the order
    they first appear; ``latency_vs_gshard`` divides by the plain ``gshard`` row's latency when there is one."""
    order = list(dict.fromkeys(rows["router"]))
    grouped = rows.groupby("router", sort=False)
    table = pd.DataFrame(index=order)
    table.index.name = "router"
    for name, (col, scale) in SUMMARY_COLUMNS.items():
        table[name] = grouped[col].mean().reindex(order) * scale
    table["seeds"] = grouped["seed"].nunique().reindex(order)
    base = table["latency_ms"].get(BASELINE, np.nan)
    table["latency_vs_gshard"] = table["latency_ms"] / base if base and not np.isnan(base) else np.nan
    return table


def sorted_ratios(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per router, the element-wise mean over seeds of the sorted expert load ratios (descending)."""
    out = {}
    for router, group in rows.groupby("router", sort=False):
        vectors = [json.loads(v) for v in group["sorted_load_ratios"] if isinstance(v, str) and v.startswith("[")]
        if vectors and len({len(v) for v in vectors}) == 1:
            out[str(router)] = np.mean(np.array(vectors, dtype=float), axis=0)
    return out


def varying(ok: pd.DataFrame, x: str, fixed: list[str], line: str, min_points: int = 2) -> list[tuple[tuple, pd.DataFrame]]:
    """Sub-frames where ``x`` takes at least ``min_points`` values with everything in ``fixed`` held, for
    lines keyed by ``line``; sorted by how many x values they cover (most first)."""
    out = []
    clean = ok.dropna(subset=[x])
    for key, group in clean.groupby(fixed, sort=False):
        lines = group.groupby(line)[x].nunique()
        if (lines >= min_points).any():
            out.append((key if isinstance(key, tuple) else (key,), group))
    out.sort(key=lambda kg: -kg[1][x].nunique())
    return out


def fmt_number(value: Optional[float], digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"

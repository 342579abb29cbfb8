"""Results CSVs into one typed pandas frame: numbers as numbers, the capacity factor as a value and a label, short
workload names, each router spec's options, and whether this checkout's code measured the row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from moeroute.core.errors import MoeRouteError
from moeroute.core.options import format_spec, parse_spec
from moeroute.core.version import code_fingerprint
from moeroute.experiments.sweep.store import parts_dir, read_results

POINT = ["workload", "groups", "tokens", "experts", "k", "cf_label"]
"""What makes one set of logits (with the seed): rows that share these were routed on the same problem."""
SETTING = ["groups", "tokens", "experts", "k", "cf_label"]
"""A setting: a point without its workload."""
NUMERIC = ["groups", "tokens", "experts", "k", "capacity", "seed", "repeats", "slot_drop_rate", "token_drop_rate",
           "second_choice_drop_rate", "selection_drop_rate", "over_k_rate", "mean_experts_per_token",
           "mean_load_ratio", "max_load_ratio", "padding_factor", "max_vio", "max_vio_global", "gini", "objective",
           "optimum", "gap", "maxweight_optimum", "rank1_affinity", "rank2_affinity", "rank1_affinity_kept",
           "rank2_affinity_kept", "latency_ms", "latency_calls", "optimum_ms"]
REQUIRED = {"key", "router", "workload", "slot_drop_rate"}


def load_results(paths: Sequence["str | Path"]) -> pd.DataFrame:
    """All good rows of the given results files (the sweep's own checked reader: damaged rows are skipped, segments
    a run has not folded in yet are included), typed. Added columns: ``cf_value`` (NaN = no capacity),
    ``cf_label``, ``workload_label`` (captured files shortened), ``options`` (the spec's options, a dict),
    ``router_name`` where missing, ``stale`` (measured by other code than this checkout) and ``error`` ('' = ok)."""
    if not paths:
        raise MoeRouteError("no results files given (and none found in results/): run `moeroute run CONFIG` first")
    frames = []
    for path in paths:
        file = Path(path)
        if not file.is_file() and not parts_dir(file).is_dir():
            raise MoeRouteError(f"results file not found: {path}")
        frame = pd.DataFrame(read_results(file), dtype=str)
        missing = REQUIRED - set(frame.columns)
        if missing:
            raise MoeRouteError(f"{path}: not a moeroute results CSV (missing {', '.join(sorted(missing))})")
        frame["source"] = str(path)
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True).fillna("")
    df = df.drop_duplicates(subset="key", keep="last").reset_index(drop=True)
    for col in NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else np.nan
    df["cf_value"] = pd.to_numeric(df["cf"], errors="coerce") if "cf" in df.columns else np.nan
    df["cf_label"] = [("none" if np.isnan(v) else f"{v:g}") for v in df["cf_value"]]
    for col in ("error", "score", "extra", "sorted_load_ratios", "host", "device", "torch_version", "grid"):
        df[col] = df[col].astype(str) if col in df.columns else ""
    df["score"] = df["score"].replace("", "softmax")
    # Rows measured by other code than this checkout's (a different source fingerprint) are marked, not hidden.
    df["stale"] = (df["code"].astype(str) != code_fingerprint()) if "code" in df.columns else True
    df["options"] = [parse_spec(r)[1] for r in df["router"]]
    df["router_name"] = [parse_spec(r)[0] for r in df["router"]]
    df["workload_label"] = short_workloads(df["workload"])
    return df


def short_workloads(workloads: pd.Series) -> list[str]:
    """``captured:PATH:KEY`` as ``captured:KEY`` (``STEM:KEY`` when several files are captured); others as given."""
    files = {w.split(":")[1] for w in workloads.unique() if w.startswith("captured:") and w.count(":") >= 2}

    def short(w: str) -> str:
        if not w.startswith("captured:") or w.count(":") < 2:
            return w
        _, path, key = w.split(":", 2)
        return f"captured:{key}" if len(files) <= 1 else f"{Path(path).stem}:{key}"

    return [short(w) for w in workloads]


def without_option(spec: str, key: str) -> str:
    """``spec`` with option ``key`` removed: the line a sweep over that option draws."""
    name, options = parse_spec(spec)
    options.pop(key, None)
    return format_spec(name, options)


def number(value: str) -> float:
    """A spec option's value as a number (NaN when it is not one)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def sorted_ratios(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per router, the element-wise mean over rows of the sorted expert load ratios (most loaded first)."""
    out = {}
    for router, group in rows.groupby("router", sort=False):
        vectors = [json.loads(v) for v in group["sorted_load_ratios"] if v.startswith("[")]
        if vectors and len({len(v) for v in vectors}) == 1:
            out[str(router)] = np.mean(np.array(vectors, dtype=float), axis=0)
    return out


def setting_label(values: "pd.Series | dict", groups: bool = True) -> str:
    """``T = 512, E = 16, k = 2, cf = 1`` (with ``G = 4`` first when ``groups``)."""
    text = f"T = {int(values['tokens'])}, E = {int(values['experts'])}, k = {int(values['k'])}, cf = {values['cf_label']}"
    return f"G = {int(values['groups'])}, {text}" if groups else text


def fixed_label(fixed: dict) -> str:
    """The held values of a sweep (``G = 2, T = 512, E = 16, k = 2, cf = 1``), leaving out what is not held."""
    parts = [("G", "groups"), ("T", "tokens"), ("E", "experts"), ("k", "k"), ("cf", "cf_label")]
    return ", ".join(f"{sym} = {fixed[key] if key == 'cf_label' else int(fixed[key])}" for sym, key in parts
                     if key in fixed)

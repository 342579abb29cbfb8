"""One sweep point, computed where a worker runs it: the logits once, the optimum once, then every pending router
on the same logits; one row each. A pure function of its :class:`PointTask` (plus the code and the machine), so
the driver can hand it to any executor (moeroute/experiments/sweep/executors.py) and persist what comes back."""

from __future__ import annotations

import json
import os
import platform
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import torch

from moeroute.core.device import device_name, resolve_device
from moeroute.core.errors import MoeRouteError, RoutingInvariantError
from moeroute.core.metrics import RoutingMetrics
from moeroute.core.options import parse_spec
from moeroute.core.problem import make_input
from moeroute.core.version import code_fingerprint, git_revision, package_version
from moeroute.evaluation import Optima, measure, optima
from moeroute.experiments.sweep.config import Point
from moeroute.workloads import workload_logits

METRIC_COLUMNS = ["score", "slot_drop_rate", "token_drop_rate", "second_choice_drop_rate", "selection_drop_rate",
                  "over_k_rate", "mean_experts_per_token", "mean_load_ratio", "max_load_ratio", "padding_factor",
                  "max_vio", "max_vio_global", "gini", "ep_ranks", "ep_max_over_mean", "ep_rank_tokens",
                  "objective", "optimum", "gap", "maxweight_optimum", "rank1_affinity", "rank2_affinity",
                  "rank1_affinity_kept", "rank2_affinity_kept", "latency_ms", "latency_calls", "sorted_load_ratios", "extra"]
"""The measured columns of a row (docs/metrics.md); lists are stored as JSON."""
JSON_COLUMNS = ("sorted_load_ratios", "ep_rank_tokens")


@dataclass(frozen=True)
class RouterRun:
    """One router of a point: the spec as the config wrote it (the row's ``router``), the spec actually run (the
    written one plus a captured file's routing settings, see docs/traces.md) and its resolved form (the row's
    identity)."""

    written: str
    run: str
    resolved: str


@dataclass(frozen=True)
class PointTask:
    """Everything a worker needs for one point: picklable, no open files or tensors."""

    sweep: str
    grid: str
    point: Point
    routers: tuple[RouterRun, ...]
    device: str
    threads: Optional[int]
    """torch intra-op threads the worker sets before computing (``None``: leave torch's setting)."""
    executor: str = "serial"


def code_fields() -> dict[str, str]:
    """The code columns of a row measured by this process."""
    return {"code": code_fingerprint(), "moeroute_version": package_version(), "git_revision": git_revision()}


@lru_cache(maxsize=4)
def _environment(device: str) -> dict[str, Any]:
    return {
        "device_name": device_name(torch.device(device)),
        "host": socket.gethostname(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        **code_fields(),
    }


def _metric_fields(m: RoutingMetrics) -> dict[str, Any]:
    d = m.as_dict()
    row = {key: d[key] for key in METRIC_COLUMNS if key in d and key not in (*JSON_COLUMNS, "extra")}
    for key in JSON_COLUMNS:
        row[key] = "" if d.get(key) is None else json.dumps(d[key])
    row["extra"] = json.dumps(m.extra, sort_keys=True) if m.extra else ""
    return {key: ("" if value is None else value) for key, value in row.items()}


def compute_point(task: PointTask) -> list[dict[str, Any]]:
    """The rows of one point (errors of one router become its row's ``error``, not a crash). The latency columns
    record where they were measured: ``host``, ``worker`` (executor and process id) and torch's ``threads``."""
    if task.threads is not None and torch.get_num_threads() != task.threads:
        torch.set_num_threads(task.threads)
    dev = resolve_device(task.device)
    point = task.point
    logits = workload_logits(point.workload, point.groups, point.tokens, point.experts, point.seed).to(dev)
    x = make_input(logits, point.k, point.cf)
    t0 = time.perf_counter()
    # The optimum of the softmax scores now (timed); another score function's when a router first selects by it.
    best = Optima(x, point.solver).given(x.score, *optima(x, point.solver))
    optimum_ms = (time.perf_counter() - t0) * 1e3
    env = {**_environment(str(dev)), "threads": torch.get_num_threads(), "worker": f"{task.executor}:{os.getpid()}"}
    rows = []
    for router in task.routers:
        row: dict[str, Any] = {
            "key": point.row_key(router.resolved, str(dev)), "sweep": task.sweep, "grid": task.grid,
            "router": router.written, "router_resolved": router.resolved, "router_name": parse_spec(router.written)[0],
            "workload": point.workload, "groups": point.groups, "tokens": point.tokens, "experts": point.experts,
            "k": point.k, "cf": "none" if point.cf is None else point.cf,
            "capacity": "" if x.capacity is None else x.capacity, "seed": point.seed, "repeats": point.repeats,
            "solver": point.solver, "device": str(dev), "error": "", "optimum_ms": round(optimum_ms, 3), **env,
        }
        try:
            row.update(_metric_fields(measure(x, router.run, repeats=point.repeats, optimum=best,
                                              ep_ranks=point.ep_ranks)))
        except RoutingInvariantError as exc:  # a router bug: recorded loudly, never a data point
            row["error"] = f"invariant broken: {str(exc).splitlines()[0][:200]}"
        except MoeRouteError as exc:  # the router refuses this point (e.g. k=1 only)
            row["error"] = str(exc).splitlines()[0][:300]
        except Exception as exc:  # a crash inside one router must not lose the sweep; it is retried on re-run
            where = traceback.extract_tb(exc.__traceback__)[-1]
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]} ({Path(where.filename).name}:{where.lineno})"
        row["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows.append(row)
    return rows

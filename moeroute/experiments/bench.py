"""Side-by-side measurements for ``moeroute bench``: exact solvers, routers (time, ratio to GShard and to a bare
``torch.topk``, objective gap), peak memory per router, and MaxScore's Sinkhorn iterations/eps trade-off.

Everything is measured in one process (except memory and capped slow solvers, which need their own processes),
on the same logits, as medians after warm-up. Ratios are the result; absolute times vary between runs and
machines.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from moeroute.core.errors import MoeRouteError
from moeroute.core.metrics import objective_gap, routing_metrics
from moeroute.core.problem import RouterInput, make_input
from moeroute.core.timing import interleaved
from moeroute.routers import bind_router, router_names
from moeroute.solvers import DEFAULT_SOLVER, SOLVERS, solve_optimum
from moeroute.solvers.flow_network import SCALE, effective_capacity
from moeroute.workloads import (
    captured_experts,
    captured_tokens,
    is_captured,
    parse_captured,
    synthetic_logits,
    workload_logits,
)

SLOW_SOLVERS = ("spfa", "network_simplex", "max_flow_min_cost")


@dataclass(frozen=True)
class Size:
    """``groups`` x ``tokens`` x ``experts``, written ``GxTxE`` or ``TxE`` (one group)."""

    groups: int
    tokens: int
    experts: int

    @classmethod
    def parse(cls, text: str) -> "Size":
        try:
            parts = [int(p) for p in text.lower().split("x")]
        except ValueError:
            parts = []
        if len(parts) == 2:
            parts = [1, *parts]
        if len(parts) != 3 or min(parts) < 1:
            raise MoeRouteError(f"size must look like 16384x64 or 32x512x16, got {text!r}")
        return cls(*parts)

    def __str__(self) -> str:
        body = f"{self.tokens}x{self.experts}"
        return body if self.groups == 1 else f"{self.groups}x{body}"


def make_case(
    workload: str, size: Size, k: int, cf: Optional[float], seed: int = 0, device: Optional[torch.device] = None
) -> RouterInput:
    """The routing problem of one benchmark cell: a synthetic family, or ``captured:PATH[:KEY]`` logits (whose ``E``
    must be the size's; groups are cut from the file's tokens, as many as it holds up to ``size.groups``)."""
    if is_captured(workload):
        experts = captured_experts(workload)
        if experts != size.experts:
            raise MoeRouteError(f"{workload} has E={experts}, not {size.experts}")
        groups = min(size.groups, captured_tokens(*parse_captured(workload)).shape[0] // size.tokens)
        if groups < 1:
            raise MoeRouteError(f"{workload} holds too few tokens for a group of {size.tokens}")
        logits = workload_logits(workload, groups, size.tokens, experts, seed)
    else:
        logits = synthetic_logits(workload, size.groups, size.tokens, size.experts, seed)
    if device is not None:
        logits = logits.to(device)
    return make_input(logits, k, cf)


def case_size(x: RouterInput) -> str:
    """The ``GxTxE`` a case was actually built at (captured files may hold fewer groups than asked)."""
    return str(Size(x.groups, x.tokens, x.experts))


# -- exact solvers ------------------------------------------------------------------------------------------------


def ortools_direct(scores: np.ndarray, k: int, capacity: Optional[int]) -> int:
    """The baseline: OR-tools ``SimpleMinCostFlow`` called directly, as a user would write it: float64 scores
    ``[G, T, E]`` rounded to int64 costs, the arc arrays (all groups in one network), max-flow-min-cost, the pair
    flows read back. Returns the optimal integer cost."""
    from ortools.graph.python import min_cost_flow

    g, t, e = scores.shape
    costs = -np.rint(scores * SCALE).astype(np.int64)
    n_tok, n_pair = g * t, g * t * e
    tokens = np.arange(2, 2 + n_tok)
    experts = np.arange(2 + n_tok, 2 + n_tok + g * e)
    tails = np.concatenate([np.zeros(n_tok, np.int64), np.repeat(tokens, e), experts])
    heads = np.concatenate([tokens, np.tile(experts.reshape(g, 1, e), (1, t, 1)).reshape(-1), np.ones(g * e, np.int64)])
    caps = np.concatenate([np.full(n_tok, k), np.ones(n_pair, np.int64), np.full(g * e, effective_capacity(capacity, t))])
    arc_costs = np.concatenate([np.zeros(n_tok, np.int64), costs.reshape(-1), np.zeros(g * e, np.int64)])
    solver = min_cost_flow.SimpleMinCostFlow()
    solver.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, arc_costs)
    solver.set_node_supply(0, k * n_tok)
    solver.set_node_supply(1, -k * n_tok)
    if solver.solve_max_flow_with_min_cost() != solver.OPTIMAL:
        raise RuntimeError("OR-tools did not solve the problem")
    solver.flows(np.arange(n_tok, n_tok + n_pair))
    return int(solver.optimal_cost())


def _solve_in_child(queue: Any, scores: np.ndarray, k: int, capacity: Optional[int], solver: str) -> None:
    start = time.perf_counter()
    cost = int(solve_optimum(scores, k, capacity, solver).int_cost.sum())
    queue.put((time.perf_counter() - start, cost))


def capped_solve(scores: np.ndarray, k: int, capacity: Optional[int], solver: str, cap_s: float) -> Optional[tuple[float, int]]:
    """One timed call of a slow solver in a forked process, killed after ``cap_s`` seconds (then ``None``)."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_solve_in_child, args=(queue, scores, k, capacity, solver))
    proc.start()
    proc.join(cap_s)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return None
    return queue.get() if not queue.empty() else None


def solver_rows(
    sizes: list[Size], workloads: list[str], k: int, cf: Optional[float], repeats: int, slow: list[str],
    slow_cap_s: float, slow_sizes: list[Size], log: Callable[[str], None] = print, budget_s: float = 8.0,
) -> list[dict]:
    """Time the default solver, OR-tools direct, every fast registered solver and (capped) the slow ones.

    A slow solver runs once in its own process up to ``slow_cap_s``, only at ``slow_sizes``. Where it was capped
    or not run, its time is extrapolated from its first measured size by (units of flow) x (arcs), the work of
    successive shortest paths, and marked ``~``.
    """
    fast = [DEFAULT_SOLVER] + [s for s in SOLVERS if s != DEFAULT_SOLVER and s not in SLOW_SOLVERS]
    rows, measured = [], {}
    for size in sizes:
        for workload in workloads:
            if k > size.experts:
                log(f"solvers: {size}: skipped (k={k} > E)")
                continue
            x = make_case(workload, size, k, cf)
            scores = x.scores.double().numpy()
            log(f"solvers: {workload} {size} k={k}")
            fns: dict[str, Callable[[], Any]] = {
                "ortools direct": lambda scores=scores, cap=x.capacity: ortools_direct(scores, k, cap)
            }
            for name in fast:
                fns[name] = lambda name=name, scores=scores, cap=x.capacity: solve_optimum(scores, k, cap, name)
            timed = interleaved(fns, repeats, budget_s=budget_s)
            ref_cost = timed["ortools direct"][0]
            row = {"workload": workload, "size": str(size), "k": k, "ortools direct": timed["ortools direct"][1]}
            for name in fast:
                row[name] = timed[name][1]
                row[f"{name} exact"] = int(timed[name][0].int_cost.sum()) == ref_cost
            work = size.groups * (k * size.tokens) * (size.tokens * size.experts)  # per group: units x arcs
            for name in slow:
                result = None
                if size in slow_sizes:
                    result = capped_solve(scores, k, x.capacity, name, slow_cap_s)
                if result is not None:
                    row[name] = result[0] * 1e3
                    row[f"{name} exact"] = result[1] == ref_cost
                    measured.setdefault((name, workload), (work, result[0] * 1e3))
                elif (name, workload) in measured:
                    base_work, base_ms = measured[(name, workload)]
                    why = f">{slow_cap_s:.0f} s" if size in slow_sizes else "not run"
                    row[name] = f"~{base_ms * work / base_work / 1e3:.0f} s ({why})"
                else:
                    row[name] = f">{slow_cap_s:.0f} s" if size in slow_sizes else "not run"
            rows.append(row)
    return rows


# -- routers -----------------------------------------------------------------------------------------------------


def default_router_specs() -> list[str]:
    """Every registered router, plus the variants worth timing that exist in this build."""
    names = router_names()
    extra = ["gshard:drop_policy=probs", "maxscore:stage2=dual", "maxscore:stage2=exact", "maxscore:stage2=iterative"]
    specs = list(names)
    for spec in extra:
        try:
            bind_router(spec)
        except MoeRouteError:
            continue
        specs.append(spec)
    return specs


def router_rows(
    specs: list[str], sizes: list[Size], workloads: list[str], k: int, cf: Optional[float], repeats: int,
    log: Callable[[str], None] = print, budget_s: float = 8.0, device: Optional[torch.device] = None,
    gap: bool = True,
) -> list[dict]:
    """Median latency of each router on prepared inputs (scores already computed, on ``device``) beside ``gshard``
    and a bare ``torch.topk`` of the scores, with its objective gap to the MCMF optimum (default solver, on the
    host; ``gap=False`` skips it). On an accelerator every timed call ends with a device synchronisation. A
    captured workload whose ``E`` differs from the size's is skipped."""
    rows = []
    for size in sizes:
        for workload in workloads:
            try:
                if k > size.experts:
                    raise MoeRouteError(f"k={k} > E")
                x = make_case(workload, size, k, cf, device=device)
            except MoeRouteError as exc:
                log(f"routers: {workload} {size}: skipped ({exc})")
                continue
            where = case_size(x)
            log(f"routers: {workload} {where} k={k}")
            optimum = float(solve_optimum(x.scores, k, x.capacity).objective.sum()) if gap else None
            fns: dict[str, Callable[[], Any]] = {"torch.topk": lambda x=x: torch.topk(x.scores, k, dim=-1)}
            errors = {}
            for spec in ["gshard", *specs]:
                try:
                    bound = bind_router(spec)
                    bound(x)
                except (MoeRouteError, ValueError, RuntimeError) as exc:
                    errors[spec] = str(exc)
                    continue
                fns[spec] = lambda bound=bound, x=x: bound(x, check=False)
            timed = interleaved(fns, repeats, warmup=1, budget_s=budget_s, device=device)
            topk_ms, gshard_ms = timed["torch.topk"][1], timed["gshard"][1]
            head = {"workload": workload, "size": where, "k": k}
            rows.append({**head, "router": "torch.topk (no capacity)", "ms": topk_ms, "x gshard": topk_ms / gshard_ms,
                         "x topk": 1.0, "gap": None, "drop": None})
            for spec in specs:
                if spec in errors:
                    rows.append({**head, "router": spec, "error": errors[spec]})
                    continue
                routing, ms, calls = timed[spec]
                m = routing_metrics(x, routing)
                rows.append({
                    **head, "router": spec, "ms": ms, "x gshard": ms / gshard_ms, "x topk": ms / topk_ms,
                    "gap": objective_gap(m.objective, optimum), "drop": m.slot_drop_rate, "calls": calls,
                })
    return rows


# -- memory ------------------------------------------------------------------------------------------------------

_MEMORY_CHILD = """
import json, resource, sys, torch
torch.set_num_threads({threads})
from moeroute.workloads import synthetic_logits
from moeroute.core.problem import make_input
from moeroute.routers import bind_router
x = make_input(synthetic_logits({workload!r}, {groups}, {tokens}, {experts}, 0), {k}, {cf!r})
spec = sys.argv[1]
call = (lambda: torch.topk(x.scores, {k}, dim=-1)) if spec == "torch.topk" else (lambda b: (lambda: b(x)))(bind_router(spec))

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

try:
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark VmHWM to the current RSS
    how = "VmHWM"
except OSError:
    before, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
call()
after = status("VmHWM") if how == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"before_kb": before, "after_kb": after, "how": how}}))
"""


def memory_rows(specs: list[str], size: Size, workload: str, k: int, cf: Optional[float], threads: int,
                log: Callable[[str], None] = print) -> list[dict]:
    """Peak resident memory each router adds, each in a fresh Python process: the resident high-water mark during
    one call (Linux ``VmHWM``, reset to the current RSS via ``/proc/self/clear_refs`` just before) minus the RSS
    after building the input (logits, scores); ``ru_maxrss`` where ``/proc`` is missing (it is inherited from the
    parent across exec, so it can read 0). CPU only. The child runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that
    large blocks are mmapped and returned on free: the mark grows by the call's own peak of live memory, not by
    what earlier frees left in the heap (checked: a bool ``[16384, 64, 512]`` tensor shows up as +511 MB)."""
    code = _MEMORY_CHILD.format(threads=threads, workload=workload, groups=size.groups, tokens=size.tokens,
                                experts=size.experts, k=k, cf=cf)
    env = dict(os.environ)
    # Large blocks straight from mmap, so that freed memory leaves the process and ru_maxrss tracks live memory.
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(os.path.dirname(__file__))), env.get("PYTHONPATH", "")] if p)
    rows = []
    for spec in ["torch.topk", *specs]:
        log(f"memory: {spec}")
        proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            rows.append({"router": spec, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]})
            continue
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({"router": spec, "peak_mb": max(0, out["after_kb"] - out["before_kb"]) / 1024,
                     "base_mb": out["before_kb"] / 1024, "how": out["how"]})
    return rows


def device_memory_rows(specs: list[str], size: Size, workload: str, k: int, cf: Optional[float],
                       device: torch.device, log: Callable[[str], None] = print) -> list[dict]:
    """Peak device memory each router adds on an accelerator (CUDA): ``torch.cuda.max_memory_allocated`` during one
    call, reset just before it, minus what was allocated before (the input), in this process."""
    x = make_case(workload, size, k, cf, device=device)
    rows = []
    for spec in ["torch.topk", *specs]:
        log(f"memory: {spec}")
        try:
            bound = None if spec == "torch.topk" else bind_router(spec)
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            torch.topk(x.scores, k, dim=-1) if bound is None else bound(x)
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
        except (MoeRouteError, ValueError, RuntimeError) as exc:
            rows.append({"router": spec, "error": str(exc).splitlines()[0]})
            continue
        rows.append({"router": spec, "peak_mb": max(0, peak - before) / 2**20, "base_mb": before / 2**20,
                     "how": "cuda max_memory_allocated"})
    return rows


# -- Sinkhorn trade-off ------------------------------------------------------------------------------------------


def curve_rows(router: str, points: list[tuple[int, float]], size: Size, workload: str, k: int, cf: Optional[float],
               repeats: int, log: Callable[[str], None] = print, budget_s: float = 5.0) -> list[dict]:
    """Gap to the MCMF optimum vs median time of ``router:iters=I,eps=EPS,tol=0`` for each ``(I, EPS)`` (without
    ``tol=0`` if the router has no ``tol`` option)."""
    x = make_case(workload, size, k, cf)
    optimum = float(solve_optimum(x.scores, k, x.capacity).objective.sum())
    gshard = bind_router("gshard")
    fns: dict[str, Callable[[], Any]] = {"gshard": lambda: gshard(x)}
    for iters, eps in points:
        spec = f"{router}:iters={iters},eps={eps:g}"
        try:
            # tol=0 so that the iteration cap, not the tolerance, ends Sinkhorn: the curve is about iterations.
            bound = bind_router(spec + ",tol=0")
        except MoeRouteError:
            bound = bind_router(spec)
        fns[bound.spec] = lambda bound=bound: bound(x)
    log(f"curve: {len(points)} points of {router}")
    timed = interleaved(fns, repeats, warmup=1, budget_s=budget_s)
    gshard_ms = timed["gshard"][1]
    rows = []
    for (iters, eps), spec in zip(points, list(fns)[1:]):
        routing, ms, _ = timed[spec]
        gap = objective_gap(routing_metrics(x, routing).objective, optimum)
        rows.append({"spec": spec, "iters": iters, "eps": eps, "ms": ms, "x gshard": ms / gshard_ms, "gap": gap})
    return rows

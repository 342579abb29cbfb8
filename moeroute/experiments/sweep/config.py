"""Sweep configs (TOML or YAML): named grids of routers x workloads x sizes x seeds, validated up front.

A config holds ``name`` (the results file is ``<out>/<name>.csv``; default: the file's stem), optional defaults
for every grid at the top level, and a list ``grid`` of grids (TOML ``[[grid]]`` tables, a YAML list). Without a
``grid`` list the top level is the one grid. Keys of a grid (lists may be given as one scalar):

- ``name``      the grid's label in the results (default ``grid<i>``)
- ``routers``   router spec strings, e.g. ``"gshard"``, ``"maxscore:stage2=exact"`` (required)
- ``workloads`` workload specs, e.g. ``"skew"``, ``"hot:hot=2"``, ``"captured:logits.safetensors:layer3"``;
                ``"captured:logits.safetensors:*"`` is one workload per layer of the file (required)
- ``tokens``    tokens per group T (default ``[512]``)
- ``groups``    groups per point G (default ``[4]``)
- ``experts``   experts E (default ``[16]``; a ``captured:`` workload uses its file's E instead)
- ``k``         experts per token (default ``[2]``; a ``captured:`` file's recorded k when the config sets none)
- ``cf``        capacity factors, numbers > 0 or ``"none"`` (no capacity) (default ``[1.0]``)
- ``seeds``     a list of seeds, or a count ``n`` meaning ``0 .. n-1`` (default ``[0]``)
- ``repeats``   timed calls per router for the latency median (default ``5``)
- ``solver``    exact solver of the optimum (default ``"auto"``, the project default)

Every grid point (workload, G, T, E, k, cf, seed) is one set of logits and one optimum; every router of the grid
runs on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch

from moeroute.core.config_files import read_config_file
from moeroute.core.errors import MoeRouteError
from moeroute.core.options import build_options, parse_spec
from moeroute.core.problem import RouterInput, expert_capacity
from moeroute.routers import bind_router, resolve_spec, router_names
from moeroute.solvers import DEFAULT_SOLVER, SOLVERS
from moeroute.workloads import (
    captured_settings,
    captured_shape,
    check_workload,
    expand_captured,
    is_captured,
    leftover_note,
)
from moeroute.workloads.settings import RoutingSettings, with_settings


@dataclass(frozen=True)
class Grid:
    """One grid of a sweep config, typed: each key is parsed by :func:`moeroute.core.options.build_options` (a
    list key also takes one scalar), so configs and router specs share one option system. ``seeds`` may be a count
    ``n`` (meaning ``0 .. n-1``); ``cf`` takes numbers > 0 or ``"none"``."""

    routers: tuple[str, ...]
    workloads: tuple[str, ...]
    name: str = "grid"
    tokens: tuple[int, ...] = (512,)
    groups: tuple[int, ...] = (4,)
    experts: tuple[int, ...] = (16,)
    k: tuple[int, ...] = (2,)
    cf: tuple[Optional[float], ...] = (1.0,)
    seeds: tuple[int, ...] = (0,)
    repeats: int = 5
    solver: str = DEFAULT_SOLVER
    ep_ranks: Optional[int] = None

    def validate(self) -> None:
        for key in ("tokens", "groups", "experts", "k", "repeats"):
            values = getattr(self, key)
            for v in values if isinstance(values, tuple) else (values,):
                if v < 1:
                    raise MoeRouteError(f"{key!r} must be integers >= 1, got {v!r}")
        if any(s < 0 for s in self.seeds):
            raise MoeRouteError(f"'seeds' must be integers >= 0, got {self.seeds}")
        if any(c is not None and not (0 < c < float("inf")) for c in self.cf):
            raise MoeRouteError(f"'cf' must be numbers > 0 or \"none\", got {self.cf}")
        if not self.name.strip():
            raise MoeRouteError("'name' must be a non-empty string")
        if self.solver not in SOLVERS:
            raise MoeRouteError(f"unknown solver {self.solver!r} (known: {', '.join(SOLVERS)})")
        if self.ep_ranks is not None and (self.ep_ranks < 1 or any(e % self.ep_ranks for e in self.experts)):
            raise MoeRouteError(f"'ep_ranks' must be >= 1 and divide every number of experts, got {self.ep_ranks}")


GRID_KEYS = tuple(f.name for f in fields(Grid))


@dataclass(frozen=True)
class Point:
    """One set of logits and its optimum: what every router of a grid is run on."""

    workload: str
    groups: int
    tokens: int
    experts: int
    k: int
    cf: Optional[float]
    seed: int
    repeats: int
    solver: str
    ep_ranks: Optional[int] = None
    """The expert-parallel view of the metrics (docs/metrics.md); it changes the rows, not the logits."""

    def row_key(self, resolved_router: str, device: str) -> str:
        """The resume key of one (point, router) row: a hash of the point, the router spec with every option
        resolved (``maxscore`` and ``maxscore:eps=<its default>`` share a key) and the device. Which code measured
        the row is stored beside it (``code``) and checked separately."""
        fields = {k: v for k, v in asdict(self).items() if not (k == "ep_ranks" and v is None)}  # keys of older rows
        payload = json.dumps({**fields, "router": resolved_router, "device": device}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]

    def label(self) -> str:
        cf = "none" if self.cf is None else f"{self.cf:g}"
        return f"{self.workload} G={self.groups} T={self.tokens} E={self.experts} k={self.k} cf={cf} seed={self.seed}"


@dataclass(frozen=True)
class SweepConfig:
    name: str
    path: str
    grids: tuple[Grid, ...]
    points: tuple[tuple[str, Point, tuple[str, ...]], ...] = field(default=())
    """``(grid name, point, router specs)`` in run order, duplicates across grids removed."""
    resolved: dict[str, str] = field(default_factory=dict)
    """Each router spec of the config -> the spec with every option resolved (defaults filled in)."""
    notes: tuple[str, ...] = ()
    """Things a user should know before the run (e.g. tokens of a captured file that fill no group)."""
    settings: dict[str, RoutingSettings] = field(default_factory=dict)
    """Captured workload -> the routing settings recorded with its file (docs/traces.md)."""

    def routers(self) -> list[str]:
        return sorted({r for g in self.grids for r in g.routers})

    def run_spec(self, point: Point, spec: str) -> tuple[str, str]:
        """The spec to run for router ``spec`` (as the config wrote it) at ``point``, and its resolved form: on a
        captured file with recorded routing settings, the options they imply that the router accepts and the spec
        does not set (``score``, ``groups``, ``group_topk``, ``renormalize``)."""
        settings = self.settings.get(point.workload)
        if settings is None:
            return spec, self.resolved[spec]
        run = with_settings(spec, settings)
        return run, (self.resolved[spec] if run == spec else resolve_spec(run))

    def refusal(self, point: Point, spec: str) -> Optional[str]:
        """Why the router of ``spec`` refuses ``point`` by its declared precondition (``None``: it runs)."""
        bound = bind_router(spec)
        if bound.entry.requires is None:
            return None
        return bound.entry.refusal(_shape_only(point), bound.options)


def _shape_only(point: Point) -> RouterInput:
    """A router input with the point's sizes, k and capacity but no real logits (preconditions read only those)."""
    empty = torch.empty(0, point.tokens, point.experts)
    return RouterInput(empty, empty, point.k, expert_capacity(point.cf, point.k, point.tokens, point.experts), point.cf)


def _cf_values(value: Any) -> Any:
    """``"none"``/``"dropless"`` (any case) mean no capacity."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return [None if isinstance(v, str) and v.strip().lower() in ("none", "dropless") else v for v in items]


def _seed_values(where: str, value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise MoeRouteError(f"{where}: 'seeds' as a count must be >= 1, got {value}")
        return list(range(value))
    return value


def _canonical_routers(where: str, specs: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, str]]:
    """Bind every spec: canonical specs and their resolved forms; unknown routers and bad options fail here,
    named at once."""
    out, resolved, unknown, bad = [], {}, [], []
    known = set(router_names())
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip():
            raise MoeRouteError(f"{where}: 'routers' must be non-empty strings, got {spec!r}")
        name = parse_spec(spec)[0]
        if name not in known:
            unknown.append(name)
            continue
        try:
            bound = bind_router(spec)
        except MoeRouteError as exc:
            bad.append(f"{spec!r}: {exc}")
            continue
        out.append(bound.spec)
        resolved[bound.spec] = bound.resolved
    if unknown:
        raise MoeRouteError(
            f"{where}: unknown router(s) {', '.join(dict.fromkeys(unknown))} "
            f"(registered: {', '.join(sorted(known))}; a router from another file needs --plugin FILE)"
        )
    if bad:
        raise MoeRouteError(f"{where}: bad router spec(s): {'; '.join(bad)}")
    return tuple(dict.fromkeys(out)), resolved


def _grid(where: str, raw: dict, index: int) -> tuple[Grid, dict[str, str]]:
    """A typed, checked grid and its routers' resolved specs (``k_given`` is recorded on the side by the caller)."""
    raw = {"name": f"grid{index}", **raw}
    for key in ("routers", "workloads"):
        if key not in raw:
            raise MoeRouteError(f"{where}: missing {key!r}")
    name = raw["name"]
    if isinstance(name, str):
        where = f"{where} ({name.strip()})"
    if "cf" in raw:
        raw["cf"] = _cf_values(raw["cf"])
    if "seeds" in raw:
        raw["seeds"] = _seed_values(where, raw["seeds"])
    try:
        grid = build_options(Grid, raw, "a sweep grid")
    except MoeRouteError as exc:
        raise MoeRouteError(f"{where}: {exc}") from None
    routers, resolved = _canonical_routers(where, grid.routers)
    workloads = []
    for spec in grid.workloads:
        try:
            workloads.extend(expand_captured(spec) if isinstance(spec, str) else [spec])
        except MoeRouteError as exc:
            raise MoeRouteError(f"{where}: workload {spec!r}: {exc}") from None
    for spec in workloads:
        if not spec.strip():
            raise MoeRouteError(f"{where}: 'workloads' must be non-empty strings")
        try:
            check_workload(spec)
        except MoeRouteError as exc:
            raise MoeRouteError(f"{where}: workload {spec!r}: {exc}") from None
    fields = {**asdict(grid), "routers": routers, "workloads": tuple(dict.fromkeys(workloads)), "name": grid.name.strip()}
    return Grid(**fields), resolved


def _points(where: str, grid: Grid, notes: list[str], k_given: bool,
            settings: dict[str, RoutingSettings]) -> list[Point]:
    """The grid's points in run order (workload-major), with the checks that need the sizes (a captured file's
    header is read, not its logits). A captured file's recorded ``k`` replaces the default ``k`` of a grid that
    does not set one."""
    out = []
    for workload in grid.workloads:
        ks = grid.k
        if is_captured(workload):
            n, e = captured_shape(workload)
            experts_list: tuple[int, ...] = (e,)
            recorded = captured_settings(workload)
            if recorded is not None:
                settings[workload] = recorded
                if recorded.k is not None and not k_given:
                    ks = (recorded.k,)
        else:
            experts_list = grid.experts
        for tokens in grid.tokens:
            if is_captured(workload) and (note := leftover_note(workload, tokens)):
                notes.append(note)
            for groups in grid.groups:
                if is_captured(workload) and n // tokens < groups:
                    raise MoeRouteError(
                        f"{where} ({grid.name}): {workload} holds {n} tokens, "
                        f"too few for {groups} group(s) of {tokens}"
                    )
                for experts in experts_list:
                    for k in ks:
                        if k > experts:
                            raise MoeRouteError(f"{where} ({grid.name}): k={k} exceeds E={experts} ({workload})")
                        for cf in grid.cf:
                            for seed in grid.seeds:
                                out.append(Point(workload, groups, tokens, experts, k, cf, seed, grid.repeats, grid.solver,
                                                 grid.ep_ranks))
    return out


def load_config(path: str) -> SweepConfig:
    """Parse and validate a sweep config; every error names the file, the grid and the key."""
    file = Path(path)
    data = read_config_file(file)
    name = data.get("name", file.stem)
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\") or name.startswith("."):
        raise MoeRouteError(f"{path}: 'name' must be a plain file name, got {name!r}")
    grids_raw = data.get("grid")
    top = {key: value for key, value in data.items() if key not in ("name", "grid")}
    unknown = sorted(set(top) - set(GRID_KEYS))
    if unknown:
        raise MoeRouteError(f"{path}: unknown key {unknown[0]!r} (keys: name, grid, {', '.join(GRID_KEYS)})")
    if grids_raw is None:
        grids_raw = [{}]
    if not isinstance(grids_raw, list) or not grids_raw or not all(isinstance(g, dict) for g in grids_raw):
        raise MoeRouteError(f"{path}: 'grid' must be a non-empty list of tables")
    grids, resolved, k_given = [], {}, []
    for i, g in enumerate(grids_raw):
        grid, res = _grid(f"{path}: grid {i}", {**top, **g}, i)
        grids.append(grid)
        resolved.update(res)
        k_given.append("k" in top or "k" in g)
    names = [g.name for g in grids]
    if len(set(names)) != len(names):
        raise MoeRouteError(f"{path}: grid names repeat ({', '.join(names)})")
    points: list[tuple[str, Point, tuple[str, ...]]] = []
    seen: dict[Point, int] = {}
    notes: list[str] = []
    settings: dict[str, RoutingSettings] = {}
    for grid, given in zip(grids, k_given):
        for point in _points(f"{path}: grid", grid, notes, given, settings):
            if point in seen:  # the same logits in two grids: run the union of their routers once
                gname, p, routers = points[seen[point]]
                points[seen[point]] = (gname, p, tuple(dict.fromkeys(routers + grid.routers)))
            else:
                seen[point] = len(points)
                points.append((grid.name, point, grid.routers))
    return SweepConfig(name=name.strip(), path=str(file), grids=tuple(grids), points=tuple(points), resolved=resolved,
                       notes=tuple(dict.fromkeys(notes)), settings=settings)

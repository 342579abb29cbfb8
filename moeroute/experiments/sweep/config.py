"""Sweep configs (TOML or YAML): named grids of routers x workloads x sizes x seeds, validated up front.

A config holds ``name`` (the results file is ``<out>/<name>.csv``; default: the file's stem), optional defaults
for every grid at the top level, and a list ``grid`` of grids (TOML ``[[grid]]`` tables, a YAML list). Without a
``grid`` list the top level is the one grid. Keys of a grid (lists may be given as one scalar):

- ``name``      the grid's label in the results (default ``grid<i>``)
- ``routers``   router spec strings, e.g. ``"gshard"``, ``"maxscore:stage2=exact"`` (required)
- ``workloads`` workload specs, e.g. ``"skew"``, ``"hot:hot=2"``, ``"captured:logits.safetensors:layer3"`` (required)
- ``tokens``    tokens per group T (default ``[512]``)
- ``groups``    groups per point G (default ``[4]``)
- ``experts``   experts E (default ``[16]``; a ``captured:`` workload uses its file's E instead)
- ``k``         experts per token (default ``[2]``)
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
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from moeroute.core.config_files import read_config_file
from moeroute.core.errors import MoeRouteError
from moeroute.core.options import parse_spec
from moeroute.routers import bind_router, router_names
from moeroute.solvers import DEFAULT_SOLVER, SOLVERS
from moeroute.workloads import captured_tokens, check_workload, is_captured, parse_captured

GRID_KEYS = ("name", "routers", "workloads", "tokens", "groups", "experts", "k", "cf", "seeds", "repeats", "solver")
DEFAULTS: dict[str, Any] = {
    "tokens": [512], "groups": [4], "experts": [16], "k": [2], "cf": [1.0], "seeds": [0], "repeats": 5,
    "solver": DEFAULT_SOLVER,
}


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

    def row_key(self, router: str, device: str) -> str:
        """The resume key of one (point, router) row: a hash of the full configuration that produced it."""
        payload = json.dumps({**asdict(self), "router": router, "device": device}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]

    def label(self) -> str:
        cf = "none" if self.cf is None else f"{self.cf:g}"
        return f"{self.workload} G={self.groups} T={self.tokens} E={self.experts} k={self.k} cf={cf} seed={self.seed}"


@dataclass(frozen=True)
class Grid:
    name: str
    routers: tuple[str, ...]
    workloads: tuple[str, ...]
    tokens: tuple[int, ...]
    groups: tuple[int, ...]
    experts: tuple[int, ...]
    k: tuple[int, ...]
    cf: tuple[Optional[float], ...]
    seeds: tuple[int, ...]
    repeats: int
    solver: str


@dataclass(frozen=True)
class SweepConfig:
    name: str
    path: str
    grids: tuple[Grid, ...]
    points: tuple[tuple[str, Point, tuple[str, ...]], ...] = field(default=())
    """``(grid name, point, router specs)`` in run order, duplicates across grids removed."""

    def routers(self) -> list[str]:
        return sorted({r for g in self.grids for r in g.routers})


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _ints(where: str, key: str, value: Any, minimum: int) -> tuple[int, ...]:
    items = _as_list(value)
    if not items:
        raise MoeRouteError(f"{where}: {key!r} is empty")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item < minimum:
            raise MoeRouteError(f"{where}: {key!r} must be integers >= {minimum}, got {item!r}")
    return tuple(dict.fromkeys(items))


def _strings(where: str, key: str, value: Any) -> tuple[str, ...]:
    items = _as_list(value)
    if not items:
        raise MoeRouteError(f"{where}: {key!r} is empty")
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise MoeRouteError(f"{where}: {key!r} must be non-empty strings, got {item!r}")
    return tuple(dict.fromkeys(i.strip() for i in items))


def _cfs(where: str, value: Any) -> tuple[Optional[float], ...]:
    items = _as_list(value)
    if not items:
        raise MoeRouteError(f"{where}: 'cf' is empty")
    out: list[Optional[float]] = []
    for item in items:
        if item is None or (isinstance(item, str) and item.strip().lower() in ("none", "dropless")):
            out.append(None)
        elif isinstance(item, (int, float)) and not isinstance(item, bool) and item > 0 and math.isfinite(item):
            out.append(float(item))
        else:
            raise MoeRouteError(f"{where}: 'cf' must be numbers > 0 or \"none\", got {item!r}")
    return tuple(dict.fromkeys(out))


def _seeds(where: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise MoeRouteError(f"{where}: 'seeds' as a count must be >= 1, got {value}")
        return tuple(range(value))
    return _ints(where, "seeds", value, 0)


def _canonical_routers(where: str, specs: tuple[str, ...]) -> tuple[str, ...]:
    """Bind every spec and return canonical specs; unknown routers and bad options all fail here, named at once."""
    out, unknown, bad = [], [], []
    known = set(router_names())
    for spec in specs:
        name = parse_spec(spec)[0]
        if name not in known:
            unknown.append(name)
            continue
        try:
            out.append(bind_router(spec).spec)
        except MoeRouteError as exc:
            bad.append(f"{spec!r}: {exc}")
    if unknown:
        raise MoeRouteError(
            f"{where}: unknown router(s) {', '.join(dict.fromkeys(unknown))} "
            f"(registered: {', '.join(sorted(known))}; a router from another file needs --plugin FILE)"
        )
    if bad:
        raise MoeRouteError(f"{where}: bad router spec(s): {'; '.join(bad)}")
    return tuple(dict.fromkeys(out))


def _grid(where: str, raw: dict, index: int) -> Grid:
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise MoeRouteError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(GRID_KEYS)})")
    for key in ("routers", "workloads"):
        if key not in raw:
            raise MoeRouteError(f"{where}: missing {key!r}")
    name = raw.get("name", f"grid{index}")
    if not isinstance(name, str) or not name.strip():
        raise MoeRouteError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    where = f"{where} ({name})"
    repeats = raw["repeats"]
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise MoeRouteError(f"{where}: 'repeats' must be an integer >= 1, got {repeats!r}")
    solver = raw["solver"]
    if solver not in SOLVERS:
        raise MoeRouteError(f"{where}: unknown solver {solver!r} (known: {', '.join(SOLVERS)})")
    workloads = _strings(where, "workloads", raw["workloads"])
    for spec in workloads:
        try:
            check_workload(spec)
        except MoeRouteError as exc:
            raise MoeRouteError(f"{where}: workload {spec!r}: {exc}") from None
    return Grid(
        name=name.strip(),
        routers=_canonical_routers(where, _strings(where, "routers", raw["routers"])),
        workloads=workloads,
        tokens=_ints(where, "tokens", raw["tokens"], 1),
        groups=_ints(where, "groups", raw["groups"], 1),
        experts=_ints(where, "experts", raw["experts"], 1),
        k=_ints(where, "k", raw["k"], 1),
        cf=_cfs(where, raw["cf"]),
        seeds=_seeds(where, raw["seeds"]),
        repeats=repeats,
        solver=solver,
    )


def _points(where: str, grid: Grid) -> list[Point]:
    """The grid's points in run order (workload-major), with the checks that need the sizes."""
    out = []
    for workload in grid.workloads:
        if is_captured(workload):
            data = captured_tokens(*parse_captured(workload))
            experts_list: tuple[int, ...] = (int(data.shape[1]),)
        else:
            experts_list = grid.experts
        for tokens in grid.tokens:
            for groups in grid.groups:
                if is_captured(workload) and data.shape[0] // tokens < groups:
                    raise MoeRouteError(
                        f"{where} ({grid.name}): {workload} holds {data.shape[0]} tokens, "
                        f"too few for {groups} group(s) of {tokens}"
                    )
                for experts in experts_list:
                    for k in grid.k:
                        if k > experts:
                            raise MoeRouteError(f"{where} ({grid.name}): k={k} exceeds E={experts} ({workload})")
                        for cf in grid.cf:
                            for seed in grid.seeds:
                                out.append(Point(workload, groups, tokens, experts, k, cf, seed, grid.repeats, grid.solver))
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
    grids = [_grid(f"{path}: grid {i}", {**DEFAULTS, **top, **g}, i) for i, g in enumerate(grids_raw)]
    names = [g.name for g in grids]
    if len(set(names)) != len(names):
        raise MoeRouteError(f"{path}: grid names repeat ({', '.join(names)})")
    points: list[tuple[str, Point, tuple[str, ...]]] = []
    seen: dict[Point, int] = {}
    for grid in grids:
        for point in _points(f"{path}: grid", grid):
            if point in seen:  # the same logits in two grids: run the union of their routers once
                gname, p, routers = points[seen[point]]
                points[seen[point]] = (gname, p, tuple(dict.fromkeys(routers + grid.routers)))
            else:
                seen[point] = len(points)
                points.append((grid.name, point, grid.routers))
    return SweepConfig(name=name.strip(), path=str(file), grids=tuple(grids), points=tuple(points))

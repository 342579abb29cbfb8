"""What code produced a result: the package version (from the installed package's metadata, the one source of
truth being ``pyproject.toml``) and a fingerprint of the source that computes routings and metrics."""

from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
RESULT_FREE = ("experiments/report", "experiments/commands", "train", "capture")
"""Subtrees (relative to the package) whose code never changes a sweep row: editing the report or the trainer does
not make measured rows stale."""


@lru_cache(maxsize=1)
def package_version() -> str:
    """The installed version of ``moeroute`` (``0+unknown`` when run from a source tree that was never installed)."""
    try:
        return metadata.version("moeroute")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A 12-hex-digit hash of the package's Python source, excluding :data:`RESULT_FREE`: two runs share it iff
    they ran the same routing, solver, metric and sweep code (whatever git says, a dirty tree included)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        rel = path.relative_to(PACKAGE_ROOT).as_posix()
        if any(rel.startswith(prefix + "/") for prefix in RESULT_FREE):
            continue
        digest.update(rel.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


@lru_cache(maxsize=1)
def git_revision() -> str:
    """``<commit>`` or ``<commit>+dirty`` of the source tree, or ``""`` outside a git checkout (informational: rows
    are matched by :func:`code_fingerprint`)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=5,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""

"""The results CSV of a sweep, written so that killing the process at any moment never corrupts it.

Why whole-file replace rather than append: each finished point rewrites the complete CSV to a temp file in the
same folder, fsyncs it and ``os.replace``s it over the old one (then fsyncs the folder). A rename is atomic on
POSIX and Windows, so every reader (pandas, a spreadsheet, the resume logic) sees either the old complete file
or the new complete file, never a torn line, and needs no special tolerance. Append-with-fsync would be O(1) per
point instead of O(rows), but leaves a torn last line after a kill that every reader must know to drop, and
cannot change the header when a later run adds a column. A sweep writes thousands of rows, not millions: the
rewrite costs milliseconds. A lock file keeps two runs of the same sweep from interleaving their rewrites.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Iterable, Optional

from moeroute.core.errors import MoeRouteError

try:  # POSIX advisory lock; without fcntl (Windows) two concurrent runs are simply not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

KEY = "key"


def read_rows(path: "str | Path") -> list[dict[str, str]]:
    """The rows of a results CSV as dicts of strings (an absent file has none)."""
    file = Path(path)
    if not file.exists():
        return []
    try:
        with open(file, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MoeRouteError(f"{path}: cannot read results CSV ({type(exc).__name__}: {exc})") from None
    if rows and (reader.fieldnames is None or KEY not in reader.fieldnames):
        raise MoeRouteError(f"{path}: not a moeroute results CSV (no {KEY!r} column)")
    return rows


class ResultStore:
    """Rows of one sweep, keyed by their resume key; :meth:`add` persists atomically."""

    def __init__(self, path: "str | Path", columns: Iterable[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns = list(columns)
        self._lock_fh: Optional[Any] = None
        self._lock()
        self._clean_partials()
        self.rows: dict[str, dict[str, Any]] = {}
        for row in read_rows(self.path):
            self.rows[row[KEY]] = row
            for col in row:
                if col not in self.columns:
                    self.columns.append(col)

    def _lock(self) -> None:
        if fcntl is None:
            return
        self._lock_fh = open(self.path.with_name(self.path.name + ".partial.lock"), "w")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_fh.close()
            self._lock_fh = None
            raise MoeRouteError(f"another moeroute run is writing {self.path}") from None

    def _clean_partials(self) -> None:
        """Remove temp files a killed run left behind (we hold the lock, so none is being written)."""
        for tmp in self.path.parent.glob(self.path.name + ".partial.*"):
            if not tmp.name.endswith(".lock"):
                tmp.unlink(missing_ok=True)

    def close(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()
            Path(self._lock_fh.name).unlink(missing_ok=True)
            self._lock_fh = None

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def done(self) -> set[str]:
        """Keys of the rows that finished without an error (rows with an error are retried on a re-run)."""
        return {key for key, row in self.rows.items() if not row.get("error")}

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Add (or replace, by key) ``rows`` and rewrite the CSV atomically."""
        for row in rows:
            self.rows[row[KEY]] = row
            for col in row:
                if col not in self.columns:
                    self.columns.append(col)
        tmp = self.path.with_name(f"{self.path.name}.partial.{os.getpid()}")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows.values())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

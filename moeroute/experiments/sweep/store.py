"""Where a sweep's rows live, written so that a kill at any moment loses at most the point in flight and a reader
never sees a torn file, at a cost per finished point proportional to the rows it adds.

Layout, for a sweep named ``NAME`` in folder ``out``::

    out/NAME.csv              the table users read (pandas, a spreadsheet, ``moeroute report``)
    out/NAME.parts/*.csv      one file per finished point, written atomically; folded into NAME.csv at the end
    out/NAME.csv.damaged      rows found damaged (file, line and the raw text), moved aside; they are re-run
    out/NAME.lock             held by the one run writing this sweep

Why segments: rewriting the whole CSV after every point costs O(rows already written) per point, which is fine at
a thousand rows and not at a million. A segment is a small complete CSV written by :func:`atomic_open` (temp file,
fsync, rename), so it is either absent or whole. Compaction (merge the table and the segments into a new table,
atomically, then delete the segments) runs once at the end of a run and when a run starts after a killed one;
:func:`read_results` reads the table and any segments alike, so readers never need to know.

Every row carries ``row_sha``, a hash of its other fields: a row cut short or edited outside the program (a
truncated last line, a NUL byte, a wrong field count) fails the check and is moved aside, named by file and line,
instead of being trusted or crashing a reader.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path
from typing import Any, Iterable, Optional

from moeroute.core.atomic import atomic_open, clean_partials, fsync_dir
from moeroute.core.errors import MoeRouteError

try:  # POSIX advisory lock; without fcntl (Windows) two concurrent runs are simply not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

KEY = "key"
CHECKSUM = "row_sha"


def row_checksum(row: dict[str, Any], columns: Iterable[str]) -> str:
    """A 12-hex-digit hash of a row's fields (every column but the checksum, in order, as written)."""
    digest = hashlib.sha1()
    for col in columns:
        if col == CHECKSUM:
            continue
        digest.update(col.encode())
        digest.update(b"=")
        digest.update(_text(row.get(col, "")).encode())
        digest.update(b"\x1f")
    return digest.hexdigest()[:12]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def parts_dir(table: Path) -> Path:
    return table.with_name(table.stem + ".parts")


def damaged_path(table: Path) -> Path:
    return table.with_name(table.name + ".damaged")


class Damaged(list):
    """``(file, line number, reason, raw text)`` of each damaged row found while reading."""


def _read_file(path: Path, damaged: Damaged) -> tuple[list[str], list[dict[str, str]]]:
    """Header and the good rows of one CSV file; damaged rows go to ``damaged``. Rows hold no newlines (the sweep
    writes one line per row), so each physical line is parsed on its own and one bad line cannot hide others."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        return [], []
    try:
        header = next(csv.reader([lines[0].decode("utf-8").rstrip("\r")]))
    except (UnicodeDecodeError, csv.Error):
        header = []
    if KEY not in header:
        raise MoeRouteError(f"{path}: not a moeroute results CSV (no {KEY!r} column in its first line)")
    rows = []
    for number, raw in enumerate(lines[1:], start=2):
        reason = _damage(raw, header)
        if reason is None:
            fields = next(csv.reader([raw.decode("utf-8").rstrip("\r")]))
            row = dict(zip(header, fields))
            if CHECKSUM in header and row.get(CHECKSUM) != row_checksum(row, header):
                reason = "checksum mismatch (cut short or edited)"
            else:
                rows.append(row)
                continue
        damaged.append((str(path), number, reason, raw.decode("utf-8", errors="replace")))
    return header, rows


def _damage(raw: bytes, header: list[str]) -> Optional[str]:
    """Why a line cannot be a row of ``header`` (``None``: it parses with the right number of fields)."""
    if b"\0" in raw:
        return "contains a NUL byte"
    try:
        text = raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        return "not UTF-8"
    if not text.strip():
        return "empty line"
    try:
        fields = next(csv.reader([text]))
    except csv.Error as exc:
        return f"unparsable ({exc})"
    if len(fields) != len(header):
        return f"{len(fields)} fields, the header has {len(header)}"
    if not fields[header.index(KEY)]:
        return "no key"
    return None


def _segments(table: Path) -> list[Path]:
    folder = parts_dir(table)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.csv") if ".partial." not in p.name)


def read_results(path: "str | Path", damaged: Optional[Damaged] = None) -> list[dict[str, str]]:
    """Every good row of a sweep's results (the table and any segments a run has not folded in yet), later rows
    replacing earlier ones with the same key. Damaged rows are skipped (and listed in ``damaged``)."""
    table = Path(path)
    damaged = Damaged() if damaged is None else damaged
    rows: dict[str, dict[str, str]] = {}
    files = ([table] if table.exists() else []) + _segments(table)
    for file in files:
        try:
            _, found = _read_file(file, damaged)
        except OSError as exc:
            raise MoeRouteError(f"{file}: cannot read results ({exc.strerror or exc})") from None
        for row in found:
            rows[row[KEY]] = row
    return list(rows.values())


def results_frame(path: "str | Path") -> "Any":
    """The results as a pandas DataFrame (strings parsed as numbers where they are), however they are stored."""
    import pandas as pd

    rows = read_results(path)
    if not rows:
        return pd.DataFrame()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(c for r in rows for c in r)), restval="")
    writer.writeheader()
    writer.writerows(rows)
    buffer.seek(0)
    return pd.read_csv(buffer, keep_default_na=False, na_values=[""])


class ResultStore:
    """The rows of one sweep, keyed by their resume key; :meth:`add` persists a finished point as one segment."""

    def __init__(self, path: "str | Path", columns: Iterable[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns = [c for c in columns if c != CHECKSUM] + [CHECKSUM]
        self._lock_fh: Optional[Any] = None
        self._lock()
        clean_partials(self.path)
        folder = parts_dir(self.path)
        if folder.is_dir():
            for tmp in folder.glob("*.partial.*"):
                tmp.unlink(missing_ok=True)
        self.damaged = Damaged()
        self.rows: dict[str, dict[str, Any]] = {r[KEY]: r for r in read_results(self.path, self.damaged)}
        for row in self.rows.values():
            for col in row:
                if col not in self.columns:
                    self.columns.insert(len(self.columns) - 1, col)
        self._next = len(_segments(self.path))
        if self.damaged:
            self._move_damaged_aside()
        if self.damaged or folder.is_dir():
            self.compact()

    def _lock(self) -> None:
        if fcntl is None:
            return
        self._lock_fh = open(self.path.with_name(self.path.stem + ".lock"), "w")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_fh.close()
            self._lock_fh = None
            raise MoeRouteError(f"another moeroute run is writing {self.path}") from None

    def _move_damaged_aside(self) -> None:
        """Append the damaged rows to ``NAME.csv.damaged`` (file, line, reason, raw text): nothing is thrown away."""
        target = damaged_path(self.path)
        with open(target, "a", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            if fh.tell() == 0:
                writer.writerow(["file", "line", "reason", "raw"])
            writer.writerows(self.damaged)
            fh.flush()
            os.fsync(fh.fileno())

    def close(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()
            Path(self._lock_fh.name).unlink(missing_ok=True)
            self._lock_fh = None

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if _segments(self.path):
                self.compact()
        finally:
            self.close()

    def _sealed(self, row: dict[str, Any]) -> dict[str, str]:
        out = {col: _text(row.get(col, "")) for col in self.columns if col != CHECKSUM}
        out[CHECKSUM] = row_checksum(out, self.columns)
        return out

    def add(self, rows: list[dict[str, Any]]) -> Path:
        """Persist ``rows`` (a finished point) as one new segment; returns its path. Cost: the rows added."""
        for row in rows:
            for col in row:
                if col not in self.columns:
                    self.columns.insert(len(self.columns) - 1, col)
        sealed = [self._sealed(row) for row in rows]
        folder = parts_dir(self.path)
        folder.mkdir(exist_ok=True)
        segment = folder / f"{self._next:08d}-{os.getpid()}.csv"
        self._next += 1
        with atomic_open(segment, "w") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, restval="", extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(sealed)
        for row in sealed:
            self.rows[row[KEY]] = row
        return segment

    def compact(self) -> None:
        """Fold every segment into the table (one atomic rewrite), then delete the segments."""
        segments = _segments(self.path)
        with atomic_open(self.path, "w") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, restval="", extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(self._sealed(row) for row in self.rows.values())
        for segment in segments:
            segment.unlink(missing_ok=True)
        folder = parts_dir(self.path)
        if folder.is_dir():
            try:
                folder.rmdir()
            except OSError:  # a segment written by a run we do not know of: leave it for the next reader
                pass
            fsync_dir(self.path.parent)

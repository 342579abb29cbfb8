"""Where a sweep's rows live, written so that a kill at any moment loses at most the points in flight and a reader
never sees a torn file, at a cost per finished point proportional to the rows it adds.

Layout, for a sweep named ``NAME`` in folder ``out``::

    out/NAME.csv              the table users read (pandas, a spreadsheet, ``moeroute report``)
    out/NAME.parts/*.csv      one file per finished point, written atomically; folded into NAME.csv at the end
    out/NAME.csv.damaged      rows found damaged (file, line and the raw text), moved aside; they are re-run
    out/NAME.lock             held by the one run writing this sweep

Why segments: rewriting the whole CSV after every point costs O(rows already written) per point, which is fine at
a thousand rows and not at a million (measured in benchmarks/PERF.md). A segment is a small complete CSV written by
:func:`atomic_open` (temp file, fsync, rename), so it is either absent or whole. Compaction (stream the table and
the segments into a new table, atomically, then delete the segments) runs once at the end of a run and when a run
starts after a killed one; :func:`read_results` reads the table and any segments alike, so readers never need to
know.

Every row carries ``row_sha``, a hash of its other fields: a row cut short or edited outside the program (a
truncated last line, a NUL byte, a wrong field count) fails the check and is moved aside, named by file and line,
instead of being trusted or crashing a reader.

Memory: the writer keeps only an index (key -> errored?, code fingerprint) of the stored rows, not the rows, and
compaction streams lines from file to file, so a table of a million rows costs the index, not the table.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, NamedTuple, Optional

from moeroute.core.atomic import atomic_open, clean_partials, fsync_dir
from moeroute.core.errors import MoeRouteError

try:  # POSIX advisory lock; without fcntl (Windows) two concurrent runs are simply not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

KEY = "key"
CHECKSUM = "row_sha"


def row_checksum(row: dict[str, Any], columns: Iterable[str]) -> str:
    """A 12-hex-digit hash of a row's fields: SHA-1 of ``col=value\\x1f`` for every column but the checksum, in
    order, as written (one joined buffer: the same digest as feeding the pieces one by one, several times faster)."""
    text = "".join(f"{col}={_text(row.get(col, ''))}\x1f" for col in columns if col != CHECKSUM)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _fields_checksum(header: list[str], fields: list[str]) -> str:
    """:func:`row_checksum` of a parsed line (header and fields in file order)."""
    text = "".join(f"{col}={value}\x1f" for col, value in zip(header, fields) if col != CHECKSUM)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def parts_dir(table: Path) -> Path:
    return table.with_name(table.stem + ".parts")


def damaged_path(table: Path) -> Path:
    return table.with_name(table.name + ".damaged")


class Damaged(list):
    """``(file, line number, reason, raw text)`` of each damaged row found while reading."""


class Line(NamedTuple):
    """One good row of a results file: its line number, raw bytes (no newline) and parsed fields."""

    number: int
    raw: bytes
    fields: list[str]


def _header(path: Path, first: bytes) -> list[str]:
    try:
        header = next(csv.reader([first.decode("utf-8").rstrip("\r")]))
    except (UnicodeDecodeError, csv.Error, StopIteration):
        header = []
    if KEY not in header:
        raise MoeRouteError(f"{path}: not a moeroute results CSV (no {KEY!r} column in its first line)")
    return header


def _scan(path: Path, damaged: Damaged) -> tuple[list[str], Iterator[Line]]:
    """Header and an iterator over the good rows of one CSV file, streamed line by line; damaged rows go to
    ``damaged``. Rows hold no newlines (the sweep writes one line per row), so each physical line is parsed on its
    own and one bad line cannot hide others."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise MoeRouteError(f"{path}: cannot read results ({exc.strerror or exc})") from None
    header, raw_lines = _raw_lines(path, fh)

    def lines() -> Iterator[Line]:
        for number, raw in raw_lines:
            fields, reason = _parse(raw, header)
            if fields is not None:
                yield Line(number, raw, fields)
            else:
                damaged.append((str(path), number, reason, raw.decode("utf-8", errors="replace")))

    return header, lines()


def _raw_lines(path: Path, fh: BinaryIO) -> tuple[list[str], Iterator[tuple[int, bytes]]]:
    """The header of the CSV file open in ``fh`` and an iterator over its other lines as (line number, bytes
    without the newline), which closes ``fh`` when done; an empty file has no header and no lines."""
    first = fh.readline()
    if not first:
        fh.close()
        return [], iter(())
    header = _header(path, first.rstrip(b"\n"))

    def lines() -> Iterator[tuple[int, bytes]]:
        with fh:
            for number, raw in enumerate(fh, start=2):
                yield number, raw[:-1] if raw.endswith(b"\n") else raw

    return header, lines()


def _parse(raw: bytes, header: list[str]) -> tuple[Optional[list[str]], str]:
    """The fields of a line of ``header``, or ``(None, why it cannot be a row)``."""
    if b"\0" in raw:
        return None, "contains a NUL byte"
    try:
        text = raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        return None, "not UTF-8"
    if not text.strip():
        return None, "empty line"
    try:
        fields = next(csv.reader([text]))
    except csv.Error as exc:
        return None, f"unparsable ({exc})"
    if len(fields) != len(header):
        return None, f"{len(fields)} fields, the header has {len(header)}"
    if not fields[header.index(KEY)]:
        return None, "no key"
    if CHECKSUM in header and fields[header.index(CHECKSUM)] != _fields_checksum(header, fields):
        return None, "checksum mismatch (cut short or edited)"
    return fields, ""


def _segments(table: Path) -> list[Path]:
    folder = parts_dir(table)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.csv") if ".partial." not in p.name)


def _files(table: Path) -> list[Path]:
    return ([table] if table.exists() else []) + _segments(table)


def read_results(path: "str | Path", damaged: Optional[Damaged] = None) -> list[dict[str, str]]:
    """Every good row of a sweep's results (the table and any segments a run has not folded in yet), later rows
    replacing earlier ones with the same key. Damaged rows are skipped (and listed in ``damaged``)."""
    table = Path(path)
    damaged = Damaged() if damaged is None else damaged
    rows: dict[str, dict[str, str]] = {}
    for file in _files(table):
        header, lines = _scan(file, damaged)
        key = header.index(KEY) if header else 0
        for line in lines:
            rows[line.fields[key]] = dict(zip(header, line.fields))
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


class Done(NamedTuple):
    """What the writer remembers of a stored row: whether it errored and which code measured it."""

    error: bool
    code: str


class ResultStore:
    """The rows of one sweep, indexed by their resume key; :meth:`add` persists a finished point as one segment.

    ``rows`` maps each stored key to :class:`Done` (not the row itself: see the module docstring on memory)."""

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
        self.rows: dict[str, Done] = {}
        self._pending: list[Path] = []  # segments not folded into the table yet (a killed run's, then ours)
        for file in _files(self.path):
            self._index(file)
            if file != self.path:
                self._pending.append(file)
        self._next = len(self._pending)
        self._skip: dict[str, set[int]] = {}  # file -> damaged line numbers, left out by the next compaction
        for file, line, _, _ in self.damaged:
            self._skip.setdefault(file, set()).add(line)
        if self.damaged:
            self._move_damaged_aside()
        if self.damaged or folder.is_dir():
            self.compact()

    def _index(self, file: Path) -> None:
        header, lines = _scan(file, self.damaged)
        for col in header:
            if col not in self.columns:
                self.columns.insert(len(self.columns) - 1, col)
        at = {name: header.index(name) for name in (KEY, "error", "code") if name in header}
        codes: dict[str, str] = {}
        for line in lines:
            code = line.fields[at["code"]] if "code" in at else ""
            code = codes.setdefault(code, sys.intern(code))  # one string per fingerprint, not one per row
            self.rows[line.fields[at[KEY]]] = Done(bool(line.fields[at["error"]]) if "error" in at else False, code)

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
            if self._pending:
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
        self._pending.append(segment)
        for row in sealed:
            self.rows[row[KEY]] = Done(bool(row.get("error")), sys.intern(row.get("code", "")))
        return segment

    def compact(self) -> None:
        """Fold every segment into the table (one atomic rewrite, streamed line by line), then delete the segments.

        Later rows replace earlier ones with the same key. A file whose header is the current one is copied line
        for line; rows of a file with other columns (a column added since) are re-sealed under the new header.
        Damaged lines found when the store opened are left out (they were moved aside). Files are not re-hashed:
        the table was checked when the store opened and the segments were written by it (the lock keeps other
        writers out)."""
        files = _files(self.path)
        first_segment = 1 if files and files[0] == self.path else 0
        last: dict[str, tuple[int, int]] = {}  # key -> (file index, line number) of its last occurrence in a segment
        for i in range(first_segment, len(files)):
            header, lines = _unchecked(files[i], self._skip.get(str(files[i]), set()))
            at = header.index(KEY) if header else 0
            for line in lines:
                last[line.fields[at]] = (i, line.number)
        with atomic_open(self.path, "wb") as out:
            out.write(self._header_bytes())
            for i, file in enumerate(files):
                self._copy(file, i, out, last)
        for segment in files[first_segment:]:
            segment.unlink(missing_ok=True)
        self._pending = []
        self._skip = {}  # line numbers of the old table: they mean nothing in the new one
        folder = parts_dir(self.path)
        if folder.is_dir():
            try:
                folder.rmdir()
            except OSError:  # a segment written by a run we do not know of: leave it for the next reader
                pass
            fsync_dir(self.path.parent)

    def _header_bytes(self) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(self.columns)
        return buffer.getvalue().encode()

    def _copy(self, file: Path, index: int, out: Any, last: dict[str, tuple[int, int]]) -> None:
        """Append the good rows of ``file`` (the ``index``-th file read) that no later file replaces to ``out``."""
        header, lines = _unchecked(file, self._skip.get(str(file), set()))
        if not header:
            return
        at = header.index(KEY)
        same = header == self.columns
        for line in lines:
            where = last.get(line.fields[at])
            if where is not None and where != (index, line.number):
                continue  # a later segment holds this key
            if same:
                out.write(line.raw + b"\n")
            else:
                buffer = io.StringIO()
                row = self._sealed(dict(zip(header, line.fields)))
                csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n").writerow(row)
                out.write(buffer.getvalue().encode())


def _unchecked(path: Path, skip: set[int]) -> tuple[list[str], Iterator[Line]]:
    """Header and rows of a file this store has already checked (at open, or written itself): parsed, not
    re-hashed; the line numbers in ``skip`` (damaged, moved aside) are left out."""
    header, raw_lines = _raw_lines(path, open(path, "rb"))
    lines = (Line(number, raw, next(csv.reader([raw.decode("utf-8")]))) for number, raw in raw_lines if number not in skip)
    return header, lines

"""One atomic file writer: every file the project writes (results, reports, figures, checkpoints, captures) goes
through it, so a reader never sees a half-written file and a kill at any moment leaves the old file or the new one.

The data goes to a temporary file in the same folder, is flushed and fsynced, then ``os.replace``d over the target
(atomic on POSIX and Windows); the folder is fsynced so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Any, Callable, Iterator

TMP_MARK = ".partial."
"""Temporary files are ``<name>.partial.<pid>``; :func:`clean_partials` removes those a killed run left."""


def fsync_dir(folder: "str | Path") -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: "str | Path", mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``with atomic_open(path, "w") as fh: ...`` writes ``path`` atomically (``mode`` ``"w"`` or ``"wb"``; text
    files default to UTF-8 and ``newline=""``). On an exception the temporary file is removed and ``path`` is
    untouched."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}{TMP_MARK}{os.getpid()}")
    if mode == "w":
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "")
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write_text(path: "str | Path", text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: "str | Path", data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_save(path: "str | Path", save: Callable[[Any], None]) -> None:
    """Run ``save(file_object)`` (e.g. ``lambda f: torch.save(obj, f)`` or ``lambda f: fig.savefig(f, format="png")``)
    into a temporary file and move it over ``path``."""
    with atomic_open(path, "wb") as fh:
        save(fh)


def clean_partials(target: "str | Path") -> None:
    """Remove the temporary files of ``target`` that a killed writer left (call while holding the target's lock)."""
    target = Path(target)
    for tmp in target.parent.glob(target.name + TMP_MARK + "*"):
        if not tmp.name.endswith(".lock"):
            tmp.unlink(missing_ok=True)

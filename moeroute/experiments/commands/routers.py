"""``moeroute routers``: list the registered routers.

The listing is cached per source fingerprint (the hash of the package's routing code,
:func:`moeroute.core.version.code_fingerprint`), so a repeated call does not pay for importing torch and every
router module: any edit of the code makes a new cache entry. With ``--plugin`` the cache is bypassed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional

from moeroute.core.version import code_fingerprint

NAME = "routers"
HELP = "list the registered routers with their options"
TITLE = "moeroute routers (every router also takes weights=, renormalize=, temperature=)"
COLUMNS = ("router", "what it does", "options (defaults)", "from")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plain", action="store_true", help="one line per router, no table")


def cache_file() -> Optional[Path]:
    """Where this code's listing is cached (``$XDG_CACHE_HOME/moeroute`` or ``~/.cache/moeroute``), or ``None``
    when caching is off (``MOEROUTE_NO_CACHE=1``)."""
    if os.environ.get("MOEROUTE_NO_CACHE"):
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "moeroute" / f"routers-{code_fingerprint()}.json"


def listing_rows() -> list[tuple[str, str, str, str]]:
    """``(name, description, options with defaults, source)`` of every registered router."""
    from moeroute.experiments.listing import defaults_text
    from moeroute.routers import router_entry, router_names

    rows = []
    for name in router_names():
        entry = router_entry(name)
        rows.append((name, entry.description, defaults_text(entry.options), entry.source))
    return rows


def run(args: argparse.Namespace) -> int:
    from moeroute.experiments.listing import print_listing

    cached = None if args.plugin else cache_file()
    rows = None
    if cached is not None and cached.is_file():
        try:
            rows = [tuple(r) for r in json.loads(cached.read_text(encoding="utf-8"))]
        except (OSError, ValueError):
            rows = None
    if rows is None:
        rows = listing_rows()
        if cached is not None:
            try:
                from moeroute.core.atomic import atomic_write_text

                atomic_write_text(cached, json.dumps(rows))
            except OSError:  # a read-only home: list without caching
                pass
    print_listing(rows, TITLE, COLUMNS, args.plain)
    return 0

"""Print a registry listing (routers, workloads): one line each with ``--plain``, else a rich table."""

from __future__ import annotations

from typing import Any, Sequence

from moeroute.core.options import options_table


def defaults_text(options: type) -> str:
    """``name=default, ...`` of an options dataclass."""
    return ", ".join(f"{n}={d}" for n, _, d in options_table(options))


def print_listing(
    rows: Sequence[tuple[str, str, str, str]], title: str, columns: Sequence[str], plain: bool, **table_kw: Any
) -> None:
    """``rows`` are ``(name, description, options, details)``."""
    if plain:
        for name, desc, opts, _ in rows:
            print(f"{name}: {desc}" + (f" [{opts}]" if opts else ""))
        return
    from rich.console import Console  # only the table needs rich
    from rich.table import Table

    table = Table(title=title, **table_kw)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)

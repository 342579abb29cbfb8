"""One Markdown and plot style for every report the project writes (``moeroute report``, the training report):
the same table layout, the same colours for the same routers, the same figure look, files written atomically.

matplotlib is imported only inside the functions that draw, so importing this module costs nothing.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from moeroute.core.atomic import atomic_write_bytes

PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22",
    "#393b79", "#843c39",
)
"""Distinct colours (tab10, then two dark ones), assigned in a fixed order so a router keeps its colour."""
MARKERS = "osD^v<>phX*P"
LINESTYLES = ("-", "--", "-.", ":")
DPI = 110


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Optional[str] = None) -> str:
    """A GitHub Markdown table. ``align`` has one character per column, ``l`` or ``r`` (default: the first column
    left, the others right). Cells are written as given (``None`` becomes ``-``); ``|`` inside a cell is escaped."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} has {len(align)} columns, the header {len(header)}")

    def cell(value: Any) -> str:
        return "-" if value is None else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: Any, digits: int = 3, percent: bool = False) -> str:
    """A number for a table: fixed digits, ``%`` when asked (value is a fraction), ``-`` for missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if percent:
        return f"{100 * float(value):.{digits}f}%"
    return f"{float(value):.{digits}f}"


class SeriesStyle:
    """Colour, marker and line style per series name, fixed by first appearance: the same router looks the same in
    every figure of a report."""

    def __init__(self, names: Iterable[str] = ()):
        self._order: dict[str, int] = {}
        for name in names:
            self.index(name)

    def index(self, name: str) -> int:
        return self._order.setdefault(name, len(self._order))

    def __call__(self, name: str) -> dict[str, Any]:
        i = self.index(name)
        return {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)],
                "linestyle": LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)]}


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend with the project's look (reports are built on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.dpi": DPI, "savefig.dpi": DPI, "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9,
        "legend.fontsize": 8, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
        "axes.spines.right": False,
    })
    return plt


def save_figure(fig: Any, path: "str | Path") -> Path:
    """Write ``fig`` as PNG to ``path`` atomically, then close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
    pyplot().close(fig)
    return Path(path)

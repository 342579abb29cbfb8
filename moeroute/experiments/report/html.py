"""``REPORT.html``: the Markdown report as one self-contained page (figures inlined as base64), to open or mail
without the folder. Rendered with markdown-it-py (a dependency of rich, which moeroute requires)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from moeroute.core.atomic import atomic_write_text

STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #1f2328; line-height: 1.45; font-size: 14px; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 12.5px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfbfc; }
code { background: #f0f1f3; padding: 0 3px; border-radius: 3px; font-size: 90%; }
img { max-width: 100%; }
blockquote { color: #57606a; border-left: 3px solid #d0d7de; margin-left: 0; padding-left: 1em; }
"""


def render(markdown: str, folder: Path) -> str:
    """The HTML page of ``markdown``; every ``<img src="NAME.png">`` found in ``folder`` becomes a data URI."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)

    def inline(match: re.Match) -> str:
        path = folder / match.group(1)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"/]+\.png)"', inline, body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>moeroute report</title>"
            f"<style>{STYLE}</style></head><body>\n{body}</body></html>\n")


def write_html(markdown: str, folder: Path, path: Path) -> Path:
    atomic_write_text(path, render(markdown, folder))
    return path

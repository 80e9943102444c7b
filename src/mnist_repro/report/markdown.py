"""Markdown and number formatting shared by the report's sections (and precision.py)."""

from __future__ import annotations

import os
from pathlib import Path


def _cell(value) -> str:
    return "–" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    """numeric: column indices to right-align; None shows as "–"."""
    align = ["---:" if i in numeric else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def signed(value: float | None) -> str | None:
    return None if value is None else f"{value:+.2f}"


def pair(ours, published, fmt=str) -> str:
    return " / ".join("–" if v is None else fmt(v) for v in (ours, published))


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{seconds / 60:.1f} min"


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def names(items) -> str:
    """`a`, `b` and `c`; "none" for no items."""
    items = [f"`{i}`" for i in items]
    return "none" if not items else items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def link(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target, start)).as_posix()

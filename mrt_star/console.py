"""Progress bars and closing summary tables, the same look for every stage (rich)."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

# Not a terminal (a log file, CI): rich would cut tables at 80 columns ("first-attem…"); give them room.
console = Console(stderr=True, width=None if sys.stderr.isatty() or os.environ.get("COLUMNS") else 200)


def quiet_library_progress() -> None:
    """Hide other libraries' progress bars inside ours: transformers' per-load "Loading weights" bar and the
    per-map bars of `datasets`. MRT_STAR_LIBRARY_PROGRESS=1 brings them back (Hub download bars stay)."""
    if os.environ.get("MRT_STAR_LIBRARY_PROGRESS", "0") not in ("", "0"):
        return
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is imported
    if "transformers" in sys.modules or importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def stage_progress(*extra_columns: Any) -> Progress:
    """Return a rich Progress for a long stage (bar, count, elapsed, remaining, plus extra columns)."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), *extra_columns, TextColumn("{task.fields[info]}"), console=console,
        transient=False,
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summary_table(title: str, rows: dict[str, Any] | Iterable[tuple[str, Any]]) -> Table:
    """Print and return a two-column table of a stage's closing numbers."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for key, value in (rows.items() if isinstance(rows, dict) else rows):
        table.add_row(str(key), _fmt(value))
    console.print(table)
    return table


def comparison_table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    """Print and return a table with a header row (e.g. one row per model or per round)."""
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    console.print(table)
    return table

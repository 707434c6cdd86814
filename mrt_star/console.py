"""Progress bars and closing summary tables, the same look for every stage (rich)."""

from __future__ import annotations

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

console = Console(stderr=True)


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

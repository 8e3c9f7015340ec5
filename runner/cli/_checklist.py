"""The pre-flight report as a checklist on stderr: one line per item, its mark, its numbers.

On a terminal the items are a grid whose last column wraps under itself, so a long detail
stays readable in 80 columns; piped (scripts, CI logs, tests) each item is exactly one
plain line, so it can be grepped. Colour only marks the status (rich drops it under
``NO_COLOR`` and when piped); the marks carry it without colour: ``✓`` ok, ``!`` warning,
``✗`` failed, ``-`` skipped (``ok``/``!``/``x``/``-`` where the stream cannot encode them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from runner.cli._app import app

if TYPE_CHECKING:
    from runner.launch.preflight import Item, Report

_MARKS = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "-"}
_ASCII = {"ok": "+", "warn": "!", "fail": "x", "skip": "-"}
_STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}
_WHERE = {"local": "this machine", "docker": "the local Docker engine", "vast": "a rented host"}
_TITLE_WIDTH = 10


def show_checklist(report: Report) -> None:
    """Print ``report`` on stderr (through :data:`runner.cli._app.app`), every item, in order."""
    console = app.err
    marks = _MARKS if _can_encode(console.encoding) else _ASCII
    console.print(
        f"pre-flight: {report.job} on {_WHERE.get(report.backend, report.backend)}",
        markup=False,
        highlight=False,
    )
    if not console.is_terminal:
        for item in report.items:
            console.print(_line(item, marks), markup=False, highlight=False, soft_wrap=True)
        return
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)  # indent + mark
    grid.add_column(no_wrap=True, min_width=_TITLE_WIDTH)
    grid.add_column(overflow="fold", ratio=1)
    for item in report.items:
        style = _STYLES.get(item.status, "")
        grid.add_row(
            Text(f" {marks.get(item.status, '?')}", style=style),
            Text(item.title, style="bold" if item.status == "fail" else ""),
            Text(_text(item)),
        )
    console.print(grid, soft_wrap=False)


def _line(item: Item, marks: dict[str, str]) -> str:
    return f"  {marks.get(item.status, '?')} {item.title:<{_TITLE_WIDTH}} {_text(item)}"


def _text(item: Item) -> str:
    if item.fix and item.status in ("fail", "warn"):
        return f"{item.detail}; fix: {item.fix}"
    return item.detail


def _can_encode(encoding: str) -> bool:
    try:
        "".join(_MARKS.values()).encode(encoding or "ascii")
    except (LookupError, UnicodeEncodeError):
        return False
    return True

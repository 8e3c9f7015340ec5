"""The one object commands report through (after hatch's ``Application``).

Commands never ``print`` or ``sys.exit``: they call ``app.info/warn/success`` and
raise :class:`runner.errors.RunnerError` for anything that should stop them.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console


class App:
    """Output for humans on stderr/stdout, with plain text when not on a terminal."""

    def __init__(self) -> None:
        # Piped output (scripts, tests, CI logs) gets wide lines instead of
        # rich's 80-column default, so tables are not folded or cut.
        self.out = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
        self.err = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """Results: what a script would capture (stdout)."""
        self.out.print(*objects, **kwargs)

    def raw(self, text: str) -> None:
        """Machine-readable output written exactly as given (no markup, no wrapping)."""
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()

    def info(self, message: str) -> None:
        """Progress and context for the human (stderr, so stdout stays clean)."""
        self.err.print(message, markup=False)

    def success(self, message: str) -> None:
        self.err.print(f"[green]{_escape(message)}[/green]")

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/yellow] {_escape(message)}")

    def error(self, message: str) -> None:
        self.err.print(f"[bold red]error:[/bold red] [red]{_escape(message)}[/red]")


def _width(stream: Any) -> int | None:
    isatty = getattr(stream, "isatty", None)
    return None if callable(isatty) and isatty() else 160


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


app = App()

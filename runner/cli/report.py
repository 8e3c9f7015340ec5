"""``runner report RUN``: a run's timeline (``report.png``) and summary (``report.md``).

The run folder is read here or on its rented host (:mod:`runner.view.source`); the
work is :mod:`runner.view.report`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from runner.cli._app import app as display

_RUN_HELP = "Run id (or a unique prefix, or a job: its newest run), or a run folder's path."


def report(
    run: str = typer.Argument(..., help=_RUN_HELP),
    out: Path | None = typer.Option(
        None,
        "--out",
        metavar="DIR",
        help="Folder for report.png and report.md [default: the run folder; for a run on a "
        "rented host, ./report-RUN_ID].",
    ),
    clock: bool = typer.Option(
        False, "--clock", help="Time axis in UTC wall-clock, not time since the start."
    ),
) -> None:
    """Write a run's PNG timeline (GPU power, temperature, utilisation, steps/s, loss, disk
    free, every event marked) and a markdown summary (where, how long, how it ended,
    restarts and their causes, checkpoints and pushes, cost, events); prints both paths."""
    from runner.view.report import read_run_files, write_report
    from runner.view.source import open_run

    source = open_run(run)
    try:
        files = read_run_files(source)
    finally:
        source.close()
    if out is None:
        out = Path(source.where) if not source.remote else Path(f"report-{source.label}")
    done = write_report(files, out, clock=clock)
    display.raw(str(done.png))
    display.raw(str(done.markdown))

"""``runner watch [RUN]``: a run's health, live; ``runner logs RUN``: its training output.

Both read the run folder (here, or on a rented host over SSH) through
:mod:`runner.view`; the dashboard is :mod:`runner.view.dashboard`, drawn with rich Live.
Both end with the run's end code (0 finished, the agent's code otherwise) once it ended.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import typer

from runner.cli._app import app as display

if TYPE_CHECKING:
    from rich.containers import Renderables

    from runner.view.source import Follower, RunSource

_RUN_HELP = "Run id (or a unique prefix, or a job: its newest run), or a run folder's path."


def watch(
    run: str | None = typer.Argument(None, help=_RUN_HELP + " [default: the newest run]"),
    once: bool = typer.Option(False, "--once", help="Print one frame and exit (for scripts)."),
    as_json: bool = typer.Option(
        False, "--json", help="Stream the run's events as JSON lines until it ends."
    ),
    interval: float = typer.Option(
        1.0, "--interval", min=0.05, metavar="S", help="Seconds between reads of the run folder."
    ),
    quiet_after: float | None = typer.Option(
        None,
        "--quiet-after",
        min=0.1,
        metavar="S",
        help="Call the host or agent unreachable after this long without the agent's "
        "heartbeat [default: 5 agent ticks, at least 10 s].",
    ),
) -> None:
    """Watch a run: GPUs, step rate, ETA, disk, checkpoints, pushes, cost, warnings, events.

    Exits when the run ends, with its end code (0 finished, the agent's code otherwise);
    --once exits 0 for a run still going.
    """
    from runner.view.source import Follower, open_run

    source = open_run(run)
    follower = Follower(source)
    try:
        if as_json:
            code = _stream_events(follower, interval)
        elif once:
            code = _once(source, follower, quiet_after)
        else:
            code = _live(source, follower, interval, quiet_after)
    except KeyboardInterrupt:
        code = 130
    finally:
        source.close()
    raise typer.Exit(code)


def _frame(
    source: RunSource, follower: Follower, quiet_after: float | None
) -> tuple[Renderables, bool, int]:
    from runner.view.dashboard import build, render
    from runner.view.logs import end_code

    snap = follower.poll()
    board = build(
        snap, label=source.label, now=time.time(), quiet_after_s=quiet_after, remote=source.remote
    )
    # NO_COLOR: rich drops the colours; the dashboard drops bold and dim too.
    plain = bool(os.environ.get("NO_COLOR"))
    frame = render(board, width=display.out.width, height=display.out.height, plain=plain)
    code = end_code(dict(snap.status)) if snap.status and board.ended else None
    if snap.status is None and snap.error is not None:
        from runner.errors import RunnerError

        raise RunnerError(snap.error)
    return frame, board.ended, 0 if code is None else code


def _once(source: RunSource, follower: Follower, quiet_after: float | None) -> int:
    frame, _, code = _frame(source, follower, quiet_after)
    display.print(frame)
    return code


def _live(source: RunSource, follower: Follower, interval: float, quiet_after: float | None) -> int:
    from rich.live import Live

    frame, ended, code = _frame(source, follower, quiet_after)
    if ended:
        display.print(frame)
        return code
    # No auto refresh: one render per read keeps the dashboard's own CPU small.
    with Live(frame, console=display.out, auto_refresh=False, transient=False) as live:
        while not ended:
            time.sleep(interval)
            frame, ended, code = _frame(source, follower, quiet_after)
            live.update(frame, refresh=True)
    return code


def _stream_events(follower: Follower, interval: float) -> int:
    from runner.view.logs import end_code

    down = False
    while True:
        snap = follower.poll()
        for _, line in snap.new_events:
            display.raw(line)
        if snap.error is not None and not down:
            display.warn(f"reconnecting: {snap.error}")
        down = snap.error is not None
        code = end_code(dict(snap.status)) if snap.status else None
        if code is not None and snap.error is None:
            return code
        time.sleep(interval)


def logs(
    run: str = typer.Argument(..., help=_RUN_HELP),
    follow: bool = typer.Option(
        False,
        "--follow",
        "-f",
        help="Keep printing as the run writes, across restarts, until it ends.",
    ),
    attempt: int | None = typer.Option(
        None,
        "--attempt",
        min=0,
        metavar="N",
        help="Only attempt N (0 is the first) [default: all, each under a header].",
    ),
    interval: float = typer.Option(
        1.0, "--interval", min=0.05, metavar="S", help="Seconds between reads when following."
    ),
) -> None:
    """Print a run's training output (logs/attempt-N.log), here or on its rented host."""
    from runner.view.logs import LogFollower, print_logs
    from runner.view.source import open_run

    source = open_run(run)
    try:
        if not follow:
            print_logs(source, display.raw, attempt)
            return
        follower = LogFollower(
            source,
            display.raw,
            attempt=attempt,
            interval_s=interval,
            on_unreachable=lambda why: display.warn(f"reconnecting: {why}"),
        )
        code = follower.run()
    except KeyboardInterrupt:
        code = 130
    finally:
        source.close()
    raise typer.Exit(code)

"""What the control side shows of a run: read from its folder, locally or over SSH.

``runner watch``, ``runner logs`` and ``runner report`` live on this package. It reads
the run folder (:mod:`runner.rundir`) and never imports the agent, the Hub client or the
CLI; it builds rich renderables but never a console (the CLI owns the terminal).
"""

from __future__ import annotations

from runner.view.source import (
    Fetch,
    Follower,
    LocalSource,
    RemoteSource,
    RunSource,
    Snapshot,
    Tail,
    Unreachable,
    open_run,
)

__all__ = [
    "Fetch",
    "Follower",
    "LocalSource",
    "RemoteSource",
    "RunSource",
    "Snapshot",
    "Tail",
    "Unreachable",
    "open_run",
]

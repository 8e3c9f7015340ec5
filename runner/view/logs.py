"""``runner logs``: a run's training output, attempt by attempt, locally or over SSH.

The agent writes each attempt's output to ``logs/attempt-N.log`` (0-based). Printing a
run's logs prints every attempt in order, each under a one-line header, or one attempt.
Following reads only new bytes (one :meth:`RunSource.fetch` per poll) and moves on to
attempt N+1 once its log appears and attempt N's has no more to give, until the run ends.
Output goes out in whole lines, so two attempts never share one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from runner.errors import RunnerError
from runner.rundir import LOGS_DIR, STATUS_FILE
from runner.view.source import RunSource, Unreachable

__all__ = ["LogFollower", "end_code", "header", "log_name", "print_logs"]

ENDED = ("finished", "failed", "stopped")


def log_name(attempt: int) -> str:
    """``logs/attempt-N.log``, relative to the run folder."""
    return f"{LOGS_DIR}/attempt-{attempt}.log"


def header(attempt: int) -> str:
    return f"==> attempt {attempt} ({log_name(attempt)}) <==\n"


def end_code(status: dict[str, object] | None) -> int | None:
    """The run's end code from its status (0 finished, the agent's code otherwise), or
    None while it runs."""
    if not status or status.get("state") not in ENDED:
        return None
    code = status.get("exit_code")
    if isinstance(code, int):
        return code
    return 0 if status.get("state") == "finished" else 1


def print_logs(source: RunSource, write: Callable[[str], None], attempt: int | None) -> None:
    """Write every attempt's log (with headers) or only ``attempt``'s (without).

    Raises :class:`RunnerError` when the run has no such log (or none at all).
    """
    attempts = source.fetch().attempts
    wanted = _wanted(source, attempts, attempt)
    fetch = source.fetch(tails={log_name(n): 0 for n in wanted})
    for n in wanted:
        tail = fetch.tails.get(log_name(n))
        if attempt is None:
            write(header(n))
        if tail is not None and tail.data:
            text = tail.data.decode("utf-8", "replace")
            write(text if text.endswith("\n") else text + "\n")


def _wanted(source: RunSource, attempts: tuple[int, ...], attempt: int | None) -> list[int]:
    if attempt is None:
        if not attempts:
            raise RunnerError(f"{source.label} has no logs yet (no {LOGS_DIR}/attempt-N.log)")
        return list(attempts)
    if attempt not in attempts:
        have = ", ".join(str(a) for a in attempts) or "none yet"
        raise RunnerError(f"{source.label} has no log for attempt {attempt} (attempts: {have})")
    return [attempt]


@dataclass
class LogFollower:
    """Follows a run's logs across restarts until it ends (see :meth:`run`).

    ``attempt`` pins one attempt (no headers, no moving on); None starts from the first and
    moves on to each next one. ``on_unreachable`` is told once per outage.
    """

    source: RunSource
    write: Callable[[str], None]
    attempt: int | None = None
    interval_s: float = 1.0
    on_unreachable: Callable[[str], None] | None = None
    sleep: Callable[[float], None] = time.sleep

    def run(self) -> int:
        """Write the logs as they grow; returns the run's end code when it has ended and
        every line was written. Raises :class:`RunnerError` for a run with no such log."""
        current: int | None = self.attempt
        offset = 0
        pending = b""
        down = False
        while True:
            tails = {log_name(current): offset} if current is not None else {}
            try:
                fetch = self.source.fetch([STATUS_FILE], tails)
            except Unreachable as exc:
                if not down and self.on_unreachable is not None:
                    self.on_unreachable(str(exc))
                down = True
                self.sleep(self.interval_s)
                continue
            down = False
            code = end_code(_json(fetch.texts.get(STATUS_FILE)))
            if current is None:
                if fetch.attempts:
                    current = fetch.attempts[0]
                    if self.attempt is None:
                        self.write(header(current))
                    continue
                if code is not None:
                    return code
                self.sleep(self.interval_s)
                continue
            if code is not None and self.attempt is not None and self.attempt not in fetch.attempts:
                _wanted(self.source, fetch.attempts, self.attempt)  # raises: there is none
            tail = fetch.tails.get(log_name(current))
            data = b""
            if tail is not None:
                if tail.start < offset:  # replaced: start it again
                    pending = b""
                offset = tail.end
                data = pending + tail.data
                cut = data.rfind(b"\n") + 1
                pending = data[cut:]
                if cut:
                    self.write(data[:cut].decode("utf-8", "replace"))
            if tail is not None and tail.data:
                continue  # more may be there already: read again before sleeping
            later = [a for a in fetch.attempts if a > current]
            if self.attempt is None and later:
                self._flush(pending)
                pending, offset, current = b"", 0, later[0]
                self.write(header(current))
                continue
            if code is not None:
                self._flush(pending)
                return code
            self.sleep(self.interval_s)

    def _flush(self, pending: bytes) -> None:
        if pending:
            self.write(pending.decode("utf-8", "replace") + "\n")


def _json(text: str | None) -> dict[str, object] | None:
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None

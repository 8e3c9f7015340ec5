"""The training process's output: passed through, kept per attempt, and read as lines.

:class:`AttemptLog` reads one attempt's stdout and stderr pipes on two threads.
Every chunk goes, unchanged and at once, to the agent's own stream of the same
name (so a terminal still shows a tqdm bar move) and, whole lines at a time, to
``RUN_DIR/logs/attempt-N.log``. The log is bounded: past ``max_bytes`` it is
renamed to ``attempt-N.log.1`` (replacing the older one) and started afresh, so
an attempt keeps its last ``max_bytes`` to ``2 x max_bytes`` of output.

Lines, split on ``\\n`` and on ``\\r`` (:class:`LineSplitter`), wait in a
bounded queue for the agent's next tick (:meth:`AttemptLog.lines`). A redraw
is complete when it is written: tqdm writes ``\\r`` *before* each redraw of its
bar, so the text after the last ``\\r`` is the bar's current state, handed on
(and logged) at once, not when the next redraw arrives, which after a freeze
is only when tqdm's monitor thread refreshes the bar 10-20 s later. Text after
a ``\\n`` with no line end yet is an unfinished line and waits for its end.
Nothing is redacted and nothing is added: the log is what the process wrote,
never its environment.

Invariants: a failing pass-through (our own stdout closed, a broken pipe) is
dropped and the log goes on; a failing log file (disk full) is reported once
in :attr:`AttemptLog.errors` and the pass-through goes on. Neither stops the
pumps, so the training process can never block on a full pipe.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import IO, BinaryIO

from runner.rundir import LOGS_DIR, attempt_log_path

__all__ = ["LOGS_DIR", "AttemptLog", "LineSplitter", "attempt_log_path", "split_lines"]

#: Default bound of one attempt's log file before it rotates.
MAX_LOG_BYTES = 64 << 20
#: Longest line handed to detectors, in characters (the log keeps it whole).
MAX_LINE_CHARS = 4096
#: Lines waiting for the next tick; older ones are dropped (and counted) past this.
MAX_PENDING_LINES = 5000
_READ = 1 << 16
#: A partial line longer than this is written out (and handed on) without its end.
_MAX_PARTIAL = 1 << 16


def split_lines(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """``data`` cut after its last line end: that head, its lines, and the rest.

    Lines are split on ``\\n`` and ``\\r``; blank ones are dropped. Stateless:
    the rest after a final ``\\r`` is left over here; :class:`LineSplitter`
    is what reads a stream (and takes that rest as a redraw).
    """
    cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
    if cut < 0:
        return b"", [], data
    head, rest = data[: cut + 1], data[cut + 1 :]
    parts = head.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return head, [p for p in parts if p.strip()], rest


class LineSplitter:
    """One stream's bytes cut into lines, as they arrive; see the module docstring.

    :meth:`feed` returns the bytes ready for the log file and the lines ready
    for the detectors, in order. The text after a final ``\\r`` (a redraw) is
    both at once, and is not handed on a second time when the ``\\r`` of the
    next redraw ends it. Should a writer put a ``\\r`` and then write its line
    in pieces, the line is handed on again each time it grows. A ``\\r\\n`` is
    one line end, even split across two chunks. A segment longer than
    ``max_partial`` is data, not a log line: it is handed on and logged with a
    ``\\n`` added, and the next one starts afresh.
    """

    def __init__(self, max_partial: int) -> None:
        self.max_partial = max_partial
        #: Bytes not yet written out: an unfinished line after a ``\\n``.
        self._held = b""
        #: The current segment (after the last line end), written out or not.
        self._segment = b""
        #: The segment as last handed on (a redraw), to hand each state on once.
        self._handed = b""
        self._after_cr = False

    def feed(self, chunk: bytes) -> tuple[bytes, list[bytes]]:
        """``chunk`` read: (bytes for the log file, complete lines)."""
        lines: list[bytes] = []
        start = 0
        for match in _LINE_END.finditer(chunk):
            index = match.start()
            piece = (self._segment + chunk[start:index]).rstrip(b"\r")
            if piece.strip() and piece != self._handed:
                lines.append(piece)
            self._segment, self._handed = b"", b""
            self._after_cr = chunk[index] == 13
            start = index + 1
        out = b""
        if start > 0:
            out, self._held = self._held + chunk[:start], b""
        tail = chunk[start:]
        self._segment += tail
        if self._after_cr:
            # A redraw, complete when written: tqdm writes "\r" + the bar, then flushes.
            out += tail
            if self._segment.strip() and self._segment != self._handed:
                lines.append(self._segment)
                self._handed = self._segment
        else:
            self._held += tail
        if len(self._segment) > self.max_partial:
            out += self._held + b"\n"
            if self._segment != self._handed:
                lines.append(self._segment)
            self._held = self._segment = self._handed = b""
            self._after_cr = False
        return out, lines

    def end(self) -> tuple[bytes, list[bytes]]:
        """The stream ended: what is still held, written out and handed on as a last line."""
        # The file ends with a line end, as it would had the process written one.
        out = self._held + b"\n" if self._held or self._segment else b""
        segment = self._segment.rstrip(b"\r")
        lines = [segment] if segment.strip() and segment != self._handed else []
        self._held = self._segment = self._handed = b""
        return out, lines


#: A line end: each ``\\n``, and each ``\\r`` that does not start a ``\\r\\n``.
_LINE_END = re.compile(rb"\n|\r(?!\n)")


class AttemptLog:
    """Pumps one attempt's stdout and stderr; see the module docstring.

    ``passthrough`` maps ``"stdout"``/``"stderr"`` to the binary stream a chunk
    is copied to (``None``: not copied).
    """

    def __init__(
        self,
        path: Path,
        *,
        passthrough: Mapping[str, BinaryIO | IO[bytes] | None] | None = None,
        max_bytes: int = MAX_LOG_BYTES,
        max_line_chars: int = MAX_LINE_CHARS,
        max_pending_lines: int = MAX_PENDING_LINES,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_line_chars = max_line_chars
        self.passthrough = dict(passthrough or {})
        self.errors: list[str] = []
        self.dropped_lines = 0
        self.total_bytes = 0
        self._pending: deque[str] = deque(maxlen=max_pending_lines)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._written = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = open(path, "ab")  # noqa: SIM115
        self._written = self._file.tell()

    def attach(self, name: str, pipe: IO[bytes]) -> None:
        """Start pumping ``pipe`` (the process's ``name`` stream) on a daemon thread."""
        thread = threading.Thread(
            target=self._pump, args=(name, pipe), name=f"agent-log-{name}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def lines(self) -> list[str]:
        """Every line completed since the previous call, oldest first."""
        with self._lock:
            out = list(self._pending)
            self._pending.clear()
        return out

    def join(self, timeout: float) -> bool:
        """Wait for both pipes to reach their end; False if one is still open.

        A pipe stays open while any process holding it lives (a worker that
        outlived its parent), so callers kill the process group first.
        """
        for thread in self._threads:
            thread.join(timeout)
        return not any(t.is_alive() for t in self._threads)

    def close(self) -> None:
        """Close the log file (pumps still running keep passing output through)."""
        with self._lock:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
                self._file = None

    # -- the pump threads --------------------------------------------------------

    def _pump(self, name: str, pipe: IO[bytes]) -> None:
        sink = self.passthrough.get(name)
        fd = pipe.fileno()
        splitter = LineSplitter(_MAX_PARTIAL)
        try:
            while True:
                try:
                    chunk = os.read(fd, _READ)
                except InterruptedError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                self.total_bytes += len(chunk)
                if sink is not None:
                    try:
                        sink.write(chunk)
                        sink.flush()
                    except (OSError, ValueError):
                        sink = None  # our own stream is gone: keep logging
                out, lines = splitter.feed(chunk)
                self._write_file(out)
                self._queue(lines)
            out, lines = splitter.end()
            self._write_file(out)
            self._queue(lines)
        finally:
            with contextlib.suppress(OSError):
                pipe.close()

    def _queue(self, lines: list[bytes]) -> None:
        if not lines:
            return
        decoded = [line.decode("utf-8", "replace")[: self.max_line_chars] for line in lines]
        with self._lock:
            overflow = len(self._pending) + len(decoded) - (self._pending.maxlen or 0)
            if overflow > 0:
                self.dropped_lines += overflow
            self._pending.extend(decoded)

    def _write_file(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            if self._file is None:
                return
            try:
                if self._written + len(data) <= self.max_bytes:
                    self._file.write(data)
                    self._written += len(data)
                else:
                    # Rotate at a line boundary, so each file holds whole lines.
                    for line in data.splitlines(keepends=True):
                        if self._written + len(line) > self.max_bytes and self._written > 0:
                            self._rotate()
                        self._file.write(line)
                        self._written += len(line)
                self._file.flush()
            except OSError as exc:
                if not self.errors:
                    self.errors.append(f"{self.path}: {exc.strerror or exc}")

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._written = 0

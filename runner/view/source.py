"""Where a run's folder is, and reading it: here, or on a rented host over SSH.

:func:`open_run` turns what a user typed (a run id or prefix from the registry, a job
name, a path to a run folder, or nothing for the newest run) into a :class:`RunSource`.
A source reads the run folder's files and nothing else: whole small files
(``status.json``, ``push-state.json``, ``launch.json``) and, for the append-only ones
(``events.jsonl``, ``samples.jsonl``, ``logs/attempt-N.log``), only the bytes past an
offset, so following a remote run costs one SSH round trip per refresh with a few new
lines in it, not the whole folder again.

Remote reads share one SSH connection (OpenSSH ``ControlMaster``, kept 30 s after the
last use): a refresh is a new session on a live connection, and a dropped connection is
simply made again by the next read. A read that cannot reach the host raises
:class:`Unreachable`; the caller shows "reconnecting" and tries again.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import RunnerError
from runner.rundir import (
    EVENTS_FILE,
    LAUNCH_FILE,
    LOGS_DIR,
    PUSH_STATE_FILE,
    SAMPLES_FILE,
    STATUS_FILE,
    Event,
    parse_samples,
)

if TYPE_CHECKING:
    from runner.cloud.ssh import Ssh, SshTarget
    from runner.launch.runs import RunRecord

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

_SEP = b"\x1e"  # record separator: never in JSON text, which escapes control characters
_RUN_FILES = (STATUS_FILE, EVENTS_FILE, LAUNCH_FILE)


class Unreachable(RunnerError):
    """The run folder's host did not answer (SSH failed); worth trying again."""


@dataclass(frozen=True)
class Tail:
    """Bytes of an append-only file from ``start`` to ``end`` (its size when read).

    ``start`` is the offset asked for, except when the file is shorter than that (it was
    replaced): then it is 0 and ``data`` is the new file from its beginning.
    """

    start: int
    end: int
    data: bytes


@dataclass(frozen=True)
class Fetch:
    """One read of a run folder: whole files, tails, and which attempts have logs."""

    texts: Mapping[str, str | None]
    """Each whole file asked for: its text, or None when it does not exist."""
    tails: Mapping[str, Tail | None]
    """Each tail asked for, or None when the file does not exist."""
    attempts: tuple[int, ...]
    """The attempts with a ``logs/attempt-N.log``, in order."""


class RunSource:
    """A run folder to read. ``label`` names it for a human; ``remote`` says SSH."""

    label: str
    remote: bool
    record: RunRecord | None
    where: str
    """The run folder's path on the machine that holds it."""

    def fetch(self, whole: Sequence[str] = (), tails: Mapping[str, int] | None = None) -> Fetch:
        """Read ``whole`` files entirely and each of ``tails`` from its offset.

        A negative offset ``-K`` reads the last ``K`` bytes (from the first whole line in
        them), for a first look at a long file. Raises :class:`Unreachable` when the host
        does not answer.
        """
        raise NotImplementedError

    def read(self, name: str) -> str | None:
        """The text of one file of the run folder (``name`` relative to it), or None."""
        return self.fetch([name]).texts.get(name)

    def close(self) -> None:
        """Let go of any connection (a no-op for a local folder)."""

    def __enter__(self) -> RunSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalSource(RunSource):
    """A run folder on this machine."""

    remote = False

    def __init__(self, path: Path, *, label: str | None = None, record: RunRecord | None = None):
        self.path = path
        self.where = str(path)
        self.label = label or path.name
        self.record = record

    def fetch(self, whole: Sequence[str] = (), tails: Mapping[str, int] | None = None) -> Fetch:
        texts: dict[str, str | None] = {}
        for name in whole:
            try:
                texts[name] = (self.path / name).read_text(encoding="utf-8", errors="replace")
            except OSError:
                texts[name] = None
        read: dict[str, Tail | None] = {}
        for name, offset in (tails or {}).items():
            read[name] = _read_tail(self.path / name, offset)
        return Fetch(texts, read, _attempts(_listdir(self.path / LOGS_DIR)))


def _read_tail(path: Path, offset: int) -> Tail | None:
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            start = _start(offset, size)
            f.seek(start)
            data = f.read(size - start)
    except OSError:
        return None
    return _trim_head(Tail(start, start + len(data), data), offset)


def _start(offset: int, size: int) -> int:
    if offset < 0:
        return max(0, size + offset)
    return offset if offset <= size else 0


def _trim_head(tail: Tail, offset: int) -> Tail:
    """A look at the last K bytes starts at a line's beginning, not mid-line."""
    if offset >= 0 or tail.start == 0:
        return tail
    cut = tail.data.find(b"\n")
    if cut < 0:
        return Tail(tail.end, tail.end, b"")
    return Tail(tail.start + cut + 1, tail.end, tail.data[cut + 1 :])


def _listdir(path: Path) -> list[str]:
    try:
        return [p.name for p in path.iterdir()]
    except OSError:
        return []


def _attempts(names: Sequence[str]) -> tuple[int, ...]:
    found = []
    for name in names:
        stem = name.removeprefix("attempt-").removesuffix(".log")
        if name.startswith("attempt-") and name.endswith(".log") and stem.isdigit():
            found.append(int(stem))
    return tuple(sorted(found))


class RemoteSource(RunSource):
    """A run folder on a rented host, read over SSH in one round trip per :meth:`fetch`."""

    remote = True

    def __init__(self, record: RunRecord, *, ssh: Ssh | None = None) -> None:
        from runner.cloud.ssh import Ssh, SshTarget, default_key_path

        if not record.ssh_host or not record.ssh_port:
            raise RunnerError(
                f"run {record.run_id} has no SSH address yet (state {record.state}); "
                "wait for `runner runs` to show it running"
            )
        self.record = record
        self.label = record.run_id
        self.where = record.run_dir
        self.target = SshTarget(record.ssh_host, record.ssh_port, name=f"vast-{record.instance_id}")
        self.ssh = ssh or Ssh(default_key_path(), connect_timeout_s=8)
        self._control = Path(tempfile.mkdtemp(prefix="runner-ssh-"))
        # a caller that never closes still leaves no folder behind
        weakref.finalize(self, shutil.rmtree, self._control, True)

    def fetch(self, whole: Sequence[str] = (), tails: Mapping[str, int] | None = None) -> Fetch:
        tails = dict(tails or {})
        script = _remote_script(self.where, whole, tails)
        argv = _argv(self.ssh, self.target, self._control)
        out = _ssh_bytes(self.ssh, self.target, [*argv, script], timeout_s=30.0)
        if out is None:
            raise RunnerError(f"no run folder {self.where} on {self.target}; is this the run?")
        return _parse(out, whole, tails)

    def close(self) -> None:
        if self._control.is_dir() and any(self._control.iterdir()):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                argv = _argv(self.ssh, self.target, self._control, "-O", "exit")
                subprocess.run(argv, capture_output=True, timeout=5, check=False)
        shutil.rmtree(self._control, ignore_errors=True)


def _argv(ssh: Ssh, target: SshTarget, control: Path | None, *extra: str) -> list[str]:
    """ssh's argv for ``target``, sharing one connection through ``control`` when given."""
    options = ssh.options(target)
    if control is not None:
        mux = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}/%C"]
        options = [*options[:-1], *mux, "-o", "ControlPersist=30", options[-1]]
    return [ssh.binary, *options[:-1], *extra, options[-1]]


def _remote_script(where: str, whole: Sequence[str], tails: Mapping[str, int]) -> str:
    """A POSIX shell line that prints each item as ``SEP W name`` + text, or
    ``SEP T name start end`` + exactly ``end - start`` bytes, then ``SEP L`` + the log names."""
    q = shlex.quote
    parts = [f"cd {q(where)} 2>/dev/null || exit 66"]
    for name in whole:
        parts.append(f"printf '\\036W %s\\n' {q(name)}; cat -- {q(name)} 2>/dev/null")
    for name, offset in tails.items():
        parts.append(
            f"s=$(wc -c < {q(name)} 2>/dev/null) || s=-1; o={offset}; "
            'if [ "$o" -lt 0 ]; then o=$((s + o)); [ "$o" -lt 0 ] && o=0; fi; '
            '[ "$o" -gt "$s" ] && o=0; '
            f'printf \'\\036T %s %s %s\\n\' {q(name)} "$o" "$s"; '
            f'[ "$s" -gt "$o" ] && tail -c +$((o + 1)) -- {q(name)} | head -c $((s - o))'
        )
    parts.append(f"printf '\\036L\\n'; ls {q(LOGS_DIR)} 2>/dev/null; true")
    return "; ".join(parts)


def _parse(out: bytes, whole: Sequence[str], tails: Mapping[str, int]) -> Fetch:
    texts: dict[str, str | None] = dict.fromkeys(whole)
    read: dict[str, Tail | None] = dict.fromkeys(tails)
    attempts: tuple[int, ...] = ()
    pos = out.find(_SEP)
    while 0 <= pos < len(out):
        eol = out.find(b"\n", pos)
        if eol < 0:
            break
        head = out[pos + 1 : eol].decode("utf-8", "replace").split(" ")
        body_at = eol + 1
        if head[0] == "T" and len(head) == 4:
            name, start, size = head[1], int(head[2]), int(head[3])
            if size < 0:
                pos = out.find(_SEP, body_at)
                continue
            data = out[body_at : body_at + max(0, size - start)]
            read[name] = _trim_head(Tail(start, start + len(data), data), tails.get(name, 0))
            pos = out.find(_SEP, body_at + len(data))
            continue
        nxt = out.find(_SEP, body_at)
        body = out[body_at : nxt if nxt >= 0 else len(out)]
        if head[0] == "W" and len(head) == 2:
            # cat printed nothing for a missing file; an existing empty file is rare enough
            texts[head[1]] = body.decode("utf-8", "replace") if body else None
        elif head[0] == "L":
            attempts = _attempts(body.decode("utf-8", "replace").split())
        pos = nxt
    return Fetch(texts, read, attempts)


def _ssh_bytes(
    ssh: Ssh, target: SshTarget, argv: Sequence[str], *, timeout_s: float
) -> bytes | None:
    """Run ``argv`` (ssh and its command); stdout as bytes (logs need not be UTF-8), None
    for exit 66 (no run folder there)."""
    ssh.known_hosts_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise Unreachable(f"ssh {target}: no answer within {timeout_s:g} s") from None
    if done.returncode == 255:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise Unreachable(f"ssh {target}: {said[-1] if said else 'connection failed'}")
    if done.returncode == 66:
        return None
    if done.returncode != 0:
        raise Unreachable(f"ssh {target}: reading the run folder failed (exit {done.returncode})")
    return done.stdout


def open_run(ref: str | None) -> RunSource:
    """The run ``ref`` names: a path to a run folder, or a run id, unique id prefix or job
    name from the registry (``None``: the newest run).

    Raises :class:`RunnerError` with one line when nothing matches, the folder is not a
    run folder, or a rented run has no SSH address yet. Opening reads nothing remote.
    """
    if ref is not None and _looks_like_path(ref):
        path = Path(ref).expanduser()
        if not path.is_dir():
            raise RunnerError(f"no run folder {ref} (and no run of that name in `runner runs`)")
        if not any((path / name).exists() for name in _RUN_FILES):
            raise RunnerError(f"{ref} is not a run folder: it has no {', '.join(_RUN_FILES)}")
        return LocalSource(path.resolve())
    from runner.launch.runs import Runs

    runs = Runs()
    if ref is not None and not runs.all():
        raise RunnerError(f"no run {ref!r}: no runs yet, and no run folder of that name here")
    record = runs.find(ref)
    if record.backend == "vast":
        return RemoteSource(record)
    path = Path(record.run_dir)
    if not path.is_dir():
        raise RunnerError(f"run {record.run_id}: its folder {path} is gone from this machine")
    return LocalSource(path, label=record.run_id, record=record)


def _looks_like_path(ref: str) -> bool:
    return "/" in ref or ref.startswith(("~", ".")) or Path(ref).is_dir()


# --------------------------------------------------------------------------- following


@dataclass(frozen=True)
class Snapshot:
    """What a :class:`Follower` knows of a run after its latest poll (parsed JSON)."""

    status: Mapping[str, Any] | None
    launch: Mapping[str, Any] | None
    push: Mapping[str, Any] | None
    events: tuple[Event, ...]
    """Every event so far, oldest first."""
    new_events: tuple[tuple[Event, str], ...]
    """The events this poll added, each with its JSON line as written."""
    samples: tuple[Mapping[str, Any], ...]
    """The newest health records (at most ``history`` of them), oldest first."""
    attempts: tuple[int, ...]
    error: str | None
    """Why the last poll could not read the folder (SSH), or None."""
    error_since: float | None
    """When reads started failing (this machine's clock), or None."""
    heartbeat_at: float | None
    """When the agent's heartbeat last moved, on this machine's clock, or None."""


class Follower:
    """Polls a run folder: one :meth:`RunSource.fetch` per :meth:`poll`, only new bytes of
    the append-only files. A failed read keeps what was known and says since when reads
    fail; the next poll simply tries again.

    The agent's heartbeat is judged on this machine's clock: the time at which a new
    ``agent_time`` was first seen (the first one is taken at its word, clamped to now),
    so a host whose clock is off does not look dead or alive by its skew.
    """

    #: The first look at samples.jsonl reads only its end: enough for the sparklines.
    FIRST_SAMPLES_BYTES = 256 * 1024

    def __init__(self, source: RunSource, *, history: int = 120) -> None:
        self.source = source
        self.history = history
        self._events: list[Event] = []
        self._samples: list[Mapping[str, Any]] = []
        self._offsets: dict[str, int] = {EVENTS_FILE: 0, SAMPLES_FILE: -self.FIRST_SAMPLES_BYTES}
        self._pending: dict[str, bytes] = {EVENTS_FILE: b"", SAMPLES_FILE: b""}
        self._status: Mapping[str, Any] | None = None
        self._launch: Mapping[str, Any] | None = None
        self._push: Mapping[str, Any] | None = None
        self._attempts: tuple[int, ...] = ()
        self._error_since: float | None = None
        self._agent_time: float | None = None
        self._heartbeat_at: float | None = None

    def poll(self, now: float | None = None) -> Snapshot:
        """Read what changed. Raises :class:`RunnerError` only for a folder that is not
        there at all; unreachable hosts are reported in the snapshot."""
        now = time.time() if now is None else now
        whole = [STATUS_FILE, PUSH_STATE_FILE] + ([] if self._launch else [LAUNCH_FILE])
        new: list[tuple[Event, str]] = []
        error = None
        try:
            fetch = self.source.fetch(whole, dict(self._offsets))
        except Unreachable as exc:
            error = str(exc)
            self._error_since = self._error_since or now
        else:
            self._error_since = None
            self._attempts = fetch.attempts
            self._status = _json(fetch.texts.get(STATUS_FILE)) or self._status
            self._push = _json(fetch.texts.get(PUSH_STATE_FILE)) or self._push
            self._launch = self._launch or _json(fetch.texts.get(LAUNCH_FILE))
            for line in self._lines(EVENTS_FILE, fetch.tails.get(EVENTS_FILE)):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    event = Event.from_json(line)
                    self._events.append(event)
                    new.append((event, line))
            self._samples.extend(
                parse_samples("\n".join(self._lines(SAMPLES_FILE, fetch.tails.get(SAMPLES_FILE))))
            )
            del self._samples[: -self.history]
            agent_time = (self._status or {}).get("agent_time")
            if isinstance(agent_time, (int, float)) and agent_time != self._agent_time:
                first = self._agent_time is None
                self._agent_time = float(agent_time)
                self._heartbeat_at = min(now, float(agent_time)) if first else now
        return Snapshot(
            status=self._status,
            launch=self._launch,
            push=self._push,
            events=tuple(self._events),
            new_events=tuple(new),
            samples=tuple(self._samples),
            attempts=self._attempts,
            error=error,
            error_since=self._error_since,
            heartbeat_at=self._heartbeat_at,
        )

    def _lines(self, name: str, tail: Tail | None) -> list[str]:
        """The whole lines a tail completes; a torn last line waits for the next poll."""
        if tail is None:
            return []
        if tail.start < max(0, self._offsets[name]):  # the file was replaced: start over
            self._pending[name] = b""
            if name == EVENTS_FILE:
                self._events.clear()
            else:
                self._samples.clear()
        self._offsets[name] = tail.end
        data = self._pending[name] + tail.data
        cut = data.rfind(b"\n") + 1
        self._pending[name] = data[cut:]
        return [ln for ln in data[:cut].decode("utf-8", "replace").splitlines() if ln.strip()]


def _json(text: str | None) -> Mapping[str, Any] | None:
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None  # a file caught mid-write; the last good one stands
    return data if isinstance(data, dict) else None

"""The supervised process and all its descendants, one snapshot per tick.

A training job is a tree: the process the agent started, its DataLoader
workers, accelerate/torchrun ranks and their own workers. The seeds' silent
freeze shows up here first: a ``[python] <defunct>`` child, workers whose CPU
time stops growing, a rank in ``disk-sleep``. :class:`ProcessTreeSampler` finds
the tree in one scan of ``/proc``, reads each member with psutil (one
``oneshot()`` per process) and keeps the previous CPU times per process, so each
snapshot carries the CPU used since the last one.

Invariants:

- A process that vanishes mid-walk is dropped from the snapshot, never raised
  (psutil's ``NoSuchProcess``). A field the kernel refuses (``AccessDenied``) is
  ``None`` and the process is kept. A zombie is kept, with the fields a zombie
  still has.
- A pid is identified by ``(pid, create_time)``: a reused pid is a new process,
  with no CPU delta on first sight.
- Command lines are redacted (:func:`redact_cmdline`) before they are
  truncated or stored: no secret value reaches a sample, log or event.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import psutil

__all__ = [
    "CMDLINE_MAX",
    "REDACTED",
    "ProcessSnapshot",
    "ProcessTree",
    "ProcessTreeSampler",
    "redact_cmdline",
]

#: Longest command line kept in a snapshot, in characters (after redaction).
CMDLINE_MAX = 512
#: What a secret value is replaced with.
REDACTED = "***"

# Words that make an option or variable name sensitive, compared to each part of
# the name split on "-", "_" and "." (so "--hf-token" and "WANDB_API_KEY" match
# but "--tokenizer" and "--max-tokens" do not).
_SENSITIVE_PARTS = frozenset(
    {
        "token",
        "secret",
        "password",
        "passwd",
        "pass",
        "pwd",
        "key",
        "apikey",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "cred",
        "creds",
        "private",
        "signature",
        "sig",
        "cookie",
        "session",
    }
)
# A part that ends like this is sensitive too ("hftoken", "authtoken", "apikey").
_SENSITIVE_SUFFIXES = ("token", "secret", "password", "passwd", "apikey")

_NAME_SPLIT = re.compile(r"[-_.]+")
# NAME=VALUE or NAME: VALUE anywhere in an argument: `--token=x`, `HF_TOKEN='x y'`
# inside `bash -c "..."`, `{"token": "x"}` in a JSON or YAML option.
_ASSIGNMENT = re.compile(
    r"(?P<name>-{0,2}[A-Za-z_][A-Za-z0-9_.-]*)"
    r"(?P<sep>=|[\"']?[ \t]*:[ \t]*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s'\",}]+)"
)
# Values recognisable by their shape whatever they are passed as.
_TOKEN_SHAPES = re.compile(
    r"\bhf_[A-Za-z0-9]{16,}"  # Hugging Face
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}"  # GitHub
    r"|\bgithub_pat_[A-Za-z0-9_]{20,}"
    r"|\bsk-[A-Za-z0-9_-]{20,}"  # OpenAI-style
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
    r"|\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*"  # JWT
)
# user:password@ in a URL.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^/\s@]+@")
# "Authorization: Bearer xyz", "Bearer xyz".
_BEARER = re.compile(r"(?P<word>\b(?:Bearer|Basic|token)\s+)[A-Za-z0-9._~+/=-]{8,}")


def _is_sensitive_name(name: str) -> bool:
    parts = [p for p in _NAME_SPLIT.split(name.strip("-").lower()) if p]
    return any(p in _SENSITIVE_PARTS or p.endswith(_SENSITIVE_SUFFIXES) for p in parts)


def _redact_assignment(match: re.Match[str]) -> str:
    name, sep, value = match.group("name", "sep", "value")
    if _is_sensitive_name(name):
        return f"{name}{sep}{REDACTED}"
    # The value may hold an assignment of its own: ARGS=--token=x, a:HF_TOKEN=x.
    return f"{name}{sep}{_ASSIGNMENT.sub(_redact_assignment, value)}"


def _redact_arg(arg: str) -> str:
    arg = _URL_CREDENTIALS.sub(rf"\g<scheme>:{REDACTED}@", arg)
    arg = _BEARER.sub(rf"\g<word>{REDACTED}", arg)
    arg = _ASSIGNMENT.sub(_redact_assignment, arg)
    return _TOKEN_SHAPES.sub(REDACTED, arg)


def redact_cmdline(argv: Sequence[str], max_len: int = CMDLINE_MAX) -> str:
    """One display line for ``argv`` with every secret-looking value replaced.

    Redacted: the value of ``--token=V`` / ``NAME_KEY=V`` (any option or
    variable whose name has a part like token, key, secret, password, auth),
    the argument after such an option given alone (``--token V``, ``api-key
    V``), credentials in URLs (``https://u:p@host``), ``Bearer V``, and values
    shaped like known tokens (``hf_...``, ``ghp_...``, ``sk-...``, AWS key ids,
    JWTs). Redaction errs toward hiding: ``--sort-key loss`` loses ``loss``.
    The result is cut to ``max_len`` characters after redaction, so a cut
    never exposes the start of a secret; a cut line ends with ``...``.
    """
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if "=" not in arg and " " not in arg and _is_sensitive_name(arg):
            # "--token VALUE": the value is the next argument. A bare word such
            # as "key" hides its successor too; hiding too much is the safe side.
            out.append(arg)
            hide_next = True
            continue
        out.append(_redact_arg(arg))
    line = " ".join(out)
    if len(line) > max_len:
        line = line[: max(0, max_len - 3)] + "..."
    return line


@dataclass(frozen=True)
class ProcessSnapshot:
    """One process of the tree at one instant (``ps -o pid,ppid,stat,time,rss,etime,args``).

    Fields the kernel refused to show (``AccessDenied``) or that a zombie no
    longer has are ``None``.
    """

    #: Process id (host pid namespace of the agent).
    pid: int
    #: Parent pid at sampling time: a zombie's parent is the process that has not
    #: reaped it; an orphan that was re-parented mid-walk shows its new parent.
    ppid: int
    #: Short name (``comm``, up to 15 characters, or the executable's base name).
    name: str
    #: psutil status: ``running``, ``sleeping``, ``disk-sleep`` (``D``, stuck in
    #: I/O or the kernel), ``stopped`` (SIGSTOP), ``tracing-stop``, ``zombie``
    #: (exited, not reaped), ``dead``, ``idle``, ... ``?`` when unknown.
    state: str
    #: Command line, redacted and truncated (:func:`redact_cmdline`); ``""`` for
    #: a zombie or kernel thread, ``None`` when access is denied.
    cmdline: str | None
    #: Start time, seconds since the epoch.
    create_time: float
    #: Seconds between start and this sample.
    age_s: float
    #: Resident set size in bytes (``None`` when denied; 0 for a zombie).
    rss_bytes: int | None
    #: User + system CPU seconds since the process started (its own, not its
    #: children's).
    cpu_time_s: float | None
    #: CPU seconds used since the previous sample of this same process; ``None``
    #: on first sight (new process, reused pid, or the sampler's first tick).
    cpu_delta_s: float | None
    #: ``cpu_delta_s`` over the wall time between the two samples, in percent of
    #: one core (a process with 4 busy threads shows ~400); ``None`` with it.
    cpu_percent: float | None
    #: Bytes it handed to ``write()`` since the previous sample (``wchar`` of
    #: ``/proc/PID/io``: files, pipes and sockets alike); ``None`` on first sight,
    #: where the kernel does not say, or when access is denied.
    write_delta_bytes: int | None = None

    @property
    def is_zombie(self) -> bool:
        """True for an exited process its parent has not reaped (``<defunct>``)."""
        return self.state == psutil.STATUS_ZOMBIE

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values."""
        return {
            "pid": self.pid,
            "ppid": self.ppid,
            "name": self.name,
            "state": self.state,
            "cmdline": self.cmdline,
            "create_time": self.create_time,
            "age_s": self.age_s,
            "rss_bytes": self.rss_bytes,
            "cpu_time_s": self.cpu_time_s,
            "cpu_delta_s": self.cpu_delta_s,
            "cpu_percent": self.cpu_percent,
            "write_delta_bytes": self.write_delta_bytes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessSnapshot:
        """The inverse of :meth:`to_dict`; raises ``KeyError`` on a missing field."""
        return cls(
            pid=data["pid"],
            ppid=data["ppid"],
            name=data["name"],
            state=data["state"],
            cmdline=data["cmdline"],
            create_time=data["create_time"],
            age_s=data["age_s"],
            rss_bytes=data["rss_bytes"],
            cpu_time_s=data["cpu_time_s"],
            cpu_delta_s=data["cpu_delta_s"],
            cpu_percent=data["cpu_percent"],
            write_delta_bytes=data.get("write_delta_bytes"),
        )


@dataclass(frozen=True)
class ProcessTree:
    """The supervised process and its descendants at one instant.

    ``processes`` is in depth-first order from the root (children by pid), so
    it reads like ``ps --forest``; a descendant whose parent vanished mid-walk
    comes last with its new parent pid. Empty when the root is gone.
    """

    #: The supervised process (the root of the tree).
    root_pid: int
    #: False once the root has exited and been reaped, or its pid now belongs to
    #: another process. A root that exited but is not reaped is alive here, as a
    #: zombie.
    root_alive: bool
    #: Wall seconds since the previous tree sample; ``None`` on the first one.
    interval_s: float | None
    #: The root first, then every descendant still present.
    processes: tuple[ProcessSnapshot, ...]

    def get(self, pid: int) -> ProcessSnapshot | None:
        """The snapshot of ``pid``, or ``None`` when it is not in the tree."""
        for proc in self.processes:
            if proc.pid == pid:
                return proc
        return None

    def children_of(self, pid: int) -> tuple[ProcessSnapshot, ...]:
        """The direct children of ``pid`` in this snapshot."""
        return tuple(p for p in self.processes if p.ppid == pid and p.pid != self.root_pid)

    def zombies(self) -> tuple[ProcessSnapshot, ...]:
        """Processes that exited and were not reaped; ``ppid`` names the culprit."""
        return tuple(p for p in self.processes if p.is_zombie)

    def in_state(self, state: str) -> tuple[ProcessSnapshot, ...]:
        """Processes in a psutil state, e.g. ``psutil.STATUS_DISK_SLEEP``."""
        return tuple(p for p in self.processes if p.state == state)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values."""
        return {
            "root_pid": self.root_pid,
            "root_alive": self.root_alive,
            "interval_s": self.interval_s,
            "processes": [p.to_dict() for p in self.processes],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessTree:
        """The inverse of :meth:`to_dict`; raises ``KeyError`` on a missing field."""
        return cls(
            root_pid=data["root_pid"],
            root_alive=data["root_alive"],
            interval_s=data["interval_s"],
            processes=tuple(ProcessSnapshot.from_dict(p) for p in data["processes"]),
        )


@dataclass(frozen=True)
class _Seen:
    create_time: float
    cpu_time_s: float
    at: float  # time.monotonic()
    written: int | None = None  # write_chars, cumulative


#: psutil reads /proc/PID/io where the platform has it (Linux, Windows; not macOS).
_HAS_IO: Final = hasattr(psutil.Process, "io_counters")


class ProcessTreeSampler:
    """Samples ``root_pid`` and its descendants; holds the previous CPU times.

    Not thread-safe: one sampler per sampling loop. ``sample()`` never raises
    for a process that vanishes, is a zombie or denies access; it raises only
    if psutil itself is broken.

    Cost on Linux: one read of ``/proc/PID/stat`` per process on the host to
    find the tree (psutil's ``children()`` does the same scan), then
    ``stat``, ``statm`` and ``cmdline`` of each member in one ``oneshot()``.
    psutil ``Process`` objects are kept per ``(pid, start time)`` between
    samples: building one costs two more reads, one of them ``/proc/stat``
    (for the boot time), which is large on a many-core GPU server.
    """

    def __init__(self, root_pid: int, *, cmdline_max: int = CMDLINE_MAX) -> None:
        self.root_pid = root_pid
        self.cmdline_max = cmdline_max
        # Identity of the root as first seen: its start time in clock ticks after
        # boot (the /proc scan) or seconds since the epoch (psutil's fallback).
        self._root_start: float | bytes | None = None
        self._procs: dict[tuple[int, bytes], psutil.Process] = {}
        self._seen: dict[int, _Seen] = {}
        self._last_at: float | None = None
        # Redaction runs regexes; command lines rarely change, so cache them.
        self._cmdlines: dict[tuple[str, ...], str] = {}

    def sample(self) -> ProcessTree:
        """Walk the tree now and return its snapshot."""
        now_mono = time.monotonic()
        interval = None if self._last_at is None else now_mono - self._last_at
        self._last_at = now_mono
        now = time.time()
        members = self._members()
        if members is None:
            self._seen.clear()
            self._procs.clear()
            return ProcessTree(self.root_pid, False, interval, ())
        snaps: list[ProcessSnapshot] = []
        seen: dict[int, _Seen] = {}
        for proc in members:
            snap = self._snapshot(proc, now, now_mono, seen)
            if snap is not None:
                snaps.append(snap)
        self._seen = seen
        if len(self._cmdlines) > 4 * max(64, len(snaps)):
            self._cmdlines.clear()
        alive = bool(snaps) and snaps[0].pid == self.root_pid
        return ProcessTree(self.root_pid, alive, interval, _forest_order(self.root_pid, snaps))

    def _members(self) -> list[psutil.Process] | None:
        """The root then its descendants; ``None`` once the root is gone or its pid reused."""
        procs = _scan_procfs()
        if procs is None:
            return self._members_psutil()
        start = procs.get(self.root_pid, (0, None))[1]
        if start is None:
            return None
        if self._root_start is None:
            self._root_start = start
        elif start != self._root_start:
            return None
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        order, visited = [self.root_pid], {self.root_pid}
        for pid in order:  # grows while iterating: breadth-first
            for child in children.get(pid, ()):
                if child not in visited:
                    visited.add(child)
                    order.append(child)
        kept: dict[tuple[int, bytes], psutil.Process] = {}
        members: list[psutil.Process] = []
        for pid in order:
            key = (pid, procs[pid][1])
            proc = self._procs.get(key)
            if proc is None:
                try:
                    proc = psutil.Process(pid)
                except psutil.Error:  # exited since the scan
                    continue
            kept[key] = proc
            members.append(proc)
        self._procs = kept
        return members

    def _members_psutil(self) -> list[psutil.Process] | None:
        """The portable walk, where there is no Linux ``/proc``."""
        try:
            root = psutil.Process(self.root_pid)
            start = root.create_time()
        except psutil.Error:
            return None
        if self._root_start is None:
            self._root_start = start
        elif start != self._root_start:
            return None
        try:
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return [root]

    def _snapshot(
        self,
        proc: psutil.Process,
        now: float,
        now_mono: float,
        seen: dict[int, _Seen],
    ) -> ProcessSnapshot | None:
        try:
            with proc.oneshot():
                state = proc.status()
                ppid = proc.ppid()
                name = _field(proc.name, "?")
                created = proc.create_time()
                times = _field(proc.cpu_times, None)
                mem = _field(proc.memory_info, None)
                argv = _field(proc.cmdline, None)
        except psutil.NoSuchProcess:
            # Gone mid-walk (ZombieProcess is caught field by field above).
            return None
        except psutil.AccessDenied:
            # Not even its state is readable: nothing to report.
            return None
        cpu = None
        if times is not None and not isinstance(times, _ZombieMarker):
            cpu = times.user + times.system
        delta = percent = None
        prev = self._seen.get(proc.pid)
        same = prev is not None and prev.create_time == created
        written, written_delta = self._written(proc, prev if same else None, cpu)
        if cpu is not None:
            if prev is not None and same:
                delta = max(0.0, cpu - prev.cpu_time_s)
                elapsed = now_mono - prev.at
                percent = 100.0 * delta / elapsed if elapsed > 0 else None
            seen[proc.pid] = _Seen(created, cpu, now_mono, written)
        if isinstance(argv, _ZombieMarker):
            cmdline: str | None = ""
        elif argv is None:
            cmdline = None
        else:
            cmdline = self._redacted(tuple(argv))
        return ProcessSnapshot(
            pid=proc.pid,
            ppid=ppid,
            name="?" if isinstance(name, _ZombieMarker) else name,
            state=state,
            cmdline=cmdline,
            create_time=created,
            age_s=max(0.0, now - created),
            rss_bytes=None if mem is None or isinstance(mem, _ZombieMarker) else mem.rss,
            cpu_time_s=cpu,
            cpu_delta_s=delta,
            cpu_percent=percent,
            write_delta_bytes=written_delta,
        )

    @staticmethod
    def _written(
        proc: psutil.Process, prev: _Seen | None, cpu: float | None
    ) -> tuple[int | None, int | None]:
        """``(write_chars, bytes written since prev)``. A process that used no CPU since the
        last sample wrote nothing worth counting: its ``/proc/PID/io`` is not read again
        (one file less per idle worker and thread of the tree, each tick)."""
        if not _HAS_IO:
            return None, None
        if prev is not None and cpu is not None and cpu <= prev.cpu_time_s:
            return prev.written, (0 if prev.written is not None else None)
        try:
            io = _field(proc.io_counters, None)
        except psutil.Error:  # gone since its other fields were read: nothing more to count
            io = None
        written = getattr(io, "write_chars", None)
        if prev is None or written is None or prev.written is None:
            return written, None
        return written, max(0, written - prev.written)

    def _redacted(self, argv: tuple[str, ...]) -> str:
        line = self._cmdlines.get(argv)
        if line is None:
            line = redact_cmdline(argv, self.cmdline_max)
            self._cmdlines[argv] = line
        return line


class _ZombieMarker:
    """A field a zombie no longer has."""


_ZOMBIE: Final = _ZombieMarker()
_T = TypeVar("_T")
_D = TypeVar("_D")


def _field(getter: Callable[[], _T], denied: _D) -> _T | _D | _ZombieMarker:
    """``getter()``, ``denied`` when access is refused, ``_ZOMBIE`` for a zombie.

    ``NoSuchProcess`` propagates: the process is gone and is dropped whole.
    """
    try:
        return getter()
    except psutil.ZombieProcess:
        return _ZOMBIE
    except psutil.AccessDenied:
        return denied


def _scan_procfs() -> dict[int, tuple[int, bytes]] | None:
    """``{pid: (ppid, start time)}`` of every process on the host, from ``/proc/PID/stat``.

    ``None`` where there is no Linux ``/proc``. A process that exits or denies
    access during the scan is left out.
    """
    if not psutil.LINUX:
        return None
    procfs = psutil.PROCFS_PATH
    try:
        names = os.listdir(procfs)
    except OSError:
        return None
    out: dict[int, tuple[int, bytes]] = {}
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"{procfs}/{name}/stat", "rb") as f:
                data = f.read()
            # The name, in parentheses, may itself hold spaces and parentheses.
            fields = data[data.rindex(b")") + 2 :].split()
            out[int(name)] = (int(fields[1]), fields[19])
        except (OSError, ValueError, IndexError):
            continue
    return out


def _forest_order(root_pid: int, snaps: Iterable[ProcessSnapshot]) -> tuple[ProcessSnapshot, ...]:
    """Root, then a depth-first walk (children by pid), then any re-parented leftovers."""
    root: list[ProcessSnapshot] = []
    by_parent: dict[int, list[ProcessSnapshot]] = {}
    for snap in snaps:
        if snap.pid == root_pid:
            root.append(snap)
        else:
            by_parent.setdefault(snap.ppid, []).append(snap)
    for kids in by_parent.values():
        kids.sort(key=lambda s: s.pid, reverse=True)
    ordered: list[ProcessSnapshot] = []
    placed: set[int] = set()
    stack = list(by_parent.get(root_pid, ()))
    while stack:
        snap = stack.pop()
        if snap.pid in placed:
            continue
        placed.add(snap.pid)
        ordered.append(snap)
        stack.extend(by_parent.get(snap.pid, ()))
    leftovers = sorted(
        (s for kids in by_parent.values() for s in kids if s.pid not in placed),
        key=lambda s: s.pid,
    )
    return (*root, *ordered, *leftovers)

"""Stack dumps of a whole training process tree: the evidence users never had.

:func:`dump_tree` writes, into one folder of the run (``stacks/NNN-<kind>/``,
see :func:`new_dump_dir`):

- ``processes.txt``: every process of the tree (``ps --forest`` order) with its
  state, parent, CPU time and redacted command line, zombies included;
- ``pid-P.txt``: every thread's stack of each Python process P, innermost frame
  first.

How a stack is taken, first that works:

1. ``py-spy dump --pid P --json --native``: pauses the process for a moment and
   reads it from outside, so it works on a process stuck in C code, in a lock
   or in the kernel, which no in-process handler can. ``--native`` adds the C
   frames (a futex, ``poll``) and is dropped when it fails or is slow.
2. ``py-spy dump`` without ``--native``, then with ``--nonblocking`` (reads
   without pausing: the only way into a stopped, ``T``-state, process, since
   py-spy cannot pause what is already stopped).
3. ``SIGUSR1`` to a process that uses :mod:`runner.harness`, which registered
   faulthandler for it: the new part of ``RUN_DIR/stacks/faulthandler-P.txt``
   is copied. Only processes that own such a file get the signal, because
   SIGUSR1 kills a process that did not register a handler.

What happened to each process (method, error, note such as "stopped: read
without pausing") is in :class:`ProcessDump`, never raised: a dump that fails
for one process must not cost the others, nor the agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.sampling.procs import ProcessSnapshot, ProcessTree, ProcessTreeSampler

__all__ = [
    "STACKS_DIR",
    "Blocking",
    "ProcessDump",
    "StackDump",
    "dump_tree",
    "find_py_spy",
    "new_dump_dir",
]

STACKS_DIR = "stacks"
_DUMP_DIR = re.compile(r"^(\d{3,})-")
_KIND_CHARS = re.compile(r"[^a-z0-9_.-]+")
_LIBRARY = re.compile(r"(/site-packages/|/dist-packages/|/lib/python\d+(\.\d+)?/|^<)")
_STOPPED = ("stopped", "tracing-stop")
#: Seconds allowed for ``--native`` before falling back to Python frames only.
_NATIVE_SHARE = 0.5


def find_py_spy() -> str | None:
    """The ``py-spy`` executable: next to this interpreter (a venv), else on ``PATH``."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


def new_dump_dir(run_dir: Path, kind: str) -> Path:
    """Create ``RUN_DIR/stacks/NNN-<kind>``, numbered after the dumps already there."""
    root = Path(run_dir) / STACKS_DIR
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for e in root.iterdir() if (m := _DUMP_DIR.match(e.name))]
    number = max(numbers, default=0) + 1
    safe = _KIND_CHARS.sub("_", kind.lower()).strip("_") or "dump"
    while True:
        path = root / f"{number:03d}-{safe}"
        try:
            path.mkdir()
        except FileExistsError:
            number += 1
            continue
        return path


@dataclass(frozen=True)
class ProcessDump:
    """What the dump of one process of the tree gave."""

    pid: int
    #: psutil state when the dump started (``sleeping``, ``stopped``, ``zombie``...).
    state: str
    #: ``pid-P.txt`` in the dump folder; ``None`` when no stack could be taken.
    file: Path | None = None
    #: ``py-spy --native``, ``py-spy``, ``py-spy --nonblocking``, ``faulthandler``
    #: or ``none``.
    method: str = "none"
    #: Innermost Python frame of the main thread, ``func (file.py:line)``.
    main_top: str | None = None
    #: Innermost main-thread frame outside the standard library and
    #: site-packages: where the user's code waits.
    main_user: str | None = None
    #: Threads in the dump.
    threads: int = 0
    #: Why no stack (or a worse one) was taken.
    error: str | None = None
    #: Anything else worth knowing (a stopped process read without pausing).
    note: str | None = None
    #: Parent pid, when known.
    ppid: int | None = None
    #: The frame where the main thread waits for another process (a DataLoader's
    #: queue get, ``Popen.wait``, ``Process.join``), ``None`` when it does not:
    #: such a process is not the one that blocks.
    waits_in: str | None = None

    def to_dict(self, base: Path | None = None) -> dict[str, Any]:
        """JSON-ready; ``file`` relative to ``base`` when given."""
        file = None
        if self.file is not None:
            file = str(self.file.relative_to(base)) if base is not None else str(self.file)
        return {
            "pid": self.pid,
            "state": self.state,
            "file": file,
            "method": self.method,
            "main_top": self.main_top,
            "main_user": self.main_user,
            "threads": self.threads,
            "error": self.error,
            "note": self.note,
            "ppid": self.ppid,
            "waits_in": self.waits_in,
        }


@dataclass(frozen=True)
class Blocking:
    """Which process of a dump blocks, and which waits for it."""

    process: ProcessDump
    #: The process that waits for it (the training process), if not itself.
    waiter: ProcessDump | None = None
    #: Other processes that block the same way (the other DataLoader workers).
    alike: int = 0

    @property
    def frame(self) -> str | None:
        """Where it blocks: its own code's innermost frame, else the innermost frame."""
        return self.process.main_user or self.process.main_top

    def to_dict(self) -> dict[str, Any]:
        waiter = self.waiter
        return {
            "pid": self.process.pid,
            "frame": self.frame,
            "top": self.process.main_top,
            "waiter_pid": None if waiter is None else waiter.pid,
            "waiter_frame": None if waiter is None else waiter.waits_in,
            "alike": self.alike,
        }


@dataclass(frozen=True)
class StackDump:
    """One dump of a process tree."""

    directory: Path
    dumps: tuple[ProcessDump, ...]
    duration_s: float
    #: Processes seen but not dumped: zombies and non-Python programs, with why.
    skipped: Mapping[int, str] = field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        """Every stack file written."""
        return [d.file for d in self.dumps if d.file is not None]

    def main(self, pid: int | None) -> ProcessDump | None:
        """The dump of ``pid`` (the training process, usually), if taken."""
        return next((d for d in self.dumps if d.pid == pid and d.file is not None), None)

    def blocking(self, pid: int | None) -> Blocking | None:
        """The process that blocks, starting from ``pid`` (the training process).

        ``pid`` itself, unless its main thread waits for other processes (its
        DataLoader's workers, a subprocess): then the first of its dumped
        descendants that does not wait in turn, one with a frame of the user's
        own code first. ``None`` when ``pid`` was not dumped.
        """
        root = self.main(pid)
        if root is None:
            return None
        if root.waits_in is None:
            return Blocking(root)
        parents = {d.pid: d.ppid for d in self.dumps}

        def below_root(d: ProcessDump) -> bool:
            seen: set[int] = set()
            parent = d.ppid
            while parent is not None and parent not in seen:
                if parent == root.pid:
                    return True
                seen.add(parent)
                parent = parents.get(parent)
            return False

        found = [
            d
            for d in self.dumps
            if d.file is not None and d.pid != root.pid and d.waits_in is None and below_root(d)
        ]
        if not found:
            return Blocking(root)
        found.sort(key=lambda d: (d.main_user is None and d.main_top is None, d.main_user is None))
        return Blocking(found[0], waiter=root, alike=len(found) - 1)

    def evidence(self, run_dir: Path | None = None) -> dict[str, Any]:
        """JSON-ready summary for a ``stack_dump`` event; paths relative to ``run_dir``."""

        def rel(path: Path) -> str:
            if run_dir is not None:
                with contextlib.suppress(ValueError):
                    return str(path.relative_to(run_dir))
            return str(path)

        return {
            "dir": rel(self.directory),
            "files": [rel(f) for f in self.files],
            "top_frames": {str(d.pid): d.main_top for d in self.dumps if d.main_top},
            "user_frames": {str(d.pid): d.main_user for d in self.dumps if d.main_user},
            "processes": [
                {**d.to_dict(), "file": rel(d.file) if d.file else None} for d in self.dumps
            ],
            "skipped": {str(k): v for k, v in self.skipped.items()},
            "duration_s": round(self.duration_s, 3),
        }


def dump_tree(
    root_pid: int,
    directory: Path,
    *,
    run_dir: Path | None = None,
    py_spy: str | None = None,
    timeout_s: float = 10.0,
    native: bool = True,
    tree: ProcessTree | None = None,
) -> StackDump:
    """Dump every Python process of ``root_pid``'s tree into ``directory``.

    ``py_spy`` is the executable (:func:`find_py_spy` when ``None``; pass
    ``""`` to use only the faulthandler fallback); ``run_dir`` is where
    harness processes write their faulthandler files; ``timeout_s`` bounds each
    process's dump. ``tree`` is a walk of the tree already taken (a fresh one
    is taken otherwise). Never raises for a process that cannot be dumped.
    """
    started = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    if tree is None:
        try:
            tree = ProcessTreeSampler(root_pid).sample()
        except Exception:  # psutil itself broken: dump the root alone
            tree = None
    procs = list(tree.processes) if tree is not None else []
    if not procs:
        procs = [_bare(root_pid)]
    _write_processes(directory / "processes.txt", procs)
    exe = find_py_spy() if py_spy is None else (py_spy or None)
    skipped: dict[int, str] = {}
    targets: list[ProcessSnapshot] = []
    for proc in procs:
        if proc.is_zombie:
            skipped[proc.pid] = f"zombie: exited, not reaped by its parent {proc.ppid}"
        elif not _is_python(proc.pid):
            skipped[proc.pid] = f"not a Python process ({proc.name})"
        else:
            targets.append(proc)
    dumps: list[ProcessDump] = []
    if targets:
        with ThreadPoolExecutor(max_workers=min(4, len(targets))) as pool:
            futures = [
                pool.submit(_dump_one, p, directory, exe, run_dir, timeout_s, native)
                for p in targets
            ]
            dumps = [f.result() for f in futures]
    return StackDump(directory, tuple(dumps), time.monotonic() - started, skipped)


def _bare(pid: int) -> ProcessSnapshot:
    return ProcessSnapshot(
        pid=pid,
        ppid=0,
        name="?",
        state="?",
        cmdline=None,
        create_time=0.0,
        age_s=0.0,
        rss_bytes=None,
        cpu_time_s=None,
        cpu_delta_s=None,
        cpu_percent=None,
    )


def _write_processes(path: Path, procs: Sequence[ProcessSnapshot]) -> None:
    lines = [f"{'PID':>8} {'PPID':>8} {'STATE':<12} {'CPU_S':>9} {'RSS_MB':>8}  COMMAND"]
    for p in procs:
        cpu = "-" if p.cpu_time_s is None else f"{p.cpu_time_s:.2f}"
        rss = "-" if p.rss_bytes is None else f"{p.rss_bytes / 2**20:.0f}"
        cmd = p.cmdline if p.cmdline else f"[{p.name}]" + (" <defunct>" if p.is_zombie else "")
        lines.append(f"{p.pid:>8} {p.ppid:>8} {p.state:<12} {cpu:>9} {rss:>8}  {cmd}")
    with contextlib.suppress(OSError):
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _is_python(pid: int) -> bool:
    """Whether ``pid`` runs a Python interpreter (unknown counts as yes: try it)."""
    try:
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        exe = ""
    if exe.startswith(("python", "pypy")):
        return True
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            return any("libpython" in line for line in f)
    except OSError:
        return not exe  # unreadable: let py-spy decide


# --------------------------------------------------------------------------- one process


def _dump_one(
    proc: ProcessSnapshot,
    directory: Path,
    py_spy: str | None,
    run_dir: Path | None,
    timeout_s: float,
    native: bool,
) -> ProcessDump:
    pid, state = proc.pid, _state(proc.pid) or proc.state
    stopped = state in _STOPPED
    errors: list[str] = []
    note = None
    deadline = time.monotonic() + timeout_s
    if py_spy:
        if stopped:
            modes = [("py-spy --nonblocking", ["--nonblocking"])]
            note = f"process is {state} (T): py-spy read it without pausing"
        else:
            modes = [("py-spy", []), ("py-spy --nonblocking", ["--nonblocking"])]
            if native:
                modes.insert(0, ("py-spy --native", ["--native"]))
        for method, flags in modes:
            left = deadline - time.monotonic()
            if left <= 0.2:
                errors.append("py-spy: out of time")
                break
            limit = left * _NATIVE_SHARE if "--native" in flags else left
            threads, error = _py_spy(py_spy, pid, flags, limit)
            if threads is not None:
                path = directory / f"pid-{pid}.txt"
                _write_text(path, _render(pid, proc, method, threads, note))
                top, user, waits = _main_frames(pid, threads)
                return ProcessDump(
                    pid,
                    state,
                    path,
                    method,
                    top,
                    user,
                    len(threads),
                    _join(errors),
                    note,
                    proc.ppid,
                    waits,
                )
            errors.append(f"{method}: {error}")
    else:
        errors.append("py-spy not found (pip install py-spy)")
    # The fallback: faulthandler, for processes of the harness that registered it.
    if run_dir is not None:
        source = run_dir / STACKS_DIR / f"faulthandler-{pid}.txt"
        if source.is_file():
            if stopped:
                errors.append("SIGUSR1 not delivered: the process is stopped (T)")
            else:
                text = _faulthandler(pid, source, min(2.0, max(0.5, deadline - time.monotonic())))
                if text:
                    path = directory / f"pid-{pid}.txt"
                    header = f"Process {pid} ({state}): faulthandler (SIGUSR1)\n"
                    _write_text(path, header + text)
                    top, user, waits = _faulthandler_frames(text)
                    count = text.count("most recent call first")
                    return ProcessDump(
                        pid,
                        state,
                        path,
                        "faulthandler",
                        top,
                        user,
                        count,
                        _join(errors),
                        note,
                        proc.ppid,
                        waits,
                    )
                errors.append("faulthandler wrote nothing within the time allowed")
    return ProcessDump(
        pid, state, None, "none", error=_join(errors) or "no method", note=note, ppid=proc.ppid
    )


def _join(errors: list[str]) -> str | None:
    return "; ".join(errors) if errors else None


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            code = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return {
        "R": "running",
        "S": "sleeping",
        "D": "disk-sleep",
        "T": "stopped",
        "t": "tracing-stop",
        "Z": "zombie",
        "X": "dead",
        "I": "idle",
    }.get(code, code)


def _py_spy(
    exe: str, pid: int, flags: Sequence[str], timeout: float
) -> tuple[list[dict[str, Any]] | None, str]:
    """py-spy's threads of ``pid`` as parsed JSON, or ``None`` and why not."""
    try:
        done = subprocess.run(
            [exe, "dump", "--pid", str(pid), "--json", *flags],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.1f} s"
    except OSError as exc:
        return None, f"cannot run py-spy: {exc.strerror or exc}"
    if done.returncode != 0:
        words = done.stderr.decode("utf-8", "replace").strip().splitlines()
        first = next((w for w in words if w.startswith("Error")), words[0] if words else "")
        return None, first or f"exit code {done.returncode}"
    try:
        threads = json.loads(done.stdout)
    except ValueError:
        return None, "py-spy printed no JSON"
    if not isinstance(threads, list):
        return None, "py-spy printed no thread list"
    return [t for t in threads if isinstance(t, dict)], ""


def _is_python_frame(frame: Mapping[str, Any]) -> bool:
    filename = str(frame.get("filename") or "")
    return filename.endswith(".py") or filename.startswith("<")


def _frame_text(frame: Mapping[str, Any], *, short: bool) -> str:
    filename = str(frame.get("short_filename") if short else frame.get("filename") or "?")
    line = frame.get("line")
    where = f"{filename}:{line}" if line else filename
    return f"{frame.get('name') or '?'} ({where})"


def _main_thread(pid: int, threads: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for thread in threads:
        if thread.get("os_thread_id") == pid or thread.get("thread_name") == "MainThread":
            return thread
    return threads[0] if threads else None


def _main_frames(
    pid: int, threads: Sequence[Mapping[str, Any]]
) -> tuple[str | None, str | None, str | None]:
    """The main thread's innermost frame, innermost user frame, and where it waits for
    another process (see :func:`_waits_in`)."""
    main = _main_thread(pid, threads)
    if main is None:
        return None, None, None
    frames = [f for f in main.get("frames") or () if isinstance(f, Mapping)]
    python = [f for f in frames if _is_python_frame(f)]
    top = _frame_text(python[0], short=True) if python else None
    user = next(
        (
            _frame_text(f, short=True)
            for f in python
            if not _LIBRARY.search(str(f.get("filename") or ""))
        ),
        None,
    )
    named = [(str(f.get("name") or "?"), str(f.get("filename") or "")) for f in python]
    waits = _waits_in(named)
    text = None if waits is None else _frame_text(python[waits], short=True)
    return top, user, text


# Frames (file, function) in which a process waits for another one: a DataLoader
# for its workers, a pool, a Popen or a Process for its child.
_WAITING: tuple[tuple[re.Pattern[str], re.Pattern[str]], ...] = (
    (
        re.compile(r"torch/utils/data/dataloader\.py$"),
        re.compile(r"(^|\.)(_try_get_data|_get_data|_next_data)$"),
    ),
    (re.compile(r"multiprocessing/queues\.py$"), re.compile(r"(^|\.)get$")),
    (
        re.compile(r"multiprocessing/connection\.py$"),
        re.compile(r"(^|\.)(wait|poll|_poll|recv|recv_bytes|_recv_bytes|_recv)$"),
    ),
    (re.compile(r"multiprocessing/pool\.py$"), re.compile(r"(^|\.)(get|wait|join|map|starmap)$")),
    (re.compile(r"multiprocessing/popen_\w+\.py$"), re.compile(r"(^|\.)(wait|poll)$")),
    (re.compile(r"multiprocessing/process\.py$"), re.compile(r"(^|\.)join$")),
    (
        re.compile(r"/subprocess\.py$"),
        re.compile(r"(^|\.)(wait|_wait|_try_wait|communicate|_communicate|run|call)$"),
    ),
    (re.compile(r"concurrent/futures/process\.py$"), re.compile(r".")),
)


def _waits_in(frames: Sequence[tuple[str, str]]) -> int | None:
    """Index of the frame where this thread waits for another process, if it does.

    ``frames`` are (function, file), innermost first. Only the library frames
    above the innermost frame of the user's own code count: a forked worker
    carries its parent's frames below its own (``Popen``, the DataLoader's
    start), which say nothing about what it waits for now. The outermost
    waiting frame of that run is the one named (the DataLoader's, not the
    selector's).
    """
    found = None
    for index, (name, filename) in enumerate(frames):
        if not _LIBRARY.search(filename):
            break
        if any(f.search(filename) and n.search(name) for f, n in _WAITING):
            found = index
    return found


def _render(
    pid: int,
    proc: ProcessSnapshot,
    method: str,
    threads: Sequence[Mapping[str, Any]],
    note: str | None,
) -> str:
    """py-spy's text layout, with full file names, from its JSON."""
    lines = [
        f"Process {pid} ({proc.state}): {proc.cmdline or proc.name}",
        f"Taken with {method} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
        + (f"; {note}" if note else ""),
        "",
    ]
    main = _main_thread(pid, threads)
    ordered = sorted(threads, key=lambda t: t is not main)  # the main thread first
    for thread in ordered:
        active = "active" if thread.get("active") else "idle"
        gil = ", holds the GIL" if thread.get("owns_gil") else ""
        name = thread.get("thread_name") or ""
        tid = thread.get("os_thread_id") or thread.get("thread_id")
        lines.append(f'Thread {tid} ({active}{gil}): "{name}"')
        for frame in thread.get("frames") or ():
            if isinstance(frame, Mapping):
                lines.append(f"    {_frame_text(frame, short=False)}")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):
        path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- faulthandler


def _faulthandler(pid: int, source: Path, wait_s: float) -> str:
    """Ask a harness process for its stacks (SIGUSR1); the text it appended to ``source``."""
    try:
        before = source.stat().st_size
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return ""
    deadline = time.monotonic() + wait_s
    size = before
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            now = source.stat().st_size
        except OSError:
            return ""
        if now > before and now == size:
            break  # grew, then stopped growing: the dump is written
        size = now
    try:
        with open(source, "rb") as f:
            f.seek(before)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


_FH_THREAD = re.compile(r"^(Current thread|Thread) (0x[0-9a-f]+) \(most recent call first\):")
_FH_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<name>.+)$')


def _faulthandler_frames(text: str) -> tuple[str | None, str | None, str | None]:
    """Top frame, first user frame and waiting frame of the current (signalled: main) thread."""
    blocks: list[tuple[bool, list[tuple[str, str, str]]]] = []
    for line in text.splitlines():
        head = _FH_THREAD.match(line)
        if head:
            blocks.append((head.group(1) == "Current thread", []))
            continue
        frame = _FH_FRAME.match(line)
        if frame and blocks:
            blocks[-1][1].append((frame.group("name"), frame.group("file"), frame.group("line")))
    if not blocks:
        return None, None, None
    frames = next((f for current, f in blocks if current), blocks[0][1])

    def text_of(name: str, file: str, line: str) -> str:
        return f"{name} ({os.path.basename(file)}:{line})"

    top = text_of(*frames[0]) if frames else None
    user = next((text_of(*f) for f in frames if not _LIBRARY.search(f[1])), None)
    waits = _waits_in([(name, file) for name, file, _ in frames])
    return top, user, None if waits is None else text_of(*frames[waits])

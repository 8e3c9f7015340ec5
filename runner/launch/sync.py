"""Bring a local dataset folder to a rented host: ``rsync`` over runner's SSH, with progress.

:func:`sync_folder` copies ``src/`` into ``dest/`` on the host with ``rsync -a`` through the
same ``ssh`` options runner logs in with (its key, the instance's pinned known-hosts file,
timeouts: ``-e 'ssh ...'``), so a copy needs no other login. ``--info=progress2`` gives one
whole-transfer progress line, which :func:`parse_progress2` turns into a :class:`SyncProgress`
for the caller (a progress bar, or throttled lines). A re-run sends only what changed.

When ``rsync`` is missing on either end, it falls back to ``tar`` piped over one ``ssh``
session (everything sent again; progress counted from the bytes piped), and says so in one
line. Raises :class:`SyncError` (one line, what failed and what to do) on any failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runner.cloud.ssh import Ssh, SshTarget
from runner.errors import RunnerError

__all__ = [
    "SyncError",
    "SyncProgress",
    "SyncResult",
    "folder_size",
    "parse_progress2",
    "progress_printer",
    "rsync_argv",
    "sync_folder",
]


class SyncError(RunnerError):
    """The dataset could not be copied to the host."""


@dataclass(frozen=True)
class SyncProgress:
    """How far a transfer is: bytes sent so far and, when known, the share and speed."""

    bytes_done: int
    percent: int | None = None
    rate: str | None = None
    """As rsync prints it, e.g. ``12.34MB/s``."""
    eta: str | None = None
    """``H:MM:SS`` left (rsync's estimate), when known."""
    total: int | None = None


@dataclass(frozen=True)
class SyncResult:
    """A finished transfer."""

    method: Literal["rsync", "tar"]
    bytes_total: int
    """Size of the source folder."""
    seconds: float


# "  1,234,567  45%   12.34MB/s    0:01:23 (xfr#12, to-chk=5/70)"; the rate may be "kB/s",
# "MB/s", "GB/s"; the tail in parentheses is only on some lines.
_PROGRESS2 = re.compile(
    r"^\s*(?P<bytes>[\d,.]+)\s+(?P<pct>\d+)%\s+(?P<rate>[\d.,]+\s*[kMGT]?B/s)\s+(?P<eta>\d+:\d\d:\d\d)"
)


def parse_progress2(line: str) -> SyncProgress | None:
    """One ``rsync --info=progress2`` line as progress; None for any other line."""
    m = _PROGRESS2.match(line)
    if m is None:
        return None
    digits = re.sub(r"[^\d]", "", m.group("bytes"))
    if not digits:
        return None
    return SyncProgress(
        bytes_done=int(digits),
        percent=int(m.group("pct")),
        rate=m.group("rate").replace(" ", ""),
        eta=m.group("eta"),
    )


def folder_size(path: Path) -> int:
    """Bytes of every regular file under ``path`` (links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                total += st.st_size
    return total


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def progress_printer(
    say: Callable[[str], None], *, what: str = "dataset", every_s: float = 2.0
) -> Callable[[SyncProgress], None]:
    """A progress callback that says one line at most every ``every_s`` (and at 100 %)."""
    last = [float("-inf")]
    said_done = [False]

    def show(p: SyncProgress) -> None:
        now = time.monotonic()
        done = p.percent == 100
        if done and said_done[0]:
            return
        if not done and now - last[0] < every_s:
            return
        last[0] = now
        said_done[0] = said_done[0] or done
        pct = f"{p.percent:3d}% " if p.percent is not None else ""
        total = f" of {_human(p.total)}" if p.total else ""
        rate = f", {p.rate}" if p.rate else ""
        eta = f", {p.eta} left" if p.eta and not done else ""
        say(f"{what}: {pct}{_human(p.bytes_done)}{total}{rate}{eta}")

    return show


def _ssh_e(ssh: Ssh, target: SshTarget) -> str:
    """The ``-e`` value: runner's ssh with its options, without the ``user@host``."""
    return shlex.join([ssh.binary, *ssh.options(target)[:-1]])


def rsync_argv(
    src: Path, ssh: Ssh, target: SshTarget, dest: str, *, rsync: str = "rsync"
) -> list[str]:
    """The rsync command line that copies ``src/`` into ``dest/`` on ``target``."""
    return [
        rsync,
        "-a",
        "--partial",
        "--no-inc-recursive",  # the total is known up front: the percentage is of everything
        "--info=progress2",
        "-e",
        _ssh_e(ssh, target),
        # The remote side makes the destination's parents (rsync makes only the last level).
        f"--rsync-path=mkdir -p {shlex.quote(dest)} && rsync",
        f"{src}/",
        f"{target.user}@{target.host}:{dest}/",
    ]


class _NoRemoteRsync(Exception):
    """rsync is not installed on the host (its shell answered 127)."""


def sync_folder(
    src: Path,
    ssh: Ssh,
    target: SshTarget,
    dest: str,
    *,
    progress: Callable[[SyncProgress], None] | None = None,
    say: Callable[[str], None] = lambda line: None,
    force_tar: bool = False,
) -> SyncResult:
    """Copy the folder ``src`` to ``dest`` on ``target``; see the module docstring."""
    if not src.is_dir():
        raise SyncError(f"dataset folder {src} does not exist; pass --data PATH")
    total = folder_size(src)
    local_rsync = shutil.which("rsync")
    started = time.monotonic()
    missing = "forced" if force_tar else "here"
    if not force_tar and local_rsync is not None:
        # No separate look for the host's rsync (an SSH round trip): its absence shows as 127.
        ssh.known_hosts_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            _run_rsync(rsync_argv(src, ssh, target, dest, rsync=local_rsync), total, progress)
            return SyncResult("rsync", total, time.monotonic() - started)
        except _NoRemoteRsync:
            missing = "on the host"
    say(f"dataset: rsync is missing {missing}: sending it with tar over ssh (no resume)")
    _run_tar(src, ssh, target, dest, total, progress)
    return SyncResult("tar", total, time.monotonic() - started)


def _run_rsync(
    argv: list[str], total: int, progress: Callable[[SyncProgress], None] | None
) -> None:
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "LC_ALL": "C"},
    )
    assert proc.stdout is not None and proc.stderr is not None
    buffer = b""
    try:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            buffer += chunk
            *complete, buffer = re.split(rb"[\r\n]", buffer)
            for raw in complete:
                p = parse_progress2(raw.decode(errors="replace"))
                if p is not None and progress is not None:
                    progress(SyncProgress(p.bytes_done, p.percent, p.rate, p.eta, total))
        err = proc.stderr.read().decode(errors="replace")
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if code != 0:
        lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
        if code == 127 or "rsync: not found" in err or "rsync: command not found" in err:
            raise _NoRemoteRsync(err)
        last = lines[-1] if lines else f"exit code {code}"
        raise SyncError(f"rsync of the dataset failed ({last}); run the launch again to resume")


def _run_tar(
    src: Path,
    ssh: Ssh,
    target: SshTarget,
    dest: str,
    total: int,
    progress: Callable[[SyncProgress], None] | None,
) -> None:
    tar = shutil.which("tar")
    if tar is None:
        raise SyncError("neither rsync nor tar is installed here; install rsync")
    q = shlex.quote(dest)
    remote = f"mkdir -p {q} && tar -C {q} -xf -"
    pack = subprocess.Popen(
        [tar, "-C", str(src), "-cf", "-", "."], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    ssh.known_hosts_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    unpack = subprocess.Popen(
        [ssh.binary, *ssh.options(target), remote],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert pack.stdout is not None and unpack.stdin is not None
    sent = 0
    started = time.monotonic()
    try:
        while chunk := os.read(pack.stdout.fileno(), 1 << 20):
            unpack.stdin.write(chunk)
            sent += len(chunk)
            if progress is not None:
                elapsed = max(time.monotonic() - started, 1e-6)
                done = min(sent, total)
                pct = min(99, int(done * 100 / total)) if total else None
                progress(SyncProgress(done, pct, f"{_human(sent / elapsed)}/s", None, total))
        unpack.stdin.close()
        pack_code, unpack_code = pack.wait(), unpack.wait()
    except BaseException:
        pack.kill()
        unpack.kill()
        pack.wait()
        unpack.wait()
        raise
    err = (unpack.stderr.read() if unpack.stderr else b"").decode(errors="replace").strip()
    if pack_code != 0 or unpack_code != 0:
        why = err.splitlines()[-1] if err else f"tar {pack_code}, ssh {unpack_code}"
        raise SyncError(f"copying the dataset with tar over ssh failed ({why}); install rsync")
    if progress is not None:
        progress(SyncProgress(total, 100, None, None, total))

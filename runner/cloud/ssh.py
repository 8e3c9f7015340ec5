"""A small runner of ``ssh`` commands: runner's key, timeouts, per-instance known hosts.

It drives the OpenSSH client binary (no paramiko: nothing to import for ``runner --help``).

- Keys: runner's own ed25519 key in the state directory (:func:`default_key_path`), made with
  ``ssh-keygen`` on first use (:func:`ensure_key`), or any key the user names.
- Fresh hosts: each target has its own known-hosts file (``StrictHostKeyChecking=accept-new``),
  so a fresh instance's key is accepted once and then pinned, and vast.ai reusing a proxy
  ``host:port`` for another instance never trips "REMOTE HOST IDENTIFICATION HAS CHANGED".
- Failures of ssh itself (exit 255) become one-line errors by kind:
  :class:`SshUnreachableError` (refused, timed out, reset: sshd may still be starting; worth a
  retry), :class:`SshAuthError` (the key was refused), :class:`SshError` for the rest. A
  command that ran and failed is not an error here: its exit code comes back.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.cloud.registry import state_dir
from runner.cloud.vast import CloudError

__all__ = [
    "Ssh",
    "SshAuthError",
    "SshError",
    "SshResult",
    "SshTarget",
    "SshUnreachableError",
    "default_key_path",
    "ensure_key",
]


class SshError(CloudError):
    """ssh could not run a command on the host."""


class SshUnreachableError(SshError):
    """Nothing answered, or the connection dropped before login (refused, timeout, reset)."""


class SshAuthError(SshError):
    """The host refused runner's key."""


@dataclass(frozen=True)
class SshTarget:
    """Where to log in; ``name`` picks the known-hosts file (one per instance)."""

    host: str
    port: int
    user: str = "root"
    name: str | None = None

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        raw = self.name or f"{self.host}_{self.port}"
        return re.sub(r"[^A-Za-z0-9._-]", "_", raw)


@dataclass(frozen=True)
class SshResult:
    """A command's outcome."""

    returncode: int
    stdout: str
    stderr: str
    elapsed_s: float


def default_key_path(environ: Mapping[str, str] | None = None) -> Path:
    """Runner's own private key: ``<state dir>/ssh/id_ed25519``."""
    return state_dir(environ) / "ssh" / "id_ed25519"


def ensure_key(path: Path | None = None, *, create: bool | None = None) -> str:
    """The public key of ``path`` (default :func:`default_key_path`).

    A missing key is made with ``ssh-keygen`` when ``create`` (default: only for runner's own
    key). Raises :class:`SshError` if ``ssh-keygen`` is missing or fails, a named key does not
    exist, or it has no ``.pub`` beside it.
    """
    key = path if path is not None else default_key_path()
    make = (path is None) if create is None else create
    pub = key.with_name(key.name + ".pub")
    if key.is_file() and pub.is_file():
        return pub.read_text().strip()
    if key.is_file():
        raise SshError(f"{key} has no public key beside it ({pub}); make one with ssh-keygen -y")
    if not make:
        raise SshError(f"SSH key {key} does not exist")
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise SshError("ssh-keygen is not installed; install the OpenSSH client")
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    comment = f"runner@{socket.gethostname()}"
    done = subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not pub.is_file():
        raise SshError(f"ssh-keygen failed making {key}: {done.stderr.strip() or done.returncode}")
    return pub.read_text().strip()


_UNREACHABLE = (
    "connection refused",
    "connection timed out",
    "operation timed out",
    "timed out",
    "connection reset",
    "connection closed",
    "kex_exchange_identification",
    "no route to host",
    "network is unreachable",
    "could not resolve hostname",
    "broken pipe",
)


class Ssh:
    """Runs commands over ``ssh`` with one key.

    Args:
        key: the private key (``-i``); ``IdentitiesOnly`` keeps agents' other keys out.
        known_hosts_dir: where each target's known-hosts file lives (default
            ``<state dir>/known_hosts``).
        connect_timeout_s: ssh's ``ConnectTimeout``.
    """

    def __init__(
        self,
        key: Path,
        *,
        known_hosts_dir: Path | None = None,
        connect_timeout_s: float = 10.0,
        binary: str | None = None,
    ) -> None:
        self.key = key
        self.known_hosts_dir = known_hosts_dir or state_dir() / "known_hosts"
        self.connect_timeout_s = connect_timeout_s
        found = binary or shutil.which("ssh")
        if found is None:
            raise SshError("the ssh client is not installed; install OpenSSH (openssh-client)")
        self.binary = found

    def known_hosts(self, target: SshTarget) -> Path:
        return self.known_hosts_dir / target.known_hosts_name

    def options(self, target: SshTarget) -> list[str]:
        """Everything but the command: options, port, ``user@host``."""
        return [
            *("-i", str(self.key), "-p", str(target.port)),
            *("-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"),
            *("-o", "StrictHostKeyChecking=accept-new"),
            *("-o", f"UserKnownHostsFile={self.known_hosts(target)}"),
            *("-o", f"ConnectTimeout={max(1, round(self.connect_timeout_s))}"),
            *("-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"),
            *("-o", "LogLevel=ERROR"),
            f"{target.user}@{target.host}",
        ]

    def command_line(self, target: SshTarget) -> str:
        """What a user types to log in the same way."""
        return shlex.join(
            [
                "ssh",
                *("-i", str(self.key), "-p", str(target.port)),
                *("-o", f"UserKnownHostsFile={self.known_hosts(target)}"),
                f"{target.user}@{target.host}",
            ]
        )

    def run(
        self,
        target: SshTarget,
        command: str | Sequence[str],
        *,
        input: str | None = None,
        timeout_s: float = 60.0,
    ) -> SshResult:
        """Run ``command`` (a shell line, or argv joined with quoting) on ``target``.

        Returns the command's result whatever its exit code; raises :class:`SshError`
        subclasses when ssh itself failed, or the command outlived ``timeout_s``.
        """
        self.known_hosts_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        line = command if isinstance(command, str) else shlex.join(command)
        argv = [self.binary, *self.options(target), line]
        start = time.monotonic()
        try:
            done = subprocess.run(
                argv,
                input=input if input is not None else "",
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
                env={**os.environ, "LC_ALL": "C"},
            )
        except subprocess.TimeoutExpired:
            raise SshError(
                f"ssh {target}: the command did not finish within {timeout_s:g} s"
            ) from None
        elapsed = time.monotonic() - start
        if done.returncode == 255:
            raise _classify(target, done.stderr)
        return SshResult(done.returncode, done.stdout, done.stderr, elapsed)

    def forget(self, target: SshTarget) -> None:
        """Drop the target's pinned host key (its instance is gone)."""
        self.known_hosts(target).unlink(missing_ok=True)


def _classify(target: SshTarget, stderr: str) -> SshError:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else "ssh exited with 255 and said nothing"
    text = stderr.lower()
    if "permission denied" in text:
        return SshAuthError(f"ssh {target}: the host refused runner's key ({last})")
    if "host key verification failed" in text or "identification has changed" in text:
        return SshError(f"ssh {target}: the host key does not match the pinned one ({last})")
    if "connection refused" in text:
        return SshUnreachableError(f"ssh {target}: connection refused (no sshd listening)")
    if any(marker in text for marker in _UNREACHABLE):
        return SshUnreachableError(f"ssh {target}: {last}")
    return SshError(f"ssh {target} failed: {last}")

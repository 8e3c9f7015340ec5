"""The host around the job: the disks that matter, RAM, swap, load, CPUs.

The seeds lost runs to disks more than to GPUs: checkpoints filling a 50 GB
overlay at step 10000, a "2 TB disk" that was a read-only mount, a /workspace
that was an overlay. :class:`HostSampler` reports, for each role the job cares
about (run folder, checkpoints, dataset, /dev/shm), the free space, how fast it
is being used, and what the mount really is (type, read-only, overlay) as the
kernel's mount table says.

Invariants:

- Paths on the same mount are reported once, with all their roles.
- A missing or unreadable path is a disk entry with ``present=False`` and its
  ``error``; it never raises.
- Space comes from ``statvfs`` (``df``); the mount from the longest mount point
  in ``/proc/self/mounts`` that contains the path's real location, the last
  entry winning when mounts are stacked on the same point.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "MOUNTS_PATH",
    "OVERLAY_FS_TYPES",
    "DiskSnapshot",
    "HostSampler",
    "HostSnapshot",
    "MountEntry",
    "find_mount",
    "parse_mounts",
]

#: The mount table of the agent's own mount namespace.
MOUNTS_PATH = "/proc/self/mounts"
#: Filesystem types that are a copy-on-write layer over another filesystem:
#: their free space is the host's, shared with every other container on it.
OVERLAY_FS_TYPES = frozenset({"overlay", "overlayfs", "fuse.fuse-overlayfs", "aufs"})

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/mounts``."""

    #: What is mounted: a block device, ``tmpfs``, ``overlay``, a server path.
    device: str
    #: Where it is mounted, octal escapes (``\\040`` for a space) decoded.
    mount_point: str
    #: Filesystem type as the kernel names it (``ext4``, ``xfs``, ``overlay``, ...).
    fs_type: str
    #: Mount options, in order (``rw``/``ro`` first).
    options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        """True when mounted ``ro``."""
        return "ro" in self.options

    @property
    def overlay(self) -> bool:
        """True for a copy-on-write layer (:data:`OVERLAY_FS_TYPES`)."""
        return self.fs_type in OVERLAY_FS_TYPES


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash as \ooo (octal).
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field) if "\\" in field else field


def parse_mounts(text: str) -> tuple[MountEntry, ...]:
    """Parse the text of ``/proc/mounts`` (or ``/proc/self/mounts``); bad lines are skipped."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        entries.append(
            MountEntry(
                device=_unescape(fields[0]),
                mount_point=_unescape(fields[1]),
                fs_type=fields[2],
                options=tuple(fields[3].split(",")),
            )
        )
    return tuple(entries)


def find_mount(path: str, mounts: Sequence[MountEntry]) -> MountEntry | None:
    """The mount that holds ``path`` (absolute, symlinks already resolved).

    The longest mount point that is ``path`` or one of its parents; of several
    entries on the same point, the last (the one on top). ``None`` when no
    entry matches (an empty or unreadable mount table).
    """
    best: MountEntry | None = None
    for entry in mounts:
        point = entry.mount_point
        inside = (
            path == point
            or point == "/"
            or path.startswith(point if point.endswith("/") else point + "/")
        )
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = entry
    return best


@dataclass(frozen=True)
class DiskSnapshot:
    """One filesystem the job uses, with every role that lives on it (``df -T``)."""

    #: The roles that resolve to this mount, as given to the sampler
    #: (``run``, ``checkpoints``, ``dataset``, ``shm``, ...), in the order given.
    roles: tuple[str, ...]
    #: The path given for each role, same order as ``roles``.
    paths: tuple[str, ...]
    #: False when the path does not exist or cannot be examined; every field
    #: below is then ``None`` and ``error`` says why.
    present: bool
    #: Mount point holding the paths; ``None`` when absent or the mount table is
    #: unreadable.
    mount_point: str | None
    #: Mounted device or source (``/dev/nvme0n1p1``, ``overlay``, ``tmpfs``).
    device: str | None
    #: Filesystem type (``ext4``, ``xfs``, ``overlay``, ``tmpfs``, ``nfs4``, ...).
    fs_type: str | None
    #: True when writes will fail: ``statvfs`` reports ``ST_RDONLY`` or the
    #: mount options say ``ro``.
    read_only: bool | None
    #: True on a copy-on-write layer (:data:`OVERLAY_FS_TYPES`), whose space is
    #: the host's and shared with its other containers.
    overlay: bool | None
    #: Size of the filesystem in bytes.
    total_bytes: int | None
    #: Bytes a non-root writer can still use (``df``'s Avail).
    free_bytes: int | None
    #: Bytes in use (``df``'s Used: total minus all free blocks).
    used_bytes: int | None
    #: Net growth of ``used_bytes`` per second since the previous sample: the
    #: write rate as the filesystem sees it, negative when space was freed.
    #: ``None`` on the first sample of this mount.
    write_rate_bps: float | None
    #: Why the disk is not present (``"missing"`` or the OS error), else ``None``.
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values."""
        return {
            "roles": list(self.roles),
            "paths": list(self.paths),
            "present": self.present,
            "mount_point": self.mount_point,
            "device": self.device,
            "fs_type": self.fs_type,
            "read_only": self.read_only,
            "overlay": self.overlay,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
            "used_bytes": self.used_bytes,
            "write_rate_bps": self.write_rate_bps,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiskSnapshot:
        """The inverse of :meth:`to_dict`; raises ``KeyError`` on a missing field."""
        return cls(
            roles=tuple(data["roles"]),
            paths=tuple(data["paths"]),
            present=data["present"],
            mount_point=data["mount_point"],
            device=data["device"],
            fs_type=data["fs_type"],
            read_only=data["read_only"],
            overlay=data["overlay"],
            total_bytes=data["total_bytes"],
            free_bytes=data["free_bytes"],
            used_bytes=data["used_bytes"],
            write_rate_bps=data["write_rate_bps"],
            error=data["error"],
        )


@dataclass(frozen=True)
class HostSnapshot:
    """Memory, load and the job's disks at one instant (``free -b``, ``uptime``, ``df``).

    Memory figures are the kernel's (``/proc/meminfo``): inside a container
    they are the host's, not the container's cgroup limit.
    """

    #: Physical RAM in bytes.
    ram_total_bytes: int
    #: RAM available to new allocations without swapping (``MemAvailable``).
    ram_available_bytes: int
    #: Swap size in bytes (0 when there is no swap).
    swap_total_bytes: int
    #: Swap in use in bytes.
    swap_used_bytes: int
    #: 1, 5 and 15-minute load averages (runnable + ``D``-state tasks).
    load_avg: tuple[float, float, float]
    #: Logical CPUs of the machine; ``None`` when undeterminable.
    cpu_count: int | None
    #: CPUs this process may run on (its affinity: a container's cpuset).
    cpu_usable: int | None
    #: The disks, in the order their first role was given.
    disks: tuple[DiskSnapshot, ...]

    def disk(self, role: str) -> DiskSnapshot | None:
        """The disk holding ``role``, or ``None`` for an unknown role."""
        for disk in self.disks:
            if role in disk.roles:
                return disk
        return None

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values."""
        return {
            "ram_total_bytes": self.ram_total_bytes,
            "ram_available_bytes": self.ram_available_bytes,
            "swap_total_bytes": self.swap_total_bytes,
            "swap_used_bytes": self.swap_used_bytes,
            "load_avg": list(self.load_avg),
            "cpu_count": self.cpu_count,
            "cpu_usable": self.cpu_usable,
            "disks": [d.to_dict() for d in self.disks],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostSnapshot:
        """The inverse of :meth:`to_dict`; raises ``KeyError`` on a missing field."""
        one, five, fifteen = data["load_avg"]
        return cls(
            ram_total_bytes=data["ram_total_bytes"],
            ram_available_bytes=data["ram_available_bytes"],
            swap_total_bytes=data["swap_total_bytes"],
            swap_used_bytes=data["swap_used_bytes"],
            load_avg=(one, five, fifteen),
            cpu_count=data["cpu_count"],
            cpu_usable=data["cpu_usable"],
            disks=tuple(DiskSnapshot.from_dict(d) for d in data["disks"]),
        )


@dataclass(frozen=True)
class _Used:
    used_bytes: int
    at: float  # time.monotonic()


class HostSampler:
    """Samples RAM, swap, load and the disks given as ``{role: path}``.

    ``mounts_path`` is the mount table to read (a file in ``/proc/mounts``
    format); tests point it at a crafted one. Not thread-safe: it keeps the
    previous used space of each mount to compute write rates.
    """

    def __init__(
        self,
        disks: Mapping[str, str | os.PathLike[str]] | None = None,
        *,
        mounts_path: str | os.PathLike[str] = MOUNTS_PATH,
    ) -> None:
        self.disks = {role: os.fspath(path) for role, path in (disks or {}).items()}
        self.mounts_path = os.fspath(mounts_path)
        self._used: dict[tuple[int, str], _Used] = {}

    def sample(self) -> HostSnapshot:
        """RAM, swap, load and disks now.

        Raises ``OSError`` only when ``/proc/meminfo`` itself is unreadable;
        disk problems are reported in the disks.
        """
        ram_total, ram_available, swap_total, swap_free = _meminfo()
        try:
            usable: int | None = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            usable = None
        one, five, fifteen = os.getloadavg()
        return HostSnapshot(
            ram_total_bytes=ram_total,
            ram_available_bytes=ram_available,
            swap_total_bytes=swap_total,
            swap_used_bytes=max(0, swap_total - swap_free),
            load_avg=(one, five, fifteen),
            cpu_count=os.cpu_count(),
            cpu_usable=usable,
            disks=self.sample_disks(),
        )

    def sample_disks(self) -> tuple[DiskSnapshot, ...]:
        """Just the disks, grouped by mount, in the order their first role was given."""
        if not self.disks:
            return ()
        mounts = self._read_mounts()
        now = time.monotonic()
        groups: dict[tuple[int, str], list[tuple[str, str]]] = {}
        info: dict[tuple[int, str], tuple[MountEntry | None, os.statvfs_result]] = {}
        out: list[DiskSnapshot | tuple[int, str]] = []
        for role, path in self.disks.items():
            try:
                real = os.path.realpath(path)
                dev = os.stat(real).st_dev
                mount = find_mount(real, mounts)
                key = (dev, mount.mount_point if mount else "")
                if key not in info:
                    info[key] = (mount, os.statvfs(real))
            except FileNotFoundError:
                out.append(_absent(role, path, "missing"))
                continue
            except OSError as exc:
                out.append(_absent(role, path, f"{type(exc).__name__}: {exc.strerror or exc}"))
                continue
            if key not in groups:
                groups[key] = []
                out.append(key)
            groups[key].append((role, path))
        seen = set(info)
        self._used = {k: v for k, v in self._used.items() if k in seen}
        disks: list[DiskSnapshot] = []
        for item in out:
            if isinstance(item, DiskSnapshot):
                disks.append(item)
                continue
            mount, st = info[item]
            disks.append(self._present(item, groups[item], mount, st, now))
        return tuple(disks)

    def _present(
        self,
        key: tuple[int, str],
        members: list[tuple[str, str]],
        mount: MountEntry | None,
        st: os.statvfs_result,
        now: float,
    ) -> DiskSnapshot:
        frsize = st.f_frsize or st.f_bsize
        total = st.f_blocks * frsize
        used = (st.f_blocks - st.f_bfree) * frsize
        prev = self._used.get(key)
        rate = None
        if prev is not None and now > prev.at:
            rate = (used - prev.used_bytes) / (now - prev.at)
        self._used[key] = _Used(used, now)
        read_only = bool(st.f_flag & os.ST_RDONLY) or (mount is not None and mount.read_only)
        return DiskSnapshot(
            roles=tuple(role for role, _ in members),
            paths=tuple(path for _, path in members),
            present=True,
            mount_point=mount.mount_point if mount else None,
            device=mount.device if mount else None,
            fs_type=mount.fs_type if mount else None,
            read_only=read_only,
            overlay=mount.overlay if mount else None,
            total_bytes=total,
            free_bytes=st.f_bavail * frsize,
            used_bytes=used,
            write_rate_bps=rate,
        )

    def _read_mounts(self) -> tuple[MountEntry, ...]:
        try:
            return parse_mounts(Path(self.mounts_path).read_text(errors="replace"))
        except OSError:
            # Without a mount table, space is still known; type and overlay are not.
            return ()


def _absent(role: str, path: str, error: str) -> DiskSnapshot:
    return DiskSnapshot(
        roles=(role,),
        paths=(path,),
        present=False,
        mount_point=None,
        device=None,
        fs_type=None,
        read_only=None,
        overlay=None,
        total_bytes=None,
        free_bytes=None,
        used_bytes=None,
        write_rate_bps=None,
        error=error,
    )


def _meminfo() -> tuple[int, int, int, int]:
    """(MemTotal, MemAvailable, SwapTotal, SwapFree) in bytes."""
    # One read of /proc/meminfo; psutil.swap_memory() would also parse /proc/vmstat.
    try:
        with open("/proc/meminfo", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        vm, sw = psutil.virtual_memory(), psutil.swap_memory()
        return vm.total, vm.available, sw.total, sw.free
    fields: dict[bytes, int] = {}
    for line in data.splitlines():
        name, _, rest = line.partition(b":")
        if name in (b"MemTotal", b"MemAvailable", b"MemFree", b"SwapTotal", b"SwapFree"):
            fields[name] = int(rest.split()[0]) * 1024
    available = fields.get(b"MemAvailable", fields.get(b"MemFree", 0))
    return (
        fields.get(b"MemTotal", 0),
        available,
        fields.get(b"SwapTotal", 0),
        fields.get(b"SwapFree", 0),
    )

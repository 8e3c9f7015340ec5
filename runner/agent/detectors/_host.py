"""The host around the run: the checkpoint disk, /dev/shm, RAM."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from typing import Any

from runner.agent.detectors._common import (
    GB,
    MIB,
    CheckpointWatch,
    LogMatch,
    checkpoint_disk,
    duration,
    find_line,
    gb,
    make_event,
    mentions_shm,
    num,
    processes,
    python_processes,
    workers,
)
from runner.agent.observe import Observation
from runner.rundir import Event
from runner.sampling.host import DiskSnapshot
from runner.spec import WatchdogSpec

# -- the checkpoint disk ---------------------------------------------------------

#: A space level must hold this long, outside checkpoint writes, before it is
#: reported: a save (new file first, old one deleted after) dips free space briefly.
DISK_SETTLE_S = 30.0
#: History of the disk's write rate averaged for the time-to-full estimate.
DISK_RATE_WINDOW_S = 1800.0
#: With no checkpoint size known, warn when the disk fills within this...
DISK_HORIZON_S = 3600.0
#: ...at a rate averaged over at least this long.
DISK_MIN_HISTORY_S = 600.0

_DISK_FULL: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("No space left on device", re.compile(r"No space left on device")),
    ("PytorchStreamWriter failed writing file", re.compile(r"PytorchStreamWriter failed writing")),
    ("OSError: [Errno 28]", re.compile(r"\[Errno 28\]")),
    ("Disk quota exceeded", re.compile(r"Disk quota exceeded|\[Errno 122\]")),
)
_HUB = "the Hub pusher (when enabled) pushes and rotates old checkpoints"


class DiskDetector:
    """Room for the next checkpoint (kinds ``disk_low`` warning, ``disk_full`` critical).

    Watches the disk holding role ``checkpoints`` (else ``run``) against
    ``Observation.checkpoint_bytes``, the next checkpoint's size:

    - free < ``disk_warn_factor`` x size: ``disk_low``, warning;
    - free < ``disk_critical_factor`` x size: ``disk_full``, critical, action
      ``none``: nothing to do in place yet (the Hub pusher of a later issue
      will push and rotate); the message says so.

    A level must hold for :data:`DISK_SETTLE_S` outside checkpoint writes (or,
    for a disk that never stops being written, ``checkpoint_timeout_s``), so a
    save that briefly dips free space is not reported. The time-to-full comes
    from the write rate (``write_rate_bps``) averaged over up to 30 min. With no
    size known: ``disk_low`` when that rate fills the disk within an hour.

    ``No space left on device``, ``PytorchStreamWriter failed writing file``,
    ``[Errno 28]``, ``Disk quota exceeded`` in the log (not about /dev/shm):
    ``disk_full``, critical, action ``stop``: restarting into a full disk loops.
    The users' 50 GB overlay filled at step 10000, twice.

    A read-only or overlay (container layer) checkpoint filesystem: one
    ``disk_low`` warning at start, ``evidence.reason`` saying which.
    """

    name = "disk"

    def __init__(self, watchdog: WatchdogSpec | None = None) -> None:
        self.watchdog = watchdog if watchdog is not None else WatchdogSpec()
        self._fs_checked = False
        self._ckpt = CheckpointWatch()
        self._rates: deque[tuple[float, float, float]] = deque()  # (time, bytes/s, seconds)
        self._last_t: float | None = None
        self._level = 0  # 0 fine, 1 low, 2 full
        self._candidate: int | None = None
        self._candidate_since = 0.0
        self._calm_since: float | None = None
        self._attempt: int | None = None
        self._log_reported = False

    def observe(self, obs: Observation) -> Sequence[Event]:
        if obs.attempt != self._attempt:
            self._attempt = obs.attempt
            self._log_reported = False
        events: list[Event] = []
        disk = checkpoint_disk(obs.sample)
        writing = self._ckpt.update(obs)
        rate = self._track_rate(obs.now, disk)
        if not self._log_reported and obs.log_lines:
            lines = [x for x in obs.log_lines if isinstance(x, str) and not mentions_shm(x)]
            hit = find_line(lines, _DISK_FULL)
            if hit is not None:
                self._log_reported = True
                events.append(self._log_event(obs, hit, disk, rate))
        if disk is None:
            return events
        if not self._fs_checked:
            self._fs_checked = True
            fs = self._fs_event(obs, disk)
            if fs is not None:
                events.append(fs)
        events.extend(self._space(obs, disk, rate, writing))
        return events

    def _track_rate(self, now: float, disk: DiskSnapshot | None) -> tuple[float, float] | None:
        """(mean write rate over the window, seconds it covers); records this tick."""
        bps = None if disk is None else num(disk.write_rate_bps)
        if bps is not None and self._last_t is not None and now > self._last_t:
            self._rates.append((now, bps, now - self._last_t))
        self._last_t = now
        while self._rates and self._rates[0][0] < now - DISK_RATE_WINDOW_S:
            self._rates.popleft()
        span = sum(dt for _, _, dt in self._rates)
        if span <= 0:
            return None
        return sum(r * dt for _, r, dt in self._rates) / span, span

    def _space(
        self,
        obs: Observation,
        disk: DiskSnapshot,
        rate: tuple[float, float] | None,
        writing: bool,
    ) -> list[Event]:
        w = self.watchdog
        free = num(disk.free_bytes)
        size = num(obs.checkpoint_bytes)
        if free is None:
            return []
        if not size or size <= 0:
            return self._predict(obs, disk, free, rate)
        level = (
            2
            if free < w.disk_critical_factor * size
            else 1
            if free < w.disk_warn_factor * size
            else 0
        )
        now = obs.now
        if level != self._candidate:
            self._candidate, self._candidate_since = level, now
            self._calm_since = None
        if writing:
            self._calm_since = None
        elif self._calm_since is None:
            self._calm_since = now
        # Settled: the level held DISK_SETTLE_S outside writes, or through writes for
        # longer than any checkpoint may take (a disk that fills without pause).
        calm = self._calm_since is not None and now - self._calm_since >= DISK_SETTLE_S
        if not calm and now - self._candidate_since < max(DISK_SETTLE_S, w.checkpoint_timeout_s):
            return []
        if level > self._level:
            self._level = level
            return [self._level_event(obs, disk, free, size, rate, level)]
        if level == 0 and self._level > 0:
            self._level = 0
            return [
                make_event(
                    obs,
                    "disk_low",
                    "info",
                    f"checkpoint disk has room again: {gb(free)} free for {gb(size)} checkpoints",
                    {"free_bytes": free, "checkpoint_bytes": size},
                )
            ]
        return []

    def _predict(
        self,
        obs: Observation,
        disk: DiskSnapshot,
        free: float,
        rate: tuple[float, float] | None,
    ) -> list[Event]:
        # The rate is averaged over >= 10 minutes: checkpoint bursts are part of it.
        if rate is None:
            return []
        bps, span = rate
        if span < DISK_MIN_HISTORY_S or bps <= 0:
            if self._level and (bps <= 0 or free / bps > 2 * DISK_HORIZON_S):
                self._level = 0
            return []
        ttf = free / bps
        if ttf >= DISK_HORIZON_S or self._level:
            return []
        self._level = 1
        evidence = self._disk_evidence(disk, free, None, rate)
        evidence["reason"] = "filling"
        return [
            make_event(
                obs,
                "disk_low",
                "warning",
                f"checkpoint disk {disk.mount_point or ''} fills in ~{duration(ttf)}: "
                f"{gb(free)} free, written at {bps / 1e6:.1f} MB/s on average; free space or "
                "move checkpoints to a bigger volume",
                evidence,
            )
        ]

    def _disk_evidence(
        self,
        disk: DiskSnapshot | None,
        free: float | None,
        size: float | None,
        rate: tuple[float, float] | None,
    ) -> dict[str, Any]:
        evidence: dict[str, Any] = {"checkpoint_bytes": size, "free_bytes": free}
        if disk is not None:
            evidence.update(
                {
                    "roles": list(disk.roles),
                    "paths": list(disk.paths),
                    "mount_point": disk.mount_point,
                    "device": disk.device,
                    "fs_type": disk.fs_type,
                    "overlay": disk.overlay,
                    "read_only": disk.read_only,
                    "total_bytes": disk.total_bytes,
                    "write_rate_bps_now": disk.write_rate_bps,
                }
            )
        if rate is not None:
            bps, span = rate
            evidence["write_rate_bps"] = round(bps, 1)
            evidence["rate_window_s"] = round(span, 1)
            if bps > 0 and free is not None:
                evidence["time_to_full_s"] = round(free / bps, 1)
        if free is not None and size:
            evidence["free_over_checkpoint"] = round(free / size, 3)
        return evidence

    def _level_event(
        self,
        obs: Observation,
        disk: DiskSnapshot,
        free: float,
        size: float,
        rate: tuple[float, float] | None,
        level: int,
    ) -> Event:
        w = self.watchdog
        evidence = self._disk_evidence(disk, free, size, rate)
        evidence.update(
            {"warn_factor": w.disk_warn_factor, "critical_factor": w.disk_critical_factor}
        )
        ttf = evidence.get("time_to_full_s")
        when = f"; full in ~{duration(ttf)} at the current write rate" if ttf is not None else ""
        where = disk.mount_point or (disk.paths[0] if disk.paths else "?")
        if level == 2:
            return make_event(
                obs,
                "disk_full",
                "critical",
                f"checkpoint disk {where} has {gb(free)} free: the next {gb(size)} checkpoint "
                f"will not fit{when}; no action yet: {_HUB}; until then free space or move "
                "checkpoints to a bigger volume",
                evidence,
            )
        return make_event(
            obs,
            "disk_low",
            "warning",
            f"checkpoint disk {where} has {gb(free)} free, less than {w.disk_warn_factor:g} x "
            f"the {gb(size)} checkpoint{when}; free space or move checkpoints to a bigger volume",
            evidence,
        )

    def _log_event(
        self,
        obs: Observation,
        hit: LogMatch,
        disk: DiskSnapshot | None,
        rate: tuple[float, float] | None,
    ) -> Event:
        free = None if disk is None else num(disk.free_bytes)
        evidence = self._disk_evidence(disk, free, num(obs.checkpoint_bytes), rate)
        evidence.update({"pattern": hit.pattern, "line": hit.line})
        where = (disk.mount_point if disk else None) or obs.checkpoint_path or "the disk"
        return make_event(
            obs,
            "disk_full",
            "critical",
            f"the job ran out of disk space ({hit.pattern}): stopped, since a restart into a "
            f"full disk fails the same way; free space on {where} or move checkpoints to a "
            "bigger volume",
            evidence,
            "stop",
        )

    def _fs_event(self, obs: Observation, disk: DiskSnapshot) -> Event | None:
        evidence = self._disk_evidence(disk, num(disk.free_bytes), num(obs.checkpoint_bytes), None)
        path = disk.paths[0] if disk.paths else (obs.checkpoint_path or "?")
        if disk.read_only:
            evidence["reason"] = "read_only"
            return make_event(
                obs,
                "disk_low",
                "warning",
                f"checkpoints go to {path} on a read-only filesystem ({disk.mount_point}): every "
                "save will fail; point the checkpoint folder at a writable volume",
                evidence,
            )
        if disk.overlay:
            evidence["reason"] = "overlay"
            return make_event(
                obs,
                "disk_low",
                "warning",
                f"checkpoints go to {path} on the container's overlay filesystem "
                f"({gb(disk.total_bytes)}, {gb(disk.free_bytes)} free, shared with the host): "
                "the users' 50 GB overlay filled at step 10000; put checkpoints on a mounted "
                "volume",
                evidence,
            )
        return None


# -- /dev/shm --------------------------------------------------------------------

#: Ticks /dev/shm must stay small with workers running before it is reported.
SHM_TICKS = 3

_SHM_ERRORS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("DataLoader worker killed by Bus error", re.compile(r"killed by signal: Bus error")),
    ("Unexpected bus error", re.compile(r"Unexpected bus error", re.IGNORECASE)),
    ("Bus error", re.compile(r"^\s*Bus error\b|Bus error \(core dumped\)|\d+\s+Bus error\s")),
    ("insufficient shared memory", re.compile(r"insufficient shared memory", re.IGNORECASE)),
    ("unable to open shared memory", re.compile(r"unable to (?:open|allocate) shared memory")),
)
_NO_SPACE = re.compile(r"No space left on device|\[Errno 28\]")
_FIX = "start the container with --shm-size=16g or --ipc=host (Docker's default /dev/shm is 64 MB)"


class SharedMemoryDetector:
    """Too little /dev/shm for DataLoader workers (kind ``shm_low``, warning).

    Workers hand batches to the main process through shared memory; Docker's
    default 64 MB ends in bus errors. Watches the disk with role ``shm``: total
    or free < ``shm_min_gb`` (GB) for 3 ticks while more than one Python process
    runs in the tree (once per run); and the log: ``DataLoader worker (pid X) is
    killed by signal: Bus error``, ``Unexpected bus error``, ``Bus error``,
    ``No space left on device`` about /dev/shm or torch's ``</torch_...>``
    files (once per attempt). The message gives the fix (``--shm-size`` /
    ``--ipc=host``).
    """

    name = "shm"

    def __init__(self, watchdog: WatchdogSpec | None = None) -> None:
        self.watchdog = watchdog if watchdog is not None else WatchdogSpec()
        self._small_ticks = 0
        self._capacity_reported = False
        self._attempt: int | None = None
        self._log_reported = False

    def observe(self, obs: Observation) -> Sequence[Event]:
        if obs.attempt != self._attempt:
            self._attempt = obs.attempt
            self._log_reported = False
        events: list[Event] = []
        host = obs.sample.host
        shm = None
        if host is not None:
            found = host.disk("shm")
            shm = found if found is not None and found.present else None
        pythons = python_processes(obs.sample)
        if not self._log_reported and obs.log_lines:
            hit = find_line(obs.log_lines, _SHM_ERRORS)
            if hit is None:
                lines = [x for x in obs.log_lines if isinstance(x, str) and mentions_shm(x)]
                hit = find_line(lines, (("No space left on device (shm)", _NO_SPACE),))
            if hit is not None:
                self._log_reported = True
                evidence = self._evidence(shm, len(pythons))
                evidence.update({"pattern": hit.pattern, "line": hit.line})
                pid = re.search(r"pid\(?s?\)?\s+(\d+)", hit.line)
                if pid is not None:
                    evidence["pid"] = int(pid.group(1))
                events.append(
                    make_event(
                        obs,
                        "shm_low",
                        "warning",
                        f"a DataLoader worker ran out of shared memory ({hit.pattern}); {_FIX}",
                        evidence,
                    )
                )
        if shm is None or self._capacity_reported:
            return events
        floor = self.watchdog.shm_min_gb * GB
        total, free = num(shm.total_bytes), num(shm.free_bytes)
        small = (total is not None and total < floor) or (free is not None and free < floor)
        self._small_ticks = self._small_ticks + 1 if small and len(pythons) > 1 else 0
        if self._small_ticks >= SHM_TICKS:
            self._capacity_reported = True
            evidence = self._evidence(shm, len(pythons))
            evidence["workers"] = [p.pid for p in workers(obs.sample)][:32]
            events.append(
                make_event(
                    obs,
                    "shm_low",
                    "warning",
                    f"/dev/shm is {gb(total)} ({gb(free)} free) while the job runs "
                    f"{len(pythons)} Python processes that pass batches through it; {_FIX}",
                    evidence,
                )
            )
        return events

    def _evidence(self, shm: DiskSnapshot | None, pythons: int) -> dict[str, Any]:
        return {
            "shm_total_bytes": None if shm is None else shm.total_bytes,
            "shm_free_bytes": None if shm is None else shm.free_bytes,
            "shm_path": None if shm is None or not shm.paths else shm.paths[0],
            "shm_min_gb": self.watchdog.shm_min_gb,
            "python_processes": pythons,
        }


# -- RAM -------------------------------------------------------------------------

#: Ticks available RAM must stay under the threshold before it is reported.
RAM_TICKS = 5
#: Swap "filling": at least this fraction of swap in use...
SWAP_FULL_FRACTION = 0.5
#: ...and growing by this much within RAM_WINDOW_S.
SWAP_GROWTH_BYTES = 256 * MIB
RAM_WINDOW_S = 60.0


class RamPressureDetector:
    """Host RAM about to run out (kind ``ram_pressure``, warning).

    Watches ``MemAvailable``: below ``1 - ram_pressure_fraction`` of total for
    5 ticks in a row; or swap over half used and growing by 256 MiB within a
    minute. The evidence carries the tree's RSS (shared copy-on-write pages
    count once per process, so it over-counts forked workers), the workers and
    their mean RSS (the users measured ~2.5 GB per worker), the biggest
    processes and swap. Once per episode; ``info`` once RAM is back above
    twice the threshold.
    """

    name = "ram_pressure"

    def __init__(self, watchdog: WatchdogSpec | None = None) -> None:
        self.watchdog = watchdog if watchdog is not None else WatchdogSpec()
        self._low_ticks = 0
        self._ok_ticks = 0
        self._active = False
        self._swap: deque[tuple[float, float]] = deque()

    def observe(self, obs: Observation) -> Sequence[Event]:
        host = obs.sample.host
        if host is None:
            return []
        total, avail = num(host.ram_total_bytes), num(host.ram_available_bytes)
        swap_total, swap_used = num(host.swap_total_bytes), num(host.swap_used_bytes)
        if not total or avail is None:
            return []
        limit = (1.0 - self.watchdog.ram_pressure_fraction) * total
        self._low_ticks = self._low_ticks + 1 if avail < limit else 0
        growth = 0.0
        if swap_used is not None:
            self._swap.append((obs.now, swap_used))
            while self._swap and self._swap[0][0] < obs.now - RAM_WINDOW_S:
                self._swap.popleft()
            growth = max(0.0, swap_used - self._swap[0][1])
        swapping = bool(
            swap_total
            and swap_used is not None
            and swap_used >= SWAP_FULL_FRACTION * swap_total
            and growth >= SWAP_GROWTH_BYTES
        )
        if self._active:
            ok = avail >= 2 * limit and not swapping
            self._ok_ticks = self._ok_ticks + 1 if ok else 0
            if self._ok_ticks >= RAM_TICKS:
                self._active = False
                return [
                    make_event(
                        obs,
                        "ram_pressure",
                        "info",
                        f"RAM pressure over: {gb(avail)} of {gb(total)} available",
                        {"ram_available_bytes": avail, "ram_total_bytes": total},
                    )
                ]
            return []
        if self._low_ticks < RAM_TICKS and not swapping:
            return []
        self._active, self._ok_ticks = True, 0
        procs = [p for p in processes(obs.sample) if not p.is_zombie]
        rss = sum(int(p.rss_bytes or 0) for p in procs)
        ws = workers(obs.sample)
        per_worker = sum(int(p.rss_bytes or 0) for p in ws) / len(ws) if ws else None
        top = sorted(procs, key=lambda p: p.rss_bytes or 0, reverse=True)[:5]
        evidence: dict[str, Any] = {
            "ram_total_bytes": total,
            "ram_available_bytes": avail,
            "used_fraction": round(1.0 - avail / total, 4),
            "threshold_fraction": self.watchdog.ram_pressure_fraction,
            "low_ticks": self._low_ticks,
            "swap_total_bytes": swap_total,
            "swap_used_bytes": swap_used,
            "swap_growth_bytes": growth,
            "tree_rss_bytes": rss,
            "processes": len(procs),
            "workers": len(ws),
            "worker_rss_bytes_mean": None if per_worker is None else round(per_worker),
            "top": [{"pid": p.pid, "name": p.name, "rss_bytes": p.rss_bytes} for p in top],
            "reason": "swap_filling" if self._low_ticks < RAM_TICKS else "ram_low",
        }
        held = f"; the job's {len(procs)} processes hold {gb(rss)}" if procs else ""
        if ws and per_worker:
            held += f" ({len(ws)} workers at ~{gb(per_worker)} each)"
        what = (
            f"RAM nearly full: {gb(avail)} of {gb(total)} available"
            if self._low_ticks >= RAM_TICKS
            else f"swap filling: {gb(swap_used)} of {gb(swap_total)} used, "
            f"+{gb(growth)} in a minute"
        )
        return [
            make_event(
                obs,
                "ram_pressure",
                "warning",
                f"{what}{held}; lower num_workers or prefetch_factor before the kernel's "
                "OOM killer ends the run",
                evidence,
            )
        ]

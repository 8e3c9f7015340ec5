"""What the detectors share: reading a sample safely, the job's GPUs, step timing, windows.

Every helper here takes the odd input a real host produces (``None`` fields,
no GPUs, no process tree, a disk role that is not configured, a snapshot type
that is only ``GpuSnapshotLike``) and answers "unknown" (``None``) rather than
raising: a detector must never die on one sensor's quirk.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runner.agent.observe import Observation, Progress
from runner.rundir import Action, Event, Severity
from runner.sampling.host import DiskSnapshot
from runner.sampling.nvml import CLOCK_EVENT_REASONS, GpuSnapshot, XidEvent
from runner.sampling.procs import ProcessSnapshot, ProcessTree
from runner.sampling.sample import Sample

GB = 1_000_000_000
MIB = 1 << 20

#: Utilisation (percent) at or above which a GPU counts as busy; only busy ticks
#: feed the rolling "busy power" median that a power collapse is measured against.
BUSY_UTIL_PERCENT = 60
#: Busy power samples kept per GPU for that median (10 minutes at 1 s ticks).
BUSY_SAMPLES = 600
#: Busy samples needed before a GPU's busy median is trusted.
MIN_BUSY_SAMPLES = 10
#: CPU use of a set of processes below this many cores (summed) is "no CPU
#: progress". A deadlocked Python process blocks in futex/queue.get and uses ~0;
#: 0.1 leaves room for a background thread waking now and then.
CPU_FLAT_CORES = 0.1
#: Step intervals needed before the learned limit may be confirmed early
#: (Megatron learns its timeouts only after 5 warm-up steps).
MIN_KNOWN_INTERVALS = 5
#: Intervals seen after the first step before the learned limit replaces the
#: start-up one: the first steps include compilation and cuDNN autotuning.
WARMUP_INTERVALS = 3
#: Bytes per second the training tree writes above which a checkpoint is taken
#: to be being written (for log-parsed progress, which has no phase).
CHECKPOINT_WRITE_BPS = 8 * MIB
#: Seconds after the last such write during which the job still counts as checkpointing.
CHECKPOINT_LINGER_S = 15.0
#: What one DataLoader worker held in RAM in the users' runs (for advice).
RAM_PER_WORKER_BYTES = int(2.5 * GB)
#: Longest log line kept in evidence, in characters.
LINE_MAX = 500

GPU_IDLE_BIT = CLOCK_EVENT_REASONS["GpuIdle"]
#: Phases (from the harness) outside the training loop proper.
OFF_LOOP_PHASES = frozenset({"startup", "done", "failed"})
AFTER_TRAINING_PHASES = frozenset({"done", "failed"})


# -- values ----------------------------------------------------------------------


def num(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (``None``, bools, NaN, strings...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def gb(n: float | None) -> str:
    """Bytes for a human: ``"13.0 GB"`` (decimal, as ``df -H`` and vendors count)."""
    if n is None:
        return "? GB"
    if abs(n) < GB:
        return f"{n / 1e6:.0f} MB"
    return f"{n / GB:.1f} GB"


def duration(seconds: float | None) -> str:
    """``"45 s"``, ``"12 min"``, ``"3.2 h"``."""
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def make_event(
    obs: Observation,
    kind: str,
    severity: Severity,
    message: str,
    evidence: Mapping[str, Any],
    action: Action = "none",
) -> Event:
    """An event stamped with the tick's time and attempt; the message made one line."""
    line = " ".join(message.split())
    return Event(
        kind=kind,
        severity=severity,
        message=line,
        time=obs.now,
        evidence=dict(evidence),
        action=action,
        attempt=obs.attempt,
    )


# -- GPUs ------------------------------------------------------------------------


def gpus_of(sample: Sample) -> tuple[GpuSnapshot, ...]:
    """The sample's GPUs as :class:`GpuSnapshot` (other snapshot types via their dict)."""
    out: list[GpuSnapshot] = []
    for g in sample.gpus or ():
        if isinstance(g, GpuSnapshot):
            out.append(g)
            continue
        try:
            out.append(GpuSnapshot.from_dict(g.to_dict()))
        except Exception:  # a foreign snapshot we cannot read is no GPU
            continue
    return tuple(out)


def xids_of(sample: Sample) -> tuple[XidEvent, ...]:
    """The sample's XID events as :class:`XidEvent`."""
    out: list[XidEvent] = []
    for x in sample.xids or ():
        if isinstance(x, XidEvent):
            out.append(x)
            continue
        try:
            out.append(XidEvent.from_dict(x.to_dict()))
        except Exception:
            continue
    return tuple(out)


def gpus_failed(sample: Sample) -> bool:
    """True when the GPU part of the sample failed (its absence says nothing)."""
    return any(e.startswith("gpus:") for e in sample.errors or ())


def gpu_key(g: GpuSnapshot) -> str:
    return g.uuid or f"index:{g.index}"


def clock_drop_percent(g: GpuSnapshot) -> float | None:
    """How far the SM clock is below its maximum, percent; ``None`` when unknown."""
    sm, top = num(g.sm_clock_mhz), num(g.sm_clock_max_mhz)
    if sm is None or not top:
        return None
    return round(100.0 * max(0.0, 1.0 - sm / top), 1)


def gpu_brief(g: GpuSnapshot) -> dict[str, Any]:
    """The GPU facts every GPU event carries."""
    return {
        "index": g.index,
        "uuid": g.uuid,
        "name": g.name,
        "lost": g.lost,
        "utilization_gpu_percent": g.utilization_gpu_percent,
        "power_w": g.power_w,
        "power_limit_w": g.power_limit_w,
        "temperature_c": g.temperature_c,
        "sm_clock_mhz": g.sm_clock_mhz,
        "sm_clock_max_mhz": g.sm_clock_max_mhz,
        "clock_events": None if g.clock_event_mask is None else list(g.clock_events or ()),
        "memory_used_bytes": g.memory_used_bytes,
        "memory_total_bytes": g.memory_total_bytes,
    }


class JobGpus:
    """Which GPUs the job uses: those listing a pid of its process tree.

    NVML reports host pids; inside a container they may match no tree pid. Until
    one matches, the GPUs with any compute process stand in, then all GPUs. A GPU
    once seen with a tree pid stays the job's for the attempt (a lost GPU lists
    no processes any more).
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def update(self, obs: Observation, gpus: Sequence[GpuSnapshot]) -> tuple[GpuSnapshot, ...]:
        """The job's GPUs among ``gpus`` this tick."""
        pids = tree_pids(obs.sample)
        if obs.training_pid is not None:
            pids.add(obs.training_pid)
        for g in gpus:
            if g.processes and any(p.pid in pids for p in g.processes):
                self._seen.add(g.index)
        if self._seen:
            return tuple(g for g in gpus if g.index in self._seen)
        with_procs = tuple(g for g in gpus if g.processes)
        return with_procs or tuple(gpus)

    def is_job(self, index: int | None) -> bool:
        """False only for a GPU known not to be the job's."""
        return index is None or not self._seen or index in self._seen


class BusyPower:
    """Rolling median power of each GPU over the ticks it was busy (utilisation high).

    The seeds' silent freeze shows as power falling from ~80 W to ~20 W (25 %) with
    the process alive: measured against the GPU's own busy draw, not its limit, so
    a small model on a big card is judged against what it really draws.
    """

    def __init__(self) -> None:
        self._power: dict[str, deque[float]] = {}
        self._median: dict[str, float] = {}
        self._fresh: dict[str, int] = {}

    def update(self, gpus: Iterable[GpuSnapshot], fraction: float) -> None:
        """Record the busy ticks; a tick already below ``fraction`` of the median is
        left out, so a long collapse at high utilisation never becomes the baseline."""
        for g in gpus:
            util, power = num(g.utilization_gpu_percent), num(g.power_w)
            if g.lost or util is None or power is None or power <= 0:
                continue
            if util >= BUSY_UTIL_PERCENT and not self.is_low(g, fraction):
                key = gpu_key(g)
                self._power.setdefault(key, deque(maxlen=BUSY_SAMPLES)).append(power)
                self._fresh[key] = self._fresh.get(key, 0) + 1

    def median(self, g: GpuSnapshot) -> float | None:
        """The busy median in W, ``None`` before :data:`MIN_BUSY_SAMPLES` busy ticks."""
        key = gpu_key(g)
        values = self._power.get(key)
        if values is None or len(values) < MIN_BUSY_SAMPLES:
            return None
        # Recomputed after every 10 new samples: a median of 600 values is cheap,
        # but there is no need to sort it every tick of every GPU.
        if key not in self._median or self._fresh.get(key, 0) >= 10:
            self._median[key] = float(statistics.median(values))
            self._fresh[key] = 0
        return self._median[key]

    def is_low(self, g: GpuSnapshot, fraction: float) -> bool | None:
        """True when power is below ``fraction`` of the busy median; ``None`` if unknown."""
        median, power = self.median(g), num(g.power_w)
        if median is None or power is None:
            return None
        return power < fraction * median


def gpu_quiet(
    g: GpuSnapshot, busy: BusyPower, fraction: float
) -> tuple[bool | None, tuple[str, ...]]:
    """Whether a GPU does no work now, and every reason that says so.

    Reasons: ``lost``; ``idle`` (the GpuIdle clock event, or 0 % utilisation);
    ``power_low`` (below ``fraction`` of the busy median: an NCCL hang can show
    ~100 % utilisation at low power). ``(None, ())`` when nothing is known.
    """
    if g.lost:
        return True, ("lost",)
    mask = g.clock_event_mask
    util = num(g.utilization_gpu_percent)
    low = busy.is_low(g, fraction)
    reasons = []
    if (mask is not None and mask & GPU_IDLE_BIT) or util == 0:
        reasons.append("idle")
    if low:
        reasons.append("power_low")
    if reasons:
        return True, tuple(reasons)
    if mask is None and util is None and low is None:
        return None, ()
    return False, ()


def gpu_busy(g: GpuSnapshot, busy: BusyPower, fraction: float) -> bool:
    """True when the GPU computes at its usual power now (util high, power not collapsed)."""
    util = num(g.utilization_gpu_percent)
    return (
        not g.lost
        and util is not None
        and util >= BUSY_UTIL_PERCENT
        and not busy.is_low(g, fraction)
    )


# -- processes -------------------------------------------------------------------


def processes(sample: Sample) -> tuple[ProcessSnapshot, ...]:
    """Every process of the tree, ``()`` without one."""
    tree = sample.procs
    return tuple(tree.processes) if tree is not None and tree.processes else ()


def tree_pids(sample: Sample) -> set[int]:
    return {p.pid for p in processes(sample)}


def _root_pid(sample: Sample) -> int | None:
    tree = sample.procs
    return None if tree is None else tree.root_pid


def workers(sample: Sample) -> tuple[ProcessSnapshot, ...]:
    """DataLoader-like workers: live descendants forked from their parent.

    A DataLoader worker (fork start method) has its parent's command line; a
    spawn/forkserver worker runs ``multiprocessing``. torchrun's ranks and
    helpers such as wandb's service are exec'd with their own command line and
    are not workers (their own forks are).
    """
    procs = processes(sample)
    root = _root_pid(sample)
    by_pid = {p.pid: p for p in procs}
    out = []
    for p in procs:
        if p.pid == root or p.is_zombie:
            continue
        parent = by_pid.get(p.ppid)
        cmd = p.cmdline
        spawned = bool(cmd) and "multiprocessing" in (cmd or "")
        forked = parent is not None and (
            (bool(cmd) and cmd == parent.cmdline) or (cmd is None and p.name == parent.name)
        )
        if spawned or forked:
            out.append(p)
    return tuple(out)


def python_processes(sample: Sample) -> tuple[ProcessSnapshot, ...]:
    """Live processes of the tree that run Python."""
    out = []
    for p in processes(sample):
        if p.is_zombie:
            continue
        name = (p.name or "").lower()
        first = (p.cmdline or "").split(" ", 1)[0].lower()
        if name.startswith("python") or "python" in first.rsplit("/", 1)[-1]:
            out.append(p)
    return tuple(out)


def cpu_of(
    tree: ProcessTree | None, members: Iterable[ProcessSnapshot] | None = None
) -> tuple[float, float] | None:
    """(CPU seconds, wall seconds) used by ``members`` (default: the whole tree) this tick.

    ``None`` when it cannot be told: no tree, its first sample, or no member
    with a CPU delta (new processes have none on first sight).
    """
    if tree is None or not tree.processes:
        return None
    wall = num(tree.interval_s)
    if wall is None or wall <= 0:
        return None
    total, known = 0.0, False
    for p in tree.processes if members is None else members:
        delta = num(p.cpu_delta_s)
        if delta is not None:
            total += max(0.0, delta)
            known = True
    return (total, wall) if known else None


class CpuWindow:
    """CPU use of a set of processes per tick, to ask "how many cores over the last S s"."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._ticks: deque[tuple[float, tuple[float, float] | None]] = deque()

    def add(self, now: float, value: tuple[float, float] | None) -> None:
        self._ticks.append((now, value))
        while self._ticks and self._ticks[0][0] < now - self.keep_s:
            self._ticks.popleft()

    def rate(self, now: float, span: float) -> float | None:
        """Mean cores used over the last ``span`` s; ``None`` if a tick there is unknown
        or the ticks cover less than 90 % of it."""
        inside = [(t, v) for t, v in self._ticks if t > now - span]
        if not inside or any(v is None for _, v in inside):
            return None
        values = [v for _, v in inside if v is not None]
        covered = now - inside[0][0] + values[0][1]
        wall = sum(w for _, w in values)
        if covered < 0.9 * span or wall <= 0:
            return None
        return sum(c for c, _ in values) / wall


# -- time ------------------------------------------------------------------------


class Hold:
    """How long a condition has held without a break."""

    def __init__(self) -> None:
        self.since: float | None = None

    def update(self, now: float, condition: bool) -> float:
        """Record this tick; the seconds the condition has held (0 when it does not)."""
        if not condition:
            self.since = None
            return 0.0
        if self.since is None:
            self.since = now
        return now - self.since

    def held(self, now: float) -> float:
        return 0.0 if self.since is None else now - self.since


class StepWatch:
    """When steps advanced as this detector saw them, and how long steps take.

    ``Progress.intervals`` may split a jump of several steps into per-step
    intervals; for log-parsed progress printed every N steps the silence between
    two updates is what a stall limit must exceed, so the gaps between updates
    seen here count as intervals too.
    """

    def __init__(self) -> None:
        self._gaps: deque[float] = deque(maxlen=64)
        self.last: float | None = None
        self.advanced = False

    def update(self, progress: Progress) -> bool:
        """Record this tick's progress; True when the step advanced."""
        t = num(progress.last_step_time)
        self.advanced = False
        if t is not None and (self.last is None or t > self.last):
            if self.last is not None:
                self._gaps.append(t - self.last)
            self.last = t
            self.advanced = True
        return self.advanced

    def longest(self, progress: Progress) -> float | None:
        """The longest recent interval, seconds."""
        values = [v for v in (num(x) for x in progress.intervals) if v is not None and v > 0]
        values.extend(self._gaps)
        return max(values) if values else None

    def known(self, progress: Progress) -> int:
        """How many intervals are known."""
        return max(len(progress.intervals), len(self._gaps))

    def silence(self, obs: Observation) -> float:
        """Seconds since the last step, or since the attempt started before the first."""
        ref = num(obs.progress.last_step_time)
        if ref is None:
            ref = num(obs.attempt_started)
        return max(0.0, obs.now - ref) if ref is not None else 0.0

    def stopped(self, obs: Observation, factor: float, floor: float) -> bool:
        """True when steps are known and none came for max(factor x longest, floor)."""
        progress = obs.progress
        longest = self.longest(progress)
        if longest is None or self.known(progress) < MIN_KNOWN_INTERVALS or self.last is None:
            return False
        return self.silence(obs) > max(factor * longest, floor)


# -- disks -----------------------------------------------------------------------


def checkpoint_disk(sample: Sample) -> DiskSnapshot | None:
    """The disk checkpoints go to (role ``checkpoints``, else ``run``), if present."""
    host = sample.host
    if host is None:
        return None
    for role in ("checkpoints", "run"):
        try:
            disk = host.disk(role)
        except Exception:  # a malformed disks tuple is no disk
            return None
        if disk is not None:
            return disk if disk.present else None
    return None


class CheckpointWatch:
    """Whether the job is writing a checkpoint now.

    The harness says so (phase ``checkpoint``); for log-parsed progress the
    training tree's own writes stand in: more than :data:`CHECKPOINT_WRITE_BPS`
    handed to ``write()`` by its processes this tick. The disk's write rate
    would not do: any other writer on that disk (another container on the host,
    a shared ``/dev/shm``) would hold off stall detection for up to
    ``checkpoint_timeout_s``. Saving sends no heartbeats (NVRx) and leaves the
    GPU idle, so stall, power and disk checks must not read it as a failure.
    """

    def __init__(self) -> None:
        self._active_at: float | None = None

    def update(self, obs: Observation) -> bool:
        if obs.progress.phase == "checkpoint":
            self._active_at = obs.now
            return True
        if obs.progress.source != "harness":
            rate = tree_write_rate(obs.sample.procs)
            if rate is not None and rate >= CHECKPOINT_WRITE_BPS:
                self._active_at = obs.now
        return self._active_at is not None and obs.now - self._active_at <= CHECKPOINT_LINGER_S


def tree_write_rate(tree: ProcessTree | None) -> float | None:
    """Bytes per second the process tree wrote this tick (``None`` when not known)."""
    if tree is None or not tree.processes:
        return None
    wall = num(tree.interval_s)
    deltas = [p.write_delta_bytes for p in tree.processes if p.write_delta_bytes is not None]
    if wall is None or wall <= 0 or not deltas:
        return None
    return sum(deltas) / wall


# -- logs ------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_SHM = re.compile(r"/dev/shm|shared memory|\bshm\b|</?torch_\d+_", re.IGNORECASE)


def clean_line(line: str) -> str:
    """A log line for evidence: colour codes and carriage returns gone, cut to LINE_MAX."""
    text = _ANSI.sub("", str(line)).replace("\r", " ").replace("\n", " ").strip()
    return text if len(text) <= LINE_MAX else text[: LINE_MAX - 3] + "..."


def mentions_shm(line: str) -> bool:
    """True for a line about shared memory (``/dev/shm``, torch's ``</torch_...>`` files)."""
    return bool(_SHM.search(line))


@dataclass(frozen=True)
class LogMatch:
    line: str
    pattern: str
    match: re.Match[str]


def find_line(
    lines: Iterable[str], patterns: Sequence[tuple[str, re.Pattern[str]]]
) -> LogMatch | None:
    """The first line matching one of ``patterns`` (``(name, regex)``), cleaned."""
    for raw in lines:
        if not isinstance(raw, str) or not raw:
            continue
        line = clean_line(raw)
        for name, regex in patterns:
            m = regex.search(line)
            if m is not None:
                return LogMatch(line, name, m)
    return None

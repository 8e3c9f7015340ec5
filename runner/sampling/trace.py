"""A stand-in for ``pynvml`` driven by a timeline, so everything above NVML runs without a GPU.

:class:`FakeNvml` has the function and constant names
:class:`runner.sampling.nvml.Nvml` uses and raises the real ``pynvml.NVMLError``
subclasses (``pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)`` is a
``NVMLError_NotSupported``), so the wrapper's own ``except`` clauses are the
ones tested. What each GPU answers at the fake's ``now`` comes from a
:class:`Timeline`:

- a scenario (:class:`Scenario`): ``healthy``, ``power_collapse``,
  ``thermal_throttle``, ``xid`` and ``util_bounce``, the failures in the users'
  reports;
- a recorded trace (:class:`RecordedTrace`), JSON lines written by
  ``runner gpus record`` (:func:`record_trace`) on a real GPU host.

The clock is the caller's: ``fake.now`` only moves when the caller sets or
advances it (or, given ``clock=``, with that clock), so tests are deterministic.
A timeline's ``None`` value is answered with ``NotSupported`` and a lost GPU with
``GpuIsLost``, so the wrapper turns them back into the same snapshot.
"""

from __future__ import annotations

import bisect
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Protocol

import pynvml

from runner.errors import RunnerError
from runner.sampling.nvml import (
    CLOCK_EVENT_REASONS,
    ENV_FAKE_NVML,
    GpuProcess,
    GpuSnapshot,
    Nvml,
    XidEvent,
)

__all__ = [
    "SCENARIOS",
    "TRACE_FORMAT",
    "FakeNvml",
    "OnsetTimeline",
    "RecordResult",
    "RecordedTrace",
    "Scenario",
    "Timeline",
    "TraceError",
    "fake_from_spec",
    "record_trace",
]

#: The scripted scenarios :class:`Scenario` knows.
SCENARIOS = ("healthy", "power_collapse", "thermal_throttle", "xid", "util_bounce")
#: ``format`` of a trace file's header line.
TRACE_FORMAT = "runner-gpu-trace"

MIB = 1 << 20
GIB = 1 << 30
_GPU_IDLE = CLOCK_EVENT_REASONS["GpuIdle"]
_THERMAL = CLOCK_EVENT_REASONS["SwThermalSlowdown"] | CLOCK_EVENT_REASONS["HwThermalSlowdown"]


class TraceError(RunnerError):
    """A fake NVML spec, scenario or trace file that cannot be used."""


class Timeline(Protocol):
    """What a fake host's GPUs look like at any instant (seconds from the start)."""

    @property
    def driver_version(self) -> str:
        """Reported by ``nvmlSystemGetDriverVersion``."""
        ...

    def gpu_count(self) -> int:
        """GPUs on the host; fixed for the timeline's life."""
        ...

    def state(self, index: int, now: float) -> GpuSnapshot:
        """GPU ``index`` at ``now``; ``None`` fields are answered ``NotSupported``."""
        ...

    def xids(self, until: float) -> Sequence[tuple[float, int, int]]:
        """``(time, gpu index, xid)`` of every XID at or before ``until``, oldest first."""
        ...


# -- scenarios -------------------------------------------------------------------


def _idle(index: int, now: float) -> GpuSnapshot:
    """An idle RTX A4000 (16 GiB, 140 W), the users' workstation card."""
    return GpuSnapshot(
        index=index,
        timestamp=now,
        uuid=f"GPU-fa4e{index:04x}-0000-4000-8000-{index:012x}",
        pci_bus_id=f"00000000:{index + 1:02X}:00.0",
        name="NVIDIA RTX A4000",
        memory_used_bytes=256 * MIB,
        memory_total_bytes=16376 * MIB,
        utilization_gpu_percent=0,
        utilization_memory_percent=0,
        power_w=14.0,
        power_limit_w=140.0,
        temperature_c=38,
        temperature_slowdown_c=98,
        temperature_max_c=93,
        temperature_shutdown_c=101,
        sm_clock_mhz=210,
        sm_clock_max_mhz=2100,
        clock_event_mask=_GPU_IDLE,
        thermal_violation_ns=0,
        power_violation_ns=0,
        ecc_volatile_dbe=0,
        processes=(),
    )


def _training(idle: GpuSnapshot, pid: int) -> GpuSnapshot:
    """The same GPU training franka_cube_stack at batch 16 (~10 GiB, ~80 W)."""
    used = 10 * GIB
    return replace(
        idle,
        memory_used_bytes=256 * MIB + used,
        utilization_gpu_percent=97,
        utilization_memory_percent=45,
        power_w=80.0,
        temperature_c=65,
        sm_clock_mhz=1860,
        clock_event_mask=0,
        processes=(GpuProcess(pid=pid, used_memory_bytes=used),),
    )


@dataclass(frozen=True)
class Scenario:
    """A scripted host: GPU ``gpu`` runs the scenario, every other GPU is idle.

    - ``healthy``: steady training (97 %, 80 W, 65 C).
    - ``power_collapse``: training, then from ``at`` the seeds' silent freeze:
      power 80 -> 20 W, utilisation 0, the GpuIdle bit, SM clock to idle; the
      process and its memory stay.
    - ``thermal_throttle``: temperature climbs from 65 C to the GPU's own
      slowdown threshold (98 C here) at ``at``; from then SwThermalSlowdown and
      HwThermalSlowdown are set, the thermal violation counter rises 1 s per s
      and the SM clock drops 1860 -> 1290 MHz.
    - ``xid``: training; XID 79 (fallen off the bus) at ``at``, and from then
      the GPU is lost.
    - ``util_bounce``: input-bound training: each ``period`` seconds, ``busy``
      seconds at 90 % / 80 W, the rest at 0 % / 25 W with GpuIdle.
    """

    name: str = "healthy"
    #: GPUs on the host.
    gpus: int = 1
    #: The GPU the scenario happens to.
    gpu: int = 0
    #: When the event happens, seconds from the start.
    at: float = 60.0
    #: ``util_bounce``: seconds per cycle.
    period: float = 6.0
    #: ``util_bounce``: busy seconds per cycle.
    busy: float = 2.0
    #: pid of the training process on ``gpu``.
    pid: int = 4242
    driver_version: str = "570.86.15"

    def __post_init__(self) -> None:
        if self.name not in SCENARIOS:
            raise TraceError(f"unknown scenario {self.name!r}; use one of {', '.join(SCENARIOS)}")
        if self.gpus < 0 or not 0 <= self.gpu < max(1, self.gpus):
            raise TraceError(f"scenario gpu={self.gpu} is not one of its {self.gpus} GPU(s)")
        if self.period <= 0 or not 0 <= self.busy <= self.period:
            raise TraceError("scenario needs period > 0 and 0 <= busy <= period")

    def gpu_count(self) -> int:
        return self.gpus

    def state(self, index: int, now: float) -> GpuSnapshot:
        idle = _idle(index, now)
        if index != self.gpu:
            return idle
        train = _training(idle, self.pid)
        late = now >= self.at
        if self.name == "power_collapse" and late:
            return replace(
                train,
                power_w=20.0,
                utilization_gpu_percent=0,
                utilization_memory_percent=0,
                clock_event_mask=_GPU_IDLE,
                sm_clock_mhz=210,
                temperature_c=50,
            )
        if self.name == "thermal_throttle":
            slowdown = train.temperature_slowdown_c or 0
            start = train.temperature_c or 0
            if not late:
                climbed = start + (slowdown - start) * (now / self.at if self.at > 0 else 1.0)
                return replace(train, temperature_c=math.floor(climbed))
            return replace(
                train,
                temperature_c=slowdown,
                clock_event_mask=_THERMAL,
                thermal_violation_ns=round((now - self.at) * 1e9),
                sm_clock_mhz=1290,
                power_w=68.0,
            )
        if self.name == "xid" and late:
            return replace(train, lost=True, lost_reason="GPU is lost")
        if self.name == "util_bounce" and (now % self.period) >= self.busy:
            return replace(
                train,
                utilization_gpu_percent=0,
                utilization_memory_percent=0,
                power_w=25.0,
                clock_event_mask=_GPU_IDLE,
            )
        if self.name == "util_bounce":
            return replace(train, utilization_gpu_percent=90, utilization_memory_percent=40)
        return train

    def xids(self, until: float) -> Sequence[tuple[float, int, int]]:
        if self.name == "xid" and until >= self.at:
            return ((self.at, self.gpu, 79),)
        return ()


class OnsetTimeline:
    """The seeds' silent freeze, timed by the process that freezes: one GPU training
    (80 W, 97 %) until the ``onset`` file exists, collapsed (20 W, 0 %, GpuIdle) while it
    does. A test script writes the file the instant it blocks; removing it (a restarted
    attempt) brings the busy GPU back.
    """

    driver_version = "570.86.15"

    def __init__(self, onset: Path) -> None:
        self.onset = onset
        self.training = Scenario("power_collapse", at=1e12)
        self.collapsed = Scenario("power_collapse", at=0.0)

    def gpu_count(self) -> int:
        return 1

    def state(self, index: int, now: float) -> GpuSnapshot:
        return (self.collapsed if self.onset.exists() else self.training).state(index, now)

    def xids(self, until: float) -> Sequence[tuple[float, int, int]]:
        return ()


# -- recorded traces -------------------------------------------------------------


class RecordedTrace:
    """A trace written by :func:`record_trace`, replayed from its first tick (t = 0).

    At ``now`` each GPU answers with the last tick at or before ``now`` (the
    first tick before it, the last one after the end); a GPU missing from a
    tick answers as lost.
    """

    def __init__(
        self,
        ticks: Sequence[tuple[float, Sequence[GpuSnapshot]]],
        xids: Sequence[tuple[float, int, int]] = (),
        driver_version: str = "recorded",
    ) -> None:
        if not ticks:
            raise TraceError("the trace has no ticks")
        self.driver_version = driver_version
        self._times = [t for t, _ in ticks]
        self._ticks = [{s.index: s for s in snaps} for _, snaps in ticks]
        self._count = max((max(tick, default=-1) + 1 for tick in self._ticks), default=0)
        self._xids = sorted(xids)

    @classmethod
    def load(cls, path: Path) -> RecordedTrace:
        """Read a trace file; raises :class:`TraceError` naming the line that is wrong."""
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise TraceError(f"cannot read trace {path}: {exc.strerror or exc}") from exc
        ticks: list[tuple[float, list[GpuSnapshot]]] = []
        xids: list[tuple[float, int, int]] = []
        driver = "recorded"
        t0: float | None = None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if data.get("format") == TRACE_FORMAT:
                    driver = str(data.get("driver_version") or driver)
                    continue
                stamp = float(data["timestamp"])
                t0 = stamp if t0 is None else t0
                snaps = [GpuSnapshot.from_dict(g) for g in data["gpus"]]
                events = [XidEvent.from_dict(x) for x in data.get("xids", ())]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise TraceError(
                    f"{path}:{number} is not a trace line ({type(exc).__name__}: {exc}); "
                    "record one with `runner gpus record FILE`"
                ) from exc
            ticks.append((stamp - t0, snaps))
            xids.extend(
                (x.timestamp - t0, x.gpu_index, x.xid) for x in events if x.gpu_index is not None
            )
        return cls(ticks, xids, driver)

    def gpu_count(self) -> int:
        return self._count

    def state(self, index: int, now: float) -> GpuSnapshot:
        at = max(0, bisect.bisect_right(self._times, now) - 1)
        snap = self._ticks[at].get(index)
        if snap is None:
            return GpuSnapshot(index=index, timestamp=now, lost=True, lost_reason="GPU is lost")
        return snap

    def xids(self, until: float) -> Sequence[tuple[float, int, int]]:
        return [x for x in self._xids if x[0] <= until]


# -- the fake module -------------------------------------------------------------


# Field names below are NVML's (camelCase), as the wrapper reads them.


@dataclass(frozen=True)
class _Handle:
    index: int


@dataclass(frozen=True)
class _Memory:
    total: int
    free: int
    used: int


@dataclass(frozen=True)
class _Utilization:
    gpu: int
    memory: int


@dataclass(frozen=True)
class _PciInfo:
    busId: str


@dataclass(frozen=True)
class _Violation:
    referenceTime: int
    violationTime: int


@dataclass(frozen=True)
class _Process:
    pid: int
    usedGpuMemory: int | None


@dataclass(frozen=True)
class _EventData:
    device: _Handle
    eventType: int
    eventData: int
    gpuInstanceId: int = 0xFFFFFFFF
    computeInstanceId: int = 0xFFFFFFFF


class _EventSet:
    def __init__(self) -> None:
        self.devices: set[int] = set()
        self.delivered: set[tuple[float, int, int]] = set()


def _error(code: int) -> pynvml.NVMLError:
    err: pynvml.NVMLError = pynvml.NVMLError(code)
    return err


class FakeNvml:
    """An object with the ``pynvml`` names :class:`~runner.sampling.nvml.Nvml` uses.

    Knobs for tests: :meth:`fail` makes a function raise an NVML error (on
    some GPUs or all), :meth:`remove` takes a function out as if the bindings
    lacked it, ``driver=False`` is a host without the driver, ``events=False``
    a driver that refuses XID registration. ``calls`` counts every call by name.

    The event wait never blocks: it returns the next undelivered XID at or
    before ``now`` or raises ``Timeout`` at once.
    """

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_GpuIsLost = pynvml.NVMLError_GpuIsLost
    NVMLError_Unknown = pynvml.NVMLError_Unknown
    NVMLError_FunctionNotFound = pynvml.NVMLError_FunctionNotFound
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_Timeout = pynvml.NVMLError_Timeout
    NVML_SUCCESS = pynvml.NVML_SUCCESS
    NVML_ERROR_UNINITIALIZED = pynvml.NVML_ERROR_UNINITIALIZED
    NVML_ERROR_INVALID_ARGUMENT = pynvml.NVML_ERROR_INVALID_ARGUMENT
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION
    NVML_ERROR_NOT_FOUND = pynvml.NVML_ERROR_NOT_FOUND
    NVML_ERROR_DRIVER_NOT_LOADED = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_TIMEOUT = pynvml.NVML_ERROR_TIMEOUT
    NVML_ERROR_LIBRARY_NOT_FOUND = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_FUNCTION_NOT_FOUND = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    NVML_ERROR_GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
    NVML_ERROR_RESET_REQUIRED = pynvml.NVML_ERROR_RESET_REQUIRED
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH
    NVML_ERROR_UNKNOWN = pynvml.NVML_ERROR_UNKNOWN
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_TEMPERATURE_THRESHOLD_SHUTDOWN = pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN
    NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
    NVML_TEMPERATURE_THRESHOLD_GPU_MAX = pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
    NVML_PERF_POLICY_POWER = pynvml.NVML_PERF_POLICY_POWER
    NVML_PERF_POLICY_THERMAL = pynvml.NVML_PERF_POLICY_THERMAL
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC = pynvml.NVML_VOLATILE_ECC
    nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError

    def __init__(
        self,
        timeline: Timeline,
        *,
        start: float = 0.0,
        clock: Callable[[], float] | None = None,
        driver: bool = True,
        events: bool = True,
    ) -> None:
        self.timeline = timeline
        self.driver = driver
        self.events = events
        self.calls: Counter[str] = Counter()
        self._now = start
        self._clock = clock
        self._clock0 = clock() if clock is not None else 0.0
        self._initialised = 0
        self._handles = [_Handle(i) for i in range(timeline.gpu_count())]
        self._failures: dict[str, tuple[int, frozenset[int] | None]] = {}
        self._removed: set[str] = set()

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("nvml") and name in object.__getattribute__(self, "_removed"):
            raise AttributeError(f"module 'pynvml' has no attribute {name!r}")
        return object.__getattribute__(self, name)

    # -- knobs -------------------------------------------------------------------

    @property
    def now(self) -> float:
        """Seconds on the timeline: set or :meth:`advance` it, or it follows ``clock``."""
        if self._clock is not None:
            return self._now + self._clock() - self._clock0
        return self._now

    @now.setter
    def now(self, value: float) -> None:
        self._now = value
        if self._clock is not None:
            self._clock0 = self._clock()

    def advance(self, seconds: float) -> None:
        """Move the timeline on by ``seconds``."""
        self.now = self.now + seconds

    def fail(self, name: str, code: int, gpus: Iterable[int] | None = None) -> None:
        """Make ``name`` raise ``NVMLError(code)`` (on ``gpus`` only, when given).

        ``code=NVML_ERROR_FUNCTION_NOT_FOUND`` is a driver older than the bindings.
        """
        self._failures[name] = (code, None if gpus is None else frozenset(gpus))

    def remove(self, name: str) -> None:
        """Take ``name`` out, as if these bindings had no such function."""
        self._removed.add(name)

    # -- helpers -----------------------------------------------------------------

    def _enter(self, name: str, handle: _Handle | None = None) -> None:
        self.calls[name] += 1
        if name not in {"nvmlInit", "nvmlInitWithFlags"} and not self._initialised:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
        failure = self._failures.get(name)
        if failure is not None:
            code, gpus = failure
            if gpus is None or (handle is not None and handle.index in gpus):
                raise _error(code)

    def _state(self, name: str, handle: _Handle) -> GpuSnapshot:
        self._enter(name, handle)
        state = self.timeline.state(handle.index, self.now)
        if state.lost:
            raise _error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return state

    @staticmethod
    def _value(value: Any) -> Any:
        if value is None:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return value

    # -- pynvml's names ----------------------------------------------------------

    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if not self.driver:
            raise _error(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        self._initialised += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self._initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.timeline.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self._handles)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self._handles):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._handles[index]

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return str(self._value(self._state("nvmlDeviceGetUUID", handle).uuid))

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return str(self._value(self._state("nvmlDeviceGetName", handle).name))

    def nvmlDeviceGetPciInfo(self, handle: _Handle) -> _PciInfo:
        return _PciInfo(self._value(self._state("nvmlDeviceGetPciInfo", handle).pci_bus_id))

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> _Memory:
        s = self._state("nvmlDeviceGetMemoryInfo", handle)
        used, total = self._value(s.memory_used_bytes), self._value(s.memory_total_bytes)
        return _Memory(total=total, free=max(0, total - used), used=used)

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> _Utilization:
        s = self._state("nvmlDeviceGetUtilizationRates", handle)
        if s.utilization_gpu_percent is None and s.utilization_memory_percent is None:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return _Utilization(s.utilization_gpu_percent or 0, s.utilization_memory_percent or 0)

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        s = self._state("nvmlDeviceGetPowerUsage", handle)
        return round(float(self._value(s.power_w)) * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:
        s = self._state("nvmlDeviceGetEnforcedPowerLimit", handle)
        return round(float(self._value(s.power_limit_w)) * 1000)

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        s = self._state("nvmlDeviceGetTemperature", handle)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return int(self._value(s.temperature_c))

    def nvmlDeviceGetTemperatureThreshold(self, handle: _Handle, threshold: int) -> int:
        s = self._state("nvmlDeviceGetTemperatureThreshold", handle)
        by_kind = {
            pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: s.temperature_slowdown_c,
            pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX: s.temperature_max_c,
            pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: s.temperature_shutdown_c,
        }
        return int(self._value(by_kind.get(threshold)))

    def nvmlDeviceGetClockInfo(self, handle: _Handle, clock: int) -> int:
        s = self._state("nvmlDeviceGetClockInfo", handle)
        return int(self._value(s.sm_clock_mhz if clock == pynvml.NVML_CLOCK_SM else None))

    def nvmlDeviceGetMaxClockInfo(self, handle: _Handle, clock: int) -> int:
        s = self._state("nvmlDeviceGetMaxClockInfo", handle)
        return int(self._value(s.sm_clock_max_mhz if clock == pynvml.NVML_CLOCK_SM else None))

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:
        s = self._state("nvmlDeviceGetCurrentClocksEventReasons", handle)
        return int(self._value(s.clock_event_mask))

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: _Handle) -> int:
        s = self._state("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
        return int(self._value(s.clock_event_mask))

    def nvmlDeviceGetViolationStatus(self, handle: _Handle, policy: int) -> _Violation:
        s = self._state("nvmlDeviceGetViolationStatus", handle)
        by_policy = {
            pynvml.NVML_PERF_POLICY_THERMAL: s.thermal_violation_ns,
            pynvml.NVML_PERF_POLICY_POWER: s.power_violation_ns,
        }
        return _Violation(round(self.now * 1e9), int(self._value(by_policy.get(policy))))

    def nvmlDeviceGetTotalEccErrors(
        self, handle: _Handle, error_type: int, counter_type: int
    ) -> int:
        s = self._state("nvmlDeviceGetTotalEccErrors", handle)
        wanted = (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC)
        value = s.ecc_volatile_dbe if (error_type, counter_type) == wanted else None
        return int(self._value(value))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[_Process]:
        s = self._state("nvmlDeviceGetComputeRunningProcesses", handle)
        procs: tuple[GpuProcess, ...] = self._value(s.processes)
        return [_Process(p.pid, p.used_memory_bytes) for p in procs]

    def nvmlEventSetCreate(self) -> _EventSet:
        self._enter("nvmlEventSetCreate")
        return _EventSet()

    def nvmlDeviceRegisterEvents(
        self, handle: _Handle, event_types: int, event_set: _EventSet
    ) -> None:
        self._enter("nvmlDeviceRegisterEvents", handle)
        if not self.events:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if event_types & pynvml.nvmlEventTypeXidCriticalError:
            event_set.devices.add(handle.index)

    def nvmlEventSetWait_v2(self, event_set: _EventSet, timeout_ms: int) -> _EventData:
        self._enter("nvmlEventSetWait_v2")
        return self._next_event(event_set)

    def nvmlEventSetWait(self, event_set: _EventSet, timeout_ms: int) -> _EventData:
        self._enter("nvmlEventSetWait")
        return self._next_event(event_set)

    def _next_event(self, event_set: _EventSet) -> _EventData:
        for event in self.timeline.xids(self.now):
            if event[1] in event_set.devices and event not in event_set.delivered:
                event_set.delivered.add(event)
                return _EventData(
                    device=self._handles[event[1]],
                    eventType=pynvml.nvmlEventTypeXidCriticalError,
                    eventData=event[2],
                )
        raise _error(pynvml.NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, event_set: _EventSet) -> None:
        self._enter("nvmlEventSetFree")


# -- from a spec string ----------------------------------------------------------

_SPEC_HELP = (
    "scenario:NAME[:gpus=N,gpu=I,at=S,period=S,busy=S,pid=P,t=S,events=0], "
    "trace:FILE[:t=S], or no-driver"
)


def fake_from_spec(spec: str, *, clock: Callable[[], float] | None = None) -> FakeNvml:
    """The fake a ``RUNNER_FAKE_NVML`` value names.

    ``scenario:healthy:gpus=2`` (see :class:`Scenario` for the names and their
    parameters), ``trace:runs/gpu.jsonl`` (a recorded trace), ``no-driver`` (a
    host without the NVIDIA driver). ``t=S`` starts the timeline at S seconds,
    ``events=0`` refuses XID events. Raises :class:`TraceError` for anything else.
    """
    kind, _, rest = spec.strip().partition(":")
    params: dict[str, str] = {}
    if kind == "no-driver":
        return FakeNvml(Scenario(gpus=0), driver=False, clock=clock)
    if kind == "scenario":
        name, _, args = rest.partition(":")
        params = _params(spec, args)
    elif kind == "trace":
        path, sep, args = rest.rpartition(":")
        if not sep or "=" not in args:
            path, args = rest, ""
        params = _params(spec, args)
    else:
        raise TraceError(f"{ENV_FAKE_NVML}={spec!r} is not a fake NVML; use {_SPEC_HELP}")
    start = _number(spec, params.pop("t", "0"), float)
    events = params.pop("events", "1") not in {"0", "false", "no"}
    timeline: Timeline
    if kind == "trace":
        if params:
            raise TraceError(f"{ENV_FAKE_NVML}={spec!r}: a trace takes only t= and events=")
        timeline = RecordedTrace.load(Path(path))
    else:
        known = {"gpus": int, "gpu": int, "at": float, "period": float, "busy": float, "pid": int}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise TraceError(f"{ENV_FAKE_NVML}={spec!r}: unknown parameter {unknown[0]!r}")
        values = {key: _number(spec, value, known[key]) for key, value in params.items()}
        try:
            timeline = Scenario(name=name, **values)
        except TraceError as exc:
            raise TraceError(f"{ENV_FAKE_NVML}={spec!r}: {exc}") from exc
    return FakeNvml(timeline, start=start, clock=clock, events=events)


def _params(spec: str, text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise TraceError(f"{ENV_FAKE_NVML}={spec!r}: expected key=value, got {item!r}")
        params[key.strip()] = value.strip()
    return params


def _number(spec: str, text: str, kind: Callable[[str], Any]) -> Any:
    try:
        return kind(text)
    except ValueError as exc:
        raise TraceError(f"{ENV_FAKE_NVML}={spec!r}: {text!r} is not a number") from exc


# -- recording -------------------------------------------------------------------


@dataclass(frozen=True)
class RecordResult:
    """What :func:`record_trace` wrote."""

    path: Path
    ticks: int
    gpus: int
    xids: int
    #: True when Ctrl-C ended the recording (the file is complete up to there).
    interrupted: bool


def record_trace(
    nvml: Nvml,
    path: Path,
    *,
    interval_s: float = 1.0,
    duration_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RecordResult:
    """Write a trace of ``nvml``'s GPUs to ``path``: a header line, then one JSON line per tick.

    A tick is ``{"timestamp", "gpus": [GpuSnapshot.to_dict()], "xids": [XidEvent.to_dict()]}``.
    Ticks at 0, interval, 2 x interval, ... before ``duration_s`` (until
    Ctrl-C when ``None``; always at least one); each line is flushed
    as written, so an interrupted trace is still readable. The caller checks
    that there are GPUs; raises :class:`TraceError` when ``path`` cannot be written.
    """
    ticks = xids = 0
    interrupted = False
    try:
        out: IO[str] = path.open("w", encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"cannot write trace {path}: {exc.strerror or exc}") from exc
    with out:
        header = {
            "format": TRACE_FORMAT,
            "version": 1,
            "driver_version": nvml.driver_version,
            "gpus": nvml.device_count(),
            "interval_s": interval_s,
        }
        _write(out, header)
        start = clock()
        try:
            while True:
                snaps = nvml.sample()
                events = nvml.xid_events(0)
                _write(
                    out,
                    {
                        "timestamp": snaps[0].timestamp if snaps else time.time(),
                        "gpus": [s.to_dict() for s in snaps],
                        "xids": [e.to_dict() for e in events],
                    },
                )
                ticks += 1
                xids += len(events)
                # Ticks keep to a fixed schedule (t = k x interval), so a slow tick
                # does not shift the rest, and a duration D gives D / interval ticks.
                if duration_s is not None and ticks * interval_s >= duration_s - 1e-9:
                    break
                sleep(max(0.0, ticks * interval_s - (clock() - start)))
        except KeyboardInterrupt:
            interrupted = True
    return RecordResult(path, ticks, nvml.device_count(), xids, interrupted)


def _write(out: IO[str], data: Mapping[str, Any]) -> None:
    out.write(json.dumps(data, separators=(",", ":")) + "\n")
    out.flush()

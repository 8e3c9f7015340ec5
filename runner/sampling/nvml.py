"""Every GPU NVML sees, one frozen snapshot per GPU per tick (after nvitop's ``nvmlQuery``).

:class:`Nvml` is the only place runner calls NVML. It takes the ``pynvml``
module as an argument (the real one by default, or
:class:`runner.sampling.trace.FakeNvml`), so the same code runs on a GPU host
and in tests.

Invariants:

- NVML is initialised once, on first use, and device handles and static facts
  (UUID, name, PCI bus id, temperature thresholds, max SM clock) are read once
  and cached; a tick is one pass of about ten cheap queries per GPU
  (~0.1 ms each, against ~14 ms to fork ``nvidia-smi``).
- A value the GPU or driver does not offer is ``None`` ("not available"),
  never an exception: ``NotSupported``, ``NoPermission`` and the like.
- A driver/bindings mismatch (a function missing from the driver's library,
  ``NVMLError_FunctionNotFound``, or from the bindings, ``AttributeError``) is
  logged once on the ``runner.nvml`` logger and that function is not called
  again; where an older name exists (throttle reasons) it is used instead.
- A GPU that answers ``GpuIsLost``, ``Unknown`` or ``ResetRequired`` becomes a
  snapshot with ``lost=True``; the other GPUs are still sampled.
- A host without an NVIDIA driver is a normal case: no GPUs and a
  :attr:`Nvml.reason` such as ``"no NVIDIA driver (NVML library not found)"``.
- XID events come from NVML's event API where the driver has one; a driver
  without it is a normal case, reported once (:attr:`Nvml.xid_unavailable`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import TracebackType
from typing import Any

from runner.constants import ENV_FAKE_NVML as ENV_FAKE_NVML

__all__ = [
    "CLOCK_EVENT_REASONS",
    "ENV_FAKE_NVML",
    "GpuProcess",
    "GpuSnapshot",
    "Nvml",
    "XidEvent",
    "decode_clock_events",
    "open_nvml",
]

log = logging.getLogger("runner.nvml")

# ENV_FAKE_NVML (a testing aid, never set by runner) drives NVML from a scenario
# or a recorded trace instead of the driver: see runner.sampling.trace.fake_from_spec.

#: Clock event ("throttle") reason bits, in bit order, as NVML names them
#: (``nvmlClocksEventReason*``; ``nvidia-smi -q -d PERFORMANCE``).
CLOCK_EVENT_REASONS: Mapping[str, int] = {
    "GpuIdle": 0x1,
    "ApplicationsClocksSetting": 0x2,
    "SwPowerCap": 0x4,
    "HwSlowdown": 0x8,
    "SyncBoost": 0x10,
    "SwThermalSlowdown": 0x20,
    "HwThermalSlowdown": 0x40,
    "HwPowerBrakeSlowdown": 0x80,
    "DisplayClockSetting": 0x100,
}

# NVML error codes (names of pynvml constants) by what they mean for a caller.
_LOST_ERRORS = ("NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_UNKNOWN", "NVML_ERROR_RESET_REQUIRED")
_MISSING_ERRORS = ("NVML_ERROR_FUNCTION_NOT_FOUND",)
_CLOCK_EVENT_FUNCTIONS = (
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",  # drivers before 535
)
_EVENT_WAIT_FUNCTIONS = ("nvmlEventSetWait_v2", "nvmlEventSetWait")
_MAX_EVENTS_PER_CALL = 64


def decode_clock_events(mask: int) -> tuple[str, ...]:
    """The names of the bits set in a clock event reasons mask, in bit order.

    Bits NVML had not defined when this was written appear as ``"0x..."``.
    """
    names = tuple(name for name, bit in CLOCK_EVENT_REASONS.items() if mask & bit)
    known = 0
    for bit in CLOCK_EVENT_REASONS.values():
        known |= bit
    rest = mask & ~known
    return (*names, f"0x{rest:x}") if rest else names


@dataclass(frozen=True)
class GpuProcess:
    """A compute process on a GPU (``nvidia-smi --query-compute-apps=pid,used_memory``)."""

    #: Host pid (NVML reports host pids even inside a container, where the pid
    #: may not exist in the container's own namespace).
    pid: int
    #: GPU memory the process uses, in bytes; ``None`` where the driver does not
    #: say (Windows WDDM, some MIG set-ups).
    used_memory_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values."""
        return {"pid": self.pid, "used_memory_bytes": self.used_memory_bytes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GpuProcess:
        """The inverse of :meth:`to_dict`; raises ``KeyError`` without ``pid``."""
        return cls(pid=int(data["pid"]), used_memory_bytes=data.get("used_memory_bytes"))


@dataclass(frozen=True, kw_only=True)
class GpuSnapshot:
    """One GPU at one tick. Every value is ``None`` when NVML cannot give it.

    A lost GPU (``lost=True``) keeps what was read once on an earlier tick
    (identity, temperature thresholds, max SM clock) and has no other values.
    """

    #: NVML index, the PCI bus order ``nvidia-smi`` uses (``--query-gpu=index``);
    #: not CUDA's default order, which is fastest first.
    index: int
    #: When the tick was taken, by the sampler's clock (``time.time()`` unless injected).
    timestamp: float
    #: ``GPU-xxxxxxxx-...`` (``uuid``): the stable way to name a GPU to CUDA.
    uuid: str | None = None
    #: PCI bus id ``00000000:01:00.0`` (``pci.bus_id``).
    pci_bus_id: str | None = None
    #: Product name, e.g. ``NVIDIA RTX A4000`` (``name``).
    name: str | None = None
    #: True when NVML answered ``GpuIsLost``, ``Unknown`` or ``ResetRequired``:
    #: the GPU fell off the bus or needs a reset; nothing else was read.
    lost: bool = False
    #: NVML's words for why the GPU is lost (``"GPU is lost"``); ``None`` unless lost.
    lost_reason: str | None = None
    #: Memory in use, bytes (``memory.used``, which nvidia-smi shows in MiB).
    memory_used_bytes: int | None = None
    #: Memory on the board, bytes (``memory.total``).
    memory_total_bytes: int | None = None
    #: Percent of the last sample period (1/6 s to 1 s) a kernel ran
    #: (``utilization.gpu``); busy is not the same as making progress.
    utilization_gpu_percent: int | None = None
    #: Percent of the period device memory was read or written (``utilization.memory``).
    utilization_memory_percent: int | None = None
    #: Board power draw in W, a 1 s average on Ampere and newer (``power.draw``).
    power_w: float | None = None
    #: Power limit the driver enforces now, W (``enforced.power.limit``).
    power_limit_w: float | None = None
    #: Core temperature, C (``temperature.gpu``).
    temperature_c: int | None = None
    #: This GPU's own slowdown threshold, C: clocks are cut from here
    #: (``nvidia-smi -q -d TEMPERATURE``: GPU Slowdown Temp). Never assume 83.
    temperature_slowdown_c: int | None = None
    #: Maximum operating temperature, C (NVML ``GPU_MAX``; GPU Max Operating Temp).
    temperature_max_c: int | None = None
    #: Temperature at which the GPU shuts down, C (GPU Shutdown Temp).
    temperature_shutdown_c: int | None = None
    #: Current SM clock, MHz (``clocks.sm``).
    sm_clock_mhz: int | None = None
    #: Highest SM clock the GPU can run, MHz (``clocks.max.sm``).
    sm_clock_max_mhz: int | None = None
    #: Clock event ("throttle") reasons as NVML's bitmask
    #: (``clocks_event_reasons.active``); names in :attr:`clock_events`.
    clock_event_mask: int | None = None
    #: Cumulative time clocks were held down for thermal reasons, ns, since the
    #: driver loaded (``nvmlDeviceGetViolationStatus(NVML_PERF_POLICY_THERMAL)``,
    #: DCGM's ``DCGM_FI_DEV_THERMAL_VIOLATION``; no ``--query-gpu`` field).
    #: A rise between ticks means the GPU throttled.
    thermal_violation_ns: int | None = None
    #: The same for the power cap (``NVML_PERF_POLICY_POWER``).
    power_violation_ns: int | None = None
    #: Uncorrected (double-bit) ECC errors since the driver loaded
    #: (``ecc.errors.uncorrected.volatile.total``); ``None`` without ECC.
    ecc_volatile_dbe: int | None = None
    #: Compute processes on this GPU; ``()`` when none, ``None`` when NVML cannot list them.
    processes: tuple[GpuProcess, ...] | None = None

    @property
    def clock_events(self) -> tuple[str, ...] | None:
        """Names of the active clock event reasons (``("GpuIdle",)``), ``None`` when unavailable."""
        return None if self.clock_event_mask is None else decode_clock_events(self.clock_event_mask)

    @property
    def memory_free_bytes(self) -> int | None:
        """Total minus used, bytes (``memory.free`` up to reserved memory)."""
        if self.memory_used_bytes is None or self.memory_total_bytes is None:
            return None
        return max(0, self.memory_total_bytes - self.memory_used_bytes)

    @property
    def memory_percent(self) -> float | None:
        """Used over total, percent."""
        if self.memory_used_bytes is None or not self.memory_total_bytes:
            return None
        return 100.0 * self.memory_used_bytes / self.memory_total_bytes

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values, plus ``clock_events`` (names) for readers."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "processes" and value is not None:
                value = [p.to_dict() for p in value]
            data[f.name] = value
        events = self.clock_events
        data["clock_events"] = None if events is None else list(events)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GpuSnapshot:
        """The inverse of :meth:`to_dict`.

        Raises ``KeyError`` without ``index`` or ``timestamp``; any other field
        that is missing (a trace from an older runner) is ``None``, and unknown
        keys are ignored.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name == "processes" and value is not None:
                value = tuple(GpuProcess.from_dict(p) for p in value)
            values[f.name] = value
        values["index"] = int(data["index"])
        values["timestamp"] = float(data["timestamp"])
        values["lost"] = bool(data.get("lost", False))
        return cls(**values)


@dataclass(frozen=True)
class XidEvent:
    """An XID (a driver-reported GPU error) from NVML's event API.

    XIDs are also written to the kernel log (``dmesg``: ``NVRM: Xid``), where
    NVML can miss some (79, 119, 120).
    """

    #: When runner received it, by the sampler's clock.
    timestamp: float
    #: NVML index of the GPU, ``None`` when the event's device matched none.
    gpu_index: int | None
    #: UUID of the GPU, ``None`` when unknown.
    uuid: str | None
    #: The XID number (``eventData``), e.g. 79: the GPU fell off the bus.
    xid: int

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values."""
        return {
            "timestamp": self.timestamp,
            "gpu_index": self.gpu_index,
            "uuid": self.uuid,
            "xid": self.xid,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> XidEvent:
        """The inverse of :meth:`to_dict`; raises ``KeyError`` on a missing field."""
        return cls(
            timestamp=float(data["timestamp"]),
            gpu_index=data["gpu_index"],
            uuid=data["uuid"],
            xid=int(data["xid"]),
        )


class _Lost(Exception):
    """Internal: the GPU answered as lost; ``str()`` is NVML's reason."""


class _Missing(Exception):
    """Internal: the function is missing from the driver or the bindings."""


@dataclass
class _Static:
    """What does not change while the driver is loaded, read on a GPU's first tick."""

    uuid: str | None = None
    pci_bus_id: str | None = None
    name: str | None = None
    temperature_slowdown_c: int | None = None
    temperature_max_c: int | None = None
    temperature_shutdown_c: int | None = None
    sm_clock_max_mhz: int | None = None
    complete: bool = False


@dataclass
class _Device:
    index: int
    handle: Any = None
    static: _Static = field(default_factory=_Static)


class Nvml:
    """The NVML session of one process: lazy init, cached handles, snapshots per tick.

    ``module`` is the ``pynvml`` module or an object with the same names
    (:class:`runner.sampling.trace.FakeNvml`); ``clock`` stamps snapshots and
    events. Nothing here raises for a GPU's or driver's quirk; the methods
    raise only for a bug. :meth:`sample` and :meth:`xid_events` may run in
    different threads (NVML is thread-safe; a blocking XID wait does not hold
    up sampling).
    """

    def __init__(self, module: Any = None, *, clock: Callable[[], float] = time.time) -> None:
        self._module_arg = module
        self._clock = clock
        self._m: Any = None
        self._lock = threading.Lock()
        self._started = False
        self._ok = False
        self._reason = ""
        self._driver: str | None = None
        self._devices: list[_Device] = []
        self._functions: dict[str, Callable[..., Any]] = {}
        self._missing: set[str] = set()
        self._logged: set[Hashable] = set()
        self._events: Any = None
        self._events_tried = False
        self._xid_unavailable: str | None = None
        self._event_devices: dict[Hashable, int] = {}

    # -- lifecycle ---------------------------------------------------------------

    def _start(self) -> bool:
        if self._started:
            return self._ok
        with self._lock:
            if not self._started:
                self._ok = self._init()
                self._started = True
        return self._ok

    def _init(self) -> bool:
        self._reason, self._driver, self._xid_unavailable = "", None, None
        m = self._module_arg
        if m is None:
            try:
                import pynvml
            except ImportError:
                self._reason = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
                return False
            m = pynvml
        self._m = m
        try:
            m.nvmlInit()
        except m.NVMLError as exc:
            self._reason = self._init_failure(exc)
            return False
        try:
            count = int(m.nvmlDeviceGetCount())
        except m.NVMLError as exc:
            self._reason = f"NVML cannot count the GPUs ({exc})"
            with contextlib.suppress(m.NVMLError):
                m.nvmlShutdown()
            return False
        with contextlib.suppress(m.NVMLError, AttributeError):
            self._driver = _text(m.nvmlSystemGetDriverVersion())
        self._devices = [_Device(index) for index in range(count)]
        for device in self._devices:
            with contextlib.suppress(m.NVMLError):
                device.handle = m.nvmlDeviceGetHandleByIndex(device.index)
        if not count:
            self._reason = "the NVIDIA driver reports no GPUs"
        return True

    def _init_failure(self, exc: BaseException) -> str:
        code = getattr(exc, "value", None)
        if code == self._const("NVML_ERROR_LIBRARY_NOT_FOUND"):
            return "no NVIDIA driver (NVML library not found)"
        if code == self._const("NVML_ERROR_DRIVER_NOT_LOADED"):
            return "the NVIDIA driver is not loaded (NVML: Driver Not Loaded)"
        if code == self._const("NVML_ERROR_LIB_RM_VERSION_MISMATCH"):
            return (
                "the NVIDIA driver library and kernel module differ in version "
                "(reboot, or reload the nvidia module)"
            )
        if code == self._const("NVML_ERROR_NO_PERMISSION"):
            return "no permission to use the NVIDIA driver (NVML: Insufficient Permissions)"
        return f"NVML failed to start ({exc})"

    def close(self) -> None:
        """Free the event set and shut NVML down; a later call starts it again."""
        with self._lock:
            if self._started and self._ok:
                m = self._m
                if self._events is not None:
                    with contextlib.suppress(m.NVMLError, AttributeError):
                        m.nvmlEventSetFree(self._events)
                with contextlib.suppress(m.NVMLError):
                    m.nvmlShutdown()
            self._started = self._ok = self._events_tried = False
            self._events = None
            self._devices = []
            self._event_devices = {}

    def __enter__(self) -> Nvml:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- facts -------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """True when NVML started (it may still see zero GPUs: see :attr:`reason`)."""
        return self._start()

    @property
    def reason(self) -> str:
        """Why there are no GPUs, e.g. ``"no NVIDIA driver (NVML library not found)"``."""
        self._start()
        return self._reason

    @property
    def driver_version(self) -> str | None:
        """The driver's version (``driver_version``), ``None`` without a driver."""
        self._start()
        return self._driver

    def device_count(self) -> int:
        """GPUs NVML sees (lost ones included); 0 without a driver."""
        return len(self._devices) if self._start() else 0

    @property
    def xid_unavailable(self) -> str | None:
        """Why XID events cannot be watched, once :meth:`xid_events` has tried; else ``None``."""
        return self._xid_unavailable

    # -- sampling ----------------------------------------------------------------

    def sample_gpus(self) -> tuple[tuple[GpuSnapshot, ...], tuple[XidEvent, ...]]:
        """One tick for :class:`runner.sampling.sample.Sampler`: snapshots and new XIDs."""
        return self.sample(), self.xid_events(0)

    def sample(self) -> tuple[GpuSnapshot, ...]:
        """One snapshot per GPU, in NVML index order; ``()`` without a driver."""
        if not self._start():
            return ()
        now = float(self._clock())
        return tuple(self._sample_device(device, now) for device in self._devices)

    def _sample_device(self, device: _Device, now: float) -> GpuSnapshot:
        m = self._m
        try:
            if device.handle is None:
                device.handle = self._call("nvmlDeviceGetHandleByIndex", device.index)
                if device.handle is None:
                    raise _Lost("NVML gave no handle for this GPU")
            h = device.handle
            static = self._read_static(h, device.static)
            memory = self._call("nvmlDeviceGetMemoryInfo", h)
            util = self._call("nvmlDeviceGetUtilizationRates", h)
            power = self._call("nvmlDeviceGetPowerUsage", h)
            limit = self._call("nvmlDeviceGetEnforcedPowerLimit", h)
            temperature = self._call("nvmlDeviceGetTemperature", h, m.NVML_TEMPERATURE_GPU)
            sm_clock = self._call("nvmlDeviceGetClockInfo", h, m.NVML_CLOCK_SM)
            events = self._call_first(_CLOCK_EVENT_FUNCTIONS, h)
            thermal = self._call("nvmlDeviceGetViolationStatus", h, m.NVML_PERF_POLICY_THERMAL)
            power_v = self._call("nvmlDeviceGetViolationStatus", h, m.NVML_PERF_POLICY_POWER)
            ecc = self._call(
                "nvmlDeviceGetTotalEccErrors",
                h,
                m.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                m.NVML_VOLATILE_ECC,
            )
            procs = self._call("nvmlDeviceGetComputeRunningProcesses", h)
        except _Lost as lost:
            s = device.static
            return GpuSnapshot(
                index=device.index,
                timestamp=now,
                uuid=s.uuid,
                pci_bus_id=s.pci_bus_id,
                name=s.name,
                lost=True,
                lost_reason=str(lost),
                temperature_slowdown_c=s.temperature_slowdown_c,
                temperature_max_c=s.temperature_max_c,
                temperature_shutdown_c=s.temperature_shutdown_c,
                sm_clock_max_mhz=s.sm_clock_max_mhz,
            )
        return GpuSnapshot(
            index=device.index,
            timestamp=now,
            uuid=static.uuid,
            pci_bus_id=static.pci_bus_id,
            name=static.name,
            memory_used_bytes=_attr_int(memory, "used"),
            memory_total_bytes=_attr_int(memory, "total"),
            utilization_gpu_percent=_attr_int(util, "gpu"),
            utilization_memory_percent=_attr_int(util, "memory"),
            power_w=None if power is None else int(power) / 1000.0,
            power_limit_w=None if limit is None else int(limit) / 1000.0,
            temperature_c=_int(temperature),
            temperature_slowdown_c=static.temperature_slowdown_c,
            temperature_max_c=static.temperature_max_c,
            temperature_shutdown_c=static.temperature_shutdown_c,
            sm_clock_mhz=_int(sm_clock),
            sm_clock_max_mhz=static.sm_clock_max_mhz,
            clock_event_mask=_int(events),
            thermal_violation_ns=_attr_int(thermal, "violationTime"),
            power_violation_ns=_attr_int(power_v, "violationTime"),
            ecc_volatile_dbe=_int(ecc),
            processes=None if procs is None else _processes(procs),
        )

    def _read_static(self, h: Any, s: _Static) -> _Static:
        if s.complete:
            return s
        m = self._m
        s.uuid = _text(self._call("nvmlDeviceGetUUID", h))
        s.name = _text(self._call("nvmlDeviceGetName", h))
        pci = self._call("nvmlDeviceGetPciInfo", h)
        s.pci_bus_id = None if pci is None else _text(getattr(pci, "busId", None))
        threshold = "nvmlDeviceGetTemperatureThreshold"
        s.temperature_slowdown_c = _int(
            self._call(threshold, h, m.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)
        )
        s.temperature_max_c = _int(self._call(threshold, h, m.NVML_TEMPERATURE_THRESHOLD_GPU_MAX))
        s.temperature_shutdown_c = _int(
            self._call(threshold, h, m.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN)
        )
        s.sm_clock_max_mhz = _int(self._call("nvmlDeviceGetMaxClockInfo", h, m.NVML_CLOCK_SM))
        # Only a GPU that answered every query keeps these: a lost one tries again.
        s.complete = True
        return s

    # -- XID events --------------------------------------------------------------

    def xid_events(self, timeout_ms: int = 0) -> tuple[XidEvent, ...]:
        """XID events since the last call, waiting up to ``timeout_ms`` for the first.

        The first call registers every GPU for XID events. ``()`` without a
        driver, GPUs or event API (:attr:`xid_unavailable` then says why; it is
        logged once at INFO).
        """
        if not self._start() or not self._watch_xids():
            return ()
        m = self._m
        found: list[XidEvent] = []
        wait = timeout_ms
        while len(found) < _MAX_EVENTS_PER_CALL:
            try:
                data = self._call_first(_EVENT_WAIT_FUNCTIONS, self._events, wait, raw=True)
            except m.NVMLError as exc:
                if getattr(exc, "value", None) != self._const("NVML_ERROR_TIMEOUT"):
                    self._log_once(
                        ("event-wait", type(exc).__name__),
                        logging.WARNING,
                        "waiting for XID events failed (%s); trying again next tick",
                        exc,
                    )
                break
            except (_Missing, _Lost):
                break
            if data is None:
                break
            wait = 0
            if not int(getattr(data, "eventType", 0)) & int(m.nvmlEventTypeXidCriticalError):
                continue
            index = self._event_devices.get(_handle_key(getattr(data, "device", None)))
            uuid = None if index is None else self._devices[index].static.uuid
            found.append(XidEvent(float(self._clock()), index, uuid, int(data.eventData)))
        return tuple(found)

    def _watch_xids(self) -> bool:
        if self._events_tried:
            return self._events is not None
        self._events_tried = True
        m = self._m
        if not self._devices:
            self._xid_unavailable = "no GPUs to watch"
            return False
        try:
            events = self._call("nvmlEventSetCreate", raw=True)
        except (m.NVMLError, _Missing, _Lost) as exc:
            return self._no_xids(f"the driver has no NVML event API ({_words(exc)})")
        refused: list[str] = []
        for device in self._devices:
            if device.handle is None:
                continue
            try:
                self._call(
                    "nvmlDeviceRegisterEvents",
                    device.handle,
                    m.nvmlEventTypeXidCriticalError,
                    events,
                    raw=True,
                )
            except (m.NVMLError, _Missing, _Lost) as exc:
                refused.append(f"GPU {device.index}: {_words(exc)}")
                continue
            self._event_devices[_handle_key(device.handle)] = device.index
            # An XID often means the GPU is about to be lost: know its UUID first.
            with contextlib.suppress(_Lost):
                self._read_static(device.handle, device.static)
        if not self._event_devices:
            with contextlib.suppress(m.NVMLError, AttributeError):
                m.nvmlEventSetFree(events)
            return self._no_xids(
                "the driver does not deliver XID events through NVML ("
                + "; ".join(refused or ["no GPU handle"])
                + "); read the kernel log instead"
            )
        if refused:
            self._log_once("xid-partial", logging.INFO, "XID events not watched on %s", refused)
        self._events = events
        return True

    def _no_xids(self, why: str) -> bool:
        self._xid_unavailable = why
        self._log_once("xid", logging.INFO, "XID events unavailable: %s", why)
        return False

    # -- the call boundary -------------------------------------------------------

    def _const(self, name: str) -> Any:
        return getattr(self._m, name, None)

    def _function(self, name: str) -> Callable[..., Any]:
        fn = self._functions.get(name)
        if fn is None:
            if name in self._missing:
                raise _Missing(name)
            try:
                fn = getattr(self._m, name)
            except AttributeError as exc:
                self._missing.add(name)
                raise _Missing(f"{name} is not in these nvidia-ml-py bindings") from exc
            self._functions[name] = fn
        return fn

    def _call(self, name: str, *args: Any, raw: bool = False) -> Any:
        """``name(*args)``, or ``None`` when the value is not available.

        Raises ``_Lost`` for a lost GPU. A missing function is logged once and
        then ``None``; with ``raw=True`` it raises ``_Missing`` and every other
        NVML error propagates (events need to tell a timeout from the rest).
        """
        try:
            return self._call_first((name,), *args, raw=raw)
        except _Missing:
            if raw:
                raise
            return None

    def _call_first(self, names: Sequence[str], *args: Any, raw: bool = False) -> Any:
        """The first of ``names`` present in the driver and bindings, called with ``args``."""
        m = self._m
        missing: list[str] = []
        for name in names:
            try:
                fn = self._function(name)
            except _Missing as exc:
                missing.append(str(exc))
                continue
            try:
                value = fn(*args)
            except m.NVMLError as exc:
                code = getattr(exc, "value", None)
                if code in self._codes(_MISSING_ERRORS):
                    self._missing.add(name)
                    self._functions.pop(name, None)
                    missing.append(f"{name} is not in this driver's NVML library")
                    continue
                if code in self._codes(_LOST_ERRORS):
                    raise _Lost(str(exc)) from exc
                if raw:
                    raise
                return None
            if missing:
                self._log_once(
                    names, logging.DEBUG, "%s; using %s instead", "; ".join(missing), name
                )
            return value
        self._log_once(
            names,
            logging.WARNING,
            "%s (the driver and nvidia-ml-py differ in version); "
            "what it reads is reported as not available",
            "; ".join(missing),
        )
        raise _Missing(names[-1])

    def _codes(self, names: Sequence[str]) -> tuple[Any, ...]:
        return tuple(getattr(self._m, n, None) for n in names)

    def _log_once(self, key: Hashable, level: int, message: str, *args: Any) -> None:
        if key in self._logged:
            return
        self._logged.add(key)
        log.log(level, message, *args)


def open_nvml(environ: Mapping[str, str] | None = None) -> Nvml:
    """The :class:`Nvml` commands use: the driver's, or the fake ``RUNNER_FAKE_NVML`` names.

    Raises :class:`runner.sampling.trace.TraceError` when the variable names a
    scenario or trace that does not exist.
    """
    spec = (os.environ if environ is None else environ).get(ENV_FAKE_NVML, "").strip()
    if not spec:
        return Nvml()
    from runner.sampling.trace import fake_from_spec

    return Nvml(fake_from_spec(spec, clock=time.monotonic))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _attr_int(obj: Any, name: str) -> int | None:
    if obj is None:
        return None
    value = getattr(obj, name, None)
    return None if value is None else int(value)


def _processes(procs: Sequence[Any]) -> tuple[GpuProcess, ...]:
    out = []
    for p in procs:
        used = getattr(p, "usedGpuMemory", None)
        out.append(
            GpuProcess(pid=int(p.pid), used_memory_bytes=None if used is None else int(used))
        )
    return tuple(out)


def _handle_key(handle: Any) -> Hashable:
    """A key equal for two references to the same device (ctypes pointers or a fake's objects)."""
    try:
        return ("ptr", ctypes.cast(handle, ctypes.c_void_p).value)
    except (TypeError, ctypes.ArgumentError):
        return ("obj", id(handle))


def _words(exc: BaseException) -> str:
    text = str(exc)
    return text or type(exc).__name__

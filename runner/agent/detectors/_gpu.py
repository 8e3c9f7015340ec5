"""What the GPUs say: power collapse, throttling, and a failing host (XID, ECC, lost GPU)."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.agent.detectors._common import (
    OFF_LOOP_PHASES,
    BusyPower,
    CheckpointWatch,
    Hold,
    JobGpus,
    StepWatch,
    clean_line,
    clock_drop_percent,
    duration,
    gpu_brief,
    gpu_key,
    gpus_failed,
    gpus_of,
    make_event,
    num,
    xids_of,
)
from runner.agent.observe import Observation
from runner.rundir import Event, Severity
from runner.sampling.nvml import CLOCK_EVENT_REASONS, GpuSnapshot
from runner.spec import WatchdogSpec

# -- power collapse --------------------------------------------------------------


class PowerCollapseDetector:
    """GPU power far below its own busy draw while the process lives (kind ``power_collapse``).

    Watches each of the job's GPUs: power < ``power_collapse_fraction`` x the
    rolling median of its power on busy ticks (utilisation >= 60 %), for more
    than ``power_collapse_s``, while the training process is alive and no step
    came in that time. The seeds' freeze went from ~80 W to ~20 W (25 %; the
    default fraction is 35 %). Not while checkpointing, starting or finished:
    the GPU idles then by design.

    A confirming signal only (the stall detector uses the same measure): a
    warning with action ``none``, once per episode; ``info`` when power returns
    or steps resume.
    """

    name = "power_collapse"

    def __init__(self, watchdog: WatchdogSpec | None = None) -> None:
        self.watchdog = watchdog if watchdog is not None else WatchdogSpec()
        self._busy = BusyPower()
        self._attempt: int | None = None
        self._new_attempt()

    def _new_attempt(self) -> None:
        self._steps = StepWatch()
        self._gpus = JobGpus()
        self._ckpt = CheckpointWatch()
        self._low_since: dict[int, float] = {}
        self._active = False

    def observe(self, obs: Observation) -> Sequence[Event]:
        w = self.watchdog
        if obs.attempt != self._attempt:
            self._attempt = obs.attempt
            self._new_attempt()
        now = obs.now
        advanced = self._steps.update(obs.progress)
        gpus = self._gpus.update(obs, gpus_of(obs.sample))
        self._busy.update(gpus, w.power_collapse_fraction)
        checkpointing = self._ckpt.update(obs)
        eligible = obs.alive and not checkpointing and obs.progress.phase not in OFF_LOOP_PHASES
        low: dict[int, tuple[GpuSnapshot, float]] = {}
        for g in gpus:
            median = self._busy.median(g)
            if (
                eligible
                and not g.lost
                and median
                and self._busy.is_low(g, w.power_collapse_fraction)
            ):
                low[g.index] = (g, median)
        # A step resets the clocks: a run that still steps is not frozen.
        self._low_since = {i: now if advanced else self._low_since.get(i, now) for i in sorted(low)}
        if self._active:
            if low and not advanced:
                return []
            self._active = False
            if not eligible:
                return []  # exited, checkpointing or finished: nothing to say about power
            why = "steps resumed" if advanced else "power returned to its busy level"
            return [
                make_event(obs, "power_collapse", "info", f"GPU power collapse over: {why}", {})
            ]
        collapsed = [i for i, since in self._low_since.items() if now - since > w.power_collapse_s]
        if not collapsed:
            return []
        self._active = True
        facts = []
        for i in collapsed:
            g, median = low[i]
            power = num(g.power_w) or 0.0
            fact = gpu_brief(g)
            fact.update(
                {
                    "busy_median_w": round(median, 1),
                    "ratio": round(power / median, 3),
                    "low_for_s": round(now - self._low_since[i], 1),
                }
            )
            facts.append(fact)
        first = facts[0]
        evidence: dict[str, Any] = {
            "gpus": facts,
            "fraction": w.power_collapse_fraction,
            "window_s": w.power_collapse_s,
            "since_last_step_s": round(self._steps.silence(obs), 1),
            "step": obs.progress.step,
        }
        message = (
            f"GPU {first['index']} power fell to {first['power_w']:.0f} W, "
            f"{100 * first['ratio']:.0f} % of its busy {first['busy_median_w']:.0f} W, for "
            f"{duration(first['low_for_s'])} with the process alive and no step: the silent-"
            "freeze signature (confirms a stall; no action on its own)"
        )
        return [make_event(obs, "power_collapse", "warning", message, evidence)]


# -- throttling ------------------------------------------------------------------

_BIT = CLOCK_EVENT_REASONS
THERMAL_BITS = _BIT["SwThermalSlowdown"] | _BIT["HwThermalSlowdown"] | _BIT["HwSlowdown"]
POWER_CAP_BITS = _BIT["SwPowerCap"] | _BIT["HwPowerBrakeSlowdown"]
POWER_BRAKE_BIT = _BIT["HwPowerBrakeSlowdown"]
#: A thermal violation counter rising by at least this fraction of the window
#: (and at least 1 s) counts as "rising" (DCGM warns on any rise; a floor keeps
#: one rounding tick from counting).
VIOLATION_MIN_FRACTION = 0.02
#: Consecutive ticks within ``thermal_margin_c`` of the slowdown threshold.
HOT_TICKS = 3
#: Power capping is normal under load; it is worth a warning only when the mean
#: SM clock over the window is this far (fraction) below the GPU's maximum.
POWER_CLOCK_DROP = 0.3
#: The power violation counter must grow by this fraction of the window.
POWER_VIOLATION_FRACTION = 0.5


@dataclass
class _GpuThrottle:
    # (time, thermal violation ns, power violation ns, SM clock / max)
    samples: deque[tuple[float, float | None, float | None, float | None]] = field(
        default_factory=deque
    )
    thermal_bits: Hold = field(default_factory=Hold)
    cap_bits: Hold = field(default_factory=Hold)
    brake_bit: Hold = field(default_factory=Hold)
    hot_ticks: int = 0
    thermal_active: bool = False
    thermal_clear: Hold = field(default_factory=Hold)
    power_active: bool = False
    power_clear: Hold = field(default_factory=Hold)


class ThrottleDetector:
    """Clocks held down by heat or by the power cap (kinds ``thermal``, ``power_throttle``).

    Per GPU the job uses, over ``thermal_window_s`` (DCGM's 60 s watch):

    - ``thermal``: the thermal violation counter (DCGM's thermal watch) rising
      by at least 2 % of the window; or SwThermalSlowdown / HwThermalSlowdown /
      HwSlowdown set on every tick for the whole window; or the temperature
      within ``thermal_margin_c`` of the GPU's *own* slowdown threshold (read
      from NVML per GPU, never an assumed 83 C) for 3 ticks. The users' blower
      A4000 sat at 83 C with its fan at 62 %.
    - ``power_throttle``: SwPowerCap is normal under load, so only when power
      capping persists for the window (the bit on every tick, or the power
      violation counter growing by half the window) *and* the mean SM clock is
      30 % or more below its maximum; HwPowerBrakeSlowdown (an external brake)
      for the whole window on its own.

    Warnings (action ``none``) with the SM clock drop (current vs max) in the
    evidence, once per episode per GPU; ``info`` once clear for a window.
    """

    name = "throttle"

    def __init__(self, watchdog: WatchdogSpec | None = None) -> None:
        self.watchdog = watchdog if watchdog is not None else WatchdogSpec()
        self._state: dict[str, _GpuThrottle] = {}
        self._gpus = JobGpus()

    def observe(self, obs: Observation) -> Sequence[Event]:
        events: list[Event] = []
        for g in self._gpus.update(obs, gpus_of(obs.sample)):
            if g.lost:
                continue
            key = gpu_key(g)
            state = self._state.setdefault(key, _GpuThrottle())
            events.extend(self._observe_gpu(obs, g, state))
        return events

    def _observe_gpu(self, obs: Observation, g: GpuSnapshot, s: _GpuThrottle) -> list[Event]:
        w = self.watchdog
        now, window = obs.now, w.thermal_window_s
        top, sm = num(g.sm_clock_max_mhz), num(g.sm_clock_mhz)
        ratio = sm / top if sm is not None and top else None
        s.samples.append((now, num(g.thermal_violation_ns), num(g.power_violation_ns), ratio))
        while s.samples and s.samples[0][0] < now - window:
            s.samples.popleft()
        mask = g.clock_event_mask
        bits = 0 if mask is None else mask
        thermal_held = s.thermal_bits.update(now, mask is not None and bool(bits & THERMAL_BITS))
        cap_held = s.cap_bits.update(now, mask is not None and bool(bits & POWER_CAP_BITS))
        brake_held = s.brake_bit.update(now, mask is not None and bool(bits & POWER_BRAKE_BIT))
        temp, slowdown = num(g.temperature_c), num(g.temperature_slowdown_c)
        hot = temp is not None and bool(slowdown) and temp >= (slowdown or 0) - w.thermal_margin_c
        s.hot_ticks = s.hot_ticks + 1 if hot else 0
        thermal_rise = _rise([x[1] for x in s.samples])
        power_rise = _rise([x[2] for x in s.samples])

        thermal_reasons = []
        if thermal_rise >= max(1.0, VIOLATION_MIN_FRACTION * window) * 1e9:
            thermal_reasons.append("violation_counter")
        if thermal_held >= window:
            thermal_reasons.append("clock_event_bits")
        if s.hot_ticks >= HOT_TICKS:
            thermal_reasons.append("temperature")

        ratios = [x[3] for x in s.samples]
        mean_ratio = (
            sum(r for r in ratios if r is not None) / len(ratios)
            if ratios and all(r is not None for r in ratios)
            else None
        )
        clocks_down = mean_ratio is not None and mean_ratio <= 1.0 - POWER_CLOCK_DROP
        power_reasons = []
        if brake_held >= window:
            power_reasons.append("power_brake")
        if clocks_down and cap_held >= window:
            power_reasons.append("power_cap_bits")
        if clocks_down and power_rise >= POWER_VIOLATION_FRACTION * window * 1e9:
            power_reasons.append("violation_counter")

        base = gpu_brief(g)
        base.update(
            {
                "clock_drop_percent": clock_drop_percent(g),
                "window_s": window,
                "thermal_violation_s_in_window": round(thermal_rise / 1e9, 2),
                "power_violation_s_in_window": round(power_rise / 1e9, 2),
            }
        )
        events = []
        name = f"GPU {g.index}" + (f" ({g.name})" if g.name else "")
        clocks = _clocks(g)
        if not s.thermal_active and thermal_reasons:
            s.thermal_active = True
            s.thermal_clear.since = None
            evidence = dict(base)
            evidence.update(
                {
                    "reasons": thermal_reasons,
                    "temperature_slowdown_c": g.temperature_slowdown_c,
                    "temperature_max_c": g.temperature_max_c,
                    "thermal_margin_c": w.thermal_margin_c,
                }
            )
            heat = (
                f"{g.temperature_c} C against its own slowdown threshold "
                f"{g.temperature_slowdown_c} C"
                if g.temperature_c is not None and g.temperature_slowdown_c is not None
                else "thermal slowdown reported"
            )
            events.append(
                make_event(
                    obs,
                    "thermal",
                    "warning",
                    f"{name} is throttling for heat: {heat}{clocks}; improve airflow or the "
                    "fan curve, or lower the power limit (nvidia-smi -pl)",
                    evidence,
                )
            )
        elif s.thermal_active and s.thermal_clear.update(now, not thermal_reasons) >= window:
            s.thermal_active = False
            events.append(
                make_event(obs, "thermal", "info", f"{name} no longer throttles for heat", {})
            )
        if not s.power_active and power_reasons:
            s.power_active = True
            s.power_clear.since = None
            evidence = dict(base)
            evidence.update({"reasons": power_reasons, "mean_clock_ratio": mean_ratio})
            what = (
                "the power brake (external signal)"
                if "power_brake" in power_reasons
                else (
                    f"its {g.power_limit_w:.0f} W power cap" if g.power_limit_w else "its power cap"
                )
            )
            events.append(
                make_event(
                    obs,
                    "power_throttle",
                    "warning",
                    f"{name} is held down by {what} for {duration(window)}{clocks}; "
                    "check the power limit (nvidia-smi -q -d POWER) and the power supply",
                    evidence,
                )
            )
        elif s.power_active and s.power_clear.update(now, not power_reasons) >= window:
            s.power_active = False
            events.append(
                make_event(obs, "power_throttle", "info", f"{name} no longer power-throttles", {})
            )
        return events


def _rise(values: Sequence[float | None]) -> float:
    """How much a cumulative counter grew over ``values`` (0 when unknown or reset)."""
    known = [v for v in values if v is not None]
    if len(known) < 2:
        return 0.0
    return max(0.0, known[-1] - known[0])


def _clocks(g: GpuSnapshot) -> str:
    drop = clock_drop_percent(g)
    if drop is None:
        return ""
    return f", SM clock {g.sm_clock_mhz} of {g.sm_clock_max_mhz} MHz (-{drop:.0f} %)"


# -- XID, ECC, lost GPUs ---------------------------------------------------------

#: XIDs DCGM's health policy fails the host on (64: row-remapper failure, from
#: DCGM's memory watch, which also fails it).
FAIL_XIDS = frozenset({48, 64, 74, 79, 95, 119, 120, 140})
#: XIDs DCGM warns on: 94 (contained ECC), memory 31/32/43/63, PCIe 38/39/42,
#: thermal 60-62, power 54/56/57/58/78.
WARN_XIDS = frozenset({94, 31, 32, 43, 63, 38, 39, 42, 60, 61, 62, 54, 56, 57, 58, 78})
XID_MEANING = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    32: "invalid or corrupted push buffer stream",
    38: "driver firmware error",
    43: "GPU stopped processing",
    45: "preemptive cleanup after a process ended",
    48: "double-bit ECC error",
    63: "ECC page retirement or row remapping event",
    64: "ECC page retirement or row remapping failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
    140: "unrecovered ECC error",
}
# The kernel's line, where the job's log carries it: "NVRM: Xid (PCI:0000:01:00): 79, ..."
_NVRM_XID = re.compile(r"NVRM: Xid \(PCI:([0-9a-fA-F:.]+)\): (\d+)")
_BUS = re.compile(r"([0-9a-fA-F]{2}):([0-9a-fA-F]{2})(?:\.[0-7])?$")

_HOST_BAD = "the HOST is bad, not the run: stop it and move the job to another machine"


def _bus(pci: str | None) -> str | None:
    m = _BUS.search(pci or "")
    return None if m is None else f"{m.group(1)}:{m.group(2)}".lower()


class GpuHealthDetector:
    """A failing host under the run (kinds ``xid``, ``ecc``, ``gpu_lost``), after DCGM's policy.

    - XIDs from NVML's event API (and ``NVRM: Xid`` kernel lines in the job's
      log, since NVML can miss 79/119/120): 48, 64, 74, 79, 95, 119, 120, 140
      are DCGM failures: critical, action ``stop``, the message saying the host
      is bad, not the run (restarting in place cannot help: move the job). The
      warning class (94; 31, 32, 43, 63 memory; 38, 39, 42 PCIe; 60-62
      thermal; 54, 56-58, 78 power): warning. Others: ``info``.
    - A GPU answering ``GpuIsLost`` (fallen off the bus, needs a reset):
      ``gpu_lost``, critical, ``stop``. Fewer GPUs than ``expected_gpus``:
      ``gpu_lost`` warning on the first tick, critical if they were there before.
    - Volatile double-bit ECC errors > 0: ``ecc``, critical, ``stop`` (DCGM FAIL).

    A failure on a GPU known *not* to be the job's (its pid never on it) is a
    warning: the host is degrading, this run is not hit yet. Each condition is
    reported once per run.
    """

    name = "gpu_health"

    def __init__(self, watchdog: WatchdogSpec | None = None, *, expected_gpus: int = 0) -> None:
        self.watchdog = watchdog if watchdog is not None else WatchdogSpec()
        self.expected_gpus = expected_gpus
        self._gpus = JobGpus()
        self._xids: set[tuple[int | None, int]] = set()
        self._lost: set[int] = set()
        self._ecc: set[int] = set()
        self._seen_all = False
        self._count_reported = False

    def observe(self, obs: Observation) -> Sequence[Event]:
        gpus = gpus_of(obs.sample)
        self._gpus.update(obs, gpus)
        events: list[Event] = []
        by_index = {g.index: g for g in gpus}
        for x in xids_of(obs.sample):
            events.extend(self._xid(obs, x.xid, x.gpu_index, by_index, "nvml", x.uuid))
        for raw in obs.log_lines:
            if not isinstance(raw, str) or "Xid" not in raw:
                continue
            m = _NVRM_XID.search(raw)
            if m is None:
                continue
            bus = _bus(m.group(1))
            index = next((g.index for g in gpus if bus and _bus(g.pci_bus_id) == bus), None)
            events.extend(self._xid(obs, int(m.group(2)), index, by_index, "kernel_log", None, raw))
        for g in gpus:
            if g.lost and g.index not in self._lost:
                self._lost.add(g.index)
                events.append(self._lost_event(obs, g))
            dbe = num(g.ecc_volatile_dbe)
            if dbe is not None and dbe > 0 and g.index not in self._ecc:
                self._ecc.add(g.index)
                events.append(self._ecc_event(obs, g, int(dbe)))
        events.extend(self._count(obs, gpus))
        return events

    def _xid(
        self,
        obs: Observation,
        xid: int,
        index: int | None,
        by_index: dict[int, GpuSnapshot],
        source: str,
        uuid: str | None,
        line: str | None = None,
    ) -> list[Event]:
        key = (index, xid)
        if key in self._xids:
            return []
        self._xids.add(key)
        g = by_index.get(index) if index is not None else None
        ours = self._gpus.is_job(index)
        meaning = XID_MEANING.get(xid, "see NVIDIA's XID catalog")
        dcgm = "FAIL" if xid in FAIL_XIDS else "WARN" if xid in WARN_XIDS else "none"
        evidence: dict[str, Any] = {
            "xid": xid,
            "meaning": meaning,
            "dcgm": dcgm,
            "gpu_index": index,
            "uuid": uuid or (g.uuid if g else None),
            "pci_bus_id": g.pci_bus_id if g else None,
            "name": g.name if g else None,
            "job_gpu": ours,
            "source": source,
        }
        if line is not None:
            evidence["line"] = clean_line(line)
        where = "a GPU" if index is None else f"GPU {index}"
        if dcgm == "FAIL" and ours:
            return [
                make_event(
                    obs,
                    "xid",
                    "critical",
                    f"{where} reported XID {xid} ({meaning}), a failure in DCGM's policy: "
                    f"{_HOST_BAD}",
                    evidence,
                    "stop",
                )
            ]
        if dcgm == "FAIL":
            return [
                make_event(
                    obs,
                    "xid",
                    "warning",
                    f"{where}, not one this job uses, reported XID {xid} ({meaning}): the host "
                    "has a failing GPU; move future jobs off it",
                    evidence,
                )
            ]
        severity: Severity = "warning" if dcgm == "WARN" else "info"
        return [
            make_event(obs, "xid", severity, f"{where} reported XID {xid} ({meaning})", evidence)
        ]

    def _lost_event(self, obs: Observation, g: GpuSnapshot) -> Event:
        evidence = gpu_brief(g)
        evidence.update({"lost_reason": g.lost_reason, "pci_bus_id": g.pci_bus_id})
        evidence["job_gpu"] = ours = self._gpus.is_job(g.index)
        reason = g.lost_reason or "GPU is lost"
        if ours:
            return make_event(
                obs,
                "gpu_lost",
                "critical",
                f"GPU {g.index} ({g.uuid or g.pci_bus_id or '?'}) is lost ({reason}; fallen off "
                f"the bus or needs a reset): {_HOST_BAD}",
                evidence,
                "stop",
            )
        return make_event(
            obs,
            "gpu_lost",
            "warning",
            f"GPU {g.index}, not one this job uses, is lost ({reason}): the host is degrading",
            evidence,
        )

    def _ecc_event(self, obs: Observation, g: GpuSnapshot, dbe: int) -> Event:
        evidence = gpu_brief(g)
        evidence.update({"ecc_volatile_dbe": dbe, "dcgm": "FAIL"})
        evidence["job_gpu"] = ours = self._gpus.is_job(g.index)
        if ours:
            return make_event(
                obs,
                "ecc",
                "critical",
                f"GPU {g.index} has {dbe} uncorrectable (double-bit) ECC error(s) since the "
                f"driver loaded, a failure in DCGM's policy: {_HOST_BAD}",
                evidence,
                "stop",
            )
        return make_event(
            obs,
            "ecc",
            "warning",
            f"GPU {g.index}, not one this job uses, has {dbe} uncorrectable ECC error(s): "
            "the host is degrading",
            evidence,
        )

    def _count(self, obs: Observation, gpus: Sequence[GpuSnapshot]) -> list[Event]:
        expected = obs.num_gpus_expected or self.expected_gpus
        if expected <= 0 or gpus_failed(obs.sample):
            return []
        if len(gpus) >= expected:
            self._seen_all = True
            return []
        if self._count_reported:
            return []
        self._count_reported = True
        evidence = {"expected": expected, "visible": len(gpus), "seen_all_before": self._seen_all}
        if self._seen_all:
            return [
                make_event(
                    obs,
                    "gpu_lost",
                    "critical",
                    f"only {len(gpus)} of the job's {expected} GPUs are still visible to the "
                    f"driver: {_HOST_BAD}",
                    evidence,
                    "stop",
                )
            ]
        return [
            make_event(
                obs,
                "gpu_lost",
                "warning",
                f"the driver shows {len(gpus)} GPU(s), the job expects {expected}: a wrong host, "
                "a missing driver or a GPU that is gone",
                evidence,
            )
        ]

"""Scenarios and recorded traces, read through the real NVML wrapper at chosen instants."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from runner.sampling.nvml import GpuSnapshot, Nvml
from runner.sampling.trace import (
    SCENARIOS,
    FakeNvml,
    RecordedTrace,
    Scenario,
    TraceError,
    fake_from_spec,
    record_trace,
)


def _run(name: str, times: list[float], **kw: Any) -> list[GpuSnapshot]:
    """The scenario GPU's snapshot at each time (GPU 0 of 2)."""
    fake = FakeNvml(Scenario(name, gpus=2, **kw))
    nvml = Nvml(fake, clock=lambda: fake.now)
    out = []
    for t in times:
        fake.now = t
        snaps = nvml.sample()
        assert not snaps[1].lost and snaps[1].utilization_gpu_percent == 0  # the bystander
        out.append(snaps[0])
    return out


def test_healthy_is_steady_training() -> None:
    snaps = _run("healthy", [0, 100, 10_000])
    assert {(s.power_w, s.utilization_gpu_percent, s.temperature_c) for s in snaps} == {
        (80.0, 97, 65)
    }
    assert all(s.clock_events == () and s.processes for s in snaps)


def test_power_collapse_at_t() -> None:
    before, at, later = _run("power_collapse", [59.9, 60, 600], at=60)
    assert (before.power_w, before.utilization_gpu_percent, before.clock_events) == (80.0, 97, ())
    for s in (at, later):
        assert (s.power_w, s.utilization_gpu_percent, s.clock_events) == (20.0, 0, ("GpuIdle",))
        assert s.sm_clock_mhz == 210
        # The hung process is still there, holding its memory: only power says "stopped".
        assert s.processes == before.processes
        assert s.memory_used_bytes == before.memory_used_bytes
    assert at.power_w is not None and before.power_w is not None
    assert at.power_w / before.power_w == 0.25  # the seeds' 80 -> 20 W


def test_thermal_throttle_climbs_to_the_gpus_own_slowdown() -> None:
    times = [0, 30, 60, 90, 119, 120, 130, 150]
    snaps = _run("thermal_throttle", times, at=120)
    temps = [s.temperature_c for s in snaps]
    assert temps == sorted(temps) and temps[0] == 65
    assert temps[5:] == [98, 98, 98] == [s.temperature_slowdown_c for s in snaps[5:]]
    for s in snaps[:5]:
        assert s.clock_events == () and s.thermal_violation_ns == 0 and s.sm_clock_mhz == 1860
    for s in snaps[5:]:
        assert s.clock_events == ("SwThermalSlowdown", "HwThermalSlowdown")
        assert s.sm_clock_mhz == 1290
    violations = [s.thermal_violation_ns for s in snaps[5:]]
    assert violations == [0, 10 * 10**9, 30 * 10**9]  # rising: what DCGM's watch reads


def test_xid_then_lost() -> None:
    fake = FakeNvml(Scenario("xid", gpus=2, at=30))
    nvml = Nvml(fake, clock=lambda: fake.now)
    fake.now = 29
    assert [s.lost for s in nvml.sample()] == [False, False]
    assert nvml.xid_events() == ()
    fake.now = 30
    snaps, xids = nvml.sample_gpus()
    assert [s.lost for s in snaps] == [True, False]
    assert [(x.gpu_index, x.xid) for x in xids] == [(0, 79)]
    fake.now = 100
    assert nvml.sample()[0].lost and nvml.xid_events() == ()


def test_util_bounce_is_input_bound() -> None:
    snaps = _run("util_bounce", [float(t) for t in range(12)], period=6, busy=2)
    assert [s.utilization_gpu_percent for s in snaps] == [90, 90, 0, 0, 0, 0] * 2
    assert [s.power_w for s in snaps[:3]] == [80.0, 80.0, 25.0]
    assert snaps[2].clock_events == ("GpuIdle",) and snaps[0].clock_events == ()
    # The job never stops: its process and memory stay throughout.
    assert all(s.processes == snaps[0].processes for s in snaps)


def test_every_scenario_name_is_known() -> None:
    assert SCENARIOS == ("healthy", "power_collapse", "thermal_throttle", "xid", "util_bounce")
    with pytest.raises(TraceError, match="unknown scenario 'freeze'"):
        Scenario("freeze")


def test_the_clock_is_the_callers() -> None:
    ticks = iter([100.0, 100.0, 160.5])
    fake = FakeNvml(Scenario("power_collapse", at=60), clock=lambda: next(ticks))
    assert fake.now == 0.0
    assert fake.now == 60.5
    manual = FakeNvml(Scenario(), start=5)
    manual.advance(2.5)
    assert manual.now == 7.5


def test_specs() -> None:
    fake = fake_from_spec("scenario:healthy:gpus=2")
    assert isinstance(fake.timeline, Scenario) and fake.timeline.gpus == 2
    fake = fake_from_spec("scenario:util_bounce:gpus=3,gpu=2,period=4,busy=1,pid=7,t=9")
    assert fake.timeline == Scenario("util_bounce", gpus=3, gpu=2, period=4, busy=1, pid=7)
    assert fake.now == 9
    assert not fake_from_spec("scenario:xid:events=0").events
    assert not fake_from_spec("no-driver").driver
    assert Nvml(fake_from_spec("no-driver")).reason.startswith("no NVIDIA driver")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpu:healthy", "is not a fake NVML; use scenario:NAME"),
        ("scenario:healthy:gpus=two", "'two' is not a number"),
        ("scenario:healthy:colour=red", "unknown parameter 'colour'"),
        ("scenario:healthy:gpus", "expected key=value, got 'gpus'"),
        ("scenario:xid:gpus=2,gpu=2", "scenario gpu=2 is not one of its 2 GPU(s)"),
        ("trace:/no/such/trace.jsonl", "cannot read trace /no/such/trace.jsonl"),
    ],
)
def test_bad_specs_are_one_clear_error(spec: str, message: str) -> None:
    with pytest.raises(TraceError) as err:
        fake_from_spec(spec)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def _record(tmp_path: Path, fake: FakeNvml, **kw: Any) -> tuple[Path, list[GpuSnapshot]]:
    """Record ``fake`` on its own timeline: sleep() advances the fake's clock."""
    nvml = Nvml(fake, clock=lambda: fake.now)
    path = tmp_path / "gpu.jsonl"
    seen: list[GpuSnapshot] = []
    original = nvml.sample

    def sample() -> tuple[GpuSnapshot, ...]:
        snaps = original()
        seen.extend(snaps)
        return snaps

    nvml.sample = sample  # type: ignore[method-assign]
    result = record_trace(nvml, path, clock=lambda: fake.now, sleep=lambda s: fake.advance(s), **kw)
    assert result.ticks * result.gpus == len(seen)
    return path, seen


def test_a_recording_replays_as_the_same_snapshots(tmp_path: Path) -> None:
    fake = FakeNvml(Scenario("power_collapse", gpus=2, at=3))
    fake.fail("nvmlDeviceGetTotalEccErrors", fake.NVML_ERROR_NOT_SUPPORTED, gpus=[1])
    path, recorded = _record(tmp_path, fake, interval_s=1.0, duration_s=6)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {
        "format": "runner-gpu-trace",
        "version": 1,
        "driver_version": "570.86.15",
        "gpus": 2,
        "interval_s": 1.0,
    }
    assert len(lines) == 1 + 6

    replay = fake_from_spec(f"trace:{path}")
    assert replay.timeline.driver_version == "570.86.15"
    nvml = Nvml(replay, clock=lambda: replay.now)
    replayed = []
    for t in range(6):
        replay.now = t + 0.5  # between ticks: the last tick holds
        replayed.extend(nvml.sample())
    assert [replace(s, timestamp=0) for s in replayed] == [
        replace(s, timestamp=0) for s in recorded
    ]
    assert replayed[1].ecc_volatile_dbe is None  # "not available" replays as such
    assert [s.power_w for s in replayed[::2]] == [80.0, 80.0, 80.0, 20.0, 20.0, 20.0]


def test_a_recorded_xid_and_lost_gpu_replay(tmp_path: Path) -> None:
    fake = FakeNvml(Scenario("xid", gpus=2, gpu=1, at=2))
    path, _ = _record(tmp_path, fake, interval_s=1.0, duration_s=4)
    replay = FakeNvml(RecordedTrace.load(path))
    nvml = Nvml(replay, clock=lambda: replay.now)
    assert nvml.xid_events() == () and not nvml.sample()[1].lost
    replay.now = 2
    snaps, xids = nvml.sample_gpus()
    assert [s.lost for s in snaps] == [False, True]
    assert [(x.gpu_index, x.xid) for x in xids] == [(1, 79)]
    assert xids[0].uuid == "GPU-fa4e0001-0000-4000-8000-000000000001"


def test_a_broken_trace_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"format": "runner-gpu-trace", "version": 1}\n{"gpus": []}\n')
    with pytest.raises(TraceError, match=r"bad.jsonl:2 is not a trace line \(KeyError"):
        RecordedTrace.load(path)
    path.write_text('{"format": "runner-gpu-trace", "version": 1}\n')
    with pytest.raises(TraceError, match="the trace has no ticks"):
        RecordedTrace.load(path)


def test_recording_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    fake = FakeNvml(Scenario(gpus=1))
    calls = 0

    def sleep(seconds: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        fake.advance(seconds)

    nvml = Nvml(fake, clock=lambda: fake.now)
    result = record_trace(nvml, tmp_path / "t.jsonl", clock=lambda: fake.now, sleep=sleep)
    assert result.interrupted and result.ticks == 3
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 1 + 3
    RecordedTrace.load(tmp_path / "t.jsonl")  # readable as it is

"""The NVML layer at the NVML-call boundary: the real wrapper over the fake ``pynvml``.

The fake raises the real ``pynvml.NVMLError`` subclasses, so the wrapper's own
``except`` clauses are what is tested. The no-driver case uses the real pynvml.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import pynvml
import pytest

from runner.sampling.nvml import (
    CLOCK_EVENT_REASONS,
    GpuProcess,
    GpuSnapshot,
    Nvml,
    XidEvent,
    decode_clock_events,
)
from runner.sampling.trace import FakeNvml, Scenario

MIB = 1 << 20
GIB = 1 << 30


def _host(name: str = "healthy", **kw: Any) -> tuple[FakeNvml, Nvml]:
    fake = FakeNvml(Scenario(name, **kw))
    return fake, Nvml(fake, clock=lambda: fake.now)


def _nvml_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "runner.nvml" and r.levelno == level]


def _has_gpu() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_no_driver_is_zero_gpus_said_plainly_with_the_real_pynvml(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if _has_gpu():
        pytest.skip("this machine has an NVIDIA driver")
    caplog.set_level(logging.DEBUG, logger="runner.nvml")
    nvml = Nvml()
    assert nvml.sample() == ()
    assert nvml.reason == "no NVIDIA driver (NVML library not found)"
    assert not nvml.available
    assert nvml.device_count() == 0
    assert nvml.driver_version is None
    assert nvml.xid_events() == ()
    assert nvml.sample_gpus() == ((), ())
    assert caplog.records == []  # a normal case, not a warning
    nvml.close()


def test_fake_without_driver_reads_the_same() -> None:
    fake = FakeNvml(Scenario(gpus=0), driver=False)
    nvml = Nvml(fake)
    assert nvml.sample() == ()
    assert nvml.reason == "no NVIDIA driver (NVML library not found)"


def test_driver_not_loaded_has_its_own_reason() -> None:
    fake = FakeNvml(Scenario(gpus=1))
    fake.fail("nvmlInit", pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    assert Nvml(fake).reason == "the NVIDIA driver is not loaded (NVML: Driver Not Loaded)"


def test_a_healthy_gpu_snapshot_has_every_field() -> None:
    fake, nvml = _host(gpus=2)
    fake.now = 5.0
    busy, idle = nvml.sample()
    assert busy == GpuSnapshot(
        index=0,
        timestamp=5.0,
        uuid="GPU-fa4e0000-0000-4000-8000-000000000000",
        pci_bus_id="00000000:01:00.0",
        name="NVIDIA RTX A4000",
        memory_used_bytes=256 * MIB + 10 * GIB,
        memory_total_bytes=16376 * MIB,
        utilization_gpu_percent=97,
        utilization_memory_percent=45,
        power_w=80.0,
        power_limit_w=140.0,
        temperature_c=65,
        temperature_slowdown_c=98,
        temperature_max_c=93,
        temperature_shutdown_c=101,
        sm_clock_mhz=1860,
        sm_clock_max_mhz=2100,
        clock_event_mask=0,
        thermal_violation_ns=0,
        power_violation_ns=0,
        ecc_volatile_dbe=0,
        processes=(GpuProcess(4242, 10 * GIB),),
    )
    assert busy.clock_events == ()
    assert idle.clock_events == ("GpuIdle",)
    assert idle.processes == ()
    assert nvml.driver_version == "570.86.15"


def test_snapshot_round_trips_through_one_json_line() -> None:
    fake, nvml = _host("thermal_throttle", gpus=2, at=10)
    fake.now = 20
    for snap in nvml.sample():
        line = json.dumps(snap.to_dict())
        assert GpuSnapshot.from_dict(json.loads(line)) == snap
    data = nvml.sample()[0].to_dict()
    assert data["clock_events"] == ["SwThermalSlowdown", "HwThermalSlowdown"]
    fake.fail("nvmlDeviceGetComputeRunningProcesses", pynvml.NVML_ERROR_NOT_SUPPORTED)
    unavailable = nvml.sample()[0]
    assert unavailable.to_dict()["processes"] is None
    assert GpuSnapshot.from_dict(unavailable.to_dict()) == unavailable
    # A trace from an older runner lacks fields: they read as not available.
    old = GpuSnapshot.from_dict({"index": 3, "timestamp": 1.5, "name": "X", "extra": 1})
    assert old == GpuSnapshot(index=3, timestamp=1.5, name="X")
    event = XidEvent(2.0, 1, "GPU-x", 79)
    assert XidEvent.from_dict(json.loads(json.dumps(event.to_dict()))) == event


def test_unsupported_fields_are_none_and_the_rest_is_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, nvml = _host(gpus=2)
    caplog.set_level(logging.DEBUG, logger="runner.nvml")
    fake.fail("nvmlDeviceGetPowerUsage", pynvml.NVML_ERROR_NOT_SUPPORTED, gpus=[1])
    fake.fail("nvmlDeviceGetTotalEccErrors", pynvml.NVML_ERROR_NOT_SUPPORTED)
    fake.fail("nvmlDeviceGetComputeRunningProcesses", pynvml.NVML_ERROR_NO_PERMISSION)
    fake.fail("nvmlDeviceGetTemperatureThreshold", pynvml.NVML_ERROR_NOT_SUPPORTED)
    fake.fail("nvmlDeviceGetViolationStatus", pynvml.NVML_ERROR_NOT_SUPPORTED)
    busy, idle = nvml.sample()
    assert busy.power_w == 80.0 and idle.power_w is None
    assert idle.power_limit_w == 140.0
    for snap in (busy, idle):
        assert not snap.lost
        assert snap.ecc_volatile_dbe is None
        assert snap.processes is None
        assert snap.temperature_slowdown_c is None and snap.temperature_shutdown_c is None
        assert snap.thermal_violation_ns is None and snap.power_violation_ns is None
        assert snap.temperature_c is not None and snap.memory_total_bytes is not None
    assert caplog.records == []  # "not supported" is normal, not news


def test_a_function_missing_from_the_driver_is_logged_once_and_not_called_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, nvml = _host(gpus=2)
    caplog.set_level(logging.DEBUG, logger="runner.nvml")
    fake.fail("nvmlDeviceGetViolationStatus", pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    fake.remove("nvmlDeviceGetTotalEccErrors")  # not in these bindings at all
    for _ in range(50):
        snaps = nvml.sample()
        fake.advance(1)
    assert all(s.thermal_violation_ns is None and s.ecc_volatile_dbe is None for s in snaps)
    assert all(s.power_w == p for s, p in zip(snaps, (80.0, 14.0), strict=True))
    warnings = [r.getMessage() for r in _nvml_records(caplog, logging.WARNING)]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(
        "nvmlDeviceGetViolationStatus is not in this driver's NVML library"
    )
    assert warnings[1].startswith(
        "nvmlDeviceGetTotalEccErrors is not in these nvidia-ml-py bindings"
    )
    assert fake.calls["nvmlDeviceGetViolationStatus"] == 1
    assert fake.calls["nvmlDeviceGetTotalEccErrors"] == 0


def test_clock_events_fall_back_to_the_throttle_reasons_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, nvml = _host("power_collapse", gpus=1, at=0)
    caplog.set_level(logging.DEBUG, logger="runner.nvml")
    fake.fail("nvmlDeviceGetCurrentClocksEventReasons", pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    for _ in range(3):
        (snap,) = nvml.sample()
        assert snap.clock_events == ("GpuIdle",)
    assert _nvml_records(caplog, logging.WARNING) == []
    assert len(_nvml_records(caplog, logging.DEBUG)) == 1
    assert fake.calls["nvmlDeviceGetCurrentClocksEventReasons"] == 1
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 3


def test_a_lost_gpu_is_a_snapshot_and_the_others_still_sample() -> None:
    fake, nvml = _host("xid", gpus=3, gpu=1, at=10)
    before = nvml.sample()
    fake.now = 11
    after = nvml.sample()
    assert [s.lost for s in after] == [False, True, False]
    lost = after[1]
    assert lost.lost_reason == "GPU is lost"
    # What was read once stays; nothing else is claimed.
    assert (lost.uuid, lost.name, lost.pci_bus_id) == (
        before[1].uuid,
        before[1].name,
        before[1].pci_bus_id,
    )
    assert lost.temperature_slowdown_c == 98
    assert lost.power_w is None and lost.memory_used_bytes is None and lost.processes is None
    assert after[0] == replace(before[0], timestamp=11.0)
    assert after[2].power_w == 14.0


def test_unknown_error_on_one_gpu_marks_it_lost() -> None:
    fake, nvml = _host(gpus=2)
    fake.fail("nvmlDeviceGetPowerUsage", pynvml.NVML_ERROR_UNKNOWN, gpus=[0])
    first, second = nvml.sample()
    assert first.lost and first.lost_reason == "Unknown Error"
    assert first.uuid == "GPU-fa4e0000-0000-4000-8000-000000000000"
    assert not second.lost


def test_a_gpu_lost_from_the_start_has_no_identity() -> None:
    _, nvml = _host("xid", gpus=2, gpu=0, at=0)
    lost, ok = nvml.sample()
    assert lost == GpuSnapshot(index=0, timestamp=0.0, lost=True, lost_reason="GPU is lost")
    assert ok.name == "NVIDIA RTX A4000"


def test_sampling_is_cheap_one_init_static_facts_once() -> None:
    fake, nvml = _host(gpus=4)
    nvml.sample()
    first = sum(fake.calls.values())
    for _ in range(10):
        nvml.sample()
    per_tick = (sum(fake.calls.values()) - first) / 10
    assert fake.calls["nvmlInit"] == 1
    assert fake.calls["nvmlDeviceGetHandleByIndex"] == 4
    assert fake.calls["nvmlDeviceGetUUID"] == 4
    assert fake.calls["nvmlDeviceGetTemperatureThreshold"] == 4 * 3
    # memory, utilisation, power, limit, temperature, SM clock, clock events,
    # two violation counters, ECC, processes: 11 queries per GPU per tick.
    assert per_tick == 4 * 11


def test_close_shuts_down_and_a_later_sample_starts_again() -> None:
    fake, nvml = _host(gpus=1)
    with nvml:
        nvml.sample()
    assert fake.calls["nvmlShutdown"] == 1
    assert len(nvml.sample()) == 1
    assert fake.calls["nvmlInit"] == 2


def test_xid_is_delivered_once_with_its_gpu() -> None:
    fake, nvml = _host("xid", gpus=2, gpu=1, at=10)
    assert nvml.xid_events() == ()
    fake.now = 12
    assert nvml.xid_events(timeout_ms=100) == (
        XidEvent(12.0, 1, "GPU-fa4e0001-0000-4000-8000-000000000001", 79),
    )
    assert nvml.xid_events() == ()
    assert nvml.xid_unavailable is None
    snaps, xids = nvml.sample_gpus()
    assert [s.lost for s in snaps] == [False, True] and xids == ()


def test_a_driver_without_the_event_api_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="runner.nvml")
    fake = FakeNvml(Scenario("xid", gpus=2, at=0), events=False)
    nvml = Nvml(fake)
    for _ in range(5):
        assert nvml.xid_events() == ()
    assert nvml.xid_unavailable == (
        "the driver does not deliver XID events through NVML (GPU 0: Not Supported; "
        "GPU 1: Not Supported); read the kernel log instead"
    )
    infos = _nvml_records(caplog, logging.INFO)
    assert len(infos) == 1 and _nvml_records(caplog, logging.WARNING) == []
    assert fake.calls["nvmlDeviceRegisterEvents"] == 2
    assert fake.calls["nvmlEventSetWait_v2"] == 0
    assert len(nvml.sample()) == 2  # sampling does not care


def test_an_event_api_missing_from_the_driver_is_the_same_normal_case() -> None:
    fake = FakeNvml(Scenario("xid", gpus=1, at=0))
    fake.fail("nvmlEventSetCreate", pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    nvml = Nvml(fake)
    assert nvml.xid_events() == ()
    assert nvml.xid_unavailable is not None
    assert nvml.xid_unavailable.startswith("the driver has no NVML event API")


def test_event_wait_falls_back_to_the_old_name() -> None:
    fake, nvml = _host("xid", gpus=1, at=0)
    fake.remove("nvmlEventSetWait_v2")
    assert [e.xid for e in nvml.xid_events()] == [79]


def test_decode_clock_events() -> None:
    assert decode_clock_events(0) == ()
    assert decode_clock_events(0x1 | 0x20 | 0x40) == (
        "GpuIdle",
        "SwThermalSlowdown",
        "HwThermalSlowdown",
    )
    assert decode_clock_events(0x4 | 0x1000) == ("SwPowerCap", "0x1000")
    assert list(CLOCK_EVENT_REASONS.values()) == [1 << i for i in range(9)]


def test_the_fake_raises_the_real_pynvml_classes() -> None:
    fake = FakeNvml(Scenario(gpus=1))
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    fake.nvmlInit()
    fake.fail("nvmlDeviceGetPowerUsage", pynvml.NVML_ERROR_NOT_SUPPORTED)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetPowerUsage(fake.nvmlDeviceGetHandleByIndex(0))
    fake.remove("nvmlDeviceGetPowerUsage")
    assert not hasattr(fake, "nvmlDeviceGetPowerUsage")

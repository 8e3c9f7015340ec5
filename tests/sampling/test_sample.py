"""One Sample per tick: every part together, one JSON line, and one failure kept apart."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import runner.sampling
from runner.sampling import (
    GpuSnapshotLike,
    NoGpus,
    Sample,
    Sampler,
    XidEventLike,
)
from runner.sampling.host import HostSampler
from runner.sampling.nvml import GpuProcess, GpuSnapshot, Nvml, XidEvent
from runner.sampling.procs import ProcessSnapshot, ProcessTree
from runner.sampling.trace import FakeNvml, Scenario

WORKERS = r"""
import os, time
for _ in range(2):
    if os.fork() == 0:
        time.sleep(600)
        os._exit(0)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def job() -> Iterator[int]:
    """A real parent with two forked workers; its pid."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKERS, "--hf-token", "s3cret-value"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    yield proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()


def _xid_host() -> tuple[FakeNvml, Nvml]:
    fake = FakeNvml(Scenario("xid", gpus=2, at=30))
    return fake, Nvml(fake, clock=lambda: fake.now)


class BrokenGpus:
    """A GPU source whose driver call blows up."""

    def sample_gpus(self) -> tuple[Sequence[GpuSnapshotLike], Sequence[XidEventLike]]:
        raise RuntimeError("NVML exploded\nwith a second line")


def test_full_sample_round_trips_through_one_json_line(job: int, tmp_path: Path) -> None:
    fake, nvml = _xid_host()
    sampler = Sampler(
        gpu_source=nvml, root_pid=job, disks={"run": tmp_path, "dataset": tmp_path / "none"}
    )
    fake.now = 29
    sampler.sample()
    fake.now = 30  # XID 79 on GPU 0: a lost GPU and its event in the same tick
    sample = sampler.sample()

    line = sample.to_json()

    assert "\n" not in line
    assert Sample.from_json(line) == sample
    assert sample.errors == ()
    assert [g.lost for g in sample.gpus] == [True, False]  # type: ignore[attr-defined]
    assert [x.xid for x in sample.xids] == [79]  # type: ignore[attr-defined]
    assert sample.procs is not None and len(sample.procs.processes) == 3
    assert sample.host is not None and sample.host.disk("dataset") is not None
    assert "s3cret-value" not in line


def test_none_parts_round_trip() -> None:
    sample = Sample(time=1.5, host=None, procs=None, errors=("host: OSError: gone",))
    assert Sample.from_json(sample.to_json()) == sample
    assert json.loads(sample.to_json())["procs"] is None


def test_crafted_sample_round_trips_exactly() -> None:
    host = HostSampler().sample()
    gpu = GpuSnapshot(
        index=3,
        timestamp=1700000000.125,
        uuid="GPU-1",
        power_w=79.5,
        processes=(GpuProcess(pid=7, used_memory_bytes=None),),
    )
    proc = ProcessSnapshot(
        pid=7,
        ppid=1,
        name="python",
        state="disk-sleep",
        cmdline=None,
        create_time=1.0,
        age_s=0.1,
        rss_bytes=None,
        cpu_time_s=None,
        cpu_delta_s=None,
        cpu_percent=None,
    )
    sample = Sample(
        time=1700000000.0625,
        host=host,
        procs=ProcessTree(root_pid=7, root_alive=True, interval_s=1.0 / 3, processes=(proc,)),
        gpus=(gpu,),
        xids=(XidEvent(timestamp=1.0, gpu_index=None, uuid=None, xid=48),),
    )
    again = Sample.from_json(sample.to_json())
    assert again == sample
    assert isinstance(again.gpus[0], GpuSnapshot) and isinstance(again.procs, ProcessTree)


def test_failing_part_is_recorded_and_the_others_kept(job: int, tmp_path: Path) -> None:
    sample = Sampler(gpu_source=BrokenGpus(), root_pid=job, disks={"run": tmp_path}).sample()

    assert sample.errors == ("gpus: RuntimeError: NVML exploded with a second line",)
    assert sample.gpus == () and sample.xids == ()
    assert sample.procs is not None and sample.procs.root_alive
    assert sample.host is not None and sample.host.disk("run") is not None
    assert Sample.from_json(sample.to_json()) == sample


def test_no_gpus_and_no_process() -> None:
    sample = Sampler().sample()
    assert NoGpus().sample_gpus() == ((), ())
    assert sample.gpus == () and sample.xids == () and sample.procs is None
    assert sample.host is not None and sample.host.disks == ()
    assert sample.errors == ()


def test_gpu_less_host_through_nvml_without_driver() -> None:
    nvml = Nvml(FakeNvml(Scenario(gpus=0), driver=False))
    sample = Sampler(gpu_source=nvml).sample()
    assert sample.gpus == () and sample.errors == ()


def test_a_restart_supervises_the_new_process(job: int) -> None:
    sampler = Sampler()
    assert sampler.sample().procs is None
    sampler.set_root_pid(job)
    tree = sampler.sample().procs
    assert tree is not None and tree.root_pid == job and tree.root_alive


def test_clock_stamps_the_sample() -> None:
    assert Sampler(clock=lambda: 42.0).sample().time == 42.0


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("[1, 2]", ValueError),
        ("not json", ValueError),
        ('{"v": 99, "time": 1}', ValueError),
        ('{"v": 1, "time": 1}', KeyError),
    ],
)
def test_from_json_rejects_what_is_not_a_sample(line: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        Sample.from_json(line)


def test_public_names_are_pinned() -> None:
    assert runner.sampling.__all__ == [
        "CLOCK_EVENT_REASONS",
        "CMDLINE_MAX",
        "DEFAULT_WEIGHTS",
        "ENV_FAKE_NVML",
        "MOUNTS_PATH",
        "OVERLAY_FS_TYPES",
        "REDACTED",
        "SAMPLE_FORMAT",
        "SCENARIOS",
        "TRACE_FORMAT",
        "Candidate",
        "DiskSnapshot",
        "FakeNvml",
        "Filters",
        "GpuProcess",
        "GpuSnapshot",
        "GpuSnapshotLike",
        "GpuSource",
        "HostSampler",
        "HostSnapshot",
        "MountEntry",
        "NoGpus",
        "NotEnoughGpus",
        "Nvml",
        "ProcessSnapshot",
        "ProcessTree",
        "ProcessTreeSampler",
        "RecordResult",
        "RecordedTrace",
        "Sample",
        "Sampler",
        "Scenario",
        "Selection",
        "Timeline",
        "TraceError",
        "Weights",
        "XidEvent",
        "XidEventLike",
        "decode_clock_events",
        "fake_from_spec",
        "find_mount",
        "open_nvml",
        "parse_mounts",
        "process_owner",
        "rank",
        "record_trace",
        "redact_cmdline",
        "score",
    ]
    for name in runner.sampling.__all__:
        assert getattr(runner.sampling, name) is not None
    # The module stays reachable as an attribute, not hidden by its function select().
    assert isinstance(runner.sampling.select, types.ModuleType)

"""Sampling: see every GPU, process and disk, one frozen snapshot per tick.

    nvml     GpuSnapshot, XidEvent, Nvml: every GPU through one NVML wrapper
    trace    FakeNvml, Scenario, RecordedTrace: NVML without a GPU, for tests and demos
    select   which GPUs a job should use (score, filters, export by UUID)
    procs    ProcessTree, ProcessTreeSampler: the supervised process and its descendants
    host     HostSnapshot, HostSampler: RAM, swap, load, and the job's disks
    sample   Sample, Sampler: all of the above in one JSON line per tick

Nothing here knows about display or the CLI.

``runner.sampling.select`` stays the module: its function ``select`` is not
re-exported, since the package attribute would then hide the module
(``import runner.sampling.select as m`` would give the function). Import it
from its module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.sampling.host import (
        MOUNTS_PATH,
        OVERLAY_FS_TYPES,
        DiskSnapshot,
        HostSampler,
        HostSnapshot,
        MountEntry,
        find_mount,
        parse_mounts,
    )
    from runner.sampling.nvml import (
        CLOCK_EVENT_REASONS,
        ENV_FAKE_NVML,
        GpuProcess,
        GpuSnapshot,
        Nvml,
        XidEvent,
        decode_clock_events,
        open_nvml,
    )
    from runner.sampling.procs import (
        CMDLINE_MAX,
        REDACTED,
        ProcessSnapshot,
        ProcessTree,
        ProcessTreeSampler,
        redact_cmdline,
    )
    from runner.sampling.sample import (
        SAMPLE_FORMAT,
        GpuSnapshotLike,
        GpuSource,
        NoGpus,
        Sample,
        Sampler,
        XidEventLike,
    )
    from runner.sampling.select import (
        DEFAULT_WEIGHTS,
        Candidate,
        Filters,
        NotEnoughGpus,
        Selection,
        Weights,
        process_owner,
        rank,
        score,
    )
    from runner.sampling.trace import (
        SCENARIOS,
        TRACE_FORMAT,
        FakeNvml,
        RecordedTrace,
        RecordResult,
        Scenario,
        Timeline,
        TraceError,
        fake_from_spec,
        record_trace,
    )

# Each name is imported from its module on first use: `runner gpus` and the
# agent import only what they use (the eager imports cost ~100 ms of start-up).
_EXPORTS = {
    "CLOCK_EVENT_REASONS": "nvml",
    "CMDLINE_MAX": "procs",
    "Candidate": "select",
    "DEFAULT_WEIGHTS": "select",
    "DiskSnapshot": "host",
    "ENV_FAKE_NVML": "nvml",
    "FakeNvml": "trace",
    "Filters": "select",
    "GpuProcess": "nvml",
    "GpuSnapshot": "nvml",
    "GpuSnapshotLike": "sample",
    "GpuSource": "sample",
    "HostSampler": "host",
    "HostSnapshot": "host",
    "MOUNTS_PATH": "host",
    "MountEntry": "host",
    "NoGpus": "sample",
    "NotEnoughGpus": "select",
    "Nvml": "nvml",
    "OVERLAY_FS_TYPES": "host",
    "ProcessSnapshot": "procs",
    "ProcessTree": "procs",
    "ProcessTreeSampler": "procs",
    "REDACTED": "procs",
    "RecordResult": "trace",
    "RecordedTrace": "trace",
    "SAMPLE_FORMAT": "sample",
    "SCENARIOS": "trace",
    "Sample": "sample",
    "Sampler": "sample",
    "Scenario": "trace",
    "Selection": "select",
    "TRACE_FORMAT": "trace",
    "Timeline": "trace",
    "TraceError": "trace",
    "Weights": "select",
    "XidEvent": "nvml",
    "XidEventLike": "sample",
    "decode_clock_events": "nvml",
    "fake_from_spec": "trace",
    "find_mount": "host",
    "open_nvml": "nvml",
    "parse_mounts": "host",
    "process_owner": "select",
    "rank": "select",
    "record_trace": "trace",
    "redact_cmdline": "procs",
    "score": "select",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runner.sampling' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"runner.sampling.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
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

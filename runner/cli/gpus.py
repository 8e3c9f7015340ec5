"""``runner gpus``: every GPU NVML sees, and which to use, exported by UUID."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from runner.cli._app import app as display

if TYPE_CHECKING:
    from runner.sampling.nvml import GpuSnapshot
    from runner.sampling.select import Candidate, Selection

_EPILOG = (
    "Testing aid: RUNNER_FAKE_NVML=scenario:NAME[:gpus=N,...] (healthy, power_collapse, "
    "thermal_throttle, xid, util_bounce), trace:FILE (a recording) or no-driver replaces the "
    "NVIDIA driver with a scripted host; never set by runner itself."
)

app = typer.Typer(no_args_is_help=False)


@app.callback(invoke_without_command=True, epilog=_EPILOG)
def gpus(
    ctx: typer.Context,
    pick: int | None = typer.Option(
        None, "--pick", min=1, metavar="N", help="Pick N GPUs and print the export lines."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Print only the UUIDs to export (implies --pick 1)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Every snapshot and the selection as JSON."),
    weights: str = typer.Option(
        "0.7,0.3", "--weights", metavar="MEM,UTIL", help="Score = MEM x memory % + UTIL x util %."
    ),
    min_free: float | None = typer.Option(
        None, "--min-free", metavar="GB", help="Only GPUs with at least this much free (GiB)."
    ),
    max_util: float | None = typer.Option(
        None, "--max-util", metavar="PCT", help="Only GPUs at most this busy (percent)."
    ),
    exclude_busy: bool = typer.Option(
        False, "--exclude-busy", help="Skip GPUs running another user's compute process."
    ),
) -> None:
    """Every GPU with its load; --pick N chooses the N freest that pass the filters.

    Score = 0.7 x memory % + 0.3 x utilisation % (lower is freer; ties go to
    the higher index). The choice is exported by UUID with
    CUDA_DEVICE_ORDER=PCI_BUS_ID, so CUDA's own numbering cannot move the job.
    With --pick the table goes to stderr and stdout holds only the export
    lines: eval "$(runner gpus --pick 1)".
    """
    if ctx.invoked_subcommand is not None:
        return
    from runner.errors import DeviceError, UsageError
    from runner.sampling.nvml import open_nvml
    from runner.sampling.select import Filters, Weights, rank, select

    if quiet and as_json:
        raise UsageError("--quiet and --json: choose one")
    scoring = Weights.parse(weights)
    filters = Filters(min_free_gib=min_free, max_util_percent=max_util, exclude_busy=exclude_busy)
    count = pick if pick is not None else (1 if quiet else None)
    with _nvml_warnings(), open_nvml() as nvml:
        snaps = nvml.sample()
        reason, driver = nvml.reason, nvml.driver_version
    if not snaps and count is not None:
        raise DeviceError(f"no NVIDIA GPUs to pick from: {reason}")
    selection = None
    if count is not None:
        selection = select(snaps, count, weights=scoring, filters=filters)
        ranked = selection.ranked
    else:
        ranked = rank(snaps, weights=scoring, filters=filters)
    if as_json:
        data = {
            "driver_version": driver,
            "reason": reason,
            "gpus": [s.to_dict() for s in snaps],
            "weights": {"memory": scoring.memory, "utilization": scoring.utilization},
            "filters": filters.to_dict(),
            "ranked": [c.to_dict() for c in ranked],
            "picked": None if selection is None else [g.uuid for g in selection.chosen],
            "env": None if selection is None else selection.env,
        }
        display.raw(json.dumps(data, indent=2))
    elif quiet and selection is not None:
        display.raw(selection.visible_devices)
    elif not snaps:
        display.raw(f"no NVIDIA GPUs: {reason}")
    elif selection is None:
        display.raw(_table(ranked, None))
        display.raw(f"score = {scoring} (lower is freer)")
    else:
        display.info(_table(ranked, selection))
        display.info(f"score = {scoring} (lower is freer)")
        for key, value in selection.env.items():
            display.raw(f"export {key}={value}")


@app.command("record")
def record(
    file: Path = typer.Argument(..., metavar="FILE", help="Trace file to write (JSON lines)."),
    interval: float = typer.Option(
        1.0, "--interval", min=0.05, metavar="S", help="Seconds between ticks."
    ),
    duration: float | None = typer.Option(
        None, "--duration", min=0, metavar="S", help="Seconds to record [default: until Ctrl-C]."
    ),
) -> None:
    """Record every GPU's snapshots to FILE, for replay with RUNNER_FAKE_NVML=trace:FILE."""
    from runner.errors import DeviceError
    from runner.sampling.nvml import open_nvml
    from runner.sampling.trace import record_trace

    with _nvml_warnings(), open_nvml() as nvml:
        if not nvml.device_count():
            raise DeviceError(f"no NVIDIA GPUs to record: {nvml.reason}")
        until = f"for {duration:g} s" if duration is not None else "until Ctrl-C"
        display.info(
            f"recording {nvml.device_count()} GPU(s) every {interval:g} s {until} to {file}"
        )
        result = record_trace(nvml, file, interval_s=interval, duration_s=duration)
    xids = f", {result.xids} XID event(s)" if result.xids else ""
    display.success(f"recorded {result.ticks} tick(s) of {result.gpus} GPU(s){xids} to {file}")


class _Forward(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        display.warn(record.getMessage())


@contextlib.contextmanager
def _nvml_warnings() -> Iterator[None]:
    """Show the NVML layer's once-only warnings (driver/bindings mismatch) as warning lines."""
    logger = logging.getLogger("runner.nvml")
    handler = _Forward(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _table(ranked: Sequence[Candidate], selection: Selection | None) -> str:
    """Plain aligned columns (no trailing spaces, so scripts and tests see stable text)."""
    chosen = set() if selection is None else {g.index for g in selection.chosen}
    best = next((c.snapshot.index for c in ranked if c.eligible), None)
    rows = [[name for name, _ in _COLUMNS]]
    for c in sorted(ranked, key=lambda c: c.snapshot.index):
        s = c.snapshot
        if c.excluded:
            note = "; ".join(c.excluded)
        elif selection is not None:
            note = "picked" if s.index in chosen else ""
        else:
            note = "best" if s.index == best else ""
        rows.append(
            [
                str(s.index),
                s.name or _NA,
                _memory(s),
                _na(s.utilization_gpu_percent, "{}%"),
                _power(s),
                _temperature(s),
                _NA if s.clock_events is None else ",".join(s.clock_events) or "-",
                _processes(s),
                _na(c.score, "{:.1f}"),
                note,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, (_, right) in zip(row, widths, _COLUMNS, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


_NA = "N/A"
# (header, right-justified)
_COLUMNS = (
    ("gpu", True),
    ("name", False),
    ("memory", True),
    ("util", True),
    ("power", True),
    ("temp (slowdown)", True),
    ("throttle", False),
    ("processes", False),
    ("score", True),
    ("", False),
)


def _na(value: object, fmt: str) -> str:
    return _NA if value is None else fmt.format(value)


def _mib(n: int) -> int:
    return n >> 20


def _memory(s: GpuSnapshot) -> str:
    if s.memory_used_bytes is None or s.memory_total_bytes is None:
        return _NA
    return f"{_mib(s.memory_used_bytes)} / {_mib(s.memory_total_bytes)} MiB"


def _power(s: GpuSnapshot) -> str:
    if s.power_w is None:
        return _NA
    limit = "" if s.power_limit_w is None else f" / {s.power_limit_w:.0f}"
    return f"{s.power_w:.0f}{limit} W"


def _temperature(s: GpuSnapshot) -> str:
    if s.temperature_c is None:
        return _NA
    slowdown = "" if s.temperature_slowdown_c is None else f" ({s.temperature_slowdown_c}C)"
    return f"{s.temperature_c}C{slowdown}"


def _processes(s: GpuSnapshot) -> str:
    if s.processes is None:
        return _NA
    parts = [
        f"{p.pid}" if p.used_memory_bytes is None else f"{p.pid}:{_mib(p.used_memory_bytes)}MiB"
        for p in s.processes
    ]
    return " ".join(parts) or "-"

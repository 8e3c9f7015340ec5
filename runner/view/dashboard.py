"""``runner watch``'s picture of a run: a model built from what the run folder says, and
its rich renderable.

:func:`build` is pure: it takes a :class:`runner.view.source.Snapshot` (status, samples,
events, push state, launch record) and the time, and returns a :class:`Dashboard`; no
file, clock or terminal is touched, so every line a user sees can be tested from data.
:func:`render` lays a dashboard out for an 80x24 terminal (or larger): the header (run,
state, liveness), progress, checkpoints / push / cost / disk, one row per GPU with a
power sparkline, active warnings, and the newest events with their evidence.

Liveness, in the order it is judged:

- ``ended``: the agent wrote a final state (finished, failed, stopped);
- ``reconnecting``: the folder could not be read (SSH failed) since a time;
- ``unreachable``: the agent's own heartbeat (``status.agent_time``) has not moved for
  ``quiet_after_s``: the host or the agent is gone or frozen;
- ``quiet``: the agent is alive but the training process made no step for a while;
- ``live``: everything moves; ``waiting``: no status yet.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rich.containers import Renderables
from rich.table import Table
from rich.text import Text

from runner.rundir import Event
from runner.sampling.nvml import decode_clock_events
from runner.view.source import Snapshot

__all__ = ["Dashboard", "Disk", "GpuRow", "build", "quiet_after", "render", "sparkline"]

Liveness = Literal["live", "quiet", "unreachable", "reconnecting", "ended", "waiting"]
ENDED = ("finished", "failed", "stopped")
#: Lifecycle kinds: what happened to the run, not a problem that can still be active.
_LIFECYCLE = frozenset({"started", "exited", "restart", "stack_dump", "finished", "stopped"})
_THROTTLE_SHORT = {
    "GpuIdle": "idle",
    "ApplicationsClocksSetting": "app-clk",
    "SwPowerCap": "pwr-cap",
    "HwSlowdown": "hw-slow",
    "SyncBoost": "sync",
    "SwThermalSlowdown": "sw-therm",
    "HwThermalSlowdown": "hw-therm",
    "HwPowerBrakeSlowdown": "pwr-brake",
    "DisplayClockSetting": "disp-clk",
}
_DUMPS = frozenset({"stack_dump", "finished", "stopped"})
#: Samples kept for a sparkline: more than 80 columns can show.
_HISTORY = 64
_BARS = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class GpuRow:
    """One GPU as last sampled, with its recent power and utilisation."""

    index: int
    name: str | None
    lost: bool
    power_w: float | None
    power_limit_w: float | None
    temperature_c: float | None
    slowdown_c: float | None
    util_percent: float | None
    memory_used: int | None
    memory_total: int | None
    throttle: tuple[str, ...] | None
    """Decoded clock-event reasons (``GpuIdle``, ``SwPowerCap``...), None when unknown."""
    power_history: tuple[float | None, ...] = ()
    util_history: tuple[float | None, ...] = ()


@dataclass(frozen=True)
class Disk:
    """The disk the run writes to (checkpoints first, else the run folder)."""

    roles: tuple[str, ...]
    free_bytes: int
    total_bytes: int | None
    full_in_s: float | None
    """Seconds until free space reaches 0 at the recent rate; None when it is not shrinking."""


@dataclass(frozen=True)
class Dashboard:
    """Everything ``runner watch`` shows, as values (see :func:`build`)."""

    label: str
    now: float
    liveness: Liveness
    liveness_line: str
    """One line: ``finished (exit 0)``, ``host or agent unreachable since 12:03:04``..."""
    state: str | None = None
    attempt: int | None = None
    restarts: int | None = None
    exit_code: int | None = None
    summary: str = ""
    step: int | None = None
    total_steps: int | None = None
    steps_per_s: float | None = None
    samples_per_s: float | None = None
    data_wait: float | None = None
    eta_s: float | None = None
    loss: float | None = None
    checkpoint_step: int | None = None
    pushed_step: int | None = None
    pushed_time: float | None = None
    cost: float | None = None
    dph: float | None = None
    disk: Disk | None = None
    gpus: tuple[GpuRow, ...] = ()
    warnings: tuple[Event, ...] = ()
    events: tuple[Event, ...] = ()
    remote: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.liveness == "ended"


def quiet_after(launch: Mapping[str, Any] | None) -> float:
    """How long the agent's heartbeat may stand still before the host counts as
    unreachable: 5 agent ticks (``watchdog.sample_interval_s``, default 1 s), at least 10 s."""
    spec = (launch or {}).get("spec") or {}
    tick = (spec.get("watchdog") or {}).get("sample_interval_s") if isinstance(spec, dict) else None
    return max(10.0, 5.0 * float(tick)) if isinstance(tick, (int, float)) else 10.0


def build(
    snap: Snapshot,
    *,
    label: str,
    now: float,
    quiet_after_s: float | None = None,
    remote: bool = False,
    events_shown: int = 20,
) -> Dashboard:
    """The dashboard for ``snap`` at ``now`` (this machine's clock)."""
    status = snap.status or {}
    launch = snap.launch or {}
    quiet_s = quiet_after(launch) if quiet_after_s is None else quiet_after_s
    state = _str(status.get("state"))
    metrics = _metrics(status, snap.samples)
    step = _int(status.get("step"))
    total = _int(metrics.get("total_steps"))
    rate = _float(status.get("steps_per_s"))
    liveness, line = _liveness(snap, status, state, now, quiet_s)
    eta = None
    if liveness != "ended" and step is not None and total and rate and rate > 0:
        eta = max(0.0, (total - step) / rate)
    pushed_step, pushed_time = _pushed(snap.push)
    dph = _float(launch.get("dph_total"))
    cost = None
    created = _float(launch.get("created")) or _float(status.get("started"))
    if dph is not None and created is not None:
        end = _float(status.get("agent_time")) if liveness == "ended" else now
        cost = max(0.0, (end or now) - created) / 3600.0 * dph
    events = snap.events
    return Dashboard(
        label=label,
        now=now,
        liveness=liveness,
        liveness_line=line,
        state=state,
        attempt=_int(status.get("attempt")),
        restarts=_int(status.get("restarts")),
        exit_code=_int(status.get("exit_code")),
        summary=_str(status.get("summary")) or "",
        step=step,
        total_steps=total,
        steps_per_s=rate,
        samples_per_s=_float(status.get("samples_per_s")),
        data_wait=_float(status.get("data_wait")),
        eta_s=eta,
        loss=_float(metrics.get("loss")),
        checkpoint_step=_int(status.get("checkpoint_step")),
        pushed_step=pushed_step,
        pushed_time=pushed_time,
        cost=cost,
        dph=dph,
        disk=_disk(status, snap.samples),
        gpus=_gpus(status, snap.samples),
        warnings=_active_warnings(events, liveness),
        events=tuple(events[-events_shown:]) if events_shown > 0 else (),
        remote=remote,
    )


def _metrics(status: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The last step's metrics; an ended attempt's status has none, so the newest sample's."""
    for source in (status, *reversed(samples)):
        metrics = source.get("metrics")
        if isinstance(metrics, dict) and metrics:
            return metrics
    return {}


def _liveness(
    snap: Snapshot, status: Mapping[str, Any], state: str | None, now: float, quiet_s: float
) -> tuple[Liveness, str]:
    if state in ENDED:
        code = _int(status.get("exit_code"))
        return "ended", f"{state} (exit {0 if code is None and state == 'finished' else code})"
    if snap.error is not None:
        since = _clock(snap.error_since or now)
        return "reconnecting", f"reconnecting (since {since}): {snap.error}"
    if not status:
        return "waiting", "waiting for the agent's first status"
    if snap.heartbeat_at is not None and now - snap.heartbeat_at > quiet_s:
        return "unreachable", (
            f"host or agent unreachable since {_clock(snap.heartbeat_at)} "
            f"(no heartbeat for {_duration(now - snap.heartbeat_at)})"
        )
    last_step = _float(status.get("last_step_time"))
    rate = _float(status.get("steps_per_s"))
    if state == "running" and last_step is not None:
        # The agent's status carries its own clock; judge the step's age on it.
        age = (_float(status.get("agent_time")) or now) - last_step
        usual = 1.0 / rate if rate else 0.0
        if age > max(10.0, 10.0 * usual):
            return "quiet", f"agent alive; no step for {_duration(age)}"
    return "live", f"{state or 'running'}"


def _active_warnings(events: Sequence[Event], liveness: Liveness) -> tuple[Event, ...]:
    """Warnings and critical events of the current attempt that are not lifecycle steps
    (an ended run has none left active)."""
    if liveness == "ended" or not events:
        return ()
    attempt = events[-1].attempt
    found = [
        e
        for e in events
        if e.attempt == attempt and e.severity != "info" and e.kind not in _LIFECYCLE
    ]
    latest: dict[str, Event] = {e.kind: e for e in found}  # one line per kind, the newest
    return tuple(sorted(latest.values(), key=lambda e: e.time))[-3:]


def _pushed(push: Mapping[str, Any] | None) -> tuple[int | None, float | None]:
    pushed = (push or {}).get("pushed")
    if not isinstance(pushed, dict) or not pushed:
        return None, None
    steps = [k for k in pushed if str(k).isdigit()]
    if not steps:
        return None, None
    newest = max(steps, key=int)
    record = pushed[newest]
    when = _float(record.get("time")) if isinstance(record, dict) else None
    return int(newest), when


def _disk(status: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> Disk | None:
    def pick(host: Any) -> Mapping[str, Any] | None:
        disks = (host or {}).get("disks") if isinstance(host, dict) else None
        if not isinstance(disks, list):
            return None
        for role in ("checkpoints", "checkpoint", "run"):
            for d in disks:
                if isinstance(d, dict) and role in (d.get("roles") or ()):
                    return d
        return None

    now_disk = pick(status.get("host")) or (pick(samples[-1].get("host")) if samples else None)
    if now_disk is None or _int(now_disk.get("free_bytes")) is None:
        return None
    roles = tuple(now_disk.get("roles") or ())
    points = []
    for s in samples:
        d = pick(s.get("host"))
        if d is not None and tuple(d.get("roles") or ()) == roles:
            free = _float(d.get("free_bytes"))
            if free is not None:
                points.append((float(s["time"]), free))
    full_in = None
    if len(points) >= 2 and points[-1][0] - points[0][0] >= 5.0:
        (t0, f0), (t1, f1) = points[0], points[-1]
        rate = (f0 - f1) / (t1 - t0)
        if rate > 0:
            full_in = f1 / rate
    return Disk(
        roles=roles,
        free_bytes=int(now_disk["free_bytes"]),
        total_bytes=_int(now_disk.get("total_bytes")),
        full_in_s=full_in,
    )


def _gpus(status: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]) -> tuple[GpuRow, ...]:
    current = status.get("gpus") or (samples[-1].get("gpus") if samples else None) or []
    history: dict[int, tuple[list[float | None], list[float | None]]] = {}
    for s in samples[-_HISTORY:]:
        for g in s.get("gpus") or ():
            if isinstance(g, dict) and isinstance(g.get("index"), int):
                power, util = history.setdefault(g["index"], ([], []))
                power.append(_float(g.get("power_w")))
                util.append(_float(g.get("utilization_gpu_percent")))
    rows = []
    for g in current:
        if not isinstance(g, dict) or not isinstance(g.get("index"), int):
            continue
        mask = _int(g.get("clock_event_mask"))
        power, util = history.get(g["index"], ([], []))
        rows.append(
            GpuRow(
                index=g["index"],
                name=_str(g.get("name")),
                lost=bool(g.get("lost")),
                power_w=_float(g.get("power_w")),
                power_limit_w=_float(g.get("power_limit_w")),
                temperature_c=_float(g.get("temperature_c")),
                slowdown_c=_float(g.get("temperature_slowdown_c")),
                util_percent=_float(g.get("utilization_gpu_percent")),
                memory_used=_int(g.get("memory_used_bytes")),
                memory_total=_int(g.get("memory_total_bytes")),
                throttle=None if mask is None else decode_clock_events(mask),
                power_history=tuple(power),
                util_history=tuple(util),
            )
        )
    return tuple(rows)


# --------------------------------------------------------------------------- rendering


def sparkline(values: Sequence[float | None], top: float | None, width: int) -> str:
    """The last ``width`` values as block characters scaled to ``top`` (or their maximum);
    a missing value is a space."""
    shown = list(values)[-width:]
    known = [v for v in shown if v is not None]
    scale = top if top and top > 0 else (max(known) if known else 0.0)
    out = []
    for v in shown:
        if v is None:
            out.append(" ")
        elif scale <= 0:
            out.append(_BARS[0])
        else:
            out.append(_BARS[min(len(_BARS) - 1, max(0, round(v / scale * (len(_BARS) - 1))))])
    return "".join(out)


def render(
    board: Dashboard, *, width: int = 80, height: int = 24, plain: bool = False
) -> Renderables:
    """The dashboard as rich renderables, every line at most ``width`` cells; events fill
    what is left of ``height``. ``plain`` drops every style (bold too: ``NO_COLOR``)."""
    lines: list[Any] = []
    lines.extend(_header(board))
    lines.append(_progress(board))
    lines.append(_resources(board))
    if board.gpus:
        lines.append(_gpu_table(board, width))
    folded = sum(len(t.plain) // max(1, width) for t in lines if isinstance(t, Text))
    used = len(lines) + folded + (len(board.gpus) if board.gpus else 0)
    for event in board.warnings:
        lines.append(_line(f"! {_clock(event.time)} {event.kind}: {event.message}", _style(event)))
        used += 1
    room = max(2, height - used - 2)
    if board.events:
        lines.append(Text("events", style="bold"))
        shown = _event_lines(board, room - 1)
        lines.extend(shown)
    if plain:
        for line in lines:
            _unstyle(line)
    # rich's Group lives in rich.console; Renderables is the same without measuring
    return Renderables(lines)


def _unstyle(item: Any) -> None:
    if isinstance(item, Text):
        item.style = ""
        item.spans = []
    elif isinstance(item, Table):
        item.header_style = ""
        for column in item.columns:
            column.header_style = ""
            for cell in column._cells:
                _unstyle(cell)


def _header(board: Dashboard) -> list[Text]:
    """The run and its state; a second line, on its own so 80 columns never cut it, when
    the picture is not simply live or ended (unreachable, reconnecting, quiet, waiting)."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(board.label, style="bold")
    if board.attempt is not None:
        text.append(f"  attempt {board.attempt}")
    if board.restarts:
        text.append(f", {board.restarts} restart{'s' if board.restarts != 1 else ''}")
    good = board.liveness != "ended" or (board.exit_code in (0, None) and board.state == "finished")
    text.append("  ")
    if board.liveness in ("live", "ended"):
        text.append(board.liveness_line, style="green" if good else "bold red")
        return [text]
    if board.state:
        text.append(board.state)
    style = "bold red" if board.liveness == "unreachable" else "yellow"
    return [text, Text(board.liveness_line, style=style, no_wrap=True, overflow="fold")]


def _progress(board: Dashboard) -> Text:
    parts = []
    if board.step is not None:
        total = f"/{board.total_steps}" if board.total_steps else ""
        parts.append(f"step {board.step}{total}")
    else:
        parts.append("step -")
    if board.steps_per_s is not None:
        parts.append(f"{board.steps_per_s:.2f} steps/s")
    if board.eta_s is not None:
        parts.append(f"ETA {_duration(board.eta_s)}")
    if board.samples_per_s is not None:
        parts.append(f"{_si(board.samples_per_s)} samples/s")
    if board.data_wait is not None:
        parts.append(f"data wait {board.data_wait * 100:.0f}%")
    if board.loss is not None:
        parts.append(f"loss {board.loss:.4g}")
    return _line("  ".join(parts))


def _resources(board: Dashboard) -> Text:
    parts = []
    parts.append(f"ckpt {board.checkpoint_step if board.checkpoint_step is not None else '-'}")
    if board.pushed_step is not None:
        ago = f" ({_duration(board.now - board.pushed_time)} ago)" if board.pushed_time else ""
        parts.append(f"pushed {board.pushed_step}{ago}")
    else:
        parts.append("pushed -")
    if board.disk is not None:
        disk = f"disk {_bytes(board.disk.free_bytes)} free"
        if board.disk.full_in_s is not None:
            disk += f", full in {_duration(board.disk.full_in_s)}"
        parts.append(disk)
    if board.cost is not None:
        parts.append(f"cost ${board.cost:.2f}")
    return _line("  ".join(parts))


def _gpu_table(board: Dashboard, width: int) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1), expand=False)
    for name, justify in (
        ("GPU", "right"),
        ("power", "right"),
        ("temp", "right"),
        ("util", "right"),
        ("memory", "right"),
        ("throttle", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    spark = max(4, width - 62)
    table.add_column("power history", no_wrap=True, max_width=spark, overflow="crop")
    for g in board.gpus:
        if g.lost:
            table.add_row(str(g.index), Text("lost", style="bold red"), "", "", "", "", "")
            continue
        power = f"{_num(g.power_w)}/{_num(g.power_limit_w)}W"
        temp = Text(f"{_num(g.temperature_c)}/{_num(g.slowdown_c)}C")
        if g.temperature_c is not None and g.slowdown_c and g.temperature_c >= g.slowdown_c - 5:
            temp.stylize("bold red")
        util = "-" if g.util_percent is None else f"{g.util_percent:.0f}%"
        memory = f"{_gib(g.memory_used)}/{_gib(g.memory_total)}G"
        if g.throttle is None:
            throttle = Text("-")
        else:
            names = [_THROTTLE_SHORT.get(n, n) for n in g.throttle]
            bad = [n for n in g.throttle if n not in ("GpuIdle",)]
            throttle = Text(",".join(names) or "none", style="yellow" if bad else "")
        history = sparkline(g.power_history, g.power_limit_w, spark)
        table.add_row(str(g.index), power, temp, util, memory, throttle, history)
    return table


def _event_lines(board: Dashboard, room: int) -> list[Text]:
    """The newest events that fit ``room`` lines, each with its evidence line when it has
    one worth showing (where its stack dump is, the step it happened at)."""
    out: list[list[Text]] = []
    for event in reversed(board.events):
        block = [
            _line(
                f"{_clock(event.time)} {event.kind:<10} {event.message}",
                _style(event),
            )
        ]
        evidence = _evidence(event) if event.severity != "info" or event.kind in _DUMPS else ""
        if evidence:
            block.append(_line(f"         {evidence}", "dim"))
        if sum(len(b) for b in out) + len(block) > room:
            if not out and room > 0:
                out.append(block[:room])
            break
        out.append(block)
    return [line for block in reversed(out) for line in block]


def _evidence(event: Event) -> str:
    ev = event.evidence
    if event.kind == "stack_dump":
        files = ev.get("files") or []
        where = files[0] if files else ev.get("dir")
        return f"stack dump: {where}" if where else ""
    if event.kind == "finished" and ev.get("stacks"):
        return f"stacks: {', '.join(str(s) for s in ev['stacks'])}"
    first = ("step", "checkpoint_step", "exit_code", "signal", "after", "gpu", "index")
    keys = [k for k in first if k in ev] + sorted(k for k in ev if k not in first)
    bits = []
    for key in keys:
        value = ev[key]
        if isinstance(value, float):
            value = f"{value:.4g}"
        scalar = isinstance(value, (int, str)) and not isinstance(value, bool)
        if scalar and value != "" and len(str(value)) <= 24:
            bits.append(f"{key}={value}")
    return " ".join(bits[:4])


def _style(event: Event) -> str:
    return {"critical": "bold red", "warning": "yellow"}.get(event.severity, "")


def _line(text: str, style: str = "") -> Text:
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


# --------------------------------------------------------------------------- small values


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _si(value: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.0f}"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None

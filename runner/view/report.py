"""``runner report``: a run's story afterwards, as a PNG timeline and a markdown summary.

Everything comes from the run folder's files (``samples.jsonl``, ``events.jsonl``,
``status.json``, ``launch.json``, ``push-state.json``), read as text, so a run on a
rented host is reported from the same bytes as a local one.

It is built in two steps so each can be checked on its own: :func:`build_timeline`
turns the files into a :class:`Timeline` (plain data: the panels' series, on one time
axis, and the event markers with their label rows), and :func:`draw` turns a timeline
into a :class:`matplotlib.figure.Figure` (Agg, never pyplot: no global state, no
display). :func:`summary` writes the markdown.

The time axis is seconds, minutes or hours since the run started (by the run's length),
or UTC wall-clock (``clock=True``); :meth:`Timeline.x` converts a unix time to it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import RunnerError
from runner.rundir import (
    EVENTS_FILE,
    LAUNCH_FILE,
    PUSH_STATE_FILE,
    SAMPLES_FILE,
    STATUS_FILE,
    Event,
    parse_events,
    parse_samples,
)
from runner.view.source import LocalSource, RunSource

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "MD_NAME",
    "PNG_NAME",
    "Label",
    "Marker",
    "Panel",
    "RunFiles",
    "Series",
    "Timeline",
    "build_timeline",
    "draw",
    "read_run_files",
    "summary",
    "write_report",
]

PNG_NAME = "report.png"
MD_NAME = "report.md"

#: Colours by severity: what the agent thought of the event.
SEVERITY_COLOURS = {"info": "#4a7fb5", "warning": "#e08a00", "critical": "#c62828"}
FINISHED_COLOUR = "#2e7d32"
#: At most this many rows of event labels; an event that finds no free row is folded into
#: the nearest label before it ("restart +2"), its line still drawn.
MAX_LABEL_ROWS = 5
_FIG_WIDTH_IN = 12.0
_LABEL_FONT_PT = 7.0
# Room a label takes on the time axis, as a fraction of the axes' width: a character
# of a 7 pt sans font is ~0.6 em, the axes ~80 % of the figure's width.
_CHAR_FRACTION = 0.6 * _LABEL_FONT_PT / (72.0 * _FIG_WIDTH_IN * 0.8)
_GAP_FRACTION = 0.004


# --------------------------------------------------------------------------- the run's files


@dataclass(frozen=True)
class RunFiles:
    """The parsed files of one run folder (missing or unreadable ones are empty)."""

    label: str
    samples: tuple[Mapping[str, Any], ...]
    events: tuple[Event, ...]
    status: Mapping[str, Any] = field(default_factory=dict)
    launch: Mapping[str, Any] = field(default_factory=dict)
    push: Mapping[str, Any] = field(default_factory=dict)
    where: str = ""
    """Where the folder is (a path on the machine that holds it)."""
    host: str = ""
    """The machine that holds it, from the registry (``ssh host:port``, a container), or ""."""

    @classmethod
    def from_texts(
        cls, label: str, texts: Mapping[str, str | None], *, where: str = "", host: str = ""
    ) -> RunFiles:
        """From the files' texts, by name (``None``: the file is not there)."""
        events = sorted(parse_events(texts.get(EVENTS_FILE) or ""), key=lambda e: e.time)
        return cls(
            label=label,
            samples=tuple(parse_samples(texts.get(SAMPLES_FILE) or "")),
            events=tuple(events),
            status=_json_object(texts.get(STATUS_FILE)),
            launch=_json_object(texts.get(LAUNCH_FILE)),
            push=_json_object(texts.get(PUSH_STATE_FILE)),
            where=where,
            host=host,
        )


_FILES = (SAMPLES_FILE, EVENTS_FILE, STATUS_FILE, LAUNCH_FILE, PUSH_STATE_FILE)


def read_run_files(source: RunSource | Path) -> RunFiles:
    """Read a run folder (a :class:`RunSource`, or a local path) in one fetch.

    Raises :class:`RunnerError` when it has neither samples nor events: nothing to report.
    """
    if isinstance(source, Path):
        source = LocalSource(source)
    fetched = source.fetch(_FILES).texts
    files = RunFiles.from_texts(source.label, fetched, where=source.where, host=_host(source))
    if not files.samples and not files.events:
        raise RunnerError(
            f"{files.label}: nothing to report: no {SAMPLES_FILE} records and no events "
            f"in {files.where or files.label} (has the agent started?)"
        )
    return files


def _host(source: RunSource) -> str:
    record = source.record
    if record is None:
        return ""
    if record.ssh_host:
        return f"{record.ssh_host}:{record.ssh_port} (ssh)"
    return f"container {record.container}" if record.container else ""


def _json_object(text: str | None) -> Mapping[str, Any]:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------- the data model


@dataclass(frozen=True)
class Series:
    """One line: ``x`` on the timeline's axis, ``y`` in the panel's unit.

    ``ref`` marks a reference (a power limit, a slowdown threshold), drawn dashed.
    """

    name: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    ref: bool = False
    colour: int = 0
    """Index in the colour cycle (the GPU's), so a GPU's limit matches its line."""


@dataclass(frozen=True)
class Panel:
    """One stacked axes: ``key`` names it (``power``, ``temperature``, ``utilization``,
    ``steps_per_s``, ``loss``, ``disk_free``); ``ylabel`` is what the axis says."""

    key: str
    ylabel: str
    series: tuple[Series, ...]


@dataclass(frozen=True)
class Marker:
    """An event, where it happened: ``x`` on the axis, ``time`` as written (unix)."""

    x: float
    time: float
    kind: str
    severity: str
    message: str
    attempt: int
    colour: str


@dataclass(frozen=True)
class Label:
    """A label in the events strip: at ``x``, in ``row`` (0 is the top); ``markers``
    are the indices of the markers it stands for (more than one when some were folded)."""

    x: float
    row: int
    text: str
    colour: str
    markers: tuple[int, ...]
    right: bool = False
    """The label ends at ``x`` (near the right edge) instead of starting there."""


@dataclass(frozen=True)
class Timeline:
    """What the figure shows, as data."""

    title: str
    origin: float
    """Unix time at the axis's 0: the run's start, or 0 for wall-clock."""
    start: float
    """When the run started (unix time)."""
    end: float
    """When it ended, or was last heard of (unix time)."""
    scale: float
    """Seconds per axis unit (1, 60, 3600; 86400 for wall-clock days)."""
    unit: str
    """``s``, ``min``, ``h`` since the start, or ``UTC``."""
    panels: tuple[Panel, ...]
    markers: tuple[Marker, ...]
    labels: tuple[Label, ...]
    rows: int
    """Rows of labels used in the events strip."""

    def x(self, t: float) -> float:
        """A unix time on this timeline's axis."""
        return (t - self.origin) / self.scale

    @property
    def xlabel(self) -> str:
        if self.unit == "UTC":
            return "time (UTC)"
        names = {"s": "seconds", "min": "minutes", "h": "hours"}
        return f"{names[self.unit]} since start"

    def panel(self, key: str) -> Panel | None:
        return next((p for p in self.panels if p.key == key), None)


def _axis(start: float, end: float, clock: bool) -> tuple[float, float, str]:
    """(origin, seconds per unit, unit) for a run from ``start`` to ``end``."""
    if clock:
        return 0.0, 86400.0, "UTC"  # matplotlib's date numbers: days since 1970
    length = max(0.0, end - start)
    if length <= 180:
        return start, 1.0, "s"
    if length <= 3 * 3600:
        return start, 60.0, "min"
    return start, 3600.0, "h"


def _run_span(files: RunFiles) -> tuple[float, float]:
    """When the run started and when it ended (or was last heard of)."""
    times = [float(s["time"]) for s in files.samples[:1]] + [e.time for e in files.events[:1]]
    started = _number(files.status.get("started"))
    start = started if started is not None else min(times)
    ends = [float(files.samples[-1]["time"])] if files.samples else []
    ends += [files.events[-1].time] if files.events else []
    agent_time = _number(files.status.get("agent_time"))
    if agent_time is not None:
        ends.append(agent_time)
    return start, max([start, *ends])


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _checkpoint_disk(host: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The disk that holds the checkpoints (else the run folder's), from a sample's host."""
    disks = [d for d in (host or {}).get("disks") or () if isinstance(d, dict)]
    for wanted in (("checkpoint", "checkpoints"), ("run",)):
        for disk in disks:
            if any(role in wanted for role in disk.get("roles") or ()):
                return disk
    return None


class _Columns:
    """The samples' values, one list of (x, y) per named line, in one pass."""

    def __init__(self) -> None:
        self.lines: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        self.order: list[tuple[str, str]] = []

    def line(self, panel: str, name: str) -> tuple[list[float], list[float]]:
        key = (panel, name)
        found = self.lines.get(key)
        if found is None:
            found = self.lines[key] = ([], [])
            self.order.append(key)
        return found

    def add(self, panel: str, name: str, x: float, value: Any) -> None:
        # The hot loop of a long run (17,280 samples x 8 GPUs x 5 values): a plain type
        # test, and v == v and v - v == 0 to keep finite numbers only (NaN and inf fail).
        cls = value.__class__
        if (cls is float or cls is int) and value - value == 0:
            xs, ys = self.lines.get((panel, name)) or self.line(panel, name)
            xs.append(x)
            ys.append(float(value))

    def series(self, panel: str) -> list[tuple[str, tuple[float, ...], tuple[float, ...]]]:
        out = []
        for p, name in self.order:
            if p == panel:
                xs, ys = _decimate(*self.lines[(p, name)])
                out.append((name, xs, ys))
        return out


#: A line with more points than this is drawn from the minimum and the maximum of each
#: of MAX_POINTS / 2 runs of consecutive samples: a 24-hour run at 5 s still shows a
#: one-sample power dip, at a tenth of the drawing cost.
MAX_POINTS = 3000


def _decimate(xs: list[float], ys: list[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    n = len(xs)
    if n <= MAX_POINTS:
        return tuple(xs), tuple(ys)
    import numpy as np

    y = np.asarray(ys)
    per = -(-n // (MAX_POINTS // 2))  # samples per bucket, rounded up
    buckets = -(-n // per)
    padded = np.concatenate([y, np.full(buckets * per - n, y[-1])]).reshape(buckets, per)
    base = np.arange(buckets) * per
    lo, hi = base + padded.argmin(axis=1), base + padded.argmax(axis=1)
    keep = np.unique(np.concatenate([lo, hi, [0, n - 1]]).clip(0, n - 1))
    x = np.asarray(xs)
    return tuple(x[keep].tolist()), tuple(y[keep].tolist())


_GPU_PANELS = (
    ("power", "GPU power (W)", "power_w", "power_limit_w", "limit"),
    ("temperature", "temperature (°C)", "temperature_c", "temperature_slowdown_c", "slowdown"),
    ("utilization", "GPU utilisation (%)", "utilization_gpu_percent", None, None),
)


def _gpu_fields(name: str) -> list[tuple[str, str, str]]:
    """(panel, line name, the GPU record's field) for every value of one GPU."""
    fields = []
    for key, _, value, ref, ref_name in _GPU_PANELS:
        fields.append((key, name, value))
        if ref is not None:
            fields.append((key + ".ref", f"{name} {ref_name}", ref))
    return fields


def build_timeline(files: RunFiles, *, clock: bool = False) -> Timeline:
    """The figure's content, as data: one panel per kind of value the samples carry (a
    panel with no value at all is left out), and every event as a marker."""
    start, end = _run_span(files)
    origin, scale, unit = _axis(start, end, clock)
    cols = _Columns()
    names: dict[Any, list[tuple[str, str, str]]] = {}
    for sample in files.samples:
        x = (float(sample["time"]) - origin) / scale
        for gpu in sample.get("gpus") or ():
            if not isinstance(gpu, dict) or gpu.get("lost"):
                continue
            index = gpu.get("index", "?")
            fields = names.get(index)
            if fields is None:
                fields = names[index] = _gpu_fields(f"GPU {index}")
            for panel, name, value in fields:
                cols.add(panel, name, x, gpu.get(value))
        cols.add("steps_per_s", "steps/s", x, sample.get("steps_per_s"))
        metrics = sample.get("metrics")
        if isinstance(metrics, dict):
            cols.add("loss", "loss", x, metrics.get("loss"))
        disk = _checkpoint_disk(sample.get("host"))
        if disk is not None:
            free = _number(disk.get("free_bytes"))
            if free is not None:
                cols.add("disk_free", "checkpoint disk free", x, free / 1e9)
    panels = []
    for key, ylabel, *_ in _GPU_PANELS:
        lines = cols.series(key)
        series = [Series(n, x, y, colour=i) for i, (n, x, y) in enumerate(lines)]
        series += _refs(cols.series(key + ".ref"), [n for n, _, _ in lines])
        if series:
            panels.append(Panel(key, ylabel, tuple(series)))
    for key, ylabel in (
        ("steps_per_s", "steps/s"),
        ("loss", "loss"),
        ("disk_free", "checkpoint disk free (GB)"),
    ):
        lines = cols.series(key)
        if lines:
            panels.append(Panel(key, ylabel, tuple(Series(n, x, y) for n, x, y in lines)))
    markers = tuple(
        Marker(
            x=(e.time - origin) / scale,
            time=e.time,
            kind=e.kind,
            severity=e.severity,
            message=e.message,
            attempt=e.attempt,
            colour=FINISHED_COLOUR if e.kind == "finished" else SEVERITY_COLOURS[e.severity],
        )
        for e in files.events
    )
    labels, rows = _place_labels(markers, (start - origin) / scale, (end - origin) / scale)
    job = files.launch.get("job") or files.status.get("job")
    title = f"{files.label}" + (f" ({job})" if job else "")
    return Timeline(title, origin, start, end, scale, unit, tuple(panels), markers, labels, rows)


def _refs(
    refs: list[tuple[str, tuple[float, ...], tuple[float, ...]]], gpus: list[str]
) -> list[Series]:
    """The GPUs' limits (thresholds): one line when every GPU has the same one."""
    if not refs:
        return []
    if all(r[1:] == refs[0][1:] for r in refs):
        name = refs[0][0].split(" ", 2)[-1]  # "GPU 0 limit" -> "limit"
        return [Series(name, refs[0][1], refs[0][2], ref=True, colour=-1)]
    colour = {name: i for i, name in enumerate(gpus)}
    return [
        Series(n, x, y, ref=True, colour=colour.get(n.rsplit(" ", 1)[0], 0)) for n, x, y in refs
    ]


def _place_labels(markers: Sequence[Marker], lo: float, hi: float) -> tuple[tuple[Label, ...], int]:
    """Greedy rows: each label takes the top row where it overlaps no other label (one
    near the right edge ends at its line instead of starting there); with every row
    taken, it is folded into the label placed just before it."""
    width = max(hi - lo, 1e-9)
    taken: list[list[tuple[float, float]]] = [[] for _ in range(MAX_LABEL_ROWS)]
    placed: list[dict[str, Any]] = []
    for i, marker in sorted(enumerate(markers), key=lambda im: im[1].x):
        at = (marker.x - lo) / width
        span = (len(marker.kind) + 4) * _CHAR_FRACTION
        right = at + span > 1.0
        a, b = (at - span, at) if right else (at, at + span)
        row = next(
            (
                r
                for r in range(MAX_LABEL_ROWS)
                if all(b + _GAP_FRACTION <= c or d + _GAP_FRACTION <= a for c, d in taken[r])
            ),
            None,
        )
        if row is None:
            last = placed[-1]
            last["markers"].append(i)
            if marker.severity == "critical" or (
                marker.severity == "warning" and last["colour"] != SEVERITY_COLOURS["critical"]
            ):
                last["colour"] = marker.colour
            continue
        taken[row].append((a, b))
        placed.append(
            {"x": marker.x, "row": row, "markers": [i], "colour": marker.colour, "right": right}
        )
    labels = []
    for p in placed:
        first = markers[p["markers"][0]].kind
        more = len(p["markers"]) - 1
        text = first + (f" +{more}" if more else "")
        labels.append(
            Label(p["x"], p["row"], text, p["colour"], tuple(p["markers"]), right=p["right"])
        )
    rows = 1 + max((lb.row for lb in labels), default=0)
    return tuple(labels), rows


# --------------------------------------------------------------------------- the figure


def draw(timeline: Timeline) -> Figure:
    """The timeline as a figure: the events strip on top, then one axes per panel, all
    sharing the time axis; every event a vertical line through every panel.

    ``fig.axes[0]`` is the events strip (its ``texts`` are the labels, at ``(x, row)``),
    then the panels in order, each with ``get_label()`` = the panel's key; each axes'
    first collection holds the event lines, in marker order.
    """
    from matplotlib.figure import Figure

    heights = [0.35 + 0.22 * timeline.rows] + [1.6] * len(timeline.panels)
    gap, top, bottom = 0.12, 0.45, 0.5  # inches
    tall = top + bottom + sum(heights) + gap * (len(heights) - 1)
    fig = Figure(figsize=(_FIG_WIDTH_IN, tall))
    # Fixed margins, not constrained layout: laying out costs a second draw of every
    # artist, a third of the time of a long run's report.
    axes = fig.subplots(
        len(heights),
        1,
        sharex=True,
        squeeze=False,
        gridspec_kw={
            "height_ratios": heights,
            "hspace": gap / (sum(heights) / len(heights)),
            "left": 0.8 / _FIG_WIDTH_IN,
            "right": 1 - 0.2 / _FIG_WIDTH_IN,
            "top": 1 - top / tall,
            "bottom": bottom / tall,
        },
    )[:, 0]
    strip, panels = axes[0], axes[1:]
    strip.set_label("events")
    fig.suptitle(timeline.title, fontsize=11)
    xs = [m.x for m in timeline.markers]
    colours = [m.colour for m in timeline.markers]
    cycle = [f"C{i}" for i in range(10)]
    for ax, panel in zip(panels, timeline.panels, strict=True):
        ax.set_label(panel.key)
        _event_lines(ax, xs, colours)
        for s in panel.series:
            colour = "#555555" if s.colour < 0 else cycle[s.colour % len(cycle)]
            style = {"linestyle": "--", "linewidth": 0.9} if s.ref else {"linewidth": 1.2}
            ax.plot(s.x, s.y, color=colour, label=s.name, **style)
        ax.set_ylabel(panel.ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.grid(True, alpha=0.3)
        if len(panel.series) > 1:
            ax.legend(fontsize=6, loc="upper right", ncols=min(len(panel.series), 5))
    _event_lines(strip, xs, colours)
    for label in timeline.labels:
        strip.text(
            label.x,
            label.row,
            label.text + " " if label.right else " " + label.text,
            color=label.colour,
            fontsize=_LABEL_FONT_PT,
            ha="right" if label.right else "left",
            va="center",
            clip_on=True,
        )
    strip.set_ylim(timeline.rows - 0.5, -0.5)
    strip.set_yticks([])
    strip.set_ylabel("events", fontsize=8)
    strip.tick_params(labelsize=7)
    for spine in ("left", "right", "top"):
        strip.spines[spine].set_visible(False)
    firsts = (x for p in timeline.panels for s in p.series for x in (s.x[0], s.x[-1]) if s.x)
    every = [timeline.x(timeline.start), timeline.x(timeline.end), *xs, *firsts]
    lo, hi = min(every), max(every)
    pad = (hi - lo) * 0.01 or 0.5
    strip.set_xlim(lo - pad, hi + pad)
    bottom = panels[-1] if len(panels) else strip
    bottom.set_xlabel(timeline.xlabel, fontsize=8)
    if timeline.unit == "UTC":
        import matplotlib.dates as mdates

        locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
        bottom.xaxis.set_major_locator(locator)
        bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    return fig


def _event_lines(ax: Any, xs: Sequence[float], colours: Sequence[str]) -> None:
    # One collection per axes, not a Line2D per event: hundreds of events stay cheap.
    ax.vlines(
        xs, 0, 1, transform=ax.get_xaxis_transform(), colors=colours, linewidth=0.8, alpha=0.8
    )


def save_png(fig: Figure, path: Path, *, dpi: int = 100) -> Path:
    """Render ``fig`` with Agg into ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png")
    return path


# --------------------------------------------------------------------------- the summary


def _utc(t: float, fmt: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    return time.strftime(fmt, time.gmtime(t))


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    if minutes < 180:
        return f"{minutes:.1f} min"
    return f"{int(minutes // 60)} h {int(minutes % 60):02d} min"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _gpus(samples: Iterable[Mapping[str, Any]]) -> str:
    names: dict[Any, str] = {}
    for sample in samples:
        for gpu in sample.get("gpus") or ():
            if isinstance(gpu, dict):
                names.setdefault(gpu.get("index"), str(gpu.get("name") or "unknown GPU"))
    if not names:
        return "none seen"
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} × {name}" for name, n in counts.items())


def _evidence(event: Event) -> str:
    """The evidence a reader follows up: files (stack dumps, logs) and key scalars."""
    ev = event.evidence
    parts = []
    files = ev.get("files")
    if event.kind == "stack_dump" and isinstance(files, list):
        parts += [f"`{f}`" for f in files]
    elif isinstance(ev.get("dir"), str):
        parts.append(f"`{ev['dir']}`")
    for key in ("log", "path"):
        if isinstance(ev.get(key), str):
            parts.append(f"`{ev[key]}`")
    for key in ("step", "checkpoint_step", "exit_code", "signal", "after", "commit"):
        value = ev.get(key)
        if value is not None and not isinstance(value, (dict, list)):
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def _cause(restart: Event, events: Sequence[Event]) -> tuple[str, Event | None]:
    """What a restart was for: the event of kind ``evidence.after`` just before it."""
    after = str(restart.evidence.get("after") or "")
    for event in reversed(events):
        if event.time > restart.time:
            continue
        if event.kind == after and event.attempt == restart.attempt:
            return after, event
    return after or "unknown", None


def summary(files: RunFiles, timeline: Timeline, *, png_name: str = PNG_NAME) -> str:
    """The markdown report: what ran where, how long, how it ended, restarts and their
    causes, checkpoints and pushes, cost, and every event with its evidence."""
    status, launch, events = files.status, files.launch, files.events
    start, end = _run_span(files)
    seconds = end - start
    lines = [f"# Run {files.label}", "", f"![timeline]({png_name})", "", "## What ran where", ""]
    lines.append(f"- job: {launch.get('job') or status.get('job') or 'unknown'}")
    backend = launch.get("backend") or "unknown"
    instance = launch.get("instance_id")
    lines.append(f"- backend: {backend}" + (f", instance {instance}" if instance else ""))
    if files.host:
        lines.append(f"- host: {files.host}")
    if files.where:
        lines.append(f"- run folder: `{files.where}`")
    argv = launch.get("argv")
    if isinstance(argv, list) and argv:
        lines.append(f"- command: `{' '.join(str(a) for a in argv)}`")
    lines.append(f"- GPUs: {_gpus(files.samples)}")
    lines.append(f"- started: {_utc(start)}; last heard of: {_utc(end)}")
    lines.append(f"- duration: {_duration(seconds)}")
    lines += ["", "## How it ended", ""]
    state = status.get("state") or "unknown"
    exit_code = status.get("exit_code")
    lines.append(
        f"- state: {state}" + (f" (exit code {exit_code})" if exit_code is not None else "")
    )
    if status.get("summary"):
        lines.append(f"- why: {status['summary']}")
    if status.get("step") is not None:
        lines.append(f"- last step: {status['step']}")
    restarts = [e for e in events if e.kind == "restart"]
    count = status.get("restarts")
    count = count if isinstance(count, int) else len(restarts)
    lines += ["", f"## Restarts: {count}", ""]
    for n, restart in enumerate(restarts, 1):
        after, cause = _cause(restart, events)
        step = cause.evidence.get("step") if cause is not None else None
        at = f" at step {step}" if step is not None else ""
        resumed = restart.evidence.get("checkpoint_step")
        line = f"{n}. {_duration(restart.time - start)} in: after {after}{at}"
        if cause is not None:
            line += f" ({cause.message})"
        line += f"; resumed from checkpoint step {resumed}" if resumed is not None else ""
        lines.append(line)
    lines += ["", "## Checkpoints", ""]
    lines.append(f"- newest checkpoint step: {status.get('checkpoint_step', 'unknown')}")
    resumes = [e.evidence.get("checkpoint_step") for e in events if e.kind == "started"]
    used = [str(s) for s in resumes if s is not None]
    if used:
        lines.append(f"- attempts resumed from steps: {', '.join(used)}")
    lines += _pushes(files)
    lines += ["", "## Cost", ""]
    dph = _number(launch.get("dph_total"))
    if dph is None:
        lines.append("- no hourly price in launch.json (a local run, or not recorded)")
    else:
        hours = seconds / 3600
        lines.append(f"- {dph:g} $/h × {hours:.4f} h = ${dph * hours:.4f}")
    lines += [
        "",
        f"## Events: {len(events)}",
        "",
        "| since start | time (UTC) | attempt | severity | kind | message | evidence |",
        "|---:|---|---:|---|---|---|---|",
    ]
    for event in events:
        at = _duration(event.time - start)
        lines.append(
            f"| {at} | {_utc(event.time, '%m-%d %H:%M:%S')} | {event.attempt} "
            f"| {event.severity} | {event.kind} | {_cell(event.message)} "
            f"| {_cell(_evidence(event))} |"
        )
    return "\n".join(lines) + "\n"


def _pushes(files: RunFiles) -> list[str]:
    push = files.push
    pushed = push.get("pushed")
    if not push:
        return ["- Hub: no push-state.json (checkpoints were not pushed)"]
    repo = push.get("repo", "unknown repo")
    lines = [f"- Hub: {push.get('repo_type', 'model')} repo `{repo}`"]
    paths = {
        e.evidence.get("step"): e.evidence.get("path") for e in files.events if e.kind == "push"
    }
    if isinstance(pushed, dict) and pushed:
        for key, record in sorted(pushed.items(), key=lambda kv: int(kv[0])):
            record = record if isinstance(record, dict) else {}
            where = paths.get(int(key))
            lines.append(
                f"  - step {key}: commit `{str(record.get('commit', '?'))[:12]}`"
                + (f", `{where}`" if where else "")
                + (f", confirmed {_utc(float(record['time']))}" if record.get("time") else "")
            )
    else:
        lines.append("  - nothing confirmed on the Hub")
    failure = push.get("failure")
    if isinstance(failure, dict):
        lines.append(
            f"  - failing: {failure.get('reason', '')} ({failure.get('attempts')} attempt(s))"
        )
    return lines


# --------------------------------------------------------------------------- both


@dataclass(frozen=True)
class Report:
    png: Path
    markdown: Path
    timeline: Timeline


def write_report(files: RunFiles, out_dir: Path, *, clock: bool = False) -> Report:
    """Write ``report.png`` and ``report.md`` into ``out_dir`` (made when missing)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunnerError(f"cannot make {out_dir}: {exc.strerror}; pick another --out") from exc
    timeline = build_timeline(files, clock=clock)
    fig = draw(timeline)
    png, md = out_dir / PNG_NAME, out_dir / MD_NAME
    try:
        save_png(fig, png)
        md.write_text(summary(files, timeline), encoding="utf-8")
    except OSError as exc:
        raise RunnerError(f"cannot write the report into {out_dir}: {exc}") from exc
    return Report(png, md, timeline)

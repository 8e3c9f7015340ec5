"""The run folder: the contract between the harness, the agent, the pusher, launch and watch.

Everything the control side shows is read from this folder, locally or over SSH;
nothing reaches into the agent's memory. This module is its schema, below every
layer that writes or reads it (it imports only :mod:`runner.harness`, for the
training process's own files), so a viewer never imports the agent::

    RUN_DIR/
      heartbeat.json      the training process's step, phase and metrics (harness)
      metrics.jsonl       one line per step, at most one per second (harness)
      events.jsonl        the agent's events, one JSON object per line (this module)
      status.json         the run's state now and the agent's heartbeat (this module)
      samples.jsonl       the health history: GPUs, disks, step rate, metrics (this module)
      logs/attempt-N.log  the training process's output, per attempt
      stacks/             stack dumps, NNN-<event>/pid-P.txt
      push-state.json     what the pusher confirmed on the Hub
      launch.json         how the run was launched (run id, job, backend, forced items)

``events.jsonl`` is append-only, one JSON object per line, fsynced on each
write, so a host that dies keeps every event written before. ``status.json``
is rewritten atomically every tick; its ``agent_time`` is the agent's own
heartbeat, so the control side can tell a dead host (status stops changing)
from a quiet run (status changes, steps do not).

Both are read by ``runner watch`` and ``runner runs``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.harness import HEARTBEAT_FILE, METRICS_FILE, STACKS_DIR, read_heartbeat

__all__ = [
    "ACTIONS",
    "BACKENDS",
    "EVENTS_FILE",
    "EVENTS_FORMAT",
    "HEARTBEAT_FILE",
    "LAUNCH_FILE",
    "LOGS_DIR",
    "METRICS_FILE",
    "PUSH_STATE_FILE",
    "SAMPLES_FILE",
    "SEVERITIES",
    "STACKS_DIR",
    "STATUS_FILE",
    "Action",
    "Backend",
    "EndPolicy",
    "Event",
    "EventLog",
    "Launch",
    "RunState",
    "SampleLog",
    "Severity",
    "Status",
    "attempt_log_path",
    "parse_events",
    "parse_samples",
    "read_events",
    "read_heartbeat",
    "read_launch",
    "read_samples",
    "read_status",
]

EVENTS_FILE = "events.jsonl"
STATUS_FILE = "status.json"
SAMPLES_FILE = "samples.jsonl"
LOGS_DIR = "logs"
PUSH_STATE_FILE = "push-state.json"
LAUNCH_FILE = "launch.json"
EVENTS_FORMAT = 1


def attempt_log_path(run_dir: Path | str, attempt: int) -> Path:
    """``RUN_DIR/logs/attempt-N.log``."""
    return Path(run_dir) / LOGS_DIR / f"attempt-{attempt}.log"


Severity = Literal["info", "warning", "critical"]
#: What the agent does about an event: nothing, take stack dumps, restart the
#: run from its newest complete checkpoint (stacks first), or stop it.
Action = Literal["none", "dump", "restart", "stop"]

SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")
ACTIONS: tuple[Action, ...] = ("none", "dump", "restart", "stop")


@dataclass(frozen=True)
class Event:
    """One thing that happened to a run, with the evidence for it.

    ``kind`` names the detector or lifecycle step (``stall``, ``power_collapse``,
    ``zombie_workers``, ``thermal``, ``input_bound``, ``disk_low``, ``disk_full``,
    ``oom``, ``xid``, ``ecc``, ``gpu_lost``, ``nccl_timeout``, ``shm_low``,
    ``ram_pressure``, ``detector_error``, ``started``, ``exited``, ``restart``,
    ``stack_dump``, ``stopped``, ``finished``...). ``message`` is one line for a
    human; ``evidence`` holds the JSON-friendly values that triggered it (and, for
    stack dumps, the file path); ``action`` is what the agent does about it.
    """

    kind: str
    severity: Severity
    message: str
    time: float = field(default_factory=time.time)
    evidence: Mapping[str, Any] = field(default_factory=dict)
    action: Action = "none"
    attempt: int = 0

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {self.action!r}")
        if "\n" in self.message:
            raise ValueError("an event message is one line")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["evidence"] = dict(self.evidence)
        data["v"] = EVENTS_FORMAT
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), default=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        return cls(
            kind=str(data["kind"]),
            severity=data["severity"],
            message=str(data["message"]),
            time=float(data["time"]),
            evidence=dict(data.get("evidence") or {}),
            action=data.get("action", "none"),
            attempt=int(data.get("attempt", 0)),
        )

    @classmethod
    def from_json(cls, line: str) -> Event:
        return cls.from_dict(json.loads(line))


class EventLog:
    """Append-only ``events.jsonl`` in a run folder; every append is durable."""

    def __init__(self, run_dir: Path | str) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, event: Event) -> None:
        # One write() of one line with O_APPEND: concurrent writers never interleave
        # inside a line, and fsync makes it survive the host.
        data = (event.to_json() + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def __iter__(self) -> Iterator[Event]:
        return iter(read_events(self.path.parent))


def read_events(run_dir: Path | str) -> list[Event]:
    """Every event of a run folder, oldest first; a torn last line is skipped."""
    path = Path(run_dir) / EVENTS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return parse_events(text)


def parse_events(text: str) -> list[Event]:
    """The events of an ``events.jsonl`` text (read here or over SSH), in file order;
    torn or foreign lines are skipped."""
    events = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            events.append(Event.from_json(line))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a crash mid-write
    return events


RunState = Literal[
    "starting",  # the agent is up, the training process not yet
    "running",
    "restarting",
    "finished",  # the training command exited 0
    "failed",  # it exited non-zero and will not be restarted
    "stopped",  # the agent stopped it (bad host, OOM, budget, user)
]


@dataclass(frozen=True)
class Status:
    """The run's state now, rewritten every tick as ``status.json``."""

    state: RunState
    job: str | None
    agent_pid: int
    agent_time: float  # the agent's own heartbeat
    started: float
    attempt: int = 0
    restarts: int = 0
    training_pid: int | None = None
    step: int | None = None
    last_step_time: float | None = None
    steps_per_s: float | None = None
    phase: str | None = None
    checkpoint_step: int | None = None
    exit_code: int | None = None
    summary: str = ""  # one line for a human: what is happening or what happened
    last_event: Mapping[str, Any] | None = None
    gpus: tuple[Mapping[str, Any], ...] = ()  # compact per-GPU view of the last sample
    host: Mapping[str, Any] | None = None  # compact RAM/disk view of the last sample
    metrics: Mapping[str, Any] = field(default_factory=dict)  # the last step's metrics
    samples_per_s: float | None = None  # steps/s x the harness's ``samples`` per step
    data_wait: float | None = None  # recent share of step time spent waiting for data

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpus"] = [dict(g) for g in self.gpus]
        data["metrics"] = dict(self.metrics)
        data["v"] = EVENTS_FORMAT
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Status:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["gpus"] = tuple(known.get("gpus") or ())
        return cls(**known)

    def write(self, run_dir: Path | str) -> None:
        """Replace ``status.json`` atomically (temporary file + rename)."""
        run_dir = Path(run_dir)
        fd, tmp = tempfile.mkstemp(prefix=".status-", dir=run_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, separators=(",", ":"), default=str)
            os.replace(tmp, run_dir / STATUS_FILE)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def read_status(run_dir: Path | str) -> Status | None:
    """The run's last status, or None when the agent has not written one."""
    try:
        data = json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    try:
        return Status.from_dict(data)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- samples.jsonl


class SampleLog:
    """Append-only ``samples.jsonl``: one compact health record every few seconds.

    Each line is ``{"v", "time", "attempt", "state", "step", "steps_per_s",
    "samples_per_s", "data_wait", "metrics", "gpus", "host"}`` (as in
    :class:`Status`; ``metrics`` holds finite numbers only),
    what ``runner report`` plots after the run. One ``write()`` per line with
    ``O_APPEND``; not fsynced (a lost last record costs a few seconds of plot).
    """

    def __init__(self, run_dir: Path | str) -> None:
        self.path = Path(run_dir) / SAMPLES_FILE

    def append(self, record: Mapping[str, Any]) -> None:
        line = json.dumps({"v": EVENTS_FORMAT, **record}, separators=(",", ":"), default=str)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def parse_samples(text: str) -> list[dict[str, Any]]:
    """The records of a ``samples.jsonl`` text, oldest first; torn lines are skipped."""
    records = []
    for line in text.splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("time"), (int, float)):
            records.append(data)
    return records


def read_samples(run_dir: Path | str) -> list[dict[str, Any]]:
    """Every health record of a run folder (empty when the agent wrote none)."""
    try:
        text = (Path(run_dir) / SAMPLES_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return parse_samples(text)


# --------------------------------------------------------------------------- launch.json

Backend = Literal["local", "docker", "vast"]
#: What happens to a rented instance when its run ends and its checkpoints are on the Hub.
EndPolicy = Literal["destroy", "stop", "keep"]
BACKENDS: tuple[Backend, ...] = ("local", "docker", "vast")


@dataclass(frozen=True)
class Launch:
    """How a run was launched: ``RUN_DIR/launch.json``, written by ``runner launch``.

    It is all the agent on the host needs to start the run (``runner agent start
    RUN_DIR``): the resolved job spec travels with the run, so the host runs what the
    user checked, not whatever job file its image carries. Secrets are named here,
    never given: their values reach the agent at start (container environment, or
    SSH standard input) and are never written to disk.
    """

    run_id: str
    job: str
    backend: Backend
    spec: Mapping[str, Any]
    """The resolved :class:`runner.spec.JobSpec` (``model_dump(mode="json")``)."""
    argv: tuple[str, ...]
    """The training command, overrides applied."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment for the training process beyond the host's: the job's, the overrides'."""
    profile: str | None = None
    created: float = field(default_factory=time.time)
    secret_names: tuple[str, ...] = ()
    """Secrets the agent must be handed at start (names only)."""
    dataset: str | None = None
    """The dataset folder as the training process sees it (host or container path)."""
    workdir: str | None = None
    resume: bool = False
    """Pull the newest pushed checkpoint before the first attempt."""
    forced: tuple[str, ...] = ()
    """Pre-flight items that failed and were overridden with ``--force``."""
    instance_id: int | None = None
    dph_total: float | None = None
    """Dollars per hour of the instance (cost so far = hours x this)."""
    max_hours: float | None = None
    max_cost: float | None = None
    end_policy: EndPolicy = "destroy"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["v"] = EVENTS_FORMAT
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Launch:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name in ("argv", "secret_names", "forced"):
            known[name] = tuple(known.get(name) or ())
        return cls(**known)

    def write(self, run_dir: Path | str) -> Path:
        """Write ``launch.json`` atomically; returns its path."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(run_dir / LAUNCH_FILE, json.dumps(self.to_dict(), indent=1, default=str))
        return run_dir / LAUNCH_FILE


def read_launch(run_dir: Path | str) -> Launch | None:
    """The run's ``launch.json``, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((Path(run_dir) / LAUNCH_FILE).read_text(encoding="utf-8"))
        return Launch.from_dict(data)
    except (OSError, ValueError, TypeError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

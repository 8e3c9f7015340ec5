"""The W&B mirror: a run folder's health, step rate and events, copied into Weights & Biases.

It runs in a process of its own (``python -m runner.agent.mirror RUN_DIR ...``),
started by the supervisor when the job sets ``wandb.enabled``, and only reads the
run folder, so a slow, flaky or absent network stalls neither training nor the
agent, and a crash of wandb costs the mirror, never the run. Every second it
reads the new complete lines of

- ``samples.jsonl``: one W&B row per record: ``gpu/<i>/power_w``, ``power_limit_w``,
  ``temperature_c``, ``utilization_percent``, ``memory_used_gb``; ``speed/steps_per_s``,
  ``samples_per_s``, ``data_wait``; ``host/ram_used_fraction``, ``load_1m``,
  ``host/<role>_free_gb``; the harness metrics as ``train/<name>`` (``train/loss``);
- ``events.jsonl``: one row per event (``event/kind``, ``event/severity``,
  ``event/message``, ``event/attempt``), and a ``wandb.alert`` (title: the kind,
  text: the message) for a critical event (level ERROR) or a warning on which the
  agent restarts or stops the run (level WARN).

Axes: ``train/*`` is plotted against ``train/step`` (the training step: it goes
back after a restart from an older checkpoint, which a custom x-axis allows and
W&B's own monotonic ``_step`` would not); everything else against
``time/elapsed_s``, seconds since the run was launched (so GPU power before the
first step, and while frozen, has a place on the chart).

The byte offsets read so far are kept in ``RUN_DIR/wandb/mirror-state.json``, so
a restarted mirror continues the same W&B run (the run id is the run's id)
without duplicating a row. It ends after a last read: started by the agent
(``--agent``), when its standard input closes (the agent closes it once the run
ended and its last pushes are written, and the kernel does when the agent dies,
so no race with the mirror's start-up and no orphan); on SIGTERM; or, started
by hand, once ``status.json`` is final. A failure of its own is one ``wandb_error`` warning in
``events.jsonl`` (the agent's events file: appends of one line never interleave)
and exit 1; except a ``wandb.init`` that fails (no network at the start): it is
reported once and tried again, waiting 30 s, then twice as long each time (at
most 5 min), until the run ends, with a ``wandb_connected`` event if it then
connects. The API key (``WANDB_API_KEY``) comes from the
environment only: never an argument, never in an event (messages are redacted),
and not even in the process's environment in offline mode.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.rundir import (
    EVENTS_FILE,
    SAMPLES_FILE,
    Event,
    EventLog,
    read_launch,
    read_status,
)
from runner.spec import WANDB_KEY_ENV, WandbSpec

__all__ = [
    "MIRROR_LOG",
    "STATE_FILE",
    "WANDB_DIR",
    "alert_for",
    "event_row",
    "main",
    "mirror_argv",
    "offline_runs",
    "sample_row",
    "start_mirror",
    "sync_argv",
    "wandb_run_id",
]

#: The folder of the run where wandb writes (its ``WANDB_DIR`` is the run folder).
WANDB_DIR = "wandb"
#: Offsets already mirrored, relative to the run folder.
STATE_FILE = f"{WANDB_DIR}/mirror-state.json"
#: The mirror's own output (wandb's warnings), relative to the run folder.
MIRROR_LOG = f"{WANDB_DIR}/mirror.log"
_FINAL_STATES = frozenset({"finished", "failed", "stopped"})
_T_AXIS = "time/elapsed_s"
_STEP_AXIS = "train/step"


# --------------------------------------------------------------------------- pure mapping


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def sample_row(record: Mapping[str, Any], t0: float) -> dict[str, Any]:
    """The W&B row of one ``samples.jsonl`` record (finite numbers only)."""
    row: dict[str, Any] = {_T_AXIS: round(float(record["time"]) - t0, 3)}

    def put(key: str, value: Any, scale: float = 1.0) -> None:
        number = _number(value)
        if number is not None:
            row[key] = number * scale if scale != 1.0 else number

    put("agent/attempt", record.get("attempt"))
    put(_STEP_AXIS, record.get("step"))
    for name, value in (record.get("metrics") or {}).items():
        if name != "step":
            put(f"train/{name}", value)
    for name in ("steps_per_s", "samples_per_s", "data_wait"):
        put(f"speed/{name}", record.get(name))
    for gpu in record.get("gpus") or ():
        index = gpu.get("index")
        if not isinstance(index, int):
            continue
        key = f"gpu/{index}"
        put(f"{key}/power_w", gpu.get("power_w"))
        put(f"{key}/power_limit_w", gpu.get("power_limit_w"))
        put(f"{key}/temperature_c", gpu.get("temperature_c"))
        put(f"{key}/temperature_slowdown_c", gpu.get("temperature_slowdown_c"))
        put(f"{key}/utilization_percent", gpu.get("utilization_gpu_percent"))
        put(f"{key}/memory_used_gb", gpu.get("memory_used_bytes"), 1e-9)
        if isinstance(gpu.get("lost"), bool):
            row[f"{key}/lost"] = int(gpu["lost"])
    host = record.get("host") or {}
    put("host/ram_used_fraction", host.get("ram_used_fraction"))
    put("host/load_1m", host.get("load_1m"))
    for disk in host.get("disks") or ():
        for role in disk.get("roles") or ():
            put(f"host/{role}_free_gb", disk.get("free_bytes"), 1e-9)
    return row


def event_row(event: Event, t0: float) -> dict[str, Any]:
    """The W&B row of one event."""
    return {
        _T_AXIS: round(event.time - t0, 3),
        "event/kind": event.kind,
        "event/severity": event.severity,
        "event/message": event.message,
        "event/attempt": event.attempt,
    }


def alert_for(event: Event) -> tuple[str, str, str] | None:
    """``(title, text, level)`` of the W&B alert an event raises, or None.

    Critical events raise an ERROR; warnings the agent restarts or stops on, a WARN.
    """
    if event.severity == "critical":
        return event.kind, event.message, "ERROR"
    if event.severity == "warning" and event.action in ("restart", "stop"):
        return event.kind, event.message, "WARN"
    return None


def wandb_run_id(run_id: str) -> str:
    """A W&B run id for a runner run id (letters, digits, ``-`` and ``_``; at most 64)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", run_id)[:64] or "run"


# --------------------------------------------------------------------------- starting it


def mirror_argv(run_dir: Path, spec: WandbSpec, *, job: str, agent: bool = True) -> list[str]:
    """The mirror's command line (no secret is ever on it)."""
    argv = [sys.executable, "-m", "runner.agent.mirror", str(run_dir)]
    argv += ["--project", spec.project or job, "--mode", spec.mode]
    if spec.entity:
        argv += ["--entity", spec.entity]
    if spec.name:
        argv += ["--name", spec.name]
    if agent:
        argv.append("--agent")
    return argv


def start_mirror(
    run_dir: Path, spec: WandbSpec, *, job: str, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start the mirror of ``run_dir`` beside this process (its child, in its own session).

    Its output goes to ``RUN_DIR/wandb/mirror.log``; closing its ``stdin`` tells it
    the run is over. Offline, the key is left out of its environment. Raises
    :class:`OSError` when it cannot be started.
    """
    child_env = dict(env)
    child_env["WANDB_DIR"] = str(run_dir)
    child_env["WANDB_MODE"] = spec.mode
    child_env["WANDB_SILENT"] = "true"
    if spec.mode == "offline":
        child_env.pop(WANDB_KEY_ENV, None)
    log_path = run_dir / MIRROR_LOG
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # Its own session: a Ctrl-C in the agent's terminal must not kill it before
        # its last read; the agent stops it when the run has ended.
        return subprocess.Popen(
            mirror_argv(run_dir, spec, job=job),
            env=child_env,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


# --------------------------------------------------------------------------- offline sync


def offline_runs(run_dir: Path) -> list[Path]:
    """The offline W&B runs of a run folder (``RUN_DIR/wandb/offline-run-*``), oldest first."""
    folder = run_dir / WANDB_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("offline-run-*") if p.is_dir())


def sync_argv(paths: Sequence[Path]) -> list[str]:
    """``wandb sync`` of these offline runs (the key comes from the environment, never here)."""
    return [sys.executable, "-m", "wandb", "sync", *map(str, paths)]


# --------------------------------------------------------------------------- the mirror


@dataclass
class _State:
    samples: int = 0
    events: int = 0
    t0: float | None = None

    @classmethod
    def load(cls, run_dir: Path) -> _State:
        try:
            data = json.loads((run_dir / STATE_FILE).read_text(encoding="utf-8"))
            t0 = data.get("t0")
            return cls(int(data["samples"]), int(data["events"]), float(t0) if t0 else None)
        except (OSError, ValueError, KeyError, TypeError):
            return cls()

    def save(self, run_dir: Path) -> None:
        path = run_dir / STATE_FILE
        tmp = path.with_name(path.name + ".tmp")
        data = {"samples": self.samples, "events": self.events, "t0": self.t0}
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)


def _new_lines(path: Path, offset: int) -> tuple[list[str], int]:
    """The complete lines after ``offset`` and the offset after them (a torn tail waits)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    text = data[: end + 1].decode("utf-8", errors="replace")
    return text.splitlines(), offset + end + 1


class _Mirror:
    def __init__(self, run_dir: Path, run: Any, alert_levels: Mapping[str, Any]) -> None:
        self.run_dir = run_dir
        self.run = run
        self.levels = alert_levels
        self.state = _State.load(run_dir)
        if self.state.t0 is None:
            self.state.t0 = _start_time(run_dir)

    def drain(self) -> int:
        """Mirror every new complete line; returns how many."""
        assert self.state.t0 is not None
        t0 = self.state.t0
        before = (self.state.samples, self.state.events)
        lines, self.state.samples = _new_lines(self.run_dir / SAMPLES_FILE, self.state.samples)
        done = 0
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                record = json.loads(line)
                self.run.log(sample_row(record, t0))
                done += 1
        lines, self.state.events = _new_lines(self.run_dir / EVENTS_FILE, self.state.events)
        for line in lines:
            try:
                event = Event.from_json(line)
            except (ValueError, KeyError, TypeError):
                continue
            self.run.log(event_row(event, t0))
            alert = alert_for(event)
            if alert is not None:
                title, text, level = alert
                self.run.alert(title=title, text=text, level=self.levels[level])
            done += 1
        if (self.state.samples, self.state.events) != before:
            with contextlib.suppress(OSError):
                self.state.save(self.run_dir)
        return done

    def finish(self) -> None:
        status = read_status(self.run_dir)
        code = 0
        if status is not None and status.state in _FINAL_STATES:
            code = status.exit_code or 0
            self.run.summary["run/state"] = status.state
            self.run.summary["run/summary"] = status.summary
            self.run.summary["run/exit_code"] = code
            self.run.summary["run/restarts"] = status.restarts
        self.run.finish(exit_code=code)


def _start_time(run_dir: Path) -> float:
    launch = read_launch(run_dir)
    if launch is not None:
        return launch.created
    status = read_status(run_dir)
    if status is not None:
        return status.started
    return time.time()


def _run_id(run_dir: Path) -> str:
    launch = read_launch(run_dir)
    return launch.run_id if launch is not None else run_dir.name


def _is_final(run_dir: Path) -> bool:
    status = read_status(run_dir)
    return status is not None and status.state in _FINAL_STATES


def _redact(text: str) -> str:
    key = os.environ.get(WANDB_KEY_ENV)
    line = " ".join(text.split())
    return line.replace(key, "***") if key else line


def _report(run_dir: Path, message: str) -> None:
    """The mirror's failure: one warning event, one line on stderr (the mirror log)."""
    message = _redact(message)
    print(f"runner mirror: {message}", file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        EventLog(run_dir).append(Event("wandb_error", "warning", message))


def _init(args: argparse.Namespace, run_dir: Path) -> tuple[Any, dict[str, Any]]:
    import wandb
    from wandb.sdk.wandb_alerts import AlertLevel

    run_id = _run_id(run_dir)
    settings = wandb.Settings(
        mode=args.mode,
        console="off",  # the mirror's output is not the run's
        x_disable_stats=True,  # the agent's own GPU samples are mirrored instead
        save_code=False,
        disable_git=True,
        silent=True,
    )
    run = wandb.init(
        project=args.project,
        entity=args.entity,
        name=args.name or run_id,
        id=wandb_run_id(run_id),
        resume="allow",
        dir=str(run_dir),
        settings=settings,
        config={"runner/run_id": run_id},
    )
    run.define_metric(_T_AXIS)
    run.define_metric(_STEP_AXIS)
    run.define_metric("train/*", step_metric=_STEP_AXIS)
    for prefix in ("gpu", "speed", "host", "event", "agent"):
        run.define_metric(f"{prefix}/*", step_metric=_T_AXIS)
    return run, {"ERROR": AlertLevel.ERROR, "WARN": AlertLevel.WARN}


def _connect(
    args: argparse.Namespace, run_dir: Path, stop: threading.Event
) -> tuple[Any, dict[str, Any]] | None:
    """``wandb.init``, tried again (the wait doubling, at most 5 min) until the run is
    over: a network down at the start costs the rows until it is back, not the run's
    mirror. The first failure is reported, once; None when it never connected."""
    delay, failed = args.retry_s, False
    while True:
        try:
            connected = _init(args, run_dir)
        except ImportError:
            _report(run_dir, "W&B mirror off: wandb is not installed here (pip install wandb)")
            return None
        except Exception as exc:
            if not failed:
                _report(
                    run_dir,
                    f"W&B mirror waiting: wandb.init failed: {type(exc).__name__}: {exc}"[:300]
                    + f"; trying again from {delay:.0f} s on until the run ends "
                    "(the run folder keeps everything)",
                )
                failed = True
        else:
            if failed:
                with contextlib.suppress(OSError):
                    EventLog(run_dir).append(Event("wandb_connected", "info", "W&B mirror on"))
            return connected
        if stop.wait(delay) or (not args.agent and _is_final(run_dir)):
            return None
        delay = min(delay * 2, 300.0)


def _until_eof(stop: threading.Event) -> None:
    # The raw descriptor, not sys.stdin: a daemon thread blocked in a buffered
    # read would abort the interpreter's shutdown after a SIGTERM.
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    stop.set()


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runner.agent.mirror", description="Mirror a run folder into W&B."
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--project", required=True)
    parser.add_argument("--entity")
    parser.add_argument("--name", help="W&B run name (default: the run id)")
    parser.add_argument("--mode", choices=["online", "offline"], default="online")
    parser.add_argument(
        "--agent", action="store_true", help="started by the agent: end when stdin closes"
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between reads")
    parser.add_argument(
        "--retry-s", type=float, default=30.0, help="first wait after a failed wandb.init"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Mirror until the run is over (see the module docstring); 0, or 1 after a failure."""
    args = _parse(argv)
    run_dir: Path = args.run_dir.resolve()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    if args.agent:
        threading.Thread(target=_until_eof, args=(stop,), name="stdin", daemon=True).start()
    if args.mode == "online" and not os.environ.get(WANDB_KEY_ENV):
        _report(
            run_dir,
            f"W&B mirror off: no {WANDB_KEY_ENV} in the agent's environment (export it "
            "before the launch, or set wandb.mode: offline and `runner wandb-sync` later)",
        )
        return 1
    connected = _connect(args, run_dir, stop)
    if connected is None:
        return 1
    run, levels = connected
    try:
        mirror = _Mirror(run_dir, run, levels)
        final_seen = False
        while True:
            final = _is_final(run_dir)
            mirror.drain()
            if stop.is_set():
                break
            # Standalone, the run is over once a read after the final status found
            # nothing new; under the agent, it says when (stdin), after its pushes.
            if not args.agent and final and final_seen:
                break
            final_seen = final
            stop.wait(args.interval)
        mirror.drain()
        mirror.finish()
    except Exception as exc:
        _report(run_dir, f"W&B mirror stopped: {type(exc).__name__}: {exc}")
        with contextlib.suppress(Exception):
            run.finish(exit_code=1)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

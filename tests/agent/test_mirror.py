"""The W&B mirror, for real: wandb in offline mode beside a real agent over a loop that freezes.

The supervisor starts the mirror (its own process) for a job with
``wandb: {enabled: true, mode: offline}``; the run freezes after a step with
its GPU's power collapsing (fake NVML), is found stalled, restarted from a
checkpoint, and finishes. The offline run file wandb wrote
(``RUN_DIR/wandb/offline-run-*/run-*.wandb``, a LevelDB-style log of protobuf
records) is then read back record by record: the rows must carry the sampled
power (80 W training, 20 W frozen), steps/s, the script's loss (1/step), every
event once, and an alert per critical event; the fake API key in the agent's
environment must appear in no file of the run folder.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runner.agent.mirror import STATE_FILE, alert_for, mirror_argv, offline_runs, sample_row
from runner.agent.supervisor import Supervisor
from runner.errors import SpecError
from runner.rundir import EVENTS_FILE, SAMPLES_FILE, Event, read_events
from runner.sampling.nvml import Nvml
from runner.sampling.sample import NoGpus
from runner.sampling.trace import FakeNvml, OnsetTimeline
from runner.spec import JobSpec, RestartPolicy, WandbSpec, WatchdogSpec, parse_job

pytest.importorskip("wandb")

LOOP = Path(__file__).parent / "scripts" / "train_loop.py"
FAKE_KEY = "f" * 8 + "0123456789abcdef0123456789abcdef"  # 40 characters, like a real key
WATCHDOG = WatchdogSpec(
    sample_interval_s=0.2,
    stall_min_s=3,
    confirm_s=2,
    startup_timeout_s=60,
    checkpoint_timeout_s=8,
    power_collapse_s=2,
    history_interval_s=0.2,
)


# --------------------------------------------------------------------------- reading .wandb


def _log_records(path: Path) -> Iterator[bytes]:
    """The records of wandb's transaction log: LevelDB's log format (32 KiB blocks of
    checksum u32, length u16, type u8 chunks: FULL, FIRST, MIDDLE, LAST) after a
    7-byte header ``:W&B``, magic, version."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's trailer: too short for a chunk header
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding to the block's end
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


@dataclass
class WandbRun:
    """What an offline run file holds: its run record, history rows, alerts, summary."""

    run_id: str = ""
    name: str = ""
    project: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[tuple[str, str, str]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None


def read_wandb_file(path: Path) -> WandbRun:
    from wandb.proto import wandb_internal_pb2 as pb

    run = WandbRun()
    for raw in _log_records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.name = record.run.run_id, record.run.display_name
            run.project = record.run.project
        elif kind == "history":
            run.rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        elif kind == "alert":
            alert = record.alert
            run.alerts.append((alert.title, alert.text, alert.level))
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def the_wandb_file(run_dir: Path, index: int = 0) -> Path:
    runs = offline_runs(run_dir)
    assert len(runs) > index, list((run_dir / "wandb").iterdir())
    [file] = runs[index].glob("run-*.wandb")
    return file


# --------------------------------------------------------------------------- the run


def supervise(run_dir: Path, argv: list[str], job: JobSpec, **kwargs: Any) -> Any:
    env = {**os.environ, "WANDB_API_KEY": FAKE_KEY, **kwargs.pop("env", {})}
    return Supervisor(
        argv,
        run_dir=run_dir,
        job=job,
        env=env,
        stdout=io.BytesIO(),
        stderr=io.BytesIO(),
        restart_delay_s=0.1,
        kill_grace_s=5.0,
        **kwargs,
    ).run()


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mirror")
    run_dir, onset = root / "loop-20261203-000000-wxyz", root / "onset"
    job = JobSpec(
        name="loop",
        command=["python", str(LOOP)],
        watchdog=WATCHDOG,
        restart=RestartPolicy(max_restarts=2),
        wandb=WandbSpec(enabled=True, mode="offline", project="runner-tests", flush_s=30),
    )
    argv = [
        sys.executable, str(LOOP), "--steps", "40", "--step-s", "0.05", "--save-every", "10",
        "--freeze-at", "23", "--once", "--onset-file", str(onset),
    ]  # fmt: skip

    def on_event(event: Event) -> None:
        if event.kind == "restart":
            onset.unlink(missing_ok=True)

    result = supervise(
        run_dir,
        argv,
        job,
        gpu_source=Nvml(FakeNvml(OnsetTimeline(onset), clock=time.monotonic)),
        on_event=on_event,
    )
    assert (result.exit_code, result.restarts) == (0, 1), result.summary
    return run_dir


@pytest.mark.slow
def test_samples_are_mirrored_with_their_power_rate_and_loss(mirrored_run: Path) -> None:
    run = read_wandb_file(the_wandb_file(mirrored_run))
    assert (run.run_id, run.name, run.project) == (
        mirrored_run.name,
        mirrored_run.name,
        "runner-tests",
    )
    samples = [r for r in run.rows if "agent/attempt" in r]  # a samples.jsonl record's row
    recorded = (mirrored_run / SAMPLES_FILE).read_text().splitlines()
    assert len(samples) == len(recorded)  # each record once
    powers = {r["gpu/0/power_w"] for r in samples if "gpu/0/power_w" in r}
    assert 80.0 in powers and 20.0 in powers, powers  # training, then the frozen GPU
    assert any(r.get("speed/steps_per_s", 0) > 0 for r in samples)
    with_loss = [r for r in samples if "train/loss" in r]
    assert len(with_loss) > 10
    for row in with_loss:
        assert row["train/loss"] == pytest.approx(1.0 / row["train/step"]), row
    # Both attempts: the restart resumed from checkpoint step 20 and went past the freeze.
    assert {r["agent/attempt"] for r in samples} == {0, 1}
    records = [json.loads(line) for line in recorded]
    steps = [r["train/step"] for r in samples if "train/step" in r]
    assert max(steps) == max(r["step"] for r in records if r["step"] is not None) == 40
    # Row for row, what was recorded (wandb adds only its own _step, _runtime, _timestamp).
    t0 = json.loads((mirrored_run / STATE_FILE).read_text())["t0"]
    mine = [{k: v for k, v in r.items() if not k.startswith("_")} for r in samples]
    assert mine == [pytest.approx(sample_row(r, t0)) for r in records]
    # The time axis rises with the records (seconds since the agent started).
    times = [r["time/elapsed_s"] for r in samples]
    assert times == sorted(times) and times[0] >= 0
    assert run.summary["run/state"] == "finished" and run.summary["run/exit_code"] == 0
    assert run.exit_code == 0


@pytest.mark.slow
def test_every_event_is_a_row_and_critical_ones_are_alerts(mirrored_run: Path) -> None:
    run = read_wandb_file(the_wandb_file(mirrored_run))
    events = read_events(mirrored_run)
    rows = [r for r in run.rows if "event/kind" in r]
    assert [(r["event/kind"], r["event/message"]) for r in rows] == [
        (e.kind, e.message) for e in events
    ]
    kinds = [e.kind for e in events]
    assert "stall" in kinds and "restart" in kinds and kinds[-1] == "finished"
    expected = [a for a in map(alert_for, events) if a is not None]
    assert run.alerts == expected
    stall = next(e for e in events if e.kind == "stall")
    assert (stall.kind, stall.message, "ERROR") in run.alerts
    assert any(title == "restart" and level == "WARN" for title, _, level in run.alerts)


@pytest.mark.slow
def test_no_api_key_in_any_file_of_the_run(mirrored_run: Path) -> None:
    written = [p for p in mirrored_run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written)
    leaks = [str(p) for p in written if FAKE_KEY.encode() in p.read_bytes()]
    assert leaks == []
    argv = mirror_argv(mirrored_run, WandbSpec(enabled=True), job="loop")
    assert FAKE_KEY not in " ".join(argv)


@pytest.mark.slow
def test_a_restarted_mirror_continues_without_duplicates(mirrored_run: Path) -> None:
    state = json.loads((mirrored_run / STATE_FILE).read_text())
    assert state["samples"] == (mirrored_run / SAMPLES_FILE).stat().st_size
    assert state["events"] == (mirrored_run / EVENTS_FILE).stat().st_size
    late = Event("push_failed", "warning", "a late event after the first mirror ended")
    with open(mirrored_run / EVENTS_FILE, "a") as f:
        f.write(late.to_json() + "\n")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(WANDB_DIR=str(mirrored_run), WANDB_SILENT="true")
    argv = [sys.executable, "-m", "runner.agent.mirror", str(mirrored_run)]
    argv += ["--project", "runner-tests", "--mode", "offline", "--interval", "0.2"]
    # Standalone (no --agent), it ends by itself: the status is final.
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    second = read_wandb_file(the_wandb_file(mirrored_run, 1))
    assert second.run_id == mirrored_run.name  # the same W&B run, resumed
    assert [r for r in second.rows if "agent/attempt" in r] == []
    assert [r["event/kind"] for r in second.rows if "event/kind" in r] == ["push_failed"]


@pytest.mark.slow
def test_online_without_a_key_is_one_warning_and_the_run_finishes(tmp_path: Path) -> None:
    job = JobSpec(
        name="loop",
        command=["python", str(LOOP)],
        watchdog=WATCHDOG,
        wandb=WandbSpec(enabled=True, mode="online", project="runner-tests", flush_s=20),
    )
    assert "WANDB_API_KEY" in job.secret_names  # named, so launch hands it to the agent
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    argv = [sys.executable, str(LOOP), "--steps", "15", "--step-s", "0.1"]
    result = Supervisor(
        argv,
        run_dir=tmp_path / "run",
        job=job,
        env=env,
        stdout=io.BytesIO(),
        stderr=io.BytesIO(),
        gpu_source=NoGpus(),
    ).run()
    assert (result.exit_code, result.state) == (0, "finished")
    errors = [e for e in read_events(tmp_path / "run") if e.kind == "wandb_error"]
    assert [(e.severity, e.message) for e in errors] == [
        (
            "warning",
            "W&B mirror off: no WANDB_API_KEY in the agent's environment (export it before "
            "the launch, or set wandb.mode: offline and `runner wandb-sync` later)",
        )
    ]
    assert offline_runs(tmp_path / "run") == []


@pytest.mark.slow
def test_no_network_online_is_one_warning_without_the_key_and_the_run_finishes(
    tmp_path: Path,
) -> None:
    job = JobSpec(
        name="loop",
        command=["python", str(LOOP)],
        watchdog=WATCHDOG,
        wandb=WandbSpec(enabled=True, mode="online", project="runner-tests", flush_s=30),
    )
    # Port 9 (discard) is closed here: wandb.init fails as it does with no network.
    env = {"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_INIT_TIMEOUT": "2"}
    argv = [sys.executable, str(LOOP), "--steps", "30", "--step-s", "0.1"]
    run_dir = tmp_path / "run"
    result = supervise(run_dir, argv, job, env=env, gpu_source=NoGpus())
    assert (result.exit_code, result.state) == (0, "finished")
    errors = [e for e in read_events(run_dir) if e.kind.startswith("wandb")]
    assert [(e.kind, e.severity) for e in errors] == [("wandb_error", "warning")]
    message = errors[0].message
    assert message.startswith("W&B mirror waiting: wandb.init failed: CommError: "), message
    assert message.endswith(
        "; trying again from 30 s on until the run ends (the run folder keeps everything)"
    )
    leaks = [p for p in run_dir.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert leaks == []


def test_sample_rows_keep_finite_numbers_only() -> None:
    record = {
        "time": 110.0,
        "attempt": 0,
        "step": 7,
        "steps_per_s": None,
        "metrics": {"loss": 0.5, "bad": float("nan"), "flag": True},
        "gpus": [{"index": 0, "power_w": 80.0, "memory_used_bytes": 2e9, "lost": False}],
        "host": {"disks": [{"roles": ["run", "checkpoints"], "free_bytes": 5e9}]},
    }
    assert sample_row(record, 100.0) == {
        "time/elapsed_s": 10.0,
        "agent/attempt": 0,
        "train/step": 7,
        "train/loss": 0.5,
        "gpu/0/power_w": 80.0,
        "gpu/0/memory_used_gb": 2.0,
        "gpu/0/lost": 0,
        "host/run_free_gb": 5.0,
        "host/checkpoints_free_gb": 5.0,
    }


def test_the_spec_names_the_key_as_a_secret_only_when_online() -> None:
    online = JobSpec(name="j", command="python t.py", wandb={"enabled": True})
    assert [(s.name, s.required) for s in online.secrets] == [("WANDB_API_KEY", False)]
    offline = JobSpec(name="j", command="python t.py", wandb={"enabled": True, "mode": "offline"})
    assert offline.secrets == [] and offline.wandb.project is None
    declared = JobSpec(
        name="j", command="python t.py", secrets=["WANDB_API_KEY"], wandb={"enabled": True}
    )
    assert [(s.name, s.required) for s in declared.secrets] == [("WANDB_API_KEY", True)]
    assert JobSpec(name="j", command="python t.py").wandb.enabled is False
    argv = mirror_argv(Path("/r"), online.wandb, job="j")
    assert argv[3:] == ["/r", "--project", "j", "--mode", "online", "--agent"]
    with pytest.raises(SpecError, match=r"j.yaml: wandb.projct: unknown field \(did you mean"):
        parse_job({"command": "x", "wandb": {"projct": "p"}}, path=Path("j.yaml"))
    with pytest.raises(SpecError, match=r"wandb\.mode: Input should be 'online' or 'offline'"):
        parse_job({"command": "x", "wandb": {"mode": "on"}}, path=Path("j.yaml"))


@pytest.mark.slow
def test_sigterm_ends_the_mirror_after_a_last_read(tmp_path: Path) -> None:
    from runner.rundir import SampleLog, Status

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    now = time.time()
    Status("running", "loop", 1, now, now - 5).write(run_dir)
    SampleLog(run_dir).append({"time": now - 1, "attempt": 0, "step": 4, "metrics": {"loss": 0.25}})
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(WANDB_DIR=str(run_dir), WANDB_SILENT="true")
    argv = mirror_argv(run_dir, WandbSpec(enabled=True, mode="offline"), job="loop")
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (run_dir / STATE_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        SampleLog(run_dir).append({"time": now, "attempt": 0, "step": 5, "metrics": {"loss": 0.2}})
        proc.terminate()  # the run is not over: only the signal ends it
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
    rows = read_wandb_file(the_wandb_file(run_dir)).rows
    assert [(r["train/step"], r["train/loss"]) for r in rows if "train/step" in r] == [
        (4, 0.25),
        (5, 0.2),
    ]

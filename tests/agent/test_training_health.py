"""Training that really goes wrong under the real Supervisor: NaN loss, explosion, slowdown.

A real loop (``scripts/diverge.py``) reports through :mod:`runner.harness` or
only prints ``step N loss X grad Y`` lines read with a progress pattern; the
real detectors (:func:`runner.agent.detectors.default_detectors`) watch it.
Each test asserts the event, its evidence (the first bad step, the checkpoint
to resume from) and what the agent did; a healthy run raises none of them.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from runner.agent.supervisor import EXIT_STOPPED, Supervisor, SupervisorResult
from runner.harness import latest_checkpoint
from runner.rundir import Event, read_events, read_samples
from runner.spec import JobSpec, RestartPolicy, WatchdogSpec

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).parent / "scripts"
DIVERGE = str(SCRIPTS / "diverge.py")
SPEC = WatchdogSpec(
    sample_interval_s=0.2,
    history_interval_s=0.2,
    stall_min_s=5,
    confirm_s=2,
    startup_timeout_s=60,
    throughput_window_s=1.5,
)
TRAINING_KINDS = {"loss_nan", "loss_explosion", "grad_explosion", "throughput_drop"}
PATTERN = r"step (?P<step>\d+) loss (?P<loss>\S+) grad (?P<grad_norm>\S+)"


class Run:
    def __init__(self, result: SupervisorResult, run_dir: Path, elapsed: float) -> None:
        self.result = result
        self.run_dir = run_dir
        self.events = read_events(run_dir)
        self.elapsed = elapsed

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def one(self, kind: str) -> Event:
        found = [e for e in self.events if e.kind == kind]
        assert len(found) == 1, f"{kind} {len(found)} times in {self.kinds}"
        return found[0]


def supervise(root: Path, argv: Sequence[str], **kwargs: Any) -> Run:
    run_dir = root / "run"
    kwargs.setdefault("watchdog", SPEC)
    kwargs.setdefault("restart_delay_s", 0.1)
    kwargs.setdefault("kill_grace_s", 5.0)
    kwargs.setdefault("restart", RestartPolicy(max_restarts=2))
    supervisor = Supervisor(
        list(argv), run_dir=run_dir, stdout=io.BytesIO(), stderr=io.BytesIO(), **kwargs
    )
    started = time.monotonic()
    result = supervisor.run()
    return Run(result, run_dir, time.monotonic() - started)


def no_gpus() -> Any:
    from runner.sampling.sample import NoGpus

    return NoGpus()


def _strict_json(path: Path) -> None:
    """Every line / the file is JSON that strict readers accept (no bare NaN)."""
    text = path.read_text()
    for line in text.splitlines() if path.suffix == ".jsonl" else [text]:
        if line.strip():
            json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in {path.name}"))


def test_nan_loss_stops_without_a_restart_naming_the_first_bad_step_and_checkpoint(
    tmp_path: Path,
) -> None:
    argv = [sys.executable, DIVERGE, "--mode", "nan", "--steps", "60", "--at", "10"]
    run = supervise(
        tmp_path, [*argv, "--save-every", "4", "--step-s", "0.05"], gpu_source=no_gpus()
    )
    nan = run.one("loss_nan")
    assert (nan.severity, nan.action) == ("critical", "stop")
    ev = nan.evidence
    # The harness remembers the first bad step even when the agent's tick skipped it.
    assert (ev["first_bad_step"], ev["last_good_step"], ev["checkpoint_step"]) == (10, 9, 8)
    assert ev["metric"] == "loss" and ev["value"] == "nan" and ev["source"] == "harness"
    assert "from step 10" in nan.message and "checkpoint is step 8" in nan.message
    # Stopped, not restarted: a resume would diverge again; the checkpoints stay.
    assert "restart" not in run.kinds and run.kinds.count("started") == 1
    assert (run.result.state, run.result.exit_code) == ("stopped", EXIT_STOPPED)
    ck = latest_checkpoint(run.run_dir / "checkpoints")
    assert ck is not None and ck.step == 8  # the run's work is there to resume from
    for name in ("status.json", "samples.jsonl", "events.jsonl"):
        _strict_json(run.run_dir / name)
    late = [s for s in read_samples(run.run_dir) if (s["step"] or 0) >= 10]
    assert late and all("loss" not in s["metrics"] for s in late)  # finite metrics only


def test_nan_from_the_progress_pattern_without_the_harness(tmp_path: Path) -> None:
    job = JobSpec(
        name="nanjob",
        command=["python", "train.py"],
        progress={"pattern": PATTERN},
        resources={"gpus": 0},
    )
    argv = [sys.executable, DIVERGE, "--mode", "nan", "--no-harness", "--steps", "60"]
    run = supervise(
        tmp_path, [*argv, "--at", "7", "--step-s", "0.05"], job=job, gpu_source=no_gpus()
    )
    ev = run.one("loss_nan").evidence
    assert (ev["first_bad_step"], ev["last_good_step"], ev["source"]) == (7, 6, "log")
    assert run.result.exit_code == EXIT_STOPPED and "restart" not in run.kinds


def test_gradient_explosion_is_a_warning_with_the_baseline(tmp_path: Path) -> None:
    spec = SPEC.model_copy(update={"explosion_warmup": 5})
    argv = [sys.executable, DIVERGE, "--mode", "explode", "--steps", "18", "--at", "12"]
    run = supervise(tmp_path, [*argv, "--step-s", "0.25"], watchdog=spec, gpu_source=no_gpus())
    grad = run.one("grad_explosion")
    assert grad.severity == "warning" and grad.action == "none"
    ev = grad.evidence
    assert ev["baseline_median"] == pytest.approx(1.0, abs=0.15) and ev["value"] >= 100
    assert 12 + spec.explosion_hold_steps - 1 <= ev["step"] <= 16
    assert run.one("loss_explosion").evidence["step"] >= 14
    assert (run.result.state, run.result.exit_code) == ("finished", 0)  # a warning only


def test_throughput_drop_against_the_runs_own_steady_rate(tmp_path: Path) -> None:
    argv = [sys.executable, DIVERGE, "--mode", "slow", "--steps", "96", "--at", "90"]
    run = supervise(tmp_path, [*argv, "--step-s", "0.05", "--slow-s", "0.5"], gpu_source=no_gpus())
    drop = run.one("throughput_drop")
    ev = drop.evidence
    assert drop.severity == "warning" and ev["window_s"] == 1.5
    assert ev["steady_steps_per_s"] > 10 and ev["fraction"] < 0.3 and ev["step"] >= 91
    assert (run.result.state, run.result.exit_code) == ("finished", 0)
    assert not {"loss_nan", "grad_explosion", "loss_explosion"} & set(run.kinds)


def test_a_healthy_run_raises_no_training_event(tmp_path: Path) -> None:
    argv = [sys.executable, str(SCRIPTS / "train_loop.py"), "--steps", "60", "--step-s", "0.05"]
    run = supervise(tmp_path, [*argv, "--save-every", "20"], gpu_source=no_gpus())
    assert (run.result.state, run.result.exit_code) == ("finished", 0)
    assert not TRAINING_KINDS & set(run.kinds), run.kinds

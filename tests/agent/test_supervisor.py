"""The supervisor with real processes and scripted detectors: what it runs, keeps, does and says.

The end-to-end failures with the real detectors are in ``test_failures.py``;
here each detector is a small script that raises the event a test needs, so
every path of the supervisor (dump, restart, stop, budgets, exit codes) is
exercised on its own.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from runner.agent.logs import AttemptLog
from runner.agent.observe import Observation
from runner.agent.restart import RestartBudget, current_value, guess_style, halve, set_override
from runner.agent.stacks import find_py_spy
from runner.agent.supervisor import EXIT_BAD_HOST, EXIT_STOPPED, Supervisor, SupervisorResult
from runner.cli import main
from runner.errors import RunnerError
from runner.rundir import Action, Event, read_events, read_samples, read_status
from runner.sampling.nvml import Nvml
from runner.sampling.trace import FakeNvml, Scenario
from runner.spec import JobSpec, RestartPolicy, WatchdogSpec

SCRIPTS = Path(__file__).parent / "scripts"
LOOP = str(SCRIPTS / "train_loop.py")
FAST = WatchdogSpec(sample_interval_s=0.1, stall_min_s=3, confirm_s=2, startup_timeout_s=30)


class Scripted:
    """A detector that raises one event when ``when(obs)`` first holds in an attempt."""

    def __init__(
        self,
        when: Callable[[Observation], bool],
        kind: str = "stall",
        action: Action = "restart",
        *,
        attempts: Sequence[int] | None = None,
        severity: str = "critical",
    ) -> None:
        self.name = f"scripted_{kind}"
        self.when = when
        self.kind = kind
        self.action = action
        self.attempts = attempts
        self.severity = severity
        self.fired: set[int] = set()

    def observe(self, obs: Observation) -> Sequence[Event]:
        if obs.attempt in self.fired or (
            self.attempts is not None and obs.attempt not in self.attempts
        ):
            return []
        if not self.when(obs):
            return []
        self.fired.add(obs.attempt)
        return [
            Event(
                self.kind,
                self.severity,  # type: ignore[arg-type]
                f"{self.kind} at step {obs.progress.step}",
                evidence={"step": obs.progress.step},
                action=self.action,
            )
        ]


def silent_for(seconds: float) -> Callable[[Observation], bool]:
    def when(obs: Observation) -> bool:
        last = obs.progress.last_step_time
        return obs.alive and last is not None and obs.now - last > seconds

    return when


def at_step(step: int) -> Callable[[Observation], bool]:
    return lambda obs: obs.alive and (obs.progress.step or 0) >= step


class Explodes:
    name = "explodes"

    def __init__(self) -> None:
        self.calls = 0

    def observe(self, obs: Observation) -> Sequence[Event]:
        self.calls += 1
        raise ZeroDivisionError("a detector bug")


def supervise(
    tmp_path: Path, argv: list[str], **kwargs: Any
) -> tuple[SupervisorResult, list[Event], bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    kwargs.setdefault("watchdog", FAST)
    kwargs.setdefault("detectors", [])
    kwargs.setdefault("restart_delay_s", 0.05)
    kwargs.setdefault("kill_grace_s", 3.0)
    kwargs.setdefault("gpu_source", None)
    run_dir = kwargs.pop("run_dir", tmp_path / "run")
    supervisor = Supervisor(argv, run_dir=run_dir, stdout=out, stderr=err, **kwargs)
    result = supervisor.run()
    return result, read_events(run_dir), out.getvalue(), err.getvalue()


def kinds(events: Sequence[Event]) -> list[str]:
    return [e.kind for e in events]


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# --------------------------------------------------------------------------- running


def test_finished_run_passes_output_through_keeps_it_and_reports(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "print('to stdout', os.environ['RUNNER_RUN_DIR'], os.environ['PYTHONUNBUFFERED'])\n"
        "print('to stderr', file=sys.stderr)\n"
    )
    secret = "hf_" + "A" * 30
    result, events, out, err = supervise(
        tmp_path, py(code), extra_env={"HF_TOKEN": secret, "MY_FLAG": "1"}
    )
    run = tmp_path / "run"
    assert result == SupervisorResult(0, "finished", result.summary, attempts=1, restarts=0)
    assert result.summary == "finished (exit code 0); 0 restarts used, no checkpoint"
    assert kinds(events) == ["started", "exited", "finished"]
    assert events[0].evidence["pid"] > 0 and events[0].evidence["log"] == "logs/attempt-0.log"
    assert out.decode() == f"to stdout {run} 1\n" and err.decode() == "to stderr\n"
    log = (run / "logs" / "attempt-0.log").read_text()
    assert "to stdout" in log and "to stderr" in log
    status = read_status(run)
    assert status is not None and status.state == "finished" and status.exit_code == 0
    assert status.summary == result.summary and status.last_event["kind"] == "finished"
    assert status.agent_pid == os.getpid() and status.agent_time >= status.started
    # The environment is never written down, secrets least of all.
    for name in ("events.jsonl", "status.json", "logs/attempt-0.log"):
        assert secret not in (run / name).read_text()


def test_command_that_cannot_start_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(RunnerError) as caught:
        supervise(tmp_path, ["/nonexistent/train"])
    assert str(caught.value) == "cannot start '/nonexistent/train': No such file or directory"
    assert caught.value.exit_code == 127
    assert kinds(read_events(tmp_path / "run")) == ["failed"]


def test_attempts_continue_their_numbering_in_the_same_run_folder(tmp_path: Path) -> None:
    supervise(tmp_path, py("print('one')"))
    result, events, _, _ = supervise(tmp_path, py("print('two')"))
    assert result.exit_code == 0
    assert [e.attempt for e in events if e.kind == "started"] == [0, 1]
    assert (tmp_path / "run" / "logs" / "attempt-0.log").read_text() == "one\n"
    assert (tmp_path / "run" / "logs" / "attempt-1.log").read_text() == "two\n"


def test_progress_reaches_status(tmp_path: Path) -> None:
    result, _, out, _ = supervise(
        tmp_path, [sys.executable, LOOP, "--steps", "12", "--step-s", "0.05", "--save-every", "4"]
    )
    assert result.exit_code == 0 and b"done" in out
    status = read_status(tmp_path / "run")
    assert status is not None
    assert (status.step, status.checkpoint_step, status.phase) == (12, 12, "done")
    assert status.steps_per_s is not None and status.steps_per_s > 1
    assert (
        result.summary
        == "finished at step 12 (exit code 0); 0 restarts used, newest checkpoint step 12"
    )


def test_health_history_is_recorded_for_the_report(tmp_path: Path) -> None:
    watchdog = FAST.model_copy(update={"history_interval_s": 0.3})
    result, _, _, _ = supervise(
        tmp_path,
        [sys.executable, LOOP, "--steps", "30", "--step-s", "0.05", "--save-every", "10"],
        watchdog=watchdog,
    )
    assert result.exit_code == 0
    samples = read_samples(tmp_path / "run")
    # One record per 0.3 s of a run of >= 1.5 s (not one per 0.1 s tick), plus the final one.
    times = [s["time"] for s in samples]
    assert len(samples) >= 4 and times == sorted(times)
    gaps = [b - a for a, b in itertools.pairwise(times[:-1])]
    assert min(gaps) >= 0.29, gaps
    steps = [s["step"] for s in samples if s["step"] is not None]
    assert steps == sorted(steps) and steps[-1] == 30
    assert samples[-1]["state"] == "finished"  # the final record is written at the end
    losses = [s["metrics"]["loss"] for s in samples if "loss" in s["metrics"]]
    # The script's loss is 1/step: each record carries the loss of a step it saw.
    assert len(losses) >= 2 and losses == sorted(losses, reverse=True)
    assert all(abs(1 / x - round(1 / x)) < 1e-6 and round(1 / x) <= 30 for x in losses)
    assert samples[0]["state"] == "starting" and samples[0]["step"] is None
    assert all(s["state"] == "running" for s in samples[1:-1])


def test_visible_gpus_only_are_watched(tmp_path: Path) -> None:
    fake = FakeNvml(Scenario("healthy", gpus=3), clock=time.monotonic)
    uuid = fake.timeline.state(1, 0.0).uuid
    assert uuid is not None
    supervise(
        tmp_path,
        py("import time; time.sleep(0.5)"),
        gpu_source=Nvml(fake),
        extra_env={"CUDA_VISIBLE_DEVICES": uuid},
    )
    status = read_status(tmp_path / "run")
    assert status is not None and [g["index"] for g in status.gpus] == [1]


# --------------------------------------------------------------------------- detectors


def test_a_detector_that_raises_is_an_event_and_the_agent_goes_on(tmp_path: Path) -> None:
    boom = Explodes()
    result, events, _, _ = supervise(tmp_path, py("import time; time.sleep(1)"), detectors=[boom])
    assert result.exit_code == 0 and boom.calls >= 5
    errors = [e for e in events if e.kind == "detector_error"]
    assert len(errors) == 1  # reported once, still called every tick
    assert errors[0].severity == "warning" and errors[0].evidence["detector"] == "explodes"
    assert errors[0].message.startswith(
        "detector explodes failed: ZeroDivisionError: a detector bug at test_supervisor.py:"
    )
    assert "Traceback" in errors[0].evidence["traceback"]


@pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed")
def test_dump_action_takes_stacks_and_the_run_goes_on(tmp_path: Path) -> None:
    result, events, _, _ = supervise(
        tmp_path,
        [sys.executable, LOOP, "--steps", "30", "--step-s", "0.05"],
        detectors=[Scripted(at_step(5), "zombie_workers", "dump")],
    )
    assert result.exit_code == 0 and result.restarts == 0
    assert kinds(events) == ["started", "zombie_workers", "stack_dump", "exited", "finished"]
    dump = events[2]
    assert (
        dump.evidence["trigger"] == "zombie_workers"
        and dump.evidence["dir"] == "stacks/001-zombie_workers"
    )
    [file] = dump.evidence["files"]
    assert f"    main ({LOOP}:" in (tmp_path / "run" / file).read_text()
    assert result.summary.endswith(
        "stacks in " + str(tmp_path / "run" / "stacks" / "001-zombie_workers")
    )


@pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed")
def test_restart_action_dumps_kills_the_group_and_resumes(tmp_path: Path) -> None:
    # A grandchild in the job's group must die with it.
    argv = [
        sys.executable,
        LOOP,
        "--steps",
        "20",
        "--step-s",
        "0.05",
        "--save-every",
        "5",
        "--freeze-at",
        "7",
        "--once",
    ]
    policy = RestartPolicy(resume_args=["resume=true"])
    result, events, out, _ = supervise(
        tmp_path, argv, detectors=[Scripted(silent_for(1.0))], restart=policy
    )
    assert result.exit_code == 0 and result.state == "finished"
    assert (result.attempts, result.restarts) == (2, 1)
    assert kinds(events) == [
        "started",
        "stall",
        "stack_dump",
        "exited",
        "restart",
        "started",
        "exited",
        "finished",
    ]
    dump, exited, restart, again = events[2], events[3], events[4], events[5]
    assert "wait_for_a_signal_that_never_comes" in dump.message
    assert exited.evidence["by_agent"] is True and exited.evidence["exit_code"] == 128 + 15
    assert restart.evidence["checkpoint_step"] == 5 and restart.action == "restart"
    assert "resuming from checkpoint step 5" in restart.message
    assert again.evidence["command"].endswith("--once resume=true")
    assert again.evidence["checkpoint_step"] == 5 and again.attempt == 1
    assert b"resumed from step 5" in out
    assert result.summary == (
        f"finished at step 20 (exit code 0); 1 restart used, newest checkpoint step 20; "
        f"stacks in {tmp_path / 'run' / 'stacks' / '001-stall'}"
    )


def test_stop_action_kills_and_does_not_restart(tmp_path: Path) -> None:
    result, events, _, _ = supervise(
        tmp_path,
        [sys.executable, LOOP, "--steps", "1000", "--step-s", "0.05"],
        detectors=[Scripted(at_step(3), "disk_full", "stop")],
    )
    assert (result.exit_code, result.state, result.attempts) == (EXIT_STOPPED, "stopped", 1)
    assert kinds(events)[-3:] == ["stack_dump", "exited", "stopped"] or kinds(events)[-2:] == [
        "exited",
        "stopped",
    ]
    assert result.summary.startswith("stopped: disk_full at step ")
    status = read_status(tmp_path / "run")
    assert status is not None and status.state == "stopped" and status.exit_code == EXIT_STOPPED


def test_bad_host_stops_with_its_own_exit_code(tmp_path: Path) -> None:
    result, events, _, _ = supervise(
        tmp_path,
        [sys.executable, LOOP, "--steps", "1000", "--step-s", "0.05"],
        detectors=[Scripted(at_step(2), "xid", "stop")],
        watchdog=FAST.model_copy(update={"stack_dumps": False}),
    )
    assert (result.exit_code, result.state, result.bad_host) == (EXIT_BAD_HOST, "stopped", True)
    assert kinds(events) == ["started", "xid", "exited", "stopped"]
    assert "bad host" in result.summary and "move the job to another machine" in result.summary
    assert events[-1].evidence["bad_host"] is True


class Interrupts:
    name = "interrupts"

    def observe(self, obs: Observation) -> Sequence[Event]:
        if (obs.progress.step or 0) >= 3:
            raise KeyboardInterrupt
        return []


def test_an_agent_that_dies_takes_the_job_with_it(tmp_path: Path) -> None:
    # Not an Exception, so not a detector_error: the agent's own end. The job
    # must not train on unsupervised.
    with pytest.raises(KeyboardInterrupt):
        supervise(
            tmp_path,
            [sys.executable, LOOP, "--steps", "1000", "--step-s", "0.05"],
            detectors=[Interrupts()],
        )
    pid = read_events(tmp_path / "run")[0].evidence["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --------------------------------------------------------------------------- exits by itself


def test_failure_is_restarted_until_the_window_budget_is_spent(tmp_path: Path) -> None:
    policy = RestartPolicy(max_restarts=2, window_minutes=30, max_without_checkpoint=10)
    result, events, _, _ = supervise(tmp_path, py("import sys; sys.exit(5)"), restart=policy)
    assert (result.exit_code, result.state, result.attempts, result.restarts) == (
        5,
        "stopped",
        3,
        2,
    )
    assert kinds(events).count("restart") == 2
    assert result.summary == (
        "stopped: exited with code 5; restart budget spent (2 restarts within 30 min); "
        "2 restarts used, no checkpoint"
    )


def test_restarts_off_returns_the_commands_own_code(tmp_path: Path) -> None:
    policy = RestartPolicy(max_restarts=0)
    result, _, _, _ = supervise(tmp_path, py("import sys; sys.exit(7)"), restart=policy)
    assert (result.exit_code, result.attempts) == (7, 1)
    assert "restarts are off" in result.summary


def test_a_crash_by_signal_is_restarted(tmp_path: Path) -> None:
    policy = RestartPolicy(max_restarts=1)
    result, events, _, _ = supervise(tmp_path, py("import os; os.abort()"), restart=policy)
    assert (result.exit_code, result.attempts) == (128 + signal.SIGABRT, 2)
    assert "killed by SIGABRT" in events[1].message


def test_a_kill_from_outside_is_not_restarted(tmp_path: Path) -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    result, events, _, _ = supervise(tmp_path, py(code))
    assert (result.exit_code, result.state, result.attempts) == (137, "failed", 1)
    assert "killed by SIGKILL from outside the agent" in result.summary
    assert kinds(events) == ["started", "exited", "failed"]


def test_rejected_arguments_are_not_restarted(tmp_path: Path) -> None:
    result, _, _, err = supervise(tmp_path, [sys.executable, LOOP, "--no-such-flag"])
    assert (result.exit_code, result.state, result.attempts) == (2, "failed", 1)
    assert b"unrecognized arguments: --no-such-flag" in err
    assert "rejected its arguments" in result.summary


# --------------------------------------------------------------------------- OOM


class OomLine:
    name = "oom_line"

    def observe(self, obs: Observation) -> Sequence[Event]:
        hits = [line for line in obs.log_lines if "out of memory" in line]
        return (
            [Event("oom", "critical", f"CUDA out of memory: {hits[0][:60]}", action="stop")]
            if hits
            else []
        )


OOM_ENV = (
    "import os, sys\n"
    "batch = int(os.environ['BATCH_SIZE'])\n"
    "print('batch', batch, 'resume', os.environ.get('RESUME'), flush=True)\n"
    "if batch > 8:\n"
    "    print('torch.OutOfMemoryError: CUDA out of memory.', file=sys.stderr, flush=True)\n"
    "    sys.exit(1)\n"
)


def _env_job(**restart: Any) -> JobSpec:
    return JobSpec(
        name="envjob",
        command=["python", "-c", OOM_ENV],
        overrides={"style": "env"},
        restart=RestartPolicy(**restart),
    )


def test_oom_with_reduce_batch_env_style_halves_the_variable(tmp_path: Path) -> None:
    job = _env_job(on_oom="reduce_batch", batch_override="BATCH_SIZE", resume_args=["RESUME=true"])
    result, events, out, _ = supervise(
        tmp_path, job.command, job=job, extra_env={"BATCH_SIZE": "32"}, detectors=[OomLine()]
    )
    # 32 -> 16 -> 8: once per OOM, each a restart with RESUME=true.
    assert out.decode().splitlines() == [
        "batch 32 resume None",
        "batch 16 resume true",
        "batch 8 resume true",
    ]
    assert (result.exit_code, result.state, result.restarts) == (0, "finished", 2)
    started = [e for e in events if e.kind == "started"]
    assert started[1].message.endswith("batch halved after OOM: BATCH_SIZE 32 -> 16")
    assert "batch halved 2x after OOM" in result.summary


def test_oom_with_stop_is_not_retried(tmp_path: Path) -> None:
    job = _env_job()
    result, events, _, _ = supervise(
        tmp_path, job.command, job=job, extra_env={"BATCH_SIZE": "32"}, detectors=[OomLine()]
    )
    assert (result.exit_code, result.state, result.attempts) == (1, "stopped", 1)
    assert "not retried unchanged" in result.summary
    assert "restart" not in kinds(events)


# --------------------------------------------------------------------------- stopping


def test_request_stop_ends_the_run_without_restart(tmp_path: Path) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    supervisor = Supervisor(
        [sys.executable, LOOP, "--steps", "1000", "--step-s", "0.05"],
        run_dir=tmp_path / "run",
        watchdog=FAST,
        detectors=[],
        stdout=out,
        stderr=err,
    )
    threading.Timer(1.0, supervisor.request_stop, args=("stopped by the test",)).start()
    result = supervisor.run()
    assert (result.state, result.exit_code, result.attempts) == ("stopped", 128 + 15, 1)
    assert result.summary.startswith("stopped: stopped by the test;")


@pytest.mark.slow
def test_ctrl_c_reaches_the_job_and_stops_the_run(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "runner"),
            "agent",
            "run",
            "--run-dir",
            str(tmp_path / "run"),
            "--",
            sys.executable,
            LOOP,
            "--steps",
            "1000",
            "--step-s",
            "0.05",
        ],
        env=subprocess_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    while "step 3/" not in proc.stdout.readline():
        pass
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT  # the job's own answer to SIGINT
    assert (
        err.strip().splitlines()[-1].startswith("error: stopped: stopped by SIGINT from the user;")
    )
    assert kinds(read_events(tmp_path / "run"))[-1] == "stopped"


# --------------------------------------------------------------------------- the CLI


def test_agent_run_cli_prints_events_and_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["agent", "run", "--run-dir", str(tmp_path / "run"), "--", *py("print('hello')")])
    assert code == 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines[0] == f"agent: run folder {tmp_path / 'run'}"
    assert lines[1].startswith("agent: started: attempt 0 started: pid ")
    assert lines[2].startswith(
        "agent: exited: training process exited with code 0, before its first step"
    )
    assert lines[3] == "agent: finished (exit code 0); 0 restarts used, no checkpoint"


def test_agent_run_cli_failure_is_one_error_with_the_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "quick.yaml").write_text(
        "name: quick\ncommand: python -c 'import sys; sys.exit(9)'\n"
        "restart: {max_restarts: 1}\nresources: {gpus: 0}\n"
    )
    monkeypatch.setenv("RUNNER_JOBS_DIR", str(jobs))
    monkeypatch.setenv("RUNNER_RUNS_DIR", str(tmp_path / "runs"))
    assert main(["agent", "run", "--job", "quick"]) == 9
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "error: stopped: exited with code 9; restart budget spent (1 restarts within 30 min); "
        "1 restart used, no checkpoint"
    )
    assert sum(line.startswith("error:") for line in err) == 1
    assert (tmp_path / "runs" / "quick" / "events.jsonl").is_file()


def test_agent_run_cli_needs_something_to_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "run"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: nothing to run: pass --job NAME or a command after --"
    )


# --------------------------------------------------------------------------- parts


def test_restart_budget_window_and_crash_loop() -> None:
    now = [0.0]
    budget = RestartBudget(
        RestartPolicy(max_restarts=3, window_minutes=1, max_without_checkpoint=2),
        clock=lambda: now[0],
    )
    assert budget.ask(None).allowed and budget.ask(None).allowed
    verdict = budget.ask(None)
    assert (
        not verdict.allowed and verdict.reason == "crash loop: 2 restarts without a new checkpoint"
    )
    assert budget.ask(100).allowed  # a new checkpoint resets the streak
    verdict = budget.ask(200)
    assert (
        not verdict.allowed and verdict.reason == "restart budget spent (3 restarts within 1 min)"
    )
    now[0] = 61.0  # the window moved on
    assert budget.ask(300).allowed and budget.used == 4


@pytest.mark.parametrize(
    ("argv", "env", "style", "expected_argv", "expected_env"),
    [
        (["t.py", "training.batch_size=16"], {}, "hydra", ["t.py", "training.batch_size=8"], {}),
        (
            ["t.py", "++training.batch_size=16"],
            {},
            "hydra",
            ["t.py", "++training.batch_size=8"],
            {},
        ),
        (["t.py"], {}, "hydra", ["t.py", "training.batch_size=8"], {}),
        (["t", "--batch_size=16"], {}, "cli", ["t", "--batch_size=8"], {}),
        (["t", "--batch-size", "16"], {}, "cli", ["t", "--batch-size", "8"], {}),
        (["t"], {"BATCH_SIZE": "16"}, "env", ["t"], {"BATCH_SIZE": "8"}),
    ],
)
def test_set_override(
    argv: list[str],
    env: dict[str, str],
    style: Any,
    expected_argv: list[str],
    expected_env: dict[str, str],
) -> None:
    key = (
        "BATCH_SIZE"
        if style == "env"
        else "training.batch_size"
        if style == "hydra"
        else "batch_size"
    )
    value = current_value(argv, env, key, style)
    assert value in (None, "16")
    assert set_override(argv, env, key, "8", style) == (expected_argv, expected_env)


def test_guess_style_and_halve() -> None:
    assert guess_style(["t", "a.b=1"], {}, "a.b") == "hydra"
    assert guess_style(["t", "--bs", "4"], {}, "bs") == "cli"
    assert guess_style(["t"], {"BS": "4"}, "BS") == "env"
    assert [halve(v) for v in ("16", "3", "1", "x", None)] == [8, 1, None, None, None]


def test_attempt_log_rotates_and_splits_lines(tmp_path: Path) -> None:
    read, write = os.pipe()
    sink = io.BytesIO()
    log = AttemptLog(
        tmp_path / "logs" / "attempt-0.log", passthrough={"stdout": sink}, max_bytes=100
    )
    log.attach("stdout", os.fdopen(read, "rb"))
    with os.fdopen(write, "wb") as w:
        for i in range(20):
            w.write(f"line {i:02d} {'x' * 20}\n".encode())
        w.write(b"progress 1\rprogress 2\rno newline at the end")
    assert log.join(5.0)
    log.close()
    lines = log.lines()
    assert lines[0] == "line 00 " + "x" * 20 and lines[-3:] == [
        "progress 1",
        "progress 2",
        "no newline at the end",
    ]
    assert len(sink.getvalue()) == log.total_bytes  # every byte passed through
    current = (tmp_path / "logs" / "attempt-0.log").read_bytes()
    older = (tmp_path / "logs" / "attempt-0.log.1").read_bytes()
    assert len(current) <= 100 and len(older) <= 100
    assert current.endswith(b"no newline at the end\n")
    assert json.dumps(lines)  # plain strings


def test_the_step_rate_shown_falls_while_no_step_comes() -> None:
    from runner.agent.supervisor import _current_rate

    # 20 steps/s, last step 0.05 s ago: the rate stands (a normal gap between steps).
    assert _current_rate(20.0, 100.0, 100.05) == 20.0
    # Frozen for 4 s: at most one step in 4 s, not the old 20 steps/s; and it keeps falling.
    assert _current_rate(20.0, 100.0, 104.0) == pytest.approx(0.25)
    assert _current_rate(20.0, 100.0, 200.0) == pytest.approx(0.01)
    # A slow job (one step per 10 s) mid-step keeps its rate.
    assert _current_rate(0.1, 100.0, 115.0) == 0.1
    assert _current_rate(None, 100.0, 200.0) is None

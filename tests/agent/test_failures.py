"""The failures users lost weeks to, each made to really happen under the agent.

Real processes that really fail (a DataLoader whose workers deadlock, a loop
that blocks, a zombie, a disk that fills, a crash loop), the real detectors
(:func:`runner.agent.detectors.default_detectors`), and for the GPU-side
failures a fake NVML timeline beside a real training process. Each test
asserts the event, its evidence (for a hang: a stack dump naming the blocking
frame) and what the agent did. Thresholds are small (``SPEC``) so the whole
file runs in a couple of minutes.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from runner.agent.stacks import find_py_spy
from runner.agent.supervisor import EXIT_BAD_HOST, EXIT_STOPPED, Supervisor, SupervisorResult
from runner.rundir import Event, read_events, read_status
from runner.sampling.nvml import Nvml
from runner.sampling.trace import FakeNvml, OnsetTimeline, Scenario
from runner.spec import JobSpec, RestartPolicy, WatchdogSpec, load_job

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed"),
]

SCRIPTS = Path(__file__).parent / "scripts"
LOOP = str(SCRIPTS / "train_loop.py")
SPEC = WatchdogSpec(
    sample_interval_s=0.2,
    stall_min_s=3,
    confirm_s=2,
    startup_timeout_s=60,
    checkpoint_timeout_s=8,
    power_collapse_s=2,
    thermal_window_s=2,
)


class Run:
    """One supervised run and what it left in its folder."""

    def __init__(self, result: SupervisorResult, run_dir: Path, out: bytes, err: bytes) -> None:
        self.result = result
        self.run_dir = run_dir
        self.out = out.decode(errors="replace")
        self.err = err.decode(errors="replace")
        self.events = read_events(run_dir)

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def one(self, kind: str, severity: str | None = None) -> Event:
        found = [
            e
            for e in self.events
            if e.kind == kind and (severity is None or e.severity == severity)
        ]
        assert found, f"no {kind} event in {self.kinds}"
        return found[0]

    def in_order(self, *expected: str) -> None:
        """``expected`` appear in this order (other events may come between)."""
        it = iter(self.kinds)
        missing = [k for k in expected if k not in it]
        assert not missing, f"{expected} not in order in {self.kinds}"

    def warnings(self) -> list[Event]:
        return [e for e in self.events if e.severity != "info"]

    def stack_text(self, dump: Event) -> str:
        return "\n".join((self.run_dir / f).read_text() for f in dump.evidence["files"])


def _mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a private tmpfs at ``path``; why not, or None when mounted."""
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


@pytest.fixture
def run_root(tmp_path: Path) -> Iterator[Path]:
    """Where run folders go: a private tmpfs when this machine lets us mount one.

    The detectors read fast growth of the checkpoint disk as a save in progress,
    which rightly holds back a stall verdict; on a shared CI disk (or /dev/shm,
    where every DataLoader on the machine writes) other processes' writes make
    that growth frequent and the confirmed paths flaky. A disk of its own has
    only the run's writes.
    """
    path = tmp_path / "runs"
    path.mkdir()
    if _mount_tmpfs(path, "512m") is not None:
        yield path
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def supervise(root: Path, argv: Sequence[str], **kwargs: Any) -> Run:
    out, err = io.BytesIO(), io.BytesIO()
    run_dir = kwargs.pop("run_dir", root / "run")
    kwargs.setdefault("watchdog", SPEC)
    kwargs.setdefault("restart_delay_s", 0.1)
    kwargs.setdefault("kill_grace_s", 5.0)
    supervisor = Supervisor(list(argv), run_dir=run_dir, stdout=out, stderr=err, **kwargs)
    started = time.monotonic()
    result = supervisor.run()
    run = Run(result, run_dir, out.getvalue(), err.getvalue())
    run.elapsed = time.monotonic() - started  # type: ignore[attr-defined]
    return run


def no_gpus() -> Any:
    from runner.sampling.sample import NoGpus

    return NoGpus()


# --------------------------------------------------------------------------- hangs


def test_dataloader_worker_deadlock_is_a_stall_with_stacks_then_a_restart(run_root: Path) -> None:
    pytest.importorskip("torch")
    run = supervise(
        run_root,
        [sys.executable, str(SCRIPTS / "dataloader_deadlock.py"), "--once"],
        gpu_source=no_gpus(),
    )
    # stall -> stacks -> killed -> restart -> the second attempt runs through.
    run.in_order("started", "stall", "stack_dump", "exited", "restart", "started", "finished")
    assert (run.result.exit_code, run.result.state, run.result.restarts) == (0, "finished", 1)
    stall = run.one("stall", "critical")
    assert stall.action == "restart" and stall.evidence["step"] == 12  # 12 batches before item 24
    assert "cpu_flat" in stall.evidence["confirmed_by"]  # a deadlock uses no CPU
    dump = run.one("stack_dump")
    assert len(dump.evidence["files"]) == 3  # the main process and both workers
    text = run.stack_text(dump)
    # The main loop waits in the DataLoader's queue get; the workers in the dataset.
    assert "_MultiProcessingDataLoaderIter._get_data" in text and "Queue.get" in text
    assert text.count("BlockingDataset.__getitem__") == 2
    users = set(dump.evidence["user_frames"].values())
    assert any(u.startswith("BlockingDataset.__getitem__ (dataloader_deadlock.py:") for u in users)
    # The line a person reads first names the frame that blocks: in a worker, not the
    # main thread's wait on the workers' queue.
    assert "blocked in BlockingDataset.__getitem__ (dataloader_deadlock.py:" in dump.message
    assert "_PollLikeSelector" not in dump.message.split("; waited for by")[0], dump.message
    blocking = dump.evidence["blocking"]
    assert blocking["pid"] != run.events[0].evidence["pid"]  # a worker, not the main process
    assert blocking["waiter_pid"] == run.events[0].evidence["pid"]
    assert "step 32" in run.out and run.out.rstrip().endswith("done")


def test_main_loop_that_stops_stepping_is_confirmed_by_no_cpu_and_stopped(run_root: Path) -> None:
    run = supervise(
        run_root,
        [sys.executable, LOOP, "--steps", "1000", "--step-s", "0.1", "--freeze-at", "12"],
        gpu_source=no_gpus(),
        restart=RestartPolicy(max_restarts=0),
    )
    run.in_order("started", "stall", "stack_dump", "exited", "stopped")
    stall = run.one("stall", "critical")
    assert stall.evidence["confirmed_by"] == ["cpu_flat"], dict(stall.evidence)
    assert stall.evidence["step"] == 12
    dump = run.one("stack_dump")
    [top] = dump.evidence["user_frames"].values()
    assert top.startswith("wait_for_a_signal_that_never_comes (train_loop.py:")
    assert "wait_for_a_signal_that_never_comes" in run.stack_text(dump)
    assert (run.result.exit_code, run.result.state) == (EXIT_STOPPED, "stopped")
    summary = run.result.summary
    assert summary == (
        f"stopped: froze at step 12 (no step for {stall.evidence['silence_s']:.0f} s, no CPU "
        "progress); restarts are off (restart.max_restarts: 0); 0 restarts used, no checkpoint; "
        f"stacks in {run.run_dir}/stacks/001-stall"
    )
    status = read_status(run.run_dir)
    assert status is not None and status.state == "stopped" and status.summary == summary


def test_restart_resumes_from_the_newest_complete_checkpoint_and_finishes(run_root: Path) -> None:
    argv = [
        sys.executable,
        LOOP,
        "--steps",
        "40",
        "--step-s",
        "0.05",
        "--save-every",
        "10",
        "--freeze-at",
        "23",
        "--once",
    ]
    run = supervise(run_root, argv, gpu_source=no_gpus())
    run.in_order(
        "started", "stall", "stack_dump", "exited", "restart", "started", "exited", "finished"
    )
    restart = run.one("restart")
    assert (
        restart.evidence["checkpoint_step"] == 20
        and "resuming from checkpoint step 20" in restart.message
    )
    second = [e for e in run.events if e.kind == "started"][1]
    assert second.evidence["checkpoint_step"] == 20
    log1 = (run.run_dir / "logs" / f"attempt-{second.attempt}.log").read_text()
    assert log1.splitlines()[0] == "resumed from step 20"
    assert "step 21/40" in log1 and log1.rstrip().endswith("done")
    assert (run.result.exit_code, run.result.state, run.result.restarts) == (0, "finished", 1)
    assert run.result.summary.startswith(
        "finished at step 40 (exit code 0); 1 restart used, newest checkpoint step 40"
    )


# --------------------------------------------------------------------------- tqdm


def test_freeze_behind_a_tqdm_bar_is_confirmed_as_fast_as_with_the_harness(
    run_root: Path, tmp_path: Path
) -> None:
    """Default thresholds, a real tqdm bar (monitor thread on), progress read from the log.

    The harness-reported freeze is confirmed ~32 s after its onset (bench_agent.py);
    a bar must not delay it (it did to 60-120 s: the last redraw was held back until
    tqdm's monitor refreshed the bar 10-20 s later, and taught a 10-20 s interval).
    """
    onset = tmp_path / "onset"
    job = JobSpec(
        name="tqdmjob",
        command=["python", "train.py"],
        progress={"pattern": r"(?P<step>\d+)/\d+ \["},
        resources={"gpus": 0},
    )
    freeze_at = 100  # 5 s of steps at 20 it/s
    argv = [
        sys.executable, str(SCRIPTS / "tqdm_loop.py"), "--step-s", "0.05",
        "--freeze-at", str(freeze_at), "--onset-file", str(onset),
    ]  # fmt: skip
    run = supervise(
        run_root,
        argv,
        job=job,
        watchdog=WatchdogSpec(),
        gpu_source=no_gpus(),
        restart=RestartPolicy(max_restarts=0),
    )
    stall = run.one("stall", "critical")
    latency = stall.time - float(onset.read_text())
    assert stall.evidence["progress"] == "log" and stall.evidence["confirmed_by"] == ["cpu_flat"]
    assert stall.evidence["step"] == freeze_at, dict(stall.evidence)
    assert stall.evidence["longest_interval_s"] < 2.0, dict(stall.evidence)
    # confirm_s is 30 s; ~32 s with the harness. 60-120 s before the fix.
    assert latency <= 40.0, (latency, dict(stall.evidence))
    assert (run.result.exit_code, run.result.state) == (EXIT_STOPPED, "stopped")
    log = (run.run_dir / "logs" / "attempt-0.log").read_bytes()
    assert f"{freeze_at}/1000 [".encode() in log  # the file has the bar's last state too


# --------------------------------------------------------------------------- the tree


def test_zombie_child_is_reported_with_its_parent(run_root: Path) -> None:
    # Zombies reaped within 15 s are normal (a worker being joined): it must outlive that.
    run = supervise(
        run_root,
        [sys.executable, LOOP, "--steps", "190", "--step-s", "0.1", "--zombie-at", "5"],
        gpu_source=no_gpus(),
    )
    zombie = run.one("zombie_workers", "warning")
    assert zombie.action == "dump"
    parent = run.events[0].evidence["pid"]
    child = int(run.out.split("forked child ")[1].split(";")[0])
    assert str(child) in zombie.message and str(parent) in zombie.message, zombie.message
    dump = run.one("stack_dump")
    assert dump.evidence["trigger"] == "zombie_workers"
    assert dump.evidence["skipped"] == {
        str(child): f"zombie: exited, not reaped by its parent {parent}"
    }
    assert "<defunct>" in (run.run_dir / dump.evidence["dir"] / "processes.txt").read_text()
    run.in_order("started", "zombie_workers", "stack_dump", "exited", "finished")
    assert run.result.exit_code == 0 and run.result.restarts == 0


# --------------------------------------------------------------------------- OOM


def _oom_job(**restart: Any) -> JobSpec:
    return JobSpec(
        name="oomjob",
        command=[sys.executable, LOOP, "--steps", "6", "--step-s", "0.05", "--oom-above", "8"],
        overrides={"style": "hydra", "defaults": ["training.batch_size=16"]},
        restart=RestartPolicy(**restart),
        resources={"gpus": 0},
    )


def test_oom_then_exit_ends_with_the_commands_own_code_every_time(run_root: Path) -> None:
    # The process prints its OOM and takes a moment to exit (a CUDA context to free,
    # workers to join), as real ones do: the agent must not race it to a kill.
    job = _oom_job()
    argv, _ = job.apply_overrides([])
    argv = [*argv[:-1], "--oom-teardown-s", "0.5", argv[-1]]
    codes = []
    for i in range(5):
        run = supervise(run_root, argv, job=job, gpu_source=no_gpus(), run_dir=run_root / f"r{i}")
        codes.append(run.result.exit_code)
        oom = run.one("oom", "critical")
        assert oom.action == "stop" and oom.message.startswith("out of GPU memory")
        assert "CUDA out of memory" in str(oom.evidence) and oom.evidence["died"] is True
        assert "restart" not in run.kinds and run.kinds.count("started") == 1
        assert "stack_dump" not in run.kinds  # it died by itself: nothing to dump
        run.in_order("started", "oom", "exited", "stopped")
        exited = run.one("exited")
        assert exited.evidence["by_agent"] is False, exited.message
        assert run.result.state == "stopped" and "not retried unchanged" in run.result.summary
    assert codes == [1] * 5  # the command's own code, every time


def test_handled_oom_is_a_warning_and_the_run_trains_on(run_root: Path) -> None:
    argv = [sys.executable, LOOP, "--steps", "40", "--step-s", "0.05", "--handled-oom-at", "10"]
    run = supervise(run_root, argv, gpu_source=no_gpus())
    oom = run.one("oom")
    assert (oom.severity, oom.action) == ("warning", "none"), oom.message
    assert "CUDA out of memory. Tried to allocate 1.50 GiB" in oom.evidence["line"]
    assert oom.evidence["handled"] is True and oom.evidence["steps_after"] >= 1
    assert "trained on" in oom.message
    assert run.kinds.count("oom") == 1 and "stopped" not in run.kinds
    run.in_order("started", "oom", "exited", "finished")
    assert (run.result.exit_code, run.result.state, run.result.restarts) == (0, "finished", 0)
    assert "step 40/40" in run.out


def test_oom_then_no_progress_is_stopped_as_an_oom_with_stacks(run_root: Path) -> None:
    argv = [
        sys.executable, LOOP, "--steps", "1000", "--step-s", "0.05",
        "--handled-oom-at", "10", "--freeze-at", "10",
    ]  # fmt: skip
    run = supervise(run_root, argv, gpu_source=no_gpus())
    oom = run.one("oom", "critical")
    assert oom.action == "stop" and oom.evidence["died"] is False
    assert oom.evidence["silence_s"] >= SPEC.confirm_s
    assert "no step since" in oom.message
    run.in_order("started", "oom", "stack_dump", "exited", "stopped")
    assert "restart" not in run.kinds  # the same configuration would fail the same way
    assert "stall" not in run.kinds  # the OOM is the cause, found no later than the stall
    assert (run.result.exit_code, run.result.state) == (EXIT_STOPPED, "stopped")
    assert "not retried unchanged" in run.result.summary


def test_oom_with_reduce_batch_restarts_once_with_half_the_batch(run_root: Path) -> None:
    job = _oom_job(on_oom="reduce_batch", batch_override="training.batch_size")
    argv, _ = job.apply_overrides([])
    run = supervise(run_root, argv, job=job, gpu_source=no_gpus())
    run.in_order("started", "oom", "exited", "restart", "started", "exited", "finished")
    assert run.kinds.count("oom") == 1 and run.kinds.count("restart") == 1
    restart = run.one("restart")
    assert "retrying with training.batch_size 16 -> 8" in restart.message
    second = [e for e in run.events if e.kind == "started"][1]
    assert second.evidence["command"].endswith("training.batch_size=8")
    assert "batch halved after OOM: training.batch_size 16 -> 8" in second.message
    assert "step 6/6 batch 8" in run.out
    assert (run.result.exit_code, run.result.state, run.result.restarts) == (0, "finished", 1)


# --------------------------------------------------------------------------- disk


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB filesystem that fills up (root and mount permission needed)."""
    path = tmp_path / "small"
    path.mkdir()
    why = _mount_tmpfs(path, "16m")
    if why is not None:
        pytest.skip(f"cannot mount a tmpfs here: {why}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_that_fills_stops_the_run_with_a_clear_status(run_root: Path, tmpfs: Path) -> None:
    argv = [
        sys.executable,
        LOOP,
        "--steps",
        "100",
        "--step-s",
        "0.2",
        "--save-every",
        "1",
        "--ckpt-mb",
        "3",
    ]
    run = supervise(
        run_root,
        argv,
        gpu_source=no_gpus(),
        extra_env={"RUNNER_CHECKPOINT_DIR": str(tmpfs)},
    )
    assert "No space left on device" in run.err
    full = run.one("disk_full", "critical")
    assert full.action == "stop" and "No space left on device" in full.message
    run.in_order("started", "disk_full", "exited", "stopped")
    assert "restart" not in run.kinds  # restarting into a full disk only loops
    assert run.result.state == "stopped" and run.result.exit_code == 1
    assert (
        run.result.summary.startswith("stopped: ")
        and "No space left on device" in run.result.summary
    )
    status = read_status(run.run_dir)
    assert status is not None and status.state == "stopped" and status.checkpoint_step is not None
    low = [e for e in run.events if e.kind == "disk_low"]
    assert all(e.severity == "warning" for e in low)


# --------------------------------------------------------------------------- crash loop


def test_crash_loop_stops_after_the_budget(run_root: Path) -> None:
    run = supervise(
        run_root,
        [sys.executable, "-c", "import sys; print('boom'); sys.exit(1)"],
        gpu_source=no_gpus(),
    )
    policy = RestartPolicy()  # 5 in 30 min; 3 without a new checkpoint is a crash loop
    assert run.kinds.count("started") == policy.max_without_checkpoint + 1
    assert run.kinds.count("restart") == policy.max_without_checkpoint
    assert (run.result.exit_code, run.result.state) == (1, "stopped")
    assert run.result.summary == (
        "stopped: exited with code 1; crash loop: 3 restarts without a new checkpoint; "
        "3 restarts used, no checkpoint"
    )
    final = run.events[-1]
    assert final.kind == "stopped" and final.message == run.result.summary


# --------------------------------------------------------------------------- GPU side


def fake_gpu(timeline: Any) -> Nvml:
    return Nvml(FakeNvml(timeline, clock=time.monotonic))


def test_power_collapse_confirms_a_stall_of_a_spinning_process(
    run_root: Path, tmp_path: Path
) -> None:
    onset = tmp_path / "onset"
    argv = [
        sys.executable,
        LOOP,
        "--steps",
        "1000",
        "--step-s",
        "0.1",
        "--freeze-at",
        "30",
        "--freeze",
        "spin",
        "--onset-file",
        str(onset),
    ]
    run = supervise(
        run_root,
        argv,
        gpu_source=fake_gpu(OnsetTimeline(onset)),
        expected_gpus=1,
        restart=RestartPolicy(max_restarts=0),
    )
    # The process burns CPU, so only the GPU can say it is hung.
    stall = run.one("stall", "critical")
    assert "cpu_flat" not in stall.evidence["confirmed_by"]
    assert {"gpu_idle", "gpu_power_low"} & set(stall.evidence["confirmed_by"]), stall.evidence
    collapse = run.one("power_collapse", "warning")
    assert collapse.action == "none"
    dump = run.one("stack_dump")
    assert "spin_forever" in run.stack_text(dump)
    assert run.result.summary.startswith("stopped: froze at step 30 (no step for ")
    assert "GPU power collapsed" in run.result.summary
    assert run.result.state == "stopped" and run.result.exit_code == EXIT_STOPPED
    status = read_status(run.run_dir)
    assert status is not None and status.gpus and status.gpus[0]["power_w"] == 20.0


def test_thermal_throttle_is_a_warning_and_the_run_goes_on(run_root: Path) -> None:
    run = supervise(
        run_root,
        [sys.executable, LOOP, "--steps", "60", "--step-s", "0.1"],
        gpu_source=fake_gpu(Scenario("thermal_throttle", at=1.0)),
        expected_gpus=1,
    )
    thermal = run.one("thermal", "warning")
    assert thermal.action == "none"
    assert "98" in thermal.message or "thermal" in thermal.message.lower()
    assert run.result.exit_code == 0 and run.result.state == "finished" and run.result.restarts == 0


def test_xid_79_stops_the_run_as_a_bad_host(run_root: Path) -> None:
    run = supervise(
        run_root,
        [sys.executable, LOOP, "--steps", "1000", "--step-s", "0.1"],
        gpu_source=fake_gpu(Scenario("xid", at=2.0)),
        expected_gpus=1,
    )
    xid = run.one("xid", "critical")
    assert xid.action == "stop" and "79" in xid.message
    run.in_order("started", "xid", "exited", "stopped")
    assert "restart" not in run.kinds
    assert (run.result.exit_code, run.result.state, run.result.bad_host) == (
        EXIT_BAD_HOST,
        "stopped",
        True,
    )
    assert (
        "bad host" in run.result.summary and "move the job to another machine" in run.result.summary
    )
    status = read_status(run.run_dir)
    assert status is not None and "bad host" in status.summary and status.exit_code == EXIT_BAD_HOST


# --------------------------------------------------------------------------- nothing wrong


def test_reference_trainer_with_nothing_wrong_finishes_without_a_warning(
    run_root: Path, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from runner.data.franka import synth_franka

    data = tmp_path / "data"
    synth_franka(data, episodes=3, steps=40, image_size=32)
    job = load_job("franka_cube_stack", profile="embedded")
    argv, extra = job.apply_overrides(
        ["training.steps=40", "training.save_every=20", "img_size=32"]
    )
    run = supervise(
        run_root,
        argv,
        job=job,
        watchdog=SPEC,
        dataset=data,
        extra_env={**extra, "RUNNER_DEVICE": "cpu"},
        gpu_source=fake_gpu(Scenario("healthy")),
    )
    assert run.warnings() == [], [f"{e.kind}: {e.message}" for e in run.warnings()]
    assert run.kinds == ["started", "exited", "finished"]
    assert (run.result.exit_code, run.result.state) == (0, "finished")
    assert (
        run.result.summary
        == "finished at step 40 (exit code 0); 0 restarts used, newest checkpoint step 40"
    )
    status = read_status(run.run_dir)
    assert status is not None and status.state == "finished" and status.step == 40

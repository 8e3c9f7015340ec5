"""The detectors, driven tick by tick over simulated time.

GPU snapshots come from the real NVML wrapper over :class:`FakeNvml` timelines
(the scenarios, or a scenario with scripted edits); process trees from
:class:`ProcessTreeSampler` on real processes where their behaviour matters
(a zombie, a stopped process, a busy one), else built snapshots; disks from
:class:`HostSampler` on a real folder or built with exact byte counts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from runner.agent.detectors import (
    DiskDetector,
    ExplosionDetector,
    GpuHealthDetector,
    InputBoundDetector,
    LossNanDetector,
    NcclTimeoutDetector,
    OomDetector,
    PowerCollapseDetector,
    RamPressureDetector,
    SharedMemoryDetector,
    StallDetector,
    ThrottleDetector,
    ThroughputDetector,
    ZombieWorkersDetector,
    default_detectors,
)
from runner.agent.observe import Detector, Observation, Progress
from runner.rundir import Event
from runner.sampling.host import DiskSnapshot, HostSampler, HostSnapshot
from runner.sampling.nvml import CLOCK_EVENT_REASONS, GpuSnapshot, Nvml, XidEvent
from runner.sampling.procs import ProcessSnapshot, ProcessTree, ProcessTreeSampler
from runner.sampling.sample import Sample
from runner.sampling.trace import FakeNvml, Scenario
from runner.spec import WatchdogSpec

GB = 1_000_000_000
MB = 1_000_000
T0 = 1_700_000_000.0  # the simulated run starts here (wall clock)
ROOT = 4242  # the training process of built trees (the scenarios' GPU pid)
CMD = "python train.py env=franka_cube_stack"
IDLE = CLOCK_EVENT_REASONS["GpuIdle"]
POWER_CAP = CLOCK_EVENT_REASONS["SwPowerCap"]


# -- building blocks -------------------------------------------------------------


def proc(
    pid: int,
    ppid: int = 1,
    *,
    cpu: float | None = 1.0,
    state: str = "sleeping",
    name: str = "python3",
    cmdline: str | None = CMD,
    rss: int | None = 2 * GB,
    age: float = 600.0,
    wrote: int | None = 0,
) -> ProcessSnapshot:
    """A process that used ``cpu`` seconds and wrote ``wrote`` bytes since the last (1 s) sample."""
    zombie = state == "zombie"
    return ProcessSnapshot(
        pid=pid,
        ppid=ppid,
        name=name,
        state=state,
        cmdline="" if zombie else cmdline,
        create_time=T0 - age + pid / 1e6,
        age_s=age,
        rss_bytes=0 if zombie else rss,
        cpu_time_s=None if zombie else 100.0,
        cpu_delta_s=None if zombie else cpu,
        cpu_percent=None if cpu is None or zombie else 100.0 * cpu,
        write_delta_bytes=None if zombie else wrote,
    )


def tree(*procs: ProcessSnapshot, root: int = ROOT, interval: float | None = 1.0) -> ProcessTree:
    return ProcessTree(root, True, interval, procs)


def training_tree(
    *,
    root_cpu: float = 1.0,
    workers: int = 4,
    worker_cpu: float = 0.6,
    extra: Sequence[ProcessSnapshot] = (),
    root_wrote: int = 0,
) -> ProcessTree:
    """The trainer (writing ``root_wrote`` bytes this tick) and its forked DataLoader workers."""
    kids = [proc(ROOT + 1 + i, ROOT, cpu=worker_cpu, rss=int(2.5 * GB)) for i in range(workers)]
    return tree(proc(ROOT, 1, cpu=root_cpu, rss=6 * GB, wrote=root_wrote), *kids, *extra)


def disk(
    *roles: str,
    free: float,
    total: float = 300 * GB,
    rate: float | None = 0.0,
    fs_type: str = "ext4",
    overlay: bool = False,
    read_only: bool = False,
) -> DiskSnapshot:
    return DiskSnapshot(
        roles=roles,
        paths=tuple(f"/workspace/{r}" for r in roles),
        present=True,
        mount_point="/workspace",
        device="/dev/nvme0n1p1",
        fs_type=fs_type,
        read_only=read_only,
        overlay=overlay,
        total_bytes=int(total),
        free_bytes=int(free),
        used_bytes=int(total - free),
        write_rate_bps=rate,
    )


def shm_disk(total: float = 32 * GB, free: float | None = None) -> DiskSnapshot:
    free = total - 0.1 * GB if free is None else free
    return replace(
        disk("shm", free=free, total=total),
        paths=("/dev/shm",),
        mount_point="/dev/shm",
        device="shm",
        fs_type="tmpfs",
    )


def host(
    *disks: DiskSnapshot,
    total: float = 64 * GB,
    avail: float = 30 * GB,
    swap_total: float = 0,
    swap_used: float = 0,
) -> HostSnapshot:
    return HostSnapshot(
        ram_total_bytes=int(total),
        ram_available_bytes=int(avail),
        swap_total_bytes=int(swap_total),
        swap_used_bytes=int(swap_used),
        load_avg=(4.0, 4.0, 4.0),
        cpu_count=16,
        cpu_usable=16,
        disks=disks,
    )


class Steps:
    """Step progress as the supervisor reports it (harness heartbeats or parsed log lines)."""

    def __init__(self, source: str = "harness") -> None:
        self.source = source
        self.step: int | None = None
        self.last: float | None = None
        self.intervals: deque[float] = deque(maxlen=64)
        self.phase: str | None = "startup" if source == "harness" else None
        self.data_wait: deque[float] = deque(maxlen=64)

    def advance(self, now: float, n: int = 1, data_wait: float | None = None) -> None:
        if self.last is not None:
            # A jump of several steps counts as one interval per step.
            self.intervals.extend([(now - self.last) / n] * n)
        self.step = (self.step or 0) + n
        self.last = now
        if self.source == "harness":
            self.phase = "train"
        if data_wait is not None:
            self.data_wait.extend([data_wait] * n)

    def progress(self) -> Progress:
        return Progress(
            source=self.source,  # type: ignore[arg-type]
            step=self.step,
            last_step_time=self.last,
            phase=self.phase,
            intervals=tuple(self.intervals),
            data_wait_fractions=tuple(self.data_wait),
        )


@dataclass
class Scripted:
    """A :class:`Scenario` with scripted edits per GPU and instant, and extra XIDs."""

    base: Scenario
    edit: Callable[[int, float, GpuSnapshot], GpuSnapshot] = lambda i, t, s: s
    extra_xids: Sequence[tuple[float, int, int]] = ()
    driver_version: str = "570.86.15"

    def gpu_count(self) -> int:
        return self.base.gpu_count()

    def state(self, index: int, now: float) -> GpuSnapshot:
        return self.edit(index, now, self.base.state(index, now))

    def xids(self, until: float) -> Sequence[tuple[float, int, int]]:
        return sorted([*self.base.xids(until), *(x for x in self.extra_xids if x[0] <= until)])


class Gpus:
    """GPU snapshots and XIDs read through the real :class:`Nvml` wrapper from a fake timeline."""

    def __init__(self, timeline: Any) -> None:
        self.fake = FakeNvml(timeline)
        self.nvml = Nvml(self.fake, clock=lambda: T0 + self.fake.now)

    def at(self, t: float) -> tuple[tuple[GpuSnapshot, ...], tuple[XidEvent, ...]]:
        self.fake.now = t
        return self.nvml.sample_gpus()


@dataclass
class Run:
    """Detectors fed one Observation per tick over simulated time; every event kept."""

    detectors: list[Detector]
    watchdog: WatchdogSpec = field(default_factory=WatchdogSpec)
    attempt: int = 0
    attempt_started: float = 0.0
    events: list[Event] = field(default_factory=list)

    def tick(
        self,
        t: float,
        *,
        gpus: Sequence[Any] = (),
        xids: Sequence[Any] = (),
        procs: ProcessTree | None = None,
        host: HostSnapshot | None = None,
        progress: Progress | None = None,
        alive: bool = True,
        logs: Sequence[str] = (),
        checkpoint_bytes: int | None = None,
        errors: Sequence[str] = (),
        expected_gpus: int = 0,
        exit_code: int | None = None,
    ) -> list[Event]:
        now = T0 + t
        obs = Observation(
            now=now,
            attempt=self.attempt,
            attempt_started=T0 + self.attempt_started,
            sample=Sample(now, host, procs, tuple(gpus), tuple(xids), tuple(errors)),
            progress=progress if progress is not None else Progress(),
            alive=alive,
            training_pid=ROOT,
            watchdog=self.watchdog,
            log_lines=tuple(logs),
            checkpoint_bytes=checkpoint_bytes,
            checkpoint_path="/workspace/checkpoints",
            num_gpus_expected=expected_gpus,
            exit_code=exit_code,
        )
        out: list[Event] = []
        for d in self.detectors:
            for event in d.observe(obs):
                assert event.attempt == self.attempt and event.time == now
                json.dumps(event.evidence)  # plain JSON, no default= needed
                out.append(event)
        self.events.extend(out)
        return out

    def of(self, kind: str, severity: str | None = None) -> list[Event]:
        return [
            e
            for e in self.events
            if e.kind == kind and (severity is None or e.severity == severity)
        ]

    def alarms(self) -> list[Event]:
        return [e for e in self.events if e.severity != "info"]


def only(events: Sequence[Event]) -> Event:
    assert len(events) == 1, events
    return events[0]


def t_of(event: Event) -> float:
    return event.time - T0


# -- real processes --------------------------------------------------------------

# Forks a child that exits at once and is never reaped, then sleeps.
ZOMBIE_PARENT = r"""
import os, time
pid = os.fork()
if pid == 0:
    os._exit(3)
print(pid, flush=True)
time.sleep(600)
"""
BUSY = "while True: pass"


@pytest.fixture
def spawn() -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def _spawn(code: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(p)
        return p

    yield _spawn
    for p in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        if p.stdout is not None:
            p.stdout.close()


def wait_state(pid: int, state: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() == state:
                return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never reached {state!r}")


def wait_cpu(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        times = psutil.Process(pid).cpu_times()
        if times.user + times.system >= seconds:
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never used {seconds} s of CPU")


# -- the contract ----------------------------------------------------------------


def test_default_detectors_cover_every_failure() -> None:
    detectors = default_detectors(WatchdogSpec(), expected_gpus=2)
    names = [d.name for d in detectors]
    assert len(set(names)) == len(names) == 14
    assert {type(d) for d in detectors} == {
        StallDetector,
        PowerCollapseDetector,
        ZombieWorkersDetector,
        ThrottleDetector,
        InputBoundDetector,
        DiskDetector,
        OomDetector,
        GpuHealthDetector,
        NcclTimeoutDetector,
        SharedMemoryDetector,
        RamPressureDetector,
        LossNanDetector,
        ExplosionDetector,
        ThroughputDetector,
    }
    # Host, OOM, disk and NaN-loss failures (stop) come before the stall (restart).
    assert names.index("gpu_health") < names.index("stall")
    assert names.index("loss_nan") < names.index("stall")
    assert names.index("oom") < names.index("stall")
    health = next(d for d in detectors if isinstance(d, GpuHealthDetector))
    assert health.expected_gpus == 2
    import runner.agent.detectors as package

    assert sorted(package.__all__) == sorted(
        [*(type(d).__name__ for d in detectors), "default_detectors"]
    )


# -- a healthy run ---------------------------------------------------------------

HARMLESS = (
    "Epoch 3: train_loss=0.214 val_error=0.031 error_rate=0.0",
    "wandb: Network error (ReadTimeout), entering retry loop.",
    "No errors found in dataset franka_cube_stack_ds (100 episodes)",
    "[I ProcessGroupNCCL.cpp:844] NCCL timeout set to 1800 s",
    "tip: set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid CUDA out of memory",
    "    except torch.OutOfMemoryError:",
    "checkpointing: no space check needed, 35 GB free",
    "Traceback-free run; 0 errors, 0 warnings",
    "\x1b[32mINFO\x1b[0m error feedback enabled for the policy",
)


@pytest.mark.parametrize("source", ["harness", "log"])
def test_a_healthy_run_raises_nothing(source: str) -> None:
    """800 ticks: a 200 s start-up, steps every 1.2-1.4 s (log: printed every 10 steps),
    utilisation dips between steps, a 150 s checkpoint (longer than the 120 s step limit)
    that dips free space below 2 x the checkpoint size while it writes, a zombie reaped
    within 3 s, and log lines that mention errors harmlessly."""
    w = WatchdogSpec()
    run = Run(default_detectors(w, expected_gpus=1), w)

    def edit(index: int, t: float, s: GpuSnapshot) -> GpuSnapshot:
        if index != 0:
            return s
        if t < 200:  # loading the dataset: CUDA context up, nothing computed yet
            return replace(s, utilization_gpu_percent=0, power_w=30.0, clock_event_mask=IDLE)
        if 400 <= t < 545:  # saving: the GPU waits for the writer
            return replace(s, utilization_gpu_percent=0, power_w=22.0, clock_event_mask=IDLE)
        if int(t) % 7 == 0:  # a dip between two steps
            return replace(s, utilization_gpu_percent=0, power_w=35.0, clock_event_mask=IDLE)
        return s

    gpus = Gpus(Scripted(Scenario("healthy", gpus=2, pid=ROOT), edit))
    steps = Steps(source)
    ckpt = 13 * GB
    used = 265 * GB  # of 300: 35 GB free, 2.7 x the checkpoint
    next_step, pattern = 200.0, (1.2, 1.3, 1.4)
    pending = 0
    lowest_free = math.inf
    for i in range(800):
        t = float(i)
        # -- the trainer --
        saving = 400 <= t < 545
        if source == "harness":
            if saving:
                steps.phase = "checkpoint"
            elif steps.phase == "checkpoint":
                steps.phase = "train"
        if not saving and t >= next_step and not (545 <= t < 552):
            while next_step <= t:
                pending += 1
                next_step += pattern[pending % 3]
            if source == "harness":
                steps.advance(T0 + t, pending, data_wait=0.08)
                pending = 0
            elif pending >= 10:  # the log prints every 10 steps
                steps.advance(T0 + t, pending)
                pending = 0
        elif saving:
            next_step = 552.0
        # -- the disk: the new checkpoint written first, the oldest deleted after --
        rate = 0.0
        if 400 <= t < 545:
            rate = ckpt / 145
        elif t == 560:
            rate = -ckpt
        used += rate
        ckpt_disk = disk("run", "checkpoints", free=300 * GB - used, rate=rate)
        lowest_free = min(lowest_free, 300 * GB - used)
        # -- the process tree --
        extra = [proc(5001, ROOT, state="zombie", age=2)] if 300 <= t < 303 else []
        if t < 190:
            procs = training_tree(workers=0, extra=extra)
        elif saving:  # the trainer itself writes the checkpoint
            procs = training_tree(root_cpu=0.4, worker_cpu=0.0, extra=extra, root_wrote=int(rate))
        else:
            procs = training_tree(extra=extra)
        logs = [HARMLESS[i // 50 % len(HARMLESS)]] if i % 50 == 0 else []
        snaps, xids = gpus.at(t)
        run.tick(
            t,
            gpus=snaps,
            xids=xids,
            procs=procs,
            host=host(ckpt_disk, shm_disk()),
            progress=steps.progress(),
            logs=logs,
            checkpoint_bytes=ckpt,
            expected_gpus=1,
        )
    assert steps.step is not None and steps.step > 300
    assert lowest_free < 2 * ckpt  # the save dipped below the warning level for a while
    assert run.events == []


# -- stall -----------------------------------------------------------------------


def steady_steps(
    run: Run,
    until: float,
    *,
    every: float = 2.0,
    steps: Steps | None = None,
    tick: Callable[[float, Steps], dict[str, Any]] | None = None,
    start: float = 0.0,
) -> Steps:
    """Ticks each second from ``start`` to ``until``, a step every ``every`` s."""
    steps = steps or Steps()
    t = start
    while t < until:
        if t >= 10 and (t - 10) % every == 0:
            steps.advance(T0 + t)
        kw = tick(t, steps) if tick else {}
        run.tick(t, progress=steps.progress(), **kw)
        t += 1
    return steps


def test_an_unconfirmed_stall_of_a_busy_tree_dumps_first_and_restarts_later() -> None:
    """The GPU stays busy and the CPU too (a live loop that never steps): only the
    learned limit, max(5 x 2 s, 120 s) = 120 s, says it is stuck. A busy tree may be a
    slow step, not a hang: a warning that dumps the stacks comes at the limit, and the
    restart at busy_stall_factor (3) x the limit (issue 16: a real LeRobot run was killed
    at 120 s while its trainer used a whole core in Adam.step)."""
    run = Run([StallDetector()])
    gpus = Gpus(Scenario("healthy", pid=ROOT))

    def busy(t: float, steps: Steps) -> dict[str, Any]:
        return {"gpus": gpus.at(t)[0], "procs": training_tree()}

    steps = steady_steps(run, 200, tick=busy)
    assert steps.last == T0 + 198
    for t in range(200, 700):
        run.tick(t, progress=steps.progress(), **busy(t, steps))
    warning, restart = run.of("stall")
    assert (warning.severity, warning.action) == ("warning", "dump")
    assert t_of(warning) == 198 + 121  # silence > 120 s
    ev = warning.evidence
    assert ev["confirmed"] is False and ev["busy"] is True and ev["restart_at_s"] == 360
    assert ev["basis"] == "learned" and ev["limit_s"] == 120 and ev["longest_interval_s"] == 2
    assert ev["gpus"][0]["utilization_gpu_percent"] == 97 and ev["tree_cpu_cores"] == 3.4
    assert "restarts if no step comes within 6 min" in warning.message
    assert (restart.severity, restart.action) == ("critical", "restart")
    assert t_of(restart) == 198 + 361
    ev = restart.evidence
    assert ev["confirmed"] is False and ev["confirmed_by"] == []
    assert ev["limit_s"] == 360 and ev["silence_s"] == 361 and ev["step"] == steps.step


def test_an_unconfirmed_stall_of_an_idle_tree_restarts_at_the_limit() -> None:
    """No CPU signal to confirm (the CPU window is unknown) and nothing busy: the limit acts."""
    run = Run([StallDetector()])
    steps = steady_steps(run, 200, tick=lambda t, s: {"procs": training_tree()})
    for t in range(200, 400):
        run.tick(t, progress=steps.progress(), procs=tree(proc(ROOT, 1, cpu=None)))
    event = only(run.of("stall"))
    assert (event.severity, event.action, t_of(event)) == ("critical", "restart", 198 + 121)


def test_a_stall_confirmed_by_power_collapse_acts_after_confirm_s() -> None:
    """The seeds' freeze: at 200 s power drops 80 -> 20 W, utilisation to 0, the
    process alive and spinning on one core, no workers."""
    run = Run([StallDetector(), PowerCollapseDetector()])
    gpus = Gpus(Scenario("power_collapse", at=200, pid=ROOT))

    def frozen_after_200(t: float, steps: Steps) -> dict[str, Any]:
        return {"gpus": gpus.at(t)[0], "procs": training_tree(workers=0)}

    steps = steady_steps(run, 200, tick=frozen_after_200)
    for t in range(200, 400):
        run.tick(t, progress=steps.progress(), **frozen_after_200(t, steps))
    stall = only(run.of("stall"))
    assert (stall.severity, stall.action) == ("critical", "restart")
    assert t_of(stall) == 230  # the GPU quiet from 200 for confirm_s (30 s)
    ev = stall.evidence
    assert ev["confirmed"] is True
    assert ev["confirmed_by"] == ["gpu_idle", "gpu_power_low"]
    assert ev["gpus"][0]["power_w"] == 20.0 and ev["gpus"][0]["busy_median_w"] == 80.0
    # The power collapse itself is a warning after 60 s, with no action.
    power = only(run.of("power_collapse"))
    assert (power.severity, power.action) == ("warning", "none")
    assert 260 < t_of(power) <= 262
    gpu = power.evidence["gpus"][0]
    assert (gpu["power_w"], gpu["busy_median_w"], gpu["ratio"]) == (20.0, 80.0, 0.25)


def test_gpu_idle_while_workers_load_is_not_a_confirmed_stall() -> None:
    """An epoch boundary: the GPU idles while DataLoader workers busily load the next
    batches; only the full learned limit may call it a stall."""
    run = Run([StallDetector()])
    gpus = Gpus(Scenario("power_collapse", at=200, pid=ROOT))

    def loading(t: float, steps: Steps) -> dict[str, Any]:
        return {"gpus": gpus.at(t)[0], "procs": training_tree(worker_cpu=0.9)}

    steps = steady_steps(run, 200, tick=loading)
    for t in range(200, 330):
        run.tick(t, progress=steps.progress(), **loading(t, steps))
    event = only(run.of("stall"))
    assert t_of(event) == 198 + 121 and event.evidence["confirmed"] is False


def test_a_stall_confirmed_by_a_real_stopped_process(
    spawn: Callable[[str], subprocess.Popen[str]],
) -> None:
    """No GPU on this host; the real trainer stopped (SIGSTOP): its CPU time is flat."""
    job = spawn(BUSY)
    wait_cpu(job.pid, 0.05)
    os.kill(job.pid, signal.SIGSTOP)
    wait_state(job.pid, psutil.STATUS_STOPPED)
    sampler = ProcessTreeSampler(job.pid)
    run = Run([StallDetector()])
    steps = steady_steps(run, 60)  # steps every 2 s until 58
    for t in range(60, 120):
        time.sleep(0.005)
        procs = sampler.sample()
        run.tick(t, procs=procs, progress=steps.progress())
    event = only(run.of("stall"))
    ev = event.evidence
    assert ev["confirmed"] is True and ev["confirmed_by"] == ["cpu_flat"]
    assert ev["tree_cpu_cores"] == 0.0
    # The CPU window needs confirm_s (30 s) of real samples: 60..89.
    assert 89 <= t_of(event) <= 91 and event.action == "restart"


def test_a_real_busy_process_does_not_confirm_a_stall(
    spawn: Callable[[str], subprocess.Popen[str]],
) -> None:
    job = spawn(BUSY)
    sampler = ProcessTreeSampler(job.pid)
    w = WatchdogSpec(stall_min_s=60)
    run = Run([StallDetector(w)], w)
    steps = steady_steps(run, 60)
    for t in range(60, 130):
        time.sleep(0.01)
        run.tick(t, procs=sampler.sample(), progress=steps.progress())
    event = only(run.of("stall"))
    assert event.evidence["confirmed"] is False
    assert t_of(event) == 58 + 61
    assert event.evidence["tree_cpu_cores"] > 0.3


def test_startup_uses_the_startup_limit() -> None:
    w = WatchdogSpec(startup_timeout_s=300)
    run = Run([StallDetector(w)], w)
    for t in range(0, 400):
        run.tick(t, procs=training_tree(root_cpu=0.0, workers=0), progress=Steps().progress())
    event = only(run.of("stall"))
    assert t_of(event) == 301
    assert event.evidence["basis"] == "startup" and event.evidence["limit_s"] == 300
    # CPU flat the whole time, but before the first step nothing is learned to confirm.
    assert event.evidence["confirmed"] is False


def test_a_long_checkpoint_uses_the_checkpoint_limit() -> None:
    run = Run([StallDetector()])
    steps = steady_steps(run, 100)
    steps.phase = "checkpoint"
    for t in range(100, 1100):
        run.tick(t, progress=steps.progress(), procs=training_tree(root_cpu=0.0, worker_cpu=0.0))
    event = only(run.of("stall"))
    assert event.evidence["basis"] == "checkpoint" and event.evidence["limit_s"] == 900
    assert t_of(event) == 98 + 901 and event.evidence["confirmed"] is False


def test_a_checkpoint_written_by_the_tree_counts_for_log_progress() -> None:
    """Log-parsed progress has no phase: the training tree's own writes show the save."""
    run = Run([StallDetector()])
    steps = steady_steps(run, 100, steps=Steps("log"), tick=lambda t, s: {"procs": training_tree()})
    for t in range(100, 400):
        writing = t < 300
        procs = training_tree(root_cpu=0.02, worker_cpu=0.0, root_wrote=200 * MB if writing else 0)
        run.tick(
            t, progress=steps.progress(), host=host(disk("checkpoints", free=100 * GB)), procs=procs
        )
    event = only(run.of("stall"))
    # Writing until 299, + 15 s linger; then the learned 120 s limit is long past, and
    # the tree's CPU has been flat all along: confirmed at once.
    assert t_of(event) == 300 + 15
    assert event.evidence["basis"] == "learned" and event.evidence["confirmed_by"] == ["cpu_flat"]


def test_another_writer_on_the_disk_does_not_hold_off_a_stall_of_log_progress() -> None:
    """Issue 16: the limit rose to 900 s whenever anything put 8 MiB/s on the checkpoint
    disk (another container on the host is enough). Only the tree's own writes count."""
    run = Run([StallDetector()])
    steps = steady_steps(run, 100, steps=Steps("log"), tick=lambda t, s: {"procs": training_tree()})
    busy_disk = disk("checkpoints", free=100 * GB, rate=200 * MB)
    for t in range(100, 400):
        procs = training_tree(root_cpu=0.0, worker_cpu=0.0)
        run.tick(t, progress=steps.progress(), host=host(busy_disk), procs=procs)
    event = only(run.of("stall"))
    # The CPU is flat from 100 on: the 30 s window is whole at 129, not 900 s later.
    assert t_of(event) == 129 and event.evidence["confirmed_by"] == ["cpu_flat"]


def test_disk_writes_do_not_hold_off_a_stall_of_a_harness_job() -> None:
    """The harness says when it saves: another writer on the checkpoint disk (a
    shared /dev/shm, another job) must not pass for a save and delay the stall."""
    run = Run([StallDetector()])
    gpus = Gpus(Scenario("power_collapse", at=200, pid=ROOT))
    busy_disk = disk("checkpoints", free=100 * GB, rate=200 * MB)

    def frozen_after_200(t: float, steps: Steps) -> dict[str, Any]:
        return {"gpus": gpus.at(t)[0], "procs": training_tree(workers=0), "host": host(busy_disk)}

    steps = steady_steps(run, 200, tick=frozen_after_200)
    for t in range(200, 400):
        run.tick(t, progress=steps.progress(), **frozen_after_200(t, steps))
    stall = only(run.of("stall"))
    assert t_of(stall) == 230 and stall.evidence["confirmed"] is True


def test_progress_none_decides_on_gpu_and_cpu_signals_only() -> None:
    """No harness and no pattern: GPU idle and CPU flat for stall_min_s (120 s)."""
    run = Run([StallDetector()])
    gpus = Gpus(Scenario("power_collapse", at=300, pid=ROOT))
    none = Progress(source="none")
    for t in range(0, 600):
        cpu = 1.0 if t < 300 else 0.0
        run.tick(t, gpus=gpus.at(t)[0], procs=training_tree(root_cpu=cpu, workers=0), progress=none)
    event = only(run.of("stall"))
    assert (event.severity, event.action) == ("critical", "restart")
    assert event.evidence["basis"] == "signals_only"
    assert "no steps" in event.evidence["note"]
    assert event.evidence["confirmed_by"] == ["cpu_flat", "gpu_idle", "gpu_power_low"]
    assert 300 + 120 <= t_of(event) <= 300 + 122


def test_progress_none_with_a_working_cpu_is_no_stall() -> None:
    run = Run([StallDetector()])
    gpus = Gpus(Scenario("power_collapse", at=100, pid=ROOT))
    for t in range(0, 600):
        run.tick(
            t,
            gpus=gpus.at(t)[0],
            procs=training_tree(root_cpu=0.8, workers=0),
            progress=Progress(source="none"),
        )
    assert run.events == []


def test_a_stall_clears_once_steps_resume_and_can_fire_again() -> None:
    run = Run([StallDetector()])
    steps = steady_steps(run, 100, tick=lambda t, s: {"procs": training_tree()})
    for t in range(100, 250):
        run.tick(t, progress=steps.progress(), procs=training_tree())
    steps.advance(T0 + 250)
    for t in range(250, 1100):
        run.tick(t, progress=steps.progress(), procs=training_tree())
    first, resumed, again = run.of("stall")
    # A busy tree: a warning with stacks at the limit (the restart would come at 3 x).
    assert (first.severity, first.action, t_of(first)) == ("warning", "dump", 98 + 121)
    assert (resumed.severity, t_of(resumed)) == ("info", 250)
    assert "slow, not hung" in resumed.message
    # The 152 s gap is now the longest interval seen: 5 x 152 s = 760 s.
    assert (again.severity, t_of(again)) == ("warning", 250 + 761)
    assert again.evidence["longest_interval_s"] == 152 and again.evidence["limit_s"] == 760


def test_a_new_attempt_starts_afresh() -> None:
    run = Run([StallDetector()])
    steps = steady_steps(run, 100, tick=lambda t, s: {"procs": training_tree()})
    for t in range(100, 230):
        run.tick(t, progress=steps.progress(), procs=training_tree())
    assert len(run.of("stall")) == 1
    run.attempt, run.attempt_started = 1, 230
    for t in range(230, 600):
        run.tick(t, progress=Steps().progress(), procs=training_tree())
    assert len(run.of("stall")) == 1  # the new attempt is still inside its 900 s start-up


def test_a_stall_lists_the_zombies_of_a_real_tree(
    spawn: Callable[[str], subprocess.Popen[str]],
) -> None:
    job = spawn(ZOMBIE_PARENT)
    assert job.stdout is not None
    zombie = int(job.stdout.readline())
    wait_state(zombie, psutil.STATUS_ZOMBIE)
    sampler = ProcessTreeSampler(job.pid)
    run = Run([StallDetector()])
    steps = steady_steps(run, 60)
    for t in range(60, 200):
        run.tick(t, procs=sampler.sample(), progress=steps.progress())
    event = only(run.of("stall"))
    assert [(z["pid"], z["ppid"]) for z in event.evidence["zombies"]] == [(zombie, job.pid)]
    assert event.evidence["confirmed_by"] == ["cpu_flat"]  # a sleeping parent uses no CPU


# -- power collapse --------------------------------------------------------------


def test_power_collapse_needs_steps_stopped_and_no_checkpoint() -> None:
    """The same 80 -> 20 W drop while steps continue, or while checkpointing, is no collapse."""
    for phase in ("train", "checkpoint"):
        run = Run([PowerCollapseDetector()])
        gpus = Gpus(Scenario("power_collapse", at=100, pid=ROOT))
        steps = Steps()
        for t in range(0, 400):
            if phase == "train" or t < 100:
                steps.advance(T0 + t)
            if t >= 100:
                steps.phase = phase
            run.tick(t, gpus=gpus.at(t)[0], progress=steps.progress())
        assert run.events == [], phase


def test_power_collapse_reports_once_and_clears_when_power_returns() -> None:
    def edit(index: int, t: float, s: GpuSnapshot) -> GpuSnapshot:
        return replace(s, power_w=20.0, utilization_gpu_percent=97) if 100 <= t < 300 else s

    run = Run([PowerCollapseDetector()])
    gpus = Gpus(Scripted(Scenario("healthy", pid=ROOT), edit))
    steps = Steps()
    for t in range(0, 400):
        if t < 100 or t >= 320:
            steps.advance(T0 + t)
        run.tick(t, gpus=gpus.at(t)[0], progress=steps.progress())
    warning, info = run.of("power_collapse")
    assert warning.severity == "warning" and t_of(warning) == 161
    assert warning.evidence["gpus"][0]["ratio"] == 0.25  # busy at 97 % but 20 W: an NCCL hang
    assert info.severity == "info" and t_of(info) == 300


# -- zombies and stuck workers ---------------------------------------------------


def test_a_real_zombie_that_persists_is_reported_once(
    spawn: Callable[[str], subprocess.Popen[str]],
) -> None:
    job = spawn(ZOMBIE_PARENT)
    assert job.stdout is not None
    zombie = int(job.stdout.readline())
    wait_state(zombie, psutil.STATUS_ZOMBIE)
    sampler = ProcessTreeSampler(job.pid)
    run = Run([ZombieWorkersDetector()])
    for t in range(0, 60):
        run.tick(t, procs=sampler.sample())
    event = only(run.events)
    assert (event.kind, event.severity, event.action) == ("zombie_workers", "warning", "dump")
    assert t_of(event) == 15
    (z,) = event.evidence["zombies"]
    assert (z["pid"], z["ppid"], z["zombie_for_s"]) == (zombie, job.pid, 15)
    assert z["parent_cmdline"].startswith(sys.executable)
    assert event.evidence["reason"] == "zombie"
    # Reaped: one info.
    os.kill(job.pid, signal.SIGKILL)
    job.wait(timeout=10)
    run.tick(61, procs=tree())
    assert [e.severity for e in run.events] == ["warning", "info"]


def test_a_zombie_reaped_within_seconds_is_normal() -> None:
    run = Run([ZombieWorkersDetector()])
    for t in range(0, 100):
        extra = [proc(ROOT + 50, ROOT, state="zombie")] if t % 20 < 5 else []
        run.tick(t, procs=training_tree(extra=extra))
    assert run.events == []


def test_disk_sleep_for_a_minute() -> None:
    run = Run([ZombieWorkersDetector()])
    for t in range(0, 120):
        stuck = proc(ROOT + 1, ROOT, state="disk-sleep" if t >= 10 else "running", cpu=0.0)
        run.tick(t, procs=tree(proc(ROOT), stuck))
    event = only(run.events)
    assert event.evidence["reason"] == "disk_sleep" and t_of(event) == 70
    assert event.evidence["processes"][0]["pid"] == ROOT + 1 and event.action == "dump"


def test_real_stopped_workers_while_steps_stopped(
    spawn: Callable[[str], subprocess.Popen[str]],
) -> None:
    """A trainer whose forked worker got SIGSTOPped: no step, and the worker's CPU flat."""
    job = spawn(
        "import os, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(600)\n"
        "print(pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    assert job.stdout is not None
    worker = int(job.stdout.readline())
    os.kill(worker, signal.SIGSTOP)
    wait_state(worker, psutil.STATUS_STOPPED)
    sampler = ProcessTreeSampler(job.pid)
    run = Run([ZombieWorkersDetector()])
    steps = steady_steps(run, 60)
    for t in range(60, 120):
        run.tick(t, procs=sampler.sample(), progress=steps.progress())
    event = only(run.events)
    assert event.evidence["reason"] == "workers_no_cpu"
    assert [w["pid"] for w in event.evidence["workers"]] == [worker]
    assert event.evidence["workers"][0]["state"] == "stopped"
    assert event.evidence["worker_cpu_cores"] == 0 and 89 <= t_of(event) <= 91


def test_idle_workers_during_a_gpu_busy_eval_are_fine() -> None:
    run = Run([ZombieWorkersDetector()])
    gpus = Gpus(Scenario("healthy", pid=ROOT))
    steps = steady_steps(
        run, 60, tick=lambda t, s: {"gpus": gpus.at(t)[0], "procs": training_tree()}
    )
    for t in range(60, 400):  # evaluation: no training steps, GPU busy, train workers idle
        run.tick(
            t, gpus=gpus.at(t)[0], procs=training_tree(worker_cpu=0.0), progress=steps.progress()
        )
    assert run.events == []


# -- throttling ------------------------------------------------------------------


def test_thermal_throttle_scenario_warns_once_with_the_clock_drop() -> None:
    run = Run([ThrottleDetector()])
    gpus = Gpus(Scenario("thermal_throttle", at=120, pid=ROOT))
    for t in range(0, 400):
        run.tick(t, gpus=gpus.at(t)[0], procs=training_tree())
    event = only(run.events)
    assert (event.kind, event.severity, event.action) == ("thermal", "warning", "none")
    ev = event.evidence
    # 95 C (the GPU's own 98 C minus the 3 C margin) for 3 ticks, before the bits.
    assert ev["reasons"] == ["temperature"] and ev["temperature_slowdown_c"] == 98
    assert ev["temperature_c"] >= 95 and t_of(event) < 120
    assert ev["sm_clock_max_mhz"] == 2100 and ev["clock_drop_percent"] == 11.4
    assert "98 C" in event.message


def test_thermal_throttle_by_bits_and_violation_counter_reports_the_drop() -> None:
    """Throttling at a temperature the threshold check cannot see (threshold unknown)."""

    def edit(index: int, t: float, s: GpuSnapshot) -> GpuSnapshot:
        s = replace(s, temperature_slowdown_c=None)
        return s

    run = Run([ThrottleDetector()])
    gpus = Gpus(Scripted(Scenario("thermal_throttle", at=120, pid=ROOT), edit))
    for t in range(0, 300):
        run.tick(t, gpus=gpus.at(t)[0])
    event = only(run.events)
    assert event.evidence["reasons"] == ["violation_counter"]
    assert event.evidence["clock_drop_percent"] == round(100 * (1 - 1290 / 2100), 1)
    assert 121 <= t_of(event) <= 123


@pytest.mark.parametrize(("slowdown", "warns"), [(90, True), (98, False)])
def test_the_margin_is_from_each_gpus_own_threshold(slowdown: int, warns: bool) -> None:
    def edit(index: int, t: float, s: GpuSnapshot) -> GpuSnapshot:
        return replace(s, temperature_c=88, temperature_slowdown_c=slowdown)

    run = Run([ThrottleDetector()])
    gpus = Gpus(Scripted(Scenario("healthy", pid=ROOT), edit))
    for t in range(0, 100):
        run.tick(t, gpus=gpus.at(t)[0])
    assert [e.kind for e in run.events] == (["thermal"] if warns else [])


@pytest.mark.parametrize(("clock", "warns"), [(1860, False), (1200, True)])
def test_power_cap_warns_only_when_clocks_drop_a_lot(clock: int, warns: bool) -> None:
    def edit(index: int, t: float, s: GpuSnapshot) -> GpuSnapshot:
        return replace(s, clock_event_mask=POWER_CAP, sm_clock_mhz=clock, power_w=139.0)

    run = Run([ThrottleDetector()])
    gpus = Gpus(Scripted(Scenario("healthy", pid=ROOT), edit))
    for t in range(0, 200):
        run.tick(t, gpus=gpus.at(t)[0])
    if not warns:
        assert run.events == []
        return
    event = only(run.events)
    assert (event.kind, event.severity) == ("power_throttle", "warning")
    assert event.evidence["reasons"] == ["power_cap_bits"] and t_of(event) == 60
    assert event.evidence["clock_drop_percent"] == round(100 * (1 - 1200 / 2100), 1)


def test_throttling_that_ends_is_reported_over_once() -> None:
    def edit(index: int, t: float, s: GpuSnapshot) -> GpuSnapshot:
        if t < 100:
            return replace(s, clock_event_mask=POWER_CAP, sm_clock_mhz=1200)
        return s

    run = Run([ThrottleDetector()])
    gpus = Gpus(Scripted(Scenario("healthy", pid=ROOT), edit))
    for t in range(0, 300):
        run.tick(t, gpus=gpus.at(t)[0])
    assert [(e.kind, e.severity, t_of(e)) for e in run.events] == [
        ("power_throttle", "warning", 60),
        ("power_throttle", "info", 160),
    ]


# -- input-bound -----------------------------------------------------------------


def test_input_bound_from_harness_data_wait() -> None:
    run = Run([InputBoundDetector()])
    steps = Steps()
    for t in range(0, 200):
        steps.advance(T0 + t, data_wait=0.3 if t < 100 else 0.75)
        run.tick(t, progress=steps.progress(), procs=training_tree(workers=2), host=host())
    event = only(run.events)
    assert (event.kind, event.severity, event.action) == ("input_bound", "warning", "none")
    ev = event.evidence
    assert ev["source"] == "harness" and ev["steps"] == 50 and ev["workers"] == 2
    assert ev["data_wait_fraction_mean"] > 0.5 and ev["workers_ram_allows"] == 12
    assert "num_workers (now 2)" in event.message and "pin_memory" in event.message


def test_input_bound_from_the_util_bounce_scenario() -> None:
    """The users' 0 -> 90 -> 0 % bounce: each 6 s, 2 s busy; a step per cycle, logged."""
    run = Run([InputBoundDetector()])
    gpus = Gpus(Scenario("util_bounce", period=6, busy=2, pid=ROOT))
    steps = Steps("log")
    for t in range(0, 400):
        if t % 6 == 2:
            steps.advance(T0 + t)
        run.tick(t, gpus=gpus.at(t)[0], progress=steps.progress(), procs=training_tree(workers=2))
    event = only(run.events)
    ev = event.evidence
    assert ev["source"] == "utilization" and ev["util_min"] == 0 and ev["util_max"] == 90
    assert 25 <= ev["util_mean"] <= 35 and ev["util_stdev"] > 40
    assert ev["steps_in_window"] >= 15 and t_of(event) < 200


def test_steady_utilisation_and_a_stalled_gpu_are_not_input_bound() -> None:
    for scenario in ("healthy", "power_collapse"):
        run = Run([InputBoundDetector()])
        gpus = Gpus(Scenario(scenario, at=100, pid=ROOT))
        steps = Steps("log")
        for t in range(0, 400):
            if scenario == "healthy" or t < 100:
                steps.advance(T0 + t)
            run.tick(t, gpus=gpus.at(t)[0], progress=steps.progress())
        assert run.events == [], scenario


# -- disk ------------------------------------------------------------------------


def test_disk_low_then_full_with_time_to_full() -> None:
    """13 GB checkpoints; free falls from 30 GB at 5 MB/s (logs, caches: no checkpoint burst)."""
    run = Run([DiskDetector()])
    free = 30 * GB
    for t in range(0, 3500):
        free -= 5 * MB
        run.tick(
            t, host=host(disk("checkpoints", free=free, rate=5 * MB)), checkpoint_bytes=13 * GB
        )
    low, full = run.events
    assert (low.kind, low.severity, low.action) == ("disk_low", "warning", "none")
    assert (full.kind, full.severity, full.action) == ("disk_full", "critical", "none")
    # Below 26 GB from t=800 (799 is 26.0 GB), reported after the 30 s settle.
    assert t_of(low) == 830 and low.evidence["free_over_checkpoint"] < 2
    assert low.evidence["write_rate_bps"] == 5 * MB
    assert low.evidence["time_to_full_s"] == pytest.approx(low.evidence["free_bytes"] / (5 * MB))
    assert "full in ~86 min" in low.message
    assert t_of(full) == 3430 and full.evidence["free_bytes"] < 13 * GB
    assert "Hub pusher" in full.message and "will not fit" in full.message


def test_a_disk_written_without_pause_is_judged_after_the_checkpoint_limit() -> None:
    run = Run([DiskDetector()])
    for t in range(0, 1000):
        run.tick(
            t,
            host=host(disk("checkpoints", free=20 * GB, rate=100 * MB)),
            procs=training_tree(root_wrote=100 * MB),
            checkpoint_bytes=13 * GB,
        )
    assert [(e.kind, t_of(e)) for e in run.events] == [("disk_low", 900)]


def test_disk_recovers_with_one_info() -> None:
    run = Run([DiskDetector()])
    for t in range(0, 200):
        free = 20 * GB if t < 100 else 100 * GB
        run.tick(t, host=host(disk("checkpoints", free=free)), checkpoint_bytes=13 * GB)
    assert [(e.kind, e.severity, t_of(e)) for e in run.events] == [
        ("disk_low", "warning", 30),
        ("disk_low", "info", 130),
    ]


@pytest.mark.parametrize(
    "line",
    [
        "OSError: [Errno 28] No space left on device",
        "RuntimeError: [enforce fail at inline_container.cc:595] . unexpected pos 123 vs 45: "
        "PytorchStreamWriter failed writing file data/12: file write failed",
        "  File ... torch.save: No space left on device",
    ],
)
def test_disk_full_in_the_log_stops_the_run(line: str) -> None:
    run = Run([DiskDetector(), SharedMemoryDetector()])
    d = disk("checkpoints", free=0)
    run.tick(0, host=host(d), logs=["step 10000", line], checkpoint_bytes=13 * GB)
    run.tick(1, host=host(d), logs=[line])
    event = only(run.events)
    assert (event.kind, event.severity, event.action) == ("disk_full", "critical", "stop")
    assert event.evidence["line"] == line.strip() and event.evidence["free_bytes"] == 0


def test_no_space_in_dev_shm_is_a_shm_problem_not_a_disk_one() -> None:
    run = Run([DiskDetector(), SharedMemoryDetector()])
    line = "RuntimeError: unable to write to file </torch_18_1234>: No space left on device (28)"
    run.tick(0, host=host(disk("checkpoints", free=100 * GB), shm_disk(64 * MB)), logs=[line])
    event = only(run.events)
    assert (event.kind, event.severity) == ("shm_low", "warning")
    assert "--ipc=host" in event.message and "--shm-size" in event.message


def test_disk_filling_without_a_known_checkpoint_size() -> None:
    run = Run([DiskDetector()])
    free = 200 * GB
    for t in range(0, 800):
        free -= 50 * MB
        run.tick(t, host=host(disk("checkpoints", free=free, rate=50 * MB)))
    event = only(run.events)
    assert event.evidence["reason"] == "filling" and t_of(event) == 600
    assert event.evidence["time_to_full_s"] < 3600


def _mounts(tmp_path: Path, line: str) -> Path:
    table = tmp_path / "mounts"
    table.write_text(f"proc /proc proc rw 0 0\n{line}\n")
    return table


@pytest.mark.parametrize(
    ("fs", "reason"),
    [
        ("overlay {path} overlay rw,relatime 0 0", "overlay"),
        ("/dev/sdb1 {path} ext4 ro 0 0", "read_only"),
    ],
)
def test_overlay_or_read_only_checkpoint_fs_warns_once(
    tmp_path: Path, fs: str, reason: str
) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    sampler = HostSampler(
        {"checkpoints": ckpts}, mounts_path=_mounts(tmp_path, fs.format(path=ckpts))
    )
    run = Run([DiskDetector()])
    for t in range(0, 5):
        run.tick(t, host=sampler.sample())
    event = only(run.events)
    assert (event.kind, event.severity, event.evidence["reason"]) == ("disk_low", "warning", reason)
    assert event.evidence["paths"] == [str(ckpts)]


@pytest.fixture
def quiet_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem only this test writes: a private tmpfs where it can be mounted.

    Free space and write rate are sampled in real time while the ticks are
    simulated, so on the shared development disk another tenant's writes (a
    Docker build) read as a checkpoint being saved, which rightly holds the
    verdict back.
    """
    path = tmp_path / "quiet"
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)]
    if subprocess.run(mount, capture_output=True, check=False).returncode != 0:
        yield path
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_real_disk_with_less_than_two_checkpoints_free(quiet_disk: Path) -> None:
    sampler = HostSampler({"checkpoints": quiet_disk})
    first = sampler.sample().disk("checkpoints")
    assert first is not None and first.free_bytes
    size = int(first.free_bytes / 1.5)  # free is 1.5 x the checkpoint
    run = Run([DiskDetector()])
    for t in range(0, 40):
        run.tick(t, host=sampler.sample(), checkpoint_bytes=size)
    event = only(run.events)
    assert (event.kind, event.severity) == ("disk_low", "warning") and t_of(event) == 30
    assert 1.4 < event.evidence["free_over_checkpoint"] < 1.6


# -- OOM -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "framework"),
    [
        (
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has "
            "a total capacity of 15.72 GiB of which 1.06 GiB is free.",
            "torch",
        ),
        ("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB", "torch"),
        ("RuntimeError: CUDA error: out of memory", "torch"),
        (
            "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while "
            "trying to allocate 4294967296 bytes.",
            "jax",
        ),
    ],
)
def test_oom_the_process_dies_of_stops_with_the_matched_line(line: str, framework: str) -> None:
    run = Run([OomDetector()])
    gpus = Gpus(Scenario("healthy", pid=ROOT))
    run.tick(0, gpus=gpus.at(0)[0], logs=["Traceback (most recent call last):", line])
    assert run.events == []  # alive: it may have caught it; wait for what it does next
    run.tick(1, logs=[line], alive=False, exit_code=1)
    event = only(run.events)
    assert (event.kind, event.severity, event.action) == ("oom", "critical", "stop")
    assert event.evidence["line"] == line and event.evidence["framework"] == framework
    assert event.evidence["died"] is True and event.evidence["exit_code"] == 1
    assert line.split(": ", 1)[-1][:20] in event.message  # the error as the user saw it
    assert event.evidence["gpus"][0]["memory_total_bytes"] == 16376 * (1 << 20)


def test_oom_again_in_a_new_attempt_is_reported_again() -> None:
    run = Run([OomDetector()])
    line = "RuntimeError: CUDA error: out of memory"
    run.tick(0, logs=[line], alive=False, exit_code=1)
    run.attempt = 1
    run.tick(1, logs=[line], alive=False, exit_code=1)
    assert [e.attempt for e in run.events] == [0, 1]


OOM_LINE = "RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB"


def _stepping(run: Run, until: int, *, logs_at: int = -1, step_s: int = 1) -> Progress:
    """Steps every ``step_s`` up to ``until`` (harness), the OOM line at ``logs_at``."""
    progress = Progress()
    for t in range(0, until + 1):
        if t % step_s == 0:
            progress = Progress(source="harness", step=t // step_s, last_step_time=T0 + t)
        run.tick(t, progress=progress, logs=[OOM_LINE] if t == logs_at else [])
    return progress


def test_oom_followed_by_steps_is_a_handled_warning() -> None:
    run = Run([OomDetector()])
    _stepping(run, 60, logs_at=20)
    event = only(run.events)
    assert (event.kind, event.severity, event.action) == ("oom", "warning", "none")
    assert t_of(event) == 21  # the first step after the line
    assert event.evidence["handled"] is True and event.evidence["steps_after"] == 1
    assert "trained on" in event.message
    # A second handled OOM adds no event; one it then dies of is critical.
    _stepping(run, 30, logs_at=25)
    run.tick(61, logs=[OOM_LINE])
    run.tick(62, alive=False, exit_code=1)
    assert [e.severity for e in run.events] == ["warning", "critical"]


def test_oom_exit_zero_is_handled_and_exit_nonzero_is_a_failure() -> None:
    clean = Run([OomDetector()])
    clean.tick(0, logs=[OOM_LINE])
    clean.tick(1, alive=False, exit_code=0)
    assert only(clean.events).severity == "warning"


def test_oom_then_no_step_is_critical_no_later_than_a_confirmed_stall() -> None:
    w = WatchdogSpec()
    oom, stall = OomDetector(w), StallDetector(w)
    run = Run([oom, stall], watchdog=w)
    progress = Progress()
    for t in range(0, 200):
        if t <= 20:
            progress = Progress(source="harness", step=t, last_step_time=T0 + t)
        cpu = 1.0 if t <= 21 else 0.0
        run.tick(
            t,
            progress=progress,
            procs=training_tree(root_cpu=cpu, workers=0),
            logs=[OOM_LINE] if t == 21 else [],
        )
        if run.events:
            break
    event = run.events[0]
    assert (event.kind, event.severity, event.action) == ("oom", "critical", "stop")
    assert event.evidence["died"] is False and "no step since" in event.message
    # At the stall's confirmed limit (30 s after the last step at t=20).
    assert t_of(event) == 20 + w.confirm_s
    assert not run.of("stall")  # it waits confirm_s longer after an OOM line
    for t in range(51, 90):  # and is the backstop, should no oom detector run
        run.tick(t, progress=progress, procs=training_tree(root_cpu=0.0, workers=0))
    assert t_of(run.of("stall")[0]) == 20 + 2 * w.confirm_s


def test_oom_before_the_first_step_waits_stall_min_s() -> None:
    w = WatchdogSpec()
    run = Run([OomDetector(w)], watchdog=w)
    for t in range(0, 200):
        run.tick(t, progress=Progress(source="log"), logs=[OOM_LINE] if t == 5 else [])
    event = only(run.events)
    assert event.severity == "critical" and t_of(event) == 5 + w.stall_min_s


def test_oom_without_step_progress_is_a_warning_the_stall_detector_judges() -> None:
    w = WatchdogSpec()
    run = Run([OomDetector(w)], watchdog=w)
    for t in range(0, 60):
        run.tick(t, logs=[OOM_LINE] if t == 5 else [])
    event = only(run.events)
    assert (event.severity, event.action) == ("warning", "none")
    assert t_of(event) == 5 + w.confirm_s and event.evidence["handled"] is None


def test_host_oom_kill_needs_ram_near_full() -> None:
    line = "RuntimeError: DataLoader worker (pid 5123) is killed by signal: Killed."
    run = Run([OomDetector()])
    for t in range(0, 10):
        run.tick(t, host=host(avail=(1 if t == 5 else 20) * GB))
    run.tick(10, host=host(avail=20 * GB), logs=[line])
    event = only(run.events)
    assert (event.kind, event.severity, event.action) == ("oom", "critical", "stop")
    assert event.evidence["where"] == "host" and event.evidence["pid"] == 5123
    assert event.evidence["ram_available_min_fraction"] == round(1 / 64, 4)

    calm = Run([OomDetector()])
    calm.tick(0, host=host(avail=30 * GB), logs=[line])
    assert only(calm.events).severity == "warning" and calm.events[0].action == "none"


# -- XID, ECC, lost GPU ----------------------------------------------------------


def test_xid_79_then_lost_stops_and_blames_the_host() -> None:
    run = Run([GpuHealthDetector()])
    gpus = Gpus(Scenario("xid", gpus=2, at=30, pid=ROOT))
    for t in range(0, 90):
        snaps, xids = gpus.at(t)
        run.tick(t, gpus=snaps, xids=xids, procs=training_tree(workers=0))
    xid, lost = run.events
    assert (xid.kind, xid.severity, xid.action) == ("xid", "critical", "stop")
    assert (lost.kind, lost.severity, lost.action) == ("gpu_lost", "critical", "stop")
    assert t_of(xid) == t_of(lost) == 30
    assert xid.evidence["xid"] == 79 and xid.evidence["gpu_index"] == 0
    assert xid.evidence["dcgm"] == "FAIL" and xid.evidence["uuid"].startswith("GPU-")
    assert "HOST is bad" in xid.message and "HOST is bad" in lost.message
    assert lost.evidence["lost_reason"] and lost.evidence["index"] == 0


def test_warning_class_xid_ecc_and_other_gpus() -> None:
    def edit(index: int, t: float, s: GpuSnapshot) -> GpuSnapshot:
        return replace(s, ecc_volatile_dbe=2) if index == 0 and t >= 50 else s

    timeline = Scripted(
        Scenario("healthy", gpus=2, pid=ROOT),
        edit,
        extra_xids=[(10, 0, 94), (20, 1, 79), (30, 0, 13)],
    )
    run = Run([GpuHealthDetector()])
    gpus = Gpus(timeline)
    for t in range(0, 80):
        snaps, xids = gpus.at(t)
        run.tick(t, gpus=snaps, xids=xids, procs=training_tree(workers=0))
    got = [(e.kind, e.severity, e.action, e.evidence.get("xid"), t_of(e)) for e in run.events]
    assert got == [
        ("xid", "warning", "none", 94, 10),
        ("xid", "warning", "none", 79, 20),  # on GPU 1, which this job does not use
        ("xid", "info", "none", 13, 30),
        ("ecc", "critical", "stop", None, 50),
    ]
    assert run.events[1].evidence["job_gpu"] is False
    assert run.events[3].evidence["ecc_volatile_dbe"] == 2


def test_xid_from_a_kernel_log_line() -> None:
    run = Run([GpuHealthDetector()])
    gpus = Gpus(Scenario("healthy", gpus=2, pid=ROOT))
    line = "[12345.678] NVRM: Xid (PCI:0000:01:00): 119, pid=4242, name=python, Timeout waiting"
    run.tick(0, gpus=gpus.at(0)[0], procs=training_tree(workers=0), logs=[line])
    event = only(run.events)
    assert (event.severity, event.action, event.evidence["xid"]) == ("critical", "stop", 119)
    # Bus 01 is GPU 0, the job's (NVML missed the XID: the kernel log has it).
    assert event.evidence["gpu_index"] == 0 and event.evidence["source"] == "kernel_log"


def test_fewer_gpus_than_expected() -> None:
    gpus = Gpus(Scenario("healthy", gpus=1, pid=ROOT))
    run = Run([GpuHealthDetector(expected_gpus=2)])
    run.tick(0, gpus=gpus.at(0)[0])
    run.tick(1, gpus=gpus.at(1)[0])
    event = only(run.events)
    assert (event.kind, event.severity, event.evidence["visible"]) == ("gpu_lost", "warning", 1)
    # A failed GPU read says nothing about the count.
    quiet = Run([GpuHealthDetector(expected_gpus=2)])
    quiet.tick(0, errors=["gpus: NVMLError: Unknown Error"])
    assert quiet.events == []


# -- NCCL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "[rank0]:[E ProcessGroupNCCL.cpp:616] [Rank 0] Watchdog caught collective operation "
        "timeout: WorkNCCL(SeqNum=1, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, "
        "Timeout(ms)=600000) ran for 600044 milliseconds before timing out.",
        "[E ProcessGroupNCCL.cpp:1316] [PG 0 Rank 1] Heartbeat monitor timed out! Process will "
        "be terminated after dumping debug info.",
        "torch.distributed.DistBackendError: NCCL timeout in communicator on rank 3",
        "[Rank 2] Some NCCL operations have failed or timed out. Due to the asynchronous "
        "nature of CUDA kernels, subsequent GPU operations might run on corrupted data.",
    ],
)
def test_nccl_timeout_restarts(line: str) -> None:
    run = Run([NcclTimeoutDetector()])
    run.tick(0, logs=[line])
    run.tick(1, logs=[line])
    event = only(run.events)
    assert (event.kind, event.severity, event.action) == ("nccl_timeout", "critical", "restart")
    assert event.evidence["line"] == line
    if "Watchdog" in line:
        assert event.evidence["rank"] == 0 and event.evidence["op"] == "ALLREDUCE"
        assert event.evidence["timeout_ms"] == 600000


def test_nccl_configuration_lines_are_not_timeouts() -> None:
    run = Run([NcclTimeoutDetector()])
    run.tick(
        0,
        logs=[
            "NCCL timeout set to 1800 s",
            "[I ProcessGroupNCCL.cpp:844] ProcessGroupNCCL initialization options: "
            "TIMEOUT(ms): 600000, USE_HIGH_PRIORITY_STREAM: 0",
            "Using NCCL_TIMEOUT=1800",
        ],
    )
    assert run.events == []


# -- shared memory ---------------------------------------------------------------


def test_small_dev_shm_with_workers() -> None:
    run = Run([SharedMemoryDetector()])
    for t in range(0, 10):
        run.tick(t, host=host(shm_disk(64 * MB)), procs=training_tree(workers=4))
    event = only(run.events)
    assert (event.kind, event.severity, t_of(event)) == ("shm_low", "warning", 2)
    assert event.evidence["shm_total_bytes"] == 64 * MB and event.evidence["python_processes"] == 5
    assert len(event.evidence["workers"]) == 4
    alone = Run([SharedMemoryDetector()])
    for t in range(0, 10):
        alone.tick(t, host=host(shm_disk(64 * MB)), procs=training_tree(workers=0))
    assert alone.events == []


def test_bus_error_in_the_log() -> None:
    run = Run([SharedMemoryDetector()])
    line = (
        "RuntimeError: DataLoader worker (pid 8123) is killed by signal: Bus error. It is "
        "possible that dataloader's workers are out of shared memory."
    )
    run.tick(0, logs=[line])
    event = only(run.events)
    assert event.evidence["pid"] == 8123 and "--shm-size" in event.message


# -- RAM -------------------------------------------------------------------------


def test_ram_pressure_for_several_ticks() -> None:
    run = Run([RamPressureDetector()])
    for t in range(0, 60):
        # A 4-tick dip (nothing), then low from 20 to 39, then back.
        avail = 1 * GB if 10 <= t < 14 or 20 <= t < 40 else 20 * GB
        run.tick(t, host=host(avail=avail), procs=training_tree(workers=8))
    event, cleared = run.events
    assert (event.kind, event.severity, t_of(event)) == ("ram_pressure", "warning", 24)
    ev = event.evidence
    assert ev["reason"] == "ram_low" and ev["workers"] == 8
    assert ev["ram_available_bytes"] == 1 * GB and ev["ram_total_bytes"] == 64 * GB
    assert ev["tree_rss_bytes"] == 6 * GB + 8 * int(2.5 * GB)
    assert ev["worker_rss_bytes_mean"] == int(2.5 * GB) and ev["top"][0]["pid"] == ROOT
    assert "8 workers at ~2.5 GB each" in event.message
    assert (cleared.severity, t_of(cleared)) == ("info", 44)


def test_swap_filling() -> None:
    run = Run([RamPressureDetector()])
    for t in range(0, 60):
        run.tick(t, host=host(avail=10 * GB, swap_total=8 * GB, swap_used=4 * GB + t * 20 * MB))
    event = only(run.events)
    assert event.evidence["reason"] == "swap_filling" and event.evidence[
        "swap_growth_bytes"
    ] >= 256 * (1 << 20)


# -- odd input -------------------------------------------------------------------


def _odd_sample(rng: random.Random, t: float) -> dict[str, Any]:
    bare = GpuSnapshot(index=0, timestamp=T0 + t)
    lost = GpuSnapshot(index=1, timestamp=T0 + t, lost=True)
    half = GpuSnapshot(
        index=2,
        timestamp=T0 + t,
        utilization_gpu_percent=rng.choice([None, 0, 100]),
        power_w=rng.choice([None, 0.0, 80.0, float("nan")]),
        clock_event_mask=rng.choice([None, 0, 0x1FF]),
        sm_clock_mhz=rng.choice([None, 0]),
        sm_clock_max_mhz=rng.choice([None, 0, 2100]),
        temperature_c=rng.choice([None, 120]),
        temperature_slowdown_c=rng.choice([None, 0]),
        thermal_violation_ns=rng.choice([None, 0, 10**12]),
        ecc_volatile_dbe=rng.choice([None, 0]),
        processes=rng.choice([None, ()]),
    )
    absent = DiskSnapshot(
        roles=("checkpoints",),
        paths=("/nope",),
        present=False,
        mount_point=None,
        device=None,
        fs_type=None,
        read_only=None,
        overlay=None,
        total_bytes=None,
        free_bytes=None,
        used_bytes=None,
        write_rate_bps=None,
        error="missing",
    )
    nones = replace(absent, present=True, error=None)
    procs = rng.choice(
        [
            None,
            ProcessTree(ROOT, False, None, ()),
            tree(proc(ROOT, cpu=None, rss=None, cmdline=None), interval=None),
            tree(proc(ROOT), proc(ROOT + 1, ROOT, state="zombie"), proc(7, 99, state="disk-sleep")),
        ]
    )
    hosts = [
        None,
        host(),
        host(absent),
        host(nones, replace(nones, roles=("shm",))),
        host(total=0, avail=0),
    ]
    return {
        "gpus": rng.choice([(), (bare,), (bare, lost, half)]),
        "xids": rng.choice(
            [(), (XidEvent(T0 + t, None, None, 79),), (XidEvent(T0 + t, 7, None, 1),)]
        ),
        "procs": procs,
        "host": rng.choice(hosts),
        "progress": Progress(
            source=rng.choice(["harness", "log", "none"]),
            step=rng.choice([None, 0, 5]),
            last_step_time=rng.choice([None, T0, T0 + t, float("nan")]),
            phase=rng.choice([None, "checkpoint", "done", "weird"]),
            intervals=rng.choice([(), (0.0,), (-1.0, float("inf")), (1.0,) * 64]),
            data_wait_fractions=rng.choice([(), (float("nan"),), (0.9,) * 60]),
        ),
        "alive": rng.choice([True, False]),
        "logs": rng.choice(
            [(), ("",), ("Killed",), ("\x00\x1b[31m",), ("NVRM: Xid (PCI:zz): 79",)]
        ),
        "checkpoint_bytes": rng.choice([None, 0, -1, 13 * GB]),
        "errors": rng.choice([(), ("gpus: boom",)]),
        "expected_gpus": rng.choice([0, 3]),
    }


def test_no_detector_raises_on_odd_input() -> None:
    rng = random.Random(20240611)
    for attempt in range(3):
        w = WatchdogSpec(confirm_s=2, stall_min_s=3, startup_timeout_s=5, power_collapse_s=2)
        run = Run(default_detectors(w, expected_gpus=2), w, attempt=attempt)
        for t in range(0, 300):
            run.tick(float(t), **_odd_sample(rng, float(t)))
    # A foreign snapshot type is read through its dict; a broken one is skipped.

    class Foreign:
        def __init__(self, data: dict[str, Any]) -> None:
            self.data = data

        def to_dict(self) -> dict[str, Any]:
            return self.data

    run = Run(default_detectors(WatchdogSpec()))
    run.tick(0, gpus=[Foreign({"index": 0, "timestamp": T0, "lost": True}), Foreign({})])
    assert [e.kind for e in run.events] == ["gpu_lost"]
    assert math.isfinite(run.events[0].time)


# -- training health -------------------------------------------------------------


def test_loss_nan_stops_once_naming_the_first_bad_step_and_the_checkpoint() -> None:
    run = Run([LossNanDetector()])
    for t in range(5):
        run.tick(t, progress=Progress(source="harness", step=t + 1, metrics={"loss": 1.0}))
    assert run.events == []
    bad = {"loss": {"first": 7, "last_good": 6, "value": "nan"}}
    for t in range(5, 10):
        p = Progress(source="harness", step=t + 3, nonfinite=bad, checkpoint_step=5)
        run.tick(t, progress=p)
    event = only(run.events)  # once, not every tick
    assert (event.kind, event.severity, event.action) == ("loss_nan", "critical", "stop")
    ev = event.evidence
    assert (ev["first_bad_step"], ev["last_good_step"], ev["checkpoint_step"]) == (7, 6, 5)
    assert ev["metric"] == "loss" and ev["value"] == "nan"
    assert "from step 7" in event.message and "checkpoint is step 5" in event.message
    # A new attempt is watched afresh; grad_norm first bad wins when it came first.
    run.attempt = 1
    both = {"loss": {"first": 9, "value": "nan"}, "grad_norm": {"first": 8, "value": "inf"}}
    run.tick(20, progress=Progress(source="log", step=9, nonfinite=both))
    last = run.events[-1]
    assert last.attempt == 1 and last.evidence["metric"] == "grad_norm"
    assert last.evidence["metrics"] == ["grad_norm", "loss"]
    assert last.evidence["checkpoint_step"] is None and "no complete checkpoint" in last.message


def _feed(run: Run, values: Sequence[float], metric: str = "loss", start: int = 1) -> None:
    for i, v in enumerate(values):
        step = start + i
        run.tick(step, progress=Progress(source="harness", step=step, metrics={metric: v}))


def test_loss_explosion_against_the_runs_own_median_held_for_a_few_steps() -> None:
    w = WatchdogSpec(explosion_warmup=10, explosion_window=20, explosion_hold_steps=3)
    run = Run([ExplosionDetector(w)], watchdog=w)
    _feed(run, [1.0 + 0.01 * (i % 5) for i in range(30)])
    _feed(run, [50.0], start=31)  # one spike: no episode
    _feed(run, [1.0] * 3, start=32)
    assert run.events == []
    _feed(run, [40.0, 60.0, 80.0, 90.0, 95.0], start=35)
    event = only(run.alarms())
    assert (event.kind, event.severity) == ("loss_explosion", "warning")
    assert event.evidence["step"] == 37 and event.evidence["value"] == 80.0
    assert event.evidence["baseline_median"] == pytest.approx(1.0, abs=0.03)
    assert event.evidence["absolute"] is False
    _feed(run, [1.0] * 3, start=40)
    assert [e.severity for e in run.of("loss_explosion")] == ["warning", "info"]


def test_grad_norm_above_the_absolute_limit_before_any_warm_up() -> None:
    run = Run([ExplosionDetector()])
    _feed(run, [150.0] * 5, metric="grad_norm")
    event = only(run.events)
    assert event.kind == "grad_explosion" and event.evidence["absolute"] is True
    assert event.evidence["grad_norm_max"] == 100.0 and event.evidence["step"] == 3
    # No new step: the same heartbeat read again counts once.
    for t in (10, 11, 12):
        run.tick(t, progress=Progress(source="harness", step=5, metrics={"grad_norm": 1.0}))
    assert len(run.events) == 1


def _rate(run: Run, start_t: float, end_t: float, per_s: float, step: float, **kw: Any) -> float:
    t = start_t
    while t < end_t:
        step += per_s * 0.5
        run.tick(t, progress=Progress(source="harness", step=int(step), **kw))
        t += 0.5
    return step


def test_throughput_drop_against_the_steady_rate_once() -> None:
    w = WatchdogSpec(throughput_window_s=5)
    run = Run([ThroughputDetector(w)], watchdog=w)
    step = _rate(run, 0, 30, 10.0, 0, phase="train")
    assert run.events == []
    step = _rate(run, 30, 45, 1.0, step, phase="train")
    event = only(run.events)
    assert (event.kind, event.severity) == ("throughput_drop", "warning")
    ev = event.evidence
    assert ev["steady_steps_per_s"] == pytest.approx(10.0, rel=0.1)
    assert ev["steps_per_s"] < 3.0 and ev["window_s"] == 5
    assert 32 <= t_of(event) <= 36
    _rate(run, 45, 60, 10.0, step, phase="train")
    assert [e.severity for e in run.events] == ["warning", "info"]


def test_throughput_drop_not_while_checkpointing_throttled_or_stalled() -> None:
    w = WatchdogSpec(throughput_window_s=5)
    for kw in ({"phase": "checkpoint"}, {"data_wait_fractions": (0.9,) * 10}):
        run = Run([ThroughputDetector(w)], watchdog=w)
        step = _rate(run, 0, 30, 10.0, 0, phase="train")
        _rate(run, 30, 45, 1.0, step, **kw)
        assert run.events == [], kw
    run = Run([ThroughputDetector(w)], watchdog=w)
    step = _rate(run, 0, 30, 10.0, 0, phase="train")
    _rate(run, 30, 45, 0.0, step, phase="train")  # no step at all: a stall, not this
    assert run.events == []


@pytest.mark.parametrize(
    ("mask", "clock", "excused"),
    [(CLOCK_EVENT_REASONS["HwThermalSlowdown"], 1500, True), (POWER_CAP, 1200, True),
     (POWER_CAP, 2050, False)],
)  # fmt: skip
def test_throughput_drop_not_while_the_gpu_clock_is_slowed(
    mask: int, clock: int, excused: bool
) -> None:
    """Heat or a power cap that cuts the clock is the cause (ThrottleDetector's); a
    power-cap bit on a GPU at full speed, as many busy GPUs show, is none."""

    def edit(index: int, t: float, s: GpuSnapshot) -> GpuSnapshot:
        if t < 30:
            return s
        return replace(s, clock_event_mask=mask, sm_clock_mhz=clock, sm_clock_max_mhz=2100)

    w = WatchdogSpec(throughput_window_s=5)
    run = Run([ThroughputDetector(w)], watchdog=w)
    gpus = Gpus(Scripted(Scenario("healthy", pid=ROOT), edit))
    t, step = 0.0, 0.0
    while t < 45:
        step += (10.0 if t < 30 else 1.0) * 0.5
        run.tick(t, gpus=gpus.at(t)[0], progress=Progress(source="harness", step=int(step)))
        t += 0.5
    assert [e.kind for e in run.alarms()] == ([] if excused else ["throughput_drop"])

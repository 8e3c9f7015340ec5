"""The supervisor: one training command, watched every tick and kept alive with evidence.

:class:`Supervisor` starts the command in its own session (so its whole tree
can be signalled, and a guard makes it die with the agent), keeps its output
in ``RUN_DIR/logs/attempt-N.log`` while passing it through, and every
``watchdog.sample_interval_s``:

1. samples GPUs, the process tree and the disks (:mod:`runner.sampling`);
2. reads progress (:mod:`runner.agent.progress`) and the new log lines;
3. hands one :class:`~runner.agent.observe.Observation` to every detector (a
   detector that raises becomes a ``detector_error`` event; the agent goes on);
4. writes the events to ``events.jsonl`` and the state to ``status.json``.

What it does about an event is the event's ``action``:

- ``dump``: stack dumps of the whole tree (:mod:`runner.agent.stacks`);
- ``restart``: stack dumps, then the process group is killed (SIGTERM and
  SIGCONT, a grace period, SIGKILL) and the command started again with the
  job's ``restart.resume_args``, so it resumes from its newest complete
  checkpoint, within the :class:`~runner.agent.restart.RestartBudget`;
- ``stop``: stack dumps, kill, no restart; except an ``oom`` with
  ``restart.on_oom: reduce_batch``, restarted once per OOM with the batch
  override halved. ``xid``, ``ecc`` and ``gpu_lost`` stop the run as a bad host.

An OOM line alone is no stop: the ``oom`` detector waits for what the process
does next (a step: a handled OOM, a warning; an exit: it died of it; neither,
until a confirmed stall would be due: it stopped making progress after it).

A command that exits non-zero by itself is restarted within the same budget,
except: after an ``oom`` (never retried unchanged), after a bad-host event,
exit code 2 before the first step (the command rejected its arguments: the
argparse/click convention, which a restart would only repeat), and death by
SIGKILL, SIGTERM, SIGINT or SIGHUP that the agent did not send (someone, or
the kernel's OOM killer, stopped it on purpose).

Exit codes of :meth:`Supervisor.run` (and ``runner agent run``):

=====  ==================================================================
0      the command finished (it exited 0)
N      the command's own code (128+N for signal N) when it ended by itself
       and is not restarted: a failure, a crash loop, an OOM it died of
3      :data:`EXIT_STOPPED`: the agent killed the run and did not restart it
       (a stall, disk full, an OOM it stopped stepping after, past the
       budget or policy)
4      :data:`EXIT_BAD_HOST`: stopped because the host is bad (XID, ECC,
       GPU lost): move the job to another machine
=====  ==================================================================

One cause, one code: a script that prints an OOM and exits 1 ends with 1,
every time, not 1 or 3 by whether a tick saw the line before the process was
gone. The code says who ended the run: the process's own exit is the truer
account (and what a user sees run without the agent), and the agent waits
for it rather than racing it to a kill: until a confirmed stall would be
due, and at least 10 s after the line (less only where that limit is less).
Only an OOM the process outlives without stepping is the agent's doing, so 3.
The same holds for any other stop a log line raises, which the process may be
dying of (``No space left on device``, a host OOM kill): it is given
``min(confirm_s, 10 s)`` to exit by itself (its own code, no stacks to dump)
before the agent dumps and kills it (3).

The last event (``finished``, ``failed`` or ``stopped``) and ``status.json``
carry one line that says what happened, e.g. ``stopped: froze at step 1234
(...); restart budget spent (...); 5 restarts used, newest checkpoint step
1200; stacks in runs/x/stacks/006-stall``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal

from runner.agent.logs import LOGS_DIR, MAX_LOG_BYTES, AttemptLog, attempt_log_path
from runner.agent.observe import Detector, Observation
from runner.agent.progress import ProgressTracker
from runner.agent.restart import (
    OverrideStyle,
    RestartBudget,
    current_value,
    guess_style,
    halve,
    set_override,
)
from runner.agent.stacks import Blocking, StackDump, dump_tree, find_py_spy, new_dump_dir
from runner.constants import ENV_DEVICE
from runner.errors import RunnerError
from runner.harness import ENV_CHECKPOINT_DIR, ENV_RUN_DIR, latest_checkpoint
from runner.programs import RunContext, program_for
from runner.rundir import Action, Event, EventLog, RunState, SampleLog, Status, read_events
from runner.sampling.procs import redact_cmdline

if TYPE_CHECKING:
    from runner.hub.discovery import Scanner
    from runner.hub.pusher import Pusher
from runner.sampling.sample import GpuSnapshotLike, GpuSource, Sample, Sampler, XidEventLike
from runner.spec import JobSpec, RestartPolicy, WatchdogSpec

__all__ = [
    "BAD_HOST_KINDS",
    "EXIT_BAD_HOST",
    "EXIT_STOPPED",
    "Supervisor",
    "SupervisorResult",
    "die_with_parent",
]

#: The agent killed the run and will not restart it.
EXIT_STOPPED = 3
#: The agent stopped the run because the host is bad (XID, ECC, GPU lost).
EXIT_BAD_HOST = 4
#: Event kinds that mean the machine, not the job, is broken (DCGM's FAIL class).
BAD_HOST_KINDS = frozenset({"xid", "ecc", "gpu_lost"})
#: Signals that mean someone stopped the process on purpose, when the agent did not.
_DELIBERATE = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
_RANK: Mapping[Action, int] = {"none": 0, "dump": 1, "restart": 2, "stop": 3}
#: Stack dumps per agent session, at most (each is a folder in the run).
MAX_DUMPS = 50
#: Longest restart delay, seconds (it doubles while restarts gain no checkpoint).
MAX_RESTART_DELAY_S = 60.0
#: Seconds, at most (``confirm_s`` if less), a process is given to exit by itself
#: after a log line it may be dying of, before the agent dumps and kills it.
EXIT_GRACE_S = 10.0


@dataclass(frozen=True)
class SupervisorResult:
    """How a supervised run ended."""

    exit_code: int
    state: RunState
    #: One line for a human: what happened, restarts used, newest checkpoint, stacks.
    summary: str
    attempts: int
    restarts: int
    bad_host: bool = False
    #: Stack dump folders written in this session, oldest first.
    stack_dirs: tuple[Path, ...] = ()


def die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child die (SIGKILL) with the process that started it.

    The job runs in its own session (so its whole tree can be signalled), which
    also means it would outlive a killed agent as an orphan that trains on,
    unseen. ``prctl`` is looked up here, in the parent, so the child calls it
    without loading anything between fork and exec. Linux only; elsewhere a
    no-op. The guard fires when the thread that started the child ends: start
    children from the thread that outlives them.
    """
    prctl: Any = None
    if sys.platform == "linux":
        try:
            import ctypes

            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            prctl = None

    def arm() -> None:
        if prctl is None:
            return
        pr_set_pdeathsig = 1
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(137)

    return arm


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# --------------------------------------------------------------------------- GPUs


class _VisibleGpus:
    """A GPU source limited to the GPUs the job may use (``CUDA_VISIBLE_DEVICES``).

    On a shared server the other GPUs belong to other people: their power or
    temperature says nothing about this run. Entries are UUIDs (``GPU-...``,
    what ``runner gpus --pick`` exports) or NVML indices.
    """

    def __init__(self, source: GpuSource, visible: str) -> None:
        self.source = source
        items = [v.strip() for v in visible.split(",") if v.strip()]
        self.uuids = {v for v in items if v.startswith(("GPU-", "MIG-"))}
        self.indices = {int(v) for v in items if v.isdigit()}

    def sample_gpus(self) -> tuple[Sequence[GpuSnapshotLike], Sequence[XidEventLike]]:
        gpus, xids = self.source.sample_gpus()
        kept, indices = [], set()
        for gpu in gpus:
            data = gpu.to_dict()
            if data.get("uuid") in self.uuids or data.get("index") in self.indices:
                kept.append(gpu)
                indices.add(data.get("index"))
        return kept, [x for x in xids if x.to_dict().get("gpu_index") in indices]


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class _CheckpointState:
    step: int | None = None
    #: Changes whenever a new complete checkpoint appears.
    marker: Hashable | None = None
    size_bytes: int | None = None
    #: The newest complete checkpoint's folder (where the layout says one).
    path: Path | None = None


class _Checkpoints:
    """The newest complete checkpoint of the job, cheaply, once per tick.

    Harness layout: :func:`runner.harness.latest_checkpoint`, rescanned only
    when the folder changes. Other layouts (LeRobot, DINO WM, openpi), whose
    completeness runner cannot read yet: the newest modification time in the
    folder stands in, so a crash loop is still told from a run that saves.
    """

    RESCAN_S = 30.0
    MAX_ENTRIES = 5000
    #: A foreign checkpoint counts once unchanged this long (its writer gives no sign).
    SETTLE_S = 5.0

    def __init__(self, path: Path | None, layout: str, size_gb: float | None) -> None:
        self.path = path
        self.layout = layout
        self.spec_bytes = None if size_gb is None else int(size_gb * 1e9)
        self._dir_mtime: int | None = None
        self._scanned = -1e9
        self._state = _CheckpointState(size_bytes=self.spec_bytes)
        self._scanner: Scanner | None = None

    def poll(self, *, force: bool = False, writer_gone: bool = False) -> _CheckpointState:
        """The newest complete checkpoint; ``force`` looks again even if nothing seems changed,
        ``writer_gone`` (the training process has ended) takes what is whole without waiting
        for it to settle."""
        if self.path is None:
            return self._state
        try:
            mtime: int | None = self.path.stat().st_mtime_ns
        except OSError:
            mtime = None
        now = time.monotonic()
        if not force and mtime == self._dir_mtime and now - self._scanned < self.RESCAN_S:
            return self._state
        self._dir_mtime, self._scanned = mtime, now
        if mtime is None:
            return self._state
        if self.layout == "harness":
            ck = latest_checkpoint(self.path)
            if ck is not None:
                self._state = _CheckpointState(
                    ck.step, ck.step, ck.size or self.spec_bytes, ck.path
                )
        elif self.layout in ("lerobot", "openpi"):
            self._scan_foreign(writer_gone)
        else:
            newest = self._newest_mtime()
            if newest is not None:
                self._state = _CheckpointState(None, newest, self.spec_bytes)
        return self._state

    def _scan_foreign(self, writer_gone: bool) -> None:
        """LeRobot's and openpi's step folders, complete as :mod:`runner.hub.discovery` says."""
        from runner.hub.discovery import Scanner

        assert self.path is not None
        layout: Any = self.layout
        if writer_gone:
            scanner = Scanner(layout, self.path, settle_s=0.0)
        else:
            if self._scanner is None:
                self._scanner = Scanner(layout, self.path, settle_s=self.SETTLE_S)
            scanner = self._scanner
        latest = scanner.scan().newest
        if latest is not None:
            self._state = _CheckpointState(
                latest.step, latest.step, latest.size or self.spec_bytes, latest.source
            )

    def _newest_mtime(self) -> int | None:
        assert self.path is not None
        newest: int | None = None
        seen = 0
        for root, dirs, files in os.walk(self.path):
            for name in files:
                seen += 1
                with contextlib.suppress(OSError):
                    m = os.stat(os.path.join(root, name)).st_mtime_ns
                    newest = m if newest is None else max(newest, m)
            if seen > self.MAX_ENTRIES or root.count(os.sep) - str(self.path).count(os.sep) > 3:
                dirs.clear()
        return newest


# --------------------------------------------------------------------------- attempts


@dataclass
class _Attempt:
    number: int
    argv: list[str]
    extra_env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: AttemptLog
    started: float  # wall clock
    exited: threading.Event = field(default_factory=threading.Event)
    returncode: int | None = None
    killed_by_agent: bool = False
    #: The event that made the agent act (restart or stop), if any.
    trigger: Event | None = None
    events: list[Event] = field(default_factory=list)
    dumped: set[str] = field(default_factory=set)
    saw_step: bool = False
    step: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass(frozen=True)
class _Decision:
    restart: bool
    state: RunState = "finished"
    exit_code: int = 0
    reason: str = ""
    bad_host: bool = False
    argv: list[str] | None = None
    extra_env: dict[str, str] | None = None
    note: str = ""


class Supervisor:
    """Runs ``command`` under the agent; see the module docstring. One use: :meth:`run`.

    ``job`` supplies the policy (watchdog thresholds, restart policy, progress
    pattern, checkpoint folder and layout, how overrides reach the job,
    expected GPUs); ``watchdog`` and ``restart`` override its sections, and
    without a job the defaults apply. ``detectors`` default to
    :func:`runner.agent.detectors.default_detectors`; ``gpu_source`` to NVML
    through :func:`runner.sampling.nvml.open_nvml` (which honours
    ``RUNNER_FAKE_NVML``), limited to ``CUDA_VISIBLE_DEVICES`` when the
    child's environment sets it.

    The child's environment is ``env`` (default: this process's) plus
    ``extra_env``, ``RUNNER_RUN_DIR``, ``PYTHONUNBUFFERED=1`` and, with
    ``dataset``, the job's dataset variable. ``on_event`` is called with every
    event the agent writes (the CLI prints them). ``stdout``/``stderr`` are the
    binary streams the child's output is copied to (default: ours);
    ``passthrough=False`` copies it nowhere (the log file still has it).
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        run_dir: Path | str,
        job: JobSpec | None = None,
        watchdog: WatchdogSpec | None = None,
        restart: RestartPolicy | None = None,
        detectors: Sequence[Detector] | None = None,
        gpu_source: GpuSource | None = None,
        env: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        dataset: Path | str | None = None,
        checkpoint_dir: Path | str | None = None,
        expected_gpus: int | None = None,
        on_event: Callable[[Event], None] | None = None,
        passthrough: bool = True,
        stdout: BinaryIO | IO[bytes] | None = None,
        stderr: BinaryIO | IO[bytes] | None = None,
        kill_grace_s: float = 10.0,
        restart_delay_s: float = 2.0,
        stack_timeout_s: float = 10.0,
        log_max_bytes: int = MAX_LOG_BYTES,
        forward_signals: bool = True,
        py_spy: str | None = None,
        pusher: Pusher | Literal["auto"] | None = "auto",
        push_flush_s: float = 600.0,
    ) -> None:
        if not command:
            raise RunnerError("no command to supervise: pass one after --")
        self.command = list(command)
        self.run_dir = Path(run_dir).resolve()
        self.job = job
        self.watchdog = watchdog or (job.watchdog if job else WatchdogSpec())
        self.restart_policy = restart or (job.restart if job else RestartPolicy())
        self.env = dict(os.environ if env is None else env)
        self.extra_env = dict(extra_env or {})
        self.cwd = Path(cwd) if cwd else None
        self.dataset = Path(dataset) if dataset else None
        self.program = program_for(job)
        merged = {**self.env, **self.extra_env}
        self._ctx = RunContext(
            run_dir=self.run_dir,
            cwd=(self.cwd or Path.cwd()).resolve(),
            env=merged,
            dataset=self.dataset,
            device=merged.get(ENV_DEVICE),
        )
        self.on_event = on_event
        self.kill_grace_s = kill_grace_s
        self.restart_delay_s = restart_delay_s
        self.stack_timeout_s = stack_timeout_s
        self.log_max_bytes = log_max_bytes
        self.forward_signals = forward_signals
        self.py_spy = find_py_spy() if py_spy is None else py_spy
        if passthrough:
            self._sinks: dict[str, BinaryIO | IO[bytes] | None] = {
                "stdout": stdout if stdout is not None else _binary(sys.stdout),
                "stderr": stderr if stderr is not None else _binary(sys.stderr),
            }
        else:
            self._sinks = {"stdout": None, "stderr": None}
        self.expected_gpus = (
            expected_gpus if expected_gpus is not None else (job.resources.gpus if job else 0)
        )
        self.checkpoint_dir = self._checkpoint_dir(checkpoint_dir)
        self._gpu_source_arg = gpu_source
        self._detectors_arg = detectors
        self._events = EventLog(self.run_dir)
        self._samples = SampleLog(self.run_dir)
        self._last_history = 0.0
        progress = self.program.progress(job, self.command) if job else None
        self._progress = ProgressTracker(
            self.run_dir,
            progress.patterns if progress else None,
            line_every=progress.line_every if progress else None,
            first_epoch=progress.first_epoch if progress else 0,
        )
        layout = job.checkpoints.layout if job else "harness"
        size_gb = job.checkpoints.size_gb if job else None
        self._checkpoints = _Checkpoints(self.checkpoint_dir, layout, size_gb)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._current: _Attempt | None = None
        self._user_stop: str | None = None
        self._stop_signals = 0
        self._detector_errors: set[tuple[str, str]] = set()
        self._stack_dirs: list[Path] = []
        self._last_event: Event | None = None
        self._last_sample: Sample | None = None
        self._restarts = 0
        self._attempts = 0
        self._started = time.time()
        self._state: RunState = "starting"
        self._summary = "starting"
        self._oom_reductions = 0
        self._used = False
        self._pusher_arg = pusher
        self.push_flush_s = push_flush_s
        self._pusher: Pusher | None = None
        self._making_space: threading.Thread | None = None
        self._mirror: subprocess.Popen[bytes] | None = None
        self._base_step = 0
        self._resume_notes: tuple[str, ...] = ()

    # -- set-up ------------------------------------------------------------------

    def _checkpoint_dir(self, given: Path | str | None) -> Path | None:
        if given is not None:
            return Path(given).resolve()
        env_dir = self.extra_env.get(ENV_CHECKPOINT_DIR) or self.env.get(ENV_CHECKPOINT_DIR)
        if env_dir:
            return Path(env_dir).resolve()
        if self.job is not None and (root := self.program.checkpoint_root(self.job, self._ctx)):
            return root.resolve()
        spec = self.job.checkpoints if self.job else None
        if spec is None or spec.layout == "harness":
            rel = Path(spec.path if spec else "checkpoints")
            return rel if rel.is_absolute() else self.run_dir / rel
        path = Path(spec.path)
        if path.is_absolute():
            return path
        base = self.cwd or (Path(self.job.workdir) if self.job and self.job.workdir else None)
        return ((base or Path.cwd()) / path).resolve()

    def _disks(self) -> dict[str, str]:
        disks = {"run": str(self.run_dir)}
        if self.checkpoint_dir is not None:
            disks["checkpoints"] = str(_existing(self.checkpoint_dir))
        if self.dataset is not None:
            disks["dataset"] = str(_existing(self.dataset))
        if os.path.isdir("/dev/shm"):
            disks["shm"] = "/dev/shm"
        return disks

    def _gpu_source(self, env: Mapping[str, str]) -> tuple[GpuSource, Callable[[], None]]:
        source = self._gpu_source_arg
        close: Callable[[], None] = lambda: None  # noqa: E731
        if source is None:
            from runner.sampling.nvml import open_nvml

            nvml = open_nvml()
            source, close = nvml, nvml.close
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and visible.strip():
            source = _VisibleGpus(source, visible)
        return source, close

    def _detectors(self) -> list[Detector]:
        if self._detectors_arg is not None:
            return list(self._detectors_arg)
        from runner.agent.detectors import default_detectors

        return list(default_detectors(self.watchdog, expected_gpus=self.expected_gpus))

    def _first_attempt_number(self) -> int:
        """Attempts continue the run folder's numbering, so no earlier log is overwritten."""
        numbers = [e.attempt for e in read_events(self.run_dir)]
        logs = self.run_dir / LOGS_DIR
        if logs.is_dir():
            for entry in logs.iterdir():
                stem = entry.name.split(".")[0]
                if stem.startswith("attempt-") and stem[8:].isdigit():
                    numbers.append(int(stem[8:]))
        return max(numbers) + 1 if numbers else 0

    # -- the run -----------------------------------------------------------------

    def run(self) -> SupervisorResult:
        """Supervise until the run finishes or is stopped; never raises for the job's failures.

        Raises :class:`RunnerError` when the command cannot be started at all.
        """
        if self._used:
            raise RuntimeError("a Supervisor runs once; make another")
        self._used = True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if (
            self.checkpoint_dir is not None
            and self.checkpoint_dir.is_relative_to(self.run_dir)
            and self.program.kind == "generic"
        ):
            # A known program makes its own folder (LeRobot refuses an output folder that
            # exists when it does not resume).
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        detectors = self._detectors()
        child_env = self._child_env(self.extra_env)
        gpu_source, close_gpus = self._gpu_source(child_env)
        self._sampler = Sampler(gpu_source=gpu_source, disks=self._disks())
        self._budget = RestartBudget(
            self.restart_policy, initial_checkpoint=self._checkpoints.poll().marker
        )
        number = self._first_attempt_number()
        argv, extra_env, note = self._first_command()
        self._write_status()
        self._pusher = self._make_pusher()
        if self._pusher is not None:
            self._pusher.start()
        self._start_mirror()
        ended_cleanly = False
        try:
            with self._signals():
                while True:
                    attempt = self._start(number, argv, extra_env, note)
                    self._watch(attempt, detectors)
                    decision = self._decide(attempt)
                    if not decision.restart:
                        result = self._finish(attempt, decision)
                        ended_cleanly = True
                        return result
                    delay = self._restart_delay()
                    self._announce_restart(attempt, decision, delay)
                    self._wake.clear()
                    if self._user_stop is None:
                        self._wake.wait(delay)
                    if self._user_stop is not None:
                        code = attempt.returncode or 0
                        stopped = _Decision(False, "stopped", _exit_code(code), self._user_stop)
                        result = self._finish(attempt, stopped)
                        ended_cleanly = True
                        return result
                    number += 1
                    argv = decision.argv or argv
                    extra_env = decision.extra_env if decision.extra_env is not None else extra_env
                    note = decision.note
        except BaseException:
            # A bug of the agent's own (or an interrupt where signals are not
            # forwarded) must not leave the job running unsupervised.
            attempt_now = self._current
            if attempt_now is not None and not attempt_now.exited.is_set():
                self.kill_grace_s = min(self.kill_grace_s, 5.0)
                self._terminate(attempt_now)
            raise
        finally:
            close_gpus()
            self._close_pusher(flush=ended_cleanly)
            self._stop_mirror()

    # -- checkpoints to the Hub --------------------------------------------------

    def _make_pusher(self) -> Pusher | None:
        """The job's pusher: its Hub repo, with the token from the environment."""
        if self._pusher_arg != "auto":
            return self._pusher_arg
        if self.job is None or self.job.hub is None or self.checkpoint_dir is None:
            return None
        from runner.hub.client import HubClient, HubError
        from runner.hub.pusher import Pusher

        repo = self.job.hub.repo
        try:
            client = HubClient.from_env()
        except HubError as err:
            self._emit(Event("push_disabled", "warning", f"no pushes to {repo}: {err}"))
            return None
        if not client.has_token:
            self._emit(
                Event(
                    "push_disabled",
                    "warning",
                    f"checkpoints are not pushed to {repo}: no HF_TOKEN in the environment; "
                    "they live on this disk only",
                )
            )
            return None
        return Pusher.from_spec(
            client, self.job, self.run_dir, root=self.checkpoint_dir, events=self._emit
        )

    def _make_space(self, event: Event) -> None:
        """Disk pressure: push and rotate on a side thread (it may upload for minutes)."""
        pusher = self._pusher
        if pusher is None or (self._making_space is not None and self._making_space.is_alive()):
            return
        size = self._checkpoints.poll().size_bytes or 0
        needed = int(max(size * self.watchdog.disk_warn_factor, 1))

        def run() -> None:
            with contextlib.suppress(Exception):  # its failure is its own critical event
                pusher.ensure_space(needed)

        self._making_space = threading.Thread(target=run, name="make-space", daemon=True)
        self._making_space.start()

    def _close_pusher(self, *, flush: bool) -> None:
        """Stop the pusher; after a run that ended normally, push what is left first."""
        pusher, self._pusher = self._pusher, None
        if pusher is None:
            return
        # flush() gives up once the pusher is stopping: flush first, then stop.
        pushed_all = pusher.flush(self.push_flush_s, writer_gone=True) if flush else True
        pusher.stop(timeout=self.push_flush_s)
        if not pushed_all:
            self._emit(
                Event(
                    "push_failed",
                    "warning",
                    f"some checkpoints were not pushed within {self.push_flush_s:.0f} s; "
                    "they are on this disk: `runner push` them before this host goes",
                )
            )

    # -- the W&B mirror ----------------------------------------------------------

    def _start_mirror(self) -> None:
        """The job's W&B mirror (:mod:`runner.agent.mirror`), in a process of its own."""
        spec = self.job.wandb if self.job else None
        if self.job is None or spec is None or not spec.enabled:
            return
        from runner.agent.mirror import start_mirror

        try:
            self._mirror = start_mirror(self.run_dir, spec, job=self.job.name, env=self.env)
        except OSError as exc:
            message = f"W&B mirror not started: {exc.strerror or exc}; the run goes on unmirrored"
            self._emit(Event("wandb_error", "warning", message))

    def _stop_mirror(self) -> None:
        """Tell the mirror the run is over (its stdin closes: a last read, then it
        finishes), and wait ``wandb.flush_s`` for it to upload; its failure never
        changes the run's end."""
        proc, self._mirror = self._mirror, None
        if proc is None or self.job is None:
            return
        flush_s = self.job.wandb.flush_s
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=flush_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            self._emit(
                Event(
                    "wandb_error",
                    "warning",
                    f"the W&B mirror did not finish within {flush_s:.0f} s (network?) and was "
                    "killed: W&B may lack the run's last minutes; the run folder has them all",
                )
            )

    def request_stop(self, reason: str = "stopped on request") -> None:
        """Stop the run from another thread: SIGTERM to the group, SIGKILL after the grace period.

        No restart follows; :meth:`run` returns with state ``stopped``.
        """
        with self._lock:
            self._user_stop = reason
            attempt = self._current
        self._wake.set()
        if attempt is not None and not attempt.exited.is_set():
            threading.Thread(
                target=self._terminate, args=(attempt,), name="agent-stop", daemon=True
            ).start()

    # -- starting ----------------------------------------------------------------

    def _child_env(self, extra_env: Mapping[str, str]) -> dict[str, str]:
        env = {**self.env, **extra_env}
        env[ENV_RUN_DIR] = str(self.run_dir)
        env["PYTHONUNBUFFERED"] = "1"
        if self.dataset is not None:
            env[self.job.dataset.env if self.job else "DATASET_DIR"] = str(self.dataset)
        return env

    def _start(
        self, number: int, argv: list[str], extra_env: dict[str, str], note: str
    ) -> _Attempt:
        env = self._child_env(extra_env)
        log = AttemptLog(
            attempt_log_path(self.run_dir, number),
            passthrough=self._sinks,
            max_bytes=self.log_max_bytes,
        )
        started = time.time()
        self._progress.reset(started, base_step=self._base_step)
        try:
            proc = subprocess.Popen(
                _python(argv),
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()) if sys.platform == "linux" else None,
            )
        except OSError as exc:
            log.close()
            message = f"cannot start {argv[0]!r}: {exc.strerror or exc}"
            self._state, self._summary = "failed", f"failed: {message}"
            self._emit(Event("failed", "critical", f"failed: {message}", attempt=number))
            self._write_status(exit_code=127)
            raise RunnerError(message, exit_code=127) from exc
        assert proc.stdout is not None and proc.stderr is not None
        log.attach("stdout", proc.stdout)
        log.attach("stderr", proc.stderr)
        attempt = _Attempt(number, argv, extra_env, proc, log, started)
        threading.Thread(
            target=self._wait, args=(attempt,), name=f"agent-wait-{proc.pid}", daemon=True
        ).start()
        with self._lock:
            self._current = attempt
        self._attempts += 1
        self._sampler.set_root_pid(proc.pid)
        self._state = "running"
        ck = self._checkpoints.poll()
        resume = f"; newest checkpoint step {ck.step}" if ck.step is not None else ""
        self._emit(
            Event(
                "started",
                "info",
                f"attempt {number} started: pid {proc.pid}{resume}" + (f"; {note}" if note else ""),
                evidence={
                    "pid": proc.pid,
                    "command": redact_cmdline(argv),
                    "log": str(log.path.relative_to(self.run_dir)),
                    "checkpoint_step": ck.step,
                    "restarts": self._restarts,
                },
                attempt=number,
            )
        )
        self._summary = f"running: attempt {number} started, no step yet"
        self._write_status()
        return attempt

    def _wait(self, attempt: _Attempt) -> None:
        attempt.returncode = attempt.proc.wait()
        attempt.exited.set()
        self._wake.set()

    # -- watching ----------------------------------------------------------------

    def _watch(self, attempt: _Attempt, detectors: Sequence[Detector]) -> None:
        interval = self.watchdog.sample_interval_s
        next_tick = time.monotonic() + interval
        while True:
            if attempt.exited.wait(max(0.0, next_tick - time.monotonic())):
                break
            next_tick += interval
            if next_tick <= time.monotonic():  # a slow tick: skip, do not bunch up
                next_tick = time.monotonic() + interval
            events = self._tick(attempt, detectors, alive=True)
            if self._user_stop is None and self._act(attempt, events):
                return
        # It ended by itself: take what it wrote last, then let detectors see the end.
        self._clear_group(attempt)
        attempt.log.join(2.0)
        events = self._tick(attempt, detectors, alive=False)
        for event in events:
            if _RANK[event.action] >= _RANK["restart"] and self._stronger(attempt, event):
                attempt.trigger = event
        self._exited_event(attempt)

    def _tick(
        self, attempt: _Attempt, detectors: Sequence[Detector], *, alive: bool
    ) -> list[Event]:
        now = time.time()
        sample = self._sampler.sample()
        self._last_sample = sample
        lines = attempt.log.lines()
        ck = self._checkpoints.poll()
        progress = self._progress.update(lines, now, checkpoint_step=ck.step)
        if progress.step is not None:
            attempt.saw_step = True
            attempt.step = progress.step
        obs = Observation(
            now=now,
            attempt=attempt.number,
            attempt_started=attempt.started,
            sample=sample,
            progress=progress,
            alive=alive,
            training_pid=attempt.pid,
            watchdog=self.watchdog,
            log_lines=tuple(lines),
            checkpoint_bytes=ck.size_bytes,
            checkpoint_path=str(self.checkpoint_dir) if self.checkpoint_dir else None,
            num_gpus_expected=self.expected_gpus,
            exit_code=None
            if alive or attempt.returncode is None
            else _exit_code(attempt.returncode),
        )
        events: list[Event] = []
        for detector in detectors:
            name = str(getattr(detector, "name", type(detector).__name__))
            try:
                found = list(detector.observe(obs))
                for event in found:
                    if not isinstance(event, Event):
                        raise TypeError(f"observe() returned {type(event).__name__}, not an Event")
            except Exception as exc:  # the agent must never die of a detector
                error = self._detector_error(name, exc, attempt.number)
                if error is not None:
                    events.append(error)
                continue
            for event in found:
                if event.attempt != attempt.number:
                    event = dataclasses.replace(event, attempt=attempt.number)
                events.append(event)
        for event in events:
            attempt.events.append(event)
            self._emit(event)
            if event.kind in ("disk_low", "disk_full"):
                self._make_space(event)
        if self._state == "running":
            self._summary = self._running_summary(attempt)
        self._write_status(attempt=attempt)
        return events

    def _detector_error(self, name: str, exc: Exception, attempt: int) -> Event | None:
        key = (name, f"{type(exc).__name__}: {exc}")
        if key in self._detector_errors:
            return None  # reported once; it is still called every tick
        self._detector_errors.add(key)
        where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        at = f" at {os.path.basename(where[0].filename)}:{where[0].lineno}" if where else ""
        message = " ".join(f"detector {name} failed: {key[1]}{at}; the agent goes on".split())
        return Event(
            "detector_error",
            "warning",
            message[:500],
            evidence={
                "detector": name,
                "error": key[1][:1000],
                "traceback": "".join(traceback.format_exception(exc))[-4000:],
            },
            attempt=attempt,
        )

    def _stronger(self, attempt: _Attempt, event: Event) -> bool:
        current = attempt.trigger
        return current is None or _RANK[event.action] > _RANK[current.action]

    def _act(self, attempt: _Attempt, events: Sequence[Event]) -> bool:
        """Dump, restart or stop for this tick's events; True when the attempt was ended."""
        strongest: Event | None = None
        for event in events:
            if event.action != "none" and (
                strongest is None or _RANK[event.action] > _RANK[strongest.action]
            ):
                strongest = event
        if strongest is None:
            return False
        if strongest.action == "dump":
            if strongest.kind not in attempt.dumped:
                attempt.dumped.add(strongest.kind)
                self._dump(attempt, strongest)
            return False
        attempt.trigger = strongest
        grace = min(self.watchdog.confirm_s, EXIT_GRACE_S) if _may_be_exiting(strongest) else 0.0
        if attempt.exited.wait(grace):
            self._clear_group(attempt)  # it ended by itself: its own code, nothing to dump
        else:
            self._dump(attempt, strongest)
            self._terminate(attempt)
        attempt.log.join(2.0)
        self._exited_event(attempt)
        return True

    def _dump(self, attempt: _Attempt, trigger: Event) -> StackDump | None:
        if not self.watchdog.stack_dumps or len(self._stack_dirs) >= MAX_DUMPS:
            return None
        directory = new_dump_dir(self.run_dir, trigger.kind)
        dump = dump_tree(
            attempt.pid,
            directory,
            run_dir=self.run_dir,
            py_spy=self.py_spy,
            timeout_s=self.stack_timeout_s,
        )
        self._stack_dirs.append(directory)
        blocking = dump.blocking(attempt.pid) or dump.blocking(self._progress.trainer_pid)
        where = "" if blocking is None else _where_it_blocks(blocking)
        failed = [d for d in dump.dumps if d.file is None]
        tail = f"; {len(failed)} could not be dumped" if failed else ""
        self._emit(
            Event(
                "stack_dump",
                "info",
                f"stacks of {len(dump.files)} process(es) in {self._rel(directory)} "
                f"after {trigger.kind}{where}{tail}",
                evidence={
                    **dump.evidence(self.run_dir),
                    "trigger": trigger.kind,
                    "blocking": None if blocking is None else blocking.to_dict(),
                },
                attempt=attempt.number,
            )
        )
        return dump

    # -- ending an attempt -------------------------------------------------------

    def _terminate(self, attempt: _Attempt) -> None:
        """SIGTERM (and SIGCONT, so a stopped process gets it) to the group; SIGKILL after grace."""
        attempt.killed_by_agent = True
        group = attempt.pid
        for sig in (signal.SIGTERM, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
        if not attempt.exited.wait(self.kill_grace_s):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
            attempt.exited.wait(10.0)
        self._clear_group(attempt)

    def _clear_group(self, attempt: _Attempt) -> None:
        """Kill what is left of the group once its leader is gone (workers, strays)."""
        group = attempt.pid
        deadline = time.monotonic() + 2.0
        sent_term = False
        while True:
            try:
                os.killpg(group, 0)
            except (ProcessLookupError, PermissionError):
                return
            if not sent_term:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGTERM)
                    os.killpg(group, signal.SIGCONT)
                sent_term = True
            elif time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)
                return
            time.sleep(0.05)

    def _exited_event(self, attempt: _Attempt) -> None:
        attempt.exited.wait(15.0)
        attempt.log.close()
        code = _exit_code(attempt.returncode if attempt.returncode is not None else -9)
        runtime = time.time() - attempt.started
        sig = code - 128 if code > 128 else None
        if attempt.killed_by_agent:
            cause = attempt.trigger.kind if attempt.trigger else "a stop request"
            how = f"stopped by the agent after {cause} (exit code {code})"
        elif sig is not None:
            how = f"killed by {_signal_name(sig)} (exit code {code})"
        else:
            how = f"exited with code {code}"
        step = f" at step {attempt.step}" if attempt.step is not None else ", before its first step"
        self._emit(
            Event(
                "exited",
                "info" if code == 0 else "warning",
                f"training process {how}{step} after {runtime:.0f} s",
                evidence={
                    "exit_code": code,
                    "signal": _signal_name(sig) if sig else None,
                    "by_agent": attempt.killed_by_agent,
                    "runtime_s": round(runtime, 3),
                    "step": attempt.step,
                    "log_errors": attempt.log.errors,
                    "dropped_lines": attempt.log.dropped_lines,
                },
                attempt=attempt.number,
            )
        )

    # -- deciding ----------------------------------------------------------------

    def _decide(self, attempt: _Attempt) -> _Decision:
        code = _exit_code(attempt.returncode if attempt.returncode is not None else -9)
        trigger = attempt.trigger
        if self._user_stop is not None:
            return _Decision(False, "stopped", code, self._user_stop)
        bad = next(
            (e for e in attempt.events if e.kind in BAD_HOST_KINDS and e.action == "stop"), None
        )
        if bad is not None and (code != 0 or attempt.killed_by_agent):
            return _Decision(
                False,
                "stopped",
                EXIT_BAD_HOST,
                f"bad host: {_cause(bad)}"
                + ("" if "another machine" in bad.message else "; move the job to another machine"),
                bad_host=True,
            )
        if not attempt.killed_by_agent and code == 0:
            return _Decision(False, "finished", 0)
        agent_code = EXIT_STOPPED if attempt.killed_by_agent else code
        # Only an OOM the job died of, or stopped stepping after (a handled one is a warning).
        oom = next((e for e in attempt.events if e.kind == "oom" and e.action == "stop"), None)
        if oom is not None:
            return self._decide_oom(attempt, oom, agent_code)
        if trigger is not None and trigger.action == "stop":
            return _Decision(False, "stopped", agent_code, _cause(trigger))
        if trigger is not None:  # restart
            return self._try_restart(attempt, _cause(trigger), agent_code)
        # It failed by itself.
        sig = code - 128 if code > 128 else None
        if sig is not None and sig in _DELIBERATE:
            hint = self._oom_killer_hint()
            return _Decision(
                False,
                "failed",
                code,
                f"killed by {_signal_name(sig)} from outside the agent{hint}; not restarted",
            )
        if code == 2 and not attempt.saw_step:
            return _Decision(
                False,
                "failed",
                code,
                "exited with code 2 before its first step: it rejected its arguments "
                "(see the log); a restart would repeat it",
            )
        return self._try_restart(attempt, f"exited with code {code}", code)

    def _try_restart(
        self,
        attempt: _Attempt,
        why: str,
        code: int,
        *,
        argv: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        note: str = "",
    ) -> _Decision:
        verdict = self._budget.ask(self._checkpoints.poll(force=True, writer_gone=True).marker)
        if not verdict.allowed:
            return _Decision(False, "stopped", code, f"{why}; {verdict.reason}")
        self._restarts += 1
        if argv is None:
            argv, extra_env = self._resume_command(attempt)
        notes = "; ".join(n for n in (note, *self._resume_notes) if n)
        return _Decision(True, "restarting", code, why, argv=argv, extra_env=extra_env, note=notes)

    def _style(self, argv: Sequence[str], env: Mapping[str, str], key: str) -> OverrideStyle:
        if self.job is not None and self.job.overrides.style != "none":
            return self.job.overrides.style
        return guess_style(argv, env, key)

    def _first_command(self) -> tuple[list[str], dict[str, str], str]:
        """The first attempt's command: a known program gets the job's fields in its own
        terms and, when a complete checkpoint is here already, resumes from it."""
        argv, extra = list(self.command), dict(self.extra_env)
        self._base_step = 0
        if self.job is None or self.program.kind == "generic":
            return argv, extra, ""
        prepared = self.program.prepare(self.job, argv, extra, self._ctx)
        argv, extra = self._program_resume(prepared.argv, prepared.env)
        notes = [*prepared.notes, *self._resume_notes]
        return argv, extra, "; ".join(notes)

    def _program_resume(
        self, argv: Sequence[str], env: Mapping[str, str]
    ) -> tuple[list[str], dict[str, str]]:
        """``argv`` resuming from the newest complete checkpoint in the program's own terms
        (its step becomes the base its progress bar counts from)."""
        assert self.job is not None
        ck = self._checkpoints.poll(force=True, writer_gone=True)
        resumed = self.program.resume(self.job, argv, env, ck.path, self._ctx)
        self._resume_notes = ()
        if resumed is None:
            return list(argv), dict(env)
        self._resume_notes = resumed.notes
        self._base_step = ck.step if ck.path is not None and ck.step is not None else 0
        return resumed.argv, resumed.env

    def _resume_command(self, attempt: _Attempt) -> tuple[list[str], dict[str, str]]:
        """The attempt's command made to resume: in the program's own terms when runner
        knows it, else with the job's ``resume_args`` set (once)."""
        self._resume_notes = ()
        if self.job is not None and self.program.kind != "generic":
            return self._program_resume(attempt.argv, attempt.extra_env)
        argv, extra = list(attempt.argv), dict(attempt.extra_env)
        for item in self.restart_policy.resume_args:
            key, sep, value = item.partition("=")
            if not sep:
                if item not in argv:
                    argv.append(item)
                continue
            style = self._style(argv, {**self.env, **extra}, key)
            argv, extra = set_override(argv, extra, key, value, style)
        return argv, extra

    def _decide_oom(self, attempt: _Attempt, oom: Event, code: int) -> _Decision:
        policy = self.restart_policy
        if policy.on_oom != "reduce_batch" or not policy.batch_override:
            return _Decision(
                False,
                "stopped",
                code,
                f"{_cause(oom)}; not retried unchanged (restart.on_oom: stop; on_oom: "
                "reduce_batch with a batch_override retries at half the batch)",
            )
        key = policy.batch_override
        argv, extra = self._resume_command(attempt)
        style = self._style(argv, {**self.env, **extra}, key)
        value = current_value(argv, {**self.env, **extra}, key, style)
        half = halve(value)
        if half is None:
            shown = f"{key}={value}" if value is not None else f"{key} (not set in the command)"
            return _Decision(
                False, "stopped", code, f"{_cause(oom)}; cannot halve {shown}; not retried"
            )
        argv, extra = set_override(argv, extra, key, str(half), style)
        change = f"{key} {value} -> {half}"
        decision = self._try_restart(
            attempt,
            f"{_cause(oom)}; retrying with {change}",
            code,
            argv=argv,
            extra_env=extra,
            note=f"batch halved after OOM: {change}",
        )
        if decision.restart:
            self._oom_reductions += 1
        return decision

    def _oom_killer_hint(self) -> str:
        host = self._last_sample.host if self._last_sample is not None else None
        if host is None or not host.ram_total_bytes:
            return ""
        used = 1 - host.ram_available_bytes / host.ram_total_bytes
        if used >= 0.9:
            return f" (host RAM was {used:.0%} used: likely the kernel's OOM killer)"
        return ""

    def _restart_delay(self) -> float:
        streak = max(0, self._budget.without_checkpoint - 1)
        return min(MAX_RESTART_DELAY_S, self.restart_delay_s * (2.0**streak))

    def _announce_restart(self, attempt: _Attempt, decision: _Decision, delay: float) -> None:
        ck = self._checkpoints.poll()
        resume = (
            f"resuming from checkpoint step {ck.step}"
            if ck.step is not None
            else "from the newest checkpoint"
            if ck.marker is not None
            else "no checkpoint yet: from the start"
        )
        policy = self.restart_policy
        self._state = "restarting"
        self._summary = (
            f"restarting: {decision.reason}; {resume}; restart {self._restarts} "
            f"(at most {policy.max_restarts} in {policy.window_minutes:g} min)"
        )
        self._emit(
            Event(
                "restart",
                "warning",
                self._summary,
                evidence={
                    "after": attempt.trigger.kind if attempt.trigger else "exit",
                    "exit_code": decision.exit_code,
                    "restarts": self._restarts,
                    "max_restarts": policy.max_restarts,
                    "window_minutes": policy.window_minutes,
                    "without_checkpoint": self._budget.without_checkpoint,
                    "checkpoint_step": ck.step,
                    "command": redact_cmdline(decision.argv or attempt.argv),
                    "delay_s": round(delay, 3),
                },
                action="restart",
                attempt=attempt.number,
            )
        )
        self._write_status(attempt=attempt)

    def _finish(self, attempt: _Attempt, decision: _Decision) -> SupervisorResult:
        ck = self._checkpoints.poll(force=True, writer_gone=True)
        ck_step = ck.step if ck.step is not None else self._progress.progress.checkpoint_step
        parts: list[str] = []
        if decision.state == "finished":
            step = f" at step {attempt.step}" if attempt.step is not None else ""
            parts.append(f"finished{step} (exit code 0)")
            if self._oom_reductions:
                parts.append(f"batch halved {self._oom_reductions}x after OOM")
        else:
            parts.append(f"{decision.state}: {decision.reason}")
        parts.append(f"{self._restarts} restart{'s' if self._restarts != 1 else ''} used")
        if ck_step is not None:
            parts[-1] += f", newest checkpoint step {ck_step}"
        elif ck.marker is not None:
            parts[-1] += f", newest checkpoint in {self._rel(self.checkpoint_dir)}"
        else:
            parts[-1] += ", no checkpoint"
        if self._stack_dirs:
            parts.append(f"stacks in {self._rel(self._stack_dirs[-1])}")
        summary = "; ".join(parts)
        self._state, self._summary = decision.state, summary
        kind = {"finished": "finished", "failed": "failed"}.get(decision.state, "stopped")
        self._emit(
            Event(
                kind,
                "info" if kind == "finished" else "critical",
                summary,
                evidence={
                    "exit_code": decision.exit_code,
                    "attempts": self._attempts,
                    "restarts": self._restarts,
                    "checkpoint_step": ck_step,
                    "bad_host": decision.bad_host,
                    "cause": attempt.trigger.kind if attempt.trigger else None,
                    "stacks": [self._rel(p) for p in self._stack_dirs],
                },
                action="stop" if kind == "stopped" else "none",
                attempt=attempt.number,
            )
        )
        self._write_status(attempt=attempt, exit_code=decision.exit_code, final=True)
        return SupervisorResult(
            exit_code=decision.exit_code,
            state=decision.state,
            summary=summary,
            attempts=self._attempts,
            restarts=self._restarts,
            bad_host=decision.bad_host,
            stack_dirs=tuple(self._stack_dirs),
        )

    # -- reporting ---------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        # A full disk must not stop supervision (and the event still reaches on_event).
        with contextlib.suppress(OSError):
            self._events.append(event)
        self._last_event = event
        if self.on_event is not None:
            with contextlib.suppress(Exception):
                self.on_event(event)

    def _running_summary(self, attempt: _Attempt) -> str:
        p = self._progress.progress
        if p.step is None:
            return f"running: attempt {attempt.number}, no step yet"
        rate = self._progress.steps_per_s()
        speed = f" ({rate:.2f} steps/s)" if rate else ""
        phase = f", {p.phase}" if p.phase and p.phase != "train" else ""
        return (
            f"running: step {p.step}{speed}{phase}; attempt {attempt.number}, "
            f"{self._restarts} restart{'s' if self._restarts != 1 else ''}"
        )

    def _write_status(
        self, *, attempt: _Attempt | None = None, exit_code: int | None = None, final: bool = False
    ) -> None:
        p = self._progress.progress
        ck = self._checkpoints.poll()
        sample = self._last_sample
        rate = self._progress.steps_per_s()
        if not final:  # an ended run keeps the rate it trained at
            rate = _current_rate(rate, p.last_step_time, time.time())
        per_step = p.metrics.get("samples")
        waits = p.data_wait_fractions[-16:]
        status = Status(
            state=self._state,
            job=self.job.name if self.job else None,
            agent_pid=os.getpid(),
            agent_time=time.time(),
            started=self._started,
            attempt=attempt.number if attempt else 0,
            restarts=self._restarts,
            training_pid=attempt.pid if attempt and not final else None,
            step=p.step,
            last_step_time=p.last_step_time,
            steps_per_s=rate,
            phase=p.phase,
            checkpoint_step=ck.step if ck.step is not None else p.checkpoint_step,
            exit_code=exit_code,
            summary=self._summary,
            last_event=self._last_event.to_dict() if self._last_event else None,
            gpus=tuple(_gpu_brief(g) for g in sample.gpus) if sample else (),
            host=_host_brief(sample) if sample else None,
            metrics=dict(p.metrics),  # finite numbers only (ProgressTracker keeps NaN out)
            samples_per_s=rate * per_step if rate and per_step and per_step > 0 else None,
            data_wait=round(sum(waits) / len(waits), 4) if waits else None,
        )
        with contextlib.suppress(OSError):
            status.write(self.run_dir)
        now = status.agent_time
        if final or now - self._last_history >= self.watchdog.history_interval_s:
            self._last_history = now
            record = {
                "time": now,
                "attempt": status.attempt,
                "state": status.state,
                "step": status.step,
                "steps_per_s": status.steps_per_s,
                "samples_per_s": status.samples_per_s,
                "data_wait": status.data_wait,
                "metrics": dict(status.metrics),
                "gpus": [dict(g) for g in status.gpus],
                "host": status.host,
            }
            with contextlib.suppress(OSError):
                self._samples.append(record)

    def _rel(self, path: Path | None) -> str:
        if path is None:
            return "?"
        with contextlib.suppress(ValueError):
            return str(path.relative_to(Path.cwd()))
        return str(path)

    # -- signals -----------------------------------------------------------------

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """Pass Ctrl-C and termination on to the job's group (it has its own session).

        The first two are forwarded as they are (a trainer may save on SIGINT);
        a third kills the group. No restart follows a stop from the user.
        """
        if not self.forward_signals or threading.current_thread() is not threading.main_thread():
            yield
            return

        def forward(signum: int, frame: FrameType | None) -> None:
            self._stop_signals += 1
            self._user_stop = f"stopped by {_signal_name(signum)} from the user"
            self._wake.set()
            attempt = self._current
            if attempt is None or attempt.exited.is_set():
                return
            sig = signum if self._stop_signals < 3 else signal.SIGKILL
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(attempt.pid, sig)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


_CONFIRMED_WORDS = {
    "cpu_flat": "no CPU progress",
    "gpu_idle": "GPU idle",
    "gpu_power_low": "GPU power collapsed",
    "gpu_lost": "GPU lost",
    "workers_flat": "workers idle",
}


def _cause(event: Event) -> str:
    """What an event says happened, short enough for the one-line summary.

    A stall is told from its evidence (``froze at step 1234 (no step for 95 s,
    GPU idle, no CPU progress)``); any other event by its own message.
    """
    ev = event.evidence
    if event.kind == "stall" and isinstance(ev.get("silence_s"), (int, float)):
        step = ev.get("step")
        where = f"froze at step {step}" if step is not None else "hung before its first step"
        signs = [_CONFIRMED_WORDS.get(str(c), str(c)) for c in ev.get("confirmed_by") or ()]
        if not signs and isinstance(ev.get("limit_s"), (int, float)):
            signs = [f"over its {ev['limit_s']:.0f} s limit"]
        return (
            f"{where} (no step for {ev['silence_s']:.0f} s" + "".join(f", {s}" for s in signs) + ")"
        )
    return event.message


def _may_be_exiting(event: Event) -> bool:
    """A stop raised by a log line the process may be dying of (disk full, a host OOM
    kill), not yet waited for (an OOM the process outlived without stepping was)."""
    ev = event.evidence
    return event.action == "stop" and "line" in ev and ev.get("died") is not False


def _where_it_blocks(blocking: Blocking) -> str:
    """The stack dump's headline: the frame of the process that blocks.

    ``; main thread in TOP from USER`` for the training process itself; for a
    process it waits for (a DataLoader worker): ``; blocked in USER in pid P
    (main thread in TOP), and N more alike; waited for by pid M in FRAME``.
    """
    proc = blocking.process
    if blocking.waiter is None:
        if not proc.main_top:
            return ""
        where = f"; main thread in {proc.main_top}"
        if proc.main_user and proc.main_user != proc.main_top:
            where += f" from {proc.main_user}"
        return where
    frame = blocking.frame or "an unknown frame"
    where = f"; blocked in {frame} in pid {proc.pid}"
    if proc.main_top and proc.main_top != frame:
        where += f" (main thread in {proc.main_top})"
    if blocking.alike:
        where += f", and {blocking.alike} more alike"
    return where + f"; waited for by pid {blocking.waiter.pid} in {blocking.waiter.waits_in}"


def _python(argv: list[str]) -> list[str]:
    # A job's "python" runs with this interpreter, so the project's venv is used.
    if argv and argv[0] in {"python", "python3"}:
        return [sys.executable, *argv[1:]]
    return argv


def _binary(stream: Any) -> BinaryIO | None:
    return getattr(stream, "buffer", None)


def _existing(path: Path) -> Path:
    """``path``, or its nearest existing parent (the disk it will be on)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path


_GPU_KEYS = (
    "index",
    "name",
    "lost",
    "utilization_gpu_percent",
    "power_w",
    "power_limit_w",
    "temperature_c",
    "temperature_slowdown_c",
    "memory_used_bytes",
    "memory_total_bytes",
    "clock_event_mask",
)


def _current_rate(rate: float | None, last_step: float | None, now: float) -> float | None:
    """The step rate as of ``now``: the recent rate, unless the silence since the last
    step says it is lower (a frozen run reads 1/silence, falling to 0, not its old rate)."""
    if rate is None or last_step is None:
        return rate
    silence = now - last_step
    if rate > 0 and silence > 2.0 / rate:
        return 1.0 / silence
    return rate


def _gpu_brief(gpu: GpuSnapshotLike) -> dict[str, Any]:
    try:
        data = gpu.to_dict()
    except Exception:
        return {}
    return {k: data.get(k) for k in _GPU_KEYS}


def _host_brief(sample: Sample) -> dict[str, Any] | None:
    host = sample.host
    if host is None:
        return None
    return {
        "ram_used_fraction": round(1 - host.ram_available_bytes / host.ram_total_bytes, 4)
        if host.ram_total_bytes
        else None,
        "load_1m": host.load_avg[0],
        "disks": [
            {
                "roles": list(d.roles),
                "free_bytes": d.free_bytes,
                "total_bytes": d.total_bytes,
                "read_only": d.read_only,
            }
            for d in host.disks
        ],
    }

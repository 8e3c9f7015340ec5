"""What a detector sees each tick, and what a detector is.

The supervisor builds one :class:`Observation` per tick from the sampling
layer, the training process's progress (harness heartbeats or log lines) and
the new log lines; every detector gets the same one. Detectors keep their own
rolling state, report a condition once when it starts (not every tick), and
never raise: the supervisor turns an exception into a ``detector_error`` event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from runner.rundir import Event
from runner.sampling.sample import Sample
from runner.spec import WatchdogSpec


@dataclass(frozen=True)
class Progress:
    """Step progress of the current training attempt.

    ``last_step_time`` is the wall time at which the agent last saw the step
    advance (not the trainer's clock). ``intervals`` are recent seconds between
    steps as the agent saw them, newest last (at most 64; a jump of several
    steps at once counts as one interval per step). ``phase`` comes from the
    harness (startup, train, checkpoint, done) and is None for log-parsed
    progress. ``data_wait_fractions`` are recent data_wait / step_time values
    reported by the harness, newest last. ``metrics`` hold finite values only;
    ``nonfinite`` names each of ``loss`` / ``grad_norm`` seen NaN or infinite in
    this attempt: ``{"first": step, "last_good": step or None, "value": "nan"}``
    (from the harness's heartbeat, or the progress pattern's named groups).
    """

    source: Literal["harness", "log", "none"] = "none"
    step: int | None = None
    last_step_time: float | None = None
    phase: str | None = None
    intervals: tuple[float, ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)
    data_wait_fractions: tuple[float, ...] = ()
    checkpoint_step: int | None = None
    nonfinite: Mapping[str, Mapping[str, int | str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    """Everything a detector may look at in one tick.

    ``alive`` is whether the training process (the root of ``sample.procs``)
    is still running; ``log_lines`` are the stdout/stderr lines written since
    the previous tick; ``checkpoint_bytes`` is the size of the newest complete
    checkpoint when known (else the job spec's estimate, else None);
    ``checkpoint_path`` is the folder checkpoints are written to;
    ``exit_code`` is the training process's exit code (128+N for signal N) on
    the last tick of an attempt that ended by itself, else ``None``.
    """

    now: float
    attempt: int
    attempt_started: float
    sample: Sample
    progress: Progress
    alive: bool
    training_pid: int | None
    watchdog: WatchdogSpec
    log_lines: Sequence[str] = ()
    checkpoint_bytes: int | None = None
    checkpoint_path: str | None = None
    num_gpus_expected: int = 0
    exit_code: int | None = None


class Detector(Protocol):
    """One failure users hit. Stateful; one instance per run."""

    #: Short name, used as the event kind of its errors.
    name: str

    def observe(self, obs: Observation) -> Sequence[Event]:
        """The events this tick raises (usually none)."""
        ...

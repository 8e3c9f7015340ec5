"""Step progress of the supervised attempt, from harness heartbeats or from log lines.

Two sources, one :class:`~runner.agent.observe.Progress`:

- the harness (``runner.harness``) rewrites ``RUN_DIR/heartbeat.json`` on every
  step with the step, the phase (startup, train, checkpoint, done), the
  checkpoint step and metrics; ``data_wait / step_time`` of each heartbeat seen
  becomes a data-wait fraction;
- a script that does not use the harness (DINO WM, LeRobot, openpi images) is
  read from its output with the job's ``progress.pattern``, a regular
  expression with a named group ``step`` (and optionally ``epoch``) searched in
  every line. Lines are split on carriage returns too, so each redraw of a
  tqdm bar is a line, handed on as soon as it is written
  (:class:`runner.agent.logs.LineSplitter`). Named groups ``loss`` and
  ``grad_norm``, when the pattern has them, are read as floats (``nan`` and
  ``inf`` accepted) into the metrics, and the first non-finite one into
  ``Progress.nonfinite`` as the harness reports it.

Counters come in three kinds (:class:`~runner.spec.ProgressSpec` names the
groups). An *exact* ``step`` is taken as it is. A ``bar`` position is counted
from the step the attempt resumed from (``base_step`` of :meth:`reset`), as
LeRobot's tqdm bar restarts at 0 on a resume. A *coarse* ``step`` with a K/M/B
suffix (LeRobot's ``format_big_number``: ``step:1K`` is any step from 500 to
1499, rounded half to even) says only a range: each such line is worth
``line_every`` steps (LeRobot logs every ``log_freq`` steps; learned from the
exact readings before 1000 when the job does not say), the estimate is kept
inside the range the printed value allows, and it never goes backwards. While
an exact source (a bar) is seen, coarse lines only bound the estimate from
below. A checkpoint found on disk at a later step than the estimate (LeRobot's
``checkpoints/NNNNNN``, whose ``training_step.json`` says the same) moves it
there.

A line that repeats the step already seen is no step (tqdm's monitor thread
redraws a bar that has been still for 10 s: after a freeze, that redraw must
neither count as progress nor teach a 10-20 s interval). A bar also redraws
behind its counter: tqdm draws at most every ``mininterval`` (0.1 s), so a
fast loop that freezes may have made a step or two its last redraw does not
show, and the monitor's redraw shows them 10-20 s later. So a log sighting
that comes after more than :data:`LATE_FACTOR` x the usual time between
sightings and adds fewer steps than a usual sighting is a *late redraw*: its
step is taken (the step reported is the bar's), but not as progress made now:
``last_step_time`` stays, the silence goes on, and its steps are counted into
the next interval, measured from the last sighting that was progress. A
monitor redraw of a frozen bar is followed by silence; a loop that resumes
after a pause (DINO WM's validation pass) is followed by more steps within
:data:`LATE_FACTOR` x the usual gap, and then its late-looking sighting counts
as progress made when it was seen.

Once a heartbeat of this attempt has been seen, the harness is the source and
log lines are ignored. A heartbeat belongs to this attempt when the harness
started after the attempt did: a heartbeat file left by an earlier attempt or
an earlier run in the same folder never counts as progress.

Times are the agent's: ``last_step_time`` is when the agent saw the step
change, and ``intervals`` the seconds between such sightings, spread evenly
over the steps made in between (at most :data:`HISTORY` kept).
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.agent.observe import Progress
from runner.harness import read_heartbeat

__all__ = ["HISTORY", "LATE_FACTOR", "ProgressTracker", "parse_count"]

#: Recent step intervals and data-wait fractions kept (observe.Progress says 64).
HISTORY = 64
#: A heartbeat may be stamped this much before the attempt started (clock skew
#: between the agent's and the trainer's reading of the same wall clock).
_SLACK_S = 0.05
#: A log sighting after this many times the usual gap between sightings, adding
#: fewer steps than usual, is a late redraw (see the module docstring).
LATE_FACTOR = 5.0
#: Seconds of sightings the rate is measured over when 16 intervals span less.
RATE_WINDOW_S = 10.0
#: Sightings that advanced (gap, steps) kept to tell what is usual.
_SIGHTINGS = 16
#: Sightings needed before a late redraw can be told.
_MIN_SIGHTINGS = 3


class ProgressTracker:
    """Turns heartbeats and log lines into :class:`Progress`, one attempt at a time.

    ``run_dir`` is where the harness writes ``heartbeat.json`` (``None``: no
    harness); ``pattern`` the job's ``progress.pattern`` (``None``: no log
    parsing). Not thread-safe: the supervisor's loop owns it.
    """

    def __init__(
        self,
        run_dir: Path | None,
        pattern: str | Sequence[str] | None,
        *,
        line_every: int | None = None,
        first_epoch: int = 0,
        history: int = HISTORY,
    ):
        self.run_dir = run_dir
        given = [pattern] if isinstance(pattern, str) else list(pattern or [])
        self.patterns = [re.compile(p) for p in given if p]
        self.line_every = line_every
        self.first_epoch = first_epoch
        self.history = history
        self.reset(0.0)

    @property
    def pattern(self) -> re.Pattern[str] | None:
        """The first pattern (``None`` without any)."""
        return self.patterns[0] if self.patterns else None

    def reset(self, attempt_started: float, *, base_step: int = 0) -> None:
        """Forget everything: a new attempt started at ``attempt_started`` (wall time),
        resuming from ``base_step`` (the step its progress bar counts from)."""
        self.attempt_started = attempt_started
        self.base_step = base_step
        # Patterns (by index) whose readings were all exact, or some rounded; the exact
        # steps each printed (its line cadence is learned from them).
        self._exact_patterns: set[int] = set()
        self._coarse_patterns: set[int] = set()
        self._line_steps: dict[int, deque[int]] = {}
        self._tentative_at: float | None = None
        # (gap, steps made) of the recent sightings that were progress, for the rate.
        self._gaps: deque[tuple[float, int]] = deque(maxlen=128)
        self._source: str = "none"
        self._step: int | None = None
        self._key: tuple[int, ...] | None = None
        self._last_step_time: float | None = None
        self._phase: str | None = None
        self._intervals: deque[float] = deque(maxlen=self.history)
        self._fractions: deque[float] = deque(maxlen=self.history)
        self._metrics: dict[str, float] = {}
        self._checkpoint_step: int | None = None
        self._nonfinite: dict[str, dict[str, int | str | None]] = {}
        self._finite_steps: dict[str, int] = {}
        self._made: int | None = None
        self._sightings: deque[tuple[float, int]] = deque(maxlen=_SIGHTINGS)
        self._unrecorded = 0
        self.late_redraws = 0
        self.trainer_pid: int | None = None
        self.heartbeat_time: float | None = None

    @property
    def progress(self) -> Progress:
        """What has been seen so far in this attempt."""
        return Progress(
            source=self._source,  # type: ignore[arg-type]
            step=self._step,
            last_step_time=self._last_step_time,
            phase=self._phase,
            intervals=tuple(self._intervals),
            metrics=dict(self._metrics),
            data_wait_fractions=tuple(self._fractions),
            checkpoint_step=self._checkpoint_step,
            nonfinite={k: dict(v) for k, v in self._nonfinite.items()},
        )

    def steps_per_s(self) -> float | None:
        """Recent rate (``None`` before two sightings): the steps of the last 16 intervals
        over their time; when those span less than :data:`RATE_WINDOW_S`, the steps of the
        sightings of that window over their gaps, pauses (gaps over :data:`LATE_FACTOR` x
        the usual one) left out. A line that carries 10-20 steps every 1-2 s is seen on
        1 s ticks: one or two sightings would read 10 or 20 at a true 11.5."""
        if not self._intervals:
            return None
        recent = list(self._intervals)[-16:]
        span = sum(recent)
        if span < RATE_WINDOW_S and len(self._gaps) >= 2:
            usual = statistics.median(g for g, _ in self._gaps)
            time_s = steps = 0.0
            for gap, made in reversed(self._gaps):
                if gap > LATE_FACTOR * max(usual, 1e-9):
                    continue  # a pause (validation, a save): not the stepping rate
                time_s, steps = time_s + gap, steps + made
                if time_s >= RATE_WINDOW_S:
                    break
            if time_s > 0 and steps > 0:
                return steps / time_s
        return len(recent) / span if span > 0 else None

    def update(
        self, lines: Sequence[str], now: float, *, checkpoint_step: int | None = None
    ) -> Progress:
        """Read the heartbeat and ``lines`` (output since the last call) seen at ``now``.

        ``checkpoint_step`` is the newest complete checkpoint the supervisor
        found on disk; the harness's own figure wins when it has one.
        """
        self._made = None
        beat = self._heartbeat()
        if beat is not None:
            self._from_heartbeat(beat)
        elif self._source != "harness" and self.patterns and lines:
            self._from_lines(lines)
        if (
            self._source == "log"
            and checkpoint_step is not None
            and self._step is not None
            and checkpoint_step > self._step
        ):
            # The program saved a checkpoint past the estimate: it was there at least.
            self._advance((checkpoint_step,), checkpoint_step)
        made = self._take_made()
        if made is not None and self._source == "log" and self._moving_again(now):
            # The late-looking sighting was the loop resuming (after a validation pass,
            # say): a monitor redraw of a frozen bar is followed by silence, not steps.
            assert self._tentative_at is not None
            self._record(self._unrecorded, self._tentative_at)
            self._unrecorded, self._tentative_at = 0, None
            self._record(made, now)
        elif made is not None and self._source == "log" and self._late(made, now):
            self._unrecorded += made
            self.late_redraws += 1
            self._tentative_at = now
        elif made is not None:
            self._record(made + self._unrecorded, now)
            self._unrecorded, self._tentative_at = 0, None
        if self._source != "harness" or self._checkpoint_step is None:
            self._checkpoint_step = checkpoint_step
        return self.progress

    # -- heartbeat ---------------------------------------------------------------

    def _heartbeat(self) -> dict[str, Any] | None:
        if self.run_dir is None:
            return None
        beat = read_heartbeat(self.run_dir)
        if beat is None:
            return None
        started = _number(beat.get("started"))
        if started is None or started < self.attempt_started - _SLACK_S:
            return None  # an earlier attempt's (or run's) heartbeat
        return beat

    def _from_heartbeat(self, beat: Mapping[str, Any]) -> None:
        self._source = "harness"
        pid = beat.get("pid")
        self.trainer_pid = pid if isinstance(pid, int) else self.trainer_pid
        self.heartbeat_time = _number(beat.get("time"))
        phase = beat.get("phase")
        self._phase = phase if isinstance(phase, str) else None
        ck = beat.get("checkpoint_step")
        if isinstance(ck, int):
            self._checkpoint_step = ck
        self._heartbeat_nonfinite(beat.get("nonfinite"))
        step = beat.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            return
        metrics = beat.get("metrics")
        if self._advance((step,), step) and isinstance(metrics, Mapping):
            values = {
                str(k): float(v)
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            self._metrics = self._health(values, step)
            wait, took = self._metrics.get("data_wait"), self._metrics.get("step_time")
            if wait is not None and took is not None and took > 0:
                self._fractions.append(min(1.0, max(0.0, wait / took)))

    def _heartbeat_nonfinite(self, record: Any) -> None:
        if not isinstance(record, Mapping):
            return
        for name, entry in record.items():
            if not isinstance(entry, Mapping) or str(name) in self._nonfinite:
                continue
            first = _int(entry.get("first"))
            if first is None:
                continue
            value = entry.get("value")
            seen: dict[str, int | str | None] = {
                "first": first,
                "last_good": _int(entry.get("last_good")),
                "value": value if isinstance(value, str) else "nan",
            }
            self._nonfinite[str(name)] = seen

    # -- log lines ---------------------------------------------------------------

    def _from_lines(self, lines: Sequence[str]) -> None:
        for line in lines:
            for index, pattern in enumerate(self.patterns):
                match = pattern.search(line)
                if match is not None:
                    self._from_match(index, pattern, match)

    def _from_match(self, index: int, pattern: re.Pattern[str], match: re.Match[str]) -> None:
        groups = pattern.groupindex
        reading = self._reading(index, match, groups)
        if reading is not None:
            self._source = "log"
            self._advance(*reading)
        values = {
            name: value
            for name in _LOG_METRICS
            if name in groups and (value := _float(match.group(name))) is not None
        }
        if values and self._step is not None:
            self._metrics = self._health(values, self._step)

    def _reading(
        self, index: int, match: re.Match[str], groups: Mapping[str, int]
    ) -> tuple[tuple[int, ...], int] | None:
        """The (key, step) pattern ``index``'s match says, or ``None`` when it says none."""
        if "bar" in groups and match.group("bar") is not None:
            bar = _int_text(match.group("bar"))
            if bar is None:
                return None
            self._exact_patterns.add(index)
            step = self.base_step + bar
            return (max(step, self._step or 0),), max(step, self._step or 0)
        text = match.group("step") if "step" in groups else None
        if text is None:
            return None
        parsed = parse_count(text)
        if parsed is None:
            return None
        value, unit, resolution = parsed
        epoch_text = match.group("epoch") if "epoch" in groups else None
        if epoch_text is not None:
            epoch = _int_text(epoch_text)
            total = _int_text(match.group("total")) if "total" in groups else None
            if epoch is None:
                return None
            if total:
                # A per-epoch counter: absolute steps, never backwards.
                self._exact_patterns.add(index)
                step = max(0, epoch - self.first_epoch) * total + int(value)
                step = max(step, self._step or 0)
                return (step,), step
            return (epoch, int(value)), int(value)
        if unit == 1:
            step = int(value)
            if index not in self._coarse_patterns:
                self._exact_patterns.add(index)
            steps = self._line_steps.setdefault(index, deque(maxlen=8))
            if not steps or step > steps[-1]:
                steps.append(step)
            step = max(step, self._step or 0)
            return (step,), step
        self._coarse_patterns.add(index)
        self._exact_patterns.discard(index)
        return self._coarse(index, value * unit, resolution)

    def _coarse(
        self, index: int, value: float, resolution: float
    ) -> tuple[tuple[int, ...], int] | None:
        """A rounded reading (``step:1K``): the estimate moved a line cadence, kept in range."""
        low = math.ceil(value - resolution / 2)
        high = math.floor(value + resolution / 2)
        current = self._step if self._step is not None else self.base_step
        if self._exact_patterns - {index}:
            # Another pattern counts the steps exactly (LeRobot's bar, openpi's Step N): the
            # rounded one only bounds them from below (openpi's "Progress on" comes every
            # 10 s, not every N steps).
            estimate = max(current, low)
        else:
            every = self._cadence(index)
            if self._step is None and every is None:
                estimate = max(current, low)
            else:
                estimate = current + (every or 0)
                estimate = min(max(estimate, low), high)
                estimate = max(estimate, current)
        if estimate == self._step:
            return None
        return (estimate,), estimate

    def _cadence(self, index: int) -> int | None:
        """Steps between two lines of coarse pattern ``index``: the job's, else learned from
        the exact steps it printed before they grew a suffix."""
        if self.line_every is not None:
            return self.line_every
        seen = list(self._line_steps.get(index, ()))
        gaps = [b - a for a, b in itertools.pairwise(seen) if b > a]
        return int(statistics.median(gaps)) if gaps else None

    # -- training health ---------------------------------------------------------

    def _health(self, values: Mapping[str, float], step: int) -> dict[str, float]:
        """The finite ``values``; the first non-finite one of each noted in ``_nonfinite``.

        Shaped as the harness's ``nonfinite`` record (first step, last finite
        step before it, the value as text), which wins where both exist.
        """
        finite: dict[str, float] = {}
        for name, value in values.items():
            if math.isfinite(value):
                finite[name] = value
                self._finite_steps[name] = step
            elif name not in self._nonfinite:
                self._nonfinite[name] = {
                    "first": step,
                    "last_good": self._finite_steps.get(name),
                    "value": repr(value),
                }
        return finite

    # -- both --------------------------------------------------------------------

    def _advance(self, key: tuple[int, ...], step: int) -> bool:
        """Record ``key`` (the step, or epoch and step); True if it moved.

        The steps made are added up in ``_made`` (0 for the first sighting) and
        turned into intervals once per update by :meth:`_record`.
        """
        if key == self._key:
            return False
        previous, previous_key = self._step, self._key
        self._key, self._step = key, step
        if previous is None or previous_key is None:
            made = 0
        elif previous_key[:-1] == key[:-1] and step > previous:
            made = step - previous
        else:
            made = 1  # a new epoch or a counter that went back: one step at least
        self._made = made if self._made is None else self._made + made
        return True

    def _take_made(self) -> int | None:
        made, self._made = self._made, None
        return made

    def _moving_again(self, now: float) -> bool:
        """Whether a sighting at ``now`` follows a late-looking one closely (the loop runs)."""
        if self._tentative_at is None or not self._sightings:
            return False
        gap = statistics.median(g for g, _ in self._sightings)
        return now - self._tentative_at <= LATE_FACTOR * max(gap, 1.0)

    def _late(self, made: int, now: float) -> bool:
        """Whether a log sighting of ``made`` new steps at ``now`` is a late redraw."""
        last = self._last_step_time
        if last is None or made <= 0 or len(self._sightings) < _MIN_SIGHTINGS:
            return False
        gap = statistics.median(g for g, _ in self._sightings)
        usual = statistics.median(m for _, m in self._sightings)
        return now - last > LATE_FACTOR * gap and made < usual

    def _record(self, made: int, now: float) -> None:
        """The step moved by ``made`` since the last sighting: spread the time over them."""
        last, self._last_step_time = self._last_step_time, now
        if last is None or made <= 0:
            return
        elapsed = max(0.0, now - last)
        self._sightings.append((elapsed, made))
        self._gaps.append((elapsed, made))
        self._intervals.extend([elapsed / made] * min(made, self.history))


#: Named groups of ``progress.pattern`` read as metrics.
_LOG_METRICS = ("loss", "grad_norm")


def _float(text: str | None) -> float | None:
    """A log group as a float (``nan``, ``inf``, ``-inf`` included); ``None`` if none."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


_COUNT = re.compile(r"^\s*(\d+)(?:\.(\d+))?\s*([kKMGB]?)\s*$")
#: LeRobot's ``format_big_number`` prints K, M, B; tqdm's ``format_sizeof`` k, M, G.
_UNITS = {"": 1, "k": 1000, "K": 1000, "M": 1000**2, "G": 1000**3, "B": 1000**3}


def parse_count(text: str) -> tuple[float, int, float] | None:
    """A printed count: ``(value, unit, resolution)``, or ``None`` for text that is none.

    ``"1K"`` -> ``(1.0, 1000, 1000.0)``: LeRobot's ``format_big_number`` divides
    by 1000 per suffix and rounds, so ``1K`` is any count from 500 to 1499;
    ``"1.01k"`` (tqdm's ``format_sizeof``) -> ``(1.01, 1000, 10.0)``;
    ``"123"`` -> ``(123.0, 1, 1.0)``, exact.
    """
    match = _COUNT.match(text)
    if match is None:
        return None
    whole, decimals, suffix = match.groups()
    unit = _UNITS[suffix]
    value = float(f"{whole}.{decimals}") if decimals else float(whole)
    resolution = unit / 10 ** len(decimals or "")
    return value, unit, resolution


def _int_text(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None

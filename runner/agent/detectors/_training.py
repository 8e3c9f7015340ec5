"""Training health: the loss goes NaN, the loss or gradient norm explodes, the step rate falls.

Read from the harness metrics (``loss``, ``grad_norm``) or the job's progress
pattern (named groups ``loss`` and ``grad_norm``), as
:class:`runner.agent.observe.Progress` hands them on: finite values in
``metrics``, the first step each metric went NaN or infinite in ``nonfinite``.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence

from runner.agent.detectors._common import (
    OFF_LOOP_PHASES,
    CheckpointWatch,
    clock_drop_percent,
    gpus_of,
    make_event,
    num,
)
from runner.agent.observe import Observation
from runner.rundir import Event
from runner.sampling.nvml import CLOCK_EVENT_REASONS
from runner.spec import WatchdogSpec

#: The metrics watched, in the order they are named.
WATCHED = ("loss", "grad_norm")
#: Clock-event bits that are a system cause of slow steps (thermal, hardware slowdown).
SLOWDOWN_MASK = (
    CLOCK_EVENT_REASONS["HwSlowdown"]
    | CLOCK_EVENT_REASONS["SwThermalSlowdown"]
    | CLOCK_EVENT_REASONS["HwThermalSlowdown"]
    | CLOCK_EVENT_REASONS["HwPowerBrakeSlowdown"]
)
#: The power-cap bit is set on many busy GPUs running at full speed; it is a cause
#: only with the SM clock this far (percent) below its maximum (ThrottleDetector's 30 %).
POWER_CAP_CLOCK_DROP = 30.0
#: Windows of steady rate needed before a drop can be told (the first is warm-up).
STEADY_WINDOWS = 2
#: A drop clears when the rate is back above this fraction of the steady rate.
RECOVER_FRACTION = 0.6


class LossNanDetector:
    """``loss`` or ``grad_norm`` NaN/inf (kind ``loss_nan``, critical, action ``stop``).

    A stop, not a restart: resuming from the newest checkpoint replays the same
    data into the same weights and diverges again (the restart budget would be
    spent for nothing, and each try could overwrite good checkpoints with NaN
    ones). The evidence names the first bad step, the last good one and the
    newest complete checkpoint, so the user resumes from there with a lower
    learning rate or a skipped batch. Once per attempt.
    """

    name = "loss_nan"

    def __init__(self, watchdog: WatchdogSpec | None = None) -> None:
        self.watchdog = watchdog if watchdog is not None else WatchdogSpec()
        self._attempt: int | None = None
        self._fired = False

    def observe(self, obs: Observation) -> Sequence[Event]:
        if obs.attempt != self._attempt:
            self._attempt, self._fired = obs.attempt, False
        progress = obs.progress
        bad: dict[str, tuple[int, int | None, str]] = {}
        for k, entry in progress.nonfinite.items():
            first, good, value = entry.get("first"), entry.get("last_good"), entry.get("value")
            if k in WATCHED and isinstance(first, int):
                bad[k] = (first, good if isinstance(good, int) else None, str(value))
        if self._fired or not bad:
            return []
        self._fired = True
        metric = min(bad, key=lambda k: (bad[k][0], WATCHED.index(k)))
        first, last_good, value = bad[metric]
        ck = progress.checkpoint_step
        where = (
            f"the newest complete checkpoint is step {ck}"
            if ck is not None
            else "no complete checkpoint was found"
        )
        message = (
            f"{metric} is {value} from step {first}"
            + (f" (last finite at step {last_good})" if last_good is not None else "")
            + f"; stopped, not restarted (a resume would diverge again); {where}: resume from it "
            "with a lower learning rate, gradient clipping or the bad batch skipped"
        )
        evidence = {
            "metric": metric,
            "value": value,
            "metrics": sorted(bad),
            "first_bad_step": first,
            "last_good_step": last_good,
            "checkpoint_step": ck,
            "step": progress.step,
            "source": progress.source,
        }
        return [make_event(obs, "loss_nan", "critical", message, evidence, action="stop")]


class _Series:
    """Recent finite values of one metric and its explosion episode."""

    def __init__(self, window: int) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.seen = 0
        self.high = 0
        self.low = 0
        self.active = False


class ExplosionDetector:
    """``loss`` or ``grad_norm`` explodes (kinds ``loss_explosion``, ``grad_explosion``; warning).

    A value counts as high when it is above ``explosion_factor`` x the median
    of the last ``explosion_window`` finite values (after ``explosion_warmup``
    values), or, for ``grad_norm``, above ``grad_norm_max`` (the seeds'
    "grad_max < 100, else gradient explosion"). High for
    ``explosion_hold_steps`` steps in a row (as the agent saw them) is an
    episode, reported once; high values do not enter the baseline, and the
    episode clears (``info``) after as many steps back under the limit.
    """

    name = "explosion"

    def __init__(self, watchdog: WatchdogSpec | None = None) -> None:
        self.watchdog = watchdog if watchdog is not None else WatchdogSpec()
        self._attempt: int | None = None
        self._new_attempt()

    def _new_attempt(self) -> None:
        self._series = {k: _Series(self.watchdog.explosion_window) for k in WATCHED}
        self._step: int | None = None

    def observe(self, obs: Observation) -> Sequence[Event]:
        if obs.attempt != self._attempt:
            self._attempt = obs.attempt
            self._new_attempt()
        step = obs.progress.step
        if step is None or step == self._step:
            return []
        self._step = step
        events: list[Event] = []
        for metric in WATCHED:
            value = num(obs.progress.metrics.get(metric))
            if value is not None:
                event = self._one(obs, metric, value, self._series[metric])
                if event is not None:
                    events.append(event)
        return events

    def _one(self, obs: Observation, metric: str, value: float, s: _Series) -> Event | None:
        w = self.watchdog
        baseline = statistics.median(s.values) if s.values else None
        warm = s.seen >= w.explosion_warmup and baseline is not None
        over_rel = warm and baseline is not None and value > w.explosion_factor * abs(baseline)
        over_abs = metric == "grad_norm" and w.grad_norm_max is not None and value > w.grad_norm_max
        kind = "loss_explosion" if metric == "loss" else "grad_explosion"
        if over_rel or over_abs:
            s.high, s.low = s.high + 1, 0
        else:
            s.high, s.low = 0, s.low + 1
            s.values.append(value)
            s.seen += 1
        if not s.active and s.high >= w.explosion_hold_steps:
            s.active = True
            limit = w.grad_norm_max if over_abs and not over_rel else None
            why = (
                f"{w.explosion_factor:g} x the median {baseline:.4g} of its last "
                f"{len(s.values)} values"
                if over_rel and baseline is not None
                else f"the limit {limit:g}"
            )
            evidence = {
                "metric": metric,
                "value": value,
                "baseline_median": baseline,
                "factor": w.explosion_factor,
                "grad_norm_max": w.grad_norm_max if metric == "grad_norm" else None,
                "absolute": bool(over_abs and not over_rel),
                "steps_held": s.high,
                "step": obs.progress.step,
                "checkpoint_step": obs.progress.checkpoint_step,
            }
            return make_event(
                obs,
                kind,
                "warning",
                f"{metric} explodes: {value:.4g} at step {obs.progress.step}, above {why}, "
                f"for {s.high} steps",
                evidence,
            )
        if s.active and s.low >= w.explosion_hold_steps:
            s.active = False
            return make_event(
                obs,
                kind,
                "info",
                f"{metric} back to {value:.4g} at step {obs.progress.step}",
                {"metric": metric, "value": value, "step": obs.progress.step},
            )
        return None


class ThroughputDetector:
    """Steps/s falls to a fraction of the run's own steady rate (kind ``throughput_drop``, warning).

    Every tick the rate over the last ``throughput_window_s`` is measured from
    the steps the agent saw; the steady rate is the median of such rates from
    windows wholly before the current one. A rate under
    ``throughput_drop_fraction`` x steady, with steps still coming in each half
    of the window (steps that stop are a stall, the stall detector's), is
    reported once, unless a system
    cause explains it: a checkpoint being written (or off-loop phase), a GPU
    clock slowed by heat or hardware (or by its power cap, with the SM clock
    30 % or more below its maximum), or a data-wait fraction above
    ``input_bound_fraction`` (those detectors report them). Clears (``info``)
    when the rate is back above 0.6 x steady.
    """

    name = "throughput_drop"

    def __init__(self, watchdog: WatchdogSpec | None = None) -> None:
        self.watchdog = watchdog if watchdog is not None else WatchdogSpec()
        self._attempt: int | None = None
        self._new_attempt()

    def _new_attempt(self) -> None:
        self._points: deque[tuple[float, int]] = deque()  # (time, step) at each tick
        self._rates: deque[tuple[float, float]] = deque()  # (time, windowed rate), no excuse
        self._ckpt = CheckpointWatch()
        self._excused_until = 0.0
        self._active = False

    def _excused(self, obs: Observation, checkpointing: bool) -> str | None:
        if checkpointing:
            return "checkpoint"
        if obs.progress.phase in OFF_LOOP_PHASES:
            return "phase"
        for g in gpus_of(obs.sample):
            mask = g.clock_event_mask
            if not isinstance(mask, int):
                continue
            drop = clock_drop_percent(g)
            if mask & SLOWDOWN_MASK or (
                mask & CLOCK_EVENT_REASONS["SwPowerCap"]
                and drop is not None
                and drop >= POWER_CAP_CLOCK_DROP
            ):
                return "gpu_slowdown"
        waits = [f for f in (num(x) for x in obs.progress.data_wait_fractions[-10:]) if f]
        if waits and sum(waits) / len(waits) > self.watchdog.input_bound_fraction:
            return "input_bound"
        return None

    def observe(self, obs: Observation) -> Sequence[Event]:
        if obs.attempt != self._attempt:
            self._attempt = obs.attempt
            self._new_attempt()
        w = self.watchdog
        window = w.throughput_window_s
        checkpointing = self._ckpt.update(obs)
        step = obs.progress.step
        if step is None or not obs.alive:
            return []
        excuse = self._excused(obs, checkpointing)
        if excuse is not None:
            # Windows that include the excused time say nothing about the job's own rate.
            self._excused_until = obs.now + window
        self._points.append((obs.now, step))
        while self._points and self._points[0][0] < obs.now - 20 * window:
            self._points.popleft()
        start = obs.now - window
        inside = [p for p in self._points if p[0] >= start]
        if self._points[0][0] > start or len(inside) < 2:
            return []  # less than one window seen
        base_t, base_step = inside[0]
        steps = step - base_step
        mid_step = next(s for t, s in inside if t >= obs.now - window / 2)
        continuing = base_step < mid_step < step  # steps in each half: a stop is a stall
        rate = steps / max(obs.now - base_t, 1e-9)
        steady_rates = [r for t, r in self._rates if t <= start]
        steady = statistics.median(steady_rates) if len(steady_rates) >= STEADY_WINDOWS else None
        if excuse is None and obs.now >= self._excused_until and steps > 0 and not self._active:
            self._rates.append((obs.now, rate))
            while len(self._rates) > 4096:
                self._rates.popleft()
        if self._active:
            if steady is not None and rate >= RECOVER_FRACTION * steady:
                self._active = False
                return [
                    make_event(
                        obs,
                        "throughput_drop",
                        "info",
                        f"step rate back to {rate:.3g} steps/s",
                        {"steps_per_s": round(rate, 4), "step": step},
                    )
                ]
            return []
        if (
            steady is None
            or excuse is not None
            or obs.now < self._excused_until
            or not continuing
            or rate >= w.throughput_drop_fraction * steady
        ):
            return []
        self._active = True
        evidence = {
            "steps_per_s": round(rate, 4),
            "steady_steps_per_s": round(steady, 4),
            "fraction": round(rate / steady, 3),
            "threshold": w.throughput_drop_fraction,
            "window_s": window,
            "steps_in_window": steps,
            "step": step,
        }
        return [
            make_event(
                obs,
                "throughput_drop",
                "warning",
                f"throughput fell to {rate:.3g} steps/s, {100 * rate / steady:.0f} % of the run's "
                f"steady {steady:.3g} steps/s over the last {window:g} s, with no thermal, power, "
                "input or checkpoint cause",
                evidence,
            )
        ]

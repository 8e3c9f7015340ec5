"""Input-bound training: the GPU waits for the data pipeline."""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence
from typing import Any

from runner.agent.detectors._common import (
    BUSY_UTIL_PERCENT,
    OFF_LOOP_PHASES,
    RAM_PER_WORKER_BYTES,
    CheckpointWatch,
    Hold,
    JobGpus,
    StepWatch,
    gb,
    gpus_of,
    make_event,
    num,
    workers,
)
from runner.agent.observe import Observation
from runner.rundir import Event
from runner.spec import WatchdogSpec

#: Utilisation window: 6 x the longest step interval (so each quarter of it holds a
#: step even for progress logged every N steps), clamped to these bounds (s).
UTIL_WINDOW_MIN_S = 120.0
UTIL_WINDOW_MAX_S = 600.0
#: Mean utilisation below this (percent)...
UTIL_MEAN_MAX = 60.0
#: ...with a standard deviation of at least this (percentage points): the
#: 0 -> 90 -> 0 % bounce. A steady low utilisation is a small model, not starvation.
UTIL_STDEV_MIN = 25.0
#: Utilisation samples needed in the window.
MIN_UTIL_SAMPLES = 20
#: Steps that must advance in the window for "steps continue".
MIN_STEPS_IN_WINDOW = 3
#: The data-wait mean must fall this far below the threshold to clear.
WAIT_HYSTERESIS = 0.1


class InputBoundDetector:
    """Steps continue but the GPU waits for data (kind ``input_bound``, warning, advice).

    - With harness metrics: mean ``data_wait / step_time`` over the last
      ``input_bound_steps`` steps > ``input_bound_fraction``.
    - Without (no ``data_wait_fractions``): over a window of 6 x the longest
      step interval (120-600 s), the job's GPU utilisation averages < 60 % with
      a standard deviation >= 25 points (the users' 0 -> 90 -> 0 % bounce: a
      ~6 s fetch against a ~0.3 s update) while steps advance in each quarter
      of the window (for progress source ``none``: the GPU busy in each quarter).
      Only ticks after the first step, outside checkpoints, count.

    A warning with action ``none`` whose message is the advice (num_workers,
    pin_memory, persistent_workers, caching; RAM per worker) and whose evidence
    holds the numbers. Once per episode; ``info`` when it clears.
    """

    name = "input_bound"

    def __init__(self, watchdog: WatchdogSpec | None = None) -> None:
        self.watchdog = watchdog if watchdog is not None else WatchdogSpec()
        self._attempt: int | None = None
        self._new_attempt()

    def _new_attempt(self) -> None:
        self._steps = StepWatch()
        self._gpus = JobGpus()
        self._ckpt = CheckpointWatch()
        # (time, mean utilisation of the job's GPUs, step, whether it advanced this tick)
        self._util: deque[tuple[float, float, int | None, bool]] = deque()
        self._started = False
        self._active = False
        self._clear = Hold()

    def observe(self, obs: Observation) -> Sequence[Event]:
        if obs.attempt != self._attempt:
            self._attempt = obs.attempt
            self._new_attempt()
        progress = obs.progress
        advanced = self._steps.update(progress)
        gpus = self._gpus.update(obs, gpus_of(obs.sample))
        checkpointing = self._ckpt.update(obs)
        waits = [f for f in (num(x) for x in progress.data_wait_fractions) if f is not None]
        if waits:
            return self._harness(obs, waits)
        utils = [
            u for u in (num(g.utilization_gpu_percent) for g in gpus if not g.lost) if u is not None
        ]
        mean_now = sum(utils) / len(utils) if utils else None
        if self._steps.last is not None or (
            progress.source == "none" and mean_now is not None and mean_now >= BUSY_UTIL_PERCENT
        ):
            self._started = True
        in_loop = obs.alive and not checkpointing and progress.phase not in OFF_LOOP_PHASES
        if self._started and in_loop and mean_now is not None:
            step = progress.step if isinstance(progress.step, int) else None
            self._util.append((obs.now, mean_now, step, advanced))
        while self._util and self._util[0][0] < obs.now - UTIL_WINDOW_MAX_S:
            self._util.popleft()
        return self._from_util(obs)

    # -- harness ---------------------------------------------------------------------

    def _harness(self, obs: Observation, waits: list[float]) -> list[Event]:
        w = self.watchdog
        n = w.input_bound_steps
        if len(waits) < n:
            return []
        recent = waits[-n:]
        mean = sum(recent) / n
        if not self._active and mean > w.input_bound_fraction:
            self._active = True
            evidence = self._advice_evidence(obs)
            evidence.update(
                {
                    "source": "harness",
                    "data_wait_fraction_mean": round(mean, 4),
                    "data_wait_fraction_max": round(max(recent), 4),
                    "steps": n,
                    "threshold": w.input_bound_fraction,
                }
            )
            return [
                make_event(
                    obs,
                    "input_bound",
                    "warning",
                    f"input-bound: each step waits for data {100 * mean:.0f} % of its time over "
                    f"the last {n} steps; {self._advice(evidence)}",
                    evidence,
                )
            ]
        if self._active and mean <= w.input_bound_fraction - WAIT_HYSTERESIS:
            self._active = False
            return [self._cleared(obs, f"data wait down to {100 * mean:.0f} % of step time")]
        return []

    # -- utilisation -----------------------------------------------------------------

    def _from_util(self, obs: Observation) -> list[Event]:
        longest = self._steps.longest(obs.progress) or 0.0
        window = min(max(6 * longest, UTIL_WINDOW_MIN_S), UTIL_WINDOW_MAX_S)
        inside = [x for x in self._util if x[0] > obs.now - window]
        found = None
        if len(inside) >= MIN_UTIL_SAMPLES and obs.now - inside[0][0] >= 0.8 * window:
            utils = [x[1] for x in inside]
            mean, stdev = statistics.fmean(utils), statistics.pstdev(utils)
            steps = self._steps_continue(obs, inside, window)
            if mean < UTIL_MEAN_MAX and stdev >= UTIL_STDEV_MIN and steps is not None:
                found = {
                    "source": "utilization",
                    "util_mean": round(mean, 1),
                    "util_stdev": round(stdev, 1),
                    "util_min": min(utils),
                    "util_max": max(utils),
                    "samples": len(utils),
                    "window_s": round(window, 1),
                    "steps_in_window": steps,
                    "steps_per_s": None if steps < 0 else round(steps / window, 4),
                }
        if self._active:
            if self._clear.update(obs.now, found is None) >= window:
                self._active = False
                return [self._cleared(obs, "GPU utilisation steady again")]
            return []
        if found is None:
            return []
        self._active, self._clear.since = True, None
        evidence = self._advice_evidence(obs)
        evidence.update(found)
        return [
            make_event(
                obs,
                "input_bound",
                "warning",
                f"input-bound: GPU utilisation averages {found['util_mean']:.0f} % and swings "
                f"{found['util_min']:.0f}-{found['util_max']:.0f} % while steps continue: the GPU "
                f"waits for data; {self._advice(evidence)}",
                evidence,
            )
        ]

    def _steps_continue(
        self,
        obs: Observation,
        inside: list[tuple[float, float, int | None, bool]],
        window: float,
    ) -> int | None:
        """Steps done in the window when they advanced in each quarter of it; -1 when only
        the GPU's busy spells say so (source ``none``); ``None`` when steps did not continue.
        """
        start = obs.now - window
        quarters = [False] * 4
        none = obs.progress.source == "none"
        for t, util, _, advanced in inside:
            if (util >= BUSY_UTIL_PERCENT) if none else advanced:
                quarters[min(3, max(0, int(4 * (t - start) / window)))] = True
        if not all(quarters):
            return None
        if none:
            return -1
        done = [s for _, _, s, _ in inside if s is not None]
        count = done[-1] - done[0] if done else 0
        return count if count >= MIN_STEPS_IN_WINDOW else None

    # -- advice ----------------------------------------------------------------------

    def _advice_evidence(self, obs: Observation) -> dict[str, Any]:
        ws = workers(obs.sample)
        host = obs.sample.host
        avail = None if host is None else num(host.ram_available_bytes)
        return {
            "workers": len(ws),
            "ram_available_bytes": avail,
            "ram_per_worker_bytes": RAM_PER_WORKER_BYTES,
            "workers_ram_allows": None if avail is None else int(avail // RAM_PER_WORKER_BYTES),
            "step": obs.progress.step,
        }

    def _advice(self, evidence: dict[str, Any]) -> str:
        ram = ""
        if evidence.get("ram_available_bytes") is not None:
            ram = (
                f"; each worker costs RAM (~2.5 GB in the users' runs, "
                f"{gb(evidence['ram_available_bytes'])} available)"
            )
        return (
            f"raise DataLoader num_workers (now {evidence['workers']}), set pin_memory=True and "
            f"persistent_workers=True, or cache decoded samples{ram}"
        )

    def _cleared(self, obs: Observation, why: str) -> Event:
        return make_event(obs, "input_bound", "info", f"no longer input-bound: {why}", {})

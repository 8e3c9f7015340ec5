"""The users' programs' output, simulated from a true step timeline, read by the agent.

Shared by ``tests/agent/test_program_progress.py`` and ``bench/bench_progress.py``.

A generator per program (:func:`lerobot`, :func:`openpi`, :func:`dino_wm`,
:func:`embedded`) draws a step timeline (a mean step time with jitter, a
start-up, checkpoint pauses, DINO WM's validation between epochs) and writes,
as the program would, the bytes each ``write()`` puts on its stdout or stderr:
tqdm redraws (``"\\r"`` + the bar from tqdm's own ``format_meter``, padded as
``status_printer`` pads it, redrawn under tqdm's ``mininterval`` and dynamic
``miniters`` rules, and its monitor thread's refresh of a bar still for
``maxinterval``), logging records in the program's own format, ``print``
lines. Every format string is the program's own; the test module cites where
each comes from. Nothing sleeps and nothing runs in a subprocess: time is
simulated.

:func:`simulate` is the agent's side: each stream through its own
:class:`runner.agent.logs.LineSplitter` (as :class:`~runner.agent.logs.AttemptLog`
pumps it), the lines of each 1 s tick into :class:`ProgressTracker` and one
:class:`Observation` per tick into :class:`StallDetector`, with a process tree
that uses a core while it trains and none (or still one, for a spinning
freeze) after a freeze.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import operator
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tqdm import tqdm as _tqdm  # type: ignore[import-untyped,unused-ignore]

from runner.agent.detectors import StallDetector
from runner.agent.logs import MAX_LINE_CHARS, LineSplitter
from runner.agent.observe import Observation
from runner.agent.progress import ProgressTracker
from runner.programs import program_for
from runner.rundir import Event
from runner.sampling.procs import ProcessSnapshot, ProcessTree
from runner.sampling.sample import Sample
from runner.spec import JobSpec, ProgressSpec, WatchdogSpec, load_job

T0 = 1_796_000_000.0  # the simulated attempt starts here (wall clock, 2026-11-30)
ROOT = 4242  # the training process
Stream = Literal["stdout", "stderr"]
Freeze = Literal["flat", "spin"]

#: tqdm's defaults (``tqdm/std.py``): redraw at most every ``mininterval`` s; the
#: monitor thread (``tqdm/_monitor.py``) wakes every ``maxinterval`` s.
MININTERVAL = 0.1
MAXINTERVAL = 10.0
SMOOTHING = 0.3
#: tqdm_loggable's ``log_message_rate`` (``tqdm_logging.py``): one record per 10 s at most.
LOG_RATE_S = 10.0
#: Steps the agent's steps/s is averaged over (``ProgressTracker.steps_per_s``: the last 16).
RATE_STEPS = 16


# --------------------------------------------------------------------------- the truth


@dataclass(frozen=True)
class Write:
    """One ``write()`` of the program: when, to which stream, what."""

    t: float
    stream: Stream
    data: bytes


@dataclass
class Trace:
    """What a program wrote, and what it really did.

    ``step_times[i]`` is when step ``base_step + i + 1`` completed (seconds after
    the attempt started). ``shown`` is ``(time, step)`` for every write that
    tells the step (a redraw or a step line), with the absolute step it shows.
    """

    name: str
    writes: list[Write]
    step_times: list[float]
    base_step: int = 0
    freeze_t: float | None = None
    shown: list[tuple[float, int]] = field(default_factory=list)

    def true_step(self, t: float) -> int:
        """Steps completed by ``t`` (absolute, counting the resumed ones)."""
        return self.base_step + bisect.bisect_right(self.step_times, t)

    def longest_gap(self, until: float) -> float:
        """The longest time between two writes that showed a new step, up to ``until``."""
        longest, last_t, last_step = 0.0, None, None
        for t, step in self.shown:
            if t > until:
                break
            if last_step is None or step > last_step:
                if last_t is not None:
                    longest = max(longest, t - last_t)
                last_t, last_step = t, step
        return longest

    def cadence(self, start: float, until: float) -> int:
        """Most true steps between two writes that showed a step, in ``[start, until]``."""
        steps = [s for t, s in self.shown if start <= t <= until]
        return max((b - a for a, b in itertools.pairwise(steps)), default=0)


@dataclass(frozen=True)
class Timing:
    """A run's rhythm: mean step time, its jitter (relative standard deviation),
    the start-up before the first step and how much longer the first step takes."""

    step_s: float
    jitter: float
    startup_s: float = 30.0
    first_step_factor: float = 3.0

    @staticmethod
    def draw(
        rng: random.Random, step_s: tuple[float, float], jitter: tuple[float, float] = (0.03, 0.10)
    ) -> Timing:
        """A mean step time log-uniform in ``step_s``, jitter uniform in ``jitter``."""
        lo, hi = step_s
        mean = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        return Timing(mean, rng.uniform(*jitter), rng.uniform(10.0, 60.0), rng.uniform(1.5, 4.0))

    def duration(self, rng: random.Random) -> float:
        """One step's duration (never under half the mean)."""
        return self.step_s * max(0.5, 1.0 + self.jitter * rng.gauss(0.0, 1.0))


class Out:
    """The program's two streams, as writes in time order (sorted at the end)."""

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.shown: list[tuple[float, int]] = []

    def write(self, t: float, stream: Stream, text: str) -> None:
        self.writes.append(Write(t, stream, text.encode("utf-8")))

    def show(self, t: float, step: int) -> None:
        """A write at ``t`` showed ``step`` (absolute)."""
        self.shown.append((t, step))

    def trace(
        self, name: str, step_times: list[float], base_step: int, freeze_t: float | None
    ) -> Trace:
        writes = sorted(self.writes, key=lambda w: w.t)  # stable: a write's order within a t
        shown = sorted(self.shown)
        return Trace(name, writes, step_times, base_step, freeze_t, shown)


def clock(t: float, fmt: str) -> str:
    """The wall clock at ``t`` s into the attempt, ``time.strftime``'d (UTC)."""
    return time.strftime(fmt, time.gmtime(T0 + t))


# --------------------------------------------------------------------------- tqdm


def format_meter(
    n: int,
    total: int,
    elapsed: float,
    *,
    prefix: str,
    unit: str,
    rate: float | None,
    initial: int = 0,
) -> str:
    """tqdm's own bar text (``tqdm.format_meter``, no terminal: 10 bar characters)."""
    text: str = _tqdm.format_meter(
        n, total, elapsed, ncols=None, prefix=prefix, unit=unit, rate=rate, initial=initial
    )
    return text


def format_sizeof(num: float, suffix: str) -> str:
    """tqdm's ``format_sizeof`` (3 significant digits, k/M/G), divisor 1000."""
    text: str = _tqdm.format_sizeof(num, suffix, 1000)
    return text


def format_interval(seconds: float) -> str:
    text: str = _tqdm.format_interval(seconds)
    return text


class _Ema:
    """tqdm's ``EMA`` (``tqdm/std.py``): bias-corrected exponential moving average."""

    def __init__(self, smoothing: float = SMOOTHING) -> None:
        self.alpha, self.last, self.calls = smoothing, 0.0, 0

    def __call__(self, x: float | None = None) -> float:
        beta = 1 - self.alpha
        if x is not None:
            self.last = self.alpha * x + beta * self.last
            self.calls += 1
        return self.last / (1 - beta**self.calls) if self.calls else self.last


class Monitor:
    """tqdm's ``TMonitor`` thread of one process: wakes every ``maxinterval`` s and
    refreshes a bar with ``miniters > 1`` not redrawn for ``maxinterval`` s
    (setting ``miniters = 1``). It starts with the process's first bar."""

    def __init__(self) -> None:
        self.next: float | None = None
        self.bars: list[Bar] = []

    def start(self, t: float) -> None:
        if self.next is None:
            self.next = t + MAXINTERVAL

    def until(self, t: float) -> None:
        """Every wake-up up to ``t``."""
        while self.next is not None and self.next <= t:
            now = self.next
            for bar in [b for b in self.bars if not b.closed]:
                if bar.miniters > 1 and now - bar.last_print_t >= MAXINTERVAL:
                    bar.miniters = 1
                    bar.refresh(now)
            self.next = now + MAXINTERVAL


class Bar:
    """One tqdm bar (``tqdm/std.py`` 4.70), driven by :meth:`tick` once per iteration.

    ``manual``: ``bar.update(1)`` per step (LeRobot), so ``n`` is always current
    and a monitor refresh shows steps the last redraw did not; otherwise the bar
    wraps an iterable (``for x in tqdm(it)``: DINO WM, openpi), whose ``n`` is
    only stored when it redraws. ``logged``: tqdm_loggable's ``tqdm_logging``,
    whose ``display`` logs a record at most every 10 s instead of drawing.
    """

    def __init__(
        self,
        out: Out,
        monitor: Monitor,
        t: float,
        *,
        stream: Stream,
        desc: str | None,
        total: int,
        unit: str = "it",
        initial: int = 0,
        manual: bool = False,
        logged: Callable[[float, str], None] | None = None,
        absolute: Callable[[int], int] | None = None,
        shows: bool = True,
    ) -> None:
        self.out, self.monitor, self.stream = out, monitor, stream
        self.desc, self.total, self.unit, self.initial = desc, total, unit, initial
        self.manual, self.logged = manual, logged
        self.absolute = absolute or (lambda n: n)
        self.shows = shows
        self.count = self.n = self.last_print_n = initial
        self.start_t = self.last_print_t = t
        self.miniters = 0.0
        self.closed = False
        self._ema_dn, self._ema_dt, self._ema_miniters = _Ema(), _Ema(), _Ema()
        self._last_len = 0
        self._last_log: float | None = None
        self._overall = False
        monitor.until(t)
        monitor.start(t)
        monitor.bars.append(self)
        self.refresh(t)  # __init__: self.refresh() unless delay > 0

    def tick(self, t: float) -> None:
        """One iteration done at ``t`` (``update(1)``, or the iterator's inlined check)."""
        self.monitor.until(t)
        self.count += 1
        if self.manual:
            self.n = self.count
        if self.count - self.last_print_n >= self.miniters:
            dt = t - self.last_print_t
            if dt >= MININTERVAL:
                dn = self.count - self.last_print_n
                self.n = self.count
                self._ema_dn(dn)
                self._ema_dt(dt)
                self.refresh(t)
                if dt >= MAXINTERVAL:
                    self.miniters = dn * MININTERVAL / dt
                else:
                    self.miniters = self._ema_miniters(dn * MININTERVAL / dt)
                self.last_print_n, self.last_print_t = self.n, t

    def close(self, t: float) -> None:
        """``close()`` with ``leave=True``: the final state (overall rate), then a line end."""
        self.monitor.until(t)
        self.n = self.count
        self._overall = True
        if self.logged is not None:
            self.closed = True  # tqdm_logging.close: disable first, so never throttled
            self.display(t)
            return
        self.display(t)
        self.out.write(t, self.stream, "\n")
        self.closed = True

    def refresh(self, t: float) -> None:
        self.display(t)

    def display(self, t: float) -> None:
        rate = None
        if not self._overall and self._ema_dt():
            rate = self._ema_dn() / self._ema_dt()
        if self.logged is not None:
            self._log(t, rate)
            return
        text = format_meter(
            self.n,
            self.total,
            t - self.start_t,
            prefix=self.desc or "",
            unit=self.unit,
            rate=rate,
            initial=self.initial,
        )
        pad = " " * max(self._last_len - len(text), 0)  # status_printer pads a shorter redraw
        self._last_len = len(text)
        self.out.write(t, self.stream, "\r" + text + pad)
        if self.shows:
            self.out.show(t, self.absolute(self.n))

    def _log(self, t: float, rate: float | None) -> None:
        """``tqdm_logging.display``: ``Progress on:...`` unless one came within 10 s."""
        assert self.logged is not None
        if not self.closed and self._last_log is not None and t - self._last_log <= LOG_RATE_S:
            return
        n, total, unit = self.n, self.total, self.unit
        if n and total:
            n_text, total_text = format_sizeof(n, unit), format_sizeof(total, unit)
        else:
            n_text, total_text = str(n or "-"), str(total or "-")
        remaining = (total - n) / rate if rate and total else 0
        remaining_text = format_interval(remaining) if rate else "?"
        rate_text = f"{rate:,.1f}{unit}/s" if rate else "-"
        elapsed = format_interval(t - self.start_t)
        message = (
            f"Progress on:{self.desc or ''} {n_text}/{total_text} rate:{rate_text} "
            f"remaining:{remaining_text} elapsed:{elapsed} postfix:-"
        )
        self.logged(t, message)
        if n and self.shows:
            self.out.show(t, self.absolute(n))
        self._last_log = t


# --------------------------------------------------------------------------- LeRobot


def format_big_number(num: float, precision: int = 0) -> str:
    """LeRobot 0.6.1 ``utils/utils.py`` ``format_big_number`` (L103), verbatim in effect."""
    for suffix in ("", "K", "M", "B", "T", "Q"):
        if abs(num) < 1000.0:
            return f"{num:.{precision}f}{suffix}"
        num /= 1000.0
    return str(num)


def _lerobot_record(t: float, message: str) -> str:
    """LeRobot's ``init_logging`` formatter (``utils/utils.py``):
    ``"%(levelname)s %(lerobot_pid)s%(asctime)s %(lerobot_location)15s %(message)s"``,
    the location ``f"{pathname}:{lineno}"[-15:]`` (``logging.info(train_tracker)`` is
    ``scripts/lerobot_train.py`` L641)."""
    return f"INFO {clock(t, '%Y-%m-%d %H:%M:%S')} {'ot_train.py:641':>15} {message}\n"


def lerobot(
    rng: random.Random,
    timing: Timing,
    *,
    log_freq: int = 200,
    bar: bool = True,
    steps: int = 50_000,
    start_step: int = 0,
    save_freq: int = 5_000,
    batch_size: int = 8,
    frames: int = 47_100,
    episodes: int = 157,
    end_s: float,
    freeze_s: float | None = None,
    name: str = "lerobot",
) -> Trace:
    """``lerobot-train``: the INFO record every ``log_freq`` steps and, with ``bar``,
    the tqdm bar ``Training`` (both on stderr, often on one physical line)."""
    out, monitor = Out(), Monitor()
    t = 0.0

    def info(at: float, message: str) -> None:
        out.write(at, "stderr", _lerobot_record(at, message))

    info(1.0, f"Output dir: outputs/train/{name}")
    t = timing.startup_s
    progbar = None
    if bar:  # tqdm(total=cfg.steps - step, desc="Training", unit="step", position=0, leave=True)
        progbar = Bar(
            out,
            monitor,
            t,
            stream="stderr",
            desc="Training",
            total=steps - start_step,
            unit="step",
            manual=True,
            absolute=lambda n: start_step + n,
        )
    info(t, f"Start offline training on a fixed dataset, with effective batch size: {batch_size}")
    step, step_times, freeze_t = start_step, [], None
    update_s = timing.step_s * 0.95
    first = True
    while True:
        d = timing.duration(rng) * (timing.first_step_factor if first else 1.0)
        first = False
        if t + d > end_s:
            break
        t += d
        step += 1
        step_times.append(t)
        if progbar is not None:
            progbar.tick(t)
        else:
            monitor.until(t)
        if step % log_freq == 0:
            samples = step * batch_size
            message = (
                f"step:{format_big_number(step)} smpl:{format_big_number(samples)} "
                f"ep:{format_big_number(samples * episodes / frames)} "
                f"epch:{samples / frames:.2f} loss:{rng.uniform(0.05, 2.0):.3f} "
                f"grdn:{rng.uniform(1.0, 60.0):.3f} lr:{1e-5:0.1e} "
                f"updt_s:{update_s:.3f} data_s:{timing.step_s * 0.05:.3f}"
            )
            info(t, message)
            out.show(t, step)
        if freeze_s is not None and t >= freeze_s:
            freeze_t = t
            break
        if step % save_freq == 0:
            info(t, f"Checkpoint policy after step {step}")
            t += rng.uniform(2.0, 10.0)  # saving: no steps, no output
    monitor.until(end_s)  # the monitor thread outlives a frozen main thread
    return out.trace(name, step_times, start_step, freeze_t)


# --------------------------------------------------------------------------- openpi


def _openpi_record(t: float, message: str, where: str = "tqdm_logging.py:147") -> str:
    """openpi ``scripts/train.py`` ``init_logging`` (L40-43): ``"%(asctime)s.%(msecs)03d
    [%(levelname)s] %(message)-80s (%(process)d:%(filename)s:%(lineno)s)"``."""
    ms = int((t % 1.0) * 1000)
    return f"{clock(t, '%H:%M:%S')}.{ms:03d} [I] {message:<80} ({ROOT}:{where})\n"


def openpi(
    rng: random.Random,
    timing: Timing,
    *,
    log_interval: int = 100,
    logged_bar: bool = True,
    steps: int = 30_000,
    start_step: int = 0,
    end_s: float,
    freeze_s: float | None = None,
    name: str = "openpi",
) -> Trace:
    """openpi: ``compute_norm_stats.py`` (a plain tqdm bar ``Computing stats``), then
    ``scripts/train.py``: ``Step N: ...`` on stdout every ``log_interval`` steps and,
    with ``logged_bar`` (stdout no terminal), tqdm_loggable's ``Progress on:`` records
    on stderr at most every 10 s."""
    out = Out()
    stats_monitor, train_monitor = Monitor(), Monitor()

    def log(at: float, message: str) -> None:
        out.write(at, "stderr", _openpi_record(at, message))

    # compute_norm_stats.py L105: tqdm.tqdm(data_loader, total=num_batches, desc="Computing stats")
    t = 1.0
    stats = Bar(
        out, stats_monitor, t, stream="stderr", desc="Computing stats", total=200, shows=False
    )
    per = timing.startup_s / 2 / 200
    for _ in range(200):
        t += per * rng.uniform(0.8, 1.2)
        stats.tick(t)
    stats.close(t)
    out.write(t, "stdout", "Writing stats to: assets/pi0_so101/norm_stats.json\n")
    log(t + 1.0, "Running on: gpu-host")
    t += timing.startup_s / 2
    # train.py L251-256: tqdm.tqdm(range(start_step, num_train_steps), initial=start_step,
    # total=num_train_steps, dynamic_ncols=True); tqdm_loggable logs instead of drawing.
    pbar = None
    if logged_bar:
        pbar = Bar(
            out,
            train_monitor,
            t,
            stream="stderr",
            desc=None,
            total=steps,
            initial=start_step,
            logged=log,
        )
    step_times, freeze_t = [], None
    step = start_step  # the step the loop body runs
    first = True
    while step < steps:
        d = timing.duration(rng) * (timing.first_step_factor if first else 1.0)
        first = False
        if t + d > end_s:
            break
        t += d
        step_times.append(t)  # step `step` done: step + 1 steps completed
        if step % log_interval == 0:  # L263-267
            info = (
                f"grad_norm={rng.uniform(0.1, 5.0):.4f}, loss={rng.uniform(0.01, 1.0):.4f}, "
                f"param_norm={rng.uniform(1700, 1900):.4f}"
            )
            out.write(t, "stdout", f"Step {step}: {info}\n")
            out.show(t, step)
        if freeze_s is not None and t >= freeze_s:
            freeze_t = t
            break
        step += 1
        if pbar is not None:
            pbar.tick(t)  # the loop moves on: n = completed steps
        else:
            train_monitor.until(t)
    train_monitor.until(end_s)
    return out.trace(name, step_times, start_step, freeze_t)


# --------------------------------------------------------------------------- DINO WM


def _hydra_record(t: float, message: str) -> str:
    """Hydra's default job logging (stdout):
    ``[%(asctime)s][%(name)s][%(levelname)s] - %(message)s``."""
    ms = int((t % 1.0) * 1000)
    return f"[{clock(t, '%Y-%m-%d %H:%M:%S')},{ms:03d}][__main__][INFO] - {message}\n"


def dino_wm(
    rng: random.Random,
    timing: Timing,
    *,
    batches: int = 300,
    valid_batches: int = 40,
    valid_step_s: float | None = None,
    ranks: int = 1,
    end_s: float,
    freeze_s: float | None = None,
    name: str = "dino_wm",
) -> Trace:
    """DINO WM ``train.py``: per epoch (from 1) a bar ``Epoch N Train`` over its
    ``batches`` (per rank), then ``Epoch N Valid``, the epoch's log line and a save;
    under accelerate every rank draws its own bars on the one stderr."""
    out = Out()
    monitors = [Monitor() for _ in range(ranks)]
    valid_s = valid_step_s if valid_step_s is not None else timing.step_s * 0.4
    t = timing.startup_s
    out.write(2.0, "stdout", _hydra_record(2.0, "Model saved dir: outputs/2026-11-30/12-00-00"))
    out.write(5.0, "stdout", _hydra_record(5.0, "Loading dataset from /data/dataset ..."))
    step_times: list[float] = []
    freeze_t = None
    epoch, first, ended = 0, True, False
    while freeze_t is None and not ended:
        epoch += 1
        base = (epoch - 1) * batches
        # L443-444: tqdm(self.dataloaders["train"], desc=f"Epoch {self.epoch} Train")
        bars = [
            Bar(
                out,
                monitors[r],
                t + 0.001 * r,
                stream="stderr",
                desc=f"Epoch {epoch} Train",
                total=batches,
                absolute=functools.partial(operator.add, base),
            )
            for r in range(ranks)
        ]
        for _ in range(batches):
            d = timing.duration(rng) * (timing.first_step_factor if first else 1.0)
            first = False
            if t + d > end_s:
                ended = True
                break
            t += d
            step_times.append(t)
            for r, bar in enumerate(bars):  # DDP: the ranks finish a step together
                bar.tick(t + (rng.uniform(0.0, 0.02) if r else 0.0))
            if freeze_s is not None and t >= freeze_s:
                freeze_t = t
                break
        if freeze_t is not None or ended:
            break
        for r, bar in enumerate(bars):
            bar.close(t + 0.02 + 0.001 * r)
        t += 0.05
        # L555-556: tqdm(self.dataloaders["valid"], desc=f"Epoch {self.epoch} Valid")
        valid = [
            Bar(
                out,
                monitors[r],
                t,
                stream="stderr",
                desc=f"Epoch {epoch} Valid",
                total=valid_batches,
                shows=False,
            )
            for r in range(ranks)
        ]
        for _ in range(valid_batches):
            t += valid_s * rng.uniform(0.8, 1.2)
            for bar in valid:
                bar.tick(t)
        for bar in valid:
            bar.close(t)
        # L740-741, logs_flash: the f-string runs on over a backslash-newline
        for _ in range(ranks):
            out.write(
                t,
                "stdout",
                _hydra_record(
                    t,
                    f"Epoch {epoch}  Training loss: {rng.uniform(0.01, 1):.4f}  "
                    f"              Validation loss: {rng.uniform(0.01, 1):.4f}",
                ),
            )
        t += rng.uniform(2.0, 5.0)  # save_ckpt
        out.write(t, "stdout", _hydra_record(t, "Saved model to /app/dino_wm/outputs"))
    for m in monitors:
        m.until(end_s)
    return out.trace(name, step_times, 0, freeze_t)


# --------------------------------------------------------------------------- runner's own


def embedded(
    rng: random.Random,
    timing: Timing,
    *,
    log_every: int = 20,
    steps: int = 1_000_000,
    end_s: float,
    freeze_s: float | None = None,
    name: str = "embedded",
) -> Trace:
    """``runner.trainers.franka_wm`` (``_say``, L705-712): ``step N/T loss ...`` every
    ``log_every`` steps on stdout (read by the pattern when no heartbeat is seen)."""
    out = Out()
    t, step, step_times, freeze_t, first = timing.startup_s, 0, [], None, True
    while step < steps:
        d = timing.duration(rng) * (timing.first_step_factor if first else 1.0)
        first = False
        if t + d > end_s:
            break
        t += d
        step += 1
        step_times.append(t)
        if step % log_every == 0:
            rate = 1.0 / timing.step_s
            out.write(
                t,
                "stdout",
                f"step {step}/{steps} loss {rng.uniform(0.01, 1):.4f} (vis 0.1000 prop 0.0100) "
                f"{rate:.1f} steps/s {rate * 16:.1f} samples/s data-wait 3%\n",
            )
            out.show(t, step)
        if freeze_s is not None and t >= freeze_s:
            freeze_t = t
            break
    return out.trace(name, step_times, 0, freeze_t)


# --------------------------------------------------------------------------- the agent


def _proc(pid: int, ppid: int, cpu: float) -> ProcessSnapshot:
    return ProcessSnapshot(
        pid=pid,
        ppid=ppid,
        name="python3",
        state="sleeping",
        cmdline="python train.py",
        create_time=T0 - 600.0 + pid / 1e6,
        age_s=600.0,
        rss_bytes=6 << 30,
        cpu_time_s=100.0,
        cpu_delta_s=cpu,
        cpu_percent=100.0 * cpu,
        write_delta_bytes=0,
    )


def _tree(cpu: float) -> ProcessTree:
    """The trainer (``cpu`` cores this 1 s tick) alone: no DataLoader workers."""
    return ProcessTree(ROOT, True, 1.0, (_proc(ROOT, 1, cpu),))


BUSY, FLAT = _tree(1.0), _tree(0.0)


@dataclass(frozen=True)
class JobSetup:
    """A job as the agent runs it: the spec, the command, and its progress spec."""

    job: JobSpec
    argv: list[str]
    progress: ProgressSpec

    @staticmethod
    def load(name: str, overrides: Sequence[str] = (), profile: str | None = None) -> JobSetup:
        job = load_job(name, profile=profile)
        argv = job.apply_overrides(list(overrides))[0]
        return JobSetup(job, argv, program_for(job).progress(job, argv))

    def tracker(self, base_step: int = 0) -> ProgressTracker:
        spec = self.progress
        tracker = ProgressTracker(
            None, spec.patterns, line_every=spec.line_every, first_epoch=spec.first_epoch
        )
        tracker.reset(T0, base_step=base_step)
        return tracker


@dataclass
class Outcome:
    """The agent's view, tick by tick, and the stall events."""

    trace: Trace
    times: list[float]
    steps: list[int | None]
    rates: list[float | None]
    events: list[Event]
    late_redraws: int

    def stalls(self, severity: str | None = None) -> list[Event]:
        return [
            e
            for e in self.events
            if e.kind == "stall" and (severity is None or e.severity == severity)
        ]

    def truth(self, t: float) -> int:
        return self.trace.true_step(t)

    def step_at(self, t: float) -> int | None:
        """The agent's step at its last tick at or before ``t``."""
        i = bisect.bisect_right(self.times, t) - 1
        return self.steps[i] if i >= 0 else None

    def backwards(self) -> list[tuple[float, int, int]]:
        """Ticks where the step went back: (time, before, after)."""
        out: list[tuple[float, int, int]] = []
        last: int | None = None
        for t, s in zip(self.times, self.steps, strict=True):
            if s is not None and last is not None and s < last:
                out.append((t, last, s))
            last = s if s is not None else last
        return out

    def read_error(self, start: float, until: float) -> float:
        """The agent's step against the step the program's writes showed by then
        (the highest yet), worst tick in ``[start, until]``, relative: how well it
        reads what was printed, leaving out what the program has not printed yet."""
        shown = self.trace.shown
        at = [t for t, _ in shown]
        best = list(itertools.accumulate((s for _, s in shown), max))
        worst = 0.0
        for t, step in zip(self.times, self.steps, strict=True):
            i = bisect.bisect_right(at, t) - 1
            if not start <= t <= until or i < 0 or step is None or best[i] <= 0:
                continue
            worst = max(worst, abs(step - best[i]) / best[i])
        return worst

    def rate_error(
        self, start: float, until: float, *, settle_s: float, pause_s: float
    ) -> tuple[float, float, int]:
        """The agent's steps/s against the truth's over the steady ticks in
        ``[start, until]``: (error of the mean, largest error of one tick, ticks).

        The truth at a tick is the rate over the last :data:`RATE_STEPS` steps done
        by then, as the agent's figure is the mean of its last 16 intervals. A tick
        is steady unless it falls in a pause (a step that took over ``pause_s``: a
        checkpoint save, a validation phase) or within ``settle_s`` after one: a 1 s
        tick spreads the steps it sees over the whole second, so around a pause the
        agent's figure leads or lags the truth's by a tick or two.
        """
        times = self.trace.step_times
        pauses = [(a, b) for a, b in itertools.pairwise(times) if b - a > pause_s]
        starts = [a for a, _ in pauses]
        agent: list[float] = []
        truth: list[float] = []
        for t, r in zip(self.times, self.rates, strict=True):
            k = bisect.bisect_right(times, t)
            if not start <= t <= until or r is None or k <= RATE_STEPS:
                continue
            j = bisect.bisect_left(starts, t) - 1  # the last pause begun before t
            if j >= 0 and t <= pauses[j][1] + settle_s:
                continue
            agent.append(r)
            truth.append(RATE_STEPS / (times[k - 1] - times[k - 1 - RATE_STEPS]))
        if not agent:
            return math.inf, math.inf, 0
        true_mean = sum(truth) / len(truth)
        mean_error = abs(sum(agent) / len(agent) - true_mean) / true_mean
        worst = max(abs(a - b) / b for a, b in zip(agent, truth, strict=True))
        return mean_error, worst, len(agent)


def simulate(
    trace: Trace,
    setup: JobSetup,
    *,
    end_s: float,
    freeze: Freeze = "flat",
    watchdog: WatchdogSpec | None = None,
    phase: float = 0.5,
    stop_at_critical: bool = True,
) -> Outcome:
    """The agent reading ``trace``: one tick a second (at ``phase`` + k s) until
    ``end_s`` (or the first critical stall, which the supervisor acts on)."""
    w = watchdog or setup.job.watchdog
    tracker = setup.tracker(trace.base_step)
    detector = StallDetector(w)
    splitters = {"stdout": LineSplitter(1 << 16), "stderr": LineSplitter(1 << 16)}
    writes, i = trace.writes, 0
    frozen_tree = FLAT if freeze == "flat" else BUSY
    times: list[float] = []
    steps: list[int | None] = []
    rates: list[float | None] = []
    events: list[Event] = []
    t = phase
    while t <= end_s:
        lines: list[str] = []
        while i < len(writes) and writes[i].t <= t:
            got = splitters[writes[i].stream].feed(writes[i].data)[1]
            lines.extend(b.decode("utf-8", "replace")[:MAX_LINE_CHARS] for b in got)
            i += 1
        progress = tracker.update(lines, T0 + t)
        frozen = trace.freeze_t is not None and t - 1.0 >= trace.freeze_t
        sample = Sample(T0 + t, None, frozen_tree if frozen else BUSY)
        obs = Observation(
            now=T0 + t,
            attempt=0,
            attempt_started=T0,
            sample=sample,
            progress=progress,
            alive=True,
            training_pid=ROOT,
            watchdog=w,
            log_lines=tuple(lines),
            checkpoint_path="/workspace/checkpoints",
        )
        times.append(t)
        steps.append(progress.step)
        rates.append(tracker.steps_per_s())
        found = list(detector.observe(obs))
        events.extend(found)
        if stop_at_critical and any(e.kind == "stall" and e.severity == "critical" for e in found):
            break
        t += 1.0
    return Outcome(trace, times, steps, rates, events, tracker.late_redraws)


def stall_bounds(trace: Trace, w: WatchdogSpec) -> tuple[float, float, float]:
    """Latest freeze-to-event times the watchdog allows for ``trace``'s freeze:
    (a flat CPU's critical, a spinning tree's warning, its critical).

    With L the longest true gap between two writes that showed a new step
    before the freeze, plus a tick (the agent sees a write at its next tick):
    the learned limit is ``max(stall_factor x L, stall_min_s)``; a flat CPU
    confirms once the silence passes ``max(confirm_s, stall_factor x L)`` and
    the CPU has been flat for ``confirm_s``; a spinning (busy) tree is warned
    at the limit and restarted at ``busy_stall_factor`` x it. Silence counts
    from the agent's sighting of the last step, up to a tick after the freeze;
    two ticks more for rounding. After a pause (DINO WM's validation) the first
    redraw looks like tqdm's late redraw of a frozen bar and is credited only when
    the next sighting shows the loop running, a tick later: that gap may read one
    tick longer still.
    """
    assert trace.freeze_t is not None
    gap = trace.longest_gap(trace.freeze_t) + 2.0
    limit = max(w.stall_factor * gap, w.stall_min_s)
    flat = max(w.confirm_s + 1.0, w.stall_factor * gap) + 3.0
    return flat, limit + 3.0, w.busy_stall_factor * limit + 3.0


# --------------------------------------------------------------------------- one run

#: A trace maker: (rng, timing, end_s, freeze_s) -> what the program wrote.
Maker = Callable[[random.Random, Timing, float, "float | None"], Trace]
#: How long a frozen program's tqdm monitor thread is simulated after the freeze.
AFTER_FREEZE_S = 60_000.0


@dataclass(frozen=True)
class Format:
    """One job's output format, as a test or the bench runs it.

    ``jobs`` take turns over the seeds (they share the program and its format);
    ``line_steps`` is the steps between two step lines (``None``: a bar, which
    shows every redraw); ``step_s`` the range a run's mean step time is drawn
    from (log-uniform).
    """

    name: str
    jobs: tuple[str, ...]
    make: Maker
    step_s: tuple[float, float]
    overrides: tuple[str, ...] = ()
    profile: str | None = None
    line_steps: int | None = None
    min_healthy_s: float = 400.0

    def setup(self, seed: int) -> JobSetup:
        return JobSetup.load(self.jobs[seed % len(self.jobs)], self.overrides, self.profile)

    def healthy_s(self, timing: Timing) -> float:
        """Long enough for eight step lines after the start-up and the first step."""
        gap = (self.line_steps or 1) * timing.step_s
        start = timing.startup_s + timing.first_step_factor * timing.step_s
        return start + max(self.min_healthy_s, 8 * gap)


@dataclass
class RunResult:
    """One simulated run of a format, measured against its truth."""

    fmt: str
    job: str
    seed: int
    timing: Timing
    freeze: Freeze | None
    outcome: Outcome
    healthy_end: float
    step: int | None
    truth: int
    cadence: int
    read_error: float
    rate_error: float
    rate_error_max: float
    rate_ticks: int
    bounds: tuple[float, float, float] | None

    @property
    def trace(self) -> Trace:
        return self.outcome.trace

    @property
    def step_error(self) -> float:
        """|agent - truth| / truth at the end of the healthy part."""
        return abs((self.step or 0) - self.truth) / max(self.truth, 1)

    def healthy_stalls(self, severity: str | None = None) -> list[Event]:
        """Stall events before the freeze (or the end): all false."""
        return [e for e in self.outcome.stalls(severity) if e.time - T0 <= self.healthy_end]

    def latency(self, severity: str | None = None) -> float | None:
        """Freeze to the first stall event (of ``severity``) after it, seconds."""
        if self.freeze is None:
            return None
        after = [e for e in self.outcome.stalls(severity) if e.time - T0 > self.healthy_end]
        return after[0].time - T0 - self.healthy_end if after else None

    def describe(self) -> str:
        tm = self.timing
        return (
            f"{self.fmt} seed {self.seed} ({self.job}; {tm.step_s:.2f} s/step, jitter "
            f"{100 * tm.jitter:.0f} %, start-up {tm.startup_s:.0f} s, freeze {self.freeze}"
            f" at {self.healthy_end:.0f} s)"
        )


def run_once(
    fmt: Format,
    seed: int,
    *,
    freeze: Freeze | None,
    healthy_s: float | None = None,
    freeze_at: tuple[float, float] = (0.6, 1.0),
    stop_at_critical: bool = True,
) -> RunResult:
    """``fmt`` healthy for ``healthy_s`` (default :meth:`Format.healthy_s`), then
    (``freeze``) frozen at a random step in that fraction of it, ticked until the
    bound for its kind of freeze has passed."""
    rng = random.Random(f"{fmt.name}:{seed}")
    timing = Timing.draw(rng, fmt.step_s)
    setup = fmt.setup(seed)
    w = setup.job.watchdog
    healthy = healthy_s if healthy_s is not None else fmt.healthy_s(timing)
    bounds = None
    if freeze is None:
        trace = fmt.make(rng, timing, healthy, None)
        end = healthy
    else:
        freeze_s = rng.uniform(*freeze_at) * healthy
        trace = fmt.make(rng, timing, freeze_s + AFTER_FREEZE_S, freeze_s)
        assert trace.freeze_t is not None
        bounds = stall_bounds(trace, w)
        end = trace.freeze_t + (bounds[0] if freeze == "flat" else bounds[2]) + 5.0
        assert end < freeze_s + AFTER_FREEZE_S
    outcome = simulate(
        trace,
        setup,
        end_s=end,
        freeze=freeze or "flat",
        phase=rng.random(),
        stop_at_critical=stop_at_critical,
    )
    healthy_end = trace.freeze_t if trace.freeze_t is not None else end
    first_shown = trace.shown[0][0] if trace.shown else 0.0
    steady = first_shown + 0.4 * (healthy_end - first_shown)
    line_s = (fmt.line_steps or 1) * timing.step_s * (1 + 3 * timing.jitter)
    rate_error, rate_error_max, rate_ticks = outcome.rate_error(
        steady,
        healthy_end,
        settle_s=line_s + RATE_STEPS * timing.step_s + 2.0,
        pause_s=3.0 * timing.step_s,
    )
    return RunResult(
        fmt=fmt.name,
        job=setup.job.name,
        seed=seed,
        timing=timing,
        freeze=freeze,
        outcome=outcome,
        healthy_end=healthy_end,
        step=outcome.step_at(healthy_end),
        truth=trace.true_step(
            outcome.times[max(0, bisect.bisect_right(outcome.times, healthy_end) - 1)]
        ),
        cadence=trace.cadence(first_shown, healthy_end),
        read_error=outcome.read_error(steady, healthy_end),
        rate_error=rate_error,
        rate_error_max=rate_error_max,
        rate_ticks=rate_ticks,
        bounds=bounds,
    )


# --------------------------------------------------------------------------- the formats

#: The jobs of ``program.kind: lerobot``: one program, one output format.
LEROBOT_JOBS = ("act_so101", "smolvla_so101", "pi0_so101")
#: LeRobot's ``log_freq`` default (``configs/train.py`` L114) and openpi's
#: ``log_interval`` (``src/openpi/training/config.py`` L514).
LEROBOT_LOG_FREQ = 200
OPENPI_LOG_INTERVAL = 100


def lerobot_format(
    name: str,
    *,
    log_freq: int,
    bar: bool,
    step_s: tuple[float, float],
    start_step: int = 0,
    steps: int = 50_000,
) -> Format:
    """LeRobot at ``log_freq`` (given on the command line unless it is the default),
    with or without its tqdm bar (``disable=inside_slurm()``), maybe resumed, training
    ``steps`` (act_so101's 50000)."""

    def make(rng: random.Random, timing: Timing, end_s: float, freeze_s: float | None) -> Trace:
        return lerobot(
            rng,
            timing,
            log_freq=log_freq,
            bar=bar,
            start_step=start_step,
            steps=steps,
            end_s=end_s,
            freeze_s=freeze_s,
            name=name,
        )

    overrides = () if log_freq == LEROBOT_LOG_FREQ else (f"log_freq={log_freq}",)
    return Format(name, LEROBOT_JOBS, make, step_s, overrides, line_steps=None if bar else log_freq)


def openpi_format(
    name: str,
    *,
    log_interval: int,
    logged_bar: bool,
    step_s: tuple[float, float],
    steps: int = 30_000,
) -> Format:
    """openpi at ``log_interval``, with or without tqdm_loggable's ``Progress on:``
    records, training ``steps`` (openpi_pi0's 30000)."""

    def make(rng: random.Random, timing: Timing, end_s: float, freeze_s: float | None) -> Trace:
        return openpi(
            rng,
            timing,
            log_interval=log_interval,
            logged_bar=logged_bar,
            steps=steps,
            end_s=end_s,
            freeze_s=freeze_s,
            name=name,
        )

    overrides = () if log_interval == OPENPI_LOG_INTERVAL else (f"log-interval={log_interval}",)
    return Format(name, ("openpi_pi0",), make, step_s, overrides, line_steps=log_interval)


def dino_wm_format(name: str, *, ranks: int, step_s: tuple[float, float]) -> Format:
    """DINO WM: epochs of 150-400 batches per rank, a validation of 5-30 s between them."""

    def make(rng: random.Random, timing: Timing, end_s: float, freeze_s: float | None) -> Trace:
        valid_batches = rng.randint(20, 60)
        return dino_wm(
            rng,
            timing,
            batches=rng.randint(150, 400),
            valid_batches=valid_batches,
            valid_step_s=rng.uniform(5.0, 30.0) / valid_batches,
            ranks=ranks,
            end_s=end_s,
            freeze_s=freeze_s,
            name=name,
        )

    job = "robomimic_can" if ranks == 2 else "franka_cube_stack"
    return Format(name, (job,), make, step_s, min_healthy_s=600.0)


def embedded_format(name: str, *, step_s: tuple[float, float], steps: int = 1_000_000) -> Format:
    """runner's trainer, ``log_every`` 20, read by the ``embedded`` profile's pattern."""

    def make(rng: random.Random, timing: Timing, end_s: float, freeze_s: float | None) -> Trace:
        return embedded(rng, timing, steps=steps, end_s=end_s, freeze_s=freeze_s, name=name)

    return Format(name, ("franka_cube_stack",), make, step_s, profile="embedded", line_steps=20)

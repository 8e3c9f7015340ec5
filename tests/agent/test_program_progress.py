"""Each job's own progress output, read by the agent over simulated time (issue 16).

Every job's program writes its progress as its own source does: the lines here
are made from the programs' format strings (``tests/agent/progress_sim.py``
makes them; tqdm's bars come from tqdm's own ``format_meter``), redrawn and
timed by a true step timeline with 3-10 % jitter, then split as the agent
splits them (:class:`runner.agent.logs.LineSplitter`, one per stream) and read
by the job's own progress spec (``program_for(job).progress(job, argv)``) into
:class:`ProgressTracker` and :class:`StallDetector` (the job's own watchdog),
one tick a simulated second, the trainer using a core while it trains.

Where each format comes from:

- LeRobot 0.6.1 ``lerobot-train`` (act_so101, smolvla_so101, pi0_so101):
  ``scripts/lerobot_train.py`` L627 ``is_log_step = cfg.log_freq > 0 and step %
  cfg.log_freq == 0`` (``log_freq`` default 200, ``configs/train.py`` L114), L641
  ``logging.info(train_tracker)`` printing ``MetricsTracker.__str__``
  (``utils/logging_utils.py`` L209-220): ``step:{format_big_number(steps)}
  smpl:... ep:... epch:{epochs:.2f}`` and the meters, e.g. ``INFO 2026-12-07
  05:50:22 ot_train.py:641 step:1 smpl:2 ep:0 epch:0.03 loss:84.736 grdn:1414.045
  lr:1.0e-05 updt_s:14.514 data_s:0.087``, the prefix from ``init_logging``'s
  ``"%(levelname)s %(lerobot_pid)s%(asctime)s %(lerobot_location)15s
  %(message)s"`` (``utils/utils.py``), to stderr. ``format_big_number``
  (``utils/utils.py`` L103-112) divides by 1000 per suffix K, M, B and prints
  ``.0f`` (half to even): ``1000`` -> ``1K``, ``1500`` -> ``2K``, ``2500`` -> ``2K``.
  Beside it the bar of L589-596, ``tqdm(total=cfg.steps - step, desc="Training",
  unit="step", disable=inside_slurm(), position=0, leave=True)``, updated by L625
  ``progbar.update(1)`` once per step, counting from 0 after a resume, on the
  same stderr: the INFO record often follows the bar on one physical line.
- openpi ``scripts/train.py`` (openpi_pi0;
  Physical-Intelligence/openpi@15a9616a00943ada6c20a0f158e3adb39df2ccac): L263
  ``if step % config.log_interval == 0:`` (``log_interval: int = 100``,
  ``src/openpi/training/config.py`` L514), L266 ``info_str = ", ".join(f"{k}={v:.4f}"
  for k, v in reduced_info.items())``, L267 ``pbar.write(f"Step {step}: {info_str}")``
  (stdout, the absolute step). ``import tqdm_loggable.auto as tqdm`` (L16): with
  stdout no terminal the bar of L251-256 logs instead, at most every 10 s,
  ``"Progress on:%s %s/%s rate:%s remaining:%s elapsed:%s postfix:%s"``
  (tqdm_loggable ``tqdm_logging.py``) with tqdm's ``format_sizeof`` (3
  significant digits, k/M/G): ``Progress on: 1.01kit/30.0kit rate:10.0it/s ...``,
  through ``init_logging``'s formatter (L40-43) on stderr. Before it,
  ``scripts/compute_norm_stats.py`` L105 draws ``tqdm.tqdm(..., desc="Computing stats")``.
- DINO WM ``train.py`` (gaoyuezhou/dino_wm@0a9492fa12044b852ae9e001cc74604b79c8bb0c;
  franka_cube_stack, robomimic_can): L371 ``init_epoch = self.epoch + 1  # epoch
  starts from 1``; L443-444 ``tqdm(self.dataloaders["train"], desc=f"Epoch
  {self.epoch} Train")``, a bar per epoch redrawn per batch; L555-556 ``desc=f"Epoch
  {self.epoch} Valid"`` after each train epoch; L740-741 the epoch's log line
  (Hydra's logging, stdout). Under ``accelerate launch --num_processes=2``
  (robomimic_can) each rank draws its own bars on the one stderr.
- runner's own trainer (franka_cube_stack's ``embedded`` profile):
  ``runner/trainers/franka_wm.py`` L705-712, ``step {step}/{total} loss ...`` every
  ``log_every`` (20) steps, read by the profile's ``progress.pattern`` when no
  heartbeat is seen.

tqdm (4.70, ``tqdm/std.py``) redraws when ``n - last_print_n >= miniters`` and at
least ``mininterval`` (0.1 s) has passed, ``miniters`` adapting by EMA; its
monitor thread (``tqdm/_monitor.py``) wakes every 10 s and refreshes a bar with
``miniters > 1`` not redrawn for 10 s; it outlives a frozen main thread.

Each format runs 20 times (different seeds; the jobs sharing a format take
turns): healthy for a while, then frozen at a random step (no more lines, only
tqdm's monitor thread) with the CPU flat (even seeds) or still busy, spinning
(odd seeds). What is asserted, per run:

- no stall event (critical or warning) before the freeze;
- the agent's step never goes backwards, and at the freeze it is within 5 % of
  the truth or within one log cadence (the most true steps between two writes
  that show a step, plus one);
- the agent's steps/s (``ProgressTracker.steps_per_s``, what status.json and
  W&B show), averaged over the steady ticks of the last 60 % of the healthy
  part, is within 5 % of the truth's (the rate over its last 16 steps, tick by
  tick; ticks in a pause or settling after one are left out);
- the freeze is caught within the bound the watchdog promises, from the true
  timeline: with L the longest true time between two writes that show a new
  step, plus one tick (the agent sees a write at its next tick), the limit is
  ``max(stall_factor x L, stall_min_s)`` (5 x L, 120 s); a flat CPU is confirmed
  (``cpu_flat``) and restarted by ``max(confirm_s + 1, stall_factor x L)`` + 3 s
  after the freeze; a spinning tree gets the busy warning by the limit + 3 s
  and the restart by ``busy_stall_factor`` (3) x the limit + 3 s.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from runner.agent.logs import LineSplitter
from runner.programs import LEROBOT_LOG_FREQ, LEROBOT_PATTERNS, OPENPI_PATTERNS
from runner.rundir import Event
from tests.agent import progress_sim as sim
from tests.agent.progress_sim import Format, RunResult, Timing

RUNS = 20
#: The agent's steps/s and step against the truth (issue 16's target).
RATE_TOLERANCE = 0.05
STEP_TOLERANCE = 0.05
JOBS_DIR = Path(__file__).resolve().parents[2] / "jobs"

FORMATS = [
    # LeRobot with its bar, at the default cadence and a small one, fresh and resumed.
    sim.lerobot_format("lerobot-bar-200", log_freq=200, bar=True, step_s=(0.1, 10.0)),
    sim.lerobot_format("lerobot-bar-10", log_freq=10, bar=True, step_s=(0.1, 10.0)),
    sim.lerobot_format(
        "lerobot-bar-resumed", log_freq=200, bar=True, step_s=(0.1, 10.0), start_step=5000
    ),
    # LeRobot without it (tqdm disabled inside SLURM): the INFO lines alone. The step
    # ranges keep a line within 100 s, so the freeze is caught within minutes.
    sim.lerobot_format("lerobot-info-200", log_freq=200, bar=False, step_s=(0.1, 0.5)),
    sim.lerobot_format("lerobot-info-100", log_freq=100, bar=False, step_s=(0.1, 1.0)),
    sim.lerobot_format("lerobot-info-50", log_freq=50, bar=False, step_s=(0.1, 2.0)),
    sim.lerobot_format("lerobot-info-10", log_freq=10, bar=False, step_s=(0.1, 10.0)),
    # openpi, with and without tqdm_loggable's records.
    sim.openpi_format("openpi-progress-100", log_interval=100, logged_bar=True, step_s=(0.1, 1.0)),
    sim.openpi_format("openpi-step-100", log_interval=100, logged_bar=False, step_s=(0.1, 1.0)),
    sim.openpi_format("openpi-progress-10", log_interval=10, logged_bar=True, step_s=(0.1, 5.0)),
    sim.openpi_format("openpi-step-10", log_interval=10, logged_bar=False, step_s=(0.1, 5.0)),
    # DINO WM, one process and two accelerate ranks.
    sim.dino_wm_format("dino_wm-1rank", ranks=1, step_s=(0.1, 1.0)),
    sim.dino_wm_format("dino_wm-2ranks", ranks=2, step_s=(0.1, 1.0)),
    # runner's own trainer, read by the embedded profile's pattern.
    sim.embedded_format("embedded", step_s=(0.05, 2.0)),
]
#: The case that broke: steps every 2-10 s at log_freq 200 without the bar, crossing
#: step 1000 (``step:1K`` was read as step 1 and healthy runs were killed at 120 s).
#: Its lines come 400-2000 s apart: hours of simulated time per run.
SLOW_FORMAT = sim.lerobot_format(
    "lerobot-info-200-slow", log_freq=200, bar=False, step_s=(2.0, 10.0)
)

_RESULTS: dict[str, list[RunResult]] = {}


def results(fmt: Format) -> list[RunResult]:
    """The format's runs (simulated once, shared by the tests below)."""
    if fmt.name not in _RESULTS:
        _RESULTS[fmt.name] = [
            sim.run_once(fmt, seed, freeze="flat" if seed % 2 == 0 else "spin")
            for seed in range(RUNS)
        ]
    return _RESULTS[fmt.name]


#: Every format, by name.
CASES = [pytest.param(fmt, id=fmt.name) for fmt in FORMATS]


def _brief(events: list[Event]) -> list[tuple[str, float, object]]:
    return [(e.severity, round(e.time - sim.T0, 1), e.evidence.get("basis")) for e in events]


# -- the formats are the programs' own ------------------------------------------


def test_format_big_number_is_lerobots() -> None:
    """``utils/utils.py`` L103-112: ``.0f`` rounds half to even."""
    samples = {999: "999", 1000: "1K", 1499: "1K", 1500: "2K", 2500: "2K", 10500: "10K"}
    samples |= {200000: "200K", 1_000_000: "1M"}
    assert {n: sim.format_big_number(n) for n in samples} == samples


def test_simulated_lines_are_the_programs_and_the_patterns_read_them() -> None:
    """The lines made match the samples quoted from the programs, and each job's own
    progress spec reads them (what the rest of this module relies on)."""
    rng = random.Random(7)
    lerobot = sim.lerobot(rng, Timing(0.5, 0.05, 5.0, 1.0), log_freq=20, end_s=60.0)
    lines = _lines(lerobot)
    # The bar and the INFO record on one physical line, as seen in real runs.
    joined = [line for line in lines if "Training:" in line and " step:" in line]
    assert joined, lines[:20]
    assert re.search(
        r"^Training:\s+\d+%\|[^|]*\| 20/50000 \[\d\d:\d\d<[\d:]+, +[\d.]+step/s\]"
        r"INFO \d{4}-\d\d-\d\d \d\d:\d\d:\d\d ot_train\.py:641 step:20 smpl:160 ep:\d+ "
        r"epch:0\.00 loss:\d+\.\d{3} grdn:\d+\.\d{3} lr:1\.0e-05 updt_s:\d\.\d{3} data_s:",
        joined[0],
    ), joined[0]
    assert all(re.search(LEROBOT_PATTERNS[0], line) for line in joined)
    assert sim.format_big_number(1000) == "1K" and LEROBOT_LOG_FREQ == 200
    # The quoted bar: tqdm's own format_meter, as the simulation draws it.
    bar = sim.format_meter(7, 30, 5.0, prefix="Training", unit="step", rate=1.67)
    assert bar == "Training:  23%|██▎       | 7/30 [00:05<00:13,  1.67step/s]"
    assert re.search(LEROBOT_PATTERNS[1], bar).group("bar") == "7"  # type: ignore[union-attr]

    openpi = sim.openpi(random.Random(3), Timing(0.01, 0.05, 10.0, 1.0), end_s=40.0)
    lines = _lines(openpi)
    steps = [line for line in lines if line.startswith("Step ")]
    assert re.fullmatch(
        r"Step 0: grad_norm=\d+\.\d{4}, loss=\d+\.\d{4}, param_norm=\d+\.\d{4}", steps[0]
    )
    records = [line for line in lines if "Progress on:" in line]
    assert any(re.search(r"\[I\] Progress on: -/30000 rate:- remaining:\? ", r) for r in records)
    assert any(
        re.search(r"\[I\] Progress on: 1\.\d\dkit/30\.0kit rate:[\d,.]+it/s remaining:", r)
        for r in records
    ), records
    assert all(re.search(OPENPI_PATTERNS[0], line) for line in steps)
    assert not any(re.search(OPENPI_PATTERNS[1], line) for line in lines if "Computing" in line)

    dino = sim.dino_wm(random.Random(1), Timing(0.1, 0.05, 5.0, 1.0), batches=100, end_s=40.0)
    lines = _lines(dino)
    assert "Epoch 1 Train: 100%|██████████| 100/100" in "\n".join(lines)
    assert any(line.startswith("Epoch 1 Valid:") for line in lines)
    assert any(line.startswith("Epoch 2 Train:") for line in lines)
    assert any("][__main__][INFO] - Epoch 1  Training loss: " in line for line in lines)


def _lines(trace: sim.Trace) -> list[str]:
    splitters = {"stdout": LineSplitter(1 << 16), "stderr": LineSplitter(1 << 16)}
    out: list[str] = []
    for w in trace.writes:
        out += [b.decode() for b in splitters[w.stream].feed(w.data)[1]]
    return out


def test_every_job_has_its_format_here() -> None:
    """A new job (or program) gets a format in this module."""
    names = {p.stem for p in JOBS_DIR.glob("*.yaml")}
    covered = {job for fmt in FORMATS for job in fmt.jobs}
    assert names <= covered, names - covered


# -- 20 runs per format and cadence -----------------------------------------------


@pytest.mark.parametrize("fmt", CASES)
def test_a_healthy_run_raises_no_stall(fmt: Format) -> None:
    bad = [(r.describe(), _brief(r.healthy_stalls())) for r in results(fmt) if r.healthy_stalls()]
    assert not bad, bad


@pytest.mark.parametrize("fmt", CASES)
def test_the_step_never_goes_back_and_follows_the_truth(fmt: Format) -> None:
    bad: list[object] = []
    for r in results(fmt):
        back = r.outcome.backwards()
        off = abs((r.step or 0) - r.truth)
        if back or (off > STEP_TOLERANCE * r.truth and off > r.cadence + 1):
            bad.append((r.describe(), back[:3], r.step, r.truth, r.cadence))
    assert not bad, bad


@pytest.mark.parametrize("fmt", CASES)
def test_steps_per_second_follow_the_truth(fmt: Format) -> None:
    bad = [
        (r.describe(), round(r.rate_error, 4), r.rate_ticks)
        for r in results(fmt)
        if not r.rate_error <= RATE_TOLERANCE or r.rate_ticks < 10
    ]
    assert not bad, bad


@pytest.mark.parametrize("fmt", CASES)
def test_a_freeze_is_caught_within_the_bound(fmt: Format) -> None:
    bad: list[object] = []
    for r in results(fmt):
        assert r.bounds is not None
        flat, warn, restart = r.bounds
        critical = r.latency("critical")
        events = r.outcome.stalls()
        if r.freeze == "flat":
            confirmed = events[-1].evidence.get("confirmed_by") if events else None
            if critical is None or critical > flat or confirmed != ["cpu_flat"]:
                bad.append((r.describe(), critical, round(flat, 1), _brief(events)))
        else:
            first = r.latency()
            if first is None or first > warn or critical is None or critical > restart:
                bad.append((r.describe(), first, critical, (warn, restart), _brief(events)))
    assert not bad, bad


@pytest.mark.slow
def test_lerobot_info_lines_every_2_to_10_s_at_log_freq_200_cross_step_1000() -> None:
    """Hours per run: 20 runs past step 1400, frozen after. No restart before the
    freeze; the steps follow the truth across ``step:1K`` (and ``2K``). A line
    comes 400-2000 s after the last, so a run whose first two lines take longer
    than ``startup_timeout_s`` (900 s: steps over ~4.4 s) is warned about (busy,
    stacks dumped; never restarted) in the start-up and warm-up: the agent has
    no progress to go by then. The learned limit never warns."""
    fmt = SLOW_FORMAT
    bad: list[object] = []
    for seed in range(RUNS):
        r = sim.run_once(
            fmt,
            seed,
            freeze="flat" if seed % 2 == 0 else "spin",
            healthy_s=_past_step_1400(fmt, seed),
            freeze_at=(0.8, 1.0),
        )
        flat, _, restart = r.bounds or (0.0, 0.0, 0.0)
        stalls = r.healthy_stalls()
        wrong = [
            e
            for e in stalls
            if e.severity == "critical"
            or (e.severity == "warning" and e.evidence["basis"] not in ("startup", "warmup"))
        ]
        off = abs((r.step or 0) - r.truth)
        critical = r.latency("critical")
        late = critical is None or critical > (flat if r.freeze == "flat" else restart)
        if (
            wrong
            or r.outcome.backwards()
            or r.truth < 1400
            or off > r.cadence + 1
            or r.rate_error > RATE_TOLERANCE
            or late
        ):
            bad.append((r.describe(), _brief(stalls), r.step, r.truth, r.rate_error, critical))
    assert not bad, bad


def _past_step_1400(fmt: Format, seed: int) -> float:
    """A healthy part whose last fifth lies past step 1400 (a freeze there has seen
    ``step:1K`` three times)."""
    timing = Timing.draw(random.Random(f"{fmt.name}:{seed}"), fmt.step_s)
    return timing.startup_s + 1800 * timing.step_s * (1 + 3 * timing.jitter)

"""Progress from each job's own output: step and steps/s errors, false stalls, freeze latency.

    .venv/bin/python bench/bench_progress.py [--runs 20] [--hours 24] [--seed 0]
        [--formats lerobot-bar,openpi-progress,...]

The agent's progress reading and stall detection (``ProgressTracker`` with
each job's own progress spec from ``runner.programs``, ``StallDetector`` with
the job's watchdog, one tick a simulated second) fed what each program writes,
made from its own format strings by ``tests/agent/progress_sim.py`` (the
sources are cited in ``tests/agent/test_program_progress.py``), over a true
step timeline with 3-10 % jitter. Nothing sleeps: time is simulated.

Formats, at each program's default cadence (mean step time per run drawn
log-uniform in the range shown):

- ``lerobot-bar``: act_so101, smolvla_so101, pi0_so101; the tqdm bar
  ``Training`` and the INFO record every 200 steps (``step:1K`` past 999),
  0.1-10 s a step;
- ``lerobot-info``: the same without the bar (tqdm disabled inside SLURM);
- ``openpi-progress``: openpi_pi0; ``Step N: ...`` every 100 steps and
  tqdm_loggable's ``Progress on: 1.01kit/...`` record every 10 s, 0.1-3 s a step;
- ``openpi-step``: the same with the ``Step N`` lines alone;
- ``dino_wm-1rank`` / ``dino_wm-2ranks``: franka_cube_stack / robomimic_can;
  ``Epoch N Train`` bars of 150-400 batches (each rank its own bar), a
  validation of 5-30 s between epochs, 0.1-1 s a batch;
- ``embedded``: franka_cube_stack's embedded profile read by its pattern
  (``step N/T`` every 20 steps), 0.05-2 s a step.

Per format, ``--runs`` runs (seeds ``1000 x --seed + i``), healthy for a while
and then frozen at a random step (no more lines; tqdm's monitor thread lives
on), the CPU flat (even runs) or spinning (odd runs):

- step error: the agent's step against the step the program's lines showed
  by then (the agent cannot know steps not printed yet), worst tick of the
  steady part (the last 60 % of the healthy part), % (target <= 5 %); and
  |agent - truth| / truth at the freeze, which adds what was not printed (up
  to a log cadence), %;
- steps/s error: the agent's ``steps_per_s()`` (what status.json and W&B
  show) averaged over the steady ticks of the last 60 % of the healthy part,
  against the truth's rate over its last 16 steps, % (target <= 5 %);
- freeze to event: to the restart (flat CPU, confirmed), to the busy warning
  and to the restart (spinning), s; and the worst of each over the bound the
  watchdog promises (``progress_sim.stall_bounds``; <= 1.0 is within it);

and one healthy run of ``--hours`` (24): false restarts (critical ``stall``
events; target 0) and false warnings, with its step and steps/s errors.

Prints a row per format, the ratios to the targets (<= 1.0 is within), and a
final JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RUNNER_JOBS_DIR", str(REPO / "jobs"))

from tests.agent import progress_sim as sim  # noqa: E402
from tests.agent.progress_sim import Format, RunResult  # noqa: E402

STEP_TARGET_PCT = 5.0
RATE_TARGET_PCT = 5.0
FALSE_RESTARTS_TARGET = 0
#: The simulated jobs train on for the whole simulated time.
LONG = 10_000_000

FORMATS = [
    sim.lerobot_format("lerobot-bar", log_freq=200, bar=True, step_s=(0.1, 10.0), steps=LONG),
    sim.lerobot_format("lerobot-info", log_freq=200, bar=False, step_s=(0.1, 10.0), steps=LONG),
    sim.openpi_format(
        "openpi-progress", log_interval=100, logged_bar=True, step_s=(0.1, 3.0), steps=LONG
    ),
    sim.openpi_format(
        "openpi-step", log_interval=100, logged_bar=False, step_s=(0.1, 3.0), steps=LONG
    ),
    sim.dino_wm_format("dino_wm-1rank", ranks=1, step_s=(0.1, 1.0)),
    sim.dino_wm_format("dino_wm-2ranks", ranks=2, step_s=(0.1, 1.0)),
    sim.embedded_format("embedded", step_s=(0.05, 2.0), steps=LONG),
]


def _stats(values: Sequence[float | None]) -> dict[str, float | None]:
    known = [v for v in values if v is not None and math.isfinite(v)]
    if not known:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(known), 3), "max": round(max(known), 3)}


def _text(stat: dict[str, float | None], digits: int = 1) -> str:
    med, top = stat["median"], stat["max"]
    if med is None or top is None:
        return "-"
    return f"{med:.{digits}f}/{top:.{digits}f}"


def _ratio(values: Sequence[float | None], bounds: Sequence[float]) -> float | None:
    pairs = [(v, b) for v, b in zip(values, bounds, strict=True) if v is not None]
    if len(pairs) < len(values):
        return math.inf  # a freeze never caught
    return round(max((v / b for v, b in pairs), default=0.0), 3)


def bench_format(fmt: Format, runs: int, hours: float, seed: int) -> dict[str, Any]:
    started = time.monotonic()
    results: list[RunResult] = [
        sim.run_once(fmt, 1000 * seed + i, freeze="flat" if i % 2 == 0 else "spin")
        for i in range(runs)
    ]
    flat = [r for r in results if r.freeze == "flat"]
    spin = [r for r in results if r.freeze == "spin"]
    flat_restart = [r.latency("critical") for r in flat]
    spin_warning = [r.latency() for r in spin]
    spin_restart = [r.latency("critical") for r in spin]
    day = sim.run_once(
        fmt,
        1000 * seed + 999,
        freeze=None,
        healthy_s=hours * 3600.0,
        stop_at_critical=False,
    )
    return {
        "jobs": sorted(set(fmt.jobs)),
        "step_s": [round(r.timing.step_s, 3) for r in results],
        "step_error_pct": _stats([100 * r.read_error for r in results]),
        "at_freeze_error_pct": _stats([100 * r.step_error for r in results]),
        "rate_error_pct": _stats([100 * r.rate_error for r in results]),
        "rate_error_tick_max_pct": _stats([100 * r.rate_error_max for r in results])["max"],
        "false_before_freeze": {
            "restarts": sum(len(r.healthy_stalls("critical")) for r in results),
            "warnings": sum(len(r.healthy_stalls("warning")) for r in results),
        },
        "latency_s": {
            "flat_restart": _stats(flat_restart),
            "spin_warning": _stats(spin_warning),
            "spin_restart": _stats(spin_restart),
        },
        "latency_over_bound_max": {
            "flat_restart": _ratio(flat_restart, [r.bounds[0] for r in flat if r.bounds]),
            "spin_warning": _ratio(spin_warning, [r.bounds[1] for r in spin if r.bounds]),
            "spin_restart": _ratio(spin_restart, [r.bounds[2] for r in spin if r.bounds]),
        },
        "day": {
            "hours": round(day.healthy_end / 3600.0, 2),
            "step_s": round(day.timing.step_s, 3),
            "truth": day.truth,
            "false_restarts": len(day.healthy_stalls("critical")),
            "false_warnings": len(day.healthy_stalls("warning")),
            "step_error_pct": round(100 * day.read_error, 3),
            "at_end_error_pct": round(100 * day.step_error, 3),
            "rate_error_pct": round(100 * day.rate_error, 3),
            "late_redraws": day.outcome.late_redraws,
        },
        "wall_s": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="frozen runs per format")
    parser.add_argument("--hours", type=float, default=24.0, help="the healthy run's length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--formats", default=",".join(f.name for f in FORMATS), help="comma-separated"
    )
    args = parser.parse_args()
    chosen = {name.strip() for name in args.formats.split(",") if name.strip()}
    formats = [f for f in FORMATS if f.name in chosen]
    unknown = chosen - {f.name for f in formats}
    if unknown:
        parser.error(f"unknown formats: {', '.join(sorted(unknown))}")
    print(
        f"{args.runs} frozen runs per format (flat CPU / spinning alternately), one healthy "
        f"run of {args.hours:g} h; seed {args.seed}; errors are % of the truth, "
        "median/max over the runs"
    )
    print(
        f"{'format':<16} {'step err %':>11} {'at freeze %':>11} {'rate err %':>11} "
        f"{'tick max %':>10} "
        f"{f'{args.hours:g}h restarts':>12} {'warnings':>8} {'flat->restart s':>16} "
        f"{'spin->warning s':>16} {'spin->restart s':>16}  latency/bound max"
    )
    out: dict[str, Any] = {}
    for fmt in formats:
        row = bench_format(fmt, args.runs, args.hours, args.seed)
        out[fmt.name] = row
        lat, over, day = row["latency_s"], row["latency_over_bound_max"], row["day"]
        tick_max = row["rate_error_tick_max_pct"]
        print(
            f"{fmt.name:<16} {_text(row['step_error_pct'], 2):>11} "
            f"{_text(row['at_freeze_error_pct'], 1):>11} {_text(row['rate_error_pct']):>11} "
            f"{'-' if tick_max is None else f'{tick_max:.0f}':>10} "
            f"{day['false_restarts']:>12} {day['false_warnings']:>8} "
            f"{_text(lat['flat_restart'], 0):>16} {_text(lat['spin_warning'], 0):>16} "
            f"{_text(lat['spin_restart'], 0):>16}  "
            f"{over['flat_restart']}/{over['spin_warning']}/{over['spin_restart']}"
        )
        print(
            f"{'':<16} healthy run: {day['hours']:g} h at {day['step_s']:g} s/step, "
            f"{day['truth']} steps, step err {day['step_error_pct']:.2f} % (at the end "
            f"{day['at_end_error_pct']:.2f} %), rate err "
            f"{day['rate_error_pct']:.2f} %, {day['late_redraws']} late redraws; "
            f"before the freezes {row['false_before_freeze']['restarts']} restarts, "
            f"{row['false_before_freeze']['warnings']} warnings; "
            f"{row['wall_s']:.0f} s"
        )
    step_max = max((r["step_error_pct"]["max"] or 0.0 for r in out.values()), default=0.0)
    rate_max = max((r["rate_error_pct"]["max"] or 0.0 for r in out.values()), default=0.0)
    restarts = sum(r["day"]["false_restarts"] for r in out.values())
    restarts_frozen = sum(r["false_before_freeze"]["restarts"] for r in out.values())
    step_ratio = step_max / STEP_TARGET_PCT
    rate_ratio = rate_max / RATE_TARGET_PCT
    over_rate = [n for n, r in out.items() if (r["rate_error_pct"]["max"] or 0) > RATE_TARGET_PCT]
    print(
        f"step error / target ({STEP_TARGET_PCT:g} %): {step_ratio:.2f}  "
        f"{'OK' if step_ratio <= 1.0 else 'OVER'}"
    )
    print(
        f"steps/s error / target ({RATE_TARGET_PCT:g} %): {rate_ratio:.2f}  "
        f"{'OK' if rate_ratio <= 1.0 else 'OVER: ' + ', '.join(over_rate)}"
    )
    print(
        f"false restarts over {args.hours:g} h (target {FALSE_RESTARTS_TARGET}): {restarts}, "
        f"and before the {args.runs} freezes: {restarts_frozen}  "
        f"{'OK' if restarts + restarts_frozen <= FALSE_RESTARTS_TARGET else 'OVER'}"
    )
    summary = {
        "step_ratio": round(step_ratio, 3),
        "rate_ratio": round(rate_ratio, 3),
        "false_restarts": restarts,
        "false_restarts_before_freezes": restarts_frozen,
        "false_warnings": sum(r["day"]["false_warnings"] for r in out.values()),
        "seed": args.seed,
        "formats": out,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

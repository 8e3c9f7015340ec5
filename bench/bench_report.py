"""``runner report`` time for a 24-hour run: 17,280 samples (every 5 s) and a few hundred events.

    .venv/bin/python bench/bench_report.py [--hours 24] [--every 5] [--gpus 1 8]
        [--events 300] [--repeat 3]

For each GPU count a run folder is written in a temporary directory the way the agent
writes it (``samples.jsonl`` with every GPU, the host's disks, steps/s and the loss;
``events.jsonl`` with ``--events`` events in bursts, stall / stack_dump / exited /
restart / push / thermal / disk_low; ``status.json``; ``launch.json`` with a price).
Then the real ``runner report RUN_DIR --out DIR`` runs as a subprocess, ``--repeat``
times: the wall time a user waits, start-up and imports included, its median printed
beside the 3 s target as a ratio (<= 1.0 is within it). The parts (read and parse,
build the timeline, draw, PNG, markdown) are timed in this process once, to say where
the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runner.rundir import Event, Launch, Status  # noqa: E402

TARGET_S = 3.0
RUNNER = Path(sys.executable).parent / "runner"
KINDS = [
    ("stall", "critical"),
    ("stack_dump", "info"),
    ("exited", "warning"),
    ("restart", "warning"),
    ("started", "info"),
    ("push", "info"),
    ("thermal", "warning"),
    ("disk_low", "warning"),
]


def _gpu(index: int, rng: random.Random, frozen: bool) -> dict[str, Any]:
    return {
        "index": index,
        "name": "NVIDIA H100 80GB HBM3",
        "lost": False,
        "utilization_gpu_percent": 0 if frozen else rng.randint(90, 100),
        "power_w": round(rng.uniform(60, 80) if frozen else rng.uniform(600, 690), 1),
        "power_limit_w": 700.0,
        "temperature_c": rng.randint(60, 75),
        "temperature_slowdown_c": 90,
        "memory_used_bytes": 70 * 2**30,
        "memory_total_bytes": 80 * 2**30,
        "clock_event_mask": 0,
    }


def make_run(run_dir: Path, *, hours: float, every: float, gpus: int, events: int) -> int:
    """Write a finished run's folder; returns the number of samples."""
    rng = random.Random(gpus)
    run_dir.mkdir(parents=True)
    t0 = 1_800_000_000.0
    n = int(hours * 3600 / every)
    lines = []
    for i in range(n):
        t = t0 + i * every
        frozen = i % 2000 > 1990  # a short freeze now and then
        step = i * 50
        lines.append(
            json.dumps(
                {
                    "v": 1,
                    "time": t,
                    "attempt": i // 2000,
                    "state": "running",
                    "step": step,
                    "steps_per_s": 0.0 if frozen else round(rng.uniform(9.5, 10.5), 3),
                    "samples_per_s": None,
                    "data_wait": 0.02,
                    "metrics": {"loss": 2.0 / (1 + i / 1000) + rng.random() * 0.01},
                    "gpus": [_gpu(g, rng, frozen) for g in range(gpus)],
                    "host": {
                        "ram_used_fraction": 0.4,
                        "load_1m": 12.0,
                        "disks": [
                            {
                                "roles": ["run", "checkpoints"],
                                "free_bytes": int(900e9 - i * 2e7),
                                "total_bytes": int(2e12),
                                "read_only": False,
                            }
                        ],
                    },
                },
                separators=(",", ":"),
            )
        )
    (run_dir / "samples.jsonl").write_text("\n".join(lines) + "\n")
    with (run_dir / "events.jsonl").open("w") as f:
        for k in range(events):
            burst, within = divmod(k, len(KINDS))
            kind, severity = KINDS[within]
            t = t0 + (burst + 0.5) * hours * 3600 / (events / len(KINDS) + 1) + within * 0.05
            evidence: dict[str, Any] = {"step": burst * 1000}
            if kind == "stack_dump":
                evidence["files"] = [f"stacks/{burst:03d}-stall/pid-{1000 + burst}.txt"]
            event = Event(kind, severity, f"{kind} #{burst}", time=t, evidence=evidence)  # type: ignore[arg-type]
            f.write(event.to_json() + "\n")
    end = t0 + n * every
    Status(
        state="finished",
        job="bench",
        agent_pid=1,
        agent_time=end,
        started=t0,
        restarts=events // len(KINDS),
        step=n * 50,
        checkpoint_step=n * 50,
        exit_code=0,
        summary="finished",
    ).write(run_dir)
    Launch(
        run_id=run_dir.name,
        job="bench",
        backend="vast",
        spec={},
        argv=("python", "train.py"),
        created=t0,
        dph_total=2.4,
    ).write(run_dir)
    return n


def parts(run_dir: Path, out: Path) -> dict[str, float]:
    from runner.view.report import build_timeline, draw, read_run_files, save_png, summary

    took: dict[str, float] = {}
    t = time.perf_counter()
    files = read_run_files(run_dir)
    took["read + parse"] = time.perf_counter() - t
    t = time.perf_counter()
    timeline = build_timeline(files)
    took["build timeline"] = time.perf_counter() - t
    t = time.perf_counter()
    fig = draw(timeline)
    took["draw (artists)"] = time.perf_counter() - t
    t = time.perf_counter()
    save_png(fig, out / "report.png")
    took["render PNG"] = time.perf_counter() - t
    t = time.perf_counter()
    (out / "report.md").write_text(summary(files, timeline))
    took["markdown"] = time.perf_counter() - t
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        for gpus in args.gpus:
            run = Path(tmp) / f"run-{gpus}gpu"
            n = make_run(run, hours=args.hours, every=args.every, gpus=gpus, events=args.events)
            size = (run / "samples.jsonl").stat().st_size
            out = Path(tmp) / f"out-{gpus}"
            walls = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                done = subprocess.run(
                    [str(RUNNER), "report", str(run), "--out", str(out)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                walls.append(time.perf_counter() - t)
                if done.returncode != 0:
                    sys.exit(f"runner report failed: {done.stderr.strip()}")
            wall = statistics.median(walls)
            took = parts(run, out)
            ratio = wall / TARGET_S
            print(
                f"{gpus} GPU(s): {n} samples ({size / 1e6:.1f} MB), {args.events} events, "
                f"{args.hours:g} h"
            )
            for name, seconds in took.items():
                print(f"  {name:<22} {seconds:6.3f} s")
            print(f"  runner report (wall)   {wall:6.3f} s  median of {args.repeat}")
            verdict = "OK" if ratio <= 1.0 else "OVER"
            print(f"  wall / target ({TARGET_S:g} s): {ratio:.2f}  {verdict}")
            results[f"{gpus}gpu"] = {"wall_s": round(wall, 3), "ratio": round(ratio, 3)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()

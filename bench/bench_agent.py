"""The agent: how fast it catches a frozen run, and what it costs a healthy one.

    .venv/bin/python bench/bench_agent.py [--latency-runs 2] [--pairs 3] [--steps 600]
        [--run-root DIR] [--skip-latency] [--skip-overhead] [--progress harness,tqdm]

(a) Detection latency, with the DEFAULT WatchdogSpec (1 Hz ticks, confirm_s
30 s, stall_min_s 120 s). A harness-using loop (tests/agent/scripts/
train_loop.py, a step every 0.1 s) trains for 15 s, writes the instant it
freezes to an onset file, and freezes. Latency = the ``stack_dump`` event
(stacks written, the evidence a human needs) minus that instant.

- GPU-confirmed: the loop spins (burns CPU, so CPU cannot confirm) and a
  FakeNvml ``power_collapse`` timeline collapses at the onset (80 W -> 20 W,
  0 %, GpuIdle), injected as the supervisor's GPU source. Target <= 60 s.
- CPU-only: the loop blocks on a lock (no CPU), no GPUs.

The same two, with progress read from a real tqdm bar instead of the harness
(tests/agent/scripts/tqdm_loop.py, 20 it/s, tqdm's monitor thread on as it
ships, the job's ``progress.pattern`` on the bar, no heartbeat): what
LeRobot, openpi and DINO WM runs look like to the agent. Same target.

(b) Overhead on the reference trainer (``python -m runner.trainers.franka_wm``,
the franka_cube_stack embedded profile, synthetic data): its throughput in
steps/s, from the harness's own metrics.jsonl (steps and times after a warm-up
fifth of the run), under the agent at the default 1 Hz versus as a plain
subprocess with the same environment, the same run length, alternating which
goes first, in one run. Target: agent / plain >= 0.99. The agent runs in this
process (``Supervisor.run``), so its own CPU use is this process's CPU time
(``RUSAGE_SELF``, children excluded) over the wall time. Wall-clock
throughput on a shared machine also measures the other tenants (the load
average is printed per run); the trainer's steps per CPU-second of its own
(``RUSAGE_CHILDREN``) is printed beside it as the steadier comparison.

Run folders go under ``--run-root``; by default on a private tmpfs mounted for
the run (root), else in /dev/shm: the detectors read fast growth of the
checkpoint disk as "the job is saving", which holds back a stall verdict, and
on a shared development disk (or /dev/shm, where every DataLoader on the
machine writes) other processes' writes would be measured instead of the agent.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runner.agent.supervisor import Supervisor  # noqa: E402
from runner.rundir import Event, read_events  # noqa: E402
from runner.sampling.nvml import Nvml  # noqa: E402
from runner.sampling.sample import NoGpus  # noqa: E402
from runner.sampling.trace import FakeNvml, OnsetTimeline  # noqa: E402
from runner.spec import JobSpec, RestartPolicy, load_job  # noqa: E402

LOOP = REPO / "tests" / "agent" / "scripts" / "train_loop.py"
TQDM_LOOP = REPO / "tests" / "agent" / "scripts" / "tqdm_loop.py"
#: The job's progress.pattern for a tqdm bar: "123/100000 [".
TQDM_PATTERN = r"(?P<step>\d+)/\d+ \["
LATENCY_TARGET_S = 60.0
OVERHEAD_TARGET = 0.99


def _devnull() -> Any:
    return open(os.devnull, "wb")


# --------------------------------------------------------------------------- (a) latency


def latency_once(root: Path, mode: str, progress: str = "harness") -> dict[str, Any]:
    run_dir = root / f"latency-{progress}-{mode}-{time.monotonic_ns()}"
    onset = run_dir.parent / f"{run_dir.name}.onset"
    freeze = "spin" if mode == "gpu" else "wait"
    job = None
    if progress == "tqdm":
        # 15 s at 20 it/s, as the harness loop's 150 steps at 10/s.
        argv = [
            sys.executable, str(TQDM_LOOP), "--steps", "100000", "--step-s", "0.05",
            "--freeze-at", "300", "--freeze", freeze, "--onset-file", str(onset),
        ]  # fmt: skip
        job = JobSpec(
            name="bench-tqdm",
            command=["python", "train.py"],
            progress={"pattern": TQDM_PATTERN},
            resources={"gpus": 1 if mode == "gpu" else 0},
        )
    else:
        argv = [
            sys.executable, str(LOOP), "--steps", "100000", "--step-s", "0.1",
            "--freeze-at", "150", "--freeze", freeze, "--onset-file", str(onset),
        ]  # fmt: skip
    gpu = Nvml(FakeNvml(OnsetTimeline(onset), clock=time.monotonic)) if mode == "gpu" else NoGpus()
    sink = _devnull()
    supervisor = Supervisor(
        argv,
        run_dir=run_dir,
        job=job,
        gpu_source=gpu,
        expected_gpus=1 if mode == "gpu" else 0,
        restart=RestartPolicy(max_restarts=0),
        stdout=sink,
        stderr=sink,
        kill_grace_s=2.0,
    )
    result = supervisor.run()
    sink.close()
    events = read_events(run_dir)
    started = float(onset.read_text())
    stall = _first(events, "stall")
    dump = _first(events, "stack_dump")
    return {
        "mode": mode,
        "progress": progress,
        "step": None if stall is None else stall.evidence.get("step"),
        "longest_interval_s": None if stall is None else stall.evidence.get("longest_interval_s"),
        "stall_s": None if stall is None else stall.time - started,
        "stacks_s": None if dump is None else dump.time - started,
        "confirmed_by": None if stall is None else stall.evidence.get("confirmed_by"),
        "state": result.state,
        "stack_files": [] if dump is None else dump.evidence.get("files"),
    }


def progress_words(progress: str) -> str:
    if progress == "tqdm":
        return "a tqdm bar (20 it/s, monitor thread on) through progress.pattern"
    return "harness heartbeats (10 steps/s)"


def _first(events: Sequence[Event], kind: str) -> Event | None:
    return next((e for e in events if e.kind == kind), None)


# --------------------------------------------------------------------------- (b) overhead


def _rate(run_dir: Path, steps: int) -> float:
    """Steps/s over the run after its first fifth, from the harness's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] >= steps // 5]
    first, last = rows[0], rows[-1]
    return (last["step"] - first["step"]) / (last["time"] - first["time"])


def overhead_run(root: Path, data: Path, steps: int, agent: bool) -> dict[str, Any]:
    job = load_job("franka_cube_stack", profile="embedded")
    argv, extra = job.apply_overrides([f"training.steps={steps}", "training.log_every=100"])
    argv = [sys.executable, *argv[1:]] if argv[0] == "python" else argv
    run_dir = root / f"{'agent' if agent else 'plain'}-{time.monotonic_ns()}"
    env = {
        **job.env,
        **extra,
        "RUNNER_DEVICE": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "DATASET_DIR": str(data),
    }
    wall0, cpu0 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    sink = _devnull()
    if agent:
        result = Supervisor(
            argv, run_dir=run_dir, job=job, extra_env=env, dataset=data, stdout=sink, stderr=sink
        ).run()
        code = result.exit_code
        warnings = [e.kind for e in read_events(run_dir) if e.severity != "info"]
    else:
        run_dir.mkdir(parents=True)
        full = {**os.environ, **env, "RUNNER_RUN_DIR": str(run_dir), "PYTHONUNBUFFERED": "1"}
        code = subprocess.run(argv, env=full, stdout=sink, stderr=sink, check=False).returncode
        warnings = []
    sink.close()
    wall = time.monotonic() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    own_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    trainer_cpu = (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
    if code != 0:
        raise SystemExit(f"the trainer failed with exit code {code} ({run_dir})")
    return {
        "agent": agent,
        "steps_per_s": _rate(run_dir, steps),
        "wall_s": wall,
        "own_cpu_s": own_cpu,
        "trainer_cpu_s": trainer_cpu,
        "steps_per_cpu_s": steps / trainer_cpu if trainer_cpu > 0 else float("nan"),
        "load": os.getloadavg()[0],
        "warnings": warnings,
    }


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-runs", type=int, default=2, help="per confirmation mode")
    parser.add_argument("--pairs", type=int, default=3, help="agent/plain pairs, alternating")
    parser.add_argument("--steps", type=int, default=600, help="trainer steps per run")
    parser.add_argument("--run-root", type=Path, default=None)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument(
        "--progress", default="harness,tqdm", help="latency cases: harness, tqdm (comma-separated)"
    )
    args = parser.parse_args()
    os.environ.setdefault("RUNNER_JOBS_DIR", str(REPO / "jobs"))
    mounted = False
    if args.run_root is not None:
        root = Path(tempfile.mkdtemp(prefix="bench-agent-", dir=args.run_root))
    else:
        root = Path(tempfile.mkdtemp(prefix="bench-agent-"))
        mount = ["mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", str(root)]
        mounted = subprocess.run(mount, capture_output=True, check=False).returncode == 0
        if not mounted and Path("/dev/shm").is_dir():
            root.rmdir()
            root = Path(tempfile.mkdtemp(prefix="bench-agent-", dir="/dev/shm"))
    where = "a private tmpfs" if mounted else "a shared disk"
    print(f"run folders under {root} ({where}); {os.cpu_count()} CPUs")
    try:
        if not args.skip_latency:
            print("\n(a) detection latency, default WatchdogSpec: freeze onset -> stacks written")
            for progress in [p.strip() for p in args.progress.split(",") if p.strip()]:
                print(f"  progress from {progress_words(progress)}:")
                for mode in ("gpu", "cpu"):
                    runs = [latency_once(root, mode, progress) for _ in range(args.latency_runs)]
                    for r in runs:
                        print(
                            f"    {mode}-confirmed: stall event {r['stall_s']:.1f} s, stacks "
                            f"{r['stacks_s']:.1f} s (confirmed by {r['confirmed_by']}; at step "
                            f"{r['step']}, longest interval {r['longest_interval_s']} s; "
                            f"{len(r['stack_files'])} stack file(s); run {r['state']})"
                        )
                    worst = max(r["stacks_s"] for r in runs)
                    verdict = "ok" if worst <= LATENCY_TARGET_S else "OVER TARGET"
                    print(
                        f"    {progress} {mode}: worst {worst:.1f} s, ratio to the "
                        f"{LATENCY_TARGET_S:.0f} s target {worst / LATENCY_TARGET_S:.2f} ({verdict}"
                        + (")" if mode == "gpu" else "; the target is for the GPU-confirmed case)")
                    )
        if not args.skip_overhead:
            from runner.data.franka import synth_franka

            data = root / "data"
            synth_franka(data, episodes=16, steps=120, image_size=64)
            print(
                f"\n(b) overhead: reference trainer, {args.steps} steps, {args.pairs} pairs, "
                "alternating order"
            )
            ratios, cpu_ratios, cpu_fractions = [], [], []
            for pair in range(args.pairs):
                order = (True, False) if pair % 2 == 0 else (False, True)
                results = {agent: overhead_run(root, data, args.steps, agent) for agent in order}
                with_agent, plain = results[True], results[False]
                ratio = with_agent["steps_per_s"] / plain["steps_per_s"]
                ratios.append(ratio)
                cpu_ratio = with_agent["steps_per_cpu_s"] / plain["steps_per_cpu_s"]
                cpu_ratios.append(cpu_ratio)
                cpu_fractions.append(with_agent["own_cpu_s"] / with_agent["wall_s"])
                print(
                    f"  pair {pair + 1} ({'agent first' if order[0] else 'plain first'}): "
                    f"agent {with_agent['steps_per_s']:.2f} steps/s, plain "
                    f"{plain['steps_per_s']:.2f} steps/s, ratio {ratio:.4f}; agent CPU "
                    f"{with_agent['own_cpu_s']:.2f} s over {with_agent['wall_s']:.1f} s; "
                    f"trainer steps per CPU-s ratio {cpu_ratio:.4f}; load "
                    f"{with_agent['load']:.1f}/{plain['load']:.1f}; "
                    f"warnings {with_agent['warnings'] or 'none'}"
                )
            median = statistics.median(ratios)
            verdict = "ok" if median >= OVERHEAD_TARGET else "UNDER TARGET"
            print(
                f"  throughput agent/plain: median {median:.4f}, mean "
                f"{statistics.fmean(ratios):.4f}, min {min(ratios):.4f} "
                f"(target >= {OVERHEAD_TARGET}) {verdict}"
            )
            print(
                f"  trainer steps per CPU-second agent/plain (less sensitive to other "
                f"tenants): median {statistics.median(cpu_ratios):.4f}"
            )
            print(
                f"  agent's own CPU / wall: median {statistics.median(cpu_fractions):.4f} "
                f"({100 * statistics.median(cpu_fractions):.2f} % of one core)"
            )
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

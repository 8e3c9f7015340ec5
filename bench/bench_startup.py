"""Start-up wall time of runner's commands beside ``vastai --help``, in one run.

    .venv/bin/python bench/bench_startup.py [--repeats 15]

Each round runs every command once, in rotating order, as a fresh process
(what a user or script pays per call); one warm-up round fills the OS page
cache first and is not counted. Prints the median and min wall time of each
command and its ratio to ``vastai --help`` (medians): the CLI runner's users
already run many times a day. ``runner gpus`` runs twice: on this machine as
it is (on a host without a driver that is the "no NVIDIA GPUs" line) and on
the fake 8-GPU host (``RUNNER_FAKE_NVML=scenario:healthy:gpus=8``: the real
NVML wrapper, selection and table over the scripted driver).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
CASES: list[tuple[str, list[str], dict[str, str]]] = [
    ("runner --help", [str(BIN / "runner"), "--help"], {}),
    ("runner gpus (this machine)", [str(BIN / "runner"), "gpus"], {}),
    (
        "runner gpus (fake 8-GPU host)",
        [str(BIN / "runner"), "gpus"],
        {"RUNNER_FAKE_NVML": "scenario:healthy:gpus=8"},
    ),
    ("vastai --help", [str(BIN / "vastai"), "--help"], {}),
]
BASELINE = "vastai --help"


def run_once(argv: list[str], extra: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_FAKE_NVML"}
    env.update(extra)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
    for i in range(args.repeats + 1):
        shift = i % len(CASES)
        for name, argv, extra in CASES[shift:] + CASES[:shift]:
            elapsed = run_once(argv, extra)
            if i:  # round 0 warms the caches
                times[name].append(elapsed)
    base = statistics.median(times[BASELINE])
    width = max(len(name) for name in times)
    print(f"{'command':<{width}}  median ms  min ms  vs {BASELINE}")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:<{width}}  {median * 1000:9.0f}  {min(values) * 1000:6.0f}  "
            f"{median / base:.2f}x"
        )
    print(f"({args.repeats} repeats each, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()

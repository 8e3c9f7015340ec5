"""Cost of one full sample: 8 GPUs, a tree of real worker processes, 4 disks.

    .venv/bin/python bench/bench_sample.py [--samples 300] [--ranks 4] [--workers 8] [--dir DIR]

The GPUs are :class:`runner.sampling.trace.FakeNvml` (8 GPUs, ``healthy``)
behind the real :class:`runner.sampling.nvml.Nvml` wrapper, so the GPU part
here costs what the wrapper and the fake cost, not what a driver costs; it is
timed separately and taken out. What remains is runner's own time on top of
NVML: the process-tree walk, the host and disks, and building the sample. The
tree is real: a root that forks ``--ranks`` ranks, each forking ``--workers``
DataLoader-style workers (32 by default), all sleeping. The disks are the
roles an agent watches: run folder, checkpoints (under the run folder, so one
mount), dataset (/), /dev/shm.

Prints the medians per part, and our own median (wall time) against the 5 ms
target as a ratio (<= 1.0 is within it). The same in CPU time is printed beside
it: on a shared, loaded machine wall time also measures waiting for a core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from runner.sampling.nvml import GpuSnapshot, Nvml, XidEvent
from runner.sampling.sample import Sample, Sampler
from runner.sampling.trace import FakeNvml, Scenario

TARGET_S = 0.005
GPUS = 8

TREE = r"""
import os, sys, time
ranks, workers = int(sys.argv[1]), int(sys.argv[2])
for _ in range(ranks):
    if os.fork() == 0:
        for _ in range(workers):
            if os.fork() == 0:
                time.sleep(3600)
                os._exit(0)
        time.sleep(3600)
        os._exit(0)
print("ready", flush=True)
time.sleep(3600)
"""


class TimedGpus:
    """The NVML wrapper, with the time of each call kept."""

    def __init__(self, nvml: Nvml) -> None:
        self.nvml = nvml
        self.last_s = 0.0
        self.last_cpu_s = 0.0

    def sample_gpus(self) -> tuple[Sequence[GpuSnapshot], Sequence[XidEvent]]:
        start, start_cpu = time.perf_counter(), time.thread_time()
        try:
            return self.nvml.sample_gpus()
        finally:
            self.last_s = time.perf_counter() - start
            self.last_cpu_s = time.thread_time() - start_cpu


def median_ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1e3


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--workers", type=int, default=8, help="workers per rank")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between samples")
    parser.add_argument("--dir", type=Path, default=None, help="where the run folder goes")
    args = parser.parse_args()

    tree = subprocess.Popen(
        [sys.executable, "-c", TREE, str(args.ranks), str(args.workers)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    run_dir = Path(tempfile.mkdtemp(prefix="bench-sample-", dir=args.dir))
    (run_dir / "checkpoints").mkdir()
    try:
        assert tree.stdout is not None and tree.stdout.readline().strip() == "ready"
        fake = FakeNvml(Scenario("healthy", gpus=GPUS), clock=time.monotonic)
        gpus = TimedGpus(Nvml(fake))
        sampler = Sampler(
            gpu_source=gpus,
            root_pid=tree.pid,
            disks={
                "run": run_dir,
                "checkpoints": run_dir / "checkpoints",
                "dataset": "/",
                "shm": "/dev/shm",
            },
        )
        for _ in range(5):  # warm: NVML init, static GPU facts, first CPU times
            sampler.sample()
        total, gpu, own, own_cpu = [], [], [], []
        sample: Sample | None = None
        for _ in range(args.samples):
            time.sleep(args.interval)
            start, start_cpu = time.perf_counter(), time.thread_time()
            sample = sampler.sample()
            took, took_cpu = time.perf_counter() - start, time.thread_time() - start_cpu
            total.append(took)
            gpu.append(gpus.last_s)
            own.append(took - gpus.last_s)
            own_cpu.append(took_cpu - gpus.last_cpu_s)
        assert sample is not None and not sample.errors, sample and sample.errors
        assert sample.procs is not None and sample.host is not None
        n = max(50, args.samples // 3)
        procs_sampler = sampler.procs
        assert procs_sampler is not None
        procs_t = timed(procs_sampler.sample, n)
        host_t = timed(sampler.host.sample, n)
        json_t = timed(sample.to_json, n)
    finally:
        os.killpg(tree.pid, signal.SIGKILL)
        tree.wait()
        shutil.rmtree(run_dir, ignore_errors=True)

    line = sample.to_json()
    ratio = median_ms(own) / (TARGET_S * 1e3)
    verdict = "OK" if ratio <= 1.0 else "OVER"
    print(
        f"host: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" psutil {psutil.__version__}, {len(psutil.pids())} processes on the host"
    )
    print(
        f"sample: {len(sample.gpus)} GPUs (FakeNvml via Nvml), {len(sample.procs.processes)}"
        f" processes in the tree ({args.ranks} ranks x {args.workers} workers + root),"
        f" {len(sample.host.disks)} mounts for 4 disk roles, {len(line)} bytes of JSON"
    )
    print(f"{args.samples} samples, {args.interval * 1e3:.0f} ms apart, medians:")
    print(f"  full sample             {median_ms(total):7.3f} ms")
    print(f"  GPU part (fake NVML)    {median_ms(gpu):7.3f} ms   (taken out)")
    print(f"  our own: total - GPU    {median_ms(own):7.3f} ms   p90 {_p90_ms(own):.3f} ms")
    print(
        f"    the same in CPU time  {median_ms(own_cpu):7.3f} ms   (less sensitive to a busy box)"
    )
    print(f"    process tree alone    {median_ms(procs_t):7.3f} ms")
    print(f"    host + disks alone    {median_ms(host_t):7.3f} ms")
    print(f"  to_json (not included)  {median_ms(json_t):7.3f} ms")
    print(f"own / target ({TARGET_S * 1e3:.0f} ms): {ratio:.2f}  {verdict}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average during the run: {load} (on {os.cpu_count()} CPUs)")
    result = {"own_ms": median_ms(own), "own_cpu_ms": median_ms(own_cpu), "ratio": ratio}
    print(json.dumps({k: round(v, 3) for k, v in result.items()}))


def _p90_ms(values: Sequence[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))] * 1e3


if __name__ == "__main__":
    main()

"""``runner watch``'s own CPU while following a run at 1 Hz with 8 GPUs.

    .venv/bin/python bench/bench_watch.py [--seconds 20] [--gpus 8] [--interval 1]
        [--history 720]

A run folder is made in a temporary directory and kept alive by an agent-like writer
in this process: every second it rewrites ``status.json`` (8 GPUs, the host's disks,
a step moving at 10 steps/s) and appends one record to ``samples.jsonl``, and every 10 s
an event to ``events.jsonl``; ``--history`` records are there before the viewer starts
(the run has been going a while). The real ``runner watch RUN_DIR --interval 1`` runs in
a real 80x24 pty (rich Live drawing to a terminal, its output drained by a thread), so
what is measured is what a user's terminal would cost: read, parse, build, render, draw.

Its CPU (user + system, ``psutil``) is taken over ``--seconds`` after a 3 s warm-up
(start-up imports excluded: they are paid once) and printed as a percentage of one core,
beside the 2 % target as a ratio (<= 1.0 is within it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runner.rundir import Event, EventLog, Launch, SampleLog, Status  # noqa: E402

TARGET_PERCENT = 2.0
RUNNER = Path(sys.executable).parent / "runner"


def _gpu(index: int, rng: random.Random) -> dict[str, Any]:
    return {
        "index": index,
        "name": "NVIDIA H100 80GB HBM3",
        "lost": False,
        "utilization_gpu_percent": rng.randint(90, 100),
        "power_w": round(rng.uniform(600, 690), 1),
        "power_limit_w": 700.0,
        "temperature_c": rng.randint(60, 75),
        "temperature_slowdown_c": 90,
        "memory_used_bytes": 70 * 2**30,
        "memory_total_bytes": 80 * 2**30,
        "clock_event_mask": 0x4 if rng.random() < 0.2 else 0,
    }


class FakeAgent:
    """Writes what the agent writes, at 1 Hz, on its own thread."""

    def __init__(self, run_dir: Path, gpus: int, started: float) -> None:
        self.run_dir = run_dir
        self.gpus = gpus
        self.started = started
        self.rng = random.Random(0)
        self.samples = SampleLog(run_dir)
        self.events = EventLog(run_dir)
        self.stop = threading.Event()
        self.ticks = 0

    def record(self, now: float) -> tuple[Status, dict[str, Any]]:
        step = int((now - self.started) * 10)
        gpus = tuple(_gpu(i, self.rng) for i in range(self.gpus))
        free = 500e9 - step * 1e6
        host = {
            "ram_used_fraction": 0.4,
            "load_1m": 12.0,
            "disks": [{"roles": ["run", "checkpoints"], "free_bytes": free, "total_bytes": 1e12}],
        }
        metrics = {"loss": 1.0 / (1 + step), "grad_norm": 1.2, "total_steps": 1_000_000}
        status = Status(
            state="running", job="bench", agent_pid=os.getpid(), agent_time=now,
            started=self.started, step=step, last_step_time=now, steps_per_s=10.0,
            phase="train", checkpoint_step=step // 1000 * 1000, gpus=gpus, host=host,
            metrics=metrics, samples_per_s=2560.0, data_wait=0.03,
        )  # fmt: skip
        sample = {
            "time": now, "attempt": 0, "state": "running", "step": step, "steps_per_s": 10.0,
            "samples_per_s": 2560.0, "data_wait": 0.03, "metrics": metrics,
            "gpus": list(gpus), "host": host,
        }  # fmt: skip
        return status, sample

    def tick(self, now: float) -> None:
        status, sample = self.record(now)
        status.write(self.run_dir)
        self.samples.append(sample)
        if self.ticks % 10 == 0:
            self.events.append(
                Event("thermal", "warning", f"GPU 3 at 88 C (tick {self.ticks})", time=now,
                      evidence={"gpu": 3, "temperature_c": 88})
            )  # fmt: skip
        self.ticks += 1

    def run(self) -> None:
        while not self.stop.wait(1.0 - (time.time() % 1.0)):
            self.tick(time.time())


def _drain(fd: int, stop: threading.Event) -> None:
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                if not os.read(fd, 65536):
                    return
            except OSError:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--history", type=int, default=720, help="samples already written")
    args = parser.parse_args()

    import fcntl
    import termios

    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        run_dir = Path(tmp) / "bench-20261203-000000-beef"
        run_dir.mkdir()
        now = time.time()
        started = now - args.history
        Launch(
            run_id=run_dir.name, job="bench", backend="local", spec={}, argv=("train",),
            created=started, dph_total=2.5,
        ).write(run_dir)  # fmt: skip
        agent = FakeAgent(run_dir, args.gpus, started)
        for i in range(args.history):
            _, sample = agent.record(started + i)
            agent.samples.append(sample)
        agent.tick(now)
        writer = threading.Thread(target=agent.run, daemon=True)
        writer.start()

        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
        watch = subprocess.Popen(
            [str(RUNNER), "watch", str(run_dir), "--interval", str(args.interval)],
            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        stop = threading.Event()
        drainer = threading.Thread(target=_drain, args=(master, stop), daemon=True)
        drainer.start()
        proc = psutil.Process(watch.pid)
        time.sleep(3.0)  # start-up: imports, the first read of samples.jsonl's tail
        t0 = proc.cpu_times()
        w0 = time.monotonic()
        ticks0 = agent.ticks
        time.sleep(args.seconds)
        t1 = proc.cpu_times()
        wall = time.monotonic() - w0
        alive = watch.poll() is None
        watch.terminate()
        watch.wait(timeout=10)
        stop.set()
        agent.stop.set()
        os.close(master)

    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    percent = cpu / wall * 100.0
    ratio = percent / TARGET_PERCENT
    print(
        f"runner watch, {args.gpus} GPUs, {1 / args.interval:g} Hz reads, 80x24 pty, "
        f"{args.history} samples of history; Python {platform.python_version()}"
    )
    print(f"  measured over          {wall:6.1f} s ({agent.ticks - ticks0} agent ticks)")
    print(f"  CPU (user + system)    {cpu * 1e3:6.0f} ms")
    print(f"  CPU, % of one core     {percent:6.2f} %   (still following: {alive})")
    verdict = "OK" if ratio <= 1.0 else "OVER"
    print(f"cpu / target ({TARGET_PERCENT:g} %): {ratio:.2f}  {verdict}")
    print(f"load average: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} CPUs)")
    print(json.dumps({"cpu_percent": round(percent, 3), "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()

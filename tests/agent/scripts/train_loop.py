"""A small training loop that can be told to go wrong, for the agent's tests.

It steps every ``--step-s`` seconds, reports through :mod:`runner.harness`
(or only prints ``step N/T`` lines with ``--no-harness``), saves checkpoints,
resumes from the newest complete one, and on request freezes, forks a zombie,
runs out of memory or writes checkpoints until the disk is full. Each failure
happens in a function named after it, so a stack dump can be checked for it.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from runner import harness


def wait_for_a_signal_that_never_comes() -> None:
    """The seeds' silent freeze: blocked on a lock, using no CPU."""
    threading.Event().wait()


def spin_forever() -> None:
    """A livelock: the process burns CPU and makes no step (the GPU goes idle)."""
    x = 0
    while True:
        x += 1


def fork_a_zombie() -> int:
    """A child that exits and is never reaped: ``[python] <defunct>``."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return pid


def run_out_of_memory(batch: int, teardown_s: float = 0.0) -> None:
    """Die of an OOM: its traceback, then (``teardown_s``) the exit a CUDA process takes."""
    print("Traceback (most recent call last):", file=sys.stderr)
    print('  File "train_loop.py", line 1, in <module>', file=sys.stderr)
    print(
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
        f"total capacity of 15.70 GiB of which 1.05 GiB is free (batch {batch}).",
        file=sys.stderr,
        flush=True,
    )
    time.sleep(teardown_s)  # freeing the CUDA context, joining DataLoader workers
    sys.exit(1)


def skip_a_batch_out_of_memory(step: int) -> None:
    """An OOM the script catches, logs (as fairseq does) and trains on past."""
    print(
        f"| WARNING: ran out of memory at step {step} with exception: CUDA out of memory. "
        "Tried to allocate 1.50 GiB. GPU 0 has a total capacity of 15.70 GiB of which "
        "0.80 GiB is free.; skipping batch",
        file=sys.stderr,
        flush=True,
    )


def write_state(folder: Path, mb: float) -> None:
    (folder / "state.bin").write_bytes(b"\0" * int(mb * 2**20))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-s", type=float, default=0.1)
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--ckpt-mb", type=float, default=0.01)
    parser.add_argument("--freeze-at", type=int, default=0, help="freeze after this step")
    parser.add_argument("--freeze", choices=["wait", "spin"], default="wait")
    parser.add_argument("--once", action="store_true", help="go wrong only without a checkpoint")
    parser.add_argument("--onset-file", help="write the time of the freeze here")
    parser.add_argument("--zombie-at", type=int, default=0)
    parser.add_argument("--oom-above", type=int, default=0, help="OOM when the batch is larger")
    parser.add_argument("--oom-teardown-s", type=float, default=0.0, help="exit this late")
    parser.add_argument("--handled-oom-at", type=int, default=0, help="log a caught OOM here")
    parser.add_argument("--no-harness", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value (training.batch_size=N)")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.overrides)
    batch = int(overrides.get("training.batch_size", "16"))

    h = None if args.no_harness else harness.Harness()
    start = 0
    if h is not None and (ck := h.latest_checkpoint()) is not None:
        start = ck.step
        print(f"resumed from step {start}", flush=True)
    go_wrong = not (args.once and start > 0)
    if args.oom_above and batch > args.oom_above and go_wrong:
        for step in range(1, 3):
            print(f"step {step}/{args.steps} batch {batch}", flush=True)
            time.sleep(args.step_s)
        run_out_of_memory(batch, args.oom_teardown_s)
    for step in range(start + 1, args.steps + 1):
        time.sleep(args.step_s)
        if h is not None:
            h.step(step, loss=1.0 / step, data_wait=0.001, samples=batch, total_steps=args.steps)
        print(f"step {step}/{args.steps} batch {batch}", flush=True)
        if args.save_every and step % args.save_every == 0 and h is not None:
            h.save_checkpoint(step, lambda d: write_state(d, args.ckpt_mb))
            h.wait_for_checkpoints()
            print(f"saved checkpoint step {step}", flush=True)
        if go_wrong and args.handled_oom_at and step == args.handled_oom_at:
            skip_a_batch_out_of_memory(step)
        if go_wrong and args.zombie_at and step == args.zombie_at:
            print(f"forked child {fork_a_zombie()}; never reaping it", flush=True)
        if go_wrong and args.freeze_at and step == args.freeze_at:
            if args.onset_file:
                Path(args.onset_file).write_text(f"{time.time()!r}\n")
            print(f"freezing after step {step} ({args.freeze})", flush=True)
            if args.freeze == "wait":
                wait_for_a_signal_that_never_comes()
            else:
                spin_forever()
    if h is not None:
        h.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

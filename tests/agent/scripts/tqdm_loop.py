"""A training loop that reports its steps only through a tqdm bar, as LeRobot and openpi do.

tqdm is used as it ships: its monitor thread on (``tqdm.monitor_interval``
10 s), the bar on stderr, each redraw written as ``\\r`` + the bar, with no
line end until the bar closes. ``--freeze-at N`` writes the instant to
``--onset-file`` and then blocks on a lock forever after step N: the bar shows
N, or a step or two less until tqdm's monitor redraws it 10-20 s later. That is
the freeze the agent has to see behind a bar.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm


def wait_for_a_signal_that_never_comes() -> None:
    """The silent freeze: blocked on a lock, using no CPU."""
    threading.Event().wait()


def spin_forever() -> None:
    """A livelock: the process burns CPU and makes no step (the GPU goes idle)."""
    x = 0
    while True:
        x += 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--step-s", type=float, default=0.05)
    parser.add_argument("--freeze-at", type=int, default=0)
    parser.add_argument("--freeze", choices=["wait", "spin"], default="wait")
    parser.add_argument("--onset-file")
    args = parser.parse_args()
    assert tqdm.monitor_interval > 0, "the monitor thread must be on, as tqdm ships"
    with tqdm(total=args.steps, desc="train") as bar:
        for step in range(1, args.steps + 1):
            time.sleep(args.step_s)
            bar.update(1)
            if step == args.freeze_at:
                # No refresh first: the last redraw may lag the counter by a step
                # or two (tqdm draws at most every mininterval), as in real loops.
                if args.onset_file:
                    Path(args.onset_file).write_text(f"{time.time()!r}\n")
                if args.freeze == "wait":
                    wait_for_a_signal_that_never_comes()
                spin_forever()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

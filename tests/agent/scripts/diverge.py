"""A training loop whose training goes wrong, for the training-health tests.

Modes (``--mode``):

- ``nan``: the loss is a falling curve, checkpoints are saved every
  ``--save-every`` steps, and from step ``--at`` on the loss (and grad norm)
  are NaN, as after an fp16 overflow; the loop keeps stepping, as real ones do.
- ``explode``: from step ``--at`` on the grad norm grows 10x a step and the loss
  with it.
- ``slow``: from step ``--at`` on each step takes ``--slow-s`` instead of ``--step-s``.
- ``healthy``: nothing goes wrong.

Reports through :mod:`runner.harness`, or with ``--no-harness`` only prints
``step N loss X grad Y`` lines (``nan`` printed as Python does) for the
progress-pattern path.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from runner import harness


def write_state(folder: Path) -> None:
    (folder / "state.bin").write_bytes(b"\0" * 1024)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["nan", "explode", "slow", "healthy"], required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-s", type=float, default=0.1)
    parser.add_argument("--slow-s", type=float, default=1.0)
    parser.add_argument("--at", type=int, default=10, help="the step things go wrong")
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--no-harness", action="store_true")
    args = parser.parse_args()

    h = None if args.no_harness else harness.Harness()
    for step in range(1, args.steps + 1):
        bad = args.mode != "healthy" and step >= args.at
        time.sleep(args.slow_s if args.mode == "slow" and bad else args.step_s)
        loss = 2.0 / (1 + 0.1 * step)
        grad = 1.0 + 0.1 * math.sin(step)
        if args.mode == "nan" and bad:
            loss = grad = float("nan")
        elif args.mode == "explode" and bad:
            grad = 10.0 ** (2 + step - args.at)
            loss = loss * grad
        if h is not None:
            h.step(step, loss=loss, grad_norm=grad, total_steps=args.steps)
        print(f"step {step} loss {loss} grad {grad}", flush=True)
        if args.save_every and step % args.save_every == 0 and h is not None and not bad:
            h.save_checkpoint(step, write_state)
            h.wait_for_checkpoints()
            print(f"saved checkpoint step {step}", flush=True)
    if h is not None:
        h.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

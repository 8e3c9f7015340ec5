"""Atomic checkpoint save vs plain ``torch.save`` of the same state, side by side.

    .venv/bin/python bench/bench_checkpoint.py [--mb 256] [--repeats 7] [--dir DIR]

Each round saves the same state once each way, in alternating order, into the
same filesystem, and prints the ratio of medians of the time training is
blocked (target <= 1.05). The harness blocks only for ``torch.save`` into a
temporary folder; fsync, sha256, manifest and rename run on its background
committer, whose time to a durable checkpoint is printed beside it. Plain
``torch.save`` writes straight to the final path with no fsync, hash or rename:
it is what the harness replaces, not what it matches on safety.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from runner.harness import Harness

TARGET = 1.05


def make_state(mb: int) -> dict[str, object]:
    n = mb * (1 << 20) // 4
    layers = 8
    gen = torch.Generator().manual_seed(0)
    model = {
        f"layer{i}.weight": torch.randn(n // layers // 2, generator=gen) for i in range(layers)
    }
    optim = {
        f"layer{i}.exp_avg": torch.randn(n // layers // 2, generator=gen) for i in range(layers)
    }
    return {"model": model, "optimizer": optim, "step": 1000, "rng": torch.get_rng_state()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=256, help="state size in MiB")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (a real disk)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.dir))
    state = make_state(args.mb)
    harness = Harness(checkpoint_dir=base / "atomic")
    plain_dir = base / "plain"
    plain_dir.mkdir()
    plain, atomic, durable = [], [], []
    try:
        for i in range(args.repeats + 1):
            order = ["plain", "atomic"] if i % 2 == 0 else ["atomic", "plain"]
            for kind in order:
                t = time.perf_counter()
                if kind == "plain":
                    torch.save(state, plain_dir / f"step_{i}.pt")
                    took = time.perf_counter() - t
                    (plain_dir / f"step_{i}.pt").unlink()
                else:
                    path = harness.save_torch(i, state)
                    took = time.perf_counter() - t
                    harness.wait_for_checkpoints()
                    if i > 0:
                        durable.append(time.perf_counter() - t)
                    shutil.rmtree(path)
                if i > 0:  # the first round warms the page cache and allocator
                    (plain if kind == "plain" else atomic).append(took)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    p, a = statistics.median(plain), statistics.median(atomic)
    d = statistics.median(durable)
    ratio = a / p
    verdict = "OK" if ratio <= TARGET else "OVER"
    print(f"state: {args.mb} MiB, {args.repeats} rounds, alternating order")
    print(f"plain torch.save             median {p:.3f} s")
    print(f"atomic save_torch (blocking) median {a:.3f} s")
    print(f"atomic, until durable        median {d:.3f} s  (fsync + sha256 + manifest + rename)")
    print(f"ratio blocking atomic/plain: {ratio:.3f} (target <= {TARGET}) {verdict}")
    print(f"ratio durable atomic/plain:  {d / p:.3f} (no target: plain is never durable)")


if __name__ == "__main__":
    main()

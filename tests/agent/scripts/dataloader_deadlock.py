"""A real DataLoader with two workers whose dataset blocks forever on one item.

The main loop then hangs in the DataLoader's queue get, the workers in
``BlockingDataset.__getitem__``: the hang the seeds never got a stack of.
With ``--once`` it hangs only while no marker file exists in the run folder,
so the restarted attempt runs through.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from runner import harness


class BlockingDataset(Dataset[torch.Tensor]):
    def __init__(self, n: int, block_at: int) -> None:
        self.n = n
        self.block_at = block_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.block_at and index >= self.block_at:
            threading.Event().wait()  # a lock nobody releases
        return torch.full((8,), float(index))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--block-at", type=int, default=24)
    parser.add_argument("--step-s", type=float, default=0.15)
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args()
    h = harness.Harness()
    marker = Path(os.environ[harness.ENV_RUN_DIR]) / "hung-once"
    block_at = args.block_at
    if args.once and marker.exists():
        block_at = 0
    marker.touch()
    torch.set_num_threads(1)
    loader = DataLoader(BlockingDataset(args.items, block_at), batch_size=2, num_workers=2)
    for step, batch in enumerate(loader, 1):
        time.sleep(args.step_s)  # the "compute" of a step
        h.step(step, loss=float(batch.mean()))
        print(f"step {step}", flush=True)
    h.close()
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time `runner data check` on a full-size franka_cube_stack dataset against its 2 s target.

    .venv/bin/python bench/bench_data_check.py [--episodes 100] [--steps 935]
        [--image-size 64] [--repeats 5] [--out DIR]

Synthesises a dataset of the users' size (100 episodes, T_max 935) in a
temporary folder (or in ``--out DIR``, where a matching one is reused), then
prints the median wall time of

* ``check_franka`` (the library call),
* ``runner data check`` end to end (a subprocess: interpreter start, imports, output),
* a naive ``torch.load`` of every file (what a check that reads the data would cost),

side by side, each as seconds and as ``time/target``, on a warm page cache
and (where ``os.posix_fadvise`` exists) a cold one: the dataset's own files are
evicted before each run, so reads hit the disk.

The check reads file headers plus the small states/actions arrays, never
image data, so its time does not depend on the image size; the naive load
grows with it. Run with ``--image-size 256`` (the users' size: ~18 GB on disk,
several minutes to synthesise) to see that; the default 64 px keeps disk and
time modest (~1 GB, about a minute).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runner.data import check_franka, synth_franka  # noqa: E402

TARGET_S = 2.0


def _median(
    fn: Callable[[], object], repeats: int, before: Callable[[], object] | None = None
) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _dataset(root: Path, episodes: int, steps: int, size: int) -> tuple[Path, str]:
    path = root / f"franka_{episodes}x{steps}_{size}px"
    if path.exists():
        report = check_franka(path)
        if report.ok and (report.n_episodes, report.t_max, report.image_hw) == (
            episodes,
            steps,
            (size, size),
        ):
            return path, "reused"
        sys.exit(f"{path} exists but is not a valid {episodes}x{steps} {size}px dataset; delete it")
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % max(1, total // 10) == 0:
            print(f"  synthesised {done}/{total} episodes", file=sys.stderr, flush=True)

    synth_franka(path, episodes=episodes, steps=steps, image_size=size, on_episode=progress)
    return path, f"synthesised in {time.perf_counter() - start:.0f} s"


def _cli(path: Path) -> None:
    runner = Path(sys.executable).parent / "runner"
    argv = [str(runner)] if runner.exists() else [sys.executable, "-m", "runner"]
    env = {**os.environ, "RUNNER_JOBS_DIR": str(REPO / "jobs")}
    result = subprocess.run(
        [*argv, "data", "check", "franka_cube_stack", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    if result.returncode != 0:
        sys.exit(f"runner data check failed ({result.returncode}):\n{result.stderr}")


def _evict(path: Path) -> None:
    """Drop the dataset's files (only those) from the page cache, so the next read hits disk."""
    for file in path.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)  # only clean pages can be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _naive_load(path: Path) -> None:
    import torch

    for file in [path / "states.pth", path / "actions.pth", *sorted(path.glob("*/obses.pth"))]:
        torch.load(file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=935)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, help="folder to keep (and reuse) the dataset in; default: a temp dir"
    )
    args = parser.parse_args()

    root = args.out or Path(tempfile.mkdtemp(prefix="bench_data_check-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        path, origin = _dataset(root, args.episodes, args.steps, args.image_size)
        disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        frames = check_franka(path).total_frames
        print(
            f"dataset: {path}\n  {args.episodes} episodes x T_max {args.steps}, {frames} frames, "
            f"{args.image_size}x{args.image_size} images, {disk / 1e9:.2f} GB on disk ({origin})"
        )
        import torch  # noqa: F401  (imported before timing: the naive load should not pay for it)

        def check() -> None:
            check_franka(path)

        def naive() -> None:
            _naive_load(path)

        def cli() -> None:
            _cli(path)

        evict = (lambda: _evict(path)) if hasattr(os, "posix_fadvise") else None
        n, few = args.repeats, min(args.repeats, 3)
        rows = [
            ("check_franka (library), warm cache", _median(check, n)),
            ("check_franka (library), cold cache", _median(check, n, evict) if evict else None),
            ("runner data check (CLI), warm cache", _median(cli, n)),
            ("naive torch.load, warm cache", _median(naive, few)),
            ("naive torch.load, cold cache", _median(naive, few, evict) if evict else None),
        ]
        print(f"\n{'median of runs':38} {'seconds':>9} {'time/target':>12}   target {TARGET_S:g} s")
        for name, seconds in rows:
            if seconds is None:
                print(f"{name:38} {'n/a':>9}   (needs os.posix_fadvise)")
            else:
                print(f"{name:38} {seconds:9.3f} {seconds / TARGET_S:12.3f}")
        print(f"\n{n} runs each ({few} for the naive load); cold = files evicted before each run")
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The users' ``find_and_rent.py``, kept for their muscle memory, on runner's library.

    python find_and_rent.py --disk 300 [--gpu RTX_4090] [--num-gpus 1] [--max-price 2]
    python find_and_rent.py --list-storage
    python find_and_rent.py --create-storage 500        # rent with a new 500 GB volume
    python find_and_rent.py --storage ID                # rent with volume ID at /storage
    python find_and_rent.py --dry-run --disk 300        # only show the ranked offers

A thin argparse shim: each call becomes the equivalent ``runner`` command (``runner rent``,
``runner offers``, ``runner storage list``) and prints exactly what runner prints, so the host
is verified over SSH (real disk, mounts, GPUs) and failed hosts are destroyed, as with runner.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="find_and_rent.py",
        description="Find the best vast.ai offer, rent it and verify it (runner rent).",
    )
    p.add_argument("--disk", type=float, default=300.0, help="container disk, GB (default 300)")
    p.add_argument("--gpu", "--gpu-name", dest="gpu", help="GPU model, e.g. RTX_4090, H100_SXM")
    p.add_argument("--num-gpus", "--gpus", dest="gpus", type=int, help="number of GPUs")
    p.add_argument("--min-gpu-mem", type=float, metavar="GB", help="memory per GPU, GB")
    p.add_argument("--max-price", type=float, metavar="$/H", help="most dollars per hour")
    p.add_argument("--min-reliability", type=float, metavar="R", help="least reliability (0-1)")
    p.add_argument("--cuda", type=float, metavar="VER", help="least CUDA version of the driver")
    p.add_argument("--inet", type=float, metavar="MBPS", help="least download bandwidth")
    p.add_argument("--datacenter", action="store_true", help="only datacenter hosts")
    p.add_argument("--region", help="continent (NA, EU, ...) or countries (US,CA)")
    p.add_argument("--image", help="image to run")
    p.add_argument("--job", help="take resources and image from runner's job NAME")
    p.add_argument("--max-tries", type=int, help="offers to try before giving up")
    vol = p.add_mutually_exclusive_group()
    vol.add_argument("--list-storage", action="store_true", help="list persistent volumes")
    vol.add_argument("--create-storage", type=float, metavar="SIZE", help="new volume, GB")
    vol.add_argument("--storage", type=int, metavar="ID", help="attach volume ID")
    p.add_argument("--mount", default="/storage", help="volume mount path (default /storage)")
    p.add_argument("--dry-run", "--list", dest="dry_run", action="store_true", help="only search")
    p.add_argument("--explain", action="store_true", help="say why the top offer wins")
    p.add_argument("--json", action="store_true", help="JSON output")
    return p


def runner_argv(args: argparse.Namespace) -> list[str]:
    """The ``runner`` command line equivalent to ``args``."""
    if args.list_storage:
        return ["storage", "list", *(["--json"] if args.json else [])]
    filters: list[str] = ["--disk", f"{args.disk:g}"]
    for flag, value in (
        ("--gpu", args.gpu),
        ("--gpus", args.gpus),
        ("--min-gpu-mem", args.min_gpu_mem),
        ("--max-price", args.max_price),
        ("--min-reliability", args.min_reliability),
        ("--cuda", args.cuda),
        ("--inet", args.inet),
        ("--region", args.region),
        ("--job", args.job),
    ):
        if value is not None:
            filters += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if args.datacenter:
        filters.append("--datacenter")
    if args.dry_run:
        return ["offers", *filters, *(["--explain"] if args.explain else [])] + (
            ["--json"] if args.json else []
        )
    argv = ["rent", *filters]
    if args.image:
        argv += ["--image", args.image]
    if args.max_tries is not None:
        argv += ["--max-tries", str(args.max_tries)]
    if args.storage is not None:
        argv += ["--storage", str(args.storage), "--mount", args.mount]
    elif args.create_storage is not None:
        argv += ["--create-storage", f"{args.create_storage:g}", "--mount", args.mount]
    if args.json:
        argv.append("--json")
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from runner.cli import main as runner_main

    return runner_main(runner_argv(args))


if __name__ == "__main__":
    sys.exit(main())

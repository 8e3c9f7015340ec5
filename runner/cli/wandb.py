"""``runner wandb-sync RUN``: upload a run's offline W&B mirror once a network is there.

A job with ``wandb: {enabled: true, mode: offline}`` has its mirror write
``RUN_DIR/wandb/offline-run-*`` (see :mod:`runner.agent.mirror`); this runs
``wandb sync`` on them, with the key from ``WANDB_API_KEY`` in the environment
(never an argument). ``--dry-run`` asks wandb what it would upload (no key, no
network needed).
"""

from __future__ import annotations

import os
import shlex
import subprocess

import typer

from runner.cli._app import app as display
from runner.errors import DependencyError, RunnerError, SecretError

_RUN_HELP = "Run id (or a unique prefix, or a job: its newest run), or a run folder's path."


def wandb_sync(
    run: str = typer.Argument(..., help=_RUN_HELP),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what wandb would upload; needs no key and no network."
    ),
) -> None:
    """Upload a run's offline W&B mirror (RUN_DIR/wandb/offline-run-*) with `wandb sync`."""
    from runner.agent.mirror import WANDB_DIR, offline_runs, sync_argv
    from runner.spec import WANDB_KEY_ENV
    from runner.view.source import LocalSource, open_run

    source = open_run(run)
    try:
        if not isinstance(source, LocalSource):
            raise RunnerError(
                f"run {source.label} is on a rented host: copy its {WANDB_DIR}/ folder here "
                "(or run `runner wandb-sync` there) and give that folder's path"
            )
        runs = offline_runs(source.path)
        where = source.path / WANDB_DIR
    finally:
        source.close()
    if not runs:
        raise RunnerError(
            f"no offline W&B run in {where}: only a job with wandb: {{enabled: true, "
            f"mode: offline}} writes one"
        )
    try:
        import wandb  # noqa: F401
    except ImportError as exc:
        raise DependencyError(
            "wandb is not installed here: pip install wandb (or runner[train]), then run again"
        ) from exc
    key = os.environ.get(WANDB_KEY_ENV)
    if not dry_run and not key:
        raise SecretError(
            f"{WANDB_KEY_ENV} is not set: export {WANDB_KEY_ENV}=... (https://wandb.ai/authorize) "
            "in this shell first"
        )
    argv = sync_argv(runs) + (["--dry-run"] if dry_run else [])
    display.info("$ " + shlex.join(["wandb", *argv[3:]]))
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        assert proc.stdout is not None
        last = ""
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if key:
                line = line.replace(key, "***")
            if line:
                display.info(line)
                last = line
    if proc.returncode != 0:
        said = f": {last}" if last else ""
        raise RunnerError(f"wandb sync failed (exit {proc.returncode}){said}")
    if not dry_run:
        display.success(f"synced {len(runs)} offline W&B run{'s' if len(runs) != 1 else ''}")

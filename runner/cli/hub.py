"""``runner push``, ``runner checkpoints``, ``runner pull``, ``runner hub retag``: checkpoints on
the Hugging Face Hub.

The token comes from ``HF_TOKEN`` or huggingface_hub's stored login (``hf auth login``), the
endpoint from ``HF_ENDPOINT``. huggingface_hub is imported inside the commands only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

from runner.cli._app import app as display

if TYPE_CHECKING:
    from runner.hub.discovery import LocalCheckpoint
    from runner.hub.pusher import PushResult

RepoTypeOption = Literal["model", "dataset"]

app = typer.Typer(help="Hugging Face Hub repos: move a tag.", no_args_is_help=True)

_REPO_TYPE_HELP = "Repo type: model or dataset."


def _repo_type(value: str) -> RepoTypeOption:
    from runner.errors import UsageError

    if value not in ("model", "dataset"):
        raise UsageError(f"--repo-type must be model or dataset, not {value!r}")
    return "model" if value == "model" else "dataset"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def push(
    path: Path = typer.Argument(..., help="A checkpoint folder (or one checkpoint file)."),
    repo: str = typer.Option(..., "--repo", help="Hub repo, OWNER/NAME (created private)."),
    step: int | None = typer.Option(
        None, "--step", min=0, help="The step (default: from the manifest or the name)."
    ),
    repo_type: str = typer.Option("model", "--repo-type", help=_REPO_TYPE_HELP),
) -> None:
    """Push one checkpoint to checkpoints/step_NNNNNNNNN/ in REPO, tag it step-N and latest.

    The folder is checked first (safetensors and torch files whole, harness manifest sizes);
    files the Hub already has are not sent again. Token: HF_TOKEN or `hf auth login`;
    endpoint: HF_ENDPOINT.
    """
    from runner.hub.client import HubClient
    from runner.hub.discovery import inspect_path
    from runner.hub.pusher import push_checkpoint

    kind = _repo_type(repo_type)
    checkpoint = inspect_path(path, step=step)
    client = HubClient.from_env()
    client.require_token()
    client.ensure_repo(repo, repo_type=kind)
    display.info(
        f"pushing step {checkpoint.step} ({len(checkpoint.files)} files, "
        f"{_size(checkpoint.size)}) from {checkpoint.source} to {repo}"
    )
    result = _with_progress(
        checkpoint, lambda: push_checkpoint(client, repo, checkpoint, repo_type=kind)
    )
    tags = ", ".join(result.tags)
    if result.uploaded:
        display.print(
            f"pushed step {result.step} to {repo}: {len(result.files)} files, "
            f"{_size(result.bytes)} in {result.seconds:.1f} s ({result.mb_per_s:.1f} MB/s), "
            f"commit {result.commit[:7]}, tags {tags}"
        )
    else:
        display.print(
            f"step {result.step} is already on {repo} ({len(result.files)} files, "
            f"{_size(result.bytes)}): nothing sent; tags {tags}"
        )


def _read_bytes() -> int | None:
    """Bytes this process has read so far (Linux ``/proc/self/io``), or None elsewhere."""
    try:
        with open("/proc/self/io", encoding="ascii") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _with_progress(checkpoint: LocalCheckpoint, work: Callable[[], PushResult]) -> PushResult:
    """Run ``work`` in a thread with a progress bar of the checkpoint's bytes, estimated from
    what this process reads: the client reads every file twice (once to hash it, once to send
    it), so half of it. Files the Hub already has are not read the second time: the bar then
    jumps at the end."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:
            outcome["error"] = exc

    start = _read_bytes()
    total = checkpoint.size
    worker = threading.Thread(target=run, name="hub-push", daemon=True)
    columns = (
        TextColumn(f"{len(checkpoint.files)} files"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=display.err, transient=True) as progress:
        task = progress.add_task("push", total=total or 1)
        worker.start()
        while worker.is_alive():
            now = _read_bytes()
            if start is not None and now is not None:
                progress.update(task, completed=min(total, (now - start) // 2))
            worker.join(0.2)
        progress.update(task, completed=total or 1)
    error = outcome.get("error")
    if isinstance(error, BaseException):
        raise error
    return outcome["result"]  # type: ignore[return-value]


def checkpoints(
    repo: str = typer.Argument(..., help="Hub repo, OWNER/NAME."),
    repo_type: str = typer.Option("model", "--repo-type", help=_REPO_TYPE_HELP),
) -> None:
    """What is on the Hub under checkpoints/, by step: files, size, tags, date."""
    from rich.table import Table

    from runner.hub.client import HubClient
    from runner.hub.pusher import remote_checkpoints

    found = remote_checkpoints(HubClient.from_env(), repo, repo_type=_repo_type(repo_type))
    if not found:
        display.info(f"{repo} has no checkpoints under checkpoints/")
        return
    table = Table(box=None, pad_edge=False)
    for name in ("step", "files", "size", "tag", "date"):
        table.add_column(name, no_wrap=True, justify="left" if name in ("tag", "date") else "right")
    for ck in found:
        date = (ck.date or "")[:19].replace("T", " ")
        table.add_row(
            str(ck.step), str(len(ck.files)), _size(ck.size), ",".join(ck.tags) or "-", date
        )
    display.print(table)


def pull(
    repo: str = typer.Argument(..., help="Hub repo, OWNER/NAME."),
    step: int | None = typer.Option(None, "--step", min=0, help="Default: the newest."),
    to: Path = typer.Option(
        Path("checkpoints"), "--to", help="Checkpoint folder to put it in (harness layout)."
    ),
    repo_type: str = typer.Option("model", "--repo-type", help=_REPO_TYPE_HELP),
) -> None:
    """Fetch a checkpoint into TO/step_NNNNNNNNN, complete for the harness (sizes checked,
    manifest written if the pushed one has none): a run with that checkpoint folder resumes
    from it."""
    from runner.harness import list_checkpoints
    from runner.hub.client import HubClient
    from runner.hub.pusher import pull_checkpoint

    started = time.monotonic()
    before = {c.step for c in list_checkpoints(to)}
    folder = pull_checkpoint(
        HubClient.from_env(), repo, to, step=step, repo_type=_repo_type(repo_type)
    )
    pulled = next(c for c in list_checkpoints(to) if c.path == folder)
    if pulled.step in before:
        display.print(f"step {pulled.step} is already complete in {folder}: nothing fetched")
        return
    display.print(
        f"pulled step {pulled.step} from {repo} into {folder}: "
        f"{len(pulled.manifest.get('files', []))} files, {_size(pulled.size)} "
        f"in {time.monotonic() - started:.1f} s"
    )


@app.command("retag")
def retag(
    repo: str = typer.Argument(..., help="Hub repo, OWNER/NAME."),
    tag: str = typer.Argument(..., help="The tag to move (or create), e.g. v3.0."),
    revision: str | None = typer.Option(
        None, "--revision", help="Branch, tag or commit to point it at (default: main's head)."
    ),
    repo_type: str = typer.Option("model", "--repo-type", help=_REPO_TYPE_HELP),
) -> None:
    """Point TAG at REVISION (delete + create: the Hub never moves a tag by itself).

    For a stale dataset tag: runner hub retag OWNER/DATA v3.0 --repo-type dataset.
    """
    from runner.hub.client import HubClient
    from runner.hub.pusher import retag as move_tag

    client = HubClient.from_env()
    client.require_token()
    result = move_tag(client, repo, tag, revision=revision, repo_type=_repo_type(repo_type))
    if not result.moved:
        display.print(f"{tag} already points at {result.new[:7]} in {repo}: unchanged")
    elif result.old is None:
        display.print(f"created {tag} at {result.new[:7]} in {repo}")
    else:
        display.print(f"moved {tag} in {repo}: {result.old[:7]} -> {result.new[:7]}")

"""Local rotation: keep the newest K checkpoints, delete older ones only once the Hub has them.

Invariants (each test in ``tests/hub/test_rotation.py`` pins one):

- the newest complete checkpoint is never deleted, whatever ``keep`` says;
- a checkpoint is deleted only when ``confirmed(checkpoint)`` is True at that moment (the
  pusher's answer: pushed, unchanged since, and the Hub lists every file at its size);
- snapshots of files the trainer rewrites in place (DINO WM's ``model_latest.pth``, what it
  resumes from) are never deleted;
- a deletion is a rename to a hidden name first (atomic), then the removal: a process killed
  mid-way leaves a hidden leftover that the next rotation removes, never a half checkpoint
  under its real name (which the harness or a trainer could mistake for one to resume);
- a single failed deletion is reported and skipped, never raised: rotation is housekeeping.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.hub.discovery import LocalCheckpoint

__all__ = ["DELETING_PREFIX", "Deleted", "delete_checkpoint", "plan_rotation", "rotate"]

#: Hidden name a checkpoint is renamed to before it is removed. Starts with ``.tmp-`` so the
#: harness's own clean-up of dead temporaries also recognises it.
DELETING_PREFIX = ".tmp-deleting-"


@dataclass(frozen=True)
class Deleted:
    """A checkpoint removed from the local disk."""

    checkpoint: LocalCheckpoint
    freed_bytes: int


def plan_rotation(checkpoints: Sequence[LocalCheckpoint], keep: int) -> list[LocalCheckpoint]:
    """What rotation may delete (if confirmed): all but the newest ``keep`` (at least 1),
    oldest first, snapshots excluded."""
    ordered = sorted((c for c in checkpoints if not c.snapshot), key=lambda c: c.step)
    newest = max((c.step for c in checkpoints), default=None)
    keep = max(1, keep)
    candidates = ordered[:-keep] if len(ordered) > keep else []
    return [c for c in candidates if c.step != newest]


def delete_checkpoint(checkpoint: LocalCheckpoint) -> int:
    """Remove one checkpoint from disk (rename aside, then delete); returns the bytes freed.

    Raises:
        OSError: the rename failed (nothing was removed then).
    """
    source = checkpoint.source
    aside = source.with_name(f"{DELETING_PREFIX}{source.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(source, aside)
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)
    return checkpoint.size


def remove_leftovers(folder: Path) -> None:
    """Remove what killed deletions left behind in ``folder``."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(DELETING_PREFIX):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def rotate(
    checkpoints: Sequence[LocalCheckpoint],
    keep: int,
    confirmed: Callable[[LocalCheckpoint], bool],
    *,
    on_error: Callable[[LocalCheckpoint, str], None] | None = None,
) -> list[Deleted]:
    """Delete the confirmed checkpoints beyond the newest ``keep``; returns what was deleted.

    ``confirmed`` is asked just before each deletion; an exception from it counts as "no".
    """
    deleted = []
    for folder in {c.source.parent for c in checkpoints}:
        remove_leftovers(folder)
    for checkpoint in plan_rotation(checkpoints, keep):
        try:
            if not confirmed(checkpoint):
                continue
        except Exception as exc:  # the Hub unreachable: keep the checkpoint, say why
            if on_error is not None:
                on_error(checkpoint, f"not deleted: cannot confirm it on the Hub ({exc})")
            continue
        try:
            freed = delete_checkpoint(checkpoint)
        except OSError as exc:
            if on_error is not None:
                on_error(checkpoint, f"not deleted: {exc.strerror or exc}")
            continue
        deleted.append(Deleted(checkpoint, freed))
    return deleted

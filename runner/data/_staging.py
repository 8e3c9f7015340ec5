"""Write a new dataset folder whole or not at all (shared by every layout's synthesiser)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from runner.errors import DatasetError


def check_new_folder(path: Path) -> None:
    """Raise :class:`DatasetError` unless ``path`` is absent or an empty folder."""
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        raise DatasetError(
            f"{path} already exists and is not an empty folder; runner never overwrites a "
            f"dataset: pick a new path or delete that one first"
        )


def write_staged(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` into a hidden folder beside ``path``, then rename it into place.

    Interrupted or failed, it leaves nothing that could pass for a dataset.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        write(staging)
        if path.exists():
            path.rmdir()  # checked empty before; rename cannot replace a folder portably
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

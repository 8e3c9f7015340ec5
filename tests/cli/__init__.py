"""Tests of the command line, as a user meets it."""

from __future__ import annotations

import subprocess

from tests.conftest import REPO, RUNNER_BIN


def run_train(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``runner train ARGS`` as a real process from the repository root."""
    return subprocess.run(
        [str(RUNNER_BIN), "train", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )

"""``runner wandb-sync RUN`` as a user sees it: one ``error:`` line for each thing missing,
and ``--dry-run`` asking the real wandb what it would upload from a real offline mirror.

No test uploads: there is no network here, and ``wandb sync`` against an unreachable
server retries instead of failing, so the upload itself is not exercised.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.cli import main
from runner.rundir import Event, EventLog, SampleLog, Status

FAKE_KEY = "k" * 40


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def finished_run(run_dir: Path) -> Path:
    """A small finished run folder, as the agent leaves it."""
    run_dir.mkdir(parents=True)
    now = time.time()
    EventLog(run_dir).append(Event("started", "info", "attempt 0 started", time=now - 2))
    EventLog(run_dir).append(Event("finished", "info", "finished at step 3", time=now))
    SampleLog(run_dir).append({"time": now - 1, "attempt": 0, "step": 3, "metrics": {}})
    Status("finished", "loop", 1, now, now - 3, step=3, exit_code=0).write(run_dir)
    return run_dir


def test_a_run_without_an_offline_mirror_is_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = finished_run(tmp_path / "run")
    code, out, err = run(capsys, "wandb-sync", str(folder))
    assert (code, out) == (1, "")
    assert err == (
        f"error: no offline W&B run in {folder}/wandb: only a job with wandb: {{enabled: true, "
        "mode: offline} writes one\n"
    )


def test_no_such_run_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "wandb-sync", str(tmp_path / "nowhere"))
    assert code == 1 and out == ""
    assert err.startswith("error: no run folder ") and err.count("\n") == 1


@pytest.fixture
def offline_folder(tmp_path: Path) -> Path:
    """A run folder with the agent-side placeholders of an offline run (no wandb needed)."""
    folder = finished_run(tmp_path / "run")
    (folder / "wandb" / "offline-run-20261203_000000-run").mkdir(parents=True)
    return folder


def test_without_wandb_installed_is_one_error(
    offline_folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # None makes `import wandb` fail
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    code, out, err = run(capsys, "wandb-sync", str(offline_folder))
    assert (code, out) == (1, "")
    assert err == (
        "error: wandb is not installed here: pip install wandb (or runner[train]), then run again\n"
    )


def test_without_a_key_is_one_error(
    offline_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("wandb")
    code, out, err = run(capsys, "wandb-sync", str(offline_folder))
    assert (code, out) == (1, "")
    assert err == (
        "error: WANDB_API_KEY is not set: export WANDB_API_KEY=... (https://wandb.ai/authorize) "
        "in this shell first\n"
    )


@pytest.mark.slow
def test_dry_run_lists_the_real_offline_run_and_never_shows_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    folder = finished_run(tmp_path / "loop-20261203-000000-abcd")
    env = {**os.environ, "WANDB_DIR": str(folder), "WANDB_SILENT": "true"}
    mirror = [sys.executable, "-m", "runner.agent.mirror", str(folder)]
    mirror += ["--project", "runner-tests", "--mode", "offline", "--interval", "0.1"]
    done = subprocess.run(mirror, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [offline] = (folder / "wandb").glob("offline-run-*")
    [file] = offline.glob("run-*.wandb")

    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    code, out, err = run(capsys, "wandb-sync", str(folder), "--dry-run")

    assert code == 0, err
    lines = err.splitlines()
    assert lines[0] == f"$ wandb sync {offline} --dry-run"
    assert "wandb: Would sync 1 run(s):" in lines
    assert any(line.endswith(str(file.relative_to(offline.parent.parent))) for line in lines)
    assert FAKE_KEY not in out + err

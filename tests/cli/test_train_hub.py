"""The main job under the agent pushes its checkpoints to the Hub while it trains, and a
fresh run on another folder resumes from the Hub (a loopback Hub, the real client)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runner.harness import latest_checkpoint, verify_checkpoint
from runner.rundir import read_events
from tests.cli import run_train
from tests.conftest import REPO
from tests.fakes.hub_server import HubServer

REPO_ID = "runner-test/franka-wm"


def _job_with_hub(jobs: Path) -> None:
    text = (REPO / "jobs" / "franka_cube_stack.yaml").read_text()
    text = text.replace(
        "{episodes: 16, steps: 120, image_size: 64}", "{episodes: 3, steps: 40, image_size: 32}"
    )
    text += f"hub: {{repo: {REPO_ID}, push_interval_s: 1, min_commit_interval_s: 0}}\n"
    jobs.mkdir()
    (jobs / "franka_cube_stack.yaml").write_text(text)


def _train(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_train(["franka_cube_stack", "img_size=32", *args], env)


@pytest.mark.slow
def test_trainer_pushes_while_training_and_a_fresh_folder_resumes_from_the_hub(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    _job_with_hub(tmp_path / "jobs")
    with HubServer(tmp_path / "hub-storage") as hub:
        env = {
            **subprocess_env,
            **hub.client_env(tmp_path / "hf-home"),
            "RUNNER_JOBS_DIR": str(tmp_path / "jobs"),
            "RUNNER_DATA_DIR": str(tmp_path / "data"),
        }
        first_run = tmp_path / "first"
        # Long enough (a few seconds of steps) for the 1 s pusher to work during training.
        done = _train(
            ["training.steps=120", "training.save_every=20", f"--run-dir={first_run}"], env
        )
        assert done.returncode == 0, done.stderr
        assert hub.token not in done.stdout + done.stderr

        events = read_events(first_run)
        pushes = [e for e in events if e.kind == "push"]
        # Every checkpoint reached the Hub (the pusher takes the newest first).
        assert {e.evidence["step"] for e in pushes} == {20, 40, 60, 80, 100, 120}
        exited = next(e for e in events if e.kind == "exited")
        assert any(e.time < exited.time for e in pushes), "nothing was pushed during training"
        assert all(hub.token not in e.to_json() for e in events)
        files = hub.list_files(REPO_ID)
        assert files["checkpoints/step_000000120/state.pt"] > 0
        assert hub.resolve(REPO_ID, "latest") == hub.resolve(REPO_ID, "step-120")

        # Another machine, another folder: it resumes from the Hub, not from step 0.
        second_run = tmp_path / "second"
        again = _train(["training.steps=140", f"--run-dir={second_run}"], env)
        assert again.returncode == 0, again.stderr
        assert f"resume: pulled step 120 from the Hub ({REPO_ID}; none here)" in again.stderr
        assert "resuming from step 120 " in again.stdout + again.stderr
        newest = latest_checkpoint(second_run / "checkpoints")
        assert newest is not None and newest.step == 140 and verify_checkpoint(newest) == []


@pytest.mark.slow
def test_without_a_token_the_run_says_checkpoints_stay_local(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    _job_with_hub(tmp_path / "jobs")
    env = {
        **subprocess_env,
        "RUNNER_JOBS_DIR": str(tmp_path / "jobs"),
        "RUNNER_DATA_DIR": str(tmp_path / "data"),
        "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens: pull must not be tried blindly
    }
    run = tmp_path / "run"
    done = _train(["training.steps=4", "--no-hub-resume", f"--run-dir={run}"], env)
    assert done.returncode == 0, done.stderr
    disabled = [e for e in read_events(run) if e.kind == "push_disabled"]
    assert len(disabled) == 1
    assert disabled[0].message == (
        f"checkpoints are not pushed to {REPO_ID}: no HF_TOKEN in the environment; "
        "they live on this disk only"
    )

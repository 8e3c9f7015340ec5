"""``runner train`` / ``./train.sh``: the main job end to end, and what a new user gets wrong."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from runner.cli import main
from runner.harness import latest_checkpoint, list_checkpoints, read_heartbeat, verify_checkpoint
from tests.cli import run_train
from tests.conftest import REPO, RUNNER_BIN

# Small enough for a few seconds of CPU; the README's command uses the job's defaults.
TINY = ["training.steps=24", "training.save_every=8", "training.log_every=8", "img_size=32"]


def _small_data(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    env = dict(env)
    env["RUNNER_DATA_DIR"] = str(tmp_path / "data")
    env["RUNNER_RUNS_DIR"] = str(tmp_path / "runs")
    return env


def _synth(path: Path, episodes: int = 4, steps: int = 40) -> Path:
    from runner.data.franka import synth_franka

    synth_franka(path, episodes=episodes, steps=steps, image_size=32)
    return path


def _the_error(stderr: str) -> str:
    """The one error line (progress lines such as "device: CPU" may come before it)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert stderr.strip().splitlines()[-1] == errors[0], "the error is the last word"
    return errors[0]


@pytest.mark.slow
def test_train_synthesises_data_trains_checkpoints_and_resumes(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    env = _small_data(subprocess_env, tmp_path)
    data = tmp_path / "data" / "franka_cube_stack_synthetic"
    _synth(data)  # the job's own synthetic size takes longer; reuse is what we test here
    first = run_train(["franka_cube_stack", *TINY], env)
    assert first.returncode == 0, first.stderr
    assert "device: CPU" in first.stderr
    assert f"dataset: synthetic, reusing {data}" in first.stderr
    run = tmp_path / "runs" / "franka_cube_stack"
    assert [c.step for c in list_checkpoints(run / "checkpoints")][-1] == 24
    assert all(verify_checkpoint(c) == [] for c in list_checkpoints(run / "checkpoints"))
    assert read_heartbeat(run)["phase"] == "done"

    again = run_train(["franka_cube_stack", *TINY[1:], "training.steps=32"], env)
    assert again.returncode == 0, again.stderr
    resumed = [
        line
        for line in again.stdout.splitlines() + again.stderr.splitlines()
        if line.startswith("resuming from step")
    ]
    assert resumed == [f"resuming from step 24 ({run / 'checkpoints' / 'step_000000024'})"]
    assert latest_checkpoint(run / "checkpoints").step == 32


@pytest.mark.slow
def test_first_run_without_data_says_where_it_synthesised(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    env = _small_data(subprocess_env, tmp_path)
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    # The real job with a smaller synthetic dataset, so the test stays fast.
    text = (REPO / "jobs" / "franka_cube_stack.yaml").read_text()
    text = text.replace(
        "{episodes: 16, steps: 120, image_size: 64}", "{episodes: 3, steps: 40, image_size: 32}"
    )
    (jobs / "franka_cube_stack.yaml").write_text(text)
    env["RUNNER_JOBS_DIR"] = str(jobs)
    done = run_train(["franka_cube_stack", "training.steps=4", "img_size=32"], env)
    assert done.returncode == 0, done.stderr
    where = tmp_path / "data" / "franka_cube_stack_synthetic"
    assert (
        "no dataset configured: synthesising 3 episodes x 40 steps (32px, franka layout) "
        f"at {where}" in done.stderr
    )
    assert (where / "states.pth").is_file()


@pytest.mark.slow
def test_sigkill_during_training_saves_keeps_a_complete_newest(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """Kill the real trainer (saving every step) at random instants; resume each time."""
    env = _small_data(subprocess_env, tmp_path)
    _synth(tmp_path / "data" / "franka_cube_stack_synthetic")
    run = tmp_path / "runs" / "franka_cube_stack"
    rng = random.Random(7)
    newest = -1
    for _ in range(5):
        proc = _start_training(env, "training.save_every=1", "training.log_every=1000")
        _wait_for_step(run, above=newest + 2)
        time.sleep(rng.uniform(0.0, 0.3))
        trainer = read_heartbeat(run)["pid"]
        os.kill(trainer, signal.SIGKILL)
        assert proc.wait(timeout=60) == 137  # runner reports the job's death, 128 + 9
        ck = latest_checkpoint(run / "checkpoints")
        assert ck is not None and verify_checkpoint(ck) == []
        import torch

        state = torch.load(ck.path / "state.pt", map_location="cpu", weights_only=False)
        assert state["step"] == ck.step
        assert ck.step >= newest
        newest = ck.step
    resumed = run_train(["franka_cube_stack", f"training.steps={newest + 2}", "img_size=32"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from step {newest} " in resumed.stdout + resumed.stderr


@pytest.mark.slow
def test_killing_runner_takes_the_training_process_with_it(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    env = _small_data(subprocess_env, tmp_path)
    _synth(tmp_path / "data" / "franka_cube_stack_synthetic")
    run = tmp_path / "runs" / "franka_cube_stack"
    proc = _start_training(env, session=False)
    beat = _wait_for_step(run, above=-1)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while _alive(beat["pid"]):
        assert time.monotonic() < deadline, "the trainer outlived runner as an orphan"
        time.sleep(0.05)


def _start_training(
    env: dict[str, str], *overrides: str, session: bool = True
) -> subprocess.Popen[bytes]:
    """A long ``runner train`` in the background (stopped by the test)."""
    argv = [str(RUNNER_BIN), "train", "franka_cube_stack", "training.steps=100000", "img_size=32"]
    return subprocess.Popen(
        [*argv, *overrides],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=session,
    )


def _wait_for_step(run: Path, *, above: int, timeout_s: float = 120) -> dict[str, Any]:
    """The trainer's heartbeat once its step is past ``above``."""
    deadline = time.monotonic() + timeout_s
    while (beat := read_heartbeat(run)) is None or (beat.get("step") or -1) <= above:
        assert time.monotonic() < deadline, f"the trainer never stepped past {above}"
        time.sleep(0.05)
    return beat


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting to be reaped is dead too
        return f.read().split(") ")[-1][0] != "Z"


def test_job_without_local_profile_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "pi0_so101"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: pi0_so101 runs only in its Docker image runner/lerobot:latest and has no "
        "embedded profile; start it on a GPU host with its image"
    )


def test_cuda_on_a_machine_without_gpus_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pynvml")
    from runner.launch.local import _visible_gpus

    if _visible_gpus()[0]:
        pytest.skip("this machine has a GPU")
    assert main(["train", "franka_cube_stack", "--device", "cuda"]) == 1
    err = _the_error(capsys.readouterr().err)
    assert err.startswith("error: franka_cube_stack needs 1 GPU(s) and 0 are visible (")


def test_bad_dataset_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _synth(tmp_path / "ds", episodes=2, steps=12)
    (data / "000001" / "obses.pth").unlink()
    assert main(["train", "franka_cube_stack", "--data", str(data)]) == 1
    err = _the_error(capsys.readouterr().err)
    assert err.startswith(f"error: dataset {data} is not a valid franka dataset: 000001")
    assert "runner data check franka_cube_stack" in err


def test_missing_dataset_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "franka_cube_stack", "--data", str(tmp_path / "nope")]) == 1
    assert _the_error(capsys.readouterr().err) == (
        f"error: dataset folder {tmp_path / 'nope'} does not exist; pass --data PATH"
    )


@pytest.mark.slow
def test_bad_override_is_one_line_from_the_trainer(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    env = _small_data(subprocess_env, tmp_path)
    _synth(tmp_path / "data" / "franka_cube_stack_synthetic")
    done = run_train(["franka_cube_stack", "training.bach_size=8"], env)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training.bach_size" in errors[0]
    assert "training.batch_size" in errors[0]  # the suggestion
    assert "Traceback" not in done.stderr
    malformed = run_train(["franka_cube_stack", "frameskip"], env)
    assert malformed.returncode == 2
    assert malformed.stderr.strip().splitlines()[-1] == (
        "error: bad override 'frameskip': expected key=value, e.g. frameskip=5"
    )


def test_a_job_with_a_cpu_profile_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "act_so101"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: act_so101 runs only in its Docker image runner/lerobot:latest and has no "
        "embedded profile; start it on a GPU host with its image; its profiles: cpu (--profile P)"
    )

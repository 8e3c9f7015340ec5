"""``runner launch JOB --local`` and ``runner runs``: the local backend as a user meets it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from runner.cli import main
from runner.harness import latest_checkpoint, verify_checkpoint
from runner.rundir import read_events, read_launch, read_status
from tests.conftest import REPO, RUNNER_BIN

TINY = ["training.steps=16", "training.save_every=8", "training.log_every=8", "img_size=32"]


def _runner(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUNNER_BIN), *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--local", "--docker"], "error: --local and --docker: choose one backend"),
        (["--docker", "--on", "7"], "error: --docker and --on: choose one backend"),
        (
            ["--local", "--disk", "300"],
            "error: --disk is for rented hosts; drop it or drop --local",
        ),
        (["--end", "never"], "error: --end 'never': use destroy, stop or keep"),
    ],
)
def test_wrong_flags_are_one_line_and_exit_2(
    args: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["launch", "franka_cube_stack", *args])
    out, err = capsys.readouterr()
    assert (code, out, err) == (2, "", line + "\n")


def test_an_unknown_job_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["launch", "franka", "--local"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: unknown job 'franka' (did you mean franka_cube_stack?")
    assert err.count("\n") == 1


def test_a_hub_repo_that_is_no_repo_id_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["launch", "franka_cube_stack", "--local", "--hub", "not a repo"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.endswith("error: --hub 'not a repo': expected a Hub repo id, OWNER/NAME\n")


def test_runs_with_no_runs_says_how_to_start_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs"]) == 0
    assert capsys.readouterr().err == "no runs yet: start one with `runner launch JOB`\n"


@pytest.mark.slow
def test_launch_local_trains_under_the_agent_and_is_registered(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    from runner.data.franka import synth_franka

    env = dict(subprocess_env, RUNNER_DATA_DIR=str(tmp_path / "data"))
    synth_franka(
        tmp_path / "data" / "franka_cube_stack_synthetic", episodes=4, steps=40, image_size=32
    )
    run_dir = tmp_path / "run"
    done = _runner(
        ["launch", "franka_cube_stack", "--local", "--run-dir", str(run_dir),
         "--hub", "runner-test/franka-local", "--", *TINY],
        env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "job: franka_cube_stack (profile embedded: what runs on this machine)" in done.stderr
    run_id = next(line.split()[1] for line in done.stderr.splitlines() if line.startswith("run: "))
    launch = read_launch(run_dir)
    assert launch is not None
    assert (launch.run_id, launch.backend, launch.profile) == (run_id, "local", "embedded")
    assert launch.argv[-len(TINY) :] == tuple(TINY)
    assert launch.spec["hub"]["repo"] == "runner-test/franka-local"
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    assert ckpt is not None and ckpt.step == 16 and verify_checkpoint(ckpt) == []
    kinds = [e.kind for e in read_events(run_dir)]
    # No HF_TOKEN here: the agent says the checkpoints stay on this disk, and trains.
    assert kinds[:2] == ["push_disabled", "started"] and kinds[-1] == "finished"
    assert "checkpoints are not pushed to runner-test/franka-local" in done.stderr
    status = read_status(run_dir)
    assert status is not None and status.state == "finished"

    listed = _runner(["runs", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    (record,) = json.loads(listed.stdout)
    assert (record["run_id"], record["state"], record["exit_code"]) == (run_id, "finished", 0)
    assert record["backend"] == "local" and record["run_dir"] == str(run_dir)
    table = _runner(["runs"], env).stdout.splitlines()
    assert table[0].split() == [
        "RUN",
        "JOB",
        "BACKEND",
        "WHERE",
        "AGE",
        "STATE",
        "STEP",
        "PUSHED",
        "COST",
    ]
    assert table[1].split()[:3] == [run_id, "franka_cube_stack", "local"]
    assert table[1].split()[5:7] == ["finished", "16"]

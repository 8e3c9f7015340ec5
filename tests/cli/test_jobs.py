"""``runner jobs`` and ``runner jobs show`` as a user sees them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from runner.cli import main
from tests.conftest import RUNNER_BIN


def test_jobs_lists_every_shipped_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["job", "gpus", "image", "profiles", "description"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {
        "act_so101",
        "franka_cube_stack",
        "openpi_pi0",
        "pi0_so101",
        "robomimic_can",
        "smolvla_so101",
    }
    assert rows["franka_cube_stack"][1:4] == ["1", "runner/dino-wm:latest", "embedded"]
    assert rows["robomimic_can"][1] == "2"


def test_show_prints_the_resolved_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "show", "franka_cube_stack", "--profile", "embedded"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["profile"] == "embedded" and data["image"] == "runner/franka-embedded:latest"
    assert data["dataset"]["synthetic"] == {"episodes": 16, "steps": 120, "image_size": 64}
    assert data["restart"]["max_restarts"] == 5  # a default, filled in


def test_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "show", "pi0_so101", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dataset"]["repo"] == "danbhf/sim_pick_place_157ep"
    assert [s["name"] for s in data["secrets"]] == ["HF_TOKEN", "WANDB_API_KEY"]


def test_unknown_job_is_one_red_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "show", "franka"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: unknown job 'franka' (did you mean franka_cube_stack")
    assert len(captured.err.strip().splitlines()) == 1


def test_wrong_flag_is_one_line_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "show", "franka_cube_stack", "--profle", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: No such option: --profle")
    assert "(see `runner jobs show --help`)" in err
    assert len(err.splitlines()) == 1


def test_a_malformed_job_file_fails_the_listing_but_shows_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNNER_JOBS_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fine.yaml").write_text("command: python fine.py\ndescription: ok\n")
    (tmp_path / "broken.yaml").write_text("command: python x.py\nresources: {gpus: many}\n")
    assert main(["jobs"]) == 1
    captured = capsys.readouterr()
    assert "fine" in captured.out
    assert "broken.yaml: resources.gpus: Input should be a valid integer" in captured.err
    assert captured.err.strip().splitlines()[-1] == (
        "error: 1 job file(s) are invalid; fix them or move them out"
    )


@pytest.mark.slow
def test_real_binary_help_and_errors_have_no_traceback(subprocess_env: dict[str, str]) -> None:
    help_ = subprocess.run(
        [str(RUNNER_BIN), "--help"], capture_output=True, text=True, env=subprocess_env
    )
    assert help_.returncode == 0 and "jobs" in help_.stdout and "RUNNER_RUNS_DIR" in help_.stdout
    bad = subprocess.run(
        [str(RUNNER_BIN), "jobs", "show", "nope"],
        capture_output=True,
        text=True,
        env=subprocess_env,
    )
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr and bad.stderr.startswith("error: unknown job 'nope'")

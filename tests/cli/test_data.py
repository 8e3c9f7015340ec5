"""``runner data check`` and ``runner data synth``: the exact lines a user sees."""

from __future__ import annotations

import pickle
import shutil
import subprocess
from pathlib import Path

import pytest

from runner.cli import main
from runner.data import check_franka, synth_franka
from tests.conftest import RUNNER_BIN

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "good"
    synth_franka(path, episodes=3, steps=20, image_size=16)
    return path


@pytest.fixture
def ds(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "ds"))


def _frames(path: Path) -> int:
    with (path / "metadata.pkl").open("rb") as fh:
        return sum(pickle.load(fh)["episode_lengths"])


def test_check_a_good_dataset(ds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["data", "check", "franka_cube_stack", str(ds)])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out == f"{ds}: 3 episodes, T_max 20, images 16x16, {_frames(ds)} frames\n"
    assert err == f"{ds} is a valid franka_cube_stack dataset\n"


def test_check_lists_every_problem_and_exits_1(
    ds: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(torch.zeros(3, 20, 21), ds / "states.pth")
    shutil.rmtree(ds / "000001")
    with (ds / "metadata.pkl").open("wb") as fh:
        pickle.dump({"lengths": [20, 20, 20]}, fh)

    rc = main(["data", "check", "franka_cube_stack", str(ds)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert out.splitlines() == [
        f"{ds}: 3 episodes, T_max 20, images 16x16, 0 frames",
        "states.pth: last dimension is 21, expected 22 (shape (3, 20, 21))",
        "metadata.pkl: has no 'episode_lengths' (keys: 'lengths'); "
        "re-create it with pickle.dump({'episode_lengths': [...]}, f)",
        "000001/: episode folder is missing",
    ]
    assert err == f"error: 3 problems in {ds}\n"


def test_check_a_layout_without_a_checker(ds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["data", "check", "robomimic_can", str(ds)])
    out, err = capsys.readouterr()
    assert (rc, out) == (2, "")
    assert err == "error: no dataset checker for layout robomimic (job robomimic_can)\n"


def test_check_an_unknown_job(ds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["data", "check", "franka_cube_stak", str(ds)])
    _, err = capsys.readouterr()
    assert rc == 1
    assert err.startswith("error: unknown job 'franka_cube_stak' (did you mean franka_cube_stack?")


def test_check_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["data", "check", "franka_cube_stack", str(tmp_path / "nope")])
    out, err = capsys.readouterr()
    assert (rc, out) == (1, "")
    assert err == (
        f"error: no dataset at {tmp_path / 'nope'}; point at the folder that holds states.pth, "
        f"or make one with `runner data synth`\n"
    )


def test_synth_writes_a_dataset_that_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new"
    argv = ["data", "synth", "franka_cube_stack", str(path), "--episodes", "2", "--steps", "12"]
    rc = main([*argv, "--image-size", "8", "--seed", "3"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert check_franka(path).ok
    assert out == f"{path}: 2 episodes, T_max 12, images 8x8, {_frames(path)} frames\n"
    assert err.splitlines() == [
        f"synthesising 2 episodes x 12 steps (8px) at {path}",
        "  1/2 episodes",
        "  2/2 episodes",
        f"wrote {path}",
    ]


def test_synth_never_overwrites(ds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.name for p in ds.iterdir())
    rc = main(["data", "synth", "franka_cube_stack", str(ds), "--episodes", "1", "--steps", "4"])
    _, err = capsys.readouterr()
    assert rc == 1
    assert err.splitlines()[-1] == (
        f"error: {ds} already exists and is not an empty folder; runner never overwrites a "
        f"dataset: pick a new path or delete that one first"
    )
    assert sorted(p.name for p in ds.iterdir()) == before


def test_synth_rejects_too_few_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "synth", "franka_cube_stack", str(tmp_path / "x"), "--episodes", "1"]
    rc = main([*argv, "--steps", "1"])
    _, err = capsys.readouterr()
    assert rc == 2
    assert err.splitlines()[-1] == "error: steps must be at least 2 (got 1)"
    assert not (tmp_path / "x").exists()


def test_check_through_the_installed_command(ds: Path, subprocess_env: dict[str, str]) -> None:
    path = ds / "000002" / "obses.pth"
    path.write_bytes(path.read_bytes()[:500])
    result = subprocess.run(
        [str(RUNNER_BIN), "data", "check", "franka_cube_stack", str(ds)],
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr == f"error: 1 problem in {ds}\n"
    summary, problem = result.stdout.splitlines()
    assert summary.startswith(f"{ds}: 3 episodes, T_max 20, images 16x16, ")
    assert problem.startswith("000002/obses.pth: truncated or corrupt (its zip directory")

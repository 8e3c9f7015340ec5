"""check_franka and synth_franka on real files written with torch.save."""

from __future__ import annotations

import math
import os
import pickle
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runner.data import FrankaReport, Problem, check_franka, synth_franka
from runner.data.franka import DT
from runner.errors import DatasetError, UsageError

torch = pytest.importorskip("torch")

EPISODES, STEPS, SIZE = 4, 24, 16


@pytest.fixture(scope="session")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("good") / "franka_cube_stack_ds"
    synth_franka(path, episodes=EPISODES, steps=STEPS, image_size=SIZE, seed=1)
    return path


@pytest.fixture
def ds(good: Path, tmp_path: Path) -> Path:
    """A fresh copy of the good dataset for one test to break."""
    return Path(shutil.copytree(good, tmp_path / "ds"))


def _lengths(path: Path) -> list[int]:
    with (path / "metadata.pkl").open("rb") as fh:
        lengths: list[int] = pickle.load(fh)["episode_lengths"]
    return lengths


def _write_metadata(path: Path, meta: object) -> None:
    with (path / "metadata.pkl").open("wb") as fh:
        pickle.dump(meta, fh)


def _edit(path: Path, change: Callable[[Any], Any]) -> None:
    torch.save(change(torch.load(path)), path)


def _problem(report: FrankaReport, where: str, fragment: str) -> Problem:
    found = [p for p in report.problems if p.where == where and fragment in p.message]
    assert found, f"no problem at {where!r} with {fragment!r} in {report.problems}"
    return found[0]


# -- a good dataset ------------------------------------------------------------------------------


def test_synthetic_dataset_passes(good: Path) -> None:
    report = check_franka(good)
    assert report.ok, report.problems
    lengths = _lengths(good)
    assert len(lengths) == EPISODES
    assert all(math.ceil(0.7 * STEPS) <= n <= STEPS for n in lengths)
    assert (report.n_episodes, report.t_max, report.image_hw) == (EPISODES, STEPS, (SIZE, SIZE))
    assert report.total_frames == sum(lengths)
    assert sorted(p.name for p in good.iterdir()) == [
        "000000", "000001", "000002", "000003", "actions.pth", "metadata.pkl", "states.pth",
    ]  # fmt: skip


def test_synthetic_states_and_actions_are_consistent(good: Path) -> None:
    states = torch.load(good / "states.pth")
    actions = torch.load(good / "actions.pth")
    assert states.shape == (EPISODES, STEPS, 22) and states.dtype == torch.float32
    assert actions.shape == (EPISODES, STEPS, 9) and actions.dtype == torch.float32
    for i, n in enumerate(_lengths(good)):
        s, a = states[i, :n], actions[i, :n]
        assert not states[i, n:].any() and not actions[i, n:].any(), "padding must be zeros"
        torch.testing.assert_close(s[:, 3:7].norm(dim=1), torch.ones(n))  # unit quaternions
        q, qd = s[:, 8:15], s[:, 15:22]
        torch.testing.assert_close(qd[1:], (q[1:] - q[:-1]) / DT, atol=1e-4, rtol=1e-4)
        assert (q[1:] - q[:-1]).abs().max() < 0.5, "joint positions must move smoothly"
        torch.testing.assert_close(a[:-1, :7], q[1:])  # joint commands = next joint positions
        torch.testing.assert_close(a[:-1, 7], s[1:, 7] / 2)  # finger targets = next width / 2
        torch.testing.assert_close(a[:, 7], a[:, 8])
        gripper = s[:, 7]
        closed = int(gripper.argmin())
        assert gripper[0] > gripper[closed] < gripper[-1], "the gripper closes, then opens"


def test_synthetic_images_show_the_scene(good: Path) -> None:
    lengths = _lengths(good)
    obses = torch.load(good / "000000" / "obses.pth")
    assert obses.shape == (lengths[0], SIZE, SIZE, 3) and obses.dtype == torch.uint8
    first = obses[0].reshape(-1, 3).tolist()
    assert [210, 40, 40] in first and [40, 80, 210] in first, "both cubes are visible"
    assert not torch.equal(obses[0], obses[lengths[0] // 2]), "the scene changes over time"


def test_synth_is_deterministic_per_seed(tmp_path: Path, good: Path) -> None:
    synth_franka(tmp_path / "same", episodes=EPISODES, steps=STEPS, image_size=SIZE, seed=1)
    synth_franka(tmp_path / "other", episodes=EPISODES, steps=STEPS, image_size=SIZE, seed=2)
    for name in ("states.pth", "actions.pth", "000003/obses.pth"):
        assert torch.equal(torch.load(good / name), torch.load(tmp_path / "same" / name))
    assert not torch.equal(
        torch.load(good / "states.pth"), torch.load(tmp_path / "other" / "states.pth")
    )


def test_synth_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    target = tmp_path / "ds"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="already exists and is not an empty folder"):
        synth_franka(target, episodes=1, steps=4, image_size=8)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_synth_fills_an_empty_folder(tmp_path: Path) -> None:
    target = tmp_path / "ds"
    target.mkdir()
    report = synth_franka(target, episodes=1, steps=4, image_size=8)
    assert report.ok and report.n_episodes == 1


def test_interrupted_synth_leaves_nothing_behind(tmp_path: Path) -> None:
    def interrupt(done: int, total: int) -> None:
        assert (done, total) == (1, 3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth_franka(tmp_path / "ds", episodes=3, steps=4, image_size=8, on_episode=interrupt)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"episodes": 0, "steps": 10}, "episodes must be at least 1"),
        ({"episodes": 1, "steps": 1}, "steps must be at least 2"),
        ({"episodes": 1, "steps": 10, "image_size": 4}, "image_size must be at least 8"),
    ],
)
def test_synth_rejects_bad_sizes(tmp_path: Path, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        synth_franka(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


# -- each way a user breaks it -------------------------------------------------------------------


def test_wrong_state_dim(ds: Path) -> None:
    torch.save(torch.zeros(EPISODES, STEPS, 21), ds / "states.pth")
    report = check_franka(ds)
    assert report.problems == (
        Problem("states.pth", f"last dimension is 21, expected 22 (shape (4, {STEPS}, 21))"),
    )


def test_float64_actions(ds: Path) -> None:
    _edit(ds / "actions.pth", lambda a: a.double())
    assert check_franka(ds).problems == (
        Problem("actions.pth", "dtype is float64, expected float32"),
    )


def test_episode_count_mismatch(ds: Path) -> None:
    _edit(ds / "states.pth", lambda s: s[:3].clone())
    report = check_franka(ds)
    assert report.problems == (
        Problem("states.pth", "has 3 episodes but metadata.pkl episode_lengths has 4"),
    )
    assert report.n_episodes == EPISODES


def test_t_max_mismatch(ds: Path) -> None:
    _edit(ds / "actions.pth", lambda a: a[:, :-1].clone())
    _problem(check_franka(ds), "actions.pth", f"has T_max {STEPS - 1} but states.pth has {STEPS}")


def test_length_longer_than_t_max(ds: Path) -> None:
    lengths = _lengths(ds)
    lengths[1] = STEPS + 6
    _write_metadata(ds, {"episode_lengths": lengths})
    report = check_franka(ds)
    _problem(report, "metadata.pkl", f"episode_lengths[1] is {STEPS + 6}, more than T_max {STEPS}")
    _problem(report, "000001/obses.pth", f"but metadata.pkl episode_lengths[1] is {STEPS + 6}")


def test_non_positive_length(ds: Path) -> None:
    lengths = _lengths(ds)
    lengths[2] = 0
    _write_metadata(ds, {"episode_lengths": lengths})
    _problem(check_franka(ds), "metadata.pkl", "episode_lengths[2] is 0, not positive")


def test_missing_episode_folder(ds: Path) -> None:
    shutil.rmtree(ds / "000002")
    assert check_franka(ds).problems == (Problem("000002/", "episode folder is missing"),)


def test_unexpected_episode_folders(ds: Path) -> None:
    shutil.copytree(ds / "000000", ds / "000004")
    (ds / "17").mkdir()
    (ds / "notes").mkdir()  # not an episode name: none of the checker's business
    report = check_franka(ds)
    expected = "unexpected episode folder; for 4 episodes they are 000000 to 000003"
    assert report.problems == (Problem("000004/", expected), Problem("17/", expected))


def test_obses_frame_count_mismatch(ds: Path) -> None:
    n = _lengths(ds)[1]
    _edit(ds / "000001" / "obses.pth", lambda o: o[:-1].clone())
    assert check_franka(ds).problems == (
        Problem(
            "000001/obses.pth", f"has {n - 1} frames but metadata.pkl episode_lengths[1] is {n}"
        ),
    )


def test_obses_wrong_dtype_and_channels(ds: Path) -> None:
    _edit(ds / "000000" / "obses.pth", lambda o: torch.zeros(*o.shape[:3], 4))
    report = check_franka(ds)
    _problem(report, "000000/obses.pth", "dtype is float32, expected uint8")
    _problem(report, "000000/obses.pth", "has 4 channels")


def test_obses_of_a_different_image_size(ds: Path) -> None:
    _edit(ds / "000002" / "obses.pth", lambda o: o[:, :8, :12].clone())
    report = check_franka(ds)
    assert report.image_hw == (SIZE, SIZE)
    assert report.problems == (
        Problem("000002/obses.pth", f"images are 8x12 but the other episodes' are {SIZE}x{SIZE}"),
    )


def test_truncated_obses(ds: Path) -> None:
    path = ds / "000003" / "obses.pth"
    path.write_bytes(path.read_bytes()[:-4000])
    (problem,) = check_franka(ds).problems
    assert problem.where == "000003/obses.pth"
    assert problem.message.startswith("truncated or corrupt (its zip directory is unreadable")


def test_missing_obses(ds: Path) -> None:
    (ds / "000001" / "obses.pth").unlink()
    assert check_franka(ds).problems == (Problem("000001/obses.pth", "missing"),)


def test_nan_inside_an_episode(ds: Path) -> None:
    states = torch.load(ds / "states.pth")
    states[2, 5, 9] = float("nan")
    states[2, 7, 0] = float("inf")
    torch.save(states, ds / "states.pth")
    message = "episode 2 has NaN/inf at 2 step(s) (first at step 5; dims 0, 9 of 22)"
    assert check_franka(ds).problems == (Problem("states.pth", message),)


def test_nan_in_the_padding_is_not_a_problem(ds: Path) -> None:
    lengths = _lengths(ds)
    short = min(range(EPISODES), key=lambda i: lengths[i])
    assert lengths[short] < STEPS, "the fixture needs a padded episode"
    actions = torch.load(ds / "actions.pth")
    actions[short, lengths[short] :] = float("nan")
    torch.save(actions, ds / "actions.pth")
    assert check_franka(ds).ok
    actions[short, lengths[short] - 1, 8] = float("nan")
    torch.save(actions, ds / "actions.pth")
    _problem(check_franka(ds), "actions.pth", f"episode {short} has NaN/inf at 1 step(s)")


def test_corrupted_metadata(ds: Path) -> None:
    (ds / "metadata.pkl").write_bytes(b"\x80\x04garbage")
    report = check_franka(ds)
    problem = _problem(report, "metadata.pkl", "unreadable (")
    assert problem.message.endswith("re-create it with pickle.dump({'episode_lengths': [...]}, f)")
    assert report.n_episodes == EPISODES  # taken from states.pth instead
    assert report.total_frames == 0


def test_metadata_without_episode_lengths(ds: Path) -> None:
    _write_metadata(ds, {"lengths": [1, 2]})
    _problem(check_franka(ds), "metadata.pkl", "has no 'episode_lengths' (keys: 'lengths')")


def test_metadata_with_numpy_values_is_fine(ds: Path) -> None:
    lengths = _lengths(ds)
    _write_metadata(
        ds, {"episode_lengths": np.array(lengths, dtype=np.int64), "n": np.int32(4), "s": {1}}
    )
    assert check_franka(ds).ok
    _write_metadata(ds, {"episode_lengths": [np.int64(n) for n in lengths]})
    assert check_franka(ds).ok


def test_metadata_episode_lengths_of_floats(ds: Path) -> None:
    _write_metadata(ds, {"episode_lengths": [1.5, 2.0]})
    _problem(check_franka(ds), "metadata.pkl", "episode_lengths is [1.5, 2.0], expected a list")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_metadata_with_code_is_refused_not_run(ds: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _write_metadata(ds, {"episode_lengths": _lengths(ds), "x": _Payload(marker)})
    problem = _problem(check_franka(ds), "metadata.pkl", "mkdir, which runner will not execute")
    assert problem.message.startswith("holds a pickled ")
    assert not marker.exists()


def test_missing_states(ds: Path) -> None:
    (ds / "states.pth").unlink()
    report = check_franka(ds)
    assert report.problems == (Problem("states.pth", "missing"),)
    assert (report.n_episodes, report.t_max) == (EPISODES, STEPS)  # from metadata and actions


def test_every_problem_is_reported_together(ds: Path) -> None:
    torch.save(torch.zeros(EPISODES, STEPS, 21, dtype=torch.float64), ds / "states.pth")
    shutil.rmtree(ds / "000001")
    obses = ds / "000002" / "obses.pth"
    obses.write_bytes(obses.read_bytes()[:100])
    (ds / "metadata.pkl").write_bytes(b"not a pickle")
    report = check_franka(ds)
    assert not report.ok
    assert [p.where for p in report.problems] == [
        "states.pth", "states.pth", "metadata.pkl", "000001/", "000002/obses.pth",
    ]  # fmt: skip


def test_not_a_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no dataset at"):
        check_franka(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        check_franka(tmp_path / "file")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_check_reads_headers_not_images(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    synth_franka(path, episodes=3, steps=40, image_size=128)
    images = sum(p.stat().st_size for p in path.glob("*/obses.pth"))
    assert images > 3_000_000
    small = sum((path / n).stat().st_size for n in ("states.pth", "actions.pth", "metadata.pkl"))

    with open("/proc/self/io") as fh:
        before = next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))
    assert check_franka(path).ok
    with open("/proc/self/io") as fh:
        read = next(int(line.split()[1]) for line in fh if line.startswith("rchar:")) - before
    assert read < 2 * small + 200_000, f"read {read} bytes; images are {images}"


@pytest.mark.slow
def test_check_of_a_full_size_dataset_is_under_two_seconds(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    synth_franka(path, episodes=100, steps=935, image_size=8)
    start = time.perf_counter()
    report = check_franka(path)
    elapsed = time.perf_counter() - start
    assert report.ok and report.n_episodes == 100 and report.t_max == 935
    assert elapsed < 2.0

"""Local rotation: the newest K stay, older ones go only once the Hub has them."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from runner.harness import list_checkpoints
from runner.hub.client import HubClient
from runner.hub.discovery import LocalCheckpoint, LocalFile, Scanner
from runner.hub.pusher import PushConfig, Pusher
from runner.hub.rotation import DELETING_PREFIX, plan_rotation, rotate
from tests.fakes.hub_server import HubServer
from tests.hub import REPO, dino_file, events, harness_checkpoint
from tests.hub import client_fixture as client_fixture
from tests.hub import hf_env_fixture as hf_env_fixture
from tests.hub import hub_fixture as hub_fixture

FAST = PushConfig(
    keep=2, interval_s=0.05, settle_s=0, backoff_initial_s=5, min_commit_interval_s=0, nice=0
)

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def fake(step: int, *, snapshot: bool = False) -> LocalCheckpoint:
    path = Path(f"/nowhere/step_{step:09d}")
    files = (LocalFile("state.pt", 10),)
    return LocalCheckpoint(step, "harness", path, path, files, snapshot=snapshot)


def steps(root: Path) -> list[int]:
    return [c.step for c in list_checkpoints(root)]


# -- the plan ------------------------------------------------------------------------------------


def test_plan_keeps_the_newest_k_and_never_the_newest_or_a_snapshot() -> None:
    checkpoints = [fake(s) for s in (300, 100, 200, 400)]
    assert [c.step for c in plan_rotation(checkpoints, 2)] == [100, 200]
    assert [c.step for c in plan_rotation(checkpoints, 0)] == [100, 200, 300]  # keep >= 1
    assert plan_rotation(checkpoints[:1], 1) == []
    with_snapshot = [fake(100), fake(200), fake(500, snapshot=True)]
    assert [c.step for c in plan_rotation(with_snapshot, 1)] == [100]  # not 500, and 200 stays


def test_rotate_deletes_only_what_is_confirmed_and_survives_errors(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (100, 200, 300, 400):
        harness_checkpoint(root, step)
    found = Scanner("harness", root).scan().complete
    problems: list[str] = []

    def confirmed(checkpoint: LocalCheckpoint) -> bool:
        if checkpoint.step == 200:
            raise ConnectionError("Hub unreachable")
        return checkpoint.step != 300

    deleted = rotate(found, 1, confirmed, on_error=lambda c, why: problems.append(why))

    assert [d.checkpoint.step for d in deleted] == [100]
    assert deleted[0].freed_bytes == found[0].size
    assert steps(root) == [200, 300, 400]
    assert problems == ["not deleted: cannot confirm it on the Hub (Hub unreachable)"]
    assert not [p for p in root.iterdir() if p.name.startswith(DELETING_PREFIX)]


def test_a_killed_deletion_leaves_a_hidden_leftover_that_the_next_rotation_removes(
    tmp_path: Path,
) -> None:
    root = tmp_path / "checkpoints"
    for step in (100, 200):
        harness_checkpoint(root, step)
    leftover = root / f"{DELETING_PREFIX}step_000000050-1-2"
    shutil.copytree(root / "step_000000100", leftover)  # what a kill mid-rmtree leaves
    assert steps(root) == [100, 200]  # never taken for a checkpoint
    rotate(Scanner("harness", root).scan().complete, 5, lambda c: False)
    assert not leftover.exists()


# -- through the pusher and the Hub --------------------------------------------------------------


def test_nothing_is_deleted_before_the_hub_has_it(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    root = run / "checkpoints"
    for step in (100, 200, 300):
        harness_checkpoint(root, step)
    now = [time.time()]
    pusher = Pusher(client, REPO, run, config=FAST, clock=lambda: now[0])
    hub.faults.add(method="POST", path_regex=r"/commit/", status=503, times=None)

    for _ in range(3):
        result = pusher.poll_once()
        now[0] += 3600
    assert result.deleted == [] and steps(root) == [100, 200, 300]

    hub.faults.clear()
    result = pusher.poll_once()

    assert [p.step for p in result.pushed] == [300, 200, 100]
    assert result.deleted == [100] and steps(root) == [200, 300]
    rotated = events(run, "rotate")
    assert [e.evidence["step"] for e in rotated] == [100]
    assert "it is on runner-test/ckpt" in rotated[0].message


def test_a_checkpoint_the_hub_lost_is_not_deleted(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    root = run / "checkpoints"
    harness_checkpoint(root, 100)
    pusher = Pusher(client, REPO, run, config=FAST)
    pusher.poll_once()
    from huggingface_hub import HfApi

    HfApi(endpoint=hub.url, token=hub.token).delete_folder("checkpoints", repo_id=REPO)
    for step in (200, 300):
        harness_checkpoint(root, step)

    result = pusher.poll_once()

    assert result.deleted == [] and steps(root) == [100, 200, 300]  # 100 is gone from the Hub


def test_dino_rotation_never_deletes_model_latest(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    folder = tmp_path / "outputs" / "2025-01-02" / "10-00-00" / "checkpoints"
    for epoch in (1, 2, 3):
        dino_file(folder, f"model_{epoch}.pth", epoch=epoch, seed=str(epoch).encode())
    dino_file(folder, "model_latest.pth", epoch=3, seed=b"3")
    config = PushConfig(keep=1, settle_s=0, min_commit_interval_s=0, nice=0)
    pusher = Pusher(client, REPO, tmp_path / "run", "dino_wm", tmp_path / "outputs", config=config)

    result = pusher.poll_once()

    assert [p.step for p in result.pushed] == [3, 2, 1] and result.deleted == [1, 2]
    assert sorted(p.name for p in folder.iterdir()) == ["model_3.pth", "model_latest.pth"]
    assert hub.list_files(REPO)["checkpoints/step_000000002/model_2.pth"] > 0


def test_ensure_space_pushes_and_rotates_first(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    root = run / "checkpoints"
    for step in (100, 200, 300, 400):
        harness_checkpoint(root, step, size=100_000)
    one = list_checkpoints(root)[0].size
    capacity = 5 * one

    def free(_: Path) -> int:
        return capacity - sum(c.size for c in list_checkpoints(root))

    pusher = Pusher(client, REPO, run, config=FAST, free_bytes=free)  # keep=2
    assert free(root) == one

    assert pusher.ensure_space(3 * one)  # rotating to keep=2 frees enough
    assert steps(root) == [300, 400]
    assert pusher.ensure_space(4 * one)  # then below keep, down to the newest alone
    assert steps(root) == [400]
    assert set(hub.list_files(REPO)) >= {
        f"checkpoints/step_{s:09d}/manifest.json" for s in (100, 200, 300, 400)
    }
    assert not events(run, "push_rotate_failed")


def test_ensure_space_that_cannot_free_enough_is_a_critical_event(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    root = run / "checkpoints"
    for step in (100, 200, 300):
        harness_checkpoint(root, step)
    pusher = Pusher(client, REPO, run, config=FAST, free_bytes=lambda _: 10)
    hub.faults.add(method="POST", path_regex=r"/commit/", status=503, times=None)

    assert not pusher.ensure_space(10**9)

    assert steps(root) == [100, 200, 300]  # the Hub has none of them: nothing deleted
    (event,) = events(run, "push_rotate_failed")
    assert event.severity == "critical"
    assert event.evidence["unpushed_steps"] == [100, 200, 300]
    assert "not on the Hub yet" in event.message
    assert "HTTP 503" in event.evidence["last_failure"]


def test_a_poll_below_the_reserve_frees_space_by_itself(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    root = run / "checkpoints"
    for step in (100, 200, 300):
        harness_checkpoint(root, step)
    one = list_checkpoints(root)[0].size
    config = PushConfig(
        keep=3, settle_s=0, min_commit_interval_s=0, nice=0, reserve_bytes=2 * one + 1
    )

    def free(_: Path) -> int:
        return 4 * one - sum(c.size for c in list_checkpoints(root))

    result = Pusher(client, REPO, run, config=config, free_bytes=free).poll_once()

    assert result.deleted == [100, 200] and steps(root) == [300]


def test_a_pusher_from_a_job_spec_takes_repo_layout_folder_and_keep(
    client: HubClient, tmp_path: Path
) -> None:
    from runner.hub.client import HubError
    from runner.spec import load_job

    pusher = Pusher.from_spec(client, load_job("act_so101"), tmp_path / "run")
    assert (pusher.repo, pusher.layout) == ("danbhf/act_sim_pick_place_100k", "lerobot")
    assert pusher.root == tmp_path / "run" / "outputs/train/act_so101/checkpoints"
    assert pusher.config.keep == load_job("act_so101").checkpoints.keep
    assert pusher.config.reserve_bytes == int(0.6 * 1.2e9)
    assert pusher.config.private is True
    with pytest.raises(HubError, match="has no hub: section"):
        Pusher.from_spec(client, load_job("franka_cube_stack"), tmp_path / "run")

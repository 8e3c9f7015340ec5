"""The pusher against the loopback Hub, with faults injected: nothing lost, nothing re-sent.

Every test drives the real huggingface_hub client through :class:`HubClient` and reads the
emulator's request log to state what went over the wire.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.harness import latest_checkpoint, list_checkpoints, verify_checkpoint
from runner.hub.client import HubAuthError, HubClient, HubError, redact
from runner.hub.discovery import Scanner
from runner.hub.pusher import (
    STATE_FILE,
    PushConfig,
    Pusher,
    pull_checkpoint,
    pull_latest,
    push_checkpoint,
    remote_checkpoints,
    retag,
)
from tests.fakes.hub_server import HubServer
from tests.hub import (
    BIG,
    LFS_PUT,
    REPO,
    commits,
    dino_file,
    events,
    harness_checkpoint,
    lerobot_checkpoint,
    lfs_puts,
)
from tests.hub import client_fixture as client_fixture
from tests.hub import hf_env_fixture as hf_env_fixture
from tests.hub import hub_fixture as hub_fixture

ROOT = Path(__file__).resolve().parents[2]
FAST = PushConfig(
    keep=3,
    interval_s=0.05,
    settle_s=0,
    backoff_initial_s=5,
    backoff_max_s=60,
    min_commit_interval_s=0,
    nice=0,
)

# The client itself passes raw bytes as `data=` to httpx (its LFS PUT): not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(client: HubClient, run_dir: Path, clock: Clock | None = None, **changes: object) -> Pusher:
    config = PushConfig(**{**FAST.__dict__, **changes})  # type: ignore[arg-type]
    return Pusher(client, REPO, run_dir, "harness", config=config, clock=clock or time.time)


def state(run_dir: Path) -> dict[str, object]:
    data = json.loads((run_dir / STATE_FILE).read_text())
    assert isinstance(data, dict)
    return data


def remote_sizes(hub: HubServer, step: int) -> dict[str, int]:
    prefix = f"checkpoints/step_{step:09d}/"
    return {p[len(prefix) :]: s for p, s in hub.list_files(REPO).items() if p.startswith(prefix)}


def local_sizes(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()
    }


# -- the happy path ------------------------------------------------------------------------------


def test_each_checkpoint_is_pushed_tagged_recorded_and_reported(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    first = harness_checkpoint(run / "checkpoints", 100, size=BIG, metrics={"loss": 0.25})
    second = harness_checkpoint(run / "checkpoints", 200, size=5000)
    pusher = make(client, run)

    result = pusher.poll_once()

    assert [p.step for p in result.pushed] == [200, 100]  # newest first
    assert result.failed == [] and result.deleted == []
    assert remote_sizes(hub, 100) == local_sizes(first)
    assert remote_sizes(hub, 200) == local_sizes(second)
    assert sorted(r.bytes_in for r in lfs_puts(hub)) == sorted(
        [(first / "state.pt").stat().st_size, (second / "state.pt").stat().st_size]
    )
    refs = client.refs(REPO)
    assert refs.tags["step-100"] == state(run)["pushed"]["100"]["commit"]  # type: ignore[index]
    assert refs.tags["latest"] == refs.tags["step-200"]  # not moved back by the back-fill
    assert "step 100: loss=0.25" in _commit_titles(hub)
    pushed = events(run, "push")
    assert [e.evidence["step"] for e in pushed] == [200, 100]
    assert pushed[1].severity == "info"
    assert pushed[1].evidence["bytes"] == sum(local_sizes(first).values())
    assert pushed[1].evidence["mb_per_s"] > 0 and pushed[1].evidence["seconds"] > 0
    assert "MB/s" in pushed[1].message

    before = len(hub.requests)
    assert pusher.poll_once().pushed == []  # nothing new: not even a request
    assert hub.requests[before:] == []


def _commit_titles(hub: HubServer) -> list[str]:
    from huggingface_hub import HfApi

    return [c.title for c in HfApi(endpoint=hub.url, token=hub.token).list_repo_commits(REPO)]


def test_a_repush_of_the_same_checkpoint_sends_nothing_and_commits_nothing(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    harness_checkpoint(run / "checkpoints", 100, size=BIG)
    make(client, run).poll_once()
    (run / STATE_FILE).unlink()  # forget everything: a new agent on the same folder
    mark, stats = len(hub.requests), hub.stats

    result = make(client, run).poll_once()

    assert [(p.step, p.uploaded) for p in result.pushed] == [(100, False)]
    assert lfs_puts(hub, mark) == [] and commits(hub, mark) == []
    assert hub.stats.lfs_bytes_received == stats.lfs_bytes_received
    assert hub.stats.commits == stats.commits
    assert "nothing sent" in events(run, "push")[-1].message


def test_a_foreign_checkpoint_pushed_again_goes_through_upload_folder_and_sends_nothing(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    root = tmp_path / "lerobot"
    folder = lerobot_checkpoint(root, 2000, size=BIG)
    client.ensure_repo(REPO)
    checkpoint = Scanner("lerobot", root, settle_s=0).scan().complete[0]
    first = push_checkpoint(client, REPO, checkpoint)
    assert remote_sizes(hub, 2000) == local_sizes(folder)
    assert "pretrained_model/model.safetensors" in remote_sizes(hub, 2000)
    mark, stats = len(hub.requests), hub.stats

    again = push_checkpoint(client, REPO, checkpoint)  # no sha256 known: the client checks

    assert again.commit == first.commit
    assert lfs_puts(hub, mark) == [] and commits(hub, mark) == []
    assert hub.stats.lfs_bytes_received == stats.lfs_bytes_received


# -- faults --------------------------------------------------------------------------------------


def test_a_503_on_commit_backs_off_and_the_retry_resends_no_lfs_bytes(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    folder = harness_checkpoint(run / "checkpoints", 100, size=BIG)
    clock = Clock()
    pusher = make(client, run, clock)
    hub.faults.add(method="POST", path_regex=r"/commit/", status=503)

    result = pusher.poll_once()

    assert result.pushed == [] and [s for s, _ in result.failed] == [100]
    assert remote_sizes(hub, 100) == {}
    assert folder.is_dir() and verify_checkpoint(latest_checkpoint(run / "checkpoints")) == []  # type: ignore[arg-type]
    failed = events(run, "push_failed")[-1]
    assert failed.severity == "warning"
    assert "HTTP 503" in failed.message and "retrying in 5 s" in failed.message
    assert failed.evidence["retry_in_s"] == 5 and failed.evidence["transient"] is True
    assert state(run)["failure"]["attempts"] == 1  # type: ignore[index]

    mark = len(hub.requests)
    assert pusher.poll_once().pushed == []  # still inside the back-off: no request at all
    assert hub.requests[mark:] == []

    clock.advance(5)
    result = pusher.poll_once()

    assert [p.step for p in result.pushed] == [100]
    assert lfs_puts(hub, mark) == []  # the LFS object from the failed try was kept
    assert remote_sizes(hub, 100) == local_sizes(folder)
    assert state(run)["failure"] is None


def test_a_connection_reset_on_the_commit_is_retried_by_the_pusher(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    folder = harness_checkpoint(run / "checkpoints", 100, size=BIG)
    clock = Clock()
    pusher = make(client, run, clock)
    hub.faults.add(method="POST", path_regex=r"/commit/", reset=True)

    assert pusher.poll_once().failed
    assert "network error" in events(run, "push_failed")[-1].message
    clock.advance(5)
    assert [p.step for p in pusher.poll_once().pushed] == [100]
    assert remote_sizes(hub, 100) == local_sizes(folder)


def test_a_connection_reset_mid_upload_is_retried_and_the_file_arrives_whole(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    folder = harness_checkpoint(run / "checkpoints", 100, size=BIG)
    fault = hub.faults.add(method="PUT", path_regex=LFS_PUT, reset=True)

    result = make(client, run).poll_once()  # the client retries the PUT itself (after 1 s)

    assert fault.hits == 1 and [p.step for p in result.pushed] == [100]
    puts = lfs_puts(hub)
    assert [r.status for r in puts] == [None, 200]
    size = (folder / "state.pt").stat().st_size
    assert (
        hub.read_file(REPO, "checkpoints/step_000000100/state.pt")
        == (folder / "state.pt").read_bytes()
    )
    assert puts[1].bytes_in == size


def test_a_429_with_retry_after_on_the_commit_is_honoured(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    harness_checkpoint(run / "checkpoints", 100)
    clock = Clock()
    pusher = make(client, run, clock, backoff_initial_s=1)
    hub.faults.add(method="POST", path_regex=r"/commit/", status=429, retry_after=40)

    pusher.poll_once()

    failed = events(run, "push_failed")[-1]
    assert failed.evidence["status"] == 429 and failed.evidence["retry_in_s"] == 40
    clock.advance(39)
    assert pusher.poll_once().pushed == []
    clock.advance(1)
    assert [p.step for p in pusher.poll_once().pushed] == [100]


@pytest.mark.slow
def test_a_429_with_retry_after_on_the_lfs_batch_is_waited_out_by_the_client(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    harness_checkpoint(run / "checkpoints", 100, size=BIG)
    hub.faults.add(method="POST", path_regex=r"/objects/batch$", status=429, retry_after=1)
    result = make(client, run).poll_once()
    assert [p.step for p in result.pushed] == [100] and result.failed == []
    batches = [r for r in hub.requests if r.path.endswith("/objects/batch")]
    assert [r.status for r in batches] == [429, 200]
    assert batches[1].started - batches[0].started >= 1.9


def test_failures_back_off_exponentially_and_the_schedule_survives_a_restart(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    harness_checkpoint(run / "checkpoints", 100)
    clock = Clock()
    hub.faults.add(method="POST", path_regex=r"/commit/", status=502, times=3)
    pusher = make(client, run, clock, backoff_initial_s=2, backoff_max_s=5)
    delays = []
    for _ in range(3):
        pusher.poll_once()
        delays.append(events(run, "push_failed")[-1].evidence["retry_in_s"])
        clock.advance(delays[-1])
    assert delays == [2, 4, 5]

    clock.advance(-2)  # the agent restarts 3 s into the last 5 s wait
    restarted = make(client, run, clock, backoff_initial_s=2, backoff_max_s=5)
    mark = len(hub.requests)
    assert restarted.poll_once().pushed == [] and hub.requests[mark:] == []
    clock.advance(2)
    assert [p.step for p in restarted.poll_once().pushed] == [100]


def test_a_checkpoint_rewritten_during_its_upload_is_not_confirmed(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    folder = tmp_path / "checkpoints"
    latest = dino_file(folder, "model_latest.pth", epoch=3, size=BIG, seed=b"three")
    scan = Scanner("dino_wm", folder, settle_s=0).scan()
    (checkpoint,) = scan.complete
    assert checkpoint.snapshot and checkpoint.step == 3
    client.ensure_repo(REPO)
    hub.faults.add(method="PUT", path_regex=LFS_PUT, delay_s=0.5)

    import threading

    def overwrite() -> None:  # the trainer's next epoch, mid-upload
        time.sleep(0.2)
        dino_file(folder, "model_latest.pth", epoch=4, size=BIG, seed=b"four")

    writer = threading.Thread(target=overwrite)
    writer.start()
    with pytest.raises(HubError, match="changed on disk during its upload") as err:
        push_checkpoint(client, REPO, checkpoint)
    writer.join()
    assert err.value.transient
    assert "latest" not in client.refs(REPO).tags  # never tagged as a good checkpoint
    assert latest.exists()


def test_the_background_thread_pushes_and_stops(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    pusher = make(client, run).start()
    try:
        harness_checkpoint(run / "checkpoints", 100)
        deadline = time.monotonic() + 20
        while not events(run, "push") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert events(run, "push")[0].evidence["step"] == 100
    finally:
        assert pusher.stop(timeout=10)
    assert not pusher.running


def test_the_final_flush_pushes_a_foreign_checkpoint_that_has_not_settled(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    """LeRobot saves last at its final step and the run ends right after: the flush at the end
    (the trainer gone) takes that checkpoint whole instead of waiting settle_s for it, and
    without ``writer_gone`` it is still left to settle."""
    run, root = tmp_path / "run", tmp_path / "lerobot"
    lerobot_checkpoint(root, 1040)
    config = PushConfig(**{**FAST.__dict__, "settle_s": 600.0})
    pusher = Pusher(client, REPO, run, "lerobot", root, config=config)
    assert pusher.flush(1.0) is True  # nothing it may push yet: nothing is waiting
    assert not events(run, "push")
    assert pusher.flush(30.0, writer_gone=True) is True
    assert [e.evidence["step"] for e in events(run, "push")] == [1040]
    assert remote_sizes(hub, 1040)


# -- the token -----------------------------------------------------------------------------------


def test_the_token_never_appears_in_events_state_errors_or_logs(
    hub: HubServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    run = tmp_path / "run"
    harness_checkpoint(run / "checkpoints", 100, size=BIG)
    good = HubClient(endpoint=hub.url, token=hub.token)
    clock = Clock()
    hub.faults.add(method="POST", path_regex=r"/commit/", status=503)
    hub.faults.add(method="POST", path_regex=r"/commit/", status=500, message=f"echo {hub.token}")
    pusher = make(good, run, clock)
    pusher.poll_once()
    clock.advance(10)
    pusher.poll_once()
    clock.advance(30)
    pusher.poll_once()
    assert events(run, "push")

    wrong_token = "hf_WrongButSecretTokenValue0123456789"
    wrong = HubClient(endpoint=hub.url, token=wrong_token)
    with pytest.raises(HubAuthError) as refused:
        wrong.ensure_repo("runner-test/other")
    other_run = tmp_path / "other"
    harness_checkpoint(other_run / "checkpoints", 100)
    Pusher(wrong, REPO, other_run, config=FAST).poll_once()

    texts = [
        (run / "events.jsonl").read_text(),
        (run / STATE_FILE).read_text(),
        (other_run / "events.jsonl").read_text(),
        str(refused.value),
        repr(good),
        repr(wrong),
        # Every log line but the transport's raw trace of response headers, where the server's
        # own echo of the token (scripted above) is quoted verbatim.
        "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpcore")),
    ]
    assert "HTTP 401" in str(refused.value) and "HF_TOKEN" in str(refused.value)
    assert "echo ***" in texts[0]  # what the server echoed back was redacted
    for text in texts:
        assert hub.token not in text
        assert wrong_token not in text
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer ***"
    assert redact("PUT http://h/x?sig=secret") == "PUT http://h/x"


def test_a_write_without_a_token_is_one_clear_error(hub: HubServer, tmp_path: Path) -> None:
    client = HubClient(endpoint=hub.url)
    assert not client.has_token
    with pytest.raises(HubAuthError, match=r"^no Hugging Face token for writing to .*HF_TOKEN"):
        client.require_token()


# -- killed and restarted ------------------------------------------------------------------------


def _pusher_process(
    run: Path, hub: HubServer, tmp_path: Path, *extra: str
) -> subprocess.Popen[str]:
    env = {**os.environ, **hub.client_env(tmp_path / "hf_sub"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    args = [
        sys.executable,
        "-m",
        "runner.hub.pusher",
        str(run),
        "--repo",
        REPO,
        "--interval",
        "0.1",
        "--backoff",
        "0.2",
        "--min-commit-interval",
        "0",
        "--keep",
        "1",
        "--nice",
        "0",
        *extra,
    ]
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow
def test_the_pusher_killed_mid_upload_loses_nothing_and_resumes(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    root = run / "checkpoints"
    old = harness_checkpoint(root, 100, size=BIG)
    new = harness_checkpoint(root, 200, size=BIG + 4096)
    sizes = {100: local_sizes(old), 200: local_sizes(new)}
    stall = hub.faults.add(method="PUT", path_regex=LFS_PUT, delay_s=4)

    process = _pusher_process(run, hub, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while stall.hits == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stall.hits == 1, "the upload never started"
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode()
        assert hub.token not in cmdline
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    assert hub.stats.commits == 0
    assert [c.step for c in list_checkpoints(root)] == [100, 200]  # nothing deleted
    assert not (run / STATE_FILE).exists() or state(run)["pushed"] == {}

    process = _pusher_process(run, hub, tmp_path)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if len(events(run, "push")) == 2 and events(run, "rotate"):
                break
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    assert hub.token not in out

    assert remote_sizes(hub, 100) == sizes[100] and remote_sizes(hub, 200) == sizes[200]
    assert [c.step for c in list_checkpoints(root)] == [200]  # keep=1: 100 rotated...
    log = events(run)
    pushed_at = {e.evidence["step"]: i for i, e in enumerate(log) if e.kind == "push"}
    deleted_at = {e.evidence["step"]: i for i, e in enumerate(log) if e.kind == "rotate"}
    assert deleted_at == {100: deleted_at[100]} and pushed_at[100] < deleted_at[100]  # ...after
    assert set(state(run)["pushed"]) == {"100", "200"}  # type: ignore[arg-type]

    (run / STATE_FILE).unlink()
    mark = len(hub.requests)
    again = _pusher_process(run, hub, tmp_path, "--once")
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0, out
    assert lfs_puts(hub, mark) == [] and commits(hub, mark) == []


# -- the other direction: pull, list, retag ------------------------------------------------------


def test_a_fresh_folder_pulls_the_newest_checkpoint_and_the_harness_finds_it(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    harness_checkpoint(run / "checkpoints", 100, size=BIG)
    newest = harness_checkpoint(run / "checkpoints", 200, size=3000, metrics={"loss": 0.1})
    make(client, run).poll_once()

    fresh = tmp_path / "elsewhere" / "checkpoints"
    pulled = pull_latest(client, REPO, fresh)

    assert pulled == fresh / "step_000000200"
    found = latest_checkpoint(fresh)
    assert found is not None and found.step == 200 and found.path == pulled
    assert verify_checkpoint(found) == []
    assert found.manifest["metrics"] == {"loss": 0.1}  # the pushed manifest, as it was
    assert local_sizes(pulled) == local_sizes(newest)
    assert not [p for p in fresh.iterdir() if p.name.startswith(".tmp-")]
    assert pull_latest(client, REPO, fresh) is None  # already as new as the Hub
    assert pull_latest(client, "runner-test/never-pushed", tmp_path / "x") is None


def test_a_foreign_checkpoint_pulls_into_a_harness_folder_with_a_manifest(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    root = tmp_path / "lerobot"
    folder = lerobot_checkpoint(root, 2000)
    client.ensure_repo(REPO)
    push_checkpoint(client, REPO, Scanner("lerobot", root, settle_s=0).scan().complete[0])

    listed = remote_checkpoints(client, REPO)
    assert [(c.step, c.tags) for c in listed] == [(2000, ("latest", "step-2000"))]

    dest = tmp_path / "resume"
    pulled = pull_checkpoint(client, REPO, dest)
    found = latest_checkpoint(dest)
    assert found is not None and found.path == pulled and found.step == 2000
    assert verify_checkpoint(found) == []
    assert found.manifest["source"]["repo"] == REPO
    assert {f["path"] for f in found.manifest["files"]} == set(local_sizes(folder))
    with pytest.raises(Exception, match="no checkpoint for step 5"):
        pull_checkpoint(client, REPO, dest, step=5)


def test_retag_moves_a_stale_dataset_tag(hub: HubServer, client: HubClient) -> None:
    repo = "runner-test/sim_pick_place"
    client.ensure_repo(repo, repo_type="dataset")
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=hub.url, token=hub.token)
    old = api.create_commit(
        repo,
        [CommitOperationAdd("meta/stats.json", b'{"mean": 1}')],
        commit_message="v3.0",
        repo_type="dataset",
    )
    api.create_tag(repo, tag="v3.0", revision=old.oid, repo_type="dataset")
    fixed = api.create_commit(
        repo,
        [CommitOperationAdd("meta/stats.json", b'{"mean": 2}')],
        commit_message="fix stats",
        repo_type="dataset",
    )
    api.create_tag(repo, tag="v3.0", revision=fixed.oid, repo_type="dataset", exist_ok=True)
    assert hub.resolve(repo, "v3.0", "dataset") == old.oid  # the trap: still stale

    moved = retag(client, repo, "v3.0", repo_type="dataset")

    assert (moved.old, moved.new, moved.moved) == (old.oid, fixed.oid, True)
    assert hub.resolve(repo, "v3.0", "dataset") == fixed.oid
    assert hub.read_file(repo, "meta/stats.json", "v3.0", "dataset") == b'{"mean": 2}'
    assert not retag(client, repo, "v3.0", repo_type="dataset").moved
    back = retag(client, repo, "v3.0", revision=old.oid, repo_type="dataset")
    assert back.new == old.oid and hub.resolve(repo, "v3.0", "dataset") == old.oid
    with pytest.raises(HubError, match="no branch, tag or commit 'nope'"):
        retag(client, repo, "v3.0", revision="nope", repo_type="dataset")


def test_the_public_api_and_a_plain_hfapi_are_accepted(
    hub: HubServer, client: HubClient, tmp_path: Path
) -> None:
    import runner.hub

    assert sorted(runner.hub.__all__) == sorted(
        [
            *("LAYOUTS", "STATE_FILE", "HubApi", "HubAuthError", "HubClient", "HubError"),
            *("LocalCheckpoint", "PollResult", "PushConfig", "PushResult", "Pusher"),
            *("RemoteCheckpoint", "RemoteFile", "RetagResult", "Scan", "Scanner", "check_file"),
            *("inspect_path", "plan_rotation", "pull_checkpoint", "pull_latest"),
            *("push_checkpoint", "redact", "remote_checkpoints", "remote_path", "retag", "rotate"),
        ]
    )
    assert all(getattr(runner.hub, name) is not None for name in runner.hub.__all__)
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=hub.token)
    run = tmp_path / "run"
    harness_checkpoint(run / "checkpoints", 100)
    assert [p.step for p in Pusher(api, REPO, run, config=FAST).poll_once().pushed] == [100]
    pulled = pull_latest(api, REPO, tmp_path / "fresh")
    assert pulled is not None and pulled.name == "step_000000100"

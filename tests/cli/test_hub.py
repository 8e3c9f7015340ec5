"""``runner push``, ``runner checkpoints``, ``runner pull``, ``runner hub retag`` as a user sees
them, against the loopback Hub (``HF_ENDPOINT`` and ``HF_TOKEN`` point at it)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from runner.cli import main
from runner.harness import latest_checkpoint, verify_checkpoint
from tests.conftest import RUNNER_BIN
from tests.fakes.hub_server import HubServer
from tests.hub import REPO, commits, dino_file, harness_checkpoint, lerobot_checkpoint, lfs_puts
from tests.hub import hf_env_fixture as hf_env_fixture
from tests.hub import hub_fixture as hub_fixture

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def env(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    return hub


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_push_then_push_again_then_list(
    env: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = harness_checkpoint(tmp_path / "checkpoints", 100, size=12_000_000)
    other = lerobot_checkpoint(tmp_path / "lerobot", 2000)

    code, out, err = run(capsys, "push", str(folder), "--repo", REPO)

    assert code == 0, err
    assert out.startswith(f"pushed step 100 to {REPO}: 3 files, 12.0 MB in ")
    assert out.rstrip().endswith("tags step-100, latest")
    assert f"pushing step 100 (3 files, 12.0 MB) from {folder} to {REPO}" in err
    mark = len(env.requests)

    code, out, err = run(capsys, "push", str(folder), "--repo", REPO)

    assert code == 0, err
    assert out == (
        f"step 100 is already on {REPO} (3 files, 12.0 MB): nothing sent; tags step-100, latest\n"
    )
    assert lfs_puts(env, mark) == [] and commits(env, mark) == []

    assert run(capsys, "push", str(other), "--repo", REPO)[0] == 0
    code, out, err = run(capsys, "checkpoints", REPO)
    assert code == 0, err
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["step", "files", "size", "tag", "date"]
    assert lines[1][:5] == ["100", "3", "12.0", "MB", "step-100"]
    kb = sum(f.stat().st_size for f in other.rglob("*") if f.is_file()) / 1000
    assert lines[2][:5] == ["2000", "6", f"{kb:.1f}", "KB", "latest,step-2000"]
    assert lines[2][5] == time.strftime("%Y-%m-%d", time.gmtime())


def test_push_one_dino_wm_file(
    env: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = dino_file(tmp_path / "outputs" / "checkpoints", "model_12.pth", epoch=12)
    dino_file(tmp_path / "outputs" / "checkpoints", "model_11.pth", epoch=11)
    code, out, err = run(capsys, "push", str(path), "--repo", REPO)
    assert code == 0, err
    assert out.startswith(f"pushed step 12 to {REPO}: 1 files,")
    expected = {".gitattributes", "checkpoints/step_000000012/model_12.pth"}
    assert set(env.list_files(REPO)) == expected


def test_push_refuses_a_truncated_checkpoint(
    env: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = lerobot_checkpoint(tmp_path / "lerobot", 2000)
    weights = folder / "pretrained_model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, out, err = run(capsys, "push", str(folder), "--repo", REPO)
    assert (code, out) == (1, "")
    assert err.startswith(f"error: {folder} is not a complete checkpoint: pretrained_model/")
    assert len(err.strip().splitlines()) == 1
    assert env.requests == []


def test_push_without_a_token_is_one_line(
    hub: HubServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    folder = harness_checkpoint(tmp_path / "checkpoints", 100)
    code, out, err = run(capsys, "push", str(folder), "--repo", REPO)
    assert (code, out) == (1, "")
    assert err == (
        f"error: no Hugging Face token for writing to {hub.url}: set HF_TOKEN or run "
        "`hf auth login`\n"
    )


def test_a_wrong_token_is_one_line_without_the_token(
    hub: HubServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "hf_ThisIsNotTheRightTokenAtAll12345"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", secret)
    folder = harness_checkpoint(tmp_path / "checkpoints", 100)
    code, out, err = run(capsys, "push", str(folder), "--repo", REPO)
    assert code == 1
    assert err.startswith(f"error: creating model repo {REPO} failed: HTTP 401 Unauthorized")
    assert len(err.strip().splitlines()) == 1 and secret not in err + out


def test_pull_newest_into_a_folder_the_harness_resumes_from(
    env: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for step in (100, 200):
        folder = harness_checkpoint(tmp_path / "run" / "checkpoints", step)
        assert run(capsys, "push", str(folder), "--repo", REPO)[0] == 0
    dest = tmp_path / "fresh" / "checkpoints"

    code, out, err = run(capsys, "pull", REPO, "--to", str(dest))

    assert code == 0, err
    assert out.startswith(f"pulled step 200 from {REPO} into {dest / 'step_000000200'}: 2 files")
    found = latest_checkpoint(dest)
    assert found is not None and found.step == 200 and verify_checkpoint(found) == []

    code, out, err = run(capsys, "pull", REPO, "--to", str(dest), "--step", "100")
    assert code == 0 and out.startswith("pulled step 100")
    code, out, err = run(capsys, "pull", REPO, "--to", str(dest), "--step", "100")
    assert out == f"step 100 is already complete in {dest / 'step_000000100'}: nothing fetched\n"
    code, out, err = run(capsys, "pull", REPO, "--to", str(dest), "--step", "7")
    assert code == 1 and err == f"error: {REPO} has no checkpoint for step 7 (newest: 100, 200)\n"


def test_pull_and_list_a_repo_that_does_not_exist(
    env: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "checkpoints", "runner-test/nothing")
    assert code == 1 and out == ""
    assert err.startswith("error: listing runner-test/nothing/checkpoints at main failed: HTTP 404")
    assert len(err.strip().splitlines()) == 1


def test_retag_moves_a_stale_dataset_tag(
    env: HubServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=env.url, token=env.token)
    repo = "runner-test/sim_pick_place_157ep"
    api.create_repo(repo, repo_type="dataset")
    old = api.create_commit(
        repo, [CommitOperationAdd("meta/stats.json", b"1")], commit_message="a", repo_type="dataset"
    )
    api.create_tag(repo, tag="v3.0", revision=old.oid, repo_type="dataset")
    new = api.create_commit(
        repo, [CommitOperationAdd("meta/stats.json", b"2")], commit_message="b", repo_type="dataset"
    )

    code, out, err = run(capsys, "hub", "retag", repo, "v3.0", "--repo-type", "dataset")

    assert code == 0, err
    assert out == f"moved v3.0 in {repo}: {old.oid[:7]} -> {new.oid[:7]}\n"
    assert env.resolve(repo, "v3.0", "dataset") == new.oid
    code, out, _ = run(capsys, "hub", "retag", repo, "v3.0", "--repo-type", "dataset")
    assert out == f"v3.0 already points at {new.oid[:7]} in {repo}: unchanged\n"
    code, out, _ = run(
        capsys, "hub", "retag", repo, "v4.0", "--revision", old.oid, "--repo-type", "dataset"
    )
    assert out == f"created v4.0 at {old.oid[:7]} in {repo}\n"
    code, out, err = run(capsys, "hub", "retag", repo, "v3.0", "--repo-type", "space")
    assert code == 2 and err == "error: --repo-type must be model or dataset, not 'space'\n"


def test_help_stays_fast_and_does_not_import_the_hub_client(
    subprocess_env: dict[str, str],
) -> None:
    probe = subprocess.run(
        [
            str(RUNNER_BIN.parent / "python"),
            "-c",
            "import sys; from runner.cli import main; main(['--help']); "
            "print('huggingface_hub' in sys.modules, file=sys.stderr)",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stderr.strip().splitlines()[-1] == "False"
    for command in (["push", "--help"], ["pull", "--help"], ["hub", "retag", "--help"]):
        shown = subprocess.run(
            [str(RUNNER_BIN), *command], capture_output=True, text=True, env=subprocess_env
        )
        assert shown.returncode == 0 and "--repo" in shown.stdout + "--repo-type"

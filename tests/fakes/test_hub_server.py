"""The loopback Hub against the real ``huggingface_hub`` client: what it sends, what it retries.

Every test drives the real client (``HfApi(endpoint=hub.url, token=hub.token)``) with Xet off, the
mode the emulator speaks, and reads the server's request log to state what went over the wire.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    RepoFile,
    RepoFolder,
)
from huggingface_hub import hf_hub_download as _hf_hub_download
from huggingface_hub import snapshot_download as _snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.fakes.hub_server import HubServer, RequestRecord, isolate_client

BIG = 12 * 1024 * 1024
REPO = "runner-test/ckpt"
LFS_PUT = r"^/lfs-storage/"
HF_1X = "1.33.0"  # LeRobot pins huggingface-hub>=1.6,<2: the training images get 1.x

# The client itself passes raw bytes as `data=` to httpx (its LFS PUT): not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def hf_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The in-process client isolated for the emulator (see ``isolate_client``)."""
    return isolate_client(monkeypatch, tmp_path / "hf_home")


@pytest.fixture
def hub(tmp_path: Path, hf_home: Path) -> Iterator[HubServer]:
    with HubServer(tmp_path / "hub") as server:
        yield server


@pytest.fixture
def api(hub: HubServer) -> HfApi:
    return HfApi(endpoint=hub.url, token=hub.token)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A checkpoint-shaped folder: one big LFS file, small regular files, a sub-folder."""
    root = tmp_path / "checkpoint"
    (root / "training_state").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(os.urandom(BIG))
    (root / "config.json").write_text('{"step": 1000}\n')
    (root / "training_state" / "optimizer.pt").write_bytes(os.urandom(300_000))
    (root / "training_state" / "step.json").write_text('{"step": 1000}\n')
    return root


def download(hub: HubServer, filename: str, revision: str, cache: Path) -> bytes:
    path = _hf_hub_download(
        REPO,
        filename,
        revision=revision,
        endpoint=hub.url,
        token=hub.token,
        cache_dir=cache,
    )
    return Path(path).read_bytes()


def sent(hub: HubServer, method: str, pattern: str) -> list[RequestRecord]:
    return [r for r in hub.requests if r.method == method and re.search(pattern, r.path)]


def kind(record: RequestRecord) -> str:
    """A request's endpoint, in words."""
    for label, pattern in (
        ("lfs-put", LFS_PUT),
        ("lfs-verify", r"^/lfs-verify/"),
        ("lfs-batch", r"/info/lfs/objects/batch$"),
        ("create", r"^/api/repos/create$"),
        ("preupload", r"/preupload/"),
        ("commit", r"/commit/"),
        ("tag", r"/tag/"),
        ("revision", r"/revision/"),
    ):
        if re.search(pattern, record.path):
            return label
    return record.path


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# -- the happy path ------------------------------------------------------------------------------


def test_upload_folder_round_trips_through_tag_and_commit(
    hub: HubServer, api: HfApi, folder: Path, tmp_path: Path
) -> None:
    api.create_repo(REPO, private=True)
    info = api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="step 1000")
    api.create_tag(REPO, tag="step-1000", revision=info.oid)

    # The classic LFS flow: preupload, batch, one PUT per LFS file (no token on it), verify, commit.
    assert Counter((kind(r), r.status) for r in hub.requests) == {
        ("create", 200): 1,
        ("preupload", 200): 1,
        ("lfs-batch", 200): 1,
        ("lfs-put", 200): 2,
        ("lfs-verify", 200): 2,
        ("commit", 200): 1,
        ("tag", 200): 1,
    }
    puts = sent(hub, "PUT", LFS_PUT)
    assert sorted(r.bytes_in for r in puts) == [300_000, BIG]  # both LFS (.safetensors, .pt)
    assert hub.lfs_bytes_received == BIG + 300_000
    assert len(sent(hub, "POST", r"/commit/main$")) == 1

    expected = local_files(folder)
    for revision in ("step-1000", info.oid):
        cache = tmp_path / f"cache-{revision[:8]}"
        for name, content in expected.items():
            assert download(hub, name, revision, cache) == content
        snapshot = _snapshot_download(
            REPO, revision=revision, endpoint=hub.url, token=hub.token, cache_dir=tmp_path / "snap"
        )
        got = local_files(Path(snapshot))
        assert got.pop(".gitattributes").startswith(b"*.7z filter=lfs")
        assert got == expected

    assert hub.read_file(REPO, "model.safetensors", "step-1000") == expected["model.safetensors"]


def test_listing_endpoints_report_sizes_lfs_and_history(
    hub: HubServer, api: HfApi, folder: Path
) -> None:
    api.create_repo(REPO)
    first = api.upload_folder(repo_id=REPO, folder_path=folder)
    second = api.upload_file(
        repo_id=REPO, path_or_fileobj=b"notes\n", path_in_repo="notes/README.txt"
    )

    entries = list(api.list_repo_tree(REPO, recursive=True))
    tree = {e.path: e for e in entries if isinstance(e, RepoFile)}
    assert set(tree) == {
        ".gitattributes",
        "config.json",
        "model.safetensors",
        "notes/README.txt",
        "training_state/optimizer.pt",
        "training_state/step.json",
    }
    assert {e.path for e in entries if isinstance(e, RepoFolder)} == {"notes", "training_state"}
    big = tree["model.safetensors"]
    assert big.size == BIG
    assert big.lfs is not None and big.lfs.size == BIG
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert big.lfs.sha256 == digest
    assert tree["config.json"].size == (folder / "config.json").stat().st_size
    assert tree["config.json"].lfs is None

    top = {e.path for e in api.list_repo_tree(REPO)}
    assert top == {".gitattributes", "config.json", "model.safetensors", "notes", "training_state"}
    sub = [e.path for e in api.list_repo_tree(REPO, path_in_repo="training_state")]
    assert sub == ["training_state/optimizer.pt", "training_state/step.json"]

    infos = api.get_paths_info(
        REPO,
        ["model.safetensors", "training_state", "missing.bin"],
        revision=first.oid,
        expand=True,
    )
    assert [i.path for i in infos] == ["model.safetensors", "training_state"]
    assert infos[0].last_commit is not None and infos[0].last_commit.oid == first.oid

    assert "notes/README.txt" not in api.list_repo_files(REPO, revision=first.oid)
    assert "notes/README.txt" in api.list_repo_files(REPO)

    commits = api.list_repo_commits(REPO)
    assert [c.commit_id for c in commits[:2]] == [second.oid, first.oid]
    assert commits[-1].title == "initial commit" and len(commits) == 3

    model = api.model_info(REPO, files_metadata=True)
    assert model.sha == second.oid and model.private is False
    sizes = {s.rfilename: s.size for s in model.siblings or []}
    assert sizes["model.safetensors"] == BIG
    assert api.repo_info(REPO, revision=first.oid).sha == first.oid
    assert api.whoami()["name"] == hub.user


def test_reupload_of_the_same_folder_sends_no_lfs_bytes_and_no_commit(
    hub: HubServer, api: HfApi, folder: Path
) -> None:
    api.create_repo(REPO)
    first = api.upload_folder(repo_id=REPO, folder_path=folder)
    hub.clear_requests()
    before = hub.lfs_bytes_received

    again = api.upload_folder(repo_id=REPO, folder_path=folder)

    assert again.oid == first.oid
    assert hub.lfs_bytes_received == before
    assert sent(hub, "PUT", LFS_PUT) == []
    assert sent(hub, "POST", r"/commit/") == []
    # The client still asks (preupload, LFS batch), then reads the head instead of committing.
    assert [kind(r) for r in hub.requests] == ["preupload", "lfs-batch", "revision"]


def test_commit_operations_branches_and_deletions(hub: HubServer, api: HfApi) -> None:
    api.create_repo(REPO, repo_type="dataset")
    api.create_commit(
        repo_id=REPO,
        repo_type="dataset",
        operations=[
            CommitOperationAdd("a/1.txt", b"one"),
            CommitOperationAdd("a/2.txt", b"two"),
            CommitOperationAdd("b.dat", b"\x00binary"),  # a binary sample: LFS even when tiny
        ],
        commit_message="add",
    )
    assert hub.list_files(REPO, repo_type="dataset") == {
        ".gitattributes": len(hub.read_file(REPO, ".gitattributes", repo_type="dataset")),
        "a/1.txt": 3,
        "a/2.txt": 3,
        "b.dat": 7,
    }
    assert len(sent(hub, "PUT", LFS_PUT)) == 1

    api.create_branch(REPO, repo_type="dataset", branch="trial")
    api.upload_file(
        repo_id=REPO, repo_type="dataset", path_or_fileobj=b"x", path_in_repo="x", revision="trial"
    )
    refs = api.list_repo_refs(REPO, repo_type="dataset")
    heads = {b.name: b.target_commit for b in refs.branches}
    assert set(heads) == {"main", "trial"} and heads["main"] != heads["trial"]
    assert "x" not in hub.list_files(REPO, repo_type="dataset")

    api.delete_file("a/1.txt", repo_id=REPO, repo_type="dataset")
    api.delete_folder("a", repo_id=REPO, repo_type="dataset")
    assert set(hub.list_files(REPO, repo_type="dataset")) == {".gitattributes", "b.dat"}

    with pytest.raises(EntryNotFoundError):
        api.create_commit(
            repo_id=REPO,
            repo_type="dataset",
            operations=[CommitOperationDelete("nope.txt")],
            commit_message="delete what is not there",
        )
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_branch(REPO, repo_type="dataset", branch="trial")
    assert exc.value.response.status_code == 409
    with pytest.raises(RevisionNotFoundError):
        api.upload_file(
            repo_id=REPO, repo_type="dataset", path_or_fileobj=b"x", path_in_repo="y", revision="no"
        )


def test_create_repo_exist_ok_auth_and_privacy(hub: HubServer, api: HfApi) -> None:
    url = api.create_repo(REPO, private=True)
    assert url == f"{hub.url}/{REPO}"
    assert api.create_repo(REPO, exist_ok=True) == url
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo(REPO)
    assert exc.value.response.status_code == 409

    anonymous = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info(REPO)  # private: hidden without the token
    wrong = HfApi(endpoint=hub.url, token="hf_wrong")
    with pytest.raises(HfHubHTTPError) as exc:
        wrong.upload_file(repo_id=REPO, path_or_fileobj=b"x", path_in_repo="x")
    assert exc.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("runner-test/missing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")


# -- tags: the stale-tag trap --------------------------------------------------------------------


def test_create_tag_exist_ok_leaves_the_old_tag_and_delete_then_create_moves_it(
    hub: HubServer, api: HfApi
) -> None:
    api.create_repo(REPO)
    old = api.upload_file(repo_id=REPO, path_or_fileobj=b"1", path_in_repo="step.txt")
    api.create_tag(REPO, tag="v3.0", revision=old.oid)
    new = api.upload_file(repo_id=REPO, path_or_fileobj=b"2", path_in_repo="step.txt")

    api.create_tag(REPO, tag="v3.0", revision=new.oid, exist_ok=True)  # the 409 is swallowed
    assert sent(hub, "POST", r"/tag/")[-1].status == 409
    assert hub.resolve(REPO, "v3.0") == old.oid  # stale
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_tag(REPO, tag="v3.0", revision=new.oid)
    assert exc.value.response.status_code == 409

    api.delete_tag(REPO, tag="v3.0")
    api.create_tag(REPO, tag="v3.0", revision=new.oid)
    tags = {t.name: t.target_commit for t in api.list_repo_refs(REPO).tags}
    assert tags == {"v3.0": new.oid}
    assert api.model_info(REPO, revision="v3.0").sha == new.oid
    with pytest.raises(RevisionNotFoundError):
        api.delete_tag(REPO, tag="v9")


# -- faults and what the client retries ----------------------------------------------------------


def test_a_503_on_commit_fails_create_commit_and_upload_folder_without_retry(
    hub: HubServer, api: HfApi, folder: Path
) -> None:
    api.create_repo(REPO)
    fault = hub.faults.add(method="POST", path_regex=r"/commit/", status=503, times=2)

    with pytest.raises(HfHubHTTPError) as exc:
        api.create_commit(
            repo_id=REPO, operations=[CommitOperationAdd("a", b"a")], commit_message="a"
        )
    assert exc.value.response.status_code == 503
    # With Xet off, upload_folder is one create_commit: the commit POST is not retried either.
    with pytest.raises(HfHubHTTPError):
        api.upload_folder(repo_id=REPO, folder_path=folder)
    assert fault.hits == 2
    assert [r.status for r in sent(hub, "POST", r"/commit/")] == [503, 503]
    assert len(api.list_repo_commits(REPO)) == 1  # nothing landed: the initial commit only

    # Running it again resumes: the LFS objects from the failed attempt are not sent again.
    hub.clear_requests()
    api.upload_folder(repo_id=REPO, folder_path=folder)
    assert sent(hub, "PUT", LFS_PUT) == []
    assert hub.list_files(REPO)["model.safetensors"] == BIG


def test_a_503_on_preupload_is_retried_by_the_http_layer(hub: HubServer, api: HfApi) -> None:
    api.create_repo(REPO)
    hub.faults.add(method="POST", path_regex=r"/preupload/", status=503, times=1)
    api.upload_file(repo_id=REPO, path_or_fileobj=b"x", path_in_repo="x")
    assert [r.status for r in sent(hub, "POST", r"/preupload/")] == [503, 200]


@pytest.mark.slow
def test_a_429_with_retry_after_is_retried_after_that_delay_plus_one_second(
    hub: HubServer, api: HfApi
) -> None:
    api.create_repo(REPO)
    hub.faults.add(method="POST", path_regex=r"/info/lfs/objects/batch$", status=429, retry_after=1)
    api.upload_file(repo_id=REPO, path_or_fileobj=os.urandom(1000), path_in_repo="w.pt")
    first, second = sent(hub, "POST", r"/objects/batch$")
    assert (first.status, second.status) == (429, 200)
    assert 1.9 <= second.started - first.started < 4  # the client sleeps Retry-After + 1 s


@pytest.mark.slow
def test_a_connection_reset_mid_lfs_put_is_retried_and_the_file_arrives_whole(
    hub: HubServer, api: HfApi, folder: Path, tmp_path: Path
) -> None:
    api.create_repo(REPO)
    hub.faults.add(method="PUT", path_regex=LFS_PUT, reset=True)

    info = api.upload_folder(repo_id=REPO, folder_path=folder, allow_patterns=["*.safetensors"])

    puts = sent(hub, "PUT", LFS_PUT)
    assert [(r.status, r.fault) for r in puts] == [(None, True), (200, False)]
    assert puts[0].bytes_in == BIG // 2 and puts[1].bytes_in == BIG
    assert hub.lfs_bytes_received == BIG + BIG // 2
    content = (folder / "model.safetensors").read_bytes()
    assert download(hub, "model.safetensors", info.oid, tmp_path / "c") == content


@pytest.mark.slow
def test_an_lfs_put_that_keeps_failing_surfaces_after_five_retries(
    hub: HubServer, api: HfApi
) -> None:
    api.create_repo(REPO)
    hub.faults.add(method="PUT", path_regex=LFS_PUT, status=500, times=None)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="Error while uploading") as exc:
        api.upload_file(repo_id=REPO, path_or_fileobj=os.urandom(1000), path_in_repo="w.pt")
    assert isinstance(exc.value.__cause__, HfHubHTTPError)
    assert len(sent(hub, "PUT", LFS_PUT)) == 6  # 1 + 5 retries, sleeping 1, 2, 4, 8, 8 s
    assert time.monotonic() - started >= 20
    assert sent(hub, "POST", r"/commit/") == []


def test_multipart_lfs_upload_round_trips(tmp_path: Path, hf_home: Path) -> None:
    with HubServer(tmp_path / "hub", multipart_threshold=1024, multipart_chunk_size=400_000) as hub:
        api = HfApi(endpoint=hub.url, token=hub.token)
        api.create_repo(REPO)
        content = os.urandom(1_000_000)
        info = api.upload_file(repo_id=REPO, path_or_fileobj=content, path_in_repo="w.safetensors")
        assert [r.bytes_in for r in sent(hub, "PUT", r"/part/\d+$")] == [400_000, 400_000, 200_000]
        assert download(hub, "w.safetensors", info.oid, tmp_path / "cache") == content
        # Stored as its parts, read back to back: a range across a part boundary is whole.
        url = f"{hub.url}/{REPO}/resolve/{info.oid}/w.safetensors"
        across = httpx.get(url, headers={"Range": "bytes=399990-400009"})
        assert across.status_code == 206 and across.content == content[399_990:400_010]
        assert hub.read_file(REPO, "w.safetensors") == content


def test_resolve_serves_ranges_and_the_headers_the_client_needs(hub: HubServer, api: HfApi) -> None:
    api.create_repo(REPO)
    content = os.urandom(2000)
    info = api.upload_file(repo_id=REPO, path_or_fileobj=content, path_in_repo="w.pt")
    url = f"{hub.url}/{REPO}/resolve/main/w.pt"
    head = httpx.head(url)
    assert head.headers["X-Repo-Commit"] == info.oid
    assert head.headers["X-Linked-Size"] == "2000"
    assert head.headers["X-Linked-Etag"] == f'"{hashlib.sha256(content).hexdigest()}"'
    part = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == content[100:200]
    assert part.headers["Content-Range"] == "bytes 100-199/2000"
    assert httpx.get(url, headers={"Range": "bytes=-10"}).content == content[-10:]
    assert httpx.get(url, headers={"Range": "bytes=5000-"}).status_code == 416
    missing = httpx.head(f"{hub.url}/{REPO}/resolve/main/nope")
    assert missing.headers["X-Error-Code"] == "EntryNotFound"
    assert missing.headers["X-Repo-Commit"] == info.oid


def test_faults_skip_count_and_delay(hub: HubServer) -> None:
    slow = hub.faults.add(method="GET", path_regex=r"^/api/whoami-v2$", delay_s=0.3)
    failing = hub.faults.add(path_regex=r"/whoami", status=502, skip=1, times=2)
    auth = {"Authorization": f"Bearer {hub.token}"}
    started = time.monotonic()
    statuses = [httpx.get(f"{hub.url}/api/whoami-v2", headers=auth).status_code for _ in range(5)]
    assert statuses == [200, 200, 502, 502, 200]
    assert time.monotonic() - started >= 0.3  # the first one was slow, then answered normally
    assert (slow.hits, failing.hits) == (1, 2) and hub.faults.pending == []
    assert [r.fault for r in hub.requests] == [True, False, True, True, False]
    with pytest.raises(ValueError):
        hub.faults.add(path_regex="/")  # neither a status, a reset nor a delay


def test_xet_is_refused_with_a_message(hub: HubServer) -> None:
    response = httpx.get(
        f"{hub.url}/api/models/{REPO}/xet-write-token/main",
        headers={"Authorization": f"Bearer {hub.token}"},
    )
    assert response.status_code == 501
    assert "HF_HUB_DISABLE_XET=1" in response.json()["error"]


# -- the 1.x client of the training images -------------------------------------------------------

_MODULE_PACKAGES = {"yaml": "pyyaml", "typing_extensions": "typing-extensions"}

_ROUND_TRIP_1X = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import huggingface_hub
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    endpoint, token, folder, cache = sys.argv[1:5]
    repo = "runner-test/ckpt-1x"
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo, private=True)
    first = api.upload_folder(repo_id=repo, folder_path=folder, commit_message="step 1")
    api.create_tag(repo, tag="latest", revision=first.oid)
    second = api.upload_file(repo_id=repo, path_or_fileobj=b"2", path_in_repo="step.txt")
    api.create_tag(repo, tag="latest", revision=second.oid, exist_ok=True)
    stale = {t.name: t.target_commit for t in api.list_repo_refs(repo).tags}["latest"]
    api.delete_tag(repo, tag="latest")
    api.create_tag(repo, tag="latest", revision=second.oid)
    moved = {t.name: t.target_commit for t in api.list_repo_refs(repo).tags}["latest"]
    big = hf_hub_download(repo, "model.safetensors", revision="latest", endpoint=endpoint,
                          token=token, cache_dir=cache)
    snap = snapshot_download(repo, revision=first.oid, endpoint=endpoint, token=token,
                             cache_dir=cache)
    files = sorted(p.relative_to(snap).as_posix() for p in Path(snap).rglob("*") if p.is_file())
    print(json.dumps({
        "version": huggingface_hub.__version__,
        "first": first.oid, "second": second.oid, "stale": stale, "moved": moved,
        "big": big, "snapshot": snap, "files": files,
    }))
    """
)


@pytest.fixture(scope="session")
def hub_1x(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """huggingface_hub 1.x installed into its own folder (for PYTHONPATH), deps from this venv."""
    target = tmp_path_factory.mktemp("hf1x")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
    installed = subprocess.run(
        [*pip, f"huggingface_hub=={HF_1X}"], capture_output=True, text=True, timeout=300
    )
    if installed.returncode != 0:
        pytest.skip(f"cannot install huggingface_hub {HF_1X}: {installed.stderr.strip()[-500:]}")
    env = {**os.environ, "PYTHONPATH": str(target)}
    for _ in range(10):  # add the dependencies this venv lacks, one missing module at a time
        check = subprocess.run(
            [sys.executable, "-c", "import huggingface_hub.hf_api"],
            capture_output=True,
            text=True,
            env=env,
        )
        if check.returncode == 0:
            return target
        missing = check.stderr.rsplit("No module named ", 1)[-1].strip().strip("'\"").split(".")[0]
        if "ModuleNotFoundError" not in check.stderr:
            pytest.fail(f"huggingface_hub {HF_1X} does not import: {check.stderr[-1000:]}")
        subprocess.run([*pip, _MODULE_PACKAGES.get(missing, missing)], check=True, timeout=300)
    pytest.fail(f"huggingface_hub {HF_1X}: dependencies still missing")


@pytest.mark.slow
def test_the_1x_client_uploads_tags_and_downloads_against_the_same_server(
    hub: HubServer, folder: Path, tmp_path: Path, hub_1x: Path
) -> None:
    env = {**os.environ, **hub.client_env(tmp_path / "hf1x_home"), "PYTHONPATH": str(hub_1x)}
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _ROUND_TRIP_1X,
            hub.url,
            hub.token,
            str(folder),
            str(tmp_path / "cache1x"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])

    assert out["version"] == HF_1X
    assert out["stale"] == out["first"] and out["moved"] == out["second"]
    assert Path(out["big"]).read_bytes() == (folder / "model.safetensors").read_bytes()
    assert set(out["files"]) == {".gitattributes", *local_files(folder)}
    assert local_files(Path(out["snapshot"])).items() >= local_files(folder).items()
    puts = sent(hub, "PUT", LFS_PUT)
    assert sorted(r.bytes_in for r in puts) == [300_000, BIG]
    assert [r.status for r in sent(hub, "POST", r"/tag/")] == [200, 409, 200]

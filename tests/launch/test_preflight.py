"""Pre-flight, item by item, on real inputs: folders, a small tmpfs, fake GPUs through the real
NVML wrapper (``RUNNER_FAKE_NVML``), environments, a user-site folder, the loopback Hub and
the real Docker engine (slow)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.hub.client import HubClient
from runner.launch import preflight
from runner.launch.preflight import Item, Report
from runner.sampling.nvml import GpuProcess, GpuSnapshot
from runner.sampling.trace import TRACE_FORMAT
from runner.spec import JobSpec, load_job, parse_job
from tests.fakes.hub_server import HubServer, isolate_client

MIB = 1 << 20
GIB = 1 << 30


def job(**fields: Any) -> JobSpec:
    """A job file's data as the loader reads it (``t.yaml``): a CPU job unless told otherwise."""
    data: dict[str, Any] = {"name": "t", "command": "python -c pass"}
    data.update(fields)
    data.setdefault("resources", {"gpus": 0})
    return parse_job(data, path=Path("t.yaml"))


def item(report: Report, key: str) -> Item:
    return report.item(key)


@pytest.fixture(scope="module")
def franka_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from runner.data.franka import synth_franka

    path = tmp_path_factory.mktemp("franka") / "ds"
    synth_franka(path, episodes=2, steps=4, image_size=8)
    return path


def test_report_lists_every_item_in_order_and_what_failed(tmp_path: Path) -> None:
    report = preflight.check(
        job(resources={"gpus": 0, "ram_gb": 1e6}), backend="local", run_dir=tmp_path
    )
    keys = [i.key for i in report.items]
    assert keys == [
        "dataset", "disk", "ram", "gpu", "gpu_busy", "secrets", "image", "user_site",
    ]  # fmt: skip
    assert [i.key for i in report.failed] == ["ram"]
    assert (report.job, report.backend) == ("t", "local")
    assert json.loads(json.dumps(report.to_dict()))["items"][2]["status"] == "fail"


# -- dataset ---------------------------------------------------------------------------------


def test_dataset_valid_folder_is_ok(franka_ds: Path) -> None:
    spec = job(dataset={"source": "local", "path": "/nonexistent", "layout": "franka"})
    got = item(preflight.check(spec, backend="local", dataset=franka_ds), "dataset")
    assert (got.status, got.detail) == ("ok", f"franka dataset {franka_ds}, read in place")
    rented = item(preflight.check(spec, backend="vast", dataset=franka_ds), "dataset")
    assert rented.detail == f"franka dataset {franka_ds}, 0.00 GB, synced to the host"


def test_dataset_missing_or_invalid_fails(tmp_path: Path) -> None:
    spec = job(dataset={"source": "local", "path": str(tmp_path / "gone"), "layout": "franka"})
    got = item(preflight.check(spec, backend="local", run_dir=tmp_path), "dataset")
    assert (got.status, got.detail) == (
        "fail",
        f"dataset folder {tmp_path / 'gone'} does not exist",
    )
    assert got.fix == "pass --data PATH to a valid copy"

    (tmp_path / "empty").mkdir()
    got = item(preflight.check(spec, backend="local", dataset=tmp_path / "empty"), "dataset")
    assert got.status == "fail"
    assert got.detail.startswith(f"dataset {tmp_path / 'empty'} is not a valid franka dataset: ")


def test_no_dataset_and_synthetic_are_skipped() -> None:
    assert item(preflight.check(job(), backend="local"), "dataset").status == "skip"
    synth = job(dataset={"source": "synthetic", "layout": "franka"})
    assert item(preflight.check(synth, backend="local"), "dataset").status == "skip"


def _hub_job(revision: str, repo: str = "runner-test/ds") -> JobSpec:
    return job(dataset={"source": "hub", "repo": repo, "revision": revision, "size_gb": 2})


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[HubServer, str]]:
    """The loopback Hub with a public dataset repo tagged v1; yields it and the commit id."""
    isolate_client(monkeypatch, tmp_path / "hf_home")
    with HubServer(tmp_path / "hub-storage") as server:
        writer = HubClient(endpoint=server.url, token=server.token)
        writer.ensure_repo("runner-test/ds", repo_type="dataset", private=False)
        folder = tmp_path / "upload"
        folder.mkdir()
        (folder / "meta.json").write_text("{}")
        commit = writer.upload_folder(
            "runner-test/ds", folder, path_in_repo="", message="data", repo_type="dataset"
        )
        writer.create_tag("runner-test/ds", "v1", commit, repo_type="dataset")
        monkeypatch.setenv("HF_ENDPOINT", server.url)  # and no HF_TOKEN: a public repo
        yield server, commit


@pytest.mark.parametrize("revision", ["v1", "main", "COMMIT"])
def test_hub_dataset_pinned_revision_exists(hub: tuple[HubServer, str], revision: str) -> None:
    _, commit = hub
    revision = commit if revision == "COMMIT" else revision
    got = item(preflight.check(_hub_job(revision), backend="vast"), "dataset")
    assert got.status == "ok", got
    assert got.detail.startswith(f"runner-test/ds@{revision}: ")
    if revision == "v1":
        assert got.detail == f"runner-test/ds@v1: tag -> {commit[:12]}, 2 GB"
    if revision == "main":
        assert got.detail.endswith("(a branch moves: pin a commit or tag)")


def test_hub_dataset_missing_revision_or_repo_fails(hub: tuple[HubServer, str]) -> None:
    server, _ = hub
    got = item(preflight.check(_hub_job("v9"), backend="vast"), "dataset")
    assert got.status == "fail"
    assert got.detail == "revision 'v9' is not in runner-test/ds (no such tag, branch or commit)"
    assert got.fix == "pin an existing commit or tag in dataset.revision"
    got = item(preflight.check(_hub_job("v1", repo="runner-test/nope"), backend="vast"), "dataset")
    assert got.status == "fail"
    assert got.detail.startswith(f"dataset repo runner-test/nope is not on {server.url} (HTTP 4")


def test_hub_unreachable_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_client(monkeypatch, tmp_path / "hf_home")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    got = item(preflight.check(_hub_job("v1"), backend="vast"), "dataset")
    assert got.status == "warn"
    assert got.detail.startswith("cannot ask http://127.0.0.1:9 about runner-test/ds@v1 (")
    assert got.detail.endswith("; the host fetches it")


def test_a_hub_that_never_answers_is_a_warning_in_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate_client(monkeypatch, tmp_path / "hf_home")
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setattr(preflight, "HUB_TIMEOUT_S", 0.5)
        started = time.monotonic()
        got = item(preflight.check(_hub_job("v1"), backend="vast"), "dataset")
        assert time.monotonic() - started < 5
    assert got.status == "warn"
    assert got.detail == (
        f"cannot ask {url} about runner-test/ds@v1 (no answer within 0.5 s); the host fetches it"
    )


def test_a_hub_dataset_here_needs_a_local_copy() -> None:
    got = item(preflight.check(_hub_job("v1"), backend="local"), "dataset")
    assert (got.status, got.fix) == ("fail", "pass --data PATH to a local copy")


# -- disk ------------------------------------------------------------------------------------


def _big_dataset(tmp_path: Path, gb: float) -> Path:
    """A folder whose files add up to ``gb`` GB (sparse: what a copy would write, not what it
    takes here)."""
    folder = tmp_path / "big-ds"
    folder.mkdir()
    with open(folder / "data.bin", "wb") as f:
        f.truncate(int(gb * 1e9))
    return folder


def test_disk_projection_on_a_rented_disk(tmp_path: Path) -> None:
    spec = job(checkpoints={"size_gb": 1.5, "keep": 3}, resources={"gpus": 1, "disk_gb": 150})
    data = _big_dataset(tmp_path, 19)
    small = item(preflight.check(spec, backend="vast", dataset=data, disk_gb=20), "disk")
    assert small.status == "fail"
    assert small.detail == (
        "needs 30 GB: dataset 19 + 4 x 1.5 checkpoints (keep 3 + 1 being written) + margin 5; "
        "--disk 20 rents 20 GB"
    )
    assert small.fix == "rent at least 30 GB (--disk 30)"
    # The job's own disk_gb when no --disk is given; 10 % margin once it is over 5 GB.
    big = item(preflight.check(spec, backend="vast", dataset=data), "disk")
    assert big.status == "ok"
    assert big.detail.endswith("; --disk 150 rents 150 GB")
    heavy = job(checkpoints={"size_gb": 20, "keep": 4}, resources={"gpus": 1})
    got = item(preflight.check(heavy, backend="vast", disk_gb=100), "disk")
    assert got.detail.startswith("needs 110 GB: 5 x 20 checkpoints (keep 4 + 1 being written)")
    assert got.detail.endswith("+ margin 10; --disk 100 rents 100 GB")
    assert got.status == "fail"


def test_disk_unknown_sizes_warn(tmp_path: Path) -> None:
    got = item(preflight.check(job(), backend="local", run_dir=tmp_path / "run"), "disk")
    assert got.status == "warn"
    assert "(checkpoint size unknown)" in got.detail
    assert got.fix == "state checkpoints.size_gb in the job"


def test_disk_here_is_the_free_space_of_the_run_folder(tmp_path: Path) -> None:
    spec = job(checkpoints={"size_gb": 0.01, "keep": 3})
    got = item(preflight.check(spec, backend="local", run_dir=tmp_path / "a" / "b"), "disk")
    assert got.status == "ok"
    assert got.detail.startswith(
        "needs 1.1 GB: 4 x 0.01 checkpoints (keep 3 + 1 being written) + margin 1; "
    )
    assert got.detail.endswith(f" GB free at {tmp_path}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs (root only)."""
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a tmpfs needs root")
    point = tmp_path / "small"
    point.mkdir()
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(point)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)


def test_disk_too_small_here_fails(small_disk: Path) -> None:
    spec = job(checkpoints={"size_gb": 0.01, "keep": 3})
    got = item(preflight.check(spec, backend="docker", run_dir=small_disk / "run"), "disk")
    assert got.status == "fail"
    assert got.detail.endswith(f"; 0.00 GB free at {small_disk}")
    assert got.fix == "free space there or pass --run-dir on a larger disk"


# -- RAM -------------------------------------------------------------------------------------


def test_ram_against_the_job_and_its_workers(tmp_path: Path) -> None:
    ok = item(preflight.check(job(resources={"gpus": 0, "ram_gb": 0.5}), backend="local"), "ram")
    assert ok.status == "ok" and ok.detail.startswith("needs 0.50 GB (resources.ram_gb 0.50); ")
    huge = job(resources={"gpus": 0, "ram_gb": 1e6})
    got = item(preflight.check(huge, backend="docker"), "ram")
    assert got.status == "fail"
    assert got.fix == "lower num_workers or ram_gb, or run it on a rented host"
    workers = item(
        preflight.check(
            job(resources={"gpus": 0, "ram_gb": 2}),
            backend="local",
            argv=["python", "train.py", "training.num_workers=100000"],
        ),
        "ram",
    )
    assert workers.status == "fail"
    assert workers.detail.startswith(
        "needs 250000 GB (100000 workers x 2.5 GB (training.num_workers=100000); the job states 2)"
    )
    env_style = item(preflight.check(job(), backend="local", job_env={"NUM_WORKERS": "2"}), "ram")
    assert env_style.status == "ok"
    assert env_style.detail.startswith("needs 5 GB (2 workers x 2.5 GB (NUM_WORKERS=2)); ")
    flag = item(preflight.check(job(), backend="local", argv=["x", "--num-workers", "4"]), "ram")
    assert flag.detail.startswith("needs 10 GB (4 workers x 2.5 GB (--num-workers 4)); ")


def test_ram_is_skipped_without_a_figure_or_on_a_rented_host() -> None:
    assert item(preflight.check(job(), backend="local"), "ram").status == "skip"
    spec = job(resources={"gpus": 0, "ram_gb": 1e6})
    got = item(preflight.check(spec, backend="vast", disk_gb=100), "ram")
    assert got.status == "skip" and "rent filters" in got.detail


# -- GPUs ------------------------------------------------------------------------------------


def _gpu_job(memory: float | None = 8) -> JobSpec:
    return job(resources={"gpus": 1, "min_gpu_memory_gb": memory})


def test_a_free_gpu_that_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    # GPU 0 trains someone's job; the pick is GPU 1, idle.
    monkeypatch.setenv("RUNNER_FAKE_NVML", "scenario:healthy:gpus=2")
    report = preflight.check(_gpu_job(16), backend="local")
    gpu, busy = item(report, "gpu"), item(report, "gpu_busy")
    assert (gpu.status, gpu.detail) == (
        "ok",
        "GPU 1 NVIDIA RTX A4000 (16 GiB); the job needs 16 GB per GPU",
    )
    assert busy.status == "ok"
    assert busy.detail == "GPU 1 NVIDIA RTX A4000 is free: 2 % memory, 0 % utilisation"


def test_a_gpu_too_small_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_FAKE_NVML", "scenario:healthy:gpus=2")
    got = item(preflight.check(_gpu_job(24), backend="local"), "gpu")
    assert got.status == "fail"
    assert got.detail == "GPU 1 NVIDIA RTX A4000 (16 GiB); the job needs 24 GB per GPU"


def test_a_busy_gpu_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.launch.local import pick_device

    monkeypatch.setenv("RUNNER_FAKE_NVML", "scenario:healthy:gpus=1")
    spec = _gpu_job(4)
    device = pick_device(spec)  # as the CLI does, then hands it over
    got = item(preflight.check(spec, backend="local", device=device), "gpu_busy")
    assert got.status == "fail"
    assert got.detail == (
        "GPU 0 NVIDIA RTX A4000 is busy: 64 % memory, 97 % utilisation, 1 other process (pid 4242)"
    )
    assert got.fix == "wait for it, free it, or pick a free GPU (`runner gpus`); --force shares it"


def _trace(path: Path, used_gib: float, util: int, pids: tuple[int, ...] = ()) -> str:
    """A one-tick recorded trace: GPU 0, a 24 GiB card with ``used_gib`` in use."""
    snap = GpuSnapshot(
        index=0,
        timestamp=1000.0,
        uuid="GPU-00000000-0000-4000-8000-000000000000",
        name="NVIDIA GeForce RTX 4090",
        memory_used_bytes=int(used_gib * GIB),
        memory_total_bytes=24 * GIB,
        utilization_gpu_percent=util,
        processes=tuple(GpuProcess(pid, int(used_gib * GIB)) for pid in pids),
    )
    header = {"format": TRACE_FORMAT, "version": 1, "driver_version": "570.86.15", "gpus": 1}
    tick = {"timestamp": 1000.0, "gpus": [snap.to_dict()], "xids": []}
    path.write_text(json.dumps(header) + "\n" + json.dumps(tick) + "\n")
    return f"trace:{path}"


def test_a_gpu_90_percent_used_fails_and_a_little_use_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_FAKE_NVML", _trace(tmp_path / "full.jsonl", 21.6, 0, (77,)))
    full = item(preflight.check(_gpu_job(None), backend="local"), "gpu_busy")
    assert full.status == "fail"
    assert full.detail.startswith("GPU 0 NVIDIA GeForce RTX 4090 is busy: 90 % memory, 0 % ")
    # Little used, but not enough left for the job: it would not fit beside the other.
    monkeypatch.setenv("RUNNER_FAKE_NVML", _trace(tmp_path / "part.jsonl", 10, 5, (78,)))
    part = item(preflight.check(_gpu_job(20), backend="local"), "gpu_busy")
    assert part.status == "fail"
    assert part.detail.endswith("; 14.0 GiB free < 20 GB needed")
    monkeypatch.setenv("RUNNER_FAKE_NVML", _trace(tmp_path / "some.jsonl", 3, 5, (79,)))
    some = item(preflight.check(_gpu_job(8), backend="local"), "gpu_busy")
    assert some.status == "warn"
    assert some.detail.startswith("GPU 0 NVIDIA GeForce RTX 4090 is shared: 12 % memory")


def test_a_cpu_capable_job_given_a_busy_gpu_is_warned(monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.launch.local import pick_device

    monkeypatch.setenv("RUNNER_FAKE_NVML", "scenario:healthy:gpus=1")
    spec = job()  # resources.gpus 0: pick_device still hands it the freest GPU when there is one
    got = item(preflight.check(spec, backend="local", device=pick_device(spec)), "gpu_busy")
    assert got.status == "warn"
    assert got.detail.startswith("GPU 0 NVIDIA RTX A4000 is busy: 64 % memory")


def test_no_gpu_for_a_gpu_job_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_FAKE_NVML", "no-driver")
    report = preflight.check(_gpu_job(), backend="docker")
    got = item(report, "gpu")
    assert got.status == "fail"
    assert got.detail.startswith("t needs 1 GPU(s) and 0 are visible (no NVIDIA driver")
    assert item(report, "gpu_busy").status == "skip"


def test_gpus_are_skipped_for_cpu_jobs_and_rented_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_FAKE_NVML", "scenario:healthy:gpus=1")  # busy, but not ours
    cpu = preflight.check(job(), backend="local")
    assert (item(cpu, "gpu").status, item(cpu, "gpu_busy").status) == ("skip", "skip")
    rented = preflight.check(_gpu_job(80), backend="vast", disk_gb=100)
    assert item(rented, "gpu").detail == (
        "a rented host: the rent filters ask for 1 GPU(s) with >= 80 GB"
    )


# -- secrets ---------------------------------------------------------------------------------

SECRETS = [
    {"name": "MY_TOKEN", "purpose": "pulling the base model"},
    {"name": "WANDB_API_KEY", "required": False, "purpose": "W&B logging"},
    {"name": "HF_TOKEN", "required": False},
]


def test_required_secret_missing_fails_with_names_only() -> None:
    spec = job(secrets=SECRETS, hub={"repo": "me/ckpt"})
    got = item(preflight.check(spec, backend="local", environ={"HF_TOKEN": "hf_s3cret"}), "secrets")
    assert got.status == "fail"
    assert got.detail == (
        "MY_TOKEN is not set (required: pulling the base model); "
        "WANDB_API_KEY is not set (optional: W&B logging is off); set: HF_TOKEN"
    )
    assert got.fix == "export MY_TOKEN=... in this shell first (never put it in the job file)"


def test_optional_secret_missing_warns_with_what_is_lost() -> None:
    spec = job(secrets=SECRETS, hub={"repo": "me/ckpt"})
    values = {"MY_TOKEN": "v4lue-never-shown", "WANDB_API_KEY": "w4ndb-never-shown"}
    report = preflight.check(spec, backend="local", environ=values)
    got = item(report, "secrets")
    assert got.status == "warn"
    assert (
        got.detail
        == "HF_TOKEN is not set (optional: no pushes to me/ckpt); set: MY_TOKEN, WANDB_API_KEY"
    )
    text = json.dumps(report.to_dict())
    assert "never-shown" not in text


def test_secrets_all_set_or_none_named() -> None:
    values = {"MY_TOKEN": "a", "WANDB_API_KEY": "b", "HF_TOKEN": "c"}
    assert (
        item(
            preflight.check(job(secrets=SECRETS), backend="local", environ=values), "secrets"
        ).status
        == "ok"
    )
    assert item(preflight.check(job(), backend="local", environ={}), "secrets").status == "skip"


# -- image -----------------------------------------------------------------------------------


def test_image_here_is_skipped_unless_the_job_only_runs_in_one() -> None:
    assert item(preflight.check(job(), backend="local"), "image").status == "skip"
    got = item(preflight.check(job(image="runner/dino-wm:latest"), backend="local"), "image")
    assert got.status == "fail"
    assert got.fix == "launch it with --docker or on a rented host, or pick a profile (--profile)"


def test_image_without_an_engine_fails_for_docker(tmp_path: Path) -> None:
    where = f"unix://{tmp_path}/no-docker.sock"
    spec = job(image="runner-test/debian-sshd:bookworm")
    got = item(preflight.check(spec, backend="docker", environ={"DOCKER_HOST": where}), "image")
    assert got.status == "fail"
    assert got.detail.startswith(f"no Docker engine answers at {where} (")
    assert got.fix == "start it (`sudo systemctl start docker`) or point DOCKER_HOST at one"
    # A rented host pulls the image itself: not knowing is a warning there.
    rented = preflight.check(spec, backend="vast", disk_gb=100, environ={"DOCKER_HOST": where})
    assert item(rented, "image").status == "warn"


@pytest.fixture
def engine() -> None:
    from tests.fakes.vast_server import docker_unavailable_reason

    reason = docker_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.slow
@pytest.mark.usefixtures("engine")
def test_image_on_the_local_engine() -> None:
    from tests.fakes.vast_server import BASE_IMAGE

    here = item(preflight.check(job(image=BASE_IMAGE), backend="docker"), "image")
    assert here.status == "ok" and here.detail.startswith(f"{BASE_IMAGE} on the local engine (")
    absent = "runner/absent-image:latest"
    got = item(preflight.check(job(image=absent), backend="docker"), "image")
    assert got.status == "fail"
    assert got.detail == f"{absent} is not on the Docker engine at unix:///var/run/docker.sock"
    assert got.fix == "build it (`runner image build absent-image`) or check image: in the job"
    rented = preflight.check(job(image=absent), backend="vast", disk_gb=100)
    assert item(rented, "image").status == "warn"
    # The image's size counts on a rented disk once the engine knows it.
    sized = preflight.check(
        job(image=BASE_IMAGE, checkpoints={"size_gb": 1}), backend="vast", disk_gb=100
    )
    assert item(sized, "disk").detail.startswith("needs 9.3 GB: image 0.28 + 4 x 1 checkpoints")


# -- user site -------------------------------------------------------------------------------


@pytest.fixture
def user_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user site of its own, seen from an interpreter that is not an isolated venv."""
    import site

    folder = tmp_path / "user-site"
    folder.mkdir()
    monkeypatch.setattr(site, "USER_SITE", str(folder))
    monkeypatch.setattr(sys, "base_prefix", sys.prefix)  # as conda's or the system's Python
    return folder


def test_user_site_torch_shadows_and_fails(user_site: Path) -> None:
    (user_site / "torch").mkdir()
    (user_site / "torch-2.1.0.dist-info").mkdir()
    got = item(preflight.check(job(), backend="local", environ={}), "user_site")
    assert got.status == "fail"
    assert got.detail == f"{user_site} holds torch, which shadow(s) this environment's own"
    assert (
        got.fix == "set PYTHONNOUSERSITE: '1' in the job's env, or remove them from the user site"
    )


def test_user_site_is_ok_when_switched_off_or_empty(user_site: Path) -> None:
    empty = item(preflight.check(job(), backend="local", environ={}), "user_site")
    assert (empty.status, empty.detail) == ("ok", f"nothing installed in {user_site}")
    (user_site / "numpy").mkdir()
    shell = preflight.check(job(), backend="local", environ={"PYTHONNOUSERSITE": "1"})
    assert item(shell, "user_site").status == "ok"
    in_job = preflight.check(job(env={"PYTHONNOUSERSITE": "1"}), backend="local", environ={})
    assert item(in_job, "user_site").detail == "the job's env sets PYTHONNOUSERSITE"


def test_user_site_with_unrelated_packages_warns(user_site: Path) -> None:
    (user_site / "leftpad_xyz-1.0.dist-info").mkdir()
    got = item(preflight.check(job(), backend="local", environ={}), "user_site")
    assert got.status == "warn"


def test_user_site_is_off_in_a_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import site

    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests do not run in a venv")
    (tmp_path / "torch").mkdir()
    monkeypatch.setattr(site, "USER_SITE", str(tmp_path))
    got = item(preflight.check(job(), backend="local", environ={}), "user_site")
    assert got.status == "ok" and got.detail.endswith("is a venv: no user site on its path")


def test_user_site_in_an_image_needs_pythonnousersite(tmp_path: Path) -> None:
    nowhere = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    plain = preflight.check(job(), backend="vast", disk_gb=100, environ=nowhere)
    assert item(plain, "user_site").status == "warn"
    assert item(plain, "user_site").fix == "set PYTHONNOUSERSITE: '1' in the job's env"
    set_ = preflight.check(job(env={"PYTHONNOUSERSITE": "1"}), backend="docker", environ=nowhere)
    assert item(set_, "user_site").status == "ok"


# -- the shipped jobs ------------------------------------------------------------------------


def test_the_embedded_franka_profile_passes_here(franka_ds: Path, tmp_path: Path) -> None:
    spec = load_job("franka_cube_stack", profile="embedded")
    report = preflight.check(spec, backend="local", dataset=franka_ds, run_dir=tmp_path, environ={})
    assert report.failed == ()
    assert [i.key for i in report.warned] == ["secrets"]  # W&B and Hub pushes are optional


# -- the job's program -----------------------------------------------------------------------


def test_fields_a_program_ignores_are_one_warning_each(tmp_path: Path) -> None:
    spec = job(
        program={"kind": "lerobot"},
        command="lerobot-train --policy.type=act",
        checkpoints={"every_minutes": 30, "size_gb": 0.01},
        restart={"resume_args": ["--resume=true"]},
    )
    report = preflight.check(spec, backend="local", run_dir=tmp_path, environ={})
    minutes = item(report, "ignored.checkpoints.every_minutes")
    assert (minutes.status, minutes.title) == ("warn", "job field")
    assert minutes.detail == (
        "job field checkpoints.every_minutes does not reach lerobot-train: "
        "lerobot-train saves every --save_freq steps"
    )
    assert (
        minutes.fix == "say it in lerobot-train's own terms (its command or config) if it matters"
    )
    resume = item(report, "ignored.restart.resume_args")
    assert resume.detail == (
        "job field restart.resume_args does not reach lerobot-train: "
        "runner resumes lerobot-train with --config_path"
    )
    # After the other items; warnings only: nothing stops the launch.
    assert [i.key for i in report.items][-2:] == [
        "ignored.checkpoints.every_minutes",
        "ignored.restart.resume_args",
    ]
    assert report.failed == ()
    dino = job(program={"kind": "dino_wm"}, checkpoints={"every_steps": 100})
    got = item(
        preflight.check(dino, backend="local", environ={}), "ignored.checkpoints.every_steps"
    )
    assert got.detail == (
        "job field checkpoints.every_steps does not reach DINO WM: DINO WM saves once per epoch"
    )


def test_a_generic_job_or_one_whose_fields_all_reach_its_program_has_no_such_item() -> None:
    for spec in (
        job(checkpoints={"every_minutes": 30}, restart={"resume_args": ["resume=true"]}),
        job(program={"kind": "lerobot"}, checkpoints={"every_steps": 100}),
    ):
        keys = [i.key for i in preflight.check(spec, backend="local", environ={}).items]
        assert not [k for k in keys if k.startswith("ignored.") or k == "fork"]


def test_a_job_needing_an_unnamed_fork_is_warned(tmp_path: Path) -> None:
    nowhere = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    spec = load_job("franka_cube_stack")
    report = preflight.check(spec, backend="vast", disk_gb=200, environ=nowhere)
    fork = item(report, "fork")
    assert (fork.status, fork.title) == ("warn", "fork")
    assert fork.detail == (
        "franka_cube_stack needs a fork: conf/env/franka_cube_stack.yaml and "
        "datasets/franka_cube_stack_dset.py are in your DINO WM fork; upstream "
        "gaoyuezhou/dino_wm has neither; build with --build-arg DINO_WM_REPO=<url> "
        "--build-arg DINO_WM_REF=<sha>"
    )
    assert fork.fix == (
        "name the fork in program.repo and program.ref (runner image build passes them)"
    )
    assert report.items[-1] == fork and "fork" not in [i.key for i in report.failed]
    # Named (program.repo): nothing to say. No fork needed: nothing either.
    named = spec.model_copy(
        update={"program": spec.program.model_copy(update={"repo": "https://x/dino_wm.git"})}
    )
    keys = [i.key for i in preflight.check(named, backend="vast", environ=nowhere).items]
    assert "fork" not in keys
    embedded = load_job("franka_cube_stack", profile="embedded")
    assert "fork" not in [i.key for i in preflight.check(embedded, backend="local").items]


def test_the_shipped_openpi_job_says_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """openpi_pi0 pins a Hub revision openpi never reads, and runs a config upstream lacks."""
    isolate_client(monkeypatch, tmp_path / "hf_home")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # refused: the dataset item warns
    nowhere = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    report = preflight.check(load_job("openpi_pi0"), backend="vast", environ=nowhere)
    keys = [i.key for i in report.items]
    assert keys[-2:] == ["ignored.dataset.revision", "fork"]
    assert item(report, "ignored.dataset.revision").detail == (
        "job field dataset.revision does not reach openpi: openpi's data config names the "
        "dataset itself"
    )
    assert item(report, "fork").detail.startswith("openpi_pi0 needs a fork: the config pi0_so101")
    assert item(report, "fork").detail.endswith(
        "; build with --build-arg OPENPI_REPO=<url> --build-arg OPENPI_REF=<sha>"
    )
    assert {item(report, k).status for k in keys[-2:]} == {"warn"}

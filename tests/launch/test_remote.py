"""The rented path of ``runner launch``: rent, verify, sync, start the agent detached, return.

Against the loopback vast.ai (instances are real containers with sshd) and the loopback Hub,
over real SSH and rsync. The fast tests need no container; the slow ones run the toy job
(``tests/launch/toy.py``) on an image with runner in it made here from the working tree
(``runner-test/launch-dev``: the Debian sshd image, rsync, runner's agent dependencies, this
checkout's ``runner/``), and the Done-when test runs ``runner launch franka_cube_stack``
itself on ``runner/franka-embedded`` (``tests/launch/conftest.py`` builds it).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.cloud.offers import Requirements
from runner.cloud.provision import destroy
from runner.cloud.vast import CloudError
from runner.errors import RunnerError
from runner.launch.hostside import AGENT_PID, make_launch
from runner.launch.remote import launch_vast
from runner.launch.runs import Runs, new_run_id
from runner.launch.sync import sync_folder
from runner.rundir import Event
from runner.spec import JobSpec
from tests.cloud import FAST, GPU, Local, api_for
from tests.conftest import REPO, RUNNER_BIN
from tests.fakes.hub_server import HubServer
from tests.fakes.vast_server import BASE_IMAGE, VastServer, docker_unavailable_reason
from tests.launch.conftest import INPUTS_LABEL, build_context
from tests.launch.toy import toy_dataset, toy_job

REPO_ID = "runner-test/toy-remote"
DEPS_IMAGE = "runner-test/launch-deps:latest"
DEV_IMAGE = "runner-test/launch-dev:latest"

_DEPS_DOCKERFILE = f"""FROM {BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends rsync \\
 && rm -rf /var/lib/apt/lists/*
COPY ca.crt /etc/ssl/certs/host-ca.crt
ENV PIP_CERT=/etc/ssl/certs/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/runner && /opt/runner/bin/pip install --no-cache-dir \\
    "typer>=0.12" "rich>=13" "pydantic>=2.6,<3" "pyyaml>=6" "psutil>=5.9" "numpy>=1.24" \\
    "nvidia-ml-py>=12.535" "huggingface_hub>=1.6,<3"
"""
_DEV_DOCKERFILE = f"""FROM {DEPS_IMAGE}
COPY runner /opt/runner-src/runner
RUN echo /opt/runner-src > /opt/runner/lib/python3.11/site-packages/runner-src.pth \\
 && printf '#!/opt/runner/bin/python\\nfrom runner.cli import run\\nrun()\\n' \\
    > /usr/local/bin/runner && chmod +x /usr/local/bin/runner && runner --help >/dev/null
"""


def _build(client: Any, tag: str, dockerfile: str, files: dict[str, Path], inputs: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile.encode())
        tar.addfile(info, io.BytesIO(dockerfile.encode()))
        for name, path in files.items():
            tar.add(
                str(path), arcname=name, filter=lambda t: None if "__pycache__" in t.name else t
            )
    build_context(client, buf, tag, inputs)


def _labelled(client: Any, tag: str, inputs: str) -> bool:
    try:
        return bool(client.images.get(tag).labels.get(INPUTS_LABEL) == inputs)
    except Exception:
        return False


def _source_hash() -> str:
    digest = hashlib.sha256(_DEV_DOCKERFILE.encode())
    for path in sorted((REPO / "runner").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + path.read_bytes())
    return digest.hexdigest()[:24]


@pytest.fixture(scope="session")
def dev_image() -> str:
    """``runner-test/launch-dev`` with this checkout's runner (rebuilt when runner/ changes)."""
    reason = docker_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    import docker

    client = docker.from_env(timeout=900)
    try:
        deps = hashlib.sha256(_DEPS_DOCKERFILE.encode()).hexdigest()[:24]
        if not _labelled(client, DEPS_IMAGE, deps):
            ca = Path("/etc/ssl/certs/ca-certificates.crt")
            _build(client, DEPS_IMAGE, _DEPS_DOCKERFILE, {"ca.crt": ca}, deps)
        source = _source_hash()
        if not _labelled(client, DEV_IMAGE, source):
            _build(client, DEV_IMAGE, _DEV_DOCKERFILE, {"runner": REPO / "runner"}, source)
    finally:
        client.close()
    return DEV_IMAGE


@pytest.fixture
def rented_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[VastServer, HubServer, Local]]:
    """A user's shell pointed at the loopback vast.ai and Hub; state under ``tmp_path``."""
    with VastServer() as vast, HubServer(tmp_path / "hub-storage") as hub:
        state = tmp_path / "xdg-state"
        for key, value in {
            "VAST_URL": vast.url,
            "VAST_API_KEY": vast.api_key,
            "XDG_STATE_HOME": str(state),
            **hub.client_env(tmp_path / "hf-home"),
        }.items():
            monkeypatch.setenv(key, value)
        yield vast, hub, Local(state)
        assert vast.errors == []


def _docker_exec(vast: VastServer, iid: int, command: str) -> tuple[int, str]:
    import docker

    client = docker.from_env()
    try:
        container = client.containers.get(vast.instance(iid).container_name)
        code, out = container.exec_run(["sh", "-c", command])
        return int(code), out.decode(errors="replace")
    finally:
        client.close()


def _launch(
    spec: JobSpec,
    overrides: list[str],
    *,
    vast: VastServer,
    local: Local,
    hub: HubServer,
    dataset: Path | None,
    lines: list[str],
    **fields: Any,
) -> Any:
    argv, env = spec.apply_overrides(overrides)
    launch = make_launch(
        spec, backend="vast", argv=argv, env=env, run_id=new_run_id(spec.name), **fields
    )
    return launch_vast(
        launch,
        req=Requirements.from_spec(spec),
        dataset=dataset,
        secrets={"HF_TOKEN": hub.token},
        runs=Runs(local.registry.path),
        say=lines.append,
        client=api_for(vast),
        registry=local.registry,
        ssh=local.ssh,
        timeouts=FAST,
    )


def _wait(what: str, check: Any, timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


# --------------------------------------------------------------------------- fast


def test_on_an_unknown_instance_is_one_line_and_rents_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    spec = toy_job(tmp_path / "jobs")
    local = Local(tmp_path / "state")
    with VastServer() as vast:
        argv, env = spec.apply_overrides([])
        launch = make_launch(spec, backend="vast", argv=argv, env=env, instance_id=424242)
        runs = Runs(local.registry.path)
        with pytest.raises(CloudError) as err:
            launch_vast(
                launch,
                req=Requirements.from_spec(spec),
                dataset=None,
                secrets={},
                runs=runs,
                say=lambda line: None,
                client=api_for(vast),
                registry=local.registry,
                ssh=local.ssh,
            )
        assert "--on 424242: no such instance" in str(err.value)
        assert not [r for r in vast.requests if r.method in ("PUT", "DELETE")]
        record = runs.get(launch.run_id)
        assert record is not None and record.state == "failed"


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_rented_run_survives_ssh_drops_pushes_ends_its_host_and_resumes_on_a_new_one(
    tmp_path: Path,
    dev_image: str,
    rented_env: tuple[VastServer, HubServer, Local],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vast, hub, local = rented_env
    monkeypatch.setenv("RUNNER_IMAGE", dev_image)
    vast.add_offer(fake_gpu=GPU, disk_space=200, dph_total=0.4)
    spec = toy_job(tmp_path / "jobs", hub_repo=REPO_ID)
    data = toy_dataset(tmp_path / "toy-data", files=10, kib=512)
    lines: list[str] = []
    started = time.monotonic()
    record = _launch(
        spec,
        ["training.steps=80", "training.step_s=0.1", "training.save_every=10"],
        vast=vast,
        local=local,
        hub=hub,
        dataset=data,
        lines=lines,
    )
    took = time.monotonic() - started
    text = "\n".join(lines)
    assert record.state == "running" and record.instance_id is not None, text
    iid = record.instance_id
    assert "vast.ai rents at least 8 GB: renting 8 GB" in text
    assert "dataset: synced with rsync" in text and "dataset: 100%" in text
    assert f"agent: running detached on instance {iid}" in text
    assert took < 60, f"launch took {took:.1f} s"
    assert record.ssh_port == vast.instance(iid).ssh_port and record.dph_total is not None
    assert record.run_dir == f"/workspace/runs/{record.run_id}"
    inst = vast.instance(iid)
    assert inst.image_run == dev_image and inst.disk_gb == 8

    # The dataset is on the host, whole; the user's vast.ai key is nowhere on it.
    code, out = _docker_exec(vast, iid, f"du -sb /workspace/datasets/{data.name} | cut -f1")
    assert code == 0 and int(out.strip()) >= 10 * 512 * 1024
    code, out = _docker_exec(
        vast,
        iid,
        "cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline /etc/environment 2>/dev/null; "
        "find /workspace /root /tmp -type f -exec cat {} + 2>/dev/null; true",
    )
    assert len(out) > 1_000_000 and vast.api_key not in out

    # Drop every SSH connection mid-run (a session open now too): the agent trains on.
    ssh_argv = [local.ssh.binary, *local.ssh.options(_target(record)), "sleep 300"]
    session = subprocess.Popen(ssh_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = record.run_dir
    _wait("the session", lambda: _docker_exec(vast, iid, "pgrep -f '^sshd: root'")[0] == 0, 20)
    code, _ = _docker_exec(vast, iid, "pkill -KILL -f '^sshd: root'")
    assert code == 0
    assert session.wait(timeout=20) != 0  # the connection really dropped
    code, out = _docker_exec(vast, iid, f"kill -0 $(cat {run_dir}/{AGENT_PID}) && echo alive")
    assert "alive" in out, out

    # It finishes, pushes, and the host destroys itself with its own key.
    _wait("the destroy", lambda: vast.instance(iid).destroyed_at is not None, 180)
    assert vast.still_billing() == []
    files = hub.list_files(REPO_ID)
    assert "checkpoints/step_000000080/state.txt" in files

    def deletes() -> list[int]:
        path = f"/api/v0/instances/{iid}"
        return [
            r.status for r in vast.requests if (r.method, r.path.rstrip("/")) == ("DELETE", path)
        ]

    # Logged once answered, a moment after the instance is marked destroyed.
    assert _wait("the DELETE in the log", deletes, 30, 0.1) == [200]

    # A second launch on a new instance resumes from the pushed step; --end keep leaves it.
    lines.clear()
    again = _launch(
        spec,
        ["training.steps=90", "training.step_s=0.05", "training.save_every=5"],
        vast=vast,
        local=local,
        hub=hub,
        dataset=data,
        lines=lines,
        resume=True,
        end_policy="keep",
    )
    iid2 = again.instance_id
    assert iid2 is not None and iid2 != iid
    events = _wait("the end", lambda: _ended_events(vast, iid2, again.run_dir), 120)
    kinds = [e.kind for e in events]
    assert "host_kept" in kinds and "finished" in kinds, kinds
    started_event = next(e for e in events if e.kind == "started")
    assert started_event.evidence["checkpoint_step"] == 80
    code, log = _docker_exec(vast, iid2, f"cat {again.run_dir}/logs/attempt-0.log")
    assert "resuming from step 80 " in log and "step 81/90" in log and "step 80/90" not in log
    code, agent_log = _docker_exec(vast, iid2, f"cat {again.run_dir}/agent.log")
    assert "resume: pulled step 80 from the Hub" in agent_log
    assert hub.token not in agent_log + log
    assert "checkpoints/step_000000090/state.txt" in hub.list_files(REPO_ID)
    destroy(api_for(vast), iid2)
    assert vast.still_billing() == []


def _target(record: Any) -> Any:
    from runner.cloud.ssh import SshTarget

    return SshTarget(record.ssh_host, record.ssh_port, name=f"vast-{record.instance_id}")


def _ended_events(vast: VastServer, iid: int, run_dir: str) -> list[Event] | None:
    _, out = _docker_exec(vast, iid, f"cat {run_dir}/events.jsonl 2>/dev/null")
    events = [Event.from_json(line) for line in out.splitlines() if line.strip()]
    return events if any(e.kind.startswith("host_") for e in events) else None


@pytest.mark.slow
def test_a_failure_after_the_rent_destroys_the_host(
    tmp_path: Path,
    rented_env: tuple[VastServer, HubServer, Local],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vast, hub, local = rented_env
    # The plain sshd image: no rsync (the dataset goes by tar) and no runner (the start fails).
    monkeypatch.setenv("RUNNER_IMAGE", BASE_IMAGE)
    vast.add_offer(fake_gpu=GPU, disk_space=200, dph_total=0.4)
    spec = toy_job(tmp_path / "jobs", hub_repo=REPO_ID)
    data = toy_dataset(tmp_path / "toy-data", files=4, kib=64)
    lines: list[str] = []
    with pytest.raises(RunnerError) as err:
        _launch(spec, [], vast=vast, local=local, hub=hub, dataset=data, lines=lines)
    message = str(err.value)
    assert "\n" not in message
    assert "runner is not installed on the host" in message
    assert "destroyed (nothing left billing)" in message
    # Whichever way it went (the Debian image may have rsync now), the dataset was sent.
    text = "\n".join(lines)
    assert "dataset: synced with rsync" in text or "dataset: synced with tar" in text
    assert vast.still_billing() == []
    (record,) = Runs(local.registry.path).all()
    assert record.state == "failed"
    assert local.registry.instances()[0].status == "destroyed"


@pytest.mark.slow
def test_on_an_instance_runner_rented_verifies_it_and_never_destroys_it(
    tmp_path: Path,
    dev_image: str,
    rented_env: tuple[VastServer, HubServer, Local],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runner.cloud.provision import rent

    vast, hub, local = rented_env
    vast.add_offer(fake_gpu=GPU, disk_space=200, dph_total=0.4)
    spec = toy_job(tmp_path / "jobs", hub_repo=REPO_ID)
    api = api_for(vast)
    rental = rent(
        api,
        Requirements(disk_gb=8),
        image=dev_image,
        job="toy",
        registry=local.registry,
        ssh=local.ssh,
        timeouts=FAST,
    )
    iid = rental.instance.id
    runs = Runs(local.registry.path)

    def on(disk_gb: float, lines: list[str], **fields: Any) -> Any:
        argv, env = spec.apply_overrides(["training.steps=20", "training.step_s=0.05"])
        launch = make_launch(
            spec, backend="vast", argv=argv, env=env, run_id=new_run_id("toy"), **fields
        )
        return launch_vast(
            launch,
            req=Requirements.from_spec(spec, disk_gb=disk_gb),
            dataset=None,
            secrets={"HF_TOKEN": hub.token},
            runs=runs,
            say=lines.append,
            client=api,
            registry=local.registry,
            ssh=local.ssh,
        )

    # The host does not fit (less disk than asked): one line, and the instance stays.
    with pytest.raises(CloudError) as err:
        on(150, [], instance_id=iid)
    assert f"--on {iid}: the host does not fit the job" in str(err.value)
    assert vast.instance(iid).destroyed_at is None

    lines: list[str] = []
    record = on(8, lines, instance_id=iid, end_policy="keep")
    assert record.instance_id == iid and record.state == "running"
    assert f"instance {iid} verified" in "\n".join(lines)
    assert [i.id for i in vast.instances] == [iid]  # nothing else rented
    events = _wait("the end", lambda: _ended_events(vast, iid, record.run_dir), 120)
    kept = next(e for e in events if e.kind.startswith("host_"))
    assert kept.kind == "host_kept" and "--end keep" in kept.message

    # rsync gone from the host: the dataset goes by tar over the same ssh, said in one line.
    code, _ = _docker_exec(vast, iid, "mv $(command -v rsync) /usr/local/rsync.gone")
    assert code == 0
    data = toy_dataset(tmp_path / "tar-data", files=6, kib=256)
    said: list[str] = []
    done = sync_folder(data, local.ssh, _target(record), "/workspace/tar-copy", say=said.append)
    assert done.method == "tar" and done.bytes_total == 6 * 256 * 1024
    assert said == [
        "dataset: rsync is missing on the host: sending it with tar over ssh (no resume)"
    ]
    code, out = _docker_exec(vast, iid, "du -sb --apparent-size /workspace/tar-copy | cut -f1")
    assert int(out.strip()) >= 6 * 256 * 1024
    destroy(api, iid)
    assert vast.still_billing() == []


# --------------------------------------------------------------------------- Done-when


@pytest.mark.slow
def test_runner_launch_franka_embedded_on_a_rented_host_end_to_end(
    tmp_path: Path, built_images: Any, subprocess_env: dict[str, str]
) -> None:
    """``runner launch franka_cube_stack --profile embedded`` as a real process, twice."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    text = (REPO / "jobs" / "franka_cube_stack.yaml").read_text()
    text = text.replace(
        "{episodes: 16, steps: 120, image_size: 64}", "{episodes: 3, steps: 40, image_size: 32}"
    )
    if "\nhub:" not in text:
        text += (
            "hub: {repo: runner-test/franka-remote, push_interval_s: 1, min_commit_interval_s: 0}\n"
        )
    (jobs / "franka_cube_stack.yaml").write_text(text)
    repo_id = "runner-test/franka-remote"
    with VastServer() as vast, HubServer(tmp_path / "hub-storage") as hub:
        vast.add_offer(fake_gpu=GPU, disk_space=200, dph_total=0.4)
        env = {
            **subprocess_env,
            **hub.client_env(tmp_path / "hf-home"),
            "VAST_URL": vast.url,
            "VAST_API_KEY": vast.api_key,
            "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
            "RUNNER_JOBS_DIR": str(jobs),
            "RUNNER_DATA_DIR": str(tmp_path / "data"),
            "RUNNER_IMAGE": built_images.embedded,
        }
        # No --disk: the embedded profile asks for 1 GB, raised to vast.ai's least (8 GB)
        # before pre-flight judges the projection against it.
        common = ["franka_cube_stack", "--profile", "embedded"]
        started = time.monotonic()
        first = subprocess.run(
            [
                str(RUNNER_BIN),
                "launch",
                *common,
                "--",
                "img_size=32",
                "training.steps=60",
                "training.save_every=20",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=False,
            cwd=tmp_path,
        )
        took = time.monotonic() - started
        assert first.returncode == 0, first.stderr
        run_id = first.stdout.strip().splitlines()[-1]
        assert run_id.startswith("franka_cube_stack-")
        assert "dataset: synced with rsync" in first.stderr
        assert "vast.ai rents at least 8 GB: renting 8 GB" in first.stderr
        assert hub.token not in first.stdout + first.stderr
        (inst,) = vast.instances
        assert took < 300
        _wait("the destroy", lambda: vast.instance(inst.id).destroyed_at is not None, 400, 1.0)
        assert vast.still_billing() == []
        assert "checkpoints/step_000000060/manifest.json" in hub.list_files(repo_id)

        second = subprocess.run(
            [
                str(RUNNER_BIN),
                "launch",
                *common,
                "--resume",
                "--end",
                "keep",
                "--",
                "img_size=32",
                "training.steps=80",
                "training.save_every=20",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=False,
            cwd=tmp_path,
        )
        assert second.returncode == 0, second.stderr
        run2 = second.stdout.strip().splitlines()[-1]
        inst2 = next(i for i in vast.instances if i.id != inst.id)
        run_dir = f"/workspace/runs/{run2}"
        events = _wait("the end", lambda: _ended_events(vast, inst2.id, run_dir), 400, 1.0)
        started_event = next(e for e in events if e.kind == "started")
        assert started_event.evidence["checkpoint_step"] == 60
        _, log = _docker_exec(vast, inst2.id, f"cat {run_dir}/logs/attempt-0.log")
        assert "resuming from step 60 " in log
        destroy(api_for(vast), inst2.id)
        assert vast.still_billing() == []
        assert json.dumps(vast.requests[0].body or {}).find(hub.token) == -1
        assert os.environ.get("HF_TOKEN") != hub.token

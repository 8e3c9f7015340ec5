"""``runner launch JOB --docker``: the job's image on the real local engine, under the agent.

The Done-when test runs ``runner launch franka_cube_stack --docker`` as a real process: the
embedded profile trains in runner/franka-embedded (built by conftest.py) under the agent in
the container, and the mounted run folder ends with complete checkpoints, the events and a
finished status. The failures a user meets (image missing, GPUs without the NVIDIA
runtime) are one line each, with no container left behind.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from runner.errors import DeviceError, RunnerError
from runner.harness import latest_checkpoint, list_checkpoints, verify_checkpoint
from runner.launch.docker import RUN_ID_LABEL, container_name, run_docker
from runner.launch.hostside import make_launch
from runner.rundir import read_events, read_launch, read_status
from runner.spec import load_job
from tests.conftest import REPO, RUNNER_BIN
from tests.launch.conftest import BuiltImages


def _env(base: dict[str, str], tmp_path: Path, jobs: Path = REPO / "jobs") -> dict[str, str]:
    return {
        **base,
        "RUNNER_JOBS_DIR": str(jobs),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "RUNNER_DATA_DIR": str(tmp_path / "data"),
        "RUNNER_RUNS_DIR": str(tmp_path / "runs"),
    }


def _launch(
    *args: str, env: dict[str, str], timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUNNER_BIN), "launch", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=env.get("RUNNER_DATA_DIR", "/tmp"),
    )


def _runner_containers(client: Any) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": RUN_ID_LABEL}))


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


def _job_copy(tmp_path: Path, **profile: str) -> Path:
    """The jobs folder with franka_cube_stack's embedded profile changed as given."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    text = (REPO / "jobs" / "franka_cube_stack.yaml").read_text()
    for old, new in profile.items():
        assert old in text
        text = text.replace(old, new)
    (jobs / "franka_cube_stack.yaml").write_text(text)
    return jobs


@pytest.mark.slow
def test_launch_docker_trains_in_the_image_under_the_agent(
    built_images: BuiltImages,
    docker_client: Any,
    tmp_path: Path,
    subprocess_env: dict[str, str],
) -> None:
    (tmp_path / "data").mkdir()
    run_dir = tmp_path / "run"
    env = _env(subprocess_env, tmp_path)
    proc = _launch(
        "franka_cube_stack", "--docker", "--run-dir", str(run_dir), "--",
        "training.steps=40", "training.batch_size=4",
        env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "profile embedded" in proc.stderr
    assert "docker: container runner-franka_cube_stack" in proc.stderr
    assert "step 40/40" in proc.stderr  # the container's output was followed
    launch = read_launch(run_dir)
    assert launch is not None and launch.backend == "docker"
    assert launch.dataset == "/data/franka_cube_stack_synthetic"  # as the container sees it
    ckpt_dir = run_dir / "checkpoints"
    newest = latest_checkpoint(ckpt_dir)
    assert newest is not None and newest.step == 40
    for ckpt in list_checkpoints(ckpt_dir):
        assert verify_checkpoint(ckpt) == []
    kinds = [e.kind for e in read_events(run_dir)]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    status = read_status(run_dir)
    assert status is not None and status.state == "finished" and status.exit_code == 0
    assert _runner_containers(docker_client) == []  # removed once it ended


@pytest.mark.slow
def test_a_missing_image_is_one_line_and_starts_nothing(
    built_images: BuiltImages,
    docker_client: Any,
    tmp_path: Path,
    subprocess_env: dict[str, str],
) -> None:
    jobs = _job_copy(
        tmp_path,
        **{"image: runner/franka-embedded:latest": "image: runner/franka-missing:latest"},
    )
    (tmp_path / "data").mkdir()
    env = _env(subprocess_env, tmp_path, jobs)
    for extra in ([], ["--force"]):  # pre-flight says it; forced past it, the backend does
        proc = _launch(
            "franka_cube_stack", "--docker", *extra, "--run-dir", str(tmp_path / "run"), env=env
        )
        assert proc.returncode != 0
        line = _one_error_line(proc)
        assert "runner/franka-missing:latest" in line
        assert "runner image build franka-missing" in line
    assert _runner_containers(docker_client) == []


@pytest.mark.slow
def test_gpus_without_the_nvidia_runtime_is_one_line(
    built_images: BuiltImages,
    docker_client: Any,
    tmp_path: Path,
    subprocess_env: dict[str, str],
) -> None:
    assert "nvidia" not in (docker_client.info().get("Runtimes") or {})
    # Library level: the job's image is here, its GPUs are not to be had.
    spec = load_job("franka_cube_stack", profile="embedded")
    spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpus": 1})})
    argv, env = spec.apply_overrides([])
    launch = make_launch(spec, backend="docker", argv=argv, env=env)
    with pytest.raises(DeviceError) as err:
        run_docker(launch, tmp_path / "lib-run", secrets={}, say=lambda line: None)
    message = str(err.value)
    assert "needs 1 GPU(s) and this Docker engine has no NVIDIA runtime" in message
    assert "NVIDIA Container Toolkit" in message and "\n" not in message
    # Through the command, forced past the pre-flight's own GPU item.
    jobs = _job_copy(tmp_path, **{"resources: {gpus: 0,": "resources: {gpus: 1,"})
    (tmp_path / "data").mkdir()
    proc = _launch(
        "franka_cube_stack", "--docker", "--force", "--run-dir", str(tmp_path / "run"),
        env=_env(subprocess_env, tmp_path, jobs),
    )  # fmt: skip
    assert proc.returncode != 0
    assert "no NVIDIA runtime" in _one_error_line(proc)
    assert _runner_containers(docker_client) == []


@pytest.mark.slow
def test_sigterm_stops_the_container_and_the_agent_says_so(
    built_images: BuiltImages,
    docker_client: Any,
    tmp_path: Path,
    subprocess_env: dict[str, str],
) -> None:
    (tmp_path / "data").mkdir()
    run_dir = tmp_path / "run"
    env = _env(subprocess_env, tmp_path)
    proc = subprocess.Popen(
        [str(RUNNER_BIN), "launch", "franka_cube_stack", "--docker", "--run-dir", str(run_dir),
         "--", "training.steps=100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path / "data",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status = read_status(run_dir)
            if status is not None and status.step is not None and status.step >= 3:
                break
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the containerised run made no steps in 300 s")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "SIGTERM: stopping runner-franka_cube_stack" in stderr
    status = read_status(run_dir)
    assert status is not None and status.state == "stopped", status
    assert _runner_containers(docker_client) == []


def test_container_names_are_valid_docker_names() -> None:
    assert container_name("franka_cube_stack-20261203-1400-ab12") == (
        "runner-franka_cube_stack-20261203-1400-ab12"
    )
    assert container_name("a b/c:d") == "runner-a-b-c-d"


def test_a_job_without_an_image_is_one_line(tmp_path: Path) -> None:
    spec = load_job("franka_cube_stack", profile="embedded").model_copy(update={"image": None})
    argv, env = spec.apply_overrides([])
    with pytest.raises(RunnerError, match="names no image; run it with --local"):
        run_docker(
            make_launch(spec, backend="docker", argv=argv, env=env),
            tmp_path,
            secrets={},
            say=lambda line: None,
        )

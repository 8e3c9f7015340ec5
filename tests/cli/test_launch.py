"""``runner launch``'s pre-flight as a new user meets it: the checklist, then one ``error:`` line
saying what to change, a non-zero exit, and nothing rented, started or registered.

Rented launches talk to the loopback vast.ai (``VAST_URL``, ``VAST_API_KEY``), Hub datasets to
the loopback Hub (``HF_ENDPOINT``), GPUs are fake ones behind the real NVML wrapper
(``RUNNER_FAKE_NVML``), images are looked up on the real Docker engine (slow).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from runner.cli import main
from runner.cli._app import app
from runner.cli._checklist import show_checklist
from runner.hub.client import HubClient
from runner.launch.preflight import Item, Report
from runner.rundir import read_launch
from tests.cloud import cloud_env_fixture as cloud_env_fixture
from tests.cloud import vast_fixture as vast_fixture
from tests.conftest import REPO, RUNNER_BIN
from tests.fakes.hub_server import HubServer, isolate_client
from tests.fakes.vast_server import VastServer

MARKS = "✓!✗-"
TINY = ["training.steps=5", "training.save_every=5", "training.log_every=5", "img_size=32"]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def refused(code: int, out: str, err: str, items: int = 8) -> str:
    """The one ``error:`` line of a refusal, after a checklist of ``items`` lines; asserts the
    rest of its shape."""
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 1, err
    assert out == ""
    assert len(errors) == 1, err
    assert lines[-1] == errors[0]
    assert "Traceback" not in err
    header = next(i for i, line in enumerate(lines) if line.startswith("pre-flight: "))
    shown = lines[header + 1 : -1]
    assert len(shown) == items, err
    assert all(line[:4].strip() in MARKS and line[2] in MARKS for line in shown), err
    assert sum(line[2] == "✗" for line in shown) >= 1
    return errors[0]


def write_job(folder: Path, name: str, text: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)


def franka_dataset(path: Path, *, padding_gb: float = 0, steps: int = 4) -> Path:
    """A small real franka dataset; ``padding_gb`` of sparse bytes make it as big as the real
    one is to a copy (19 GB) without taking the space here."""
    from runner.data.franka import synth_franka

    synth_franka(path, episodes=2, steps=steps, image_size=8 if steps < 16 else 32)
    if padding_gb:
        with open(path / "padding.bin", "wb") as f:
            f.truncate(int(padding_gb * 1e9))
    return path


def nothing_registered(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "--json"]) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out) == []


# -- a rented host: nothing is searched, rented or billed ------------------------------------


def test_disk_too_small_rents_nothing(
    cloud_env: VastServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud_env.add_offer(disk_space=500)
    data = franka_dataset(tmp_path / "franka_cube_stack_ds", padding_gb=19)
    code, out, err = run(capsys, "launch", "franka_cube_stack", "--data", str(data), "--disk", "20")
    # Nine lines: franka_cube_stack's config is in the users' DINO WM fork (a warning).
    line = refused(code, out, err, items=9)
    assert "needs a fork" in err
    assert re.fullmatch(
        r"error: pre-flight: disk: needs 3\d GB: dataset 19 \+ (image [\d.]+ \+ )?"
        r"4 x 1\.5 checkpoints \(keep 3 \+ 1 being written\) \+ margin 5( \(image size unknown\))?"
        r"; --disk 20 rents 20 GB; rent at least 3\d GB \(--disk 3\d\)",
        line,
    ), line
    assert cloud_env.requests == []  # not even an offer search
    assert cloud_env.instances == [] and cloud_env.still_billing() == []
    nothing_registered(capsys)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """The loopback Hub holding pi0_so101's dataset (public, branch main) and runner-test/ds."""
    isolate_client(monkeypatch, tmp_path / "hf_home")
    with HubServer(tmp_path / "hub-storage") as server:
        writer = HubClient(endpoint=server.url, token=server.token)
        folder = tmp_path / "upload"
        folder.mkdir()
        (folder / "meta.json").write_text("{}")
        for repo in ("danbhf/sim_pick_place_157ep", "runner-test/ds"):
            writer.ensure_repo(repo, repo_type="dataset", private=False)
            writer.upload_folder(repo, folder, path_in_repo="", message="data", repo_type="dataset")
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def test_missing_required_secret_rents_nothing(
    cloud_env: VastServer, hub: HubServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "launch", "pi0_so101")
    assert refused(code, out, err) == (
        "error: pre-flight: secrets: HF_TOKEN is not set (required: pulling lerobot/pi0_base and "
        "pushing checkpoints); WANDB_API_KEY is not set (optional); export HF_TOKEN=... in this "
        "shell first (never put it in the job file)"
    )
    assert "  ✓ dataset    danbhf/sim_pick_place_157ep@main: branch -> " in err
    assert cloud_env.requests == [] and cloud_env.instances == []
    nothing_registered(capsys)


HUB_JOB = """\
name: hubjob
image: runner-test/debian-sshd:bookworm
command: python3 -c pass
env: {PYTHONNOUSERSITE: "1"}
dataset: {source: hub, repo: runner-test/ds, revision: v9, size_gb: 1}
resources: {gpus: 1, disk_gb: 50}
checkpoints: {size_gb: 1}
"""


def test_missing_hub_revision_rents_nothing(
    cloud_env: VastServer,
    hub: HubServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_job(tmp_path / "jobs", "hubjob", HUB_JOB)
    monkeypatch.setenv("RUNNER_JOBS_DIR", str(tmp_path / "jobs"))
    code, out, err = run(capsys, "launch", "hubjob")
    assert refused(code, out, err) == (
        "error: pre-flight: dataset: revision 'v9' is not in runner-test/ds (no such tag, branch "
        "or commit); pin an existing commit or tag in dataset.revision"
    )
    assert cloud_env.requests == [] and cloud_env.instances == []


# -- here: nothing is started -----------------------------------------------------------------


def test_missing_dataset_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The dataset is resolved before pre-flight: its own line, and nothing after it.
    code, out, err = run(
        capsys, "launch", "franka_cube_stack", "--local", "--data", "/nonexistent",
        "--run-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == (
        "error: dataset folder /nonexistent does not exist; pass --data PATH"
    )
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [err.splitlines()[-1]]
    assert not (tmp_path / "run").exists()
    nothing_registered(capsys)


GPU_JOB = """\
name: gpujob
command: python -c pass
env: {PYTHONNOUSERSITE: "1"}
resources: {gpus: 1, min_gpu_memory_gb: 4, disk_gb: 1}
checkpoints: {size_gb: 0.01}
"""


def test_busy_gpu_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_job(tmp_path / "jobs", "gpujob", GPU_JOB)
    monkeypatch.setenv("RUNNER_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("RUNNER_FAKE_NVML", "scenario:healthy:gpus=1")  # someone trains on GPU 0
    code, out, err = run(capsys, "launch", "gpujob", "--local", "--run-dir", str(tmp_path / "r"))
    assert refused(code, out, err) == (
        "error: pre-flight: gpu_busy: GPU 0 NVIDIA RTX A4000 is busy: 64 % memory, "
        "97 % utilisation, 1 other process (pid 4242); wait for it, free it, or pick a free GPU "
        "(`runner gpus`); --force shares it"
    )
    assert "  ✓ GPU memory GPU 0 NVIDIA RTX A4000 (16 GiB); the job needs 4 GB per GPU" in err
    assert not (tmp_path / "r").exists()
    nothing_registered(capsys)


CPU_JOB = """\
name: cpujob
command: python -c pass
env: {PYTHONNOUSERSITE: "1"}
resources: {gpus: 0, disk_gb: 1, ram_gb: 1}
checkpoints: {size_gb: 0.01}
"""


def test_workers_asked_for_on_the_command_line_count_against_ram(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_job(tmp_path / "jobs", "cpujob", CPU_JOB)
    monkeypatch.setenv("RUNNER_JOBS_DIR", str(tmp_path / "jobs"))
    code, out, err = run(
        capsys, "launch", "cpujob", "--local", "--run-dir", str(tmp_path / "r"),
        "--", "training.num_workers=100000",
    )  # fmt: skip
    line = refused(code, out, err)
    assert line.startswith(
        "error: pre-flight: ram: needs 250000 GB (100000 workers x 2.5 GB "
        "(training.num_workers=100000); the job states 1); "
    )
    assert line.endswith(" available; lower num_workers or ram_gb, or run it on a rented host")
    assert not (tmp_path / "r").exists()


IMAGE_JOB = """\
name: imgjob
image: runner/absent-image:latest
command: python3 -c pass
env: {PYTHONNOUSERSITE: "1"}
resources: {gpus: 0, disk_gb: 1}
checkpoints: {size_gb: 0.01}
"""


def test_no_docker_engine_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_job(tmp_path / "jobs", "imgjob", IMAGE_JOB)
    monkeypatch.setenv("RUNNER_JOBS_DIR", str(tmp_path / "jobs"))
    socket = f"unix://{tmp_path}/no-docker.sock"
    monkeypatch.setenv("DOCKER_HOST", socket)
    code, out, err = run(capsys, "launch", "imgjob", "--docker", "--run-dir", str(tmp_path / "r"))
    line = refused(code, out, err)
    assert line.startswith(f"error: pre-flight: image: no Docker engine answers at {socket} (")
    assert line.endswith("); start it (`sudo systemctl start docker`) or point DOCKER_HOST at one")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_image_the_engine_lacks_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fakes.vast_server import docker_unavailable_reason

    if (reason := docker_unavailable_reason()) is not None:
        pytest.skip(reason)
    import docker

    engine = docker.from_env()
    before = {c.id for c in engine.containers.list(all=True)}
    write_job(tmp_path / "jobs", "imgjob", IMAGE_JOB)
    monkeypatch.setenv("RUNNER_JOBS_DIR", str(tmp_path / "jobs"))
    code, out, err = run(capsys, "launch", "imgjob", "--docker", "--run-dir", str(tmp_path / "r"))
    assert refused(code, out, err) == (
        "error: pre-flight: image: runner/absent-image:latest is not on the Docker engine at "
        "unix:///var/run/docker.sock; build it (`runner image build absent-image`) or check "
        "image: in the job"
    )
    assert {c.id for c in engine.containers.list(all=True)} <= before
    assert not (tmp_path / "r").exists()
    nothing_registered(capsys)


# -- --force ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_force_launches_despite_a_failing_item_and_records_it(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    # The embedded franka profile, stating more RAM than any machine has: only pre-flight minds.
    text = (REPO / "jobs" / "franka_cube_stack.yaml").read_text()
    text = text.replace(
        "disk_gb: 1, shm_gb: 0, ram_gb: 2}", "disk_gb: 1, shm_gb: 0, ram_gb: 100000}"
    )
    assert "ram_gb: 100000" in text
    write_job(tmp_path / "jobs", "franka_cube_stack", text)
    franka_dataset(tmp_path / "data" / "franka_cube_stack_synthetic", steps=40)
    env = {
        **subprocess_env,
        "RUNNER_JOBS_DIR": str(tmp_path / "jobs"),
        "RUNNER_DATA_DIR": str(tmp_path / "data"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "NO_COLOR": "1",
    }
    run_dir = tmp_path / "run"
    refusal = _runner(["launch", "franka_cube_stack", "--local", "--run-dir", str(run_dir)], env)
    assert refusal.returncode == 1
    assert refusal.stderr.splitlines()[-1].startswith("error: pre-flight: ram: needs 100000 GB")
    assert "\x1b[" not in refusal.stderr  # NO_COLOR, piped: plain text

    forced = _runner(
        [
            "launch",
            "franka_cube_stack",
            "--local",
            "--force",
            "--run-dir",
            str(run_dir),
            "--",
            *TINY,
        ],
        env,
    )
    assert forced.returncode == 0, forced.stderr
    assert "warning: pre-flight: --force launches despite ram (recorded)" in forced.stderr
    assert "  ✗ RAM        needs 100000 GB (resources.ram_gb 100000); " in forced.stderr
    launch = read_launch(run_dir)
    assert launch is not None and launch.forced == ("ram",)
    listed = _runner(["runs", "--json"], env)
    (record,) = json.loads(listed.stdout)
    assert (record["forced"], record["state"]) == ("ram", "finished")


def _runner(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUNNER_BIN), *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
    )


# -- the checklist itself ---------------------------------------------------------------------

REPORT = Report(
    "franka_cube_stack",
    "vast",
    (
        Item("dataset", "ok", "dataset", "franka dataset /data/franka_cube_stack_ds, 19 GB"),
        Item(
            "disk",
            "fail",
            "disk",
            "needs 31 GB: dataset 19 + 4 x 1.5 checkpoints (keep 3 + 1 being written) + margin "
            "5 (image size unknown); --disk 20 rents 20 GB",
            "rent at least 31 GB (--disk 31)",
        ),
        Item("secrets", "warn", "secrets", "WANDB_API_KEY is not set (optional)", "export it"),
        Item("ram", "skip", "RAM", "a rented host: the rent filters ask for it (ram_gb 32)"),
    ),
)


def test_checklist_piped_is_one_plain_line_per_item(capsys: pytest.CaptureFixture[str]) -> None:
    show_checklist(REPORT)
    assert capsys.readouterr().err.splitlines() == [
        "pre-flight: franka_cube_stack on a rented host",
        "  ✓ dataset    franka dataset /data/franka_cube_stack_ds, 19 GB",
        "  ✗ disk       needs 31 GB: dataset 19 + 4 x 1.5 checkpoints (keep 3 + 1 being written) "
        "+ margin 5 (image size unknown); --disk 20 rents 20 GB; fix: rent at least 31 GB "
        "(--disk 31)",
        "  ! secrets    WANDB_API_KEY is not set (optional); fix: export it",
        "  - RAM        a rented host: the rent filters ask for it (ram_gb 32)",
    ]


def test_checklist_on_an_80_column_terminal_wraps_under_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = io.StringIO()
    terminal = Console(file=screen, width=80, force_terminal=True, no_color=True)
    monkeypatch.setattr(app, "err", terminal)
    show_checklist(REPORT)
    assert not re.search(r"\x1b\[[0-9;]*3[0-7]m", screen.getvalue())  # no colour: NO_COLOR
    lines = re.sub(r"\x1b\[[0-9;]*m", "", screen.getvalue()).splitlines()  # bold, dim stay
    assert all(len(line.rstrip()) <= 80 for line in lines)
    marks = [line[1] for line in lines[1:] if line[1] != " "]
    assert marks == ["✓", "✗", "!", "-"]
    disk = next(i for i, line in enumerate(lines) if line.startswith(" ✗ disk"))
    assert lines[disk + 1].startswith(" " * 14)  # the detail continues under itself

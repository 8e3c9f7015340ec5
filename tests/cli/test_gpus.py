"""``runner gpus`` and ``runner gpus record`` as a user sees them.

The GPU host is the fake NVML named by ``RUNNER_FAKE_NVML`` (the real wrapper
runs on it); the GPU-less case is this machine's real driver-less NVML.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pynvml
import pytest

from runner.cli import main
from runner.sampling.nvml import ENV_FAKE_NVML
from tests.conftest import REPO, RUNNER_BIN

TWO_GPUS = "scenario:healthy:gpus=2"
GPU1 = "GPU-fa4e0001-0000-4000-8000-000000000001"
# pid far above any pid_max: never a process here, so it counts as another user's.
NOBODY = 2**22 + 999

TABLE = """\
gpu  name                         memory  util       power  temp (slowdown)  throttle  processes      score
  0  NVIDIA RTX A4000  10496 / 16376 MiB   97%  80 / 140 W        65C (98C)  -         4242:10240MiB   74.0
  1  NVIDIA RTX A4000    256 / 16376 MiB    0%  14 / 140 W        38C (98C)  GpuIdle   -                1.1  best
score = 0.7 x memory % + 0.3 x utilisation % (lower is freer)
"""  # noqa: E501 - the exact lines a user sees


@pytest.fixture(autouse=True)
def _no_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_FAKE_NVML, raising=False)


def _no_driver_here() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return
    pynvml.nvmlShutdown()
    pytest.skip("this machine has an NVIDIA driver")


def _run(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake: str
) -> tuple[int, str, str]:
    monkeypatch.setenv(ENV_FAKE_NVML, fake)
    code = main(["gpus", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_of_a_two_gpu_host(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _run([], capsys, monkeypatch, TWO_GPUS) == (0, TABLE, "")


def test_no_gpu_machine_is_one_plain_line(capsys: pytest.CaptureFixture[str]) -> None:
    _no_driver_here()
    assert main(["gpus"]) == 0
    assert capsys.readouterr() == (
        "no NVIDIA GPUs: no NVIDIA driver (NVML library not found)\n",
        "",
    )
    assert main(["gpus", "--pick", "1"]) == 1
    assert capsys.readouterr() == (
        "",
        "error: no NVIDIA GPUs to pick from: no NVIDIA driver (NVML library not found)\n",
    )
    assert main(["gpus", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gpus"] == [] and data["reason"].startswith("no NVIDIA driver")


def test_pick_prints_the_export_lines_and_the_table_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = _run(["--pick", "1"], capsys, monkeypatch, TWO_GPUS)
    assert code == 0
    assert out == f"export CUDA_DEVICE_ORDER=PCI_BUS_ID\nexport CUDA_VISIBLE_DEVICES={GPU1}\n"
    assert err == TABLE.replace("  1.1  best", "  1.1  picked")


def test_pick_quiet_prints_only_the_value(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _run(["--pick", "1", "--quiet"], capsys, monkeypatch, TWO_GPUS) == (0, GPU1 + "\n", "")
    both = _run(["--pick", "2", "-q"], capsys, monkeypatch, TWO_GPUS)
    assert both == (0, f"{GPU1},GPU-fa4e0000-0000-4000-8000-000000000000\n", "")


def test_json_has_every_snapshot_and_the_selection(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = _run(["--json", "--pick", "1"], capsys, monkeypatch, TWO_GPUS)
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert [g["index"] for g in data["gpus"]] == [0, 1]
    assert data["gpus"][0]["power_w"] == 80.0
    assert data["gpus"][1]["clock_events"] == ["GpuIdle"]
    assert data["gpus"][0]["processes"] == [{"pid": 4242, "used_memory_bytes": 10 * 2**30}]
    assert data["picked"] == [GPU1]
    assert data["env"] == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": GPU1}
    assert [r["index"] for r in data["ranked"]] == [1, 0]
    assert data["weights"] == {"memory": 0.7, "utilization": 0.3}
    assert data["driver_version"] == "570.86.15" and data["reason"] == ""
    plain = json.loads(_run(["--json"], capsys, monkeypatch, TWO_GPUS)[1])
    assert plain["picked"] is None and plain["env"] is None


def test_impossible_pick_is_one_error_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _run(["--pick", "3"], capsys, monkeypatch, TWO_GPUS) == (
        1,
        "",
        "error: cannot pick 3 GPUs: this machine has 2\n",
    )


def test_filters_exclude_and_say_why(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = f"scenario:healthy:gpus=2,gpu=1,pid={NOBODY}"
    code, out, err = _run(["--exclude-busy", "--pick", "2"], capsys, monkeypatch, fake)
    assert (code, out) == (1, "")
    assert err == (
        "error: cannot pick 2 GPUs: 1 of 2 pass the filters "
        f"(GPU 1: busy: process {NOBODY} of another user); ask for fewer or loosen the filters\n"
    )
    code, out, _ = _run(["--max-util", "50", "--min-free", "10"], capsys, monkeypatch, fake)
    assert code == 0
    assert out.splitlines()[2].endswith("  74.0  5.7 GiB free < 10 GiB; utilisation 97% > 50%")
    assert out.splitlines()[1].endswith("  1.1  best")


def test_own_processes_do_not_make_a_gpu_busy(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    fake = f"scenario:healthy:gpus=1,pid={os.getpid()}"
    code, out, _ = _run(["--exclude-busy", "-q"], capsys, monkeypatch, fake)
    assert (code, out) == (0, "GPU-fa4e0000-0000-4000-8000-000000000000\n")


def test_weights_flag(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = _run(["--weights", "1,0"], capsys, monkeypatch, TWO_GPUS)
    assert (
        code == 0
        and out.splitlines()[-1] == "score = 1 x memory % + 0 x utilisation % (lower is freer)"
    )
    assert _run(["--weights", "0.7"], capsys, monkeypatch, TWO_GPUS) == (
        2,
        "",
        "error: --weights '0.7': expected two numbers MEMORY,UTILISATION, e.g. 0.7,0.3\n",
    )
    assert _run(["--quiet", "--json"], capsys, monkeypatch, TWO_GPUS)[::2] == (
        2,
        "error: --quiet and --json: choose one\n",
    )


def test_a_lost_gpu_shows_as_lost(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = _run([], capsys, monkeypatch, "scenario:xid:gpus=2,at=0")
    assert code == 0
    lost, idle = out.splitlines()[1:3]
    assert lost.split("  ")[-1] == "lost (GPU is lost)"
    assert lost.split()[:9] == ["0"] + ["N/A"] * 8  # nothing is claimed for it
    assert idle.endswith("  1.1  best")


def test_a_bad_fake_spec_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = _run([], capsys, monkeypatch, "scenario:freeze")
    assert (code, out) == (1, "")
    assert err.startswith("error: RUNNER_FAKE_NVML='scenario:freeze': unknown scenario 'freeze'")
    assert len(err.splitlines()) == 1


def test_record_without_a_gpu_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _no_driver_here()
    assert main(["gpus", "record", str(tmp_path / "t.jsonl")]) == 1
    assert capsys.readouterr().err == (
        "error: no NVIDIA GPUs to record: no NVIDIA driver (NVML library not found)\n"
    )
    assert not (tmp_path / "t.jsonl").exists()


def test_record_then_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = tmp_path / "t.jsonl"
    args = ["record", str(trace), "--interval", "0.05", "--duration", "0.1"]
    code, out, err = _run(args, capsys, monkeypatch, TWO_GPUS)
    assert (code, out) == (0, "")
    assert err == (
        f"recording 2 GPU(s) every 0.05 s for 0.1 s to {trace}\n"
        f"recorded 2 tick(s) of 2 GPU(s) to {trace}\n"
    )
    assert _run([], capsys, monkeypatch, f"trace:{trace}") == (0, TABLE, "")


def test_the_real_binary_never_shows_a_traceback(subprocess_env: dict[str, str]) -> None:
    env = dict(subprocess_env)
    env.pop(ENV_FAKE_NVML, None)
    done = subprocess.run(
        [str(RUNNER_BIN), "gpus"], capture_output=True, text=True, env=env, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout.startswith(("no NVIDIA GPUs: ", "gpu  name"))


def test_help_documents_the_testing_aid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpus", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Testing aid: RUNNER_FAKE_NVML=scenario:NAME" in out
    assert "--pick N" in out and "--exclude-busy" in out and "CUDA_DEVICE_ORDER=PCI_BUS_ID" in out

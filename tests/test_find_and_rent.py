"""The users' ``find_and_rent.py``: their flags, runner's behaviour, runner's output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import find_and_rent
from runner.cli import main as runner_main
from tests.cloud import cloud_env_fixture as cloud_env_fixture
from tests.cloud import vast_fixture as vast_fixture
from tests.fakes.vast_server import VastServer

SCRIPT = Path(__file__).resolve().parents[1] / "find_and_rent.py"


def _argv(*flags: str) -> list[str]:
    return find_and_rent.runner_argv(find_and_rent.parser().parse_args(list(flags)))


def test_the_users_flags_become_runner_commands() -> None:
    assert _argv() == ["rent", "--disk", "300"]
    assert _argv("--disk", "150", "--gpu", "H100_SXM", "--num-gpus", "1", "--max-price", "2.5") == [
        "rent", "--disk", "150", "--gpu", "H100_SXM", "--gpus", "1", "--max-price", "2.5",
    ]  # fmt: skip
    assert _argv("--list-storage") == ["storage", "list"]
    assert _argv("--storage", "42") == ["rent", "--disk", "300", "--storage", "42", "--mount",
                                        "/storage"]  # fmt: skip
    assert _argv("--create-storage", "500", "--disk", "300") == [
        "rent", "--disk", "300", "--create-storage", "500", "--mount", "/storage",
    ]  # fmt: skip
    assert _argv("--dry-run", "--explain", "--region", "EU") == [
        "offers", "--disk", "300", "--region", "EU", "--explain",
    ]  # fmt: skip
    with pytest.raises(SystemExit):  # argparse: the two volume flags exclude each other
        _argv("--storage", "1", "--create-storage", "100")


def test_it_prints_what_runner_prints(
    cloud_env: VastServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud_env.add_offer(dph_total=0.5)
    cloud_env.add_offer(dph_total=0.7, gpu_name="H100 SXM")
    for theirs, ours in (
        (["--list-storage"], ["storage", "list"]),
        (["--dry-run", "--explain"], ["offers", "--disk", "300", "--explain"]),
        (["--disk", "300", "--gpu", "A100"], ["rent", "--disk", "300", "--gpu", "A100"]),
    ):
        code = find_and_rent.main(theirs)
        got = (code, *capsys.readouterr())
        assert got == (runner_main(ours), *capsys.readouterr()), theirs
    assert cloud_env.still_billing() == []


def test_it_runs_as_a_script_with_the_same_one_line_errors(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VAST_API_KEY"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--disk", "300"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: no vast.ai API key: set VAST_API_KEY, or save the key")
    assert len(done.stderr.strip().splitlines()) == 1

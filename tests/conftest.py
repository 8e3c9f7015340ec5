"""Shared fixtures: every test runs hermetic (no user config, keys or GPU selection leak in)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.constants import HERMETIC_ENV

REPO = Path(__file__).resolve().parents[1]
RUNNER_BIN = Path(sys.executable).parent / "runner"
#: The environment pytest started in, before any test's hermetic HOME: the places
#: scripts/setup-lerobot-env.sh looks for Python 3.12 and its venv cache.
_STARTUP_ENV = dict(os.environ)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (./test.sh does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _hermetic(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    for name in HERMETIC_ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("RUNNER_JOBS_DIR", str(REPO / "jobs"))
    yield


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """The environment for a real subprocess of runner: the test's hermetic one."""
    return dict(os.environ)


@pytest.fixture(scope="session")
def lerobot_venv() -> Path:
    """The LeRobot 0.6.1 venv (Python 3.12) of scripts/setup-lerobot-env.sh; the first use on
    a machine builds it (minutes, about 5 GB), later ones find it cached.

    Skipped where Python 3.12 is missing, except under CI (``CI`` set), where it fails.
    """
    script = REPO / "scripts" / "setup-lerobot-env.sh"
    result = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env=_STARTUP_ENV, timeout=1800
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        if "needs Python 3.12" in result.stderr and not _STARTUP_ENV.get("CI"):
            pytest.skip(f"no LeRobot venv: {lines[0].removeprefix('error: ')}")
        pytest.fail(f"{script.name} failed:\n" + "\n".join(lines[-20:]), pytrace=False)
    return Path(result.stdout.strip().splitlines()[-1])

"""Shared fixtures: every test runs hermetic (no user config, keys or GPU selection leak in)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.constants import HERMETIC_ENV

REPO = Path(__file__).resolve().parents[1]
RUNNER_BIN = Path(sys.executable).parent / "runner"


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

"""Shared helpers for the vast.ai tests: the loopback server, a client on it, fast timeouts.

Test modules import the fixtures by name (``from tests.cloud import vast_fixture as
vast_fixture``); ``tests/cloud/conftest.py`` holds the one session-wide verified host that the
slow tests share (a container starts in 1.5-5 s, so they reuse it where that is honest).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.cloud.provision import Timeouts
from runner.cloud.registry import Registry
from runner.cloud.ssh import Ssh
from runner.cloud.vast import RetryPolicy, VastApi
from tests.fakes.vast_server import VastServer, docker_unavailable_reason

__all__ = [
    "FAST",
    "GPU",
    "Local",
    "api_for",
    "cloud_env_fixture",
    "docker_fixture",
    "host_disk_gb",
    "local_fixture",
    "vast_fixture",
]

#: What every offer's instance shows the probe: one fake GPU through /etc/environment.
GPU = "scenario:healthy:gpus=1"
#: Timeouts for the loopback server: instances start in seconds, SSH refusals end quickly.
FAST = Timeouts(
    boot_s=60.0, unknown_s=3.0, ssh_s=4.0, probe_s=30.0, poll_first_s=0.1, poll_max_s=0.5
)


def api_for(
    server: VastServer,
    *,
    retry: RetryPolicy | None = None,
    notify: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> VastApi:
    """A client on ``server`` whose retries wait milliseconds, not seconds."""
    return VastApi(
        server.api_key,
        server_url=server.url,
        retry=retry or RetryPolicy(attempts=5, base_s=0.01, max_wait_s=5.0),
        notify=notify,
        sleep=sleep,
    )


@pytest.fixture(name="vast")
def vast_fixture() -> Iterator[VastServer]:
    with VastServer() as server:
        yield server
        assert server.errors == []  # Docker failures while booting, bugs of the fake


@pytest.fixture(name="docker")
def docker_fixture() -> None:
    reason = docker_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("no OpenSSH client here (scripts/ci-infra.sh installs openssh-client)")


class Local:
    """This machine's side under ``state_home`` (what ``XDG_STATE_HOME`` would be): the
    registry and SSH runner at the paths the CLI uses, so ``runner ps`` sees the same state."""

    def __init__(self, state_home: Path) -> None:
        self.state_home = state_home
        root = state_home / "runner"
        self.registry = Registry(root / "registry.sqlite")
        self.ssh = Ssh(root / "ssh" / "id_ed25519", known_hosts_dir=root / "known_hosts")


@pytest.fixture(name="local")
def local_fixture(tmp_path: Path) -> Local:
    return Local(tmp_path / "xdg-state")


@pytest.fixture(name="cloud_env")
def cloud_env_fixture(
    vast: VastServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> VastServer:
    """The environment a user's shell would have, pointed at the loopback server."""
    monkeypatch.setenv("VAST_URL", vast.url)
    monkeypatch.setenv("VAST_API_KEY", vast.api_key)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    return vast


def host_disk_gb(*paths: str) -> float:
    """The largest of these filesystems, GB: what a "small overlay" really has on this machine."""
    return max(shutil.disk_usage(p).total / 1e9 for p in paths if Path(p).exists())

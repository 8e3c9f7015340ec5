"""One rental for the whole session, shared by the slow tests that only read it.

It goes through everything that goes wrong with vast.ai hosts, in rank order: the best offer
vanishes at create; the next one's image pull fails; the third is a small overlay with a
read-only "2 TB" mount; the fourth reaches running with SSH refused; and vast.ai answers the
first creates and polls with 429s. The fifth, a clean host, is verified over real SSH. Four
containers in all; reading the result (attempts, registry, billing, a second probe,
``runner ps``) costs no further one.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from runner.cloud.offers import Requirements
from runner.cloud.provision import Rental, RentEvent, destroy, rent
from runner.cloud.vast import VastApi
from tests.cloud import FAST, GPU, Local, api_for, host_disk_gb
from tests.fakes.vast_server import RateLimit, VastServer, docker_unavailable_reason


@dataclass
class VerifiedHost:
    server: VastServer
    api: VastApi
    local: Local
    rental: Rental
    offers: dict[str, dict[str, Any]]
    limits: list[RateLimit]
    disk_gb: float
    events: list[RentEvent] = field(default_factory=list)


@pytest.fixture(scope="session")
def verified(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VerifiedHost]:
    reason = docker_unavailable_reason()
    if reason is None and (shutil.which("ssh") is None or shutil.which("ssh-keygen") is None):
        reason = "no OpenSSH client here (scripts/ci-infra.sh installs openssh-client)"
    if reason is not None:
        pytest.skip(reason)
    server = VastServer()
    try:
        # More disk than this machine has, so the small overlay (whose df is the host's disk
        # under Docker's vfs driver) is short whatever disk the tests run on.
        disk = max(300.0, float(round(host_disk_gb("/", "/var/lib/docker") + 50)))
        offers = {
            name: server.add_offer(
                scenario=name, dph_total=price, disk_space=disk + 100, fake_gpu=GPU
            )
            for name, price in (
                ("vanish", 0.30),
                ("pull_fail", 0.31),
                ("small_overlay", 0.32),
                ("ssh_refused", 0.33),
                ("clean", 0.50),
            )
        }
        limits = [
            server.rate_limit(2, retry_after=0, path_regex=r"^/api/v0/asks/"),
            server.rate_limit(3, body="json", path_regex=r"^/api/v0/instances/\d+$"),
        ]
        local = Local(tmp_path_factory.mktemp("verified") / "xdg-state")
        api = api_for(server)
        events: list[RentEvent] = []
        rental = rent(
            api,
            Requirements(disk_gb=disk),
            job="smoke",
            registry=local.registry,
            ssh=local.ssh,
            timeouts=FAST,
            progress=events.append,
        )
        yield VerifiedHost(server, api, local, rental, offers, limits, disk, events)
        destroy(api, rental.instance.id)
        assert server.still_billing() == [] and server.errors == []
    finally:
        server.close()

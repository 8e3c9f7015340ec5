"""rent(): fail over until a host is verified, and never leave anything billing.

Fast tests use instances that never get a container (image pulls that fail, boots delayed past
the test); the slow ones run real containers with sshd, so verification really goes over SSH.
After every rent the server's billing is asserted: only the verified instance may bill.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from runner.cli import main
from runner.cloud.offers import Requirements, search
from runner.cloud.provision import (
    Rental,
    RentEvent,
    RentFailedError,
    VolumeChoice,
    rent,
)
from runner.cloud.vast import VastApi
from tests.cloud import FAST, Local, api_for
from tests.cloud import local_fixture as local_fixture
from tests.cloud import vast_fixture as vast_fixture
from tests.cloud.conftest import VerifiedHost
from tests.fakes.vast_server import VastServer

HOST_MSG = "Error response from daemon: failed to pull image: i/o timeout"


def _billing(vast: VastServer) -> list[tuple[str, int]]:
    return sorted((r.kind, r.id) for r in vast.still_billing())


def _rent(api: VastApi, local: Local, req: Requirements, **kwargs: Any) -> Rental:
    kwargs.setdefault("timeouts", FAST)
    return rent(api, req, registry=local.registry, ssh=local.ssh, **kwargs)


# -- no container needed -------------------------------------------------------------------------


def test_no_verified_host_ends_in_one_clear_line_with_nothing_billing(
    vast: VastServer, local: Local
) -> None:
    gone = vast.add_offer(scenario="vanish", dph_total=0.30)
    taken = vast.add_offer(scenario="unavailable", dph_total=0.31)
    stuck = vast.add_offer(scenario="pull_fail", dph_total=0.32, fail_msg=HOST_MSG)
    burst = vast.rate_limit(2, retry_after=0, path_regex=r"^/api/v0/asks/")
    with pytest.raises(RentFailedError) as exc:
        _rent(api_for(vast), local, Requirements(disk_gb=300), max_tries=3)
    assert str(exc.value) == (
        f"no verified host after 3 tries (offer {gone['id']}: gone since the search; "
        f"offer {taken['id']}: gone since the search; offer {stuck['id']}: loading: {HOST_MSG}); "
        "see `runner offers --explain`, or widen the filters"
    )
    assert [a.outcome for a in exc.value.attempts] == ["offer_gone", "offer_gone", "boot_failed"]
    assert burst.hits == 2  # the 429s on create were retried, not fatal
    assert exc.value.attempts[2].elapsed_s < 2.0  # failed fast, not after the boot timeout
    assert _billing(vast) == []
    (iid,) = [i.id for i in vast.instances]
    assert vast.instance(iid).destroyed_at is not None
    bad = local.registry.bad_machines()
    assert list(bad) == [stuck["machine_id"]] and bad[stuck["machine_id"]].instance_id == iid
    rec = local.registry.instance(iid)
    assert rec is not None and rec.status == "destroyed" and rec.reason == f"loading: {HOST_MSG}"


def test_an_image_that_cannot_be_pulled_stops_after_two_hosts(
    vast: VastServer, local: Local
) -> None:
    for price in (0.30, 0.31):
        vast.add_offer(scenario="pull_fail", dph_total=price)  # "manifest unknown"
    clean = vast.add_offer(dph_total=0.50)
    with pytest.raises(RentFailedError) as exc:
        _rent(api_for(vast), local, Requirements(disk_gb=300), image="ghcr.io/me/typo:latest")
    assert str(exc.value).startswith(
        "the image ghcr.io/me/typo:latest failed to start on two hosts (loading: Error response "
        "from daemon: failed to pull image ghcr.io/me/typo:latest: manifest unknown"
    )
    assert str(exc.value).endswith("check its name, tag and registry login")
    assert local.registry.bad_machines() == {}  # the hosts were not at fault
    assert clean["id"] not in [i.offer_id for i in vast.instances]
    assert _billing(vast) == []


@pytest.mark.parametrize("status", ["offline", "unknown"])
def test_a_host_that_goes_offline_or_silent_while_starting_is_replaced(
    vast: VastServer, local: Local, status: str
) -> None:
    vast.add_offer(boot_delay_s=60, dph_total=0.3)  # never gets a container in this test
    vast.add_offer(scenario="pull_fail", dph_total=0.4)

    def progress(event: RentEvent) -> None:
        if event.kind == "create" and len(vast.instances) == 1:
            assert event.instance_id is not None
            vast.set_status(event.instance_id, status, "host heartbeat lost")

    with pytest.raises(RentFailedError) as exc:
        _rent(
            api_for(vast),
            local,
            Requirements(disk_gb=300),
            progress=progress,
            max_tries=2,
            timeouts=dataclasses.replace(FAST, unknown_s=0.3),
        )
    first = exc.value.attempts[0]
    expected = (
        "went offline while starting (host heartbeat lost)"
        if status == "offline"
        else "status unknown (no heartbeat) for 0.3 s"
    )
    assert (first.outcome, first.reason, first.marked_bad) == ("boot_failed", expected, True)
    assert _billing(vast) == []


def test_ctrl_c_while_waiting_destroys_the_instance(vast: VastServer, local: Local) -> None:
    vast.add_offer(boot_delay_s=60)

    def progress(event: RentEvent) -> None:
        if event.kind == "status":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _rent(api_for(vast), local, Requirements(disk_gb=300), progress=progress)
    assert _billing(vast) == []
    (rec,) = local.registry.instances()
    assert (rec.status, rec.reason) == ("destroyed", "interrupted")


def test_a_volume_made_for_a_failed_instance_is_deleted_with_it(
    vast: VastServer, local: Local
) -> None:
    vast.add_offer(scenario="pull_fail", fail_msg=HOST_MSG)
    with pytest.raises(RentFailedError):
        _rent(
            api_for(vast),
            local,
            Requirements(disk_gb=300),
            volume=VolumeChoice("/storage", create_gb=50),
            max_tries=1,
        )
    volumes = [r for r in vast.billing() if r.kind == "volume"]
    assert len(volumes) == 1 and not volumes[0].billing  # made with the instance, then deleted
    assert _billing(vast) == []


def test_storage_restricts_offers_to_the_volume_machine(vast: VastServer, local: Local) -> None:
    here = vast.add_offer(scenario="pull_fail", fail_msg=HOST_MSG, dph_total=0.5)
    vast.add_offer(dph_total=0.2)  # cheaper, but on another machine
    api = api_for(vast)
    vid = api.create_volume(here["avail_vol_ask_id"], 50, "ckpt")
    with pytest.raises(RentFailedError):
        _rent(api, local, Requirements(disk_gb=300), volume=VolumeChoice(volume_id=vid))
    (inst,) = vast.instances
    assert inst.offer_id == here["id"] and inst.volume_ids == (vid,)
    create = next(r.body for r in vast.requests if r.path.startswith("/api/v0/asks/"))
    assert create["volume_info"] == {
        "mount_path": "/storage",
        "create_new": False,
        "volume_id": vid,
    }
    assert _billing(vast) == [("volume", vid)]  # the user's volume stays; the instance went
    api.delete_volume(vid)


# -- real containers, real SSH -------------------------------------------------------------------


@pytest.mark.slow
def test_the_session_rental_passed_over_four_bad_offers(verified: VerifiedHost) -> None:
    attempts = verified.rental.attempts
    by_offer = {name: offer["id"] for name, offer in verified.offers.items()}
    assert [(a.offer.id, a.outcome, a.marked_bad) for a in attempts] == [
        (by_offer["vanish"], "offer_gone", False),
        (by_offer["pull_fail"], "image_failed", False),  # the image's fault, not the host's
        (by_offer["small_overlay"], "probe_failed", True),
        (by_offer["ssh_refused"], "ssh_failed", True),
        (by_offer["clean"], "verified", False),
    ]
    assert [lim.hits for lim in verified.limits] == [2, 3]  # 429 bursts, retried
    bad = verified.local.registry.bad_machines()
    assert set(bad) == {
        verified.offers["small_overlay"]["machine_id"],
        verified.offers["ssh_refused"]["machine_id"],
    }
    for a in attempts[1:4]:  # every failed host destroyed, its container gone
        rec = verified.local.registry.instance(a.instance_id or 0)
        assert rec is not None and rec.status == "destroyed" and rec.reason == a.reason
        assert verified.server.instance(a.instance_id or 0).destroyed_at is not None
    assert verified.server.containers() == [f"runner-vast-fake-{verified.rental.instance.id}"]

    # The next search leaves both bad machines out (the clean offer is rented, the vanished one
    # gone): only the image-failed offer's machine is still a candidate.
    reasons = {m: b.reason for m, b in bad.items()}
    ranking = search(verified.api, Requirements(disk_gb=verified.disk_gb), bad_machines=reasons)
    assert [r.offer.id for r in ranking.ranked] == [by_offer["pull_fail"]]
    assert sorted(why.split(" is marked bad")[0] for _, why in ranking.skipped) == sorted(
        f"machine {m}" for m in bad
    )


@pytest.mark.slow
def test_a_pull_failure_fails_fast(verified: VerifiedHost) -> None:
    pull = verified.rental.attempts[1]
    assert pull.reason.startswith(
        "loading: Error response from daemon: failed to pull image pytorch/pytorch:latest: "
        "manifest unknown"
    )
    assert pull.elapsed_s < 2.0 and "boot" not in pull.phases  # never waited for running


@pytest.mark.slow
def test_a_small_overlay_is_called_out_with_its_read_only_2tb_mount(verified: VerifiedHost) -> None:
    overlay = verified.rental.attempts[2]
    disk = verified.disk_gb
    assert re.fullmatch(
        rf"/workspace: [\d.]+ GB free of [\d.]+ GB \(\S+ on /, the root filesystem\); "
        rf"{disk:g} GB were paid for",
        overlay.reason,
    ), overlay.reason
    said = [e.message for e in verified.events if e.instance_id == overlay.instance_id]
    assert (
        "note: /mnt/big: 2199.0 GB tmpfs mount is read-only (a host/driver mount): not usable "
        "for checkpoints"
    ) in said
    assert f"failed: {overlay.reason}" in said


@pytest.mark.slow
def test_ssh_refused_is_given_up_after_a_bounded_wait(verified: VerifiedHost) -> None:
    refused = verified.rental.attempts[3]
    assert re.fullmatch(
        r"SSH did not answer within 4 s of running \(ssh root@127\.0\.0\.1:\d+: connection "
        r"refused \(no sshd listening\)\)",
        refused.reason,
    ), refused.reason
    assert 4.0 <= refused.phases["probe"] < 8.0


@pytest.mark.slow
def test_the_clean_host_is_verified_and_the_only_thing_billing(verified: VerifiedHost) -> None:
    r, vast = verified.rental, verified.server
    assert r.offer.id == verified.offers["clean"]["id"]
    assert _billing(vast) == [("instance", r.instance.id)]
    assert re.fullmatch(r"runner:smoke:[0-9a-f]{6}", r.label)
    rec = verified.local.registry.instance(r.instance.id)
    assert rec is not None and (rec.status, rec.label, rec.ssh_port, rec.machine_id) == (
        "verified",
        r.label,
        r.target.port,
        r.offer.machine_id,
    )
    assert r.verdict.ok and r.verdict.failures == ()
    size = f"{verified.disk_gb * 2**30 / 1e9:.1f}"  # the fake's disks are GiB
    assert r.verdict.summary.startswith(
        f"/workspace: {size} GB free of {size} GB (tmpfs on /workspace), writable; "
        "1x NVIDIA RTX A4000 16.0 GiB (driver 570.86.15, CUDA 12.8)"
    )
    messages = [e.message for e in verified.events]
    assert f"instance {r.instance.id}: loading: Creating container" in messages

    info = vast.instance(r.instance.id)
    assert info.runtype == "ssh_direc ssh_proxy" and info.label == r.label
    sent = json.dumps([info.env, info.onstart, info.label, [q.body for q in vast.requests]])
    assert vast.api_key not in sent  # the account key never reaches a host


@pytest.mark.slow
def test_runner_ps_shows_the_verified_host(
    verified: VerifiedHost, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VAST_URL", verified.server.url)
    monkeypatch.setenv("VAST_API_KEY", verified.server.api_key)
    monkeypatch.setenv("XDG_STATE_HOME", str(verified.local.state_home))
    assert main(["ps"]) == 0
    out, err = capsys.readouterr()
    header, row = out.splitlines()
    assert header.split() == ["id", "label", "status", "gpu", "$/h", "up", "cost", "ssh", "note"]
    r = verified.rental
    assert row.split()[:3] == [str(r.instance.id), r.label, "running"]
    assert row.split()[-1] == "verified" and f"127.0.0.1:{r.target.port}" in row
    assert err == ""  # no orphans


def test_known_hosts_files_are_per_instance(local: Local, tmp_path: Path) -> None:
    from runner.cloud.ssh import SshTarget

    a = SshTarget("127.0.0.1", 2222, name="vast-1")
    b = SshTarget("127.0.0.1", 2222, name="vast-2")  # vast.ai reuses proxy ports
    assert local.ssh.known_hosts(a) != local.ssh.known_hosts(b)
    assert "StrictHostKeyChecking=accept-new" in local.ssh.options(a)

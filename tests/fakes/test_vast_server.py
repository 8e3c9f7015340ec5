"""The loopback vast.ai control plane against the real ``vastai`` client (1.9.x).

Every test drives ``VastAI(api_key=..., server_url=vast.url, retry=N)`` as the project will, and
reads the server's request log, billing and Docker state to say what happened. The tests marked
slow start real containers (``docker run`` of the local sshd image) and log in over real SSH;
they skip, saying why, where there is no Docker engine or no image.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from vastai import VastAI

from tests.fakes.vast_server import (
    GIB,
    LABEL,
    NAME_PREFIX,
    VastServer,
    cleanup_leftovers,
    docker_unavailable_reason,
)

SEARCH = "/api/v0/bundles"


class _Any:
    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0


ANY: Any = _Any()


@pytest.fixture
def vast() -> Iterator[VastServer]:
    with VastServer() as server:
        yield server
        assert server.errors == []  # Docker failures while booting, bugs of the fake


def _client(server: VastServer, retry: int = 3) -> VastAI:
    return VastAI(api_key=server.api_key, server_url=server.url, retry=retry)


@pytest.fixture
def client(vast: VastServer) -> VastAI:
    return _client(vast)


@pytest.fixture
def docker_engine() -> None:
    reason = docker_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("no OpenSSH client here (scripts/ci-infra.sh installs openssh-client)")


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ed25519 key pair; returns the private key's path (``.pub`` beside it)."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("no ssh-keygen here (scripts/ci-infra.sh installs openssh-client)")
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vast-fake-test", "-f", str(key)],
        check=True,
    )
    return key


def _ssh(key: Path, port: int, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *("ssh", "-i", str(key), "-p", str(port)),
            *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
            *("-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"),
            "root@127.0.0.1",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _wait(client: VastAI, iid: int, status: str, timeout: float = 60.0) -> list[Any]:
    """Poll like the project will until ``actual_status == status``; returns the statuses seen."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while True:
        row = client.show_instance(iid)
        assert row is not None
        if not seen or seen[-1] != row["actual_status"]:
            seen.append(row["actual_status"])
        if row["actual_status"] == status:
            return seen
        assert time.monotonic() < deadline, f"{iid} stuck at {row['actual_status']}: {row}"
        time.sleep(0.1)


def _df(output: str, mount: str) -> list[str]:
    """The ``df -PT`` row for ``mount``: [fs, type, 1k-blocks, used, avail, cap, mounted on]."""
    rows = [line.split() for line in output.splitlines()[1:] if line.strip()]
    return next(r for r in rows if r[-1] == mount)


def _error(exc: pytest.ExceptionInfo[requests.HTTPError]) -> tuple[int, Any]:
    response = exc.value.response
    assert response is not None
    return response.status_code, response.json()


# ------------------------------------------------------------------------------------------------
# Offers
# ------------------------------------------------------------------------------------------------


def test_search_filters_order_and_pricing(vast: VastServer, client: VastAI) -> None:
    a = vast.add_offer(dph_total=0.60, disk_space=500, geolocation="Ohio, US")["id"]
    vast.add_offer(dph_total=0.50, disk_space=200)  # too little disk
    vast.add_offer(dph_total=0.50, num_gpus=2)
    vast.add_offer(dph_total=0.50, gpu_name="H100 SXM", gpu_ram=81559)
    vast.add_offer(dph_total=0.50, reliability=0.97, reliability2=0.97)
    unverified = vast.add_offer(dph_total=0.30, verified=False, verification="unverified")["id"]
    g = vast.add_offer(dph_total=0.40, disk_space=800, geolocation="Bavaria, DE")["id"]
    vast.add_offer(dph_total=0.45, inet_down=100)

    query = (
        "gpu_name=RTX_4090 num_gpus=1 disk_space>=300 reliability>0.98 dph_total<1.5"
        " cuda_max_good>=12.4 inet_down>500"
    )
    offers = client.search_offers(query=query, order="dph_total", storage=300)
    assert [o["id"] for o in offers] == [g, a]
    # The storage part of the price follows allocated_storage ($/GB/month over 720 h).
    assert offers[1]["dph_total"] == pytest.approx(
        0.60 - 0.15 * 5 / 720 + 0.15 * 300 / 720, abs=1e-5
    )
    assert offers[0]["datacenter"] is False  # the client derives it from hosting_type

    sent = [r for r in vast.requests if r.path.rstrip("/") == SEARCH][-1].body
    assert sent["num_gpus"] == {"eq": "1"} and sent["disk_space"] == {"gte": "300"}  # strings
    assert sent["gpu_name"] == {"eq": "RTX 4090"} and sent["allocated_storage"] == 300
    assert sent["order"] == [["dph_total", "asc"]] and sent["type"] == "on-demand"

    assert [o["id"] for o in client.search_offers(query={"geolocation": {"in": ["DE"]}})] == [g]
    not_de = client.search_offers(query={"geolocation": {"notin": ["DE"]}}, order="dph_total")
    assert g not in [o["id"] for o in not_de] and len(not_de) == 6
    assert len(client.search_offers(query="num_gpus=1", order="dph_total", limit=2)) == 2
    assert unverified not in [o["id"] for o in client.search_offers()]
    assert unverified in [o["id"] for o in client.search_offers(query="verified=any")]
    bid = client.search_offers(query=f"id={a}", type="bid")
    assert bid[0]["dph_total"] == pytest.approx(0.2 + 0.15 * 5 / 720, abs=1e-5) and bid[0]["is_bid"]


def test_auth_query_string_forms_and_volume_offers(vast: VastServer, client: VastAI) -> None:
    offer = vast.add_offer(gpu_name="RTX 3090", avail_vol_size=750)
    q = json.dumps({"gpu_name": {"eq": "RTX 3090"}})
    r = requests.get(f"{vast.url}/api/v0/bundles/", params={"q": q, "api_key": vast.api_key})
    assert r.status_code == 200 and [o["id"] for o in r.json()["offers"]] == [offer["id"]]

    r = requests.post(f"{vast.url}/api/v0/bundles/", json={}, params={"api_key": "wrong"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_user"
    with pytest.raises(requests.HTTPError) as exc:
        VastAI(api_key="wrong", server_url=vast.url).search_offers()
    assert _error(exc)[0] == 401

    volumes = client.search_volumes()
    assert [(v["id"], v["machine_id"], v["disk_space"]) for v in volumes] == [
        (offer["avail_vol_ask_id"], offer["machine_id"], 750)
    ]


# ------------------------------------------------------------------------------------------------
# Instances without containers: listing, errors, billing
# ------------------------------------------------------------------------------------------------


def test_v1_list_pages_and_v0_list_is_refused(vast: VastServer, client: VastAI) -> None:
    # pull_fail instances never get a container: the paging test needs no Docker.
    offers = [vast.add_offer(scenario="pull_fail")["id"] for _ in range(30)]
    ids = [
        client.create_instance(o, image="ghcr.io/me/train:latest", disk=20, label=f"job-{i % 3}")[
            "new_contract"
        ]
        for i, o in enumerate(offers)
    ]
    rows = client.show_instances()
    assert sorted(r["id"] for r in rows) == sorted(ids)
    pages = [r for r in vast.requests if r.path.rstrip("/") == "/api/v1/instances"]
    assert len(pages) == 2 and pages[0].query["limit"] == "25" and "after_token" in pages[1].query

    page = client.show_instances_v1(
        {
            "select_filters": {"label": {"eq": "job-1"}},
            "order_by": [{"col": "id", "dir": "desc"}],
            "limit": 4,
        }
    )
    assert page["instances_found"] == 10 and page["total_instances"] == 30
    assert [r["id"] for r in page["instances"]] == sorted(ids[1::3], reverse=True)[:4]
    assert page["next_token"] and page["label_counts"]["job-1"] == 10

    row = client.show_instance(ids[0])
    assert row is not None and row["actual_status"] == "loading"
    assert "failed to pull image" in row["status_msg"] and "ports" not in row

    old = client.client.get("/instances/")
    assert old.status_code == 410 and old.json() == {
        "success": False,
        "error": "deprecated_endpoint",
        "msg": old.json()["msg"],
    }

    # Storage bills from creation, even for an instance that never ran.
    assert {r.id for r in vast.still_billing()} == set(ids)
    client.destroy_instances(ids[:15])
    for iid in ids[15:]:
        client.destroy_instance(iid)
    assert vast.still_billing() == []
    assert all(r.gpu_seconds == 0 for r in vast.billing())
    assert client.show_instance(ids[0]) is None and client.show_instances() == []
    assert not vast.docker_used  # no Docker call was ever needed


def test_create_errors(vast: VastServer, client: VastAI) -> None:
    ok = vast.add_offer(disk_space=100)["id"]
    with pytest.raises(requests.HTTPError) as exc:
        client.create_instance(ok, image="img", disk=5)
    status, body = _error(exc)
    assert status == 400 and body["error"] == "invalid_args" and body["ask_id"] == ok
    assert set(body) == {"success", "error", "msg", "ask_id"} and body["success"] is False
    for bad in (
        {"image": "x" * 1025},
        {"image": "img", "label": "l" * 257},
        {"image": "img", "disk": 101},
        {"image": "img", "onstart_cmd": "x" * 4097},
        {"image": "img", "env": {"K": "v" * 300}},
        {"image": "img", "runtype": "telnet"},
    ):
        with pytest.raises(requests.HTTPError) as exc:
            client.create_instance(ok, **{"disk": 20, **bad})
        assert _error(exc)[1]["error"] == "invalid_args", bad

    vanish = vast.add_offer(scenario="vanish")["id"]
    assert vanish in [o["id"] for o in client.search_offers()]
    with pytest.raises(requests.HTTPError) as exc:
        client.create_instance(vanish, image="img", disk=20)
    assert _error(exc) == (
        404,
        {
            "success": False,
            "error": "no_such_ask",
            "msg": f"Instance type by id {vanish} is not available.",
            "ask_id": vanish,
        },
    )
    assert vanish not in [o["id"] for o in client.search_offers()]
    gone = vast.add_offer(scenario="vanish")["id"]
    with pytest.raises(requests.HTTPError) as exc:
        client.create_instance(gone, image="img", disk=20, cancel_unavail=True)
    assert _error(exc)[0] == 410 and _error(exc)[1]["error"] == "no_such_ask"

    # GPUs taken at create time: cancel_unavail answers 410, without it a stopped contract bills.
    busy = vast.add_offer(scenario="unavailable")["id"]
    with pytest.raises(requests.HTTPError) as exc:
        client.create_instance(busy, image="img", disk=20, cancel_unavail=True)
    assert _error(exc)[0] == 410
    stuck = client.create_instance(busy, image="img", disk=20)["new_contract"]
    row = client.show_instance(stuck)
    assert row is not None and row["actual_status"] == "stopped"
    assert [r.id for r in vast.still_billing()] == [stuck]
    client.destroy_instance(stuck)

    # A rented offer leaves the market until its instance is destroyed.
    rented = vast.add_offer(scenario="pull_fail")["id"]
    iid = client.create_instance(rented, image="img", disk=20)["new_contract"]
    assert rented not in [o["id"] for o in client.search_offers()]
    with pytest.raises(requests.HTTPError) as exc:
        client.create_instance(rented, image="img", disk=20)
    assert _error(exc)[1]["error"] == "no_such_ask"
    client.destroy_instance(iid)
    assert rented in [o["id"] for o in client.search_offers()]
    with pytest.raises(requests.HTTPError) as exc:
        client.destroy_instance(iid)
    assert _error(exc)[0] == 404 and _error(exc)[1]["error"] == "no_such_instance"
    assert vast.still_billing() == []


def test_rate_limits_and_client_retries(vast: VastServer) -> None:
    vast.add_offer()
    client = _client(vast, retry=3)  # 3 attempts in all

    vast.rate_limit(2, retry_after=0, path_regex=SEARCH)
    assert len(client.search_offers()) == 1
    assert [r.status for r in vast.requests] == [429, 429, 200]

    vast.rate_limit(3, body="json", path_regex=SEARCH)  # no Retry-After: 0.15 s, then 0.225 s
    with pytest.raises(requests.HTTPError) as exc:
        client.search_offers()
    assert _error(exc) == (429, {"success": False, "error": "rate_limit_exceeded", "msg": ANY})

    quota = vast.rate_limit(1, body="quota")
    with pytest.raises(requests.HTTPError) as exc:
        client.search_offers()
    assert quota.hits == 1 and _error(exc)[1]["error"] == "search_quota_exceeded"  # no retry

    vast.rate_limit(1, retry_after=120, body="detail")  # over the client's 60 s cap: returned
    with pytest.raises(requests.HTTPError) as exc:
        client.search_offers()
    response = exc.value.response
    assert response is not None and response.headers["Retry-After"] == "120"

    with VastServer(min_interval_s=5.0) as paced:
        once = _client(paced, retry=1)
        once.search_offers()
        once.show_instances()  # another endpoint: its own interval
        with pytest.raises(requests.HTTPError) as exc:
            once.search_offers()
        response = exc.value.response
        assert response is not None and response.status_code == 429
        assert "too frequent" in response.text


def test_ssh_keys_and_volumes_api(vast: VastServer, client: VastAI, ssh_key: Path) -> None:
    public = ssh_key.with_suffix(".pub").read_text().strip()
    created = client.create_ssh_key(public)
    assert created["success"] and created["public_key"] == public
    assert [k["id"] for k in client.show_ssh_keys()] == [created["id"]]
    with pytest.raises(requests.HTTPError) as exc:
        client.create_ssh_key("not a key")
    assert _error(exc)[0] == 400

    here = vast.add_offer(scenario="pull_fail")
    there = vast.add_offer(scenario="pull_fail")
    made = client.create_volume(here["avail_vol_ask_id"], size=50, name="ckpt")
    assert made["success"] and made["volume_name"].startswith("V.")
    vid = int(made["volume_name"][2:])
    (vol,) = client.show_volumes()
    assert (vol["id"], vol["label"], vol["disk_space"]) == (vid, "ckpt", 50)
    assert vol["machine_id"] == here["machine_id"] and vol["instances"] == []

    # A local volume attaches only on its own machine.
    with pytest.raises(requests.HTTPError) as exc:
        client.create_instance(there["id"], image="img", disk=20, link_volume=vid, mount_path="/d")
    status, body = _error(exc)
    assert status == 400 and body["error"] == "invalid_args" and "machine" in body["msg"]
    iid = client.create_instance(
        here["id"], image="img", disk=20, link_volume=vid, mount_path="/data"
    )["new_contract"]
    row = client.show_instance(iid)
    assert row is not None and row["volume_info"] == {"volume_id": vid, "mount_path": "/data"}
    with pytest.raises(requests.HTTPError) as exc:
        client.delete_volume(vid)
    assert _error(exc)[1]["error"] == "volume_in_use"
    client.destroy_instance(iid)
    assert {r.kind for r in vast.still_billing()} == {"volume"}
    assert client.delete_volume(vid)["success"]
    assert client.show_volumes() == [] and vast.still_billing() == []


# ------------------------------------------------------------------------------------------------
# Real containers, real sshd
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("docker_engine")
def test_clean_instance_runs_a_container_reachable_over_ssh(
    vast: VastServer, client: VastAI, ssh_key: Path
) -> None:
    client.create_ssh_key(ssh_key.with_suffix(".pub").read_text())
    offer = vast.add_offer(disk_space=500, boot_delay_s=0.3)["id"]
    new = client.create_instance(
        offer,
        image="ghcr.io/me/train:latest",
        disk=300,
        env={"FOO": "bar", "-p 8080:8080": "1"},
        onstart_cmd="echo ran > /root/onstart-ran; env > /root/onstart-env",
        label="job1",
        ssh=True,
        direct=True,
        cancel_unavail=True,
    )
    iid = new["new_contract"]
    assert new["success"] and vast.requests[-1].body["runtype"] == "ssh_direc ssh_proxy"
    seen = _wait(client, iid, "running")
    assert seen[0] == "loading"

    row = client.show_instance(iid)
    assert row is not None
    port = row["ssh_port"]
    assert row["ssh_host"] == "127.0.0.1" and row["extra_env"] == {
        "FOO": "bar",
        "-p 8080:8080": "1",
    }
    assert row["ports"]["22/tcp"][0]["HostPort"] == str(port) and "8080/tcp" in row["ports"]
    assert client.ssh_url(iid) == f"ssh://root@127.0.0.1:{port}"
    assert vast.containers() == [f"{NAME_PREFIX}{iid}"]

    done = _ssh(ssh_key, port, "df -PT /workspace; cat /root/onstart-ran; echo FOO=${FOO:-unset}")
    assert done.returncode == 0, done.stderr
    fs = _df(done.stdout, "/workspace")
    assert fs[1] == "tmpfs" and int(fs[4]) * 1024 == 300 * GIB
    assert "ran" in done.stdout and "FOO=unset" in done.stdout  # env: not in SSH sessions
    assert _ssh(ssh_key, port, "grep -x FOO=bar /root/onstart-env").returncode == 0
    assert _ssh(ssh_key, port, "touch /workspace/ckpt && echo ok").stdout.strip() == "ok"
    assert "Server listening" in client.logs(iid)

    client.label_instance(iid, "job1-renamed")
    client.stop_instance(iid)
    _wait(client, iid, "stopped")
    assert _ssh(ssh_key, port, "true").returncode != 0
    client.start_instance(iid)
    _wait(client, iid, "running")
    assert _ssh(ssh_key, port, "test -f /workspace/ckpt || echo fresh").returncode == 0
    row = client.show_instance(iid)
    assert row is not None and row["label"] == "job1-renamed"

    (bill,) = vast.billing()
    assert bill.billing and bill.gpu_seconds > 0 and bill.dph_total == row["dph_total"]
    client.destroy_instance(iid)
    assert vast.containers() == [] and vast.still_billing() == []
    assert client.show_instance(iid) is None


@pytest.mark.slow
@pytest.mark.usefixtures("docker_engine")
def test_small_overlay_has_no_workspace_disk_and_a_read_only_big_mount(
    vast: VastServer, client: VastAI, ssh_key: Path
) -> None:
    offer = vast.add_offer(scenario="small_overlay", fake_gpu="scenario:healthy:gpus=1")["id"]
    iid = client.create_instance(offer, image="img", disk=300, runtype="ssh_proxy")["new_contract"]
    _wait(client, iid, "running")
    row = client.show_instance(iid)
    assert row is not None and row["disk_space"] == 300  # what was paid for

    port = row["ssh_port"]
    refused = _ssh(ssh_key, port, "true")  # no key on the account when it was created
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    client.attach_ssh(iid, ssh_key.with_suffix(".pub").read_text())
    done = _ssh(ssh_key, port, "df -PT /workspace; df -PT /mnt/big; echo NVML=$RUNNER_FAKE_NVML")
    assert done.returncode == 0, done.stderr
    assert _df(done.stdout, "/")  # /workspace is a folder of the root filesystem
    big = _df(done.stdout, "/mnt/big")
    assert big[1] == "tmpfs" and int(big[2]) * 1024 == 2048 * GIB
    assert "NVML=scenario:healthy:gpus=1" in done.stdout
    denied = _ssh(ssh_key, port, "touch /mnt/big/x")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    client.destroy_instance(iid)


@pytest.mark.slow
@pytest.mark.usefixtures("docker_engine")
def test_ssh_refused_runs_without_sshd(vast: VastServer, client: VastAI, ssh_key: Path) -> None:
    offer = vast.add_offer(scenario="ssh_refused")["id"]
    iid = client.create_instance(offer, image="img", disk=20, ssh=True)["new_contract"]
    _wait(client, iid, "running")
    row = client.show_instance(iid)
    assert row is not None and vast.containers() == [f"{NAME_PREFIX}{iid}"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", row["ssh_port"]), timeout=2).close()
    client.destroy_instance(iid)
    assert vast.containers() == []


@pytest.mark.slow
@pytest.mark.usefixtures("docker_engine")
def test_volume_survives_destroy_and_links_on_its_machine(
    vast: VastServer, client: VastAI, ssh_key: Path
) -> None:
    client.create_ssh_key(ssh_key.with_suffix(".pub").read_text())
    first = vast.add_offer()
    second = vast.add_offer(machine_id=first["machine_id"])["id"]
    iid = client.create_instance(
        first["id"],
        image="img",
        disk=20,
        ssh=True,
        create_volume=first["avail_vol_ask_id"],
        volume_size=20,
        mount_path="/data",
    )["new_contract"]
    _wait(client, iid, "running")
    (vol,) = client.show_volumes()
    port = client.show_instance(iid)["ssh_port"]
    done = _ssh(ssh_key, port, "df -PT /data && echo kept > /data/ckpt")
    assert done.returncode == 0, done.stderr
    if os.path.ismount(vast.volume_path(vol["id"])):  # root: a tmpfs of the volume's size
        assert int(_df(done.stdout, "/data")[2]) * 1024 == 20 * GIB
    client.destroy_instance(iid)
    assert (vast.volume_path(vol["id"]) / "ckpt").read_text() == "kept\n"

    again = client.create_instance(
        second, image="img", disk=20, ssh=True, link_volume=vol["id"], mount_path="/restore"
    )["new_contract"]
    _wait(client, again, "running")
    port = client.show_instance(again)["ssh_port"]
    assert _ssh(ssh_key, port, "cat /restore/ckpt").stdout == "kept\n"
    client.destroy_instance(again)
    client.delete_volume(vol["id"])
    assert vast.still_billing() == [] and vast.containers() == []


@pytest.mark.slow
@pytest.mark.usefixtures("docker_engine")
def test_close_and_cleanup_leftovers_remove_containers() -> None:
    import docker

    engine = docker.from_env()
    pid = subprocess.Popen(["true"])  # a process id that is gone by the time it is used
    pid.wait()
    stale = engine.containers.create(
        "runner-test/debian-sshd:bookworm",
        ["true"],
        name=f"{NAME_PREFIX}stale-{pid.pid}",
        labels={LABEL: "0", f"{LABEL}.pid": str(pid.pid)},
    )
    server = VastServer()
    try:
        client = _client(server)
        iid = client.create_instance(server.add_offer()["id"], image="img", disk=20, ssh=True)
        server.wait_status(iid["new_contract"], "running")
        assert cleanup_leftovers() >= 1  # the dead process's container, not the live server's
        names = {c.name for c in engine.containers.list(all=True, filters={"label": LABEL})}
        assert stale.name not in names and server.containers()[0] in names
    finally:
        server.close()
    assert not engine.containers.list(all=True, filters={"label": f"{LABEL}.server={server.token}"})
    engine.close()


def test_an_instance_key_manages_its_own_instance_only(vast: VastServer, client: VastAI) -> None:
    # "unavailable" without cancel_unavail: the instance exists (stopped), no container starts.
    offer = vast.add_offer(scenario="unavailable")
    other_offer = vast.add_offer(scenario="unavailable")
    mine = client.create_instance(offer["id"], image="img", disk=10)
    other = client.create_instance(other_offer["id"], image="img", disk=10)
    key, iid = mine["instance_api_key"], mine["new_contract"]
    assert key != other["instance_api_key"] and key != vast.api_key

    def call(method: str, path: str, body: Any = None) -> int:
        return requests.request(
            method, f"{vast.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}
        ).status_code

    assert call("GET", f"/api/v0/instances/{iid}/") == 200
    assert call("PUT", f"/api/v0/instances/{iid}/", {"state": "stopped"}) == 200
    assert call("GET", f"/api/v0/instances/{other['new_contract']}/") == 401
    assert call("DELETE", f"/api/v0/instances/{other['new_contract']}/") == 401
    assert call("GET", "/api/v1/instances/") == 401
    assert call("GET", "/api/v0/users/current/") == 401
    assert call("DELETE", f"/api/v0/instances/{iid}/") == 200
    assert vast.instance(iid).destroyed_at is not None
    assert vast.instance(other["new_contract"]).destroyed_at is None

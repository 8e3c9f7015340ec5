"""The vast.ai client layer against the loopback server: keys, errors, retries, paging, secrecy.

No Docker needed: instances here are ``pull_fail`` ones (no container) or never created.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.cloud.vast import (
    ApiKey,
    AuthError,
    CloudError,
    NoApiKeyError,
    NotFoundError,
    OfferUnavailableError,
    RateLimitError,
    RetryPolicy,
    UnreachableError,
    VastApi,
    VolumeAttach,
    resolve_api_key,
)
from tests.cloud import api_for
from tests.cloud import vast_fixture as vast_fixture
from tests.fakes.vast_server import VastServer

# -- the API key ---------------------------------------------------------------------------------


def test_key_lookup_follows_the_vastai_cli_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    xdg = tmp_path / "xdg"
    legacy = home / ".vast_api_key"
    fallback = home / ".config" / "vastai" / "vast_api_key"
    in_xdg = xdg / "vastai" / "vast_api_key"
    for path, text in ((legacy, "legacy\n"), (fallback, "fallback"), (in_xdg, " xdg ")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = {"XDG_CONFIG_HOME": str(xdg), "VAST_API_KEY": "from-env"}

    assert resolve_api_key("explicit", environ=env, home=home).value == "explicit"
    assert resolve_api_key(None, environ=env, home=home) == ApiKey("from-env", "VAST_API_KEY")
    del env["VAST_API_KEY"]
    assert resolve_api_key(None, environ=env, home=home) == ApiKey("xdg", str(in_xdg))
    assert resolve_api_key(None, environ={}, home=home) == ApiKey("fallback", str(fallback))
    fallback.unlink()
    assert resolve_api_key(None, environ={}, home=home) == ApiKey("legacy", str(legacy))
    assert "legacy" not in repr(resolve_api_key(None, environ={}, home=home))  # never shown


def test_missing_key_is_one_line_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(NoApiKeyError) as exc:
        resolve_api_key(None, environ={"XDG_CONFIG_HOME": str(tmp_path / "c")}, home=tmp_path)
    assert str(exc.value) == (
        f"no vast.ai API key: set VAST_API_KEY, or save the key to "
        f"{tmp_path / 'c' / 'vastai' / 'vast_api_key'} (`vastai set api-key KEY` does); "
        "keys are at https://cloud.vast.ai/manage-keys/"
    )


def test_bad_key_is_an_auth_error_naming_where_it_came_from(vast: VastServer) -> None:
    api = VastApi("0" * 64, server_url=vast.url)
    with pytest.raises(AuthError) as exc:
        api.list_instances()
    assert str(exc.value) == (
        "vast.ai refused the API key from the api_key argument (401 invalid_user); check it, or "
        "make a new one at https://cloud.vast.ai/manage-keys/"
    )
    assert "0" * 64 not in str(exc.value)


# -- rate limits and failures --------------------------------------------------------------------


def test_429_bursts_are_retried_honouring_retry_after(vast: VastServer) -> None:
    vast.add_offer()
    waits: list[float] = []
    said: list[str] = []
    api = api_for(vast, sleep=waits.append, notify=said.append)

    vast.rate_limit(2, retry_after=1.5, path_regex="/bundles")
    assert len(api.search_offers({}, disk_gb=20)) == 1
    assert waits == [1.5, 1.5]  # Retry-After wins over the backoff
    assert said == ["vast.ai rate limit (429) on the offer search; retrying in 1.5 s"] * 2

    waits.clear()
    vast.rate_limit(3, body="json", path_regex="/bundles")  # no Retry-After: doubling backoff
    assert len(api.search_offers({}, disk_gb=20)) == 1
    assert waits == [0.01, 0.02, 0.04]


def test_429_that_never_ends_is_one_clear_error(vast: VastServer) -> None:
    api = api_for(vast, retry=RetryPolicy(attempts=3, base_s=0.0), sleep=lambda s: None)
    limit = vast.rate_limit(10, body="detail")
    with pytest.raises(RateLimitError) as exc:
        api.list_instances()
    assert limit.hits == 3
    assert str(exc.value) == (
        "vast.ai kept answering 429 (too many requests) to listing instances after 3 tries; "
        "wait a minute and run it again"
    )


def test_long_retry_after_and_the_daily_quota_are_not_waited_out(vast: VastServer) -> None:
    waits: list[float] = []
    api = api_for(vast, sleep=waits.append)
    vast.rate_limit(1, retry_after=120)
    with pytest.raises(RateLimitError, match=r"asks to wait 120 s \(more than 5 s\)"):
        api.search_offers({}, disk_gb=20)
    quota = vast.rate_limit(5, body="quota")
    with pytest.raises(RateLimitError) as exc:
        api.search_offers({}, disk_gb=20)
    assert quota.hits == 1 and waits == []
    assert str(exc.value) == (
        "vast.ai's daily search quota is spent (search_quota_exceeded); it resets at 00:00 UTC"
    )


def test_an_api_server_that_is_gone_is_unreachable_not_a_traceback() -> None:
    with VastServer() as gone:
        url, key = gone.url, gone.api_key
    api = VastApi(key, server_url=url, retry=RetryPolicy(attempts=2, base_s=0.0))
    with pytest.raises(UnreachableError) as exc:
        api.list_instances()
    assert str(exc.value) == (
        f"cannot reach vast.ai at {url} (listing instances: connection refused 2 times); check "
        "the network or VAST_URL"
    )


# -- instances -----------------------------------------------------------------------------------


def test_instances_are_listed_through_v1_pages_only(vast: VastServer) -> None:
    api = api_for(vast)
    ids = [
        api.create_instance(
            vast.add_offer(scenario="pull_fail")["id"], image="img", disk_gb=20, label=f"l{i}"
        )
        for i in range(27)
    ]
    listed = api.list_instances()
    assert [i.id for i in listed] == sorted(ids)
    pages = [r for r in vast.requests if r.path.startswith("/api/v1/instances")]
    assert len(pages) == 2 and "after_token" in pages[1].query
    assert not [r for r in vast.requests if r.method == "GET" and r.path == "/api/v0/instances/"]
    row = api.show_instance(ids[0])
    assert row is not None and row.actual_status == "loading" and row.label == "l0"
    assert "failed to pull image" in (row.status_msg or "")
    for iid in ids:
        api.destroy_instance(iid)
    assert api.show_instance(ids[0]) is None and vast.still_billing() == []
    with pytest.raises(NotFoundError, match=r"404 no_such_instance"):
        api.destroy_instance(ids[0])


def test_create_sends_runtype_cancel_unavail_and_volume_info(vast: VastServer) -> None:
    api = api_for(vast)
    offer = vast.add_offer(scenario="pull_fail")
    iid = api.create_instance(
        offer["id"],
        image="ghcr.io/me/train:latest",
        disk_gb=300,
        label="runner:job:abc123",
        env={"HF_HOME": "/workspace/hf"},
        volume=VolumeAttach("/storage", create_ask_id=offer["avail_vol_ask_id"], size_gb=50),
    )
    body = next(r.body for r in vast.requests if r.path.startswith("/api/v0/asks/"))
    assert body["runtype"] == "ssh_direc ssh_proxy" and body["cancel_unavail"] is True
    assert body["disk"] == 300 and body["label"] == "runner:job:abc123"
    assert body["volume_info"] == {
        "mount_path": "/storage",
        "create_new": True,
        "volume_id": offer["avail_vol_ask_id"],
        "size": 50,
    }
    row = api.show_instance(iid)
    assert row is not None and row.volume_mount == "/storage" and row.volume_id is not None
    api.destroy_instance(iid)
    api.delete_volume(row.volume_id)
    assert vast.still_billing() == []


def test_a_vanished_or_taken_offer_is_offer_unavailable(vast: VastServer) -> None:
    api = api_for(vast)
    for scenario in ("vanish", "unavailable"):
        offer = vast.add_offer(scenario=scenario)["id"]
        with pytest.raises(OfferUnavailableError) as exc:
            api.create_instance(offer, image="img", disk_gb=20, label="x")
        assert exc.value.status == 410 and exc.value.code == "no_such_ask"
    assert vast.still_billing() == []  # cancel_unavail: no stopped contract left behind


def test_the_api_key_never_leaves_in_a_request_body(vast: VastServer) -> None:
    api = api_for(vast)
    offer = vast.add_offer(scenario="pull_fail")["id"]
    iid = api.create_instance(offer, image="img", disk_gb=20, label="runner:x:1", env={"A": "b"})
    api.label_instance(iid, "runner:x:2")
    api.destroy_instance(iid)
    bodies = json.dumps([r.body for r in vast.requests])
    assert vast.api_key not in bodies
    assert all(vast.api_key not in json.dumps(r.query) for r in vast.requests)
    # And runner refuses to send it if a caller tries.
    with pytest.raises(CloudError, match=r"refusing to send the vast\.ai API key"):
        api.create_instance(offer, image="img", disk_gb=20, label="x", env={"K": vast.api_key})


def test_ssh_keys_and_volumes(vast: VastServer, tmp_path: Path) -> None:
    api = api_for(vast)
    public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEhb3ZpZ2aW5ncyBmcm9tIHJ1bm5lcg== test"
    key = api.add_ssh_key(public)
    assert api.list_ssh_keys() == [key] and key.public_key == public
    offer = vast.add_offer(avail_vol_size=800)
    vid = api.create_volume(offer["avail_vol_ask_id"], 100, "ckpt")
    (vol,) = api.list_volumes()
    assert (vol.id, vol.name, vol.size_gb, vol.machine_id) == (
        vid,
        "ckpt",
        100,
        offer["machine_id"],
    )
    api.delete_volume(vid)
    assert api.list_volumes() == [] and vast.still_billing() == []

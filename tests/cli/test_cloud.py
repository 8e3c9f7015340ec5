"""``runner offers``, ``rent``, ``storage``, ``ps``, ``down`` as a new user meets them.

The environment points at the loopback vast.ai (``VAST_URL``, ``VAST_API_KEY``) and a
temporary ``XDG_STATE_HOME``; every failure a user can cause must be one ``error:`` line and a
non-zero exit code.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.cli import main
from runner.cloud.vast import VastApi
from tests.cloud import GPU, api_for
from tests.cloud import cloud_env_fixture as cloud_env_fixture
from tests.cloud import docker_fixture as docker_fixture
from tests.cloud import vast_fixture as vast_fixture
from tests.conftest import RUNNER_BIN
from tests.fakes.vast_server import VastServer


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- what a new user runs into first -------------------------------------------------------------


def test_rent_without_an_api_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "rent", "--disk", "300")
    key_file = Path(os.environ["XDG_CONFIG_HOME"]) / "vastai" / "vast_api_key"
    assert (code, out) == (1, "")
    assert err == (
        f"error: no vast.ai API key: set VAST_API_KEY, or save the key to {key_file} "
        "(`vastai set api-key KEY` does); keys are at https://cloud.vast.ai/manage-keys/\n"
    )


def test_rent_with_a_bad_key(
    cloud_env: VastServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VAST_API_KEY", "f" * 64)
    code, out, err = run(capsys, "rent", "--disk", "300")
    assert (code, out) == (1, "")
    assert err == (
        "error: vast.ai refused the API key from VAST_API_KEY (401 invalid_user); check it, or "
        "make a new one at https://cloud.vast.ai/manage-keys/\n"
    )
    assert "f" * 64 not in err


def test_rent_with_no_matching_offer_names_the_filter(
    cloud_env: VastServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud_env.add_offer(gpu_name="RTX 4090", disk_space=500)
    cloud_env.add_offer(gpu_name="RTX 3090", disk_space=200)
    code, out, err = run(capsys, "rent", "--disk", "300", "--gpu", "RTX_3090")
    assert (code, out) == (1, "")
    assert err == (
        "error: no offer matches --gpu (gpu_name = RTX 3090): 2 rentable offers, 1 with "
        "disk_space >= 300 GB, none of them has gpu_name = RTX 3090 (there are RTX 4090); "
        "1 offer(s) with gpu_name = RTX 3090 fail disk_space >= 300 GB\n"
    )
    assert not [i for i in cloud_env.instances]  # nothing was rented


def test_rent_flags_that_contradict(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "rent", "--storage", "7", "--create-storage", "100")
    assert (code, err) == (2, "error: --storage and --create-storage: choose one\n")


# -- offers --------------------------------------------------------------------------------------


def test_offers_table_explain_and_json(
    cloud_env: VastServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cheap = cloud_env.add_offer(dph_total=0.40, geolocation="Bavaria, DE")["id"]
    dear = cloud_env.add_offer(dph_total=0.80, dlperf=70.0)["id"]
    code, out, err = run(capsys, "offers", "--disk", "300", "--explain")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == [
        "offer", "gpus", "gpu_gb", "$/h", "score", "perf/$", "reliab", "disk_gb", "cuda",
        "inet_mbps", "machine", "where",
    ]  # fmt: skip
    assert [ln.split()[0] for ln in lines[1:3]] == [str(cheap), str(dear)]
    assert lines[1].split()[1:4] == ["1x", "RTX", "4090"]
    assert lines[3].startswith(f"offer {cheap} (1x RTX 4090 24 GB, Bavaria, DE, machine ")
    assert lines[-1] == "  score = perf / dph_total x reliability (perf: dlperf, else total_flops)"

    code, out, _ = run(capsys, "offers", "--json", "--limit", "1", "--region", "EU")
    (row,) = json.loads(out)
    assert code == 0 and row["offer"]["id"] == cheap and row["perf_kind"] == "dlperf"


# -- ps and down ---------------------------------------------------------------------------------


def _instance(vast: VastServer, label: str) -> int:
    """A billing instance (stuck pulling: no container) made behind runner's back."""
    api = api_for(vast)
    return api.create_instance(
        vast.add_offer(scenario="pull_fail")["id"], image="img", disk_gb=20, label=label
    )


def test_ps_shows_orphans_and_down_destroys_only_runners(
    cloud_env: VastServer, capsys: pytest.CaptureFixture[str]
) -> None:
    orphan = _instance(cloud_env, "runner:elsewhere:abc123")
    foreign = _instance(cloud_env, "my-notebook")
    code, out, err = run(capsys, "ps")
    assert code == 0
    _, row = out.splitlines()
    assert row.split()[:3] == [str(orphan), "runner:elsewhere:abc123", "loading"]
    assert row.endswith("ORPHAN: not in this machine's registry")
    assert err == f"warning: 1 orphan(s) billing: {orphan}; `runner down ID` destroys one\n"
    code, out, _ = run(capsys, "ps", "--all")
    assert str(foreign) in out and "not runner's" in out

    code, out, err = run(capsys, "down", str(foreign))
    assert (code, out) == (1, "")
    assert err == (
        f"error: instance {foreign} is not runner's (label 'my-notebook'); runner destroys only "
        f"what it labelled: use `vastai destroy instance {foreign}` if you mean it\n"
    )
    code, out, _ = run(capsys, "down", str(orphan))
    assert (code, out) == (0, f"destroyed instance {orphan} (runner:elsewhere:abc123, loading)\n")
    code, _, err = run(capsys, "down", str(orphan))
    assert (code, err) == (
        1,
        f"error: instance {orphan} is not on the account (destroyed already?)\n",
    )
    assert [r.id for r in cloud_env.still_billing()] == [foreign]  # the user's own, untouched

    code, _, err = run(capsys, "down")
    assert (code, err) == (2, "error: give instance ids or --finished (one of them)\n")


def test_down_finished_takes_only_stopped_runner_instances(
    cloud_env: VastServer, capsys: pytest.CaptureFixture[str]
) -> None:
    done = _instance(cloud_env, "runner:job:000001")
    busy = _instance(cloud_env, "runner:job:000002")
    theirs = _instance(cloud_env, "other")
    cloud_env.set_status(done, "exited", "Container exited with code 0")
    cloud_env.set_status(theirs, "exited")
    code, out, _ = run(capsys, "down", "--finished")
    assert (code, out) == (0, f"destroyed instance {done} (runner:job:000001, exited)\n")
    assert sorted(r.id for r in cloud_env.still_billing()) == sorted([busy, theirs])
    assert run(capsys, "down", "--finished")[1] == "no finished runner instances\n"


# -- storage -------------------------------------------------------------------------------------


def test_storage_create_list_delete(
    cloud_env: VastServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run(capsys, "storage", "list")[1] == "no volumes; `runner storage create SIZE` makes one\n"
    )
    offer = cloud_env.add_offer(geolocation="Texas, US")
    code, out, _ = run(capsys, "storage", "create", "500", "--name", "ckpt")
    (vol,) = api_for(cloud_env).list_volumes()
    assert code == 0 and out == (
        f"created volume {vol.id} 'ckpt' (500 GB) on machine {offer['machine_id']} "
        f"(1x RTX 4090, Texas, US)\nrent on it: runner rent --storage {vol.id}\n"
    )
    code, out, _ = run(capsys, "storage", "list")
    assert out.splitlines()[1].split()[:5] == [
        str(vol.id),
        "ckpt",
        "500",
        str(offer["machine_id"]),
        "idle",
    ]
    assert run(capsys, "storage", "delete", str(vol.id))[1] == f"deleted volume {vol.id}\n"
    code, _, err = run(capsys, "storage", "delete", str(vol.id))
    assert (code, err) == (
        1,
        f"error: no volume {vol.id} on this account; `runner storage list` shows them\n",
    )
    assert cloud_env.still_billing() == []


# -- interrupts and start-up ---------------------------------------------------------------------


def test_sigterm_during_rent_leaves_nothing_billing(cloud_env: VastServer) -> None:
    cloud_env.add_offer(boot_delay_s=120)  # stays "loading": no container
    proc = subprocess.Popen(
        [str(RUNNER_BIN), "rent", "--disk", "300"],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not cloud_env.instances and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cloud_env.instances, "runner rent never created an instance"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and out == ""
    assert err.splitlines()[-1] == (
        "error: interrupted; every instance this rental created was destroyed"
    )
    assert cloud_env.still_billing() == []


def test_help_imports_no_cloud_library() -> None:
    code = (
        "import sys; from runner.cli import main; main(['--help']);"
        "print([m for m in ('vastai', 'docker', 'requests', 'paramiko', 'runner.cloud')"
        " if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert re.search(r"^\s+rent\s", done.stdout, re.M) and re.search(r"^\s+ps\s", done.stdout, re.M)


# -- the whole thing, on a real container --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("docker")
def test_volume_rent_ps_down(cloud_env: VastServer, capsys: pytest.CaptureFixture[str]) -> None:
    best = cloud_env.add_offer(dph_total=0.3, fake_gpu=GPU)
    cloud_env.add_offer(dph_total=0.6, fake_gpu=GPU)
    code, out, _ = run(capsys, "storage", "create", "20", "--disk", "50")
    api: VastApi = api_for(cloud_env)
    (vol,) = api.list_volumes()
    assert code == 0 and vol.machine_id == best["machine_id"]  # where the best GPU offer is
    better = cloud_env.add_offer(dph_total=0.1, fake_gpu=GPU)  # elsewhere: not for the volume

    code, out, err = run(capsys, "rent", "--disk", "50", "--storage", str(vol.id))
    assert code == 0, err
    (inst,) = [i for i in cloud_env.instances if i.destroyed_at is None]
    assert inst.machine_id == vol.machine_id != better["machine_id"]
    assert inst.volume_ids == (vol.id,)
    lines = out.splitlines()
    assert re.fullmatch(
        rf"verified instance {inst.id} \(runner:rent:[0-9a-f]{{6}}\) on machine "
        rf"{vol.machine_id}: 1x RTX 4090, \$0\.\d+/h, 1 try in [\d.]+ s",
        lines[0],
    ), lines[0]
    assert lines[1].startswith("  /workspace: 53.7 GB free of 53.7 GB (tmpfs on /workspace)")
    assert lines[2] == f"  volume {vol.id}: /storage: 21.5 GB free of 21.5 GB (tmpfs on /storage)"
    assert lines[-1] == f"  destroy it with: runner down {inst.id}"
    assert f"instance {inst.id}: running: success, running " in err

    code, out, err = run(capsys, "ps")
    assert code == 0 and err == "" and out.splitlines()[1].split()[0] == str(inst.id)
    assert run(capsys, "down", str(inst.id))[0] == 0
    assert run(capsys, "storage", "delete", str(vol.id))[0] == 0
    assert cloud_env.still_billing() == []

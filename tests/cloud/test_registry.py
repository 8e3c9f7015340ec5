"""The local registry: instances runner created, machines that failed, where it lives."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from runner.cloud.registry import Registry, state_dir


def test_state_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert state_dir() == Path.home() / ".local" / "state" / "runner"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert state_dir() == tmp_path / "runner"
    assert Registry().path == tmp_path / "runner" / "registry.sqlite"


def test_instances_move_from_booting_to_verified_to_destroyed(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "deep" / "registry.sqlite")  # folders made on first use
    reg.add_instance(
        7,
        label="runner:job:abc123",
        job="job",
        offer_id=70,
        machine_id=700,
        gpu_name="RTX 4090",
        num_gpus=1,
        dph_total=0.5,
        disk_gb=300,
        image="img",
    )
    reg.add_instance(8, label="runner:rent:def456")
    rec = reg.instance(7)
    assert rec is not None and rec.status == "booting" and rec.live and rec.machine_id == 700
    reg.set_status(7, "verified", ssh=("127.0.0.1", 2222))
    reg.set_status(8, "destroyed", reason="/workspace: 50 GB overlay")
    seven, eight = reg.instances()
    assert (seven.status, seven.ssh_host, seven.ssh_port, seven.destroyed) == (
        "verified",
        "127.0.0.1",
        2222,
        None,
    )
    assert eight.status == "destroyed" and eight.reason == "/workspace: 50 GB overlay"
    assert eight.destroyed is not None and not eight.live
    assert [r.id for r in reg.instances(live_only=True)] == [7]
    assert reg.instance(9) is None


def test_bad_machines_count_expire_and_can_be_forgotten(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.sqlite")
    reg.mark_bad(40001, "SSH refused", instance_id=1)
    reg.mark_bad(40001, "/workspace too small", instance_id=2)
    reg.mark_bad(40002, "pull failed")
    bad = reg.bad_machines()
    assert set(bad) == {40001, 40002}
    assert (bad[40001].reason, bad[40001].count, bad[40001].instance_id) == (
        "/workspace too small",
        2,
        2,
    )
    # Marks older than the TTL no longer exclude the machine.
    with sqlite3.connect(reg.path) as db:
        db.execute(
            "UPDATE vast_bad_machines SET marked = ? WHERE machine_id = 40002",
            (time.time() - 40 * 86400,),
        )
    assert set(reg.bad_machines()) == {40001}
    assert reg.forget_bad(40001) and not reg.forget_bad(40001)
    assert reg.bad_machines() == {}


def test_two_registries_on_one_file_see_each_other(tmp_path: Path) -> None:
    a, b = Registry(tmp_path / "r.sqlite"), Registry(tmp_path / "r.sqlite")
    a.add_instance(1, label="runner:x:1")
    b.set_status(1, "verified")
    rec = a.instance(1)
    assert rec is not None and rec.status == "verified"

"""The host sampler against real mounts: a tmpfs being filled, a read-only bind mount."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.sampling.host import (
    HostSampler,
    HostSnapshot,
    MountEntry,
    find_mount,
    parse_mounts,
)

MiB = 1 << 20


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@pytest.fixture
def mount() -> Iterator[Callable[..., None]]:
    """``mount(*args)``: run mount(8), skipping the test where it is not permitted."""
    mounted: list[Path] = []

    def _mount(*args: str) -> None:
        if sys.platform != "linux" or os.geteuid() != 0:
            pytest.skip("mounting needs root on Linux")
        done = _run("mount", *args)
        if done.returncode != 0:
            pytest.skip(f"mount {' '.join(args)} not permitted: {done.stderr.strip()}")
        target = Path(args[-1])
        if target not in mounted:
            mounted.append(target)

    yield _mount
    for target in reversed(mounted):
        if _run("umount", str(target)).returncode != 0:
            _run("umount", "-l", str(target))


@pytest.fixture
def tmpfs(tmp_path: Path, mount: Callable[..., None]) -> Path:
    """An 8 MiB tmpfs mounted for the test."""
    target = tmp_path / "tmpfs"
    target.mkdir()
    mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(target))
    return target


# A real writer: 5 MiB in 1 MiB chunks, fsync'ed, then it exits.
WRITER = r"""
import os, sys
with open(sys.argv[1], "wb") as f:
    for _ in range(5):
        f.write(b"\xab" * (1 << 20))
        f.flush()
        os.fsync(f.fileno())
"""


def test_tmpfs_being_filled(tmpfs: Path) -> None:
    sampler = HostSampler({"run": tmpfs, "shm": "/dev/shm"})
    before = sampler.sample().disk("run")
    assert before is not None and before.write_rate_bps is None  # first sample

    subprocess.run([sys.executable, "-c", WRITER, str(tmpfs / "ckpt.bin")], check=True)
    time.sleep(0.05)
    after = sampler.sample().disk("run")

    assert after is not None and after.present
    assert after.fs_type == "tmpfs" and after.device == "tmpfs"
    assert after.mount_point == str(tmpfs)
    assert after.read_only is False and after.overlay is False
    assert after.total_bytes == 8 * MiB
    assert before.free_bytes is not None and after.free_bytes is not None
    assert before.free_bytes - after.free_bytes >= 5 * MiB
    assert after.used_bytes is not None and after.used_bytes >= 5 * MiB
    assert after.write_rate_bps is not None and after.write_rate_bps > 0
    assert after.roles == ("run",) and after.paths == (str(tmpfs),)


def test_space_freed_is_a_negative_rate(tmpfs: Path) -> None:
    (tmpfs / "old.bin").write_bytes(b"\0" * (2 * MiB))
    sampler = HostSampler({"checkpoints": tmpfs})
    sampler.sample()
    (tmpfs / "old.bin").unlink()
    time.sleep(0.01)
    disk = sampler.sample().disk("checkpoints")
    assert disk is not None and disk.write_rate_bps is not None and disk.write_rate_bps < 0


def test_read_only_bind_mount(tmp_path: Path, mount: Callable[..., None]) -> None:
    source, target = tmp_path / "data", tmp_path / "data-ro"
    source.mkdir()
    target.mkdir()
    mount("--bind", str(source), str(target))
    mount("-o", "remount,ro,bind", str(target))

    host = HostSampler({"dataset": target, "run": source}).sample()

    ro, rw = host.disk("dataset"), host.disk("run")
    assert ro is not None and rw is not None and ro is not rw  # same device, two mounts
    assert ro.read_only is True and ro.mount_point == str(target)
    assert rw.read_only is False
    assert ro.total_bytes == rw.total_bytes


def test_paths_on_one_filesystem_are_reported_once(tmp_path: Path) -> None:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    sampler = HostSampler(
        {
            "run": tmp_path / "run",
            "shm": "/dev/shm",
            "checkpoints": tmp_path / "run" / "checkpoints",
        }
    )
    disks = sampler.sample().disks
    run = next(d for d in disks if "run" in d.roles)
    assert run.roles == ("run", "checkpoints")
    assert run.paths == (str(tmp_path / "run"), str(tmp_path / "run" / "checkpoints"))
    assert sum("run" in d.roles or "checkpoints" in d.roles for d in disks) == 1


def test_missing_path_is_reported_not_raised(tmp_path: Path) -> None:
    host = HostSampler({"dataset": tmp_path / "nope", "run": tmp_path}).sample()
    missing = host.disk("dataset")
    assert missing is not None and not missing.present
    assert missing.error == "missing"
    assert missing.free_bytes is None and missing.fs_type is None
    assert host.disk("run") is not None and host.disk("run").present  # type: ignore[union-attr]


def test_not_a_directory_is_reported_with_its_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    disk = HostSampler({"dataset": tmp_path / "file" / "sub"}).sample().disk("dataset")
    assert disk is not None and not disk.present
    assert disk.error is not None and "NotADirectoryError" in disk.error


def test_memory_load_and_cpus() -> None:
    host = HostSampler().sample()
    assert host.disks == ()
    assert 0 < host.ram_available_bytes <= host.ram_total_bytes
    assert 0 <= host.swap_used_bytes <= host.swap_total_bytes
    assert len(host.load_avg) == 3 and all(x >= 0 for x in host.load_avg)
    assert host.cpu_count is not None and host.cpu_count >= 1
    assert host.cpu_usable is not None and 1 <= host.cpu_usable <= host.cpu_count


def test_snapshot_round_trips_through_dict(tmp_path: Path) -> None:
    sampler = HostSampler({"run": tmp_path, "dataset": tmp_path / "missing"})
    sampler.sample()
    host = sampler.sample()
    assert HostSnapshot.from_dict(json.loads(json.dumps(host.to_dict()))) == host


# -- the mount table ----------------------------------------------------------


def test_overlay_and_read_only_from_a_crafted_mount_table(tmp_path: Path) -> None:
    # A rented host as the seeds describe it: /workspace an overlay, the "2 TB
    # disk" mounted read-only.
    workspace, big = tmp_path / "workspace", tmp_path / "mnt" / "2tb"
    workspace.mkdir()
    big.mkdir(parents=True)
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw,relatime 0 0\n"
        f"overlay {workspace} overlay rw,relatime,lowerdir=/l,upperdir=/u,workdir=/w 0 0\n"
        f"/dev/sdb1 {big} xfs ro,relatime 0 0\n"
    )
    sampler = HostSampler({"run": workspace, "dataset": big}, mounts_path=mounts)

    host = sampler.sample()

    run, dataset = host.disk("run"), host.disk("dataset")
    assert run is not None and run.overlay is True and run.fs_type == "overlay"
    assert run.read_only is False and run.mount_point == str(workspace)
    assert dataset is not None and dataset.read_only is True and dataset.overlay is False
    assert dataset.fs_type == "xfs" and dataset.device == "/dev/sdb1"


def test_unreadable_mount_table_still_gives_space(tmp_path: Path) -> None:
    disk = HostSampler({"run": tmp_path}, mounts_path=tmp_path / "none").sample().disk("run")
    assert disk is not None and disk.present
    assert disk.free_bytes is not None and disk.total_bytes is not None
    assert disk.fs_type is None and disk.mount_point is None and disk.overlay is None


def test_parse_mounts_decodes_octal_escapes_and_skips_junk() -> None:
    text = (
        "/dev/sda1 /mnt/my\\040disk ext4 rw,noatime 0 0\n"
        "garbage\n"
        "\n"
        "tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0\n"
    )
    assert parse_mounts(text) == (
        MountEntry("/dev/sda1", "/mnt/my disk", "ext4", ("rw", "noatime")),
        MountEntry("tmpfs", "/dev/shm", "tmpfs", ("rw", "nosuid", "nodev")),
    )


def test_find_mount_takes_longest_prefix_and_topmost_entry() -> None:
    mounts = parse_mounts(
        "/dev/vda / ext4 rw 0 0\n"
        "/dev/vdb /data ext4 rw 0 0\n"
        "/dev/vdc /data/sets xfs ro 0 0\n"
        "tmpfs /data/sets tmpfs rw 0 0\n"
    )

    def point(path: str) -> str | None:
        found = find_mount(path, mounts)
        return None if found is None else f"{found.mount_point}:{found.fs_type}"

    assert point("/data/sets/imagenet") == "/data/sets:tmpfs"  # stacked: last wins
    assert point("/data/sets") == "/data/sets:tmpfs"
    assert point("/data/setsX") == "/data:ext4"  # a name prefix is not a parent
    assert point("/data") == "/data:ext4"
    assert point("/home/u") == "/:ext4"
    assert find_mount("/x", ()) is None

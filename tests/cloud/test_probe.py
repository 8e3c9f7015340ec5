"""The probe: its script run here and over real SSH, its report, and the verdict's lines.

The script is run locally with the system ``python3`` for what needs no host (a read-only
"2 TB" mount, the fake NVML marker, a Hub that answers or hangs); the session's verified host
(``conftest.py``) is probed again over SSH for the real thing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from runner.cloud.offers import Requirements
from runner.cloud.probe import (
    PROBE_SCRIPT,
    DiskReport,
    GpuInfo,
    GpuReport,
    HubReport,
    MountReport,
    ProbeError,
    ProbeReport,
    check,
    parse_report,
    run_probe,
)
from runner.cloud.ssh import Ssh, SshAuthError, SshTarget, SshUnreachableError, ensure_key
from runner.cloud.vast import Offer
from tests.cloud.conftest import VerifiedHost

GIB = 2**30
GB = 10**9
PYTHON3 = shutil.which("python3")


def _run_script(args: dict[str, Any], env: dict[str, str] | None = None) -> ProbeReport:
    if PYTHON3 is None:
        pytest.skip("no python3 on PATH")
    base = {k: v for k, v in os.environ.items() if k not in ("RUNNER_FAKE_NVML", "HF_ENDPOINT")}
    done = subprocess.run(
        [PYTHON3, "-", json.dumps(args)],
        input=PROBE_SCRIPT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**base, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return parse_report(done.stdout)


@pytest.fixture
def read_only_2tb(tmp_path: Path) -> Iterator[Path]:
    """A read-only 2 TiB tmpfs: the "2 TB disk" df shows but nothing can write."""
    point = tmp_path / "big"
    point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"ro,size={2048 * GIB}", "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


# -- the script, run here ------------------------------------------------------------------------


def test_the_script_measures_writes_and_reads_back(tmp_path: Path, read_only_2tb: Path) -> None:
    ckpt = tmp_path / "ckpt" / "deep"  # made if missing, as the job would
    report = _run_script({"paths": [str(ckpt), str(read_only_2tb)], "hub_timeout": 0.5})
    disk, ro = report.disks
    assert disk.path == str(ckpt) and disk.touch_ok and disk.touch_error is None
    assert disk.total_bytes and disk.free_bytes and not disk.read_only
    assert disk.same_fs_as_root == (os.stat(tmp_path).st_dev == os.stat("/").st_dev)
    assert not list(ckpt.iterdir())  # the test file is gone again
    assert (ro.read_only, ro.fs_type, ro.touch_ok, ro.total_bytes) == (
        True,
        "tmpfs",
        False,
        2048 * GIB,
    )
    assert ro.touch_error is not None and "Read-only file system" in ro.touch_error
    assert report.ram_total_bytes and report.cpus and report.shm_bytes is not None
    assert report.elapsed_s is not None and report.elapsed_s < 2.0

    # As "another mount" (not a checked path) it is the trap the verdict warns about.
    other = _run_script({"paths": [str(ckpt)], "hub_timeout": 0.5})
    (big,) = [m for m in other.mounts if m.mount_point == str(read_only_2tb)]
    assert big.read_only and big.total_bytes == 2048 * GIB
    verdict = check(other, Requirements(disk_gb=1, gpus=0, checkpoint_path=str(ckpt)))
    assert (
        f"{read_only_2tb}: 2199.0 GB tmpfs mount is read-only (a host/driver mount): not usable "
        "for checkpoints"
    ) in verdict.notes


def test_the_script_reads_the_fake_nvml_marker(tmp_path: Path) -> None:
    two = _run_script(
        {"paths": [str(tmp_path)], "hub_timeout": 0.2},
        {"RUNNER_FAKE_NVML": "scenario:healthy:gpus=2"},
    )
    assert two.gpus.source == "fake:scenario:healthy:gpus=2" and len(two.gpus.gpus) == 2
    assert two.gpus.gpus[1] == GpuInfo(1, "NVIDIA RTX A4000", 16376 * 2**20)
    assert (two.gpus.driver_version, two.gpus.cuda_version) == ("570.86.15", "12.8")
    none = _run_script(
        {"paths": [str(tmp_path)], "hub_timeout": 0.2}, {"RUNNER_FAKE_NVML": "no-driver"}
    )
    assert none.gpus.gpus == () and none.gpus.error == "no NVIDIA driver (fake no-driver host)"


class _Head(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_hub_check_is_bounded_and_never_fatal_unless_asked(tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Head)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        up = _run_script({"paths": [str(tmp_path)]}, {"HF_ENDPOINT": url})
        assert (up.hub.url, up.hub.reachable, up.hub.status) == (url, True, 200)
    finally:
        server.shutdown()
    # A Hub that accepts the connection and never answers costs the timeout, no more.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        hung = _run_script({"paths": [str(tmp_path)], "hub": url, "hub_timeout": 0.5})
        assert time.monotonic() - start < 3.0
    assert not hung.hub.reachable and hung.hub.error
    req = Requirements(disk_gb=0.001, gpus=0, checkpoint_path=str(tmp_path))
    assert check(hung, req).ok and any(
        "unreachable from the host" in n for n in check(hung, req).notes
    )
    failed = check(hung, dataclasses.replace(req, require_hub=True))
    assert failed.failures == (f"the Hub ({url}) is unreachable from the host ({hung.hub.error})",)


# -- the verdict ---------------------------------------------------------------------------------


def _report(**changes: Any) -> ProbeReport:
    base = ProbeReport(
        disks=(
            DiskReport(
                "/workspace",
                mount_point="/workspace",
                fs_type="xfs",
                device="/dev/md0",
                total_bytes=310 * GB,
                free_bytes=300 * GB,
                touch_ok=True,
            ),
        ),
        mounts=(),
        gpus=GpuReport(
            "pynvml", (GpuInfo(0, "NVIDIA H100 80GB HBM3", 81559 * 2**20),), "550.54", "12.4"
        ),
        shm_bytes=64 * GB,
        ram_total_bytes=256 * GB,
        ram_available_bytes=250 * GB,
        ram_limit_bytes=None,
        cpus=32,
        hub=HubReport("https://huggingface.co", True, 200),
    )
    return dataclasses.replace(base, **changes)


def _offer(**fields: Any) -> Offer:
    return Offer.from_api(
        {"id": 1, "machine_id": 2, "gpu_name": "H100 SXM", "num_gpus": 1, **fields}
    )


def test_a_host_with_what_was_paid_for_passes() -> None:
    req = Requirements(disk_gb=300, min_gpu_memory_gb=80, min_cuda=12.4, shm_gb=32, ram_gb=128)
    verdict = check(_report(), req, offer=_offer())
    assert verdict.ok and verdict.notes == ()
    assert verdict.summary == (
        "/workspace: 300.0 GB free of 310.0 GB (xfs on /workspace), writable; "
        "1x NVIDIA H100 80GB HBM3 79.6 GiB (driver 550.54, CUDA 12.4); shm 64.0 GB, RAM 256.0 GB"
    )


def test_the_users_50gb_overlay_is_one_line() -> None:
    overlay = DiskReport(
        "/workspace",
        mount_point="/",
        fs_type="overlay",
        device="overlay",
        overlay=True,
        same_fs_as_root=True,
        total_bytes=50 * GB,
        free_bytes=42 * GB,
        touch_ok=True,
    )
    big = MountReport("/mnt/driver", "ext4", "/dev/sdb1", 2000 * GB, 1900 * GB, True)
    verdict = check(_report(disks=(overlay,), mounts=(big,)), Requirements(disk_gb=300))
    assert verdict.failures == (
        "/workspace: 42.0 GB free of 50.0 GB (overlay on /, the root filesystem); "
        "300 GB were paid for",
    )
    assert verdict.notes == (
        "/workspace shares the container's root filesystem (overlay): checkpoints and the image "
        "use the same space",
        "/mnt/driver: 2000.0 GB ext4 mount is read-only (a host/driver mount): not usable for "
        "checkpoints",
    )


def test_every_failed_check_is_its_own_line() -> None:
    report = _report(
        disks=(DiskReport("/workspace", error="PermissionError: [Errno 13] Permission denied"),),
        gpus=GpuReport("nvidia-smi", (GpuInfo(0, "NVIDIA H100", 40 * GB),), "535.1", "12.2"),
        shm_bytes=64 * 2**20,
        ram_limit_bytes=16 * GB,
    )
    req = Requirements(
        disk_gb=300, gpus=2, min_gpu_memory_gb=80, min_cuda=12.4, shm_gb=8, ram_gb=64
    )
    assert check(report, req, offer=_offer(num_gpus=2)).failures == (
        "/workspace: PermissionError: [Errno 13] Permission denied",
        "GPUs: 1 visible, 2 paid for",
        "GPU 0 (NVIDIA H100): 37.3 GiB, at least 80 GB asked",
        "CUDA: the driver supports 12.2, at least 12.4 asked",
        "/dev/shm is 0.1 GB, 8 GB asked (DataLoader workers pass batches through it)",
        "RAM: 16.0 GB usable, 64 GB asked",
    )
    no_gpu = _report(
        gpus=GpuReport(None, (), error="no NVIDIA driver found (no pynvml, no nvidia-smi)")
    )
    assert check(no_gpu, Requirements(disk_gb=300)).failures == (
        "GPUs: none visible (no NVIDIA driver found (no pynvml, no nvidia-smi))",
    )
    newer = _report(gpus=dataclasses.replace(_report().gpus, cuda_version="12.10"))
    assert check(newer, Requirements(disk_gb=300, min_cuda=12.4)).ok  # 12.10 > 12.4
    ro = DiskReport("/workspace", mount_point="/", fs_type="ext4", read_only=True, total_bytes=1)
    assert check(_report(disks=(ro,)), Requirements(disk_gb=300)).failures == (
        "/workspace is on a read-only filesystem (ext4 on /)",
    )


def test_output_without_a_report_is_a_probe_error() -> None:
    with pytest.raises(ProbeError, match="printed no report"):
        parse_report("Welcome to vast.ai\n")
    with pytest.raises(ProbeError, match="malformed"):
        parse_report("RUNNER-PROBE {not json")


# -- over SSH, on the session's verified host ----------------------------------------------------


@pytest.mark.slow
def test_the_probe_over_ssh_on_the_verified_host(verified: VerifiedHost) -> None:
    r = verified.rental
    start = time.monotonic()
    report = run_probe(verified.local.ssh, r.target, paths=["/workspace", "/root/ckpt"])
    wall = time.monotonic() - start
    ws, root = report.disks
    size = int(verified.disk_gb * GIB)
    assert (ws.fs_type, ws.mount_point, ws.total_bytes, ws.touch_ok) == (
        "tmpfs",
        "/workspace",
        size,
        True,
    )
    assert not ws.same_fs_as_root and not ws.read_only
    assert root.same_fs_as_root and root.touch_ok  # a folder of the container's root
    assert report.gpus.source == "fake:scenario:healthy:gpus=1" and len(report.gpus.gpus) == 1
    assert report.shm_bytes == 64 * 2**20  # Docker's default: what a job asking 8 GB would hit
    assert not report.hub.reachable  # nothing is reachable from here; reported, not fatal
    assert wall < 2.0 and report.round_trip_s is not None and report.round_trip_s < 2.0
    assert verified.local.ssh.known_hosts(r.target).is_file()  # pinned on first contact


@pytest.mark.slow
def test_ssh_errors_say_what_failed(verified: VerifiedHost, tmp_path: Path) -> None:
    target = verified.rental.target
    ok = verified.local.ssh.run(target, "echo hello; exit 3")
    assert (ok.returncode, ok.stdout) == (3, "hello\n")  # a failing command is not an ssh error

    stranger = tmp_path / "stranger"
    ensure_key(stranger, create=True)
    with pytest.raises(SshAuthError, match=r"the host refused runner's key"):
        Ssh(stranger, known_hosts_dir=tmp_path / "kh").run(target, "true")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    dead = SshTarget("127.0.0.1", closed, name="dead")
    with pytest.raises(SshUnreachableError) as exc:
        verified.local.ssh.run(dead, "true")
    assert str(exc.value) == f"ssh root@127.0.0.1:{closed}: connection refused (no sshd listening)"

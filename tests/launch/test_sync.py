"""Dataset sync: rsync's progress2 lines parsed, progress said in bounded lines, the command line.

The transfer itself over SSH (rsync, and the tar fallback on a host without rsync) runs in the
slow tests of ``test_remote.py`` against real containers; here a real local ``rsync`` makes the
progress lines that are parsed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from runner.cloud.ssh import Ssh, SshTarget
from runner.launch.sync import (
    SyncProgress,
    folder_size,
    parse_progress2,
    progress_printer,
    rsync_argv,
)
from tests.launch.toy import toy_dataset


def test_progress2_lines_parse() -> None:
    line = "  1,234,567,890  45%   12.34MB/s    0:01:23 (xfr#12, to-chk=5/70)"
    assert parse_progress2(line) == SyncProgress(1234567890, 45, "12.34MB/s", "0:01:23")
    assert parse_progress2("         32,768   0%    0.00kB/s    0:00:00") == SyncProgress(
        32768, 0, "0.00kB/s", "0:00:00"
    )
    for other in ("sending incremental file list", "", "sent 1,024 bytes  received 35 bytes"):
        assert parse_progress2(other) is None


@pytest.mark.skipif(shutil.which("rsync") is None, reason="no rsync here")
def test_a_real_rsync_progress_stream_parses(tmp_path: Path) -> None:
    src = toy_dataset(tmp_path / "src", files=6, kib=512)
    done = subprocess.run(
        ["rsync", "-a", "--no-inc-recursive", "--info=progress2", f"{src}/", f"{tmp_path}/dst/"],
        capture_output=True,
        check=True,
    )
    parsed = [parse_progress2(p.decode()) for p in done.stdout.replace(b"\r", b"\n").split(b"\n")]
    found = [p for p in parsed if p is not None]
    assert found, done.stdout
    assert found[-1].percent == 100 and found[-1].bytes_done == folder_size(src)
    assert folder_size(tmp_path / "dst") == folder_size(src) == 6 * 512 * 1024


def test_progress_lines_are_bounded_and_end_at_100() -> None:
    lines: list[str] = []
    show = progress_printer(lines.append, every_s=3600)
    for pct in (0, 10, 50, 99):
        show(SyncProgress(pct * 10_000, pct, "1.00MB/s", "0:00:09", 1_000_000))
    show(SyncProgress(1_000_000, 100, "1.00MB/s", "0:00:00", 1_000_000))
    show(SyncProgress(1_000_000, 100, "1.00MB/s", "0:00:00", 1_000_000))
    assert lines == [
        "dataset:   0% 0 B of 1.0 MB, 1.00MB/s, 0:00:09 left",
        "dataset: 100% 1.0 MB of 1.0 MB, 1.00MB/s",
    ]


def test_rsync_goes_over_runners_own_ssh(tmp_path: Path) -> None:
    ssh = Ssh(tmp_path / "key", known_hosts_dir=tmp_path / "known")
    target = SshTarget("127.0.0.1", 2222, name="vast-7")
    argv = rsync_argv(tmp_path / "data", ssh, target, "/workspace/datasets/data")
    assert argv[:5] == ["rsync", "-a", "--partial", "--no-inc-recursive", "--info=progress2"]
    e = argv[argv.index("-e") + 1]
    assert f"-i {tmp_path / 'key'} -p 2222" in e and "BatchMode=yes" in e
    assert f"UserKnownHostsFile={tmp_path / 'known' / 'vast-7'}" in e
    assert "root@127.0.0.1" not in e  # the target goes after the paths, not in -e
    assert argv[-2:] == [f"{tmp_path / 'data'}/", "root@127.0.0.1:/workspace/datasets/data/"]

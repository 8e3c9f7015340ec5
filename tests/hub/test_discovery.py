"""Checkpoint discovery with real files in each layout, whole, truncated and in progress."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from runner.errors import CheckpointError
from runner.hub.discovery import (
    Scanner,
    check_file,
    check_safetensors,
    check_torch_zip,
    inspect_path,
)
from tests.hub import (
    age,
    dino_file,
    harness_checkpoint,
    lerobot_checkpoint,
    openpi_checkpoint,
    safetensors_bytes,
    torch_zip_bytes,
)


class Clock:
    """A wall clock the test moves by hand (starting at the real time, so mtimes make sense)."""

    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- integrity checks ----------------------------------------------------------------------------


def test_safetensors_whole_passes_and_every_truncation_fails(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    data = safetensors_bytes({"a": 1000, "b": 24})
    path.write_bytes(data)
    assert check_safetensors(path) is None
    for cut in (0, 4, 8, 20, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        assert check_safetensors(path) is not None, cut
    path.write_bytes(data + b"\0" * 16)  # still growing / garbage at the end
    assert "truncated or growing" in (check_safetensors(path) or "")
    header = b'{"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}'  # JSON cut short
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"abcd")
    assert "not JSON" in (check_safetensors(path) or "")


def test_torch_zip_whole_passes_and_truncations_fail(tmp_path: Path) -> None:
    path = tmp_path / "model_3.pth"
    data = torch_zip_bytes("model_3", [5000, 700], epoch=3)
    path.write_bytes(data)
    assert check_torch_zip(path) is None
    for cut in range(0, len(data), 211):
        path.write_bytes(data[:cut])
        assert check_torch_zip(path) is not None, cut
    path.write_bytes(b"\x80\x02legacy pickle")  # pre-1.6 format: not checkable, passes
    assert check_torch_zip(path) is None
    path.write_bytes(b"garbage!")
    assert check_file(path) == "neither a torch zip nor a legacy torch file"
    plain = tmp_path / "notes.zip.pth"
    import zipfile

    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("a.txt", "x")
    assert "not a torch.save file" in (check_torch_zip(plain) or "")


def test_real_torch_save_files_and_a_half_overwritten_one(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "model_latest.pth"
    torch.save({"epoch": 4, "w": torch.randn(64, 64)}, path)
    assert check_file(path) is None
    whole = path.read_bytes()
    # torch.save truncates and writes from the start: mid-overwrite the file is a prefix.
    path.write_bytes(whole[: len(whole) // 3])
    assert check_file(path) is not None


def test_json_files_must_parse(tmp_path: Path) -> None:
    path = tmp_path / "training_step.json"
    path.write_text('{"step": 10')
    assert "not valid JSON" in (check_file(path) or "")
    path.write_text('{"step": 10}')
    assert check_file(path) is None


# -- harness -------------------------------------------------------------------------------------


def test_harness_layout_uses_the_manifest(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    harness_checkpoint(root, 100, metrics={"loss": 0.5})
    harness_checkpoint(root, 200)
    (root / ".tmp-step_000000300-1-2").mkdir()  # a save in progress
    broken = harness_checkpoint(root, 250)
    (broken / "state.pt").write_bytes(b"short")  # no longer matches its manifest

    scan = Scanner("harness", root).scan()

    assert [c.step for c in scan.complete] == [100, 200]
    first = scan.complete[0]
    assert first.metrics == {"loss": 0.5}
    assert {f.path for f in first.files} == {"state.pt", "config.json", "manifest.json"}
    assert all(f.sha256 for f in first.files if f.path != "manifest.json")
    assert first.source == root / "step_000000100" and not first.single_file
    assert [p.path.name for p in scan.pending] == [".tmp-step_000000300-1-2"]


# -- LeRobot -------------------------------------------------------------------------------------


def test_lerobot_settles_then_counts_and_last_guards_a_save_in_progress(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    lerobot_checkpoint(root, 2000)
    clock = Clock()
    scanner = Scanner("lerobot", root, settle_s=30, clock=clock)

    first = scanner.scan()
    assert first.complete == ()
    assert "settle" in first.pending[0].reason

    clock.advance(31)
    assert [c.step for c in scanner.scan().complete] == [2000]

    # Step 4000 is written but `last` still points at 2000: LeRobot has not finished it.
    lerobot_checkpoint(root, 4000, last=False)
    age(root / "004000", 120)
    scan = scanner.scan()
    assert [c.step for c in scan.complete] == [2000]
    assert "newer than `last`" in scan.pending[0].reason

    (root / "last").unlink()
    (root / "last").symlink_to("004000")
    assert [c.step for c in scanner.scan().complete] == [2000, 4000]


def test_lerobot_truncated_or_incomplete_checkpoints_never_count(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    lerobot_checkpoint(root, 1000, last=False)
    weights = root / "001000" / "pretrained_model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    partial = root / "002000" / "pretrained_model"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(safetensors_bytes({"w": 10}))
    age(root, 3600)

    scan = Scanner("lerobot", root, settle_s=5).scan()

    assert scan.complete == ()
    reasons = {p.step: p.reason for p in scan.pending}
    assert reasons[1000].startswith("pretrained_model/model.safetensors: data should end")
    assert reasons[2000] == "no training_state/ yet"


def test_a_file_that_keeps_changing_never_settles(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    folder = lerobot_checkpoint(root, 10)
    clock = Clock()
    scanner = Scanner("lerobot", root, settle_s=10, clock=clock)
    step_file = folder / "training_state" / "training_step.json"
    for i in range(4):
        clock.advance(6)
        step_file.write_text(json.dumps({"step": 10, "i": i}))
        os.utime(step_file, (clock.now, clock.now))  # written "now" on the test's clock
        assert scanner.scan().complete == ()
    clock.advance(11)  # then quiet for longer than settle_s
    assert [c.step for c in scanner.scan().complete] == [10]


# -- DINO WM -------------------------------------------------------------------------------------


def test_dino_epochs_and_a_latest_that_equals_the_newest_epoch(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    folder = outputs / "2025-01-02" / "10-00-00" / "checkpoints"
    dino_file(folder, "model_1.pth", epoch=1, seed=b"one")
    dino_file(folder, "model_2.pth", epoch=2, seed=b"two")
    dino_file(folder, "model_latest.pth", epoch=2, seed=b"two")  # the same save as model_2
    age(outputs, 600)

    scan = Scanner("dino_wm", outputs, settle_s=60).scan()

    assert [(c.step, c.snapshot) for c in scan.complete] == [(1, False), (2, False)]
    assert scan.complete[1].files[0].path == "model_2.pth"
    assert scan.complete[1].single_file and scan.complete[1].base == folder
    assert scan.pending == ()


def test_dino_latest_alone_is_a_snapshot_with_the_epoch_it_holds(tmp_path: Path) -> None:
    folder = tmp_path / "outputs" / "2025-01-02" / "10-00-00" / "checkpoints"
    dino_file(folder, "model_1.pth", epoch=1, seed=b"one")
    dino_file(folder, "model_latest.pth", epoch=5, seed=b"five")
    age(tmp_path / "outputs", 600)

    scan = Scanner("dino_wm", tmp_path / "outputs", settle_s=60).scan()

    latest = scan.complete[-1]
    assert (latest.step, latest.snapshot, latest.step_source) == (5, True, "pickle")
    assert latest.files[0].path == "model_latest.pth"


def test_dino_latest_without_an_epoch_takes_its_mtime(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    path = dino_file(folder, "model_latest.pth", epoch=None, seed=b"x")
    age(folder, 600)
    scan = Scanner("dino_wm", folder, settle_s=60).scan()
    assert [(c.step, c.step_source) for c in scan.complete] == [
        (int(path.stat().st_mtime), "mtime")
    ]


def test_dino_half_overwritten_latest_is_never_complete(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    path = dino_file(folder, "model_latest.pth", epoch=7, seed=b"seven")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # torch.save caught mid-write, then killed
    age(folder, 3600)  # ... and it has not changed since: settled, but not whole
    clock = Clock()
    scanner = Scanner("dino_wm", folder, settle_s=60, clock=clock)
    scan = scanner.scan()
    assert scan.complete == ()
    assert "zip directory unreadable" in scan.pending[0].reason

    path.write_bytes(whole)  # the next save finishes: fresh mtime, must settle first
    assert scanner.scan().complete == ()
    clock.advance(61)
    assert [c.step for c in scanner.scan().complete] == [7]


# -- openpi --------------------------------------------------------------------------------------


def test_openpi_step_folders_and_orbax_temporaries(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    openpi_checkpoint(root, 1000)
    tmp = openpi_checkpoint(root, 2000)
    tmp.rename(tmp.with_name("2000.orbax-checkpoint-tmp-1712345"))  # orbax still writing
    broken = openpi_checkpoint(root, 3000)
    (broken / "_CHECKPOINT_METADATA").write_text('{"step": 30')
    age(root, 600)

    scan = Scanner("openpi", root, settle_s=60).scan()

    assert [c.step for c in scan.complete] == [1000]
    files = {f.path for f in scan.complete[0].files}
    assert "params/d/0a1b2c" in files and "assets/so101/norm_stats.json" in files
    assert [(p.step, p.reason.split(":")[0]) for p in scan.pending] == [
        (3000, "_CHECKPOINT_METADATA")
    ]
    # root may also be the experiment folder itself
    exp = root / "pi0_so101" / "exp1"
    assert [c.step for c in Scanner("openpi", exp, settle_s=60).scan().complete] == [1000]


def test_unknown_layout_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
        Scanner("orbax", tmp_path)  # type: ignore[arg-type]


# -- a folder named by the user ------------------------------------------------------------------


def test_inspect_path_takes_the_step_from_manifest_name_or_option(tmp_path: Path) -> None:
    harness = harness_checkpoint(tmp_path / "h", 300)
    found = inspect_path(harness)
    assert (found.step, found.step_source, found.layout) == (300, "manifest", "harness")
    assert all(f.sha256 for f in found.files if f.path != "manifest.json")

    lerobot = lerobot_checkpoint(tmp_path / "l", 6000)
    found = inspect_path(lerobot)
    assert (found.step, found.layout) == (6000, "lerobot")

    renamed = Path(shutil.copytree(lerobot, tmp_path / "best"))
    assert inspect_path(renamed).step == 6000  # from training_state/training_step.json
    assert inspect_path(renamed, step=7).step == 7

    single = dino_file(tmp_path / "d", "model_12.pth", epoch=12)
    found = inspect_path(single)
    assert (found.step, found.single_file, [f.path for f in found.files]) == (
        12,
        True,
        ["model_12.pth"],
    )


def test_inspect_path_refuses_a_truncated_checkpoint(tmp_path: Path) -> None:
    folder = lerobot_checkpoint(tmp_path / "l", 10)
    weights = folder / "pretrained_model" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 1)
    with pytest.raises(CheckpointError, match="not a complete checkpoint: pretrained_model"):
        inspect_path(folder)
    nameless = tmp_path / "weights"
    nameless.mkdir()
    (nameless / "w.bin").write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match="pass --step N"):
        inspect_path(nameless)
    with pytest.raises(CheckpointError, match="does not exist"):
        inspect_path(tmp_path / "missing")

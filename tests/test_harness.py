"""The harness: atomic checkpoints, heartbeats, stack dumps, with real files and processes."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runner import harness
from runner.harness import (
    MANIFEST_FILE,
    CheckpointWriter,
    Harness,
    latest_checkpoint,
    list_checkpoints,
    read_heartbeat,
    save_checkpoint,
    verify_checkpoint,
)


def _payload(step: int, size: int) -> bytes:
    seed = hashlib.sha256(str(step).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _writer(step: int, size: int = 100_000):
    def write(folder: Path) -> None:
        (folder / "model.bin").write_bytes(_payload(step, size))
        (folder / "sub").mkdir()
        (folder / "sub" / "opt.bin").write_bytes(_payload(step + 1, size // 3))

    return write


def test_save_writes_manifest_with_sizes_and_hashes(tmp_path: Path) -> None:
    final = save_checkpoint(tmp_path, 7, _writer(7), metrics={"loss": 0.5})
    assert final == tmp_path / "step_000000007"
    manifest = json.loads((final / MANIFEST_FILE).read_text())
    files = {f["path"]: f for f in manifest["files"]}
    assert set(files) == {"model.bin", "sub/opt.bin"}
    assert files["model.bin"]["size"] == 100_000
    assert files["model.bin"]["sha256"] == hashlib.sha256(_payload(7, 100_000)).hexdigest()
    assert manifest["step"] == 7 and manifest["metrics"] == {"loss": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["step_000000007"]  # no temporaries left


def test_writer_commits_files_written_piecewise(tmp_path: Path) -> None:
    big = os.urandom(3 << 20)
    with CheckpointWriter(tmp_path, 1) as w:
        (w.path / "state.pt").write_bytes(big)
        (w.path / "nested" / "deeper").mkdir(parents=True)
        (w.path / "nested" / "deeper" / "x.json").write_text("{}")
    (ck,) = list_checkpoints(tmp_path)
    assert ck.path == w.final
    entries = {f["path"]: f["sha256"] for f in ck.manifest["files"]}
    assert entries == {
        "state.pt": hashlib.sha256(big).hexdigest(),
        "nested/deeper/x.json": hashlib.sha256(b"{}").hexdigest(),
    }
    assert verify_checkpoint(ck) == []


def test_background_commit_completes_and_reports_failures(tmp_path: Path) -> None:
    h = Harness(run_dir=tmp_path)
    path = h.save_checkpoint(1, _writer(1))
    h.wait_for_checkpoints()
    assert h.latest_checkpoint() is not None and h.latest_checkpoint().path == path
    assert read_heartbeat(tmp_path)["checkpoint_step"] == 1

    def reserved(folder: Path) -> None:
        (folder / MANIFEST_FILE).write_text("forged")

    h.save_checkpoint(2, reserved)
    with pytest.raises(OSError, match=r"could not be committed: manifest\.json is reserved"):
        h.wait_for_checkpoints()
    assert h.latest_checkpoint().step == 1
    h.close()
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoints").iterdir())


def test_pending_commit_finishes_at_interpreter_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from runner.harness import Harness
        h = Harness(run_dir=sys.argv[1])
        h.save_checkpoint(9, lambda f: (f / "big.bin").write_bytes(b"x" * 20_000_000))
        # no wait, no close: the process just ends
        """
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60)
    newest = latest_checkpoint(tmp_path / "checkpoints")
    assert newest is not None and newest.step == 9 and verify_checkpoint(newest) == []


def test_failed_save_leaves_previous_checkpoint_newest(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, _writer(1))

    def broken(folder: Path) -> None:
        (folder / "model.bin").write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path, 2, broken)
    newest = latest_checkpoint(tmp_path)
    assert newest is not None and newest.step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000000001"]


def test_incomplete_checkpoints_are_never_newest(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, _writer(1))
    truncated = save_checkpoint(tmp_path, 2, _writer(2))
    with open(truncated / "model.bin", "r+b") as f:
        f.truncate(10)
    no_manifest = save_checkpoint(tmp_path, 3, _writer(3))
    (no_manifest / MANIFEST_FILE).unlink()
    (tmp_path / ".tmp-step_000000004-1-1").mkdir()  # a save that died
    (tmp_path / "step_000000005").mkdir()  # someone's empty folder
    assert [c.step for c in list_checkpoints(tmp_path)] == [1]


def test_verify_catches_same_size_corruption(tmp_path: Path) -> None:
    final = save_checkpoint(tmp_path, 1, _writer(1))
    data = bytearray((final / "model.bin").read_bytes())
    data[5000] ^= 0xFF
    (final / "model.bin").write_bytes(bytes(data))
    (ck,) = list_checkpoints(tmp_path)
    assert verify_checkpoint(ck) == ["model.bin: sha256 differs from the manifest"]


def test_saving_the_same_step_again_replaces_it(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 3, _writer(3, size=10))
    save_checkpoint(tmp_path, 3, _writer(99, size=20))
    (ck,) = list_checkpoints(tmp_path)
    assert (ck.path / "model.bin").read_bytes() == _payload(99, 20)
    assert [p.name for p in tmp_path.iterdir()] == ["step_000000003"]


def test_temporaries_of_dead_writers_are_cleaned(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".tmp-step_000000001-{dead.pid}-5"
    stale.mkdir(parents=True)
    (stale / "junk").write_bytes(b"x" * 100)
    alive = tmp_path / f".tmp-step_000000002-{os.getppid()}-5"
    alive.mkdir()
    save_checkpoint(tmp_path, 3, _writer(3))
    assert not stale.exists()
    assert alive.exists()  # another live process may be mid-save


def test_heartbeat_records_steps_phase_and_metrics(tmp_path: Path) -> None:
    h = Harness(run_dir=tmp_path, metrics_interval=0)
    assert h.supervised and h.checkpoint_dir == tmp_path / "checkpoints"
    assert read_heartbeat(tmp_path)["phase"] == "startup"
    h.step(1, loss=0.25, samples=16)
    h.step(2, loss=0.125, samples=16, data_wait=0.01)
    beat = read_heartbeat(tmp_path)
    assert beat is not None
    assert (beat["step"], beat["phase"], beat["pid"]) == (2, "train", os.getpid())
    assert beat["metrics"]["loss"] == 0.125 and beat["metrics"]["step_time"] >= 0
    seen: list[str] = []

    def write(folder: Path) -> None:
        seen.append(read_heartbeat(tmp_path)["phase"])
        (folder / "x").write_bytes(b"1")

    h.save_checkpoint(2, write, wait=True)
    assert seen == ["checkpoint"]
    after = read_heartbeat(tmp_path)
    assert after["phase"] == "train" and after["checkpoint_step"] == 2
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    h.close()
    assert read_heartbeat(tmp_path)["phase"] == "done"


def test_metrics_lines_are_rate_limited(tmp_path: Path) -> None:
    with Harness(run_dir=tmp_path, metrics_interval=3600) as h:
        for step in range(50):
            h.step(step, loss=1.0)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert read_heartbeat(tmp_path)["step"] == 49


def test_unsupervised_harness_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    h = Harness()
    assert not h.supervised and h.checkpoint_dir is None
    h.step(1, loss=1.0)
    with h.checkpointing(1):
        pass
    assert h.latest_checkpoint() is None
    with pytest.raises(ValueError, match="no checkpoint folder"):
        h.save_checkpoint(1, _writer(1))
    h.close()
    assert list(tmp_path.iterdir()) == []


def test_environment_configures_the_default_harness(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RUNNER_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("RUNNER_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setattr(harness, "_default", None)
    h = harness.get()
    assert h is harness.get()
    assert h.run_dir == tmp_path / "run" and h.checkpoint_dir == tmp_path / "ckpt"
    h.close()


def test_torch_round_trip(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    with Harness(run_dir=tmp_path) as h:
        state = {"w": torch.arange(100_000, dtype=torch.float32), "step": 5}
        path = h.save_torch(5, state, metrics={"loss": torch.tensor(0.5)}, wait=True)
        ck = h.latest_checkpoint()
        assert ck is not None and ck.path == path and verify_checkpoint(ck) == []
        assert ck.manifest["metrics"] == {"loss": 0.5}
        loaded = h.load_torch(ck)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 5


def test_sigusr1_dumps_every_thread_stack(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, signal, sys, threading, time
        from runner.harness import Harness
        h = Harness(run_dir=sys.argv[1])
        def waiting_in_worker():
            time.sleep(30)
        threading.Thread(target=waiting_in_worker, daemon=True).start()
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.2)
        """
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60)
    (dump,) = (tmp_path / "stacks").glob("faulthandler-*.txt")
    text = dump.read_text()
    assert "waiting_in_worker" in text
    assert text.lower().count("thread 0x") >= 2  # the worker and the main thread


_SAVER = textwrap.dedent(
    """
    import hashlib, sys
    from pathlib import Path
    from runner.harness import Harness

    def payload(step, size):
        seed = hashlib.sha256(str(step).encode()).digest()
        return (seed * (size // len(seed) + 1))[:size]

    h = Harness(run_dir=sys.argv[1])
    last = h.latest_checkpoint()
    step = last.step + 1 if last else 0
    print("ready", flush=True)
    while True:
        def write(folder, step=step):
            (folder / "a.bin").write_bytes(payload(step, 3_000_000))
            with open(folder / "b.bin", "wb") as f:
                for i in range(4):
                    f.write(payload(step * 10 + i, 500_000))
        h.save_checkpoint(step, write)
        h.step(step)
        step += 1
    """
)


@pytest.mark.slow
def test_sigkill_mid_save_never_leaves_a_broken_newest(tmp_path: Path) -> None:
    """Kill a process that saves non-stop at random instants, 40 times in a row."""
    rng = random.Random(1234)
    newest_before = -1
    mid_save_kills = 0
    for _ in range(40):
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.02, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpts = tmp_path / "checkpoints"
        mid_save_kills += any(p.name.startswith(".tmp-") for p in ckpts.iterdir())
        newest = latest_checkpoint(ckpts)
        if newest is None:
            continue
        assert verify_checkpoint(newest) == []
        assert (newest.path / "a.bin").read_bytes()[:64] == _payload(newest.step, 64)
        assert newest.step >= newest_before
        newest_before = newest.step
    assert newest_before > 10, "the saver made too little progress to prove anything"
    # Most kills must have landed inside a save, or the test proved nothing.
    assert mid_save_kills >= 20

"""Stack dumps of real process trees: py-spy, a stopped process, the faulthandler fallback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.agent.stacks import dump_tree, find_py_spy, new_dump_dir

SCRIPTS = Path(__file__).parent / "scripts"
LOOP = str(SCRIPTS / "train_loop.py")

needs_py_spy = pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start a process in its own group; every group is killed at the end."""
    procs: list[subprocess.Popen[str]] = []

    def _spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        procs.append(proc)
        return proc

    yield _spawn
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _until(proc: subprocess.Popen[str], text: str, timeout: float = 30.0) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
        assert line, f"process ended before printing {text!r}"
    raise AssertionError(f"no {text!r} within {timeout} s")


def _frozen(spawn: Callable[..., subprocess.Popen[str]], **env: str) -> subprocess.Popen[str]:
    argv = [sys.executable, LOOP, "--steps", "100", "--step-s", "0.01", "--freeze-at", "2"]
    proc = spawn(argv if env else [*argv, "--no-harness"], env)
    _until(proc, "freezing after step 2")
    time.sleep(0.2)  # into the wait
    return proc


def test_new_dump_dir_numbers_after_the_existing(tmp_path: Path) -> None:
    first = new_dump_dir(tmp_path, "stall")
    (tmp_path / "stacks" / "faulthandler-12.txt").write_text("")  # the harness's own file
    second = new_dump_dir(tmp_path, "Zombie Workers!")
    assert first.name == "001-stall" and second.name == "002-zombie_workers"
    assert first.is_dir() and second.is_dir()


@needs_py_spy
def test_py_spy_names_the_blocking_frame(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = _frozen(spawn)
    dump = dump_tree(proc.pid, tmp_path / "d")
    [one] = dump.dumps
    assert one.pid == proc.pid and one.file == tmp_path / "d" / f"pid-{proc.pid}.txt"
    assert one.method == "py-spy --native" and one.error is None
    assert one.main_top == "Condition.wait (threading.py:327)" or "wait" in (one.main_top or "")
    assert (one.main_user or "").startswith("wait_for_a_signal_that_never_comes (train_loop.py:")
    text = one.file.read_text()
    assert text.splitlines()[0].startswith(f"Process {proc.pid} (sleeping): ")
    assert "wait_for_a_signal_that_never_comes" in text and '"MainThread"' in text
    evidence = dump.evidence(tmp_path)
    assert evidence["files"] == [f"d/pid-{proc.pid}.txt"]
    assert evidence["user_frames"][str(proc.pid)] == one.main_user
    listing = (tmp_path / "d" / "processes.txt").read_text()
    assert str(proc.pid) in listing and "train_loop.py" in listing


@needs_py_spy
def test_stopped_process_is_read_without_pausing(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = _frozen(spawn)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        dump = dump_tree(proc.pid, tmp_path / "d")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    [one] = dump.dumps
    assert one.state == "stopped"
    # py-spy cannot pause what is already stopped; --nonblocking reads it as it is.
    assert one.method == "py-spy --nonblocking", one.error
    assert one.note is not None and "stopped" in one.note
    assert "wait_for_a_signal_that_never_comes" in (one.main_user or "")


def test_faulthandler_fallback_for_harness_processes(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    run = tmp_path / "run"
    proc = _frozen(spawn, RUNNER_RUN_DIR=str(run))
    dump = dump_tree(proc.pid, tmp_path / "d", run_dir=run, py_spy="")
    [one] = dump.dumps
    assert one.method == "faulthandler" and one.file is not None
    assert one.error is not None and "py-spy not found" in one.error
    assert (one.main_user or "").startswith("wait_for_a_signal_that_never_comes (train_loop.py:")
    assert "wait_for_a_signal_that_never_comes" in one.file.read_text()
    assert proc.poll() is None  # SIGUSR1 went to a process that handles it


def test_no_method_left_is_recorded_not_raised(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = _frozen(spawn)  # no harness: no faulthandler file, so no SIGUSR1 either
    dump = dump_tree(proc.pid, tmp_path / "d", run_dir=tmp_path, py_spy="")
    [one] = dump.dumps
    assert one.file is None and one.method == "none" and "py-spy not found" in (one.error or "")
    assert proc.poll() is None  # SIGUSR1 would have killed it


ZOMBIE_AND_SLEEP = r"""
import os, subprocess, sys, time
pid = os.fork()
if pid == 0:
    os._exit(0)
subprocess.Popen(["sleep", "600"])
print("ready", flush=True)
time.sleep(600)
"""


@needs_py_spy
def test_zombies_and_non_python_children_are_listed_not_dumped(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = spawn([sys.executable, "-c", ZOMBIE_AND_SLEEP])
    _until(proc, "ready")
    time.sleep(0.2)
    dump = dump_tree(proc.pid, tmp_path / "d")
    assert [d.pid for d in dump.dumps] == [proc.pid]
    reasons = sorted(dump.skipped.values())
    assert len(reasons) == 2
    assert reasons[0] == "not a Python process (sleep)"
    assert reasons[1] == f"zombie: exited, not reaped by its parent {proc.pid}"
    listing = (tmp_path / "d" / "processes.txt").read_text()
    assert "<defunct>" in listing and "sleep 600" in listing


def test_a_root_that_is_gone_gives_an_empty_dump(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dump = dump_tree(proc.pid, tmp_path / "d")
    assert dump.files == []

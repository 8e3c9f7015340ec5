"""The process-tree sampler against real process trees: forks, zombies, stops, D state."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from runner.sampling.procs import (
    REDACTED,
    ProcessSnapshot,
    ProcessTree,
    ProcessTreeSampler,
    redact_cmdline,
)

# A parent that forks like a DataLoader: workers (each optionally with a child of
# its own), a child that exits and is never reaped, a busy child. It prints the
# pids as one JSON line, then sleeps until killed.
TREE = r"""
import json, os, sys, time
cfg = json.loads(sys.argv[1])
out = {"workers": [], "grandchildren": [], "zombie": None, "busy": None}
for _ in range(cfg.get("workers", 0)):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        grandchild = 0
        if cfg.get("grandchildren"):
            grandchild = os.fork()
            if grandchild == 0:
                time.sleep(600)
                os._exit(0)
        os.write(w, str(grandchild).encode())
        os.close(w)
        time.sleep(600)
        os._exit(0)
    os.close(w)
    grandchild = int(os.read(r, 32))
    os.close(r)
    out["workers"].append(pid)
    if grandchild:
        out["grandchildren"].append(grandchild)
if cfg.get("zombie"):
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    out["zombie"] = pid
if cfg.get("busy"):
    pid = os.fork()
    if pid == 0:
        while True:
            pass
    out["busy"] = pid
print(json.dumps(out), flush=True)
time.sleep(600)
"""

# A parent in uninterruptible sleep: clone(CLONE_VFORK) without CLONE_VM is a
# vfork whose child has its own copy of memory, so the child may run Python
# safely; the kernel holds the parent in TASK_KILLABLE ('D', "disk-sleep")
# until the child execs or exits.
VFORK = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
nr = {"x86_64": 56, "aarch64": 220}[os.uname().machine]
CLONE_VFORK, SIGCHLD = 0x4000, 17
zero = ctypes.c_ulong(0)
pid = libc.syscall(ctypes.c_long(nr), ctypes.c_ulong(CLONE_VFORK | SIGCHLD), zero, zero, zero, zero)
if pid == 0:
    time.sleep(float(sys.argv[1]))
    os._exit(0)
os.waitpid(pid, 0)
"""

# Forks children that live 0-20 ms each, about 20 alive at a time, forever;
# SIGCHLD ignored so they are reaped by the kernel and vanish rather than
# turning into zombies. Every child pid is appended to the log first.
CHURN = r"""
import os, random, signal, sys, time
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
log = open(sys.argv[1], "a", buffering=1)
print("ready", flush=True)
while True:
    pid = os.fork()
    if pid == 0:
        time.sleep(random.random() * 0.02)
        os._exit(0)
    log.write(f"{pid}\n")
    time.sleep(0.001)
"""

# Reuses a pid on purpose: forks a busy worker, kills it, then sets
# ns_last_pid so the next fork gets the same pid. Driven over stdin.
REUSE = r"""
import os, signal, sys, time
def busy():
    pid = os.fork()
    if pid == 0:
        while True:
            pass
    return pid
first = busy()
print(first, flush=True)
sys.stdin.readline()
os.kill(first, signal.SIGKILL)
os.waitpid(first, 0)
time.sleep(0.1)  # a later start time than the first worker's, at 10 ms resolution
for _ in range(50):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(first - 1))
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    if pid == first:
        break
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
print(pid, flush=True)
time.sleep(600)
"""


class Spawned:
    """A real process started in its own session, with what it printed."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.pid = proc.pid

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.line())
        return data

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Spawned]]:
    started: list[subprocess.Popen[str]] = []

    def _spawn(code: str, *args: str) -> Spawned:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        return Spawned(proc)

    yield _spawn
    for proc in started:
        # The whole session: workers and grandchildren too, stopped ones included.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def wait_for_state(pid: int, state: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == state:
                return
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never reached state {state!r}")


def by_pid(tree: ProcessTree) -> dict[int, ProcessSnapshot]:
    return {p.pid: p for p in tree.processes}


# -- the tree -----------------------------------------------------------------


def test_tree_holds_root_workers_and_grandchildren(spawn: Callable[..., Spawned]) -> None:
    job = spawn(TREE, json.dumps({"workers": 3, "grandchildren": True}))
    pids = job.json()
    for pid in (job.pid, *pids["workers"], *pids["grandchildren"]):
        wait_for_state(pid, psutil.STATUS_SLEEPING)

    tree = ProcessTreeSampler(job.pid).sample()

    assert tree.root_alive and tree.root_pid == job.pid
    procs = by_pid(tree)
    assert set(procs) == {job.pid, *pids["workers"], *pids["grandchildren"]}
    assert tree.processes[0].pid == job.pid
    assert {p.pid for p in tree.children_of(job.pid)} == set(pids["workers"])
    for worker, grandchild in zip(pids["workers"], pids["grandchildren"], strict=True):
        assert procs[worker].ppid == job.pid
        assert procs[grandchild].ppid == worker
        # depth-first: each worker is directly followed by its own child
        order = [p.pid for p in tree.processes]
        assert order.index(grandchild) == order.index(worker) + 1
    for proc in tree.processes:
        assert proc.state == psutil.STATUS_SLEEPING
        assert proc.rss_bytes is not None and proc.rss_bytes > 0
        assert proc.cmdline is not None and "-c" in proc.cmdline
        assert 0 <= proc.age_s < 60
        assert proc.cpu_delta_s is None and proc.cpu_percent is None  # first sight
    assert tree.interval_s is None


def test_proc_scan_and_portable_walk_find_the_same_tree(spawn: Callable[..., Spawned]) -> None:
    # Linux finds the tree in one /proc scan; elsewhere psutil's children() is
    # used. Both must agree, or the fallback has rotted.
    job = spawn(TREE, json.dumps({"workers": 3, "grandchildren": True, "zombie": True}))
    pids = job.json()

    scanned = ProcessTreeSampler(job.pid)._members()
    portable = ProcessTreeSampler(job.pid)._members_psutil()

    assert scanned is not None and portable is not None
    expected = {job.pid, *pids["workers"], *pids["grandchildren"], pids["zombie"]}
    assert {p.pid for p in scanned} == {p.pid for p in portable} == expected
    assert scanned[0].pid == portable[0].pid == job.pid


def test_zombie_child_is_reported_with_its_parent(spawn: Callable[..., Spawned]) -> None:
    job = spawn(TREE, json.dumps({"workers": 1, "zombie": True}))
    zombie = job.json()["zombie"]
    wait_for_state(zombie, psutil.STATUS_ZOMBIE)

    tree = ProcessTreeSampler(job.pid).sample()

    assert [(z.pid, z.ppid) for z in tree.zombies()] == [(zombie, job.pid)]
    snap = tree.get(zombie)
    assert snap is not None and snap.is_zombie and snap.state == "zombie"
    assert snap.cmdline == ""  # a zombie has no command line left
    assert snap.rss_bytes == 0


def test_stopped_process(spawn: Callable[..., Spawned]) -> None:
    job = spawn(TREE, json.dumps({"workers": 2}))
    stopped, sleeping = job.json()["workers"]
    os.kill(stopped, signal.SIGSTOP)
    wait_for_state(stopped, psutil.STATUS_STOPPED)
    wait_for_state(sleeping, psutil.STATUS_SLEEPING)

    procs = by_pid(ProcessTreeSampler(job.pid).sample())

    assert procs[stopped].state == psutil.STATUS_STOPPED
    assert procs[sleeping].state == psutil.STATUS_SLEEPING


def _vfork_supported() -> str | None:
    if sys.platform != "linux":
        return "clone(CLONE_VFORK) is Linux only"
    if os.uname().machine not in ("x86_64", "aarch64"):
        return f"no clone syscall number for {os.uname().machine}"
    if not hasattr(ctypes.CDLL(None), "syscall"):
        return "libc has no syscall()"
    return None


@pytest.mark.skipif(_vfork_supported() is not None, reason=str(_vfork_supported()))
def test_vfork_parent_is_in_disk_sleep(spawn: Callable[..., Spawned]) -> None:
    job = spawn(VFORK, "30")
    wait_for_state(job.pid, psutil.STATUS_DISK_SLEEP)
    [vfork_child] = psutil.Process(job.pid).children()
    wait_for_state(vfork_child.pid, psutil.STATUS_SLEEPING)  # past its return from clone

    tree = ProcessTreeSampler(job.pid).sample()

    root = tree.get(job.pid)
    assert root is not None and root.state == psutil.STATUS_DISK_SLEEP
    assert tree.in_state(psutil.STATUS_DISK_SLEEP) == (root,)
    [child] = tree.children_of(job.pid)
    assert child.pid == vfork_child.pid and child.state == psutil.STATUS_SLEEPING


# -- CPU time -----------------------------------------------------------------


def test_cpu_delta_grows_for_busy_child_not_for_sleeping_one(
    spawn: Callable[..., Spawned],
) -> None:
    job = spawn(TREE, json.dumps({"workers": 1, "busy": True}))
    pids = job.json()
    sleeper, busy = pids["workers"][0], pids["busy"]
    sampler = ProcessTreeSampler(job.pid)

    first = by_pid(sampler.sample())
    # Wait for 0.1 s of CPU, however long a loaded box takes to give it (at least 0.5 s).
    spinner, start = psutil.Process(busy), time.monotonic()
    used_before = sum(spinner.cpu_times()[:2])
    time.sleep(0.5)
    while sum(spinner.cpu_times()[:2]) - used_before < 0.1 and time.monotonic() - start < 20:
        time.sleep(0.05)
    tree = sampler.sample()
    second = by_pid(tree)

    assert first[busy].cpu_delta_s is None
    assert tree.interval_s is not None and tree.interval_s >= 0.5
    busy_now, busy_before = second[busy], first[busy]
    assert busy_now.cpu_time_s is not None and busy_before.cpu_time_s is not None
    assert busy_now.cpu_time_s > busy_before.cpu_time_s
    assert busy_now.cpu_delta_s is not None and busy_now.cpu_delta_s >= 0.09
    expected = 100 * busy_now.cpu_delta_s / tree.interval_s
    assert busy_now.cpu_percent == pytest.approx(expected, rel=0.05)
    idle = second[sleeper]
    assert idle.cpu_delta_s is not None and idle.cpu_delta_s <= 0.02
    assert idle.cpu_percent is not None and idle.cpu_percent <= 5


def test_reused_pid_is_a_new_process(spawn: Callable[..., Spawned]) -> None:
    if not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("needs root to write /proc/sys/kernel/ns_last_pid")
    job = spawn(REUSE)
    first = int(job.line())
    sampler = ProcessTreeSampler(job.pid)
    sampler.sample()
    time.sleep(0.2)
    before = by_pid(sampler.sample())[first]
    assert before.cpu_delta_s is not None and before.cpu_delta_s > 0

    job.send("go")
    second = int(job.line())
    if second != first:
        pytest.skip("another process took the pid first; could not reuse it")
    after = by_pid(sampler.sample())[second]

    assert after.create_time > before.create_time
    assert after.cpu_delta_s is None and after.cpu_percent is None
    # Subtracting the old process's CPU time would have given a negative delta.
    assert after.cpu_time_s is not None and before.cpu_time_s is not None
    assert after.cpu_time_s < before.cpu_time_s


# -- vanishing processes ----------------------------------------------------------


@pytest.mark.slow
def test_processes_exiting_mid_walk_are_dropped(
    spawn: Callable[..., Spawned], tmp_path: Path
) -> None:
    log = tmp_path / "forked.txt"
    job = spawn(CHURN, str(log))
    assert job.line() == "ready"
    sampler = ProcessTreeSampler(job.pid)
    listed: set[int] = set()
    rounds = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        tree = sampler.sample()  # must never raise
        rounds += 1
        assert tree.root_alive and tree.processes[0].pid == job.pid
        for proc in tree.processes[1:]:
            listed.add(proc.pid)
            assert proc.ppid == job.pid
            assert proc.state != psutil.STATUS_ZOMBIE  # reaped by the kernel, never defunct
            assert proc.rss_bytes is not None and proc.cmdline is not None
    time.sleep(0.1)  # the root logs each pid just after its fork returns
    forked = {int(line) for line in log.read_text().split()}

    assert rounds > 20 and len(forked) > 50
    assert listed, "no child was ever caught alive: the test exercised nothing"
    # Only real children are listed, each read whole while it lived.
    assert listed <= forked


# -- the root -------------------------------------------------------------------


def test_root_that_exited_is_gone(spawn: Callable[..., Spawned]) -> None:
    job = spawn(TREE, json.dumps({"workers": 1}))
    job.json()
    sampler = ProcessTreeSampler(job.pid)
    assert sampler.sample().root_alive

    job.proc.kill()
    job.proc.wait()
    tree = sampler.sample()

    assert not tree.root_alive
    assert tree.processes == ()


def test_root_that_exited_unreaped_is_a_zombie(spawn: Callable[..., Spawned]) -> None:
    job = spawn("import sys; sys.exit(0)")
    wait_for_state(job.pid, psutil.STATUS_ZOMBIE)

    tree = ProcessTreeSampler(job.pid).sample()

    assert tree.root_alive
    assert [p.pid for p in tree.zombies()] == [job.pid]


def test_tree_round_trips_through_dict(spawn: Callable[..., Spawned]) -> None:
    job = spawn(TREE, json.dumps({"workers": 2, "zombie": True}))
    job.json()
    sampler = ProcessTreeSampler(job.pid)
    sampler.sample()
    tree = sampler.sample()

    assert ProcessTree.from_dict(json.loads(json.dumps(tree.to_dict()))) == tree


# -- secrets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train.py", "--token=abc123"], f"train.py --token={REDACTED}"),
        (["train.py", "--token", "abc123", "--lr", "3"], f"train.py --token {REDACTED} --lr 3"),
        (["x", "--hf-token", "t"], f"x --hf-token {REDACTED}"),
        (["x", "--api_key=s3cr3t"], f"x --api_key={REDACTED}"),
        (["env", "HF_TOKEN=abc", "python"], f"env HF_TOKEN={REDACTED} python"),
        (["env", "WANDB_API_KEY=0123", "AWS_SECRET_ACCESS_KEY=k"], None),
        (["sh", "-c", "HF_TOKEN=abc python t.py"], f"sh -c HF_TOKEN={REDACTED} python t.py"),
        (["x", "hf_" + "A" * 34], f"x {REDACTED}"),
        (["x", "--model=hf_" + "b" * 34], f"x --model={REDACTED}"),
        (["x", "ghp_" + "c" * 36], f"x {REDACTED}"),
        (
            ["x", "https://user:pa55@hub.example/repo.git"],
            f"x https://user:{REDACTED}@hub.example/repo.git",
        ),
        (["curl", "-H", "Authorization: Bearer abcdefghijk"], None),
        (["vastai", "set", "api-key", "deadbeef"], f"vastai set api-key {REDACTED}"),
        (["x", "--password", "hunter2"], f"x --password {REDACTED}"),
        (["sh", "-c", "HF_TOKEN='abc123 x' run"], f"sh -c HF_TOKEN={REDACTED} run"),
        (["x", "--cfg", '{"lr": 3, "api_key": "s3cr3t"}'], None),
        (["x", "ARGS=--token=abc123"], f"x ARGS=--token={REDACTED}"),
        (["x", "auth:s3cr3t"], f"x auth:{REDACTED}"),
        (["x", "https://hub.example:443/a"], "x https://hub.example:443/a"),
        # Not secrets: kept as they are.
        (
            ["x", "--tokenizer", "gpt2", "--max-tokens", "512"],
            "x --tokenizer gpt2 --max-tokens 512",
        ),
        (["x", "--lr=3e-4", "BATCH=32"], "x --lr=3e-4 BATCH=32"),
    ],
)
def test_redact_cmdline(argv: list[str], expected: str | None) -> None:
    line = redact_cmdline(argv)
    if expected is not None:
        assert line == expected
    for secret in ("abc123", "s3cr3t", "0123", "pa55", "abcdefghijk", "deadbeef", "hunter2"):
        assert secret not in line
    assert "hf_AAAA" not in line and "ghp_ccc" not in line


def test_redaction_happens_before_truncation() -> None:
    argv = ["python", "x" * 30, "--token=" + "s" * 40]
    line = redact_cmdline(argv, max_len=45)
    assert len(line) == 45 and line.endswith("...")
    assert "s" * 4 not in line
    assert redact_cmdline(["python", "train.py"], max_len=100) == "python train.py"


def test_secrets_in_a_real_command_line_never_reach_the_snapshot(
    spawn: Callable[..., Spawned],
) -> None:
    secret = "hf_" + "Z" * 34
    job = spawn(TREE, json.dumps({"workers": 1}), "--token", "plain-s3cret", f"HF_TOKEN={secret}")
    job.json()

    tree = ProcessTreeSampler(job.pid, cmdline_max=4096).sample()

    text = json.dumps(tree.to_dict())
    assert "plain-s3cret" not in text and secret not in text
    assert f"--token {REDACTED}" in text and f"HF_TOKEN={REDACTED}" in text


WRITER = """
import sys, tempfile
out = tempfile.TemporaryFile()
print("ready", flush=True)
for line in sys.stdin:
    out.write(b"x" * (int(line) << 20))  # N MiB, as a checkpoint save does
    out.flush()
    print("wrote", flush=True)
"""


def test_write_delta_counts_what_the_process_wrote_since_the_last_sample(
    spawn: Callable[..., Spawned],
) -> None:
    """``write_delta_bytes`` is the tree's own writes (``wchar``): what the stall detector's
    checkpoint grace counts instead of the whole disk's write rate."""
    if not hasattr(psutil.Process, "io_counters"):
        pytest.skip("this platform has no per-process I/O counters")
    job = spawn(WRITER)
    assert job.proc.stdout is not None and job.proc.stdout.readline().strip() == "ready"
    sampler = ProcessTreeSampler(job.pid)
    first = by_pid(sampler.sample())[job.pid]
    assert first.write_delta_bytes is None  # first sight: nothing to compare with
    job.send("16")
    assert job.proc.stdout.readline().strip() == "wrote"
    wrote = by_pid(sampler.sample())[job.pid]
    assert wrote.write_delta_bytes is not None and wrote.write_delta_bytes >= 16 << 20
    time.sleep(0.2)
    idle = by_pid(sampler.sample())[job.pid]
    assert idle.write_delta_bytes is not None and idle.write_delta_bytes < 1 << 20

"""``runner watch`` as a user sees it: the real CLI in a real 80x24 pty, read back with pyte.

Over the recorded freeze-and-restart run (the final step, "finished", the stall, where the
stack dump is), over a live agent that is SIGSTOPped ("unreachable" appears, and goes once
it is SIGCONTed), and over real SSH to a loopback container holding a run folder. The fast
tests cover the model and the frame from data: ETA, disk time-to-full, throttle names,
NO_COLOR, exit codes and bad refs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import termios
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyte
import pytest

from runner.launch.runs import RunRecord, Runs
from runner.rundir import Event, Status
from runner.view.dashboard import build, quiet_after, render, sparkline
from runner.view.source import Follower, LocalSource, Snapshot
from tests.conftest import REPO, RUNNER_BIN
from tests.view.conftest import LOOP

ESC = "\x1b"


# --------------------------------------------------------------------------- a real terminal


class Terminal:
    """A command in a pty of ``cols`` x ``rows``, its screen kept by pyte."""

    def __init__(self, argv: list[str], env: dict[str, str], cols: int = 80, rows: int = 24):
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows)},
            start_new_session=True,
            close_fds=True,
        )
        os.close(slave)
        self.master = master

    def pump(self, timeout: float = 0.1) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            self.raw += data
            self.stream.feed(data)

    @property
    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, check: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if check(self.text):
                return self.text
            if self.proc.poll() is not None:
                for _ in range(20):
                    self.pump(0.02)
                if check(self.text):
                    return self.text
        raise AssertionError(f"screen never showed what was expected:\n{self.text}")

    def exit_code(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.pump()
        for _ in range(10):
            self.pump(0.02)
        return self.proc.wait(timeout=1)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        os.close(self.master)


@pytest.fixture
def terminal(subprocess_env: dict[str, str]) -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Terminal:
        term = Terminal([str(RUNNER_BIN), *args], env or subprocess_env)
        opened.append(term)
        return term

    yield start
    for term in opened:
        term.close()


def _runner(
    *args: str, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUNNER_BIN), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


# --------------------------------------------------------------------------- the recorded run


@pytest.mark.slow
def test_watch_shows_the_recorded_freeze_and_restart_in_a_terminal(
    recorded_run: Path, terminal: Callable[..., Terminal]
) -> None:
    term = terminal("watch", str(recorded_run))
    assert term.exit_code() == 0
    screen = term.text
    lines = screen.splitlines()
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    assert "finished (exit 0)" in lines[0] and recorded_run.name in lines[0]
    assert re.search(r"^step 40/40 ", screen, re.M), screen
    assert "1 restart" in lines[0]
    assert re.search(r"^\d\d:\d\d:\d\d stall +no step for", screen, re.M), screen
    assert "stack dump: stacks/001-stall/pid-" in screen
    # the stack dump the screen names is there, and is the frozen loop's
    shown = re.search(r"stack dump: (\S+)", screen)
    assert shown is not None
    assert "wait_for_a_signal_that_never_comes" in (recorded_run / shown.group(1)).read_text()
    assert re.search(r"^ +0 +80/140W +65/98C +97% ", screen, re.M), screen
    assert "ckpt 40" in screen and "cost $" in screen


def test_once_json_and_exit_codes_over_the_recorded_run(
    recorded_run: Path, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    once = _runner("watch", str(recorded_run), "--once", env=subprocess_env)
    assert once.returncode == 0, once.stderr
    assert ESC not in once.stdout  # not a terminal: plain text
    assert "finished (exit 0)" in once.stdout and "step 40/40" in once.stdout
    streamed = _runner("watch", str(recorded_run), "--json", env=subprocess_env)
    assert streamed.returncode == 0
    kinds = [json.loads(line)["kind"] for line in streamed.stdout.splitlines()]
    written = [e.kind for e in _events(recorded_run)]
    assert kinds == written and kinds[:3] == ["started", "stall", "stack_dump"]
    # a failed run's end code is the agent's
    failed = tmp_path / "failed"
    shutil.copytree(recorded_run, failed)
    status = json.loads((failed / "status.json").read_text())
    (failed / "status.json").write_text(json.dumps({**status, "state": "stopped", "exit_code": 3}))
    assert _runner("watch", str(failed), "--once", env=subprocess_env).returncode == 3
    assert _runner("watch", str(failed), "--json", env=subprocess_env).returncode == 3


def test_no_color_has_no_escape_codes_even_in_a_terminal(
    recorded_run: Path, terminal: Callable[..., Terminal], subprocess_env: dict[str, str]
) -> None:
    colored = terminal("watch", str(recorded_run), "--once")
    assert colored.exit_code() == 0
    assert b"\x1b[1m" in colored.raw or b"\x1b[" in colored.raw  # rich styles it in a tty
    plain = terminal("watch", str(recorded_run), "--once", env={**subprocess_env, "NO_COLOR": "1"})
    assert plain.exit_code() == 0
    assert re.search(rb"\x1b\[[0-9;]*m", plain.raw) is None, plain.raw[:400]
    assert "finished (exit 0)" in plain.text


def test_bad_refs_are_one_error_line(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    for args in (
        ["watch", "nope"],
        ["watch"],
        ["watch", str(tmp_path / "missing")],
        ["watch", str(tmp_path)],
        ["logs", "nope"],
    ):
        done = _runner(
            *args,
            "--once" if args[0] == "watch" else "--attempt",
            *([] if args[0] == "watch" else ["0"]),
            env=subprocess_env,
        )
        assert done.returncode == 1, (args, done.stderr)
        assert done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, done.stderr)
        assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- the model, from data


def _events(run: Path) -> list[Event]:
    from runner.rundir import read_events

    return read_events(run)


def _gpu(index: int, power: float, mask: int = 0) -> dict[str, Any]:
    return {
        "index": index,
        "name": "NVIDIA H100",
        "lost": False,
        "utilization_gpu_percent": 99,
        "power_w": power,
        "power_limit_w": 700.0,
        "temperature_c": 71,
        "temperature_slowdown_c": 90,
        "memory_used_bytes": 60 * 2**30,
        "memory_total_bytes": 80 * 2**30,
        "clock_event_mask": mask,
    }


def _snapshot(status: dict[str, Any] | None, samples: list[dict[str, Any]], **kw: Any) -> Snapshot:
    fields: dict[str, Any] = {
        "launch": {
            "created": 1000.0,
            "dph_total": 2.0,
            "spec": {"watchdog": {"sample_interval_s": 4}},
        },
        "push": {"pushed": {"100": {"time": 1500.0}, "200": {"time": 1900.0}}},
        "events": (),
        "new_events": (),
        "attempts": (0,),
        "error": None,
        "error_since": None,
        "heartbeat_at": 1990.0,
    }
    fields.update(kw)
    return Snapshot(status=status, samples=tuple(samples), **fields)


def _status(**kw: Any) -> dict[str, Any]:
    base = Status(
        state="running",
        job="j",
        agent_pid=1,
        agent_time=1995.0,
        started=1000.0,
        step=250,
        last_step_time=1994.0,
        steps_per_s=2.0,
        checkpoint_step=200,
        metrics={"loss": 0.5, "total_steps": 1000},
        samples_per_s=512.0,
        data_wait=0.25,
        gpus=tuple(_gpu(i, 650.0, 0x4 if i == 3 else 0) for i in range(8)),
        host={
            "disks": [{"roles": ["run", "checkpoints"], "free_bytes": 40e9, "total_bytes": 1e12}]
        },
    ).to_dict()
    return {**base, **kw}


def _samples() -> list[dict[str, Any]]:
    # 100 GB free falling to 40 GB over 600 s: 0.1 GB/s, 400 s left
    return [
        {
            "time": 1400.0 + t,
            "gpus": [_gpu(i, 100.0 + t) for i in range(8)],
            "host": {"disks": [{"roles": ["run", "checkpoints"], "free_bytes": 100e9 - t * 1e8}]},
        }
        for t in range(0, 601, 60)
    ]


def test_the_model_says_eta_disk_push_cost_and_throttle_from_the_folder() -> None:
    board = build(_snapshot(_status(), _samples()), label="r", now=2000.0)
    assert board.liveness == "live"
    assert board.eta_s == pytest.approx((1000 - 250) / 2.0)
    assert board.disk is not None and board.disk.full_in_s == pytest.approx(400.0)
    assert (board.pushed_step, board.pushed_time) == (200, 1900.0)
    assert board.cost == pytest.approx(1000.0 / 3600 * 2.0)
    assert board.gpus[3].throttle == ("SwPowerCap",) and board.gpus[0].throttle == ()
    assert board.gpus[0].power_history[-1] == 700.0 and len(board.gpus[0].power_history) == 11
    assert quiet_after({"spec": {"watchdog": {"sample_interval_s": 4}}}) == 20.0
    assert quiet_after(None) == 10.0


def test_unreachable_is_not_a_quiet_run_and_reconnecting_is_neither() -> None:
    status = _status()
    # heartbeat last moved at 1990; 5 ticks of 4 s = 20 s allowed
    assert build(_snapshot(status, []), label="r", now=2005.0).liveness == "live"
    gone = build(_snapshot(status, []), label="r", now=2011.0)
    assert gone.liveness == "unreachable"
    assert gone.liveness_line.startswith("host or agent unreachable since ")
    assert "no heartbeat for 21s" in gone.liveness_line
    quiet = build(_snapshot(_status(last_step_time=1900.0), []), label="r", now=1996.0)
    assert quiet.liveness == "quiet" and quiet.liveness_line == "agent alive; no step for 1m35s"
    down = build(
        _snapshot(status, [], error="ssh root@h:1: connection refused", error_since=1999.0),
        label="r",
        now=2011.0,
    )
    assert down.liveness == "reconnecting" and down.liveness_line.startswith("reconnecting (since ")


def test_eight_gpus_fit_80x24() -> None:
    from rich.console import Console

    events = tuple(
        Event("thermal", "warning", f"GPU {i} at 89 C", time=1900.0 + i, evidence={"gpu": i})
        for i in range(12)
    )
    board = build(_snapshot(_status(), _samples(), events=events), label="run-x", now=2000.0)
    console = Console(width=80, height=24, record=True, force_terminal=False, color_system=None)
    console.print(render(board, width=80, height=24))
    text = console.export_text()
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 24, text
    assert all(len(line) <= 80 for line in lines), text
    assert "step 250/1000" in text and "ETA 6m15s" in text and "512 samples/s" in text
    assert "data wait 25%" in text and "pushed 200 (1m40s ago)" in text
    assert "disk 40.0 GB free, full in 6m40s" in text and "cost $0.56" in text
    assert "pwr-cap" in text and sum(1 for ln in lines if re.match(r" +\d +650/700W", ln)) == 8
    assert re.search(r"^! \d\d:\d\d:\d\d thermal: GPU 11 at 89 C *$", text, re.M), text
    assert "gpu=11" in text  # its evidence


def test_sparkline_scales_to_the_limit() -> None:
    assert sparkline([0.0, 350.0, 700.0, None], 700.0, 10) == "▁▅█ "
    assert sparkline([1.0, 2.0, 3.0, 4.0], None, 2) == "▆█"


def test_follower_reads_new_lines_only_and_keeps_torn_ones(tmp_path: Path) -> None:
    (tmp_path / "status.json").write_text(json.dumps(_status()))
    first = Event("started", "info", "attempt 0 started", time=1.0)
    (tmp_path / "events.jsonl").write_text(first.to_json() + "\n")
    follower = Follower(LocalSource(tmp_path))
    snap = follower.poll(now=2000.0)
    assert [e.kind for e in snap.events] == ["started"] and len(snap.new_events) == 1
    assert snap.heartbeat_at == 1995.0  # the first heartbeat is taken at its word
    line = Event("stall", "critical", "no step", time=2.0).to_json()
    with (tmp_path / "events.jsonl").open("a") as f:
        f.write(line[:20])  # a writer caught mid-line
    snap = follower.poll(now=2001.0)
    assert snap.new_events == () and snap.heartbeat_at == 1995.0
    with (tmp_path / "events.jsonl").open("a") as f:
        f.write(line[20:] + "\n")
    (tmp_path / "status.json").write_text(json.dumps(_status(agent_time=1996.0)))
    snap = follower.poll(now=2002.0)
    assert [e.kind for _, e in [(0, ev) for ev, _ in snap.new_events]] == ["stall"]
    assert snap.new_events[0][1] == line and snap.heartbeat_at == 2002.0


# --------------------------------------------------------------------------- a live agent

_LIVE_AGENT = textwrap.dedent(
    """
    import io, sys, time
    from pathlib import Path
    from runner.agent.supervisor import Supervisor
    from runner.sampling.nvml import Nvml
    from runner.sampling.trace import FakeNvml, Scenario
    from runner.spec import WatchdogSpec

    run_dir, loop = Path(sys.argv[1]), sys.argv[2]
    argv = [sys.executable, loop, "--steps", "600", "--step-s", "0.05", "--save-every", "50"]
    watchdog = WatchdogSpec(sample_interval_s=0.2, history_interval_s=0.2, stall_min_s=60)
    Supervisor(
        argv, run_dir=run_dir, stdout=io.BytesIO(), stderr=io.BytesIO(), watchdog=watchdog,
        gpu_source=Nvml(FakeNvml(Scenario("healthy"), clock=time.monotonic)),
    ).run()
    """
)


@pytest.fixture
def live_agent(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[tuple[Path, int]]:
    run_dir = tmp_path / "live-run"
    run_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", _LIVE_AGENT, str(run_dir), str(LOOP)],
        env={**subprocess_env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not (run_dir / "status.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        yield run_dir, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _step(screen: str) -> int | None:
    found = re.search(r"^step (\d+)/600", screen, re.M)
    return int(found.group(1)) if found else None


@pytest.mark.slow
def test_watch_follows_a_live_agent_and_sees_it_go_unreachable(
    live_agent: tuple[Path, int], terminal: Callable[..., Terminal]
) -> None:
    run_dir, agent_pid = live_agent
    term = terminal("watch", str(run_dir), "--interval", "0.2", "--quiet-after", "2")
    first = term.wait_for(lambda s: (_step(s) or 0) > 0, timeout=20)
    seen = _step(first)
    assert seen is not None
    moved = term.wait_for(lambda s: (_step(s) or 0) >= seen + 5, timeout=10)
    assert "unreachable" not in moved
    os.kill(agent_pid, signal.SIGSTOP)
    stopped_at = time.time()
    gone = term.wait_for(lambda s: "host or agent unreachable since" in s, timeout=8)
    assert time.time() - stopped_at >= 1.5  # not before the heartbeat really went quiet
    assert "no heartbeat for" in gone
    os.kill(agent_pid, signal.SIGCONT)
    back = term.wait_for(lambda s: "unreachable" not in s and "running" in s, timeout=8)
    assert (_step(back) or 0) >= seen + 5
    os.kill(term.proc.pid, signal.SIGINT)  # Ctrl-C: quiet, 130
    assert term.exit_code() == 130
    assert "Traceback" not in term.text and "error" not in term.text


# --------------------------------------------------------------------------- over real SSH


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sshd(subprocess_env: dict[str, str]) -> Iterator[tuple[Any, int]]:
    """A loopback container running sshd that accepts runner's own key (hermetic state)."""
    from runner.cloud.ssh import ensure_key
    from tests.fakes.vast_server import BASE_IMAGE, LABEL, docker_unavailable_reason

    reason = docker_unavailable_reason()
    if reason is None and shutil.which("ssh") is None:
        reason = "no OpenSSH client here (scripts/ci-infra.sh installs openssh-client)"
    if reason is not None:
        pytest.skip(reason)
    import docker

    key = ensure_key()
    port = _free_port()
    boot = (
        "ssh-keygen -A >/dev/null 2>&1; mkdir -p /run/sshd /root/.ssh; chmod 700 /root/.ssh; "
        f"printf '%s\\n' '{key}' > /root/.ssh/authorized_keys; "
        "chmod 600 /root/.ssh/authorized_keys; "
        f"/usr/sbin/sshd -p {port} -o ListenAddress=127.0.0.1; exec sleep infinity"
    )
    client = docker.from_env(timeout=60)
    container = client.containers.run(
        BASE_IMAGE,
        entrypoint=["/bin/sh", "-c", boot],
        detach=True,
        network_mode="host",
        init=True,
        labels={LABEL: "watch-test"},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, container.logs()
            time.sleep(0.05)
        yield container, port
    finally:
        container.remove(force=True)
        client.close()


def _put(container: Any, folder: Path, dest: str) -> None:
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(folder), arcname=Path(dest).name)
    container.put_archive(str(Path(dest).parent), buf.getvalue())


@pytest.mark.slow
def test_watch_and_logs_a_rented_run_over_real_ssh(
    recorded_run: Path,
    sshd: tuple[Any, int],
    terminal: Callable[..., Terminal],
    subprocess_env: dict[str, str],
) -> None:
    container, port = sshd
    container.exec_run(["mkdir", "-p", "/root/runs"])
    remote_dir = f"/root/runs/{recorded_run.name}"
    _put(container, recorded_run, remote_dir)
    run_id = "vastrun-20261203-000000-beef"
    now = time.time()
    Runs().add(
        RunRecord(
            run_id=run_id, job="loop", backend="vast", run_dir=remote_dir, started=now,
            state="running", updated=now, instance_id=7, ssh_host="127.0.0.1", ssh_port=port,
        )
    )  # fmt: skip
    term = terminal("watch", "vastrun")
    assert term.exit_code(timeout=30) == 0
    screen = term.text
    assert "finished (exit 0)" in screen and run_id in screen
    assert re.search(r"^step 40/40 ", screen, re.M) and "stack dump: stacks/001-stall/" in screen
    logs = _runner("logs", run_id, env=subprocess_env)
    assert logs.returncode == 0, logs.stderr
    local = "".join(
        f"==> attempt {n} (logs/attempt-{n}.log) <==\n"
        + (recorded_run / f"logs/attempt-{n}.log").read_text()
        for n in (0, 1)
    )
    assert logs.stdout == local

    # a host that stops answering: the live view says "reconnecting", --json says so on
    # stderr, and both carry on once sshd is back, until the run ends
    def sh(line: str) -> None:
        assert container.exec_run(["sh", "-c", line]).exit_code == 0, line

    sh(f'sed -i \'s/"finished"/"running"/\' {remote_dir}/status.json')
    live = terminal("watch", run_id, "--interval", "0.2", "--quiet-after", "100000")
    follow = subprocess.Popen(
        [str(RUNNER_BIN), "watch", run_id, "--json", "--interval", "0.2"],
        env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        live.wait_for(lambda s: f"{run_id}  attempt 1, 1 restart  running" in s, timeout=15)
        sh("pkill sshd")
        down = live.wait_for(lambda s: "reconnecting (since" in s, timeout=10)
        assert "ssh root@127.0.0.1:" in down and "step 40/40" in down  # what was known stays
        sh(f"/usr/sbin/sshd -p {port} -o ListenAddress=127.0.0.1")
        live.wait_for(lambda s: "reconnecting" not in s and "running" in s, timeout=10)
        sh(f'sed -i \'s/"state":"running"/"state":"finished"/\' {remote_dir}/status.json')
        assert live.exit_code(timeout=15) == 0
        out, err = follow.communicate(timeout=15)
    finally:
        follow.kill()
    assert "finished (exit 0)" in live.text
    assert follow.returncode == 0, err
    kinds = [json.loads(ln)["kind"] for ln in out.splitlines()]
    assert kinds == [e.kind for e in _events(recorded_run)]
    assert "warning: reconnecting: ssh root@127.0.0.1:" in err
    followed = _runner("logs", run_id, "-f", "--attempt", "1", env=subprocess_env)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == (recorded_run / "logs/attempt-1.log").read_text()


def test_no_ref_is_the_newest_run_and_the_viewer_never_loads_torch_or_the_agent(
    recorded_run: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    older = tmp_path / "older"
    shutil.copytree(recorded_run, older)
    now = time.time()
    for run_id, folder, started in (("loop-a", older, now - 60), ("loop-b", recorded_run, now)):
        Runs().add(
            RunRecord(
                run_id=run_id, job="loop", backend="local", run_dir=str(folder),
                started=started, state="finished", updated=now,
            )
        )  # fmt: skip
    probe = (
        "import sys\nfrom runner.cli import main\n"
        "code = main(['watch', '--once'])\n"
        "loaded = [m for m in sys.modules if m == 'torch' or m.startswith(('runner.agent', "
        "'runner.hub'))]\n"
        "print('LOADED', loaded, code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=subprocess_env, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("loop-b  attempt 1")
    assert done.stdout.splitlines()[-1] == "LOADED [] 0"

"""``runner logs``: every attempt under its header, one attempt, and following across restarts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from runner.cli import main
from runner.view.logs import LogFollower, header
from runner.view.source import LocalSource
from tests.conftest import REPO, RUNNER_BIN


def _expected(run: Path, attempts: list[int]) -> str:
    return "".join(header(n) + (run / f"logs/attempt-{n}.log").read_text() for n in attempts)


def test_logs_prints_every_attempt_under_a_header(
    recorded_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["logs", str(recorded_run)]) == 0
    out = capsys.readouterr().out
    assert out == _expected(recorded_run, [0, 1])
    assert out.startswith("==> attempt 0 (logs/attempt-0.log) <==\nstep 1/40")
    assert "==> attempt 1 (logs/attempt-1.log) <==\nresumed from step 20\n" in out


def test_one_attempt_has_no_header_and_a_missing_one_is_an_error(
    recorded_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["logs", str(recorded_run), "--attempt", "1"]) == 0
    assert capsys.readouterr().out == (recorded_run / "logs/attempt-1.log").read_text()
    assert main(["logs", str(recorded_run), "--attempt", "7", "-f"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {recorded_run.name} has no log for attempt 7 (attempts: 0, 1)"]


def test_follow_moves_on_to_the_next_attempt_and_ends_with_the_run(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (tmp_path / "status.json").write_text(json.dumps({"state": "running"}))
    out: list[str] = []

    def agent() -> None:
        with (logs / "attempt-0.log").open("a") as f:
            for i in range(5):
                f.write(f"a0 line {i}\n")
                f.flush()
                time.sleep(0.02)
            f.write("torn")  # the process died mid-line
        time.sleep(0.1)
        with (logs / "attempt-1.log").open("a") as f:
            for i in range(3):
                f.write(f"a1 line {i}\n")
                f.flush()
                time.sleep(0.02)
        time.sleep(0.1)
        (tmp_path / "status.json").write_text(json.dumps({"state": "stopped", "exit_code": 3}))

    writer = threading.Thread(target=agent)
    writer.start()
    code = LogFollower(LocalSource(tmp_path), out.append, interval_s=0.02).run()
    writer.join()
    assert code == 3
    text = "".join(out)
    assert text == (
        header(0)
        + "".join(f"a0 line {i}\n" for i in range(5))
        + "torn\n"
        + header(1)
        + "".join(f"a1 line {i}\n" for i in range(3))
    )
    assert all(chunk.endswith("\n") for chunk in out)  # whole lines only


_RECORD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tests.view.conftest import record_run
    record_run(Path(sys.argv[1]), Path(sys.argv[2]))
    """
)


@pytest.mark.slow
def test_logs_follow_a_real_freeze_and_restart_as_it_happens(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    run = tmp_path / "loop-live"
    agent = subprocess.Popen(
        [sys.executable, "-c", _RECORD, str(run), str(tmp_path / "onset")],
        env={**subprocess_env, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 20
        while not (run / "launch.json").exists():
            assert time.monotonic() < deadline and agent.poll() is None
            time.sleep(0.02)
        follow = subprocess.run(
            [str(RUNNER_BIN), "logs", str(run), "-f", "--interval", "0.1"],
            capture_output=True,
            text=True,
            env=subprocess_env,
            timeout=60,
        )
    finally:
        agent.wait(timeout=60)
    assert agent.returncode == 0
    assert follow.returncode == 0, follow.stderr
    assert follow.stdout == _expected(run, [0, 1])
    assert "step 23/40" in follow.stdout and "resumed from step 20" in follow.stdout

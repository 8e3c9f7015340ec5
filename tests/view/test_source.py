"""Reading a run folder: whole files, tails past an offset, refs from the registry or a path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runner.errors import RunnerError
from runner.launch.runs import RunRecord, Runs
from runner.view.source import LocalSource, RemoteSource, _parse, _remote_script, open_run


def _record(run_id: str, run_dir: Path | str, **kw: object) -> RunRecord:
    now = time.time()
    fields = {"job": "loop", "backend": "local", "state": "running", "started": now, "updated": now}
    return RunRecord(run_id=run_id, run_dir=str(run_dir), **{**fields, **kw})  # type: ignore[arg-type]


def test_tails_read_only_new_bytes_and_restart_on_a_replaced_file(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_bytes(b'{"a":1}\n{"b":2}\n')
    src = LocalSource(tmp_path)
    first = src.fetch(["status.json"], {"events.jsonl": 0})
    assert first.texts == {"status.json": None}
    tail = first.tails["events.jsonl"]
    assert tail is not None and (tail.start, tail.end, tail.data) == (0, 16, b'{"a":1}\n{"b":2}\n')
    with (tmp_path / "events.jsonl").open("ab") as f:
        f.write(b'{"c":3}\n')
    again = src.fetch(tails={"events.jsonl": 16}).tails["events.jsonl"]
    assert again is not None and (again.start, again.data) == (16, b'{"c":3}\n')
    (tmp_path / "events.jsonl").write_bytes(b"{}\n")  # replaced by a shorter file
    replaced = src.fetch(tails={"events.jsonl": 24}).tails["events.jsonl"]
    assert replaced is not None and (replaced.start, replaced.data) == (0, b"{}\n")
    # the last K bytes start at a whole line
    last = src.fetch(tails={"events.jsonl": -2}).tails["events.jsonl"]
    assert last is not None and last.data == b""
    assert src.fetch(tails={"nope.jsonl": 0}).tails["nope.jsonl"] is None


def test_the_remote_script_output_parses_like_a_local_read(tmp_path: Path) -> None:
    import subprocess

    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "status.json").write_text('{"state":"running"}')
    (run / "samples.jsonl").write_bytes(b"x" * 50 + b"\n" + b'{"t":1}\n')
    (run / "logs" / "attempt-0.log").write_bytes(b"\xff not utf-8\n")
    (run / "logs" / "attempt-1.log").write_text("hi\n")
    tails = {"samples.jsonl": -10, "logs/attempt-0.log": 0, "events.jsonl": 0}
    script = _remote_script(str(run), ["status.json", "push-state.json"], tails)
    out = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout
    remote = _parse(out, ["status.json", "push-state.json"], tails)
    local = LocalSource(run).fetch(["status.json", "push-state.json"], tails)
    assert remote == local
    assert remote.attempts == (0, 1)
    assert remote.texts["status.json"] == '{"state":"running"}'
    samples = remote.tails["samples.jsonl"]
    assert samples is not None and samples.data == b'{"t":1}\n' and samples.start == 51
    log = remote.tails["logs/attempt-0.log"]
    assert log is not None and log.data == b"\xff not utf-8\n"
    missing = subprocess.run(["sh", "-c", _remote_script(str(tmp_path / "x"), [], {})], check=False)
    assert missing.returncode == 66


def test_refs_resolve_through_the_registry_or_a_path(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="no runs yet"):
        open_run(None)
    run = tmp_path / "loop-1"
    run.mkdir()
    (run / "status.json").write_text("{}")
    runs = Runs()
    runs.add(_record("loop-20260101-000000-aaaa", run))
    runs.add(_record("loop-20260101-000001-bbbb", tmp_path / "gone"))
    runs.add(_record("vast-20260101-000002-cccc", "/root/runs/x", backend="vast", job="v"))
    assert open_run("loop-20260101-000000").label == "loop-20260101-000000-aaaa"
    with pytest.raises(RunnerError, match="matches 2 runs"):
        open_run("loop-2026")
    with pytest.raises(RunnerError, match="is gone from this machine"):
        open_run("loop-20260101-000001")
    with pytest.raises(RunnerError, match="has no SSH address yet"):
        open_run(None)
    runs.update("vast-20260101-000002-cccc", ssh_host="127.0.0.1", ssh_port=2222)
    remote = open_run("v")
    assert isinstance(remote, RemoteSource) and remote.remote and remote.where == "/root/runs/x"
    control = remote._control
    with remote:
        assert control.is_dir()
    assert not control.exists()
    by_path = open_run(str(run))
    assert not by_path.remote and by_path.read("status.json") == "{}"
    with pytest.raises(RunnerError, match="is not a run folder"):
        open_run(str(tmp_path))
    with pytest.raises(RunnerError, match="no run folder"):
        open_run(str(tmp_path / "nowhere"))
    with pytest.raises(RunnerError, match="no run 'zzz'"):
        open_run("zzz")

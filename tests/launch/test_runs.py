"""The run registry: records, lookups, and how a run's files set its state (real files)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from runner.errors import RunnerError
from runner.launch.runs import SILENT_AFTER_S, RunRecord, Runs, judge, new_run_id, refresh
from runner.rundir import PUSH_STATE_FILE, Launch, Status, read_launch


def _record(tmp_path: Path, run_id: str, **fields: object) -> RunRecord:
    base: dict[str, object] = {
        "run_id": run_id,
        "job": "franka_cube_stack",
        "backend": "local",
        "run_dir": str(tmp_path / run_id),
        "started": time.time() - 100,
        "state": "running",
        "updated": time.time(),
    }
    base.update(fields)
    return RunRecord(**base)  # type: ignore[arg-type]


def _status(run_dir: Path, state: str, *, agent_time: float, step: int = 7) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    Status(
        state=state,  # type: ignore[arg-type]
        job="franka_cube_stack",
        agent_pid=os.getpid(),
        agent_time=agent_time,
        started=agent_time - 50,
        step=step,
        exit_code=0 if state == "finished" else None,
        summary=f"{state} at step {step}",
    ).write(run_dir)


def test_run_ids_sort_by_time_and_are_unique() -> None:
    ids = {new_run_id("franka_cube_stack") for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("franka_cube_stack-20") for i in ids)


def test_registry_shares_the_instances_file_and_finds_runs(tmp_path: Path) -> None:
    runs = Runs()
    assert runs.path == Path(os.environ["HOME"]) / ".local/state/runner/registry.sqlite"
    runs = Runs(tmp_path / "registry.sqlite")
    with pytest.raises(RunnerError, match="no runs yet"):
        runs.find()
    runs.add(_record(tmp_path, "franka_cube_stack-20261203-100000-aaaa", started=1.0))
    runs.add(_record(tmp_path, "franka_cube_stack-20261203-110000-bbbb", started=2.0))
    runs.add(_record(tmp_path, "pi0_so101-20261203-120000-cccc", job="pi0_so101", started=3.0))
    assert runs.find().run_id == "pi0_so101-20261203-120000-cccc"  # the newest
    assert runs.find("franka_cube_stack").run_id.endswith("bbbb")  # a job: its newest run
    assert runs.find("pi0").job == "pi0_so101"  # a unique prefix
    with pytest.raises(RunnerError, match="matches 2 runs"):
        runs.find("franka_cube_stack-20261203")
    with pytest.raises(RunnerError, match="no run 'nope'"):
        runs.find("nope")
    ended = runs.update("pi0_so101-20261203-120000-cccc", state="finished", exit_code=0)
    assert ended.ended is not None and not ended.live
    with pytest.raises(ValueError, match="unknown run fields"):
        runs.update(ended.run_id, colour="red")


def test_cost_runs_to_the_end_not_to_now(tmp_path: Path) -> None:
    rec = _record(tmp_path, "r", started=1000.0, dph_total=2.0, ended=1000.0 + 1800)
    assert rec.cost_at(now=1_000_000.0) == pytest.approx(1.0)
    assert _record(tmp_path, "r", started=1000.0).cost_at() is None


def test_a_fresh_status_is_running_a_stale_one_is_silent(tmp_path: Path) -> None:
    now = time.time()
    rec = _record(tmp_path, "r1")
    _status(Path(rec.run_dir), "running", agent_time=now - 2)
    runs = Runs(tmp_path / "registry.sqlite")
    runs.add(rec)
    assert refresh(rec, runs).state == "running"
    # The agent stopped writing (host down, agent SIGSTOPped): silent, never "running".
    _status(Path(rec.run_dir), "running", agent_time=now - SILENT_AFTER_S - 5)
    after = refresh(runs.get("r1") or rec, runs)
    assert (after.state, after.step) == ("silent", 7)


def test_the_end_state_and_the_last_pushed_step_come_from_the_files(tmp_path: Path) -> None:
    rec = _record(tmp_path, "r2", dph_total=1.2)
    run_dir = Path(rec.run_dir)
    _status(run_dir, "finished", agent_time=rec.started + 3600, step=300)
    (run_dir / PUSH_STATE_FILE).write_text(
        json.dumps({"repo": "me/x", "pushed": {"100": {}, "300": {}, "200": {}}})
    )
    runs = Runs(tmp_path / "registry.sqlite")
    runs.add(rec)
    after = refresh(rec, runs)
    assert (after.state, after.step, after.last_pushed_step, after.exit_code) == (
        "finished",
        300,
        300,
        0,
    )
    assert after.cost == pytest.approx(1.2)  # one hour at $1.2/h, up to the end
    assert refresh(after, runs) == after  # ended runs are not read again


def test_an_unreachable_rented_run_is_silent() -> None:
    rec = RunRecord("r", "j", "vast", "/workspace/runs/r", 0.0, "running", 0.0, instance_id=3)
    assert judge(rec, None, time.time())["state"] == "silent"


def test_launch_file_round_trips(tmp_path: Path) -> None:
    launch = Launch(
        run_id="r",
        job="franka_cube_stack",
        backend="docker",
        spec={"name": "franka_cube_stack", "command": ["python"]},
        argv=("python", "-m", "x"),
        secret_names=("HF_TOKEN",),
        forced=("disk",),
    )
    launch.write(tmp_path)
    assert read_launch(tmp_path) == launch
    assert read_launch(tmp_path / "missing") is None


def test_an_unreachable_rented_run_whose_host_is_gone_has_ended(tmp_path: Path) -> None:
    runs = Runs(tmp_path / "registry.sqlite")
    rec = RunRecord(
        "r3", "j", "vast", "/workspace/runs/r3", time.time() - 60, "running", time.time(),
        instance_id=9, ssh_host="127.0.0.1", ssh_port=1, last_pushed_step=60,
    )  # fmt: skip
    runs.add(rec)
    # The host still exists (or vast.ai cannot say): silent, not ended.
    assert refresh(rec, runs, instance_exists=lambda iid: None).state == "silent"
    asked: list[int] = []
    gone = refresh(
        runs.get("r3") or rec, runs, instance_exists=lambda iid: asked.append(iid) or False
    )
    assert asked == [9]
    assert (gone.state, gone.live) == ("gone", False)
    assert gone.summary == "the host is gone (instance 9); last pushed step 60"

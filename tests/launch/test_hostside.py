"""The host side of a launch: caps, the end policy, the detached start, secrets on stdin.

Fast tests use real files (harness checkpoints, ``push-state.json``, a ``/proc``-style environ
file) and the loopback vast.ai over real HTTP; the slow ones start ``runner agent start`` as
real processes (detached, or stopped at a cap while the loopback Hub takes the final push).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from runner.errors import RunnerError
from runner.harness import list_checkpoints, save_checkpoint
from runner.hub.pusher import PushRecord, PushState
from runner.launch.hostside import (
    AGENT_LOG,
    AGENT_PID,
    cap_reached,
    decide_end,
    end_instance,
    fetch_hub_dataset,
    instance_credentials,
    make_launch,
    read_stdin_payload,
)
from runner.rundir import (
    PUSH_STATE_FILE,
    Event,
    EventLog,
    Launch,
    Status,
    read_events,
    read_status,
)
from runner.spec import JobSpec
from tests.conftest import RUNNER_BIN
from tests.fakes.hub_server import HubServer
from tests.fakes.vast_server import VastServer
from tests.launch.toy import toy_job

REPO_ID = "runner-test/toy"


def _launch(spec: JobSpec, **fields: object) -> Launch:
    argv, env = spec.apply_overrides([])
    return make_launch(spec, backend="vast", argv=argv, env=env, **fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- caps


def test_caps_say_which_one_was_reached(tmp_path: Path) -> None:
    spec = toy_job(tmp_path / "jobs")
    start = 1_000_000.0
    hours = _launch(spec, created=start, max_hours=2.0)
    assert cap_reached(hours, start + 1.9 * 3600) is None
    kind, message = cap_reached(hours, start + 2.0 * 3600) or ("", "")
    assert kind == "cap_hours" and "--max-hours 2 reached" in message

    cost = _launch(spec, created=start, max_cost=1.0, dph_total=0.5)
    assert cap_reached(cost, start + 1.5 * 3600) is None
    kind, message = cap_reached(cost, start + 2.01 * 3600) or ("", "")
    assert kind == "cap_cost" and "--max-cost $1 reached ($1.00" in message
    # No price known: no cost cap can be judged (and none is claimed).
    assert cap_reached(_launch(spec, created=start, max_cost=1.0), start + 99 * 3600) is None


# --------------------------------------------------------------------------- end policy


def _checkpoints(run_dir: Path, steps: list[int]) -> None:
    for step in steps:
        save_checkpoint(
            run_dir / "checkpoints", step, lambda d, s=step: (d / "s.txt").write_text(str(s))
        )


def _pushed(run_dir: Path, steps: list[int], repo: str = REPO_ID) -> None:
    state = PushState(run_dir / PUSH_STATE_FILE, repo, "model")
    for step in steps:
        state.pushed[step] = PushRecord(step, "c" * 40, f"id-{step}", 1, 0.1, time.time(), {})
    state.save()


def test_end_policy_destroys_only_once_every_checkpoint_is_on_the_hub(tmp_path: Path) -> None:
    spec = toy_job(tmp_path / "jobs", hub_repo=REPO_ID)
    run = tmp_path / "run"
    run.mkdir()
    launch = _launch(spec)
    nothing = decide_end(spec, launch, run)
    assert (nothing.action, nothing.reason) == ("destroy", "the run left no checkpoint to push")

    _checkpoints(run, [10, 20, 30])
    assert [c.step for c in list_checkpoints(run / "checkpoints")] == [10, 20, 30]
    _pushed(run, [10, 20])
    kept = decide_end(spec, launch, run)
    assert kept.action == "keep" and kept.unpushed == (30,)
    assert "step(s) 30 are not confirmed on the Hub (runner-test/toy)" in kept.reason
    # A half-written checkpoint (no manifest) is not one to wait for.
    (run / "checkpoints" / ".tmp-step_000000040").mkdir()
    _pushed(run, [10, 20, 30])
    assert decide_end(spec, launch, run).action == "destroy"
    assert decide_end(spec, _launch(spec, end_policy="stop"), run).action == "stop"
    assert decide_end(spec, _launch(spec, end_policy="keep"), run).action == "keep"
    # A push state for another repo confirms nothing for this one.
    _pushed(run, [10, 20, 30], repo="someone/else")
    assert decide_end(spec, launch, run).unpushed == (10, 20, 30)


def test_a_job_without_a_hub_keeps_a_host_that_has_checkpoints(tmp_path: Path) -> None:
    spec = toy_job(tmp_path / "jobs")
    run = tmp_path / "run"
    _checkpoints(run, [5])
    decision = decide_end(spec, _launch(spec), run)
    assert decision.action == "keep" and "the job has no hub:" in decision.reason


def test_instance_credentials_come_from_the_container_when_the_session_lacks_them(
    tmp_path: Path,
) -> None:
    proc = tmp_path / "environ"
    proc.write_bytes(b"PATH=/bin\0CONTAINER_ID=4242\0CONTAINER_API_KEY=k3y\0EMPTY=\0")
    assert instance_credentials({}, proc_environ=proc) == (4242, "k3y")
    own = {"CONTAINER_ID": "7", "CONTAINER_API_KEY": "mine"}
    assert instance_credentials(own, proc_environ=proc) == (7, "mine")
    assert instance_credentials({}, proc_environ=tmp_path / "missing") is None


def test_end_instance_refused_is_one_line_without_the_key() -> None:
    with VastServer() as vast:
        with pytest.raises(RunnerError) as err:
            end_instance("destroy", 123, "not-the-key-9f8e", base_url=vast.url)
        assert "HTTP 401" in str(err.value) and "not-the-key-9f8e" not in str(err.value)
        assert "\n" not in str(err.value)
        with pytest.raises(RunnerError, match=r"cannot reach vast\.ai"):
            end_instance("stop", 1, "k", base_url="http://127.0.0.1:9", timeout_s=2)


def test_secrets_on_stdin() -> None:
    both = '{"secrets": {"HF_TOKEN": "t"}, "env": {"HF_ENDPOINT": "http://x"}}'
    assert read_stdin_payload(io.StringIO(both)) == ({"HF_TOKEN": "t"}, {"HF_ENDPOINT": "http://x"})
    assert read_stdin_payload(io.StringIO('{"HF_TOKEN": "t"}')) == ({"HF_TOKEN": "t"}, {})
    assert read_stdin_payload(io.StringIO("")) == ({}, {})
    for bad in ("not json", "[1]", '{"secrets": {"A": 1}}'):
        with pytest.raises(RunnerError) as err:
            read_stdin_payload(io.StringIO(bad))
        assert "--secrets-stdin" in str(err.value)


def test_a_hub_dataset_is_fetched_at_its_pinned_revision_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.hub.client import HubClient
    from tests.fakes.hub_server import isolate_client

    isolate_client(monkeypatch, tmp_path / "hf-home")
    with HubServer(tmp_path / "hub") as hub:
        for key, value in hub.client_env().items():
            monkeypatch.setenv(key, value)
        source = tmp_path / "source"
        (source / "episodes").mkdir(parents=True)
        (source / "episodes" / "0.bin").write_bytes(b"x" * 1000)
        (source / "meta.json").write_text("{}")
        client = HubClient.from_env()
        client.ensure_repo("runner-test/ds", repo_type="dataset")
        client.upload_folder(
            "runner-test/ds", source, path_in_repo="", message="v1", repo_type="dataset"
        )
        pinned = hub.resolve("runner-test/ds", "main", "dataset")
        (source / "meta.json").write_text('{"moved": true}')
        client.upload_folder(
            "runner-test/ds", source, path_in_repo="", message="v2", repo_type="dataset"
        )
        spec = JobSpec.model_validate(
            {
                **toy_job(tmp_path / "jobs").model_dump(mode="json"),
                "dataset": {"source": "hub", "repo": "runner-test/ds", "revision": pinned},
            }
        )
        lines: list[str] = []
        dest = fetch_hub_dataset(spec, tmp_path / "host" / "ds", lines.append)
        assert (dest / "episodes" / "0.bin").stat().st_size == 1000
        assert (dest / "meta.json").read_text() == "{}"  # the pinned revision, not main
        assert lines[0].startswith(f"dataset: downloading runner-test/ds@{pinned} (")
        gets = len(hub.requests)
        fetch_hub_dataset(spec, dest, lines.append)
        assert lines[-1].startswith("dataset: runner-test/ds@") and "here already" in lines[-1]
        assert len(hub.requests) == gets


# --------------------------------------------------------------------------- real processes

CANARY = "hf_hostsideCanary93jd8"


def _agent(
    args: list[str], payload: dict[str, object], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUNNER_BIN), "agent", "start", *args, "--secrets-stdin"],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_detached_agent_leaves_the_session_and_keeps_secrets_off_disk(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    spec = toy_job(tmp_path / "jobs")
    run = tmp_path / "run"
    argv, env = spec.apply_overrides(["training.steps=40", "training.step_s=0.1"])
    make_launch(spec, backend="local", argv=argv, env=env).write(run)
    started = time.monotonic()
    done = _agent(
        [str(run), "--detach"],
        {"secrets": {"HF_TOKEN": CANARY}, "env": {"RUNNER_TEST_FORWARDED": "yes"}},
        subprocess_env,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.strip().splitlines()[-1])
    assert took < 15, f"the detached start took {took:.1f} s"
    assert (run / AGENT_PID).read_text().strip() == str(pid)
    # Its own session, not this one's, and not a session leader (it cannot get a terminal).
    assert os.getsid(pid) != os.getsid(0) and os.getsid(pid) != pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert CANARY.encode() not in cmdline
    status = read_status(run)
    assert status is not None and status.agent_pid == pid

    deadline = time.monotonic() + 90
    while (s := read_status(run)) is None or s.state not in ("finished", "failed", "stopped"):
        assert time.monotonic() < deadline, "the detached run did not finish"
        time.sleep(0.2)
    assert s.state == "finished" and s.step == 40
    for path in run.rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path
    log = (run / AGENT_LOG).read_text()
    assert "finished at step 40" in log


@pytest.mark.slow
def test_a_cap_stops_the_run_after_a_final_push(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    spec = toy_job(tmp_path / "jobs", hub_repo=REPO_ID)
    run = tmp_path / "run"
    argv, env = spec.apply_overrides(
        ["training.steps=400", "training.step_s=0.05", "training.save_every=5"]
    )
    # Local backend: the caps apply everywhere, the end policy only on rented hosts.
    make_launch(spec, backend="local", argv=argv, env=env, max_hours=4 / 3600).write(run)
    with HubServer(tmp_path / "hub") as hub:
        hub_env = hub.client_env(tmp_path / "hf-home")
        token = hub_env.pop("HF_TOKEN")
        done = _agent([str(run)], {"secrets": {"HF_TOKEN": token}}, {**subprocess_env, **hub_env})
        # Stopped by the agent: the training process's own code (SIGTERM), state "stopped".
        assert done.returncode != 0, done.stderr
        status = read_status(run)
        assert status is not None and status.state == "stopped", done.stderr
        events = read_events(run)
        caps = [e for e in events if e.kind == "cap_hours"]
        assert len(caps) == 1 and caps[0].action == "stop", [e.kind for e in events]
        assert "--max-hours 0.00111111 reached (0.1 min since the launch)" in caps[0].message
        stopped = next(e for e in events if e.kind == "stopped")
        assert "--max-hours" in stopped.message
        # The final push landed: every complete checkpoint here is confirmed on the Hub.
        decision = decide_end(spec, _launch(spec), run)
        assert decision.action == "destroy", decision.reason
        local = [c.step for c in list_checkpoints(run / "checkpoints")]
        assert local, "the run saved no checkpoint before the cap"
        files = hub.list_files(REPO_ID)
        assert f"checkpoints/step_{local[-1]:09d}/state.txt" in files
        assert not [e for e in events if e.kind.startswith("host_")]  # local: no end policy
        assert token not in (run / "events.jsonl").read_text()


def test_a_failed_run_is_stopped_not_destroyed_so_its_evidence_stays(tmp_path: Path) -> None:
    spec = toy_job(tmp_path / "jobs", hub_repo=REPO_ID)
    run = tmp_path / "run"
    _checkpoints(run, [10])
    _pushed(run, [10])

    def status(state: str) -> None:
        Status(state=state, job=spec.name, agent_pid=1, agent_time=time.time(),  # type: ignore[arg-type]
               started=time.time(), summary=f"{state}: froze at step 12").write(run)  # fmt: skip

    status("finished")
    assert decide_end(spec, _launch(spec), run).action == "destroy"
    status("stopped")  # the agent gave up on it (a stall past the budget, an OOM)
    decision = decide_end(spec, _launch(spec), run)
    assert decision.action == "stop"
    assert "the run ended stopped: stopped, not destroyed, so its logs" in decision.reason
    # --end keep and --end stop are the user's word; a cap is a stop on purpose.
    assert decide_end(spec, _launch(spec, end_policy="keep"), run).action == "keep"
    EventLog(run).append(Event("cap_cost", "warning", "--max-cost $1 reached", action="stop"))
    assert decide_end(spec, _launch(spec), run).action == "destroy"

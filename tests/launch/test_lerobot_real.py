"""The real ``lerobot-train`` (LeRobot 0.6.1, Python 3.12, torch 2.11 on the CPU) under the agent,
through ``runner launch act_so101 --local --profile cpu``: the path every backend's host side
takes. The dataset is made by ``runner data synth``; the policy is a tiny ACT.

What LeRobot does, from its source (lerobot 0.6.1 wheel, in the venv of
scripts/setup-lerobot-env.sh):

- ``utils/utils.py`` ``format_big_number``: the INFO record prints ``step:1K`` for 500-1499, so
  the step is exact only in the tqdm bar (``scripts/lerobot_train.py``, ``tqdm(total=cfg.steps -
  step, desc="Training")``, which counts from the resumed step) and in the checkpoint names;
- ``common/train_utils.py``: checkpoints in ``OUTPUT/checkpoints/NNNNNN/{pretrained_model,
  training_state}`` with ``training_state/training_step.json``, ``last`` moved after each save;
- ``configs/train.py`` ``_resolve_resume_checkpoint``: ``--resume=true`` needs ``--config_path``,
  and the checkpoint resumed is the folder above the ``pretrained_model`` it names.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from runner.rundir import Event, read_events
from tests.conftest import REPO, RUNNER_BIN
from tests.fakes.hub_server import HubServer

pytestmark = pytest.mark.slow

HUB_REPO = "runner-test/act-so101"


def _jobs(folder: Path, *, hub: bool) -> Path:
    """A copy of the shipped act_so101 job (its cpu profile pushing to the loopback Hub)."""
    text = (REPO / "jobs" / "act_so101.yaml").read_text()
    if hub:
        line = f"    hub: {{repo: {HUB_REPO}, push_interval_s: 1, min_commit_interval_s: 0}}"
        assert "    hub: null" in text
        text = text.replace("    hub: null", line)
    folder.mkdir()
    (folder / "act_so101.yaml").write_text(text)
    return folder


def _env(base: dict[str, str], venv: Path, jobs: Path, extra: dict[str, str]) -> dict[str, str]:
    return {
        **base,
        **extra,
        "PATH": f"{venv / 'bin'}{os.pathsep}{base.get('PATH', '')}",
        "RUNNER_JOBS_DIR": str(jobs),
    }


def _runner(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUNNER_BIN), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def _launch_args(run_dir: Path, data: Path, *overrides: str) -> list[str]:
    return [
        "launch", "act_so101", "--local", "--profile", "cpu",
        f"--run-dir={run_dir}", f"--data={data}", "--", *overrides,
    ]  # fmt: skip


def _synth(env: dict[str, str], tmp_path: Path) -> Path:
    data = tmp_path / "data"
    made = _runner(
        ["data", "synth", "act_so101", str(data), "--episodes", "4", "--steps", "40",
         "--image-size", "32"],
        env, tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return data


def _checkpoints(run_dir: Path) -> Path:
    return run_dir / "outputs" / "train" / "act_so101" / "checkpoints"


def _training_step(ckpt: Path) -> int:
    data = json.loads((ckpt / "training_state" / "training_step.json").read_text())
    return int(data["step"])


def _status(run_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((run_dir / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def _of(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == kind]


def test_lerobot_resumes_across_step_1000_reports_its_steps_and_pushes_loadable_checkpoints(
    tmp_path: Path, subprocess_env: dict[str, str], lerobot_venv: Path
) -> None:
    """Healthy: the step crosses 1000 (where LeRobot's log says only ``step:1K``), the agent's
    step and rate match LeRobot's own, nothing is restarted, and every checkpoint reaches the
    Hub as a ``pretrained_model`` the real LeRobot loads."""
    with HubServer(tmp_path / "hub-storage") as hub:
        jobs = _jobs(tmp_path / "jobs", hub=True)
        env = _env(subprocess_env, lerobot_venv, jobs, hub.client_env(tmp_path / "hf-home"))
        data = _synth(env, tmp_path)
        run_dir = tmp_path / "run"

        # A checkpoint near step 1000 without training 1000 steps: 2 real steps, then the
        # checkpoint renamed to 980 as LeRobot names and counts it.
        first = _runner(_launch_args(run_dir, data, "steps=2"), env, tmp_path)
        assert first.returncode == 0, first.stderr[-3000:]
        ckpts = _checkpoints(run_dir)
        assert sorted(p.name for p in ckpts.iterdir()) == ["000002", "last"]
        (ckpts / "000002").rename(ckpts / "000980")
        (ckpts / "000980" / "training_state" / "training_step.json").write_text('{"step": 980}')
        (ckpts / "last").unlink()
        (ckpts / "last").symlink_to("000980")

        run = _runner(_launch_args(run_dir, data, "steps=1040"), env, tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        assert hub.token not in run.stdout + run.stderr
        events = read_events(run_dir)
        # Pushed as LeRobot checkpoints: each a pretrained_model folder, tagged by step.
        pushed = {e.evidence["step"] for e in _of(events, "push")}
        assert {1000, 1040} <= pushed
        files = hub.list_files(HUB_REPO)
        for name in ("model.safetensors", "config.json", "train_config.json"):
            assert files[f"checkpoints/step_000001040/pretrained_model/{name}"] > 0
        assert files["checkpoints/step_000001040/training_state/training_step.json"] > 0
        assert hub.resolve(HUB_REPO, "latest") == hub.resolve(HUB_REPO, "step-1040")
        loaded = _load_from_hub(lerobot_venv, hub, tmp_path / "pulled", 1040)
        assert loaded == {"type": "act", "dim_model": 64, "n_params": 11426310}, loaded

    started = _of(events, "started")[-1]
    assert "resuming from 000980" in started.message
    assert "--policy.push_to_hub=false" in started.message
    log = (run_dir / "logs" / f"attempt-{started.attempt}.log").read_text(errors="replace")
    # lerobot-train took --resume=true --config_path=.../000980/...: it says so itself.
    assert "'resume': True" in log and "Resuming data order" in log
    # LeRobot's own words: from 980 on its log says only 1K.
    assert re.search(r"step:1K smpl:\S+", log), "LeRobot no longer prints a rounded step"
    assert "step:1040" not in log

    # The agent's step is LeRobot's: the last checkpoint LeRobot wrote says 1040.
    assert sorted(p.name for p in ckpts.iterdir()) == ["000980", "001000", "001040", "last"]
    assert _training_step(ckpts / "001040") == 1040
    status = _status(run_dir)
    assert status["state"] == "finished" and status["step"] == 1040
    assert status["checkpoint_step"] == 1040
    samples = [
        json.loads(line)
        for line in (run_dir / "samples.jsonl").read_text().splitlines()
        if line.strip()
    ]
    attempt = [s for s in samples if s.get("attempt") == started.attempt and s.get("step")]
    steps = [s["step"] for s in attempt]
    assert steps and steps == sorted(steps) and steps[0] >= 980 and steps[-1] == 1040
    # Its rate against tqdm's own (the bar's step/s of every redraw in this attempt).
    bar_rates = [float(r) for r in re.findall(r"(\d+\.\d+)step/s\]", log)]
    ours = [s["steps_per_s"] for s in attempt if s.get("steps_per_s")]
    assert bar_rates and ours
    ratio = statistics.median(ours) / statistics.median(bar_rates)
    assert 0.6 < ratio < 1.6, (ours, bar_rates)

    assert not _of(events, "restarting") and not _of(events, "stall"), "a healthy run restarted"
    assert all(e.severity != "critical" for e in events)


_LOAD = """
import json, sys
from huggingface_hub import snapshot_download
from lerobot.policies.act.modeling_act import ACTPolicy
repo, step, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sub = f"checkpoints/step_{step:09d}/pretrained_model"
path = snapshot_download(repo, allow_patterns=[sub + "/*"], local_dir=dest)
policy = ACTPolicy.from_pretrained(f"{path}/{sub}")
n = sum(p.numel() for p in policy.parameters())
print(json.dumps({"type": policy.config.type, "dim_model": policy.config.dim_model, "n_params": n}))
"""


def _load_from_hub(venv: Path, hub: HubServer, dest: Path, step: int) -> dict[str, Any]:
    """A pushed checkpoint, downloaded with the Hub client and loaded by LeRobot itself."""
    env = {**os.environ, **hub.client_env(dest.parent / "hf-home-load")}
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _LOAD, HUB_REPO, str(step), str(dest)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _wait(run_dir: Path, proc: subprocess.Popen[str], what: str, ok: Any, limit_s: float) -> dict:
    """status.json once ``ok(status)`` holds; fails when the run ends first or time is up."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        status = _status(run_dir)
        if status and ok(status):
            return status
        assert proc.poll() is None, f"the run ended while waiting for {what}"
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {limit_s:.0f} s: {_status(run_dir)}")


def test_lerobot_frozen_and_crashed_is_resumed_from_its_newest_checkpoint_and_finishes(
    tmp_path: Path, subprocess_env: dict[str, str], lerobot_venv: Path
) -> None:
    """A real freeze (the trainer SIGSTOPped at step >= 45) is caught and the run resumes
    from checkpoint 40 in LeRobot's terms; then the trainer crashes (SIGSEGV at step >= 110)
    and resumes from 100; the run finishes at the requested step 160."""
    jobs = _jobs(tmp_path / "jobs", hub=False)
    env = _env(subprocess_env, lerobot_venv, jobs, {})
    data = _synth(env, tmp_path)
    run_dir = tmp_path / "run"
    args = _launch_args(run_dir, data, "steps=160", "save_freq=20")
    out = (tmp_path / "launch.out").open("w")
    proc = subprocess.Popen(
        [str(RUNNER_BIN), *args], stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
        cwd=tmp_path,
    )  # fmt: skip
    try:
        status = _wait(run_dir, proc, "step 45", lambda s: (s.get("step") or 0) >= 45, 240)
        frozen = int(status["training_pid"])
        os.kill(frozen, signal.SIGSTOP)
        frozen_at = time.monotonic()
        _wait(run_dir, proc, "attempt 1", lambda s: s.get("attempt") == 1, 240)
        caught_s = time.monotonic() - frozen_at
        status = _wait(
            run_dir, proc, "step 110 in attempt 1",
            lambda s: s.get("attempt") == 1 and (s.get("step") or 0) >= 110, 240,
        )  # fmt: skip
        os.kill(int(status["training_pid"]), signal.SIGSEGV)
        assert proc.wait(timeout=300) == 0, (tmp_path / "launch.out").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()

    events = read_events(run_dir)
    stall = only_critical(events, "stall")
    assert stall.evidence["confirmed_by"] == ["cpu_flat"], stall.evidence
    # Within the stall bound: the silence must pass confirm_s (30 s) and 5 x the longest
    # interval the run showed (steps slow down on a busy machine), then stacks and restart.
    ev = stall.evidence
    bound = max(30.0, ev["stall_factor"] * ev["longest_interval_s"]) + 20.0
    assert 20 < caught_s < bound, (caught_s, ev)
    assert stall.evidence["step"] >= 45
    assert _of(events, "stack_dump"), "no stacks were taken of the frozen trainer"
    starts = _of(events, "started")
    assert [s.attempt for s in starts] == [0, 1, 2]
    assert "resuming from 000040" in starts[1].message
    assert "resuming from 000100" in starts[2].message
    crashed = [e for e in _of(events, "exited") if e.attempt == 1]
    assert crashed and "SIGSEGV" in crashed[0].message, crashed
    assert not psutil_alive(frozen), "the frozen trainer outlived its attempt"
    ckpts = _checkpoints(run_dir)
    assert _training_step(ckpts / "000160") == 160
    status = _status(run_dir)
    assert status["state"] == "finished" and status["step"] == 160 and status["restarts"] == 2
    for attempt, first in ((1, 40), (2, 100)):
        log = (run_dir / "logs" / f"attempt-{attempt}.log").read_text(errors="replace")
        assert f"'checkpoint_path': '{ckpts}/{first:06d}'" in log


def only_critical(events: list[Event], kind: str) -> Event:
    found = [e for e in events if e.kind == kind and e.severity == "critical"]
    assert len(found) == 1, found
    return found[0]


def psutil_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

"""A recorded run for the viewers: a real agent over a real loop that freezes and restarts.

``recorded_run`` is made once per session by the real :class:`Supervisor` over
``tests/agent/scripts/train_loop.py``: 40 steps that save every 10, freeze after
step 23 (the GPU's power collapses at that instant, as in the seeds), are found
stalled, dumped, killed and restarted from checkpoint step 20, and finish. Its
folder holds everything the agent writes (events, status, samples every 0.2 s,
metrics, both attempts' logs, the stack dump) plus a ``launch.json`` with an
hourly price, so cost can be shown.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import pytest

from runner.rundir import Launch
from runner.sampling.nvml import Nvml
from runner.sampling.trace import FakeNvml, OnsetTimeline
from runner.spec import WatchdogSpec

SCRIPTS = Path(__file__).parents[1] / "agent" / "scripts"
LOOP = SCRIPTS / "train_loop.py"
STEPS, SAVE_EVERY, FREEZE_AT = 40, 10, 23
DPH = 1.25  # dollars per hour in launch.json

WATCHDOG = WatchdogSpec(
    sample_interval_s=0.2,
    stall_min_s=3,
    confirm_s=2,
    startup_timeout_s=60,
    checkpoint_timeout_s=8,
    power_collapse_s=2,
    history_interval_s=0.2,
)


def record_run(run_dir: Path, onset: Path) -> Path:
    """Supervise the freeze-and-restart loop into ``run_dir``; returns it."""
    from runner.agent.supervisor import Supervisor
    from runner.rundir import Event

    def on_event(event: Event) -> None:
        if event.kind == "restart":
            onset.unlink(missing_ok=True)  # the new attempt's GPU is busy again

    argv = [
        sys.executable, str(LOOP), "--steps", str(STEPS), "--step-s", "0.05",
        "--save-every", str(SAVE_EVERY), "--freeze-at", str(FREEZE_AT), "--once",
        "--onset-file", str(onset),
    ]  # fmt: skip
    Launch(
        run_id=run_dir.name,
        job="loop",
        backend="local",
        spec={},
        argv=tuple(argv),
        created=time.time(),
        dph_total=DPH,
    ).write(run_dir)
    supervisor = Supervisor(
        argv,
        run_dir=run_dir,
        stdout=io.BytesIO(),
        stderr=io.BytesIO(),
        watchdog=WATCHDOG,
        restart_delay_s=0.1,
        kill_grace_s=5.0,
        gpu_source=Nvml(FakeNvml(OnsetTimeline(onset), clock=time.monotonic)),
        on_event=on_event,
    )
    result = supervisor.run()
    assert (result.exit_code, result.restarts) == (0, 1), result.summary
    return run_dir


@pytest.fixture(scope="session")
def recorded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run folder: started, stall, stack_dump, exited, restart, started, finished."""
    root = tmp_path_factory.mktemp("recorded")
    return record_run(root / "loop-20261203-000000-abcd", root / "onset")

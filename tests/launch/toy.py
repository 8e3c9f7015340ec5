"""A stdlib-only toy job for the launch tests: steps, heartbeats and checkpoints through
:mod:`runner.harness`, no torch, so any image with runner in it runs it in a second.

``toy_job(jobs_dir, ...)`` writes ``jobs/toy.yaml``; the job takes Hydra-style overrides
``training.steps=N``, ``training.save_every=N`` and ``training.step_s=S`` (seconds per step),
resumes from its newest complete checkpoint and prints ``resuming from step N``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.spec import JobSpec, load_job

TOY_SCRIPT = r"""
import sys, time
from runner import harness
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
steps = int(args.get("training.steps", "40"))
every = int(args.get("training.save_every", "10"))
pause = float(args.get("training.step_s", "0.05"))
h = harness.Harness()
ck = h.latest_checkpoint()
first = ck.step + 1 if ck else 1
if ck:
    print(f"resuming from step {ck.step} ", flush=True)
for step in range(first, steps + 1):
    time.sleep(pause)
    h.step(step, loss=1.0 / step, samples=1)
    print(f"step {step}/{steps}", flush=True)
    if step % every == 0:
        h.save_checkpoint(step, lambda d, s=step: (d / "state.txt").write_text(str(s)))
h.close()
"""


def toy_spec_dict(*, hub_repo: str | None = None, dataset: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "toy",
        "description": "stdlib-only toy job for the launch tests",
        "command": ["python", "-c", TOY_SCRIPT],
        "secrets": [{"name": "HF_TOKEN", "required": False, "purpose": "pushes"}],
        "resources": {"gpus": 0, "disk_gb": 1, "shm_gb": 0, "ram_gb": 1},
        "checkpoints": {"layout": "harness", "path": "checkpoints", "size_gb": 0.001},
        "overrides": {"style": "hydra"},
        "progress": {"pattern": r"^step (?P<step>\d+)/(?P<total>\d+)"},
    }
    if dataset:
        spec["dataset"] = {"source": "local", "path": "/nonexistent/toy", "layout": "toy"}
    if hub_repo is not None:
        spec["hub"] = {"repo": hub_repo, "push_interval_s": 1, "min_commit_interval_s": 0}
    return spec


def toy_job(jobs_dir: Path, **kwargs: Any) -> JobSpec:
    """Write ``jobs_dir/toy.yaml`` (JSON is YAML) and return it as runner loads it (with
    ``RUNNER_JOBS_DIR`` pointing there for the call)."""
    import os

    jobs_dir.mkdir(parents=True, exist_ok=True)
    (jobs_dir / "toy.yaml").write_text(json.dumps(toy_spec_dict(**kwargs), indent=1))
    old = os.environ.get("RUNNER_JOBS_DIR")
    os.environ["RUNNER_JOBS_DIR"] = str(jobs_dir)
    try:
        return load_job("toy")
    finally:
        if old is None:
            os.environ.pop("RUNNER_JOBS_DIR", None)
        else:
            os.environ["RUNNER_JOBS_DIR"] = old


def toy_dataset(path: Path, *, files: int = 8, kib: int = 256) -> Path:
    """A folder of ``files`` random files of ``kib`` KiB each (plus a sub-folder)."""
    import os

    (path / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        folder = path / "sub" if i % 2 else path
        (folder / f"part-{i:03d}.bin").write_bytes(os.urandom(kib * 1024))
    return path

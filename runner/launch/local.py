"""Run a job on this machine: pick the device, find or make its data, start it.

This is what ``./train.sh JOB`` and ``runner train JOB`` do. The job's
``embedded`` profile is used when it has one (it needs no image, dataset or
account). The training process runs under the agent
(:mod:`runner.agent.supervisor`), in its own process group with the run folder
in ``RUNNER_RUN_DIR``, so a re-run with the same folder resumes, and the agent
restarts it from its newest complete checkpoint when it freezes or crashes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runner.constants import (
    ENV_DATA_DIR,
    ENV_DATASET_DIR,
    ENV_DEVICE,
    ENV_RUNS_DIR,
)
from runner.errors import DatasetError, DeviceError, RunnerError, SecretError
from runner.spec import JobSpec

if TYPE_CHECKING:
    from runner.agent.supervisor import SupervisorResult
    from runner.rundir import Event
    from runner.sampling.nvml import GpuSnapshot

Say = Callable[[str], None]


@dataclass(frozen=True)
class DeviceChoice:
    """Where the training process will run, and the environment that pins it there."""

    kind: str  # "cpu" or "cuda"
    description: str
    env: dict[str, str] = field(default_factory=dict)


def _visible_gpus() -> tuple[list[GpuSnapshot], str]:
    """GPUs that can run a job now (not lost), and why there are none (no driver is normal)."""
    from runner.sampling.nvml import open_nvml

    with open_nvml() as nvml:
        snaps = nvml.sample()
        reason = nvml.reason
    usable = [s for s in snaps if not s.lost and s.uuid]
    if snaps and not usable:
        reason = "; ".join(f"GPU {s.index} is lost ({s.lost_reason})" for s in snaps if s.lost)
        reason = reason or "NVML gives no GPU UUIDs"
    return usable, reason


def visible_gpu_count() -> int:
    """How many usable GPUs NVML sees here (0 without a driver)."""
    return len(_visible_gpus()[0])


def pick_device(spec: JobSpec, requested: str = "auto") -> DeviceChoice:
    """The best free GPU when NVML sees one, else the CPU when the job allows it.

    The GPUs are chosen as ``runner gpus --pick N`` chooses them (the users'
    score; ties to the higher index) and exported by UUID with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so the process trains on the GPU that was
    picked, whatever CUDA's own numbering.
    """
    if requested not in {"auto", "cpu", "cuda"}:
        raise DeviceError(f"unknown device {requested!r}: use auto, cpu or cuda")
    cpu = DeviceChoice("cpu", "CPU", {ENV_DEVICE: "cpu", "CUDA_VISIBLE_DEVICES": ""})
    if requested == "cpu":
        return cpu
    gpus, reason = _visible_gpus()
    wanted = max(1, spec.resources.gpus)
    if len(gpus) < wanted:
        if requested == "cuda" or spec.resources.gpus > 0:
            others = [p for p in spec.profiles if p != spec.profile]
            pick = f" (--profile {' or '.join(others)})" if others else ""
            raise DeviceError(
                f"{spec.name} needs {wanted} GPU(s) and {len(gpus)} are visible ({reason}); "
                f"run it on a rented GPU or pick a profile that runs on the CPU{pick}"
            )
        return DeviceChoice("cpu", f"CPU ({reason})", cpu.env)
    from runner.sampling.select import select

    selection = select(gpus, wanted)
    names = ", ".join(f"GPU {g.index} {g.name}" for g in selection.chosen)
    return DeviceChoice("cuda", names, {ENV_DEVICE: "cuda", **selection.env})


def runs_dir() -> Path:
    return Path(os.environ.get(ENV_RUNS_DIR) or Path.cwd() / "runs")


def data_dir() -> Path:
    return Path(os.environ.get(ENV_DATA_DIR) or Path.cwd() / "data")


def check_dataset(layout: str | None, path: Path) -> None:
    """Raise :class:`DatasetError`, naming the first problems, unless ``path`` fits ``layout``."""
    if not path.is_dir():
        raise DatasetError(f"dataset folder {path} does not exist; pass --data PATH")
    if layout == "franka":
        from runner.data.franka import check_franka

        problems = check_franka(path).problems
    elif layout == "lerobot":
        from runner.data.lerobot import check_lerobot

        problems = check_lerobot(path).problems
    else:
        return  # no checker for this layout yet: the job itself will say
    if problems:
        shown = "; ".join(f"{p.where}: {p.message}" for p in problems[:3])
        more = len(problems) - 3
        tail = f" (+{more} more)" if more > 0 else ""
        raise DatasetError(
            f"dataset {path} is not a valid {layout} dataset: {shown}{tail}; "
            f"see `runner data check {layout_job_hint(layout)} {path}`"
        )


def layout_job_hint(layout: str) -> str:
    return {"franka": "franka_cube_stack", "lerobot": "act_so101"}.get(layout, "JOB")


def resolve_dataset(spec: JobSpec, given: Path | None, say: Say) -> Path | None:
    """The dataset folder the job will read, synthesising one when the job allows it."""
    ds = spec.dataset
    if given is None and os.environ.get(ENV_DATASET_DIR) and ds.env == ENV_DATASET_DIR:
        given = Path(os.environ[ENV_DATASET_DIR])
    if given is not None:
        check_dataset(ds.layout, given)
        say(f"dataset: {given}")
        return given.resolve()
    if ds.source == "none":
        return None
    if ds.source == "local":
        assert ds.path is not None
        check_dataset(ds.layout, Path(ds.path))
        say(f"dataset: {ds.path}")
        return Path(ds.path)
    if ds.source == "hub":
        raise DatasetError(
            f"{spec.name} reads {ds.repo}@{ds.revision} from the Hub, which a local run does not "
            "fetch; pass --data PATH to a local copy"
        )
    synth = ds.synthetic
    assert synth is not None
    path = data_dir() / f"{spec.name}_synthetic"
    if path.is_dir():
        check_dataset(ds.layout, path)
        say(f"dataset: synthetic, reusing {path}")
        return path.resolve()
    if ds.layout == "franka":
        from runner.data.franka import synth_franka as make
    elif ds.layout == "lerobot":
        from runner.data.lerobot import synth_lerobot as make  # type: ignore[assignment]
    else:
        raise DatasetError(f"no synthetic dataset for layout {ds.layout!r}; pass --data PATH")
    say(
        f"no dataset configured: synthesising {synth.episodes} episodes x {synth.steps} steps "
        f"({synth.image_size}px, {ds.layout} layout) at {path}"
    )
    make(path, episodes=synth.episodes, steps=synth.steps, image_size=synth.image_size)
    return path.resolve()


def check_secrets(spec: JobSpec) -> None:
    """Every required secret must be in the environment (by name; values are never shown)."""
    missing = [s.name for s in spec.secrets if s.required and not os.environ.get(s.name)]
    if missing:
        raise SecretError(
            f"{spec.name} needs {', '.join(missing)} in your environment; "
            f"export {missing[0]}=... first (never put it in the job file)"
        )


def supervise_local(
    spec: JobSpec,
    argv: list[str],
    extra_env: dict[str, str],
    *,
    run_dir: Path,
    dataset: Path | None,
    device: DeviceChoice,
    on_event: Callable[[Event], None] | None = None,
    run_id: str | None = None,
    resume: bool = False,
    forced: tuple[str, ...] = (),
) -> SupervisorResult:
    """Run ``argv`` (from :meth:`JobSpec.apply_overrides`) here, under the agent, and wait.

    ``./train.sh``, ``runner train`` and ``runner launch --local`` all come here, and this
    takes the path every backend's host side takes: ``launch.json`` is written to the run
    folder and :func:`runner.launch.hostside.start_run` runs it, in this process. The agent
    (:class:`runner.agent.supervisor.Supervisor`) starts the command in its own session with
    the die-with-parent guard, forwards Ctrl-C and SIGTERM, keeps its output in
    ``RUN_DIR/logs/``, watches it with the job's watchdog and restarts it from its newest
    complete checkpoint within the job's restart policy. Raises :class:`RunnerError` when it
    cannot start at all.
    """
    from runner.launch.hostside import make_launch, start_run

    if spec.image is not None and spec.profile is None:
        raise RunnerError(
            f"{spec.name} runs in its Docker image {spec.image}; launch it with --docker or on "
            "a rented host, or pick a profile that runs here"
        )
    if "secrets" not in forced:  # pre-flight said so, and the user chose --force
        check_secrets(spec)
    launch = make_launch(
        spec,
        backend="local",
        argv=argv,
        env={**extra_env, **device.env},
        run_id=run_id,
        dataset=str(dataset) if dataset is not None else None,
        resume=resume,
        forced=forced,
    )
    launch.write(run_dir)
    return start_run(run_dir, on_event=on_event)


def resume_from_hub(spec: JobSpec, run_dir: Path, say: Say) -> int | None:
    """Pull the job's newest pushed checkpoint when ``run_dir`` has none; its step, or None.

    Only for the harness layout (the trainer finds a pulled checkpoint as its
    newest complete one). A run folder with a checkpoint at least as new, a job
    without a Hub repo, or a repo with nothing pushed yet is not an error.
    """
    if spec.hub is None or spec.checkpoints.layout != "harness":
        return None
    from runner.harness import latest_checkpoint
    from runner.hub.client import HubClient, HubError
    from runner.hub.pusher import pull_latest

    folder = Path(spec.checkpoints.path)
    dest = folder if folder.is_absolute() else run_dir / folder
    local = latest_checkpoint(dest)
    try:
        pulled = pull_latest(
            HubClient.from_env(), spec.hub.repo, dest, repo_type=spec.hub.repo_type
        )
    except HubError as err:
        raise RunnerError(
            f"cannot look for pushed checkpoints of {spec.hub.repo}: {err}; "
            "pass --no-hub-resume to train without them"
        ) from None
    if pulled is None:
        return None
    step = latest_checkpoint(dest)
    newest = step.step if step is not None else None
    where = f"local newest is step {local.step}" if local is not None else "none here"
    say(f"resume: pulled step {newest} from the Hub ({spec.hub.repo}; {where})")
    return newest

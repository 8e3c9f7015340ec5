"""The host side of a launch: ``runner agent start RUN_DIR`` runs what ``launch.json`` says.

The same entry serves every backend, so a run behaves the same wherever it is: in the
job's container (Docker), on a rented host (started detached over SSH), or here. It reads
:class:`runner.rundir.Launch`, pulls the newest pushed checkpoint first when asked to
resume, and runs the training command under the agent (:class:`~runner.agent.supervisor.
Supervisor`) with the secrets it was handed (never read from, or written to, disk).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import RunnerError
from runner.rundir import LAUNCH_FILE, Backend, Event, Launch, read_launch
from runner.spec import JobSpec

if TYPE_CHECKING:
    from runner.agent.supervisor import SupervisorResult

__all__ = ["load_launch", "make_launch", "start_run"]


def make_launch(
    spec: JobSpec,
    *,
    backend: Backend,
    argv: Sequence[str],
    env: Mapping[str, str],
    run_id: str | None = None,
    **fields: Any,
) -> Launch:
    """The launch record of ``spec`` run as ``argv``: the job's own environment first, then
    ``env`` (overrides, device), secrets by name; ``fields`` fill the rest of :class:`Launch`."""
    from runner.launch.runs import new_run_id

    return Launch(
        run_id=run_id or new_run_id(spec.name),
        job=spec.name,
        backend=backend,
        spec=spec.model_dump(mode="json"),
        argv=tuple(argv),
        env={**spec.env, **env},
        profile=spec.profile,
        secret_names=tuple(spec.secret_names),
        workdir=spec.workdir,
        **fields,
    )


def load_launch(run_dir: Path) -> tuple[Launch, JobSpec]:
    """The run's launch record and its job spec; :class:`RunnerError` when either is unusable."""
    launch = read_launch(run_dir)
    if launch is None:
        raise RunnerError(
            f"{run_dir / LAUNCH_FILE} is missing or unreadable; start runs with `runner launch`"
        )
    try:
        spec = JobSpec.model_validate(dict(launch.spec))
    except ValueError as exc:
        raise RunnerError(
            f"{run_dir / LAUNCH_FILE}: the job spec in it is invalid: {exc}"
        ) from None
    return launch, spec


def start_run(
    run_dir: Path,
    *,
    secrets: Mapping[str, str] | None = None,
    say: Callable[[str], None] = lambda line: None,
    on_event: Callable[[Event], None] | None = None,
) -> SupervisorResult:
    """Run the launch in ``run_dir`` under the agent until it ends; see the module docstring.

    ``secrets`` join this process's environment (the pusher reads ``HF_TOKEN`` from it, the
    training process inherits it); a container started with them has them there already.
    """
    import os

    from runner.agent.supervisor import Supervisor
    from runner.launch.local import resume_from_hub

    run_dir = run_dir.resolve()
    launch, spec = load_launch(run_dir)
    os.environ.update(secrets or {})
    if launch.resume:
        resume_from_hub(spec, run_dir, say)
    workdir = launch.workdir or spec.workdir
    supervisor = Supervisor(
        list(launch.argv),
        run_dir=run_dir,
        job=spec,
        extra_env=dict(launch.env),
        cwd=workdir if workdir and Path(workdir).is_dir() else None,
        dataset=launch.dataset,
        on_event=on_event,
    )
    return supervisor.run()

"""``runner launch JOB``: check, then start a job here, in its image, or on a rented host.

``runner runs`` lists what was launched and how each run stands.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from runner.cli._app import app as display

if TYPE_CHECKING:
    from runner.launch.runs import RunRecord
    from runner.rundir import Backend
    from runner.spec import JobSpec


def launch(
    job: str = typer.Argument(..., help="Job name, e.g. franka_cube_stack."),
    overrides: list[str] = typer.Argument(
        None, help="key=value overrides after --, in the job's style (Hydra, flags or env)."
    ),
    local: bool = typer.Option(False, "--local", help="Run here, as a process under the agent."),
    docker: bool = typer.Option(False, "--docker", help="Run the job's image on the local engine."),
    on: int | None = typer.Option(
        None, "--on", metavar="INSTANCE_ID", help="Use this rented instance instead of renting."
    ),
    profile: str | None = typer.Option(
        None,
        "--profile",
        "-p",
        help="Job profile [default: --local: embedded when offered; --docker: embedded when "
        "no GPU is visible; rented: none].",
    ),
    hub: str | None = typer.Option(
        None,
        "--hub",
        metavar="OWNER/NAME",
        help="Push the checkpoints to this Hub repo [default: the job's hub.repo, if any]; a "
        "rented host is ended only once they are there.",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Pull the newest pushed checkpoint first and continue from it."
    ),
    force: bool = typer.Option(
        False, "--force", help="Launch although pre-flight items fail (recorded with the run)."
    ),
    data: Path | None = typer.Option(None, "--data", help="Local dataset folder to use (or sync)."),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run folder for --local/--docker [default: runs/RUN_ID]."
    ),
    disk: float | None = typer.Option(
        None, "--disk", min=8, metavar="GB", help="Disk to rent [default: the job's]."
    ),
    gpu: str | None = typer.Option(None, "--gpu", metavar="NAME", help="GPU model to rent."),
    max_price: float | None = typer.Option(
        None, "--max-price", min=0, metavar="$/H", help="Most dollars per hour to rent at."
    ),
    max_hours: float | None = typer.Option(
        None, "--max-hours", min=0, metavar="H", help="Stop after this long (final push first)."
    ),
    max_cost: float | None = typer.Option(
        None, "--max-cost", min=0, metavar="$", help="Stop at this cost (final push first)."
    ),
    end: str | None = typer.Option(
        None,
        "--end",
        metavar="POLICY",
        help="What becomes of a rented host once the run ended and its checkpoints are on the "
        "Hub: destroy, stop or keep [default: the job's on_end, destroy].",
    ),
) -> None:
    """Check JOB before anything is started or paid for, then start it under the agent.

    No backend flag rents a host for the job's resources (as `runner rent --job JOB`),
    verifies it, brings the dataset, starts the agent detached and returns the run id.
    """
    from runner.errors import UsageError
    from runner.launch.runs import Runs, new_run_id

    chosen = [name for name, on_ in (("--local", local), ("--docker", docker)) if on_]
    if on is not None:
        chosen.append("--on")
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)}: choose one backend")
    if end is not None and end not in ("destroy", "stop", "keep"):
        raise UsageError(f"--end {end!r}: use destroy, stop or keep")
    backend: Backend = "local" if local else "docker" if docker else "vast"
    if backend != "vast":
        for flag, value in (
            ("--disk", disk),
            ("--gpu", gpu),
            ("--max-price", max_price),
            ("--max-cost", max_cost),
        ):
            if value is not None:
                raise UsageError(f"{flag} is for rented hosts; drop it or drop --{backend}")
    spec, chosen_profile, why = _spec_for(job, profile, backend)
    if hub is not None:
        spec = spec.with_hub(hub)
    display.info(f"job: {job}" + (f" (profile {chosen_profile}: {why})" if chosen_profile else ""))
    argv, override_env = spec.apply_overrides(overrides or [])
    run_id = new_run_id(job)
    runs = Runs()

    if backend == "vast":
        _launch_vast(
            spec,
            argv=argv,
            override_env=override_env,
            run_id=run_id,
            runs=runs,
            instance_id=on,
            data=data,
            resume=resume,
            force=force,
            disk=disk,
            gpu=gpu,
            max_price=max_price,
            max_hours=max_hours,
            max_cost=max_cost,
            end=end,
        )
        return
    folder = (run_dir or _runs_dir() / run_id).resolve()
    _launch_here(
        spec,
        backend=backend,
        argv=argv,
        override_env=override_env,
        run_id=run_id,
        runs=runs,
        folder=folder,
        data=data,
        resume=resume,
        force=force,
        max_hours=max_hours,
    )


def _runs_dir() -> Path:
    from runner.launch.local import runs_dir

    return runs_dir()


def _spec_for(job: str, profile: str | None, backend: Backend) -> tuple[JobSpec, str | None, str]:
    """The job resolved with the profile this backend runs, and why that profile."""
    from runner.spec import load_job, local_profile

    spec = load_job(job)
    if profile is not None:
        return load_job(job, profile=profile), profile, "asked for"
    embedded = local_profile(spec)
    if embedded is None or backend == "vast":
        return spec, None, ""
    if backend == "local":
        return load_job(job, profile=embedded), embedded, "what runs on this machine"
    from runner.launch.local import visible_gpu_count

    if visible_gpu_count() == 0:
        return load_job(job, profile=embedded), embedded, "no GPU is visible here"
    return spec, None, ""


def _secrets(spec: JobSpec) -> dict[str, str]:
    """The values of the secrets the job names, from this environment (never shown)."""
    return {s.name: os.environ[s.name] for s in spec.secrets if os.environ.get(s.name)}


def _preflight_or_stop(report: Any, *, force: bool) -> tuple[str, ...]:
    """Show the checklist; stop on a failing item unless ``--force`` (returns what was forced)."""
    from runner.cli._checklist import show_checklist
    from runner.errors import PreflightError

    show_checklist(report)
    failed = tuple(item.key for item in report.failed)
    if not failed:
        return ()
    if force:
        display.warn(f"pre-flight: --force launches despite {', '.join(failed)} (recorded)")
        return failed
    first = report.failed[0]
    more = f" (+{len(failed) - 1} more above)" if len(failed) > 1 else ""
    raise PreflightError(f"pre-flight: {first.key}: {first.detail}; {first.fix}{more}")


def _launch_here(
    spec: JobSpec,
    *,
    backend: Backend,
    argv: list[str],
    override_env: dict[str, str],
    run_id: str,
    runs: Any,
    folder: Path,
    data: Path | None,
    resume: bool,
    force: bool,
    max_hours: float | None,
) -> None:
    from runner.errors import RunnerError
    from runner.launch import preflight
    from runner.launch.local import pick_device, resolve_dataset
    from runner.launch.runs import RunRecord, judge, read_run_files

    device = None
    if backend == "local":
        device = pick_device(spec, "auto")
        display.info(f"device: {device.description}")
    dataset = resolve_dataset(spec, data, display.info)
    report = preflight.check(
        spec,
        backend=backend,
        dataset=dataset,
        run_dir=folder,
        device=device,
        argv=argv,
        job_env=override_env,
    )
    forced = _preflight_or_stop(report, force=force)
    runs.add(
        RunRecord(
            run_id=run_id,
            job=spec.name,
            profile=spec.profile,
            backend=backend,
            run_dir=str(folder),
            started=time.time(),
            state="launching",
            updated=time.time(),
            hub_repo=spec.hub.repo if spec.hub else None,
            forced=",".join(forced) or None,
        )
    )
    display.info(f"run: {run_id} (folder {folder})")
    if backend == "local":
        from runner.cli.agent import event_printer
        from runner.launch.local import supervise_local

        assert device is not None
        runs.update(run_id, state="running")
        result = supervise_local(
            spec,
            argv,
            override_env,
            run_dir=folder,
            dataset=dataset,
            device=device,
            on_event=event_printer(everything=False),
            run_id=run_id,
            resume=resume,
            forced=forced,
        )
        code, state, summary = result.exit_code, result.state, result.summary
    else:
        from runner.launch.docker import run_docker
        from runner.launch.hostside import make_launch

        launch = make_launch(
            spec,
            backend=backend,
            argv=argv,
            env=override_env,
            run_id=run_id,
            dataset=str(dataset) if dataset is not None else None,
            resume=resume,
            forced=forced,
            max_hours=max_hours,
        )
        outcome = run_docker(launch, folder, secrets=_secrets(spec), say=display.info)
        runs.update(run_id, container=outcome.container)
        code, state, summary = outcome.exit_code, outcome.state, outcome.summary
    # The step and pushes as the run folder has them at the end, then the agent's own word.
    ended = runs.get(run_id)
    seen = judge(ended, read_run_files(ended), time.time()) if ended is not None else {}
    runs.update(run_id, **{**seen, "state": state, "exit_code": code, "summary": summary})
    if code != 0:
        raise RunnerError(f"{spec.name} {summary} (run {run_id}, folder {folder})", exit_code=code)
    if backend == "local":  # in a container the agent has said it on the container's output
        display.info(f"agent: {summary}")
    display.success(f"run {run_id} finished; folder {folder}")


def _launch_vast(
    spec: JobSpec,
    *,
    argv: list[str],
    override_env: dict[str, str],
    run_id: str,
    runs: Any,
    instance_id: int | None,
    data: Path | None,
    resume: bool,
    force: bool,
    disk: float | None,
    gpu: str | None,
    max_price: float | None,
    max_hours: float | None,
    max_cost: float | None,
    end: str | None,
) -> None:
    from dataclasses import replace

    from runner.cloud.offers import Requirements
    from runner.launch import preflight
    from runner.launch.hostside import make_launch
    from runner.launch.local import resolve_dataset
    from runner.launch.remote import launch_vast, rentable

    req = Requirements.from_spec(spec, disk_gb=disk, gpu_name=gpu, max_price=max_price)
    req = rentable(req, spec.name, display.info)  # before pre-flight: judge what is rented
    dataset = None if spec.dataset.source == "hub" else resolve_dataset(spec, data, display.info)
    report = preflight.check(
        spec,
        backend="vast",
        dataset=dataset,
        disk_gb=req.disk_gb,
        argv=argv,
        job_env=override_env,
    )
    forced = _preflight_or_stop(report, force=force)
    launch = make_launch(
        spec,
        backend="vast",
        argv=argv,
        env=override_env,
        run_id=run_id,
        resume=resume,
        forced=forced,
        instance_id=instance_id,
        max_hours=max_hours,
        max_cost=max_cost,
        end_policy=end or spec.on_end,
    )
    record = launch_vast(
        launch,
        req=replace(req),
        dataset=dataset,
        secrets=_secrets(spec),
        runs=runs,
        say=display.info,
    )
    display.success(f"run {record.run_id} started on instance {record.instance_id}")
    display.raw(record.run_id)


def runs(
    as_json: bool = typer.Option(False, "--json", help="Every run as JSON."),
    all_: bool = typer.Option(False, "--all", "-a", help="Ended runs too [default: live only]."),
) -> None:
    """Runs launched from this machine: where, since when, state, last pushed step, cost."""
    import json
    from dataclasses import asdict

    from runner.launch.runs import Runs, refresh

    records = [refresh(r) for r in Runs().all()]
    shown = records if all_ else [r for r in records if r.live] or records[-5:]
    if as_json:
        display.raw(json.dumps([asdict(r) for r in shown], indent=2))
        return
    if not shown:
        display.info("no runs yet: start one with `runner launch JOB`")
        return
    display.raw(_runs_table(shown))


def _runs_table(records: list[RunRecord]) -> str:
    from runner.cli.cloud import _duration, _table

    now = time.time()
    rows = [["RUN", "JOB", "BACKEND", "WHERE", "AGE", "STATE", "STEP", "PUSHED", "COST"]]
    for r in records:
        where = f"instance {r.instance_id}" if r.instance_id else r.run_dir
        cost = r.cost_at(now)
        rows.append(
            [
                r.run_id,
                r.job,
                r.backend,
                where,
                _duration(now - r.started),
                r.state,
                "-" if r.step is None else str(r.step),
                "-" if r.last_pushed_step is None else str(r.last_pushed_step),
                "-" if cost is None else f"${cost:.2f}",
            ]
        )
    return _table(rows)

"""``runner train JOB [key=value ...]``: run a job on this machine (what ./train.sh calls)."""

from __future__ import annotations

from pathlib import Path

import typer

from runner.cli._app import app as display


def train(
    job: str = typer.Argument(..., help="Job name, e.g. franka_cube_stack."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides passed to the job."),
    profile: str | None = typer.Option(
        None, "--profile", "-p", help="Profile to run [default: embedded when the job has one]."
    ),
    data: Path | None = typer.Option(None, "--data", help="Dataset folder to use."),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run folder [default: runs/JOB]; the same folder resumes."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    hub_resume: bool = typer.Option(
        True,
        "--hub-resume/--no-hub-resume",
        help="Pull the newest pushed checkpoint first when the run folder has none newer.",
    ),
) -> None:
    """Run JOB here under the agent: best free GPU (else CPU), its data, resumable, watched."""
    from runner.cli.agent import event_printer
    from runner.errors import RunnerError
    from runner.launch.local import (
        pick_device,
        resolve_dataset,
        resume_from_hub,
        runs_dir,
        supervise_local,
    )
    from runner.spec import load_job, local_profile

    spec = load_job(job)
    chosen_profile = profile if profile is not None else local_profile(spec)
    if chosen_profile is not None:
        spec = load_job(job, profile=chosen_profile)
    elif spec.image is not None:
        offered = (
            f"; its profiles: {', '.join(spec.profiles)} (--profile P)" if spec.profiles else ""
        )
        raise RunnerError(
            f"{job} runs only in its Docker image {spec.image} and has no embedded profile; "
            f"start it on a GPU host with its image{offered}"
        )
    argv, extra_env = spec.apply_overrides(overrides or [])
    chosen = pick_device(spec, device)
    display.info(f"job: {job}" + (f" (profile {chosen_profile})" if chosen_profile else ""))
    display.info(f"device: {chosen.description}")
    dataset = resolve_dataset(spec, data, display.info)
    folder = run_dir or runs_dir() / job
    display.info(f"run folder: {folder}")
    if hub_resume:
        resume_from_hub(spec, folder, display.info)
    result = supervise_local(
        spec,
        argv,
        extra_env,
        run_dir=folder,
        dataset=dataset,
        device=chosen,
        on_event=event_printer(everything=False),
    )
    code = result.exit_code
    if code == 2 and result.state == "failed":
        # The job rejected its arguments and said why on its own line.
        raise typer.Exit(2)
    if result.state == "stopped":
        raise RunnerError(f"{job} {result.summary} (run folder: {folder})", exit_code=code)
    if code != 0:
        raise RunnerError(f"{job} exited with code {code} (run folder: {folder})", exit_code=code)
    if result.restarts:
        display.info(f"agent: {result.summary}")

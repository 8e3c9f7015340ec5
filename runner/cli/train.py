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
) -> None:
    """Run JOB here: best free GPU (else CPU), its data (synthesised if none), resumable."""
    from runner.errors import RunnerError
    from runner.local import pick_device, resolve_dataset, run_local, runs_dir
    from runner.spec import load_job, local_profile

    spec = load_job(job)
    chosen_profile = profile if profile is not None else local_profile(spec)
    if chosen_profile is not None:
        spec = load_job(job, profile=chosen_profile)
    elif spec.image is not None:
        raise RunnerError(
            f"{job} runs only in its Docker image {spec.image} and has no embedded profile; "
            "start it on a GPU host with its image"
        )
    argv, extra_env = spec.apply_overrides(overrides or [])
    chosen = pick_device(spec, device)
    display.info(f"job: {job}" + (f" (profile {chosen_profile})" if chosen_profile else ""))
    display.info(f"device: {chosen.description}")
    dataset = resolve_dataset(spec, data, display.info)
    folder = run_dir or runs_dir() / job
    display.info(f"run folder: {folder}")
    code = run_local(spec, argv, extra_env, run_dir=folder, dataset=dataset, device=chosen)
    if code == 2:
        # The job rejected its arguments and said why on its own line.
        raise typer.Exit(2)
    if code != 0:
        raise RunnerError(f"{job} exited with code {code} (run folder: {folder})", exit_code=code)

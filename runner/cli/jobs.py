"""``runner jobs``: the job catalog."""

from __future__ import annotations

import json

import typer

from runner.cli._app import app as display

app = typer.Typer(help="List the jobs in jobs/ and show one resolved.", no_args_is_help=False)


@app.callback(invoke_without_command=True)
def jobs(ctx: typer.Context) -> None:
    """List every job: name, GPUs, image and description."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from runner.errors import SpecError
    from runner.spec import load_all

    specs, errors = load_all()
    if not specs and not errors:
        raise SpecError("no job files found; add jobs/NAME.yaml or set RUNNER_JOBS_DIR")
    table = Table(box=None, pad_edge=False)
    table.add_column("job", no_wrap=True)
    table.add_column("gpus", no_wrap=True)
    table.add_column("image", no_wrap=True)
    table.add_column("profiles", no_wrap=True)
    table.add_column("description", no_wrap=True, overflow="ellipsis", max_width=60)
    for spec in specs:
        image = spec.image or "(host)"
        table.add_row(
            spec.name, str(spec.resources.gpus), image, ",".join(spec.profiles), spec.description
        )
    display.print(table)
    for err in errors:
        display.warn(str(err))
    if errors:
        raise SpecError(f"{len(errors)} job file(s) are invalid; fix them or move them out")


@app.command("show")
def show(
    name: str = typer.Argument(..., help="Job name (a file jobs/NAME.yaml)."),
    profile: str | None = typer.Option(None, "--profile", "-p", help="Merge this profile in."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
) -> None:
    """Print the resolved spec of one job (base plus profile, defaults filled in)."""
    import yaml

    from runner.spec import load_job

    spec = load_job(name, profile=profile)
    data = spec.model_dump(mode="json")
    if as_json:
        display.raw(json.dumps(data, indent=2))
    else:
        display.raw(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip())

"""``runner agent run``: a training command under the agent (what ``runner train`` does too)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from runner.cli._app import app as display

if TYPE_CHECKING:
    from runner.rundir import Event

_EPILOG = (
    "Exit codes: 0 finished; the command's own code (128+N for signal N) when it failed by "
    "itself and was not restarted; 3 the agent stopped the run; 4 the host is bad (XID, ECC, "
    "GPU lost): move the job. Everything is in RUN_DIR: events.jsonl, status.json, "
    "logs/attempt-N.log, stacks/."
)

app = typer.Typer(
    help="The agent beside a training run: samples, detects failures, dumps stacks, restarts.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

#: Lifecycle events that are routine in a healthy run.
_FINAL = frozenset({"finished", "failed", "stopped"})


def event_printer(*, everything: bool) -> Callable[[Event], None]:
    """Print the agent's events on stderr, one line each (not the final one: the caller says it).

    Without ``everything``, the routine lines of a healthy run (the first
    start, a clean exit) are left out.
    """
    first: list[int] = []

    def show(event: Event) -> None:
        if event.kind in _FINAL:
            return
        if event.kind == "started":
            first.append(event.attempt)
            if not everything and len(first) == 1:
                return
        if not everything and event.kind == "exited" and event.severity == "info":
            return
        line = f"agent: {event.kind}: {event.message}"
        if event.severity == "info":
            display.info(line)
        else:
            display.warn(line)

    return show


@app.command(
    "run",
    epilog=_EPILOG,
    context_settings={"allow_interspersed_args": False},
)
def run(
    command: list[str] = typer.Argument(
        None, help="The training command, after --; default: the job's own command."
    ),
    job: str | None = typer.Option(
        None, "--job", "-j", help="Job whose spec gives thresholds, pattern and restart policy."
    ),
    profile: str | None = typer.Option(None, "--profile", "-p", help="Profile of the job."),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run folder [default: runs/JOB]: events, status, logs, stacks."
    ),
    dataset: Path | None = typer.Option(
        None, "--dataset", help="Dataset folder: passed to the job and watched as a disk."
    ),
) -> None:
    """Run COMMAND (or the job's command) under the agent until it finishes or is stopped."""
    from runner.agent.supervisor import Supervisor
    from runner.errors import RunnerError, UsageError
    from runner.launch.local import runs_dir
    from runner.spec import load_job

    spec = load_job(job, profile=profile) if job else None
    if profile and spec is None:
        raise UsageError("--profile needs --job")
    extra_env: dict[str, str] = dict(spec.env) if spec else {}
    argv = list(command or [])
    if not argv:
        if spec is None:
            raise UsageError("nothing to run: pass --job NAME or a command after --")
        argv, override_env = spec.apply_overrides([])
        extra_env.update(override_env)
    if run_dir is None:
        if spec is None:
            raise UsageError("pass --run-dir DIR (or --job NAME for runs/NAME)")
        run_dir = runs_dir() / spec.name
    display.info(f"agent: run folder {run_dir}")
    supervisor = Supervisor(
        argv,
        run_dir=run_dir,
        job=spec,
        extra_env=extra_env,
        cwd=spec.workdir if spec and spec.workdir and Path(spec.workdir).is_dir() else None,
        dataset=dataset,
        on_event=event_printer(everything=True),
    )
    result = supervisor.run()
    if result.exit_code != 0:
        raise RunnerError(result.summary, exit_code=result.exit_code)
    display.info(f"agent: {result.summary}")


@app.command("start", epilog=_EPILOG)
def start(
    run_dir: Path = typer.Argument(
        ..., help="Run folder with the launch.json `runner launch` wrote."
    ),
    detach: bool = typer.Option(
        False,
        "--detach",
        help="Run in the background, out of this session (survives logout and SSH drops); "
        "output in RUN_DIR/agent.log, pid in RUN_DIR/agent.pid. Prints the pid once it is up.",
    ),
    secrets_stdin: bool = typer.Option(
        False,
        "--secrets-stdin",
        help='Read {"secrets": {NAME: VALUE}, "env": {NAME: VALUE}} as JSON from standard '
        "input (secrets never in argv or on disk).",
    ),
) -> None:
    """Run what RUN_DIR/launch.json says under the agent (what `runner launch` starts on a host)."""
    import sys

    from runner.errors import RunnerError
    from runner.launch.hostside import read_stdin_payload, start_detached, start_run

    secrets: dict[str, str] = {}
    env: dict[str, str] = {}
    if secrets_stdin:
        secrets, env = read_stdin_payload(sys.stdin)
    if detach:
        pid = start_detached(run_dir, secrets=secrets, env=env)
        display.info(f"agent: started in the background, pid {pid}; log {run_dir}/agent.log")
        display.raw(str(pid))
        return
    import os

    os.environ.update(env)
    result = start_run(
        run_dir, secrets=secrets, say=display.info, on_event=event_printer(everything=True)
    )
    if result.exit_code != 0:
        raise RunnerError(result.summary, exit_code=result.exit_code)
    display.info(f"agent: {result.summary}")

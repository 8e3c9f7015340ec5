"""The ``runner`` command line.

Each command group lives in its own module, parses its arguments, calls one
library function and reports through :data:`runner.cli._app.app`. Heavy
imports (torch, docker, huggingface_hub, vastai) stay inside command bodies so
``runner --help`` is instant.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import typer

from runner import __version__
from runner.cli import agent as agent_cmd
from runner.cli import cloud as cloud_cmd
from runner.cli import data as data_cmd
from runner.cli import gpus as gpus_cmd
from runner.cli import hub as hub_cmd
from runner.cli import image as image_cmd
from runner.cli import jobs as jobs_cmd
from runner.cli import launch as launch_cmd
from runner.cli import report as report_cmd
from runner.cli import train as train_cmd
from runner.cli import wandb as wandb_cmd
from runner.cli import watch as watch_cmd
from runner.cli._app import app as display
from runner.constants import ENV_DEBUG, ENV_HELP
from runner.errors import RunnerError

_EPILOG = "Environment: " + "; ".join(f"{k}: {v}" for k, v in ENV_HELP.items())

app = typer.Typer(
    name="runner",
    help="Run deep-learning training jobs on rented GPUs and workstations without losing days.",
    epilog=_EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(jobs_cmd.app, name="jobs")
app.add_typer(data_cmd.app, name="data")
app.add_typer(gpus_cmd.app, name="gpus")
app.add_typer(agent_cmd.app, name="agent")
app.command("train", context_settings={"allow_extra_args": False})(train_cmd.train)
app.command("push")(hub_cmd.push)
app.command("checkpoints")(hub_cmd.checkpoints)
app.command("pull")(hub_cmd.pull)
app.add_typer(hub_cmd.app, name="hub")
app.command("offers", epilog=cloud_cmd.ENV_HELP)(cloud_cmd.offers)
app.command("rent", epilog=cloud_cmd.ENV_HELP)(cloud_cmd.rent)
app.add_typer(cloud_cmd.storage_app, name="storage")
app.command("launch", epilog=cloud_cmd.ENV_HELP)(launch_cmd.launch)
app.command("runs")(launch_cmd.runs)
app.command("watch")(watch_cmd.watch)
app.command("logs")(watch_cmd.logs)
app.command("report")(report_cmd.report)
app.command("wandb-sync")(wandb_cmd.wandb_sync)
app.add_typer(image_cmd.app, name="image")
app.command("ps", epilog=cloud_cmd.ENV_HELP)(cloud_cmd.ps)
app.command("down", epilog=cloud_cmd.ENV_HELP)(cloud_cmd.down)


def _version(value: bool) -> None:
    if value:
        display.raw(f"runner {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Run deep-learning training jobs on rented GPUs and workstations without losing days."""


def _click_exceptions(name: str) -> tuple[type[BaseException], ...]:
    """``name`` from typer's vendored click (typer >= 0.26) and from click itself."""
    import importlib

    found: list[type[BaseException]] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        found.append(cls)
    return tuple(found)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the CLI and turn every expected failure into one line and an exit code."""
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    no_args_help = _click_exceptions("NoArgsIsHelpError")
    usage_error = _click_exceptions("UsageError")
    click_error = _click_exceptions("ClickException")
    exit_ = _click_exceptions("Exit")
    abort = _click_exceptions("Abort")
    try:
        result = command.main(args=args, prog_name="runner", standalone_mode=False)
    except RunnerError as err:
        display.error(str(err))
        return err.exit_code
    except no_args_help as err:
        # A bare group asks for its help, not an error.
        display.raw(err.ctx.get_help())  # type: ignore[attr-defined]
        return 0
    except usage_error as err:
        ctx = getattr(err, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        display.error(f"{err.format_message()}{hint}")  # type: ignore[attr-defined]
        return 2
    except click_error as err:
        display.error(err.format_message())  # type: ignore[attr-defined]
        return int(getattr(err, "exit_code", 1))
    except exit_ as err:
        return int(getattr(err, "exit_code", 0))
    except (*abort, KeyboardInterrupt):  # type: ignore[misc]
        display.error("interrupted")
        return 130
    except Exception as err:
        if os.environ.get(ENV_DEBUG) == "1":
            raise
        display.error(
            f"internal error: {type(err).__name__}: {err} "
            f"(this is a bug in runner; set {ENV_DEBUG}=1 to see the traceback)"
        )
        return 70
    return result if isinstance(result, int) else 0


def run() -> None:  # pragma: no cover - console-script shim
    sys.exit(main())

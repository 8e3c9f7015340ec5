"""``runner data``: check a job's dataset folder, or synthesise a small one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from runner.cli._app import app as display

if TYPE_CHECKING:
    from runner.data import FrankaReport, Problem
    from runner.data.lerobot import LeRobotReport

app = typer.Typer(
    help="Check a dataset folder against its job's layout, or synthesise a small one.",
    no_args_is_help=True,
)

#: Layouts runner can check and synthesise; other layouts are left to the job itself.
_LAYOUTS = ("franka", "lerobot")
#: --image-size when not given, per layout.
_IMAGE_SIZE = {"franka": 256, "lerobot": 64}


def _layout(job: str) -> str:
    """The job's dataset layout, if runner has tools for it; else a one-line usage error."""
    from runner.errors import UsageError
    from runner.spec import load_job

    layout = load_job(job).dataset.layout
    if layout not in _LAYOUTS:
        raise UsageError(f"no dataset checker for layout {layout} (job {job})")
    return layout


def _known(value: object) -> str:
    return "?" if value is None else str(value)


def _summary(report: FrankaReport) -> str:
    hw = report.image_hw
    images = "?" if hw is None else f"{hw[0]}x{hw[1]}"
    return (
        f"{report.path}: {_known(report.n_episodes)} episodes, T_max {_known(report.t_max)}, "
        f"images {images}, {report.total_frames} frames"
    )


def _lerobot_summary(report: LeRobotReport) -> str:
    from runner.data.lerobot import DEFAULT_FEATURES

    def describe(name: str, dtype: str, shape: tuple[int, ...]) -> str:
        if dtype in ("image", "video"):
            return f"{name} {shape[0]}x{shape[1]} {dtype}" if len(shape) == 3 else name
        return f"{name} {list(shape)}"

    own = [
        describe(f.name, f.dtype, f.shape)
        for f in report.features
        if f.name not in DEFAULT_FEATURES
    ]
    return (
        f"{report.path}: {_known(report.codebase_version)}, {_known(report.n_episodes)} episodes, "
        f"{_known(report.total_frames)} frames at {_known(report.fps)} fps; "
        f"{', '.join(own) or 'no features'}"
    )


def _print_problems(problems: tuple[Problem, ...]) -> None:
    for problem in problems:
        display.print(str(problem), markup=False, emoji=False)


@app.command("check")
def check(
    job: Annotated[str, typer.Argument(help="Job whose dataset layout to check against.")],
    path: Annotated[Path, typer.Argument(help="Dataset folder.")],
) -> None:
    """Check every file of a dataset folder (headers only, no image data) and list each problem."""
    from runner.errors import DatasetError

    problems: tuple[Problem, ...]
    if _layout(job) == "lerobot":
        from runner.data.lerobot import check_lerobot

        lerobot = check_lerobot(path)
        display.print(_lerobot_summary(lerobot), markup=False, emoji=False)
        if not lerobot.parquet_read:
            display.warn(
                "pyarrow is not installed, so the parquet files were checked by name and size "
                "only; install it (runner[train]) to check their rows and columns too"
            )
        problems = lerobot.problems
    else:
        from runner.data import check_franka

        franka = check_franka(path)
        display.print(_summary(franka), markup=False, emoji=False)
        problems = franka.problems
    _print_problems(problems)
    if problems:
        n = len(problems)
        raise DatasetError(f"{n} problem{'s' if n != 1 else ''} in {path}")
    display.success(f"{path} is a valid {job} dataset")


@app.command("synth")
def synth(
    job: Annotated[str, typer.Argument(help="Job whose dataset layout to write.")],
    path: Annotated[Path, typer.Argument(help="New dataset folder (absent, or empty).")],
    episodes: Annotated[int, typer.Option("--episodes", help="Number of episodes.")],
    steps: Annotated[
        int,
        typer.Option("--steps", help="Steps per episode (franka: of the longest episode)."),
    ],
    image_size: Annotated[
        int | None,
        typer.Option(
            "--image-size",
            help="Square image side (px); lerobot: 0 for no camera. [default: franka 256, "
            "lerobot 64]",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same dataset.")] = 0,
) -> None:
    """Write a synthetic pick-and-place dataset in the job's layout (franka needs torch,
    lerobot pyarrow)."""
    layout = _layout(job)
    size = _IMAGE_SIZE[layout] if image_size is None else image_size
    pixels = f"{size}px" if size else "no camera"
    display.info(f"synthesising {episodes} episodes x {steps} steps ({pixels}) at {path}")
    every = max(1, episodes // 10)

    def progress(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            display.info(f"  {done}/{total} episodes")

    problems: tuple[Problem, ...]
    if layout == "lerobot":
        from runner.data.lerobot import synth_lerobot

        lerobot = synth_lerobot(
            path, episodes=episodes, steps=steps, image_size=size, seed=seed, on_episode=progress
        )
        line, problems = _lerobot_summary(lerobot), lerobot.problems
    else:
        from runner.data import synth_franka

        franka = synth_franka(
            path, episodes=episodes, steps=steps, image_size=size, seed=seed, on_episode=progress
        )
        line, problems = _summary(franka), franka.problems
    display.print(line, markup=False, emoji=False)
    for problem in problems:  # none, unless the synthesiser has a bug
        display.warn(str(problem))
    display.success(f"wrote {path}")

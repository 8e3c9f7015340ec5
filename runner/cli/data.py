"""``runner data``: check a job's dataset folder, or synthesise a small one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from runner.cli._app import app as display

if TYPE_CHECKING:
    from runner.data import FrankaReport

app = typer.Typer(
    help="Check a dataset folder against its job's layout, or synthesise a small one.",
    no_args_is_help=True,
)

#: Layouts runner can check and synthesise; other layouts are left to the job itself.
_LAYOUTS = ("franka",)


def _layout(job: str) -> str:
    """The job's dataset layout, if runner has tools for it; else a one-line usage error."""
    from runner.errors import UsageError
    from runner.spec import load_job

    layout = load_job(job).dataset.layout
    if layout not in _LAYOUTS:
        raise UsageError(f"no dataset checker for layout {layout} (job {job})")
    return layout


def _summary(report: FrankaReport) -> str:
    def known(value: object) -> str:
        return "?" if value is None else str(value)

    hw = report.image_hw
    images = "?" if hw is None else f"{hw[0]}x{hw[1]}"
    return (
        f"{report.path}: {known(report.n_episodes)} episodes, T_max {known(report.t_max)}, "
        f"images {images}, {report.total_frames} frames"
    )


@app.command("check")
def check(
    job: Annotated[str, typer.Argument(help="Job whose dataset layout to check against.")],
    path: Annotated[Path, typer.Argument(help="Dataset folder.")],
) -> None:
    """Check every file of a dataset folder (headers only, no image data) and list each problem."""
    from runner.data import check_franka
    from runner.errors import DatasetError

    _layout(job)
    report = check_franka(path)
    display.print(_summary(report), markup=False, emoji=False)
    for problem in report.problems:
        display.print(str(problem), markup=False, emoji=False)
    if not report.ok:
        n = len(report.problems)
        raise DatasetError(f"{n} problem{'s' if n != 1 else ''} in {path}")
    display.success(f"{path} is a valid {job} dataset")


@app.command("synth")
def synth(
    job: Annotated[str, typer.Argument(help="Job whose dataset layout to write.")],
    path: Annotated[Path, typer.Argument(help="New dataset folder (absent, or empty).")],
    episodes: Annotated[int, typer.Option("--episodes", help="Number of episodes.")],
    steps: Annotated[int, typer.Option("--steps", help="T_max: steps of the longest episode.")],
    image_size: Annotated[int, typer.Option("--image-size", help="Square image side (px).")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same dataset.")] = 0,
) -> None:
    """Write a synthetic pick-and-place dataset in the job's layout (needs torch)."""
    from runner.data import synth_franka

    _layout(job)
    display.info(f"synthesising {episodes} episodes x {steps} steps ({image_size}px) at {path}")
    every = max(1, episodes // 10)

    def progress(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            display.info(f"  {done}/{total} episodes")

    report = synth_franka(
        path, episodes=episodes, steps=steps, image_size=image_size, seed=seed,
        on_episode=progress,
    )  # fmt: skip
    display.print(_summary(report), markup=False, emoji=False)
    for problem in report.problems:  # none, unless synth_franka has a bug
        display.warn(str(problem))
    display.success(f"wrote {path}")

"""``runner image build NAME``: build the images in ``images/`` through the Docker SDK."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Build (and push) the training images in images/.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

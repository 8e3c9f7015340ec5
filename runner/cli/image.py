"""``runner image build NAME``: build the images in ``images/`` through the Docker SDK."""

from __future__ import annotations

import typer

from runner.cli._app import app as display

app = typer.Typer(
    help="Build (and push) the training images in images/.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("build")
def build(
    name: str = typer.Argument(..., help="Image to build, e.g. base, franka-embedded, lerobot."),
    push: str | None = typer.Option(
        None, "--push", metavar="REGISTRY", help="Also tag REGISTRY/NAME:TAG and push it."
    ),
    base_image: str | None = typer.Option(
        None, "--base-image", metavar="IMAGE", help="BASE_IMAGE [default: the Dockerfile's]."
    ),
    tag: str = typer.Option("latest", "--tag", help="Tag of runner/NAME."),
    build_arg: list[str] = typer.Option(
        None, "--build-arg", metavar="K=V", help="Build argument (repeatable); never a secret."
    ),
    reuse: bool = typer.Option(
        False, "--reuse", help="Skip the build when the image's context hash is unchanged."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Build every step anew."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the build's own output."),
) -> None:
    """Build runner/NAME:TAG from images/NAME plus runner's source, showing each step.

    dino-wm and openpi build upstream unless given a repository: a job that needs a fork
    (its program.fork) gets a note, and its own program.repo/ref are passed when it names them.
    """
    from runner.launch.images import build_image, catalog_specs, fork_build, parse_build_args

    args = parse_build_args(build_arg or [])
    forks = fork_build(name, args, catalog_specs())
    for note in forks.notes:
        display.info(note)
    result = build_image(
        name,
        base_image=base_image,
        tag=tag,
        build_args={**forks.build_args, **args},
        push=push,
        reuse=reuse,
        nocache=no_cache,
        say=display.info,
        verbose=verbose,
    )
    display.success(f"{result.tag} ready ({result.image_id[7:19]})")
    display.raw(result.tag)


@app.command("list")
def list_(
    as_json: bool = typer.Option(False, "--json", help="As JSON."),
) -> None:
    """The images runner can build, the jobs that use each, and which are built here."""
    import json

    from runner.cli.cloud import _table
    from runner.errors import RunnerError
    from runner.launch.images import describe_images, docker_client

    try:
        client = docker_client()
    except RunnerError as err:
        display.warn(str(err))
        client = None
    rows = describe_images(client)
    if as_json:
        display.raw(json.dumps(rows, indent=2))
        return
    table = [["NAME", "IMAGE", "JOBS", "BUILT", "SIZE"]]
    for r in rows:
        size = "-" if r["size_bytes"] is None else f"{r['size_bytes'] / 1e9:.2f} GB"
        built = r["id"] or ("?" if client is None else "no")
        table.append([r["name"], r["image"], ", ".join(r["jobs"]) or "-", built, size])
    display.raw(_table(table))

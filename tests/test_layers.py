"""The layers import one way: a viewer never imports the agent, nothing below the CLI imports it.

Read from the source (ast), so a lazy import inside a function counts as much as a top one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "runner"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _runner_imports(module: str) -> set[str]:
    """Every ``runner.*`` module that the files of ``module`` (a module or a package) import."""
    base = PACKAGE.joinpath(*module.split(".")[1:])
    files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    return {name for f in files for name in _imports(f) if name.startswith("runner")}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        # The run folder's schema sits below everyone who writes or reads it.
        (
            "runner.rundir",
            ("runner.agent", "runner.hub", "runner.cloud", "runner.launch", "runner.cli"),
        ),
        # The harness goes into any training image on its own.
        ("runner.harness", ("runner",)),
        ("runner.hub", ("runner.agent", "runner.cloud", "runner.launch", "runner.cli")),
        ("runner.agent", ("runner.cloud", "runner.launch", "runner.cli")),
        # The programs' own terms sit on the job spec only: the agent and pre-flight use them.
        (
            "runner.programs",
            (
                "runner.agent",
                "runner.hub",
                "runner.cloud",
                "runner.launch",
                "runner.view",
                "runner.cli",
                "runner.sampling",
            ),
        ),
        ("runner.sampling", ("runner.agent", "runner.hub", "runner.cloud", "runner.cli")),
        ("runner.cloud", ("runner.agent", "runner.launch", "runner.cli")),
        ("runner.launch", ("runner.cli",)),
        # watch, report and logs read the run folder, never the agent's memory.
        ("runner.view", ("runner.agent", "runner.hub", "runner.cli")),
    ],
)
def test_layers_import_one_way(module: str, forbidden: tuple[str, ...]) -> None:
    base = PACKAGE.joinpath(*module.split(".")[1:])
    if not base.is_dir() and not base.with_suffix(".py").is_file():
        pytest.skip(f"{module} does not exist yet")
    bad = sorted(
        name for name in _runner_imports(module) if _under(name, forbidden) and name != module
    )
    assert bad == [], f"{module} imports {bad}"


def test_nothing_below_the_cli_imports_typer_or_rich_console() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli":
            continue
        names = _imports(path)
        if {"typer", "rich.console"} & names:
            offenders.append(str(rel))
    assert offenders == []

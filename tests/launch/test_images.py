"""The training images: every Dockerfile checked dry, base and franka-embedded built for real.

The GPU images (dino-wm, lerobot, openpi) cannot be built here (CUDA wheels, GitHub), and
``docker build --check`` needs BuildKit, which this engine (20.10, classic builder) lacks:
they are parsed instead (every instruction known, ``FROM`` on ``ARG BASE_IMAGE``, every
pip/uv/git version pinned, no secret-looking ``ENV``/``ARG``). base and franka-embedded are
built through ``runner``'s own builder on a locally made base (see conftest.py), and the
images it makes are searched for the secrets that were in the builder's environment.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from runner.errors import RunnerError, UsageError
from runner.launch.images import (
    CONTEXT_TAG_PREFIX,
    build_context,
    build_image,
    image_name_for,
    known_images,
    parse_build_args,
    push_image,
)
from runner.spec import load_all, load_job
from tests.conftest import REPO, RUNNER_BIN
from tests.launch.conftest import BUILD_SECRETS, BuiltImages

IMAGES = REPO / "images"
KNOWN = {
    "FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "LABEL", "CMD", "ENTRYPOINT",
    "SHELL", "USER", "EXPOSE", "VOLUME", "HEALTHCHECK", "STOPSIGNAL", "ONBUILD",
}  # fmt: skip
SECRET_NAME = re.compile(r"(TOKEN|API_KEY|APIKEY|SECRET|PASSWORD|PASSWD|PRIVATE_KEY)", re.I)
SHA = re.compile(r"^[0-9a-f]{40}$")


# --------------------------------------------------------------------------- dry parse


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, f"{dockerfile}: ends inside a continued line"
    return out


def _assignments(args: str) -> dict[str, str]:
    found = {}
    for token in shlex.split(args):
        key, sep, value = token.partition("=")
        found[key] = value if sep else ""
    return found


def _expand(text: str, variables: dict[str, str]) -> str:
    def alternative(match: re.Match[str]) -> str:  # ${NAME:+word}
        return match.group(2) if variables.get(match.group(1)) else ""

    text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\+([^}]*)\}", alternative, text)

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", one, text)


def _pinned_requirement(token: str) -> bool:
    if "git+" in token:
        return bool(re.search(r"@[0-9a-f]{40}\b", token))
    return "==" in token


def _check_installs(
    command: str, folder: Path, copies: dict[str, str], problems: list[str]
) -> None:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append([])
        else:
            commands[-1].append(token)
    for words in commands:
        part = " ".join(words)
        if not words or words[0] in ("{", "}"):
            words = words[1:]
        if not words:
            continue
        tool = Path(words[0]).name
        rest = words[1:]
        if tool == "uv" and rest[:1] == ["pip"]:
            tool, rest = "pip", rest[1:]
        if tool == "uv" and rest[:1] == ["sync"] and not {"--frozen", "--locked"} & set(rest):
            problems.append(f"uv sync without --frozen/--locked: {part.strip()}")
        if tool == "git" and "clone" in rest and "checkout" not in command:
            problems.append(f"git clone without a checkout of a pinned commit: {part.strip()}")
        if tool == "git" and "checkout" in rest:
            target = [w for w in rest[rest.index("checkout") + 1 :] if not w.startswith("-")]
            if not target or not SHA.match(target[0]):
                problems.append(f"git checkout of {target}, not a 40-hex commit")
        if tool != "pip" or "install" not in rest:
            continue
        args = rest[rest.index("install") + 1 :]
        skip_next = False
        for i, word in enumerate(args):
            if skip_next:
                skip_next = False
                continue
            if word in ("-r", "--requirement"):
                inside = args[i + 1]
                _check_requirements(folder / copies.get(inside, inside), problems)
                skip_next = True
                continue
            if word in ("--extra-index-url", "--index-url", "--python", "-c", "--constraint",
                        "--index-strategy", "-f", "--find-links"):  # fmt: skip
                skip_next = True
                continue
            if word.startswith("-") or word.startswith("/") or word.startswith("."):
                continue
            if not _pinned_requirement(word):
                problems.append(f"unpinned: {word!r} in {part.strip()[:120]}")


def _check_requirements(path: Path, problems: list[str]) -> None:
    if not path.is_file():
        problems.append(f"requirements file {path} is not in the image folder")
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not _pinned_requirement(line):
            problems.append(f"{path.name}: unpinned {line!r}")


def dockerfile_problems(dockerfile: Path) -> list[str]:
    """What a dry reading of ``dockerfile`` finds wrong (empty: nothing)."""
    problems: list[str] = []
    variables: dict[str, str] = {}
    copies: dict[str, str] = {}  # path in the image -> file of the context
    froms = 0
    for word, args in _instructions(dockerfile):
        if word not in KNOWN:
            problems.append(f"unknown instruction {word}")
            continue
        if word in ("ARG", "ENV"):
            for key, value in _assignments(args).items():
                if SECRET_NAME.search(key):
                    problems.append(f"{word} {key}: a secret-looking name in the image")
                if word == "ARG":
                    variables.setdefault(key, value)
        if word == "FROM":
            froms += 1
            if froms == 1 and args.split()[0] not in ("${BASE_IMAGE}", "$BASE_IMAGE"):
                problems.append(f"FROM {args}: the base must be the build argument BASE_IMAGE")
            if froms == 1 and "BASE_IMAGE" not in variables:
                problems.append("FROM before ARG BASE_IMAGE")
        if word == "COPY":
            *sources, dest = shlex.split(args)
            for source in sources:
                inside = dest + Path(source).name if dest.endswith("/") else dest
                copies[inside] = source
        if word == "RUN":
            _check_installs(_expand(args, variables), dockerfile.parent, copies, problems)
    if froms == 0:
        problems.append("no FROM")
    return problems


@pytest.mark.parametrize("name", sorted(p.name for p in IMAGES.iterdir() if p.is_dir()))
def test_every_dockerfile_parses_pinned_and_secret_free(name: str) -> None:
    assert dockerfile_problems(IMAGES / name / "Dockerfile") == []


def test_the_dry_check_catches_what_it_is_for(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("typer==0.29.2\nrich\n")
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM ubuntu:24.04\n"
        "ENV HF_TOKEN=x\n"
        "RUN pip install numpy torch==2.13.0 -r requirements.txt \\\n"
        "    && git clone https://x/y.git /y && git checkout main\n"
        "RUN uv sync\n"
        "FROBNICATE everything\n"
    )
    problems = "\n".join(dockerfile_problems(bad))
    for expected in (
        "the base must be the build argument BASE_IMAGE",
        "ENV HF_TOKEN",
        "unpinned: 'numpy'",
        "requirements.txt: unpinned 'rich'",
        "not a 40-hex commit",
        "uv sync without --frozen",
        "unknown instruction FROBNICATE",
    ):
        assert expected in problems
    assert "unpinned: 'torch" not in problems


def test_every_job_image_is_one_runner_builds() -> None:
    images = known_images()
    specs, errors = load_all()
    assert errors == []
    refs = {
        s.image
        for spec in specs
        for s in [spec, *(load_job(spec.name, profile=p) for p in spec.profiles)]
        if s.image
    }
    assert "runner/franka-embedded:latest" in refs
    for ref in refs:
        assert image_name_for(ref) in images, f"{ref}: no images/ folder or variant builds it"
    assert images["lerobot-pi0"].build_args == {"POLICY": "pi0"}


def test_the_context_is_the_image_folder_and_runner_source_only(tmp_path: Path) -> None:
    image = known_images()["base"]
    tar_bytes, digest = build_context(image)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        names = tar.getnames()
        members = tar.getmembers()
    assert {"Dockerfile", "requirements.txt", "src/pyproject.toml", "src/README.md"} <= set(names)
    assert "src/runner/launch/images.py" in names and "src/jobs/franka_cube_stack.yaml" in names
    tops = {n.split("/")[1] for n in names if n.startswith("src/")}
    assert tops == {"runner", "pyproject.toml", "README.md", "jobs"}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert {m.mtime for m in members} == {0} and {m.uid for m in members} == {0}
    assert build_context(image) == (tar_bytes, digest)  # same files, same tarball


def test_build_arguments_refuse_secrets_and_bad_syntax() -> None:
    assert parse_build_args(["TORCH_SPEC=torch==2.13.0", "A="]) == {
        "TORCH_SPEC": "torch==2.13.0",
        "A": "",
    }
    with pytest.raises(UsageError, match="HF_TOKEN: a credential"):
        parse_build_args(["HF_TOKEN=hf_x"])
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_build_args(["novalue"])


def _runner(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUNNER_BIN), *args], capture_output=True, text=True, env=env, timeout=900
    )


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


def test_unknown_image_and_no_engine_are_one_line_each(subprocess_env: dict[str, str]) -> None:
    proc = _runner("image", "build", "nosuch", env=subprocess_env)
    assert proc.returncode == 2
    assert "no image 'nosuch' in images/" in _one_error_line(proc)
    env = {**subprocess_env, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    proc = _runner("image", "build", "base", env=env)
    assert proc.returncode == 1
    line = _one_error_line(proc)
    assert "no Docker engine answers at unix:///nonexistent/docker.sock" in line
    assert "start it" in line


# --------------------------------------------------------------------------- real builds


@pytest.mark.slow
def test_base_and_embedded_build_and_run_the_agent(
    built_images: BuiltImages, docker_client: Any
) -> None:
    for tag in (built_images.base, built_images.embedded):
        tags = docker_client.images.get(tag).tags
        assert [t for t in tags if t.rpartition(":")[2].startswith(CONTEXT_TAG_PREFIX)]
    out = docker_client.containers.run(
        built_images.embedded,
        [
            "sh",
            "-c",
            # A plain SSH session's PATH, without the image's ENV: runner is still found.
            "env -i PATH=/usr/local/bin:/usr/bin:/bin runner --version "
            "&& command -v rsync && test -x /usr/sbin/sshd "
            "&& python -c 'import torch, accelerate, runner.trainers.franka_wm as m; "
            "print(torch.__version__)' && env | sort | grep ^PYTHON "
            "&& (python -c 'import docker' 2>/dev/null && echo has-docker || echo no-docker)",
        ],
        remove=True,
        network_mode="host",
    ).decode()
    assert "runner 0.1.0" in out and "/usr/bin/rsync" in out
    assert "2.13.0" in out and "no-docker" in out
    for var in ("PYTHONNOUSERSITE=1", "PYTHONIOENCODING=utf-8", "PYTHONUNBUFFERED=1"):
        assert var in out


@pytest.mark.slow
def test_an_unchanged_image_is_reused_without_a_build(
    built_images: BuiltImages, docker_client: Any
) -> None:
    started = time.monotonic()
    again = build_image(
        "base", base_image=built_images.build_base, reuse=True, client=docker_client
    )
    if not again.reused and build_context(known_images()["base"])[1] != (
        built_images.base_files_hash
    ):
        pytest.skip("runner's source changed while the tests ran (a shared working tree)")
    # No build: API calls only (generous: the engine here is shared and often busy).
    assert again.reused and time.monotonic() - started < 120
    assert again.tag == built_images.base


@pytest.mark.slow
def test_no_secret_reaches_any_layer(
    built_images: BuiltImages, docker_client: Any, tmp_path: Path
) -> None:
    values = [v.encode() for v in BUILD_SECRETS.values()]
    token_files = re.compile(
        r"(^|/)(\.cache/huggingface/token|\.huggingface/token|\.netrc|\.config/wandb/settings"
        r"|\.git-credentials|\.docker/config\.json)$"
    )
    for tag in (built_images.base, built_images.embedded):
        history = subprocess.run(
            ["docker", "history", "--no-trunc", tag], capture_output=True, check=True
        ).stdout
        attrs = docker_client.images.get(tag).attrs
        config = json.dumps([attrs["Config"].get("Env"), attrs["Config"].get("Labels")]).encode()
        for value in values:
            assert value not in history and value not in config
        for name in BUILD_SECRETS:
            assert name.encode() not in history and name.encode() not in config
    # Every file of every layer of the final image (base layers included).
    found: list[str] = []
    saved = tmp_path / "image.tar"
    with saved.open("wb") as f:
        for chunk in docker_client.images.get(built_images.embedded).save(named=False):
            f.write(chunk)
    with tarfile.open(saved) as image_tar:
        for member in image_tar.getmembers():
            if not member.name.endswith("layer.tar"):
                continue
            layer = image_tar.extractfile(member)
            assert layer is not None
            with tarfile.open(fileobj=layer) as files:
                for entry in files:
                    if token_files.search(entry.name):
                        found.append(f"{member.name}: {entry.name}")
                    if not entry.isfile() or entry.size > 64 << 20:
                        continue  # big files are wheels and libraries, not config
                    data = files.extractfile(entry)
                    content = data.read() if data is not None else b""
                    if any(v in content for v in values):
                        found.append(f"{member.name}: {entry.name} holds a secret value")
    assert found == []


@pytest.mark.slow
def test_a_failing_step_is_one_line_naming_it(
    built_images: BuiltImages, docker_client: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "Dockerfile").write_text(
        "ARG BASE_IMAGE=x\nFROM ${BASE_IMAGE}\nRUN echo about to fail && exit 3\n"
    )
    seen: list[str] = []
    with pytest.raises(RunnerError) as err:
        build_image(
            "broken",
            base_image=built_images.build_base,
            client=docker_client,
            root=tmp_path,
            say=seen.append,
        )
    message = str(err.value)
    assert "\n" not in message
    assert "failed at step 3/3 (RUN echo about to fail && exit 3)" in message
    assert "returned a non-zero code: 3" in message
    assert any("about to fail" in line for line in seen)  # the step's output is shown


@pytest.mark.slow
def test_a_missing_base_is_one_line(docker_client: Any, tmp_path: Path) -> None:
    folder = tmp_path / "orphan"
    folder.mkdir()
    (folder / "Dockerfile").write_text("ARG BASE_IMAGE=runner/nosuch:latest\nFROM ${BASE_IMAGE}\n")
    with pytest.raises(RunnerError, match=r"runner/nosuch:latest is not on this Docker engine; "
                       r"build it first: `runner image build nosuch`"):  # fmt: skip
        build_image("orphan", client=docker_client, root=tmp_path)
    started = time.monotonic()
    with pytest.raises(RunnerError) as err:
        build_image(
            "orphan", base_image="runner-test/not-here:1", client=docker_client, root=tmp_path
        )
    assert "not on this Docker engine and cannot be pulled" in str(err.value)
    assert "--base-image" in str(err.value) and "\n" not in str(err.value)
    assert time.monotonic() - started < 120


@pytest.mark.slow
def test_a_push_that_fails_is_one_line(built_images: BuiltImages, docker_client: Any) -> None:
    seen: list[str] = []
    target = "127.0.0.1:9/base:latest"  # the discard port: no registry answers there
    try:
        with pytest.raises(RunnerError) as err:
            push_image(docker_client, built_images.base, "127.0.0.1:9", say=seen.append)
        message = str(err.value)
        assert message.startswith(f"pushing {target} failed: ") and "\n" not in message
        assert "docker login" in message
        assert seen == [f"pushing {target}"]
    finally:
        docker_client.images.remove(target)

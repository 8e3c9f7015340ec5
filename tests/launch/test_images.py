"""The training images: every Dockerfile checked dry, base and franka-embedded built for real.

The GPU images (dino-wm, lerobot, openpi) cannot be built here (CUDA wheels, GitHub), and
``docker build --check`` needs BuildKit, which this engine (20.10, classic builder) lacks:
they are parsed instead (every instruction known, ``FROM`` on ``ARG BASE_IMAGE``, every
pip/uv/git version pinned, no secret-looking ``ENV``/``ARG``). base and franka-embedded are
built through ``runner``'s own builder on a locally made base (see conftest.py), and the
images it makes are searched for the secrets that were in the builder's environment.
Beside them: the LeRobot lock against LeRobot's own ranges, the program images' repository
and ref build arguments, and the fork notes ``runner image build`` prints for the jobs.
"""

from __future__ import annotations

import email
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from runner.errors import RunnerError, UsageError
from runner.launch import images as images_module
from runner.launch.images import (
    CONTEXT_TAG_PREFIX,
    PROGRAM_BUILD_ARGS,
    BuildResult,
    build_context,
    build_image,
    catalog_specs,
    fork_build,
    fork_notice,
    image_name_for,
    known_images,
    parse_build_args,
    push_image,
)
from runner.spec import JobSpec, load_all, load_job
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
        assert image_name_for(ref) in images, f"{ref}: no images/ folder builds it"
    # One LeRobot image serves act, smolvla and pi0 (the lock has the pi extra).
    assert "lerobot-pi0" not in images
    assert not (IMAGES / "lerobot" / "train.sh").exists()


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


# --------------------------------------------------------------------------- lerobot

LOCK = IMAGES / "lerobot" / "requirements.txt"
#: LeRobot 0.6.1's own ranges (shared/reference/trainers.md, from its wheel's metadata:
#: ``Requires-Dist: torch<2.12.0,>=2.7``, ``torchvision<0.27.0,>=0.22.0`` and, through the
#: ``dataset`` extra, ``av<16.0.0,>=15.0.0``; ``Requires-Python: >=3.12``).
LEROBOT_RANGES = {"torch": ">=2.7,<2.12", "torchvision": ">=0.22,<0.27", "av": ">=15,<16"}
#: The extras the image is for: training (= dataset + accelerate + wandb), smolvla, pi.
LEROBOT_EXTRAS = ("training", "smolvla", "pi")
#: A platform the lock is for (the image's): markers are evaluated in it.
LOCK_ENVIRONMENT = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def _ready_lerobot_venv() -> Path | None:
    """The venv ``scripts/setup-lerobot-env.sh`` prints, when it is built already (never builds).

    Read at import, before the tests' hermetic HOME: the same places the script looks.
    """
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]
    if given := os.environ.get("RUNNER_LEROBOT_VENV"):
        candidates = [Path(given)]
    else:
        home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        caches = [Path(os.environ.get("RUNNER_CI_CACHE") or "/var/cache/runner-ci")]
        candidates = [c / f"lerobot-{digest}" for c in [*caches, home_cache / "runner-ci"]]
    for venv in candidates:
        stamp = venv / ".runner-lerobot"
        if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == digest:
            return venv
    return None


LEROBOT_VENV = _ready_lerobot_venv()


def _lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in LOCK.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)", line)
        assert match, f"requirements.txt: {line!r} is not NAME==VERSION"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"requirements.txt: {name} pinned twice"
        pins[name] = Version(match.group(2))
    return pins


def _code(dockerfile: Path) -> str:
    """The Dockerfile's instructions, comments left out."""
    return "\n".join(f"{word} {args}" for word, args in _instructions(dockerfile))


def test_the_lerobot_image_installs_the_lock_and_names_no_version_of_its_own() -> None:
    dockerfile = IMAGES / "lerobot" / "Dockerfile"
    steps = _instructions(dockerfile)
    code = _code(dockerfile)
    copies = {shlex.split(a)[-1]: shlex.split(a)[0] for w, a in steps if w == "COPY"}
    assert copies == {"/opt/runner-build/lerobot-requirements.txt": "requirements.txt"}
    installs = [
        shlex.split(part.strip())
        for w, a in steps
        if w == "RUN"
        for part in a.split("&&")
        if re.search(r"\bpip3? install\b", part)
    ]
    # One install: the lock, resolved as usual (no --no-deps: torch's CUDA wheels come along).
    assert installs == [["/opt/venv/bin/pip", "install", "-q", "-r",
                         "/opt/runner-build/lerobot-requirements.txt"]]  # fmt: skip
    assert "uv " not in code and "--no-deps" not in code
    # No version named here: no specifier, no ARG but the base, no git or URL pin.
    assert not re.search(r"[A-Za-z][\w.\-\]]*\s*(==|>=|<=|~=|!=|<|>)\s*v?\d", code), code
    assert [a.split("=")[0] for w, a in steps if w == "ARG"] == ["BASE_IMAGE"]
    assert "git+" not in code and "@" not in code
    assert "lerobot-train --help" in code  # the build fails where LeRobot does not start
    assert "(3, 12)" in code  # the lock is for Python 3.12: another base fails at once
    assert "ffmpeg" in code and "VIDEO_BACKEND=pyav" in code
    assert "train.sh" not in code and "POLICY" not in code


def test_the_lock_pins_every_line_and_fits_lerobots_ranges() -> None:
    pins = _lock()
    assert pins["lerobot"] == Version("0.6.1")
    for name, ranges in LEROBOT_RANGES.items():
        assert pins[name] in SpecifierSet(ranges), f"{name}=={pins[name]} not in {ranges}"
    assert pins["torch"] == Version("2.11.0")
    # The extras' packages are in it: dataset (datasets, av), training (accelerate,
    # wandb), smolvla (transformers, num2words), pi (transformers, scipy).
    for name in ("datasets", "av", "accelerate", "wandb", "transformers", "num2words", "scipy"):
        assert name in pins, f"requirements.txt lacks {name}"


@pytest.mark.skipif(LEROBOT_VENV is None, reason="no LeRobot venv (scripts/setup-lerobot-env.sh)")
def test_the_lock_satisfies_lerobots_own_metadata() -> None:
    """Every requirement of lerobot[training,smolvla,pi] in its installed wheel's metadata."""
    assert LEROBOT_VENV is not None
    found = sorted(LEROBOT_VENV.glob("lib/python3*/site-packages/lerobot-*.dist-info/METADATA"))
    assert len(found) == 1, found
    metadata = email.message_from_string(found[0].read_text(encoding="utf-8"))
    assert metadata["Version"] == "0.6.1"
    assert Version("3.12") in SpecifierSet(metadata["Requires-Python"])
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    wanted: dict[str, SpecifierSet] = {}
    extras, seen = ["", *LEROBOT_EXTRAS], set()
    while extras:
        extra = extras.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in requires:
            if req.marker is None:
                applies = extra == ""
            else:
                applies = req.marker.evaluate({**LOCK_ENVIRONMENT, "extra": extra})
            if not applies:
                continue
            package = str(canonicalize_name(req.name))
            if package == "lerobot":
                extras.extend(req.extras)
            else:
                wanted[package] = wanted.get(package, SpecifierSet()) & req.specifier
    assert {"dataset", "av-dep", "transformers-dep", "scipy-dep"} <= seen
    pins = _lock()
    for package, specifier in sorted(wanted.items()):
        assert package in pins, f"requirements.txt lacks {package}{specifier} (LeRobot needs it)"
        assert pins[package] in specifier, f"{package}=={pins[package]}: LeRobot wants {specifier}"
    for package, ranges in LEROBOT_RANGES.items():  # the ranges cited above are LeRobot's
        assert wanted[package] == SpecifierSet(ranges), (package, str(wanted[package]))


# --------------------------------------------------------------------------- program images

UPSTREAM = {
    "dino-wm": "https://github.com/gaoyuezhou/dino_wm",
    "openpi": "https://github.com/Physical-Intelligence/openpi",
}


@pytest.mark.parametrize("name", sorted(PROGRAM_BUILD_ARGS))
def test_program_images_take_repo_and_ref_with_an_upstream_commit(name: str) -> None:
    repo_arg, ref_arg = PROGRAM_BUILD_ARGS[name]
    steps = _instructions(IMAGES / name / "Dockerfile")
    args: dict[str, str] = {}
    for word, rest in steps:
        if word == "ARG":
            args.update(_assignments(rest))
    assert args[repo_arg] == UPSTREAM[name]
    assert SHA.match(args[ref_arg]), f"{ref_arg}={args[ref_arg]!r}: not a 40-hex commit"
    labels = {k: v for w, a in steps if w == "LABEL" for k, v in _assignments(a).items()}
    assert labels == {
        "runner.program.repo": f"${{{repo_arg}}}",
        "runner.program.ref": f"${{{ref_arg}}}",
    }
    runs = " ".join(a for w, a in steps if w == "RUN")
    assert "git clone" in runs and f"${{{repo_arg}}}" in runs
    assert f"checkout --detach ${{{ref_arg}}}" in runs
    assert "COMMIT" not in _code(IMAGES / name / "Dockerfile")  # the old names are gone


def _job(name: str = "cube", **program: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": name,
            "image": "runner/dino-wm:latest",
            "command": "python train.py env=franka_cube_stack",
            "program": {"kind": "dino_wm", **program},
        }
    )


FORK = "conf/env/franka_cube_stack.yaml and datasets/franka_cube_stack_dset.py are in your fork"
FORK_REPO = "https://github.com/me/dino_wm"
FORK_REF = "1" * 40


def test_the_fork_notice_says_what_to_build_for_a_job_without_its_fork() -> None:
    assert fork_notice(_job(fork=FORK)) == (
        f"note: cube needs a fork: {FORK}; build with --build-arg DINO_WM_REPO=<url> "
        "--build-arg DINO_WM_REF=<sha>"
    )
    assert fork_notice(_job()) is None  # upstream is enough
    assert fork_notice(_job(fork=FORK, repo=FORK_REPO)) is None  # it names its fork
    openpi = JobSpec.model_validate(
        {"name": "p", "image": "runner/openpi:latest", "command": "x",
         "program": {"kind": "openpi", "fork": "pi0_so101 is only in my fork"}}
    )  # fmt: skip
    assert fork_notice(openpi) == (
        "note: p needs a fork: pi0_so101 is only in my fork; build with "
        "--build-arg OPENPI_REPO=<url> --build-arg OPENPI_REF=<sha>"
    )
    hosted = JobSpec.model_validate(
        {"name": "h", "image": "ghcr.io/me/wm:1", "command": "x", "program": {"fork": "mine"}}
    )
    assert fork_notice(hosted) == "note: h needs a fork: mine"  # not an image runner builds


def test_fork_build_notes_each_job_and_passes_the_fork_a_job_names() -> None:
    plain, needs = _job("plain"), _job("needs", fork=FORK)
    assert fork_build("dino-wm", {}, [plain]) == images_module.ForkBuild({}, [])
    assert fork_build("lerobot", {}, [needs]).notes == []  # not this image's job
    assert fork_build("dino-wm", {}, [needs, needs]).notes == [fork_notice(needs)]
    # The user's repository: no note, nothing added.
    given = {"DINO_WM_REPO": FORK_REPO, "DINO_WM_REF": FORK_REF}
    assert fork_build("dino-wm", given, [needs]) == images_module.ForkBuild({}, [])
    (half,) = fork_build("dino-wm", {"DINO_WM_REPO": FORK_REPO}, [needs]).notes
    assert "without DINO_WM_REF" in half
    # A job that names its fork: those become the build arguments, in one line.
    named = _job("named", fork=FORK, repo=FORK_REPO, ref=FORK_REF)
    plan = fork_build("dino-wm", {}, [named, needs, plain])
    assert plan.build_args == given
    assert plan.notes == [
        f"note: named needs a fork: {FORK}; building its program.repo and program.ref: "
        f"--build-arg DINO_WM_REPO={FORK_REPO} --build-arg DINO_WM_REF={FORK_REF}",
        fork_notice(needs),
    ]
    # The user's ref wins over the job's.
    plan = fork_build("dino-wm", {"DINO_WM_REF": "2" * 40}, [named])
    assert plan.build_args == {"DINO_WM_REPO": FORK_REPO, "DINO_WM_REF": "2" * 40}
    # A repo without a ref is not guessed at; two different forks: none is chosen.
    unpinned = _job("unpinned", fork=FORK, repo=FORK_REPO)
    plan = fork_build("dino-wm", {}, [unpinned])
    assert plan.build_args == {}
    assert plan.notes == [
        f"note: unpinned needs a fork: {FORK}; its program.repo has no program.ref: build "
        f"with --build-arg DINO_WM_REPO={FORK_REPO} --build-arg DINO_WM_REF=<sha>"
    ]
    other = _job("other", fork=FORK, repo="https://github.com/you/dino_wm", ref="3" * 40)
    plan = fork_build("dino-wm", {}, [named, other])
    assert plan.build_args == {}
    assert all("the jobs name different forks, so none is passed" in n for n in plan.notes)
    assert len(plan.notes) == 2


def test_the_build_command_prints_the_notes_and_passes_the_fork(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.cli.image import build

    named = _job("named", fork=FORK, repo=FORK_REPO, ref=FORK_REF)
    seen: dict[str, Any] = {}

    def fake_build(name: str, **kwargs: Any) -> BuildResult:
        seen.update(kwargs, name=name)
        return BuildResult(f"runner/{name}:latest", "sha256:" + "0" * 64, 1.0, False, 1, "h")

    monkeypatch.setattr(images_module, "build_image", fake_build)
    monkeypatch.setattr(images_module, "catalog_specs", lambda: [named, _job("needs", fork=FORK)])
    build("dino-wm", None, None, "latest", ["TORCH_SPEC=torch==2.3.0"], False, False, False)
    err = capsys.readouterr().err
    assert seen["name"] == "dino-wm"
    assert seen["build_args"] == {
        "DINO_WM_REPO": FORK_REPO, "DINO_WM_REF": FORK_REF, "TORCH_SPEC": "torch==2.3.0"
    }  # fmt: skip
    assert f"note: named needs a fork: {FORK}; building its program.repo" in err
    assert f"note: needs needs a fork: {FORK}; build with --build-arg DINO_WM_REPO=<url>" in err


def test_the_catalogs_fork_notes_are_one_line_each() -> None:
    specs = catalog_specs()
    assert {s.name for s in specs} >= {"franka_cube_stack", "act_so101"}
    assert any(s.profile == "embedded" for s in specs)
    for name in PROGRAM_BUILD_ARGS:
        for note in fork_build(name, {}, specs).notes:
            assert "\n" not in note and note.startswith("note: ")


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

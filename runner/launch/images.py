"""Training images: the Dockerfiles in ``images/`` built through the Docker SDK.

``runner image build NAME`` assembles the build context itself, as one tarball: the
image's folder (``images/NAME``: Dockerfile, pinned requirements) at its root and
runner's own source under ``src/`` (``runner/``, ``pyproject.toml``, ``README.md``,
``jobs/``; never ``.venv``, ``runs/``, ``data/`` or caches), so what goes into an
image is exactly that and a secret lying in the checkout cannot. It builds through the
engine's low-level API with the host's network (the engines these run on may have no
bridge), streams the ``Step N/M`` lines, and turns a failing step into one line that
names it. Every image is also tagged ``runner/NAME:ctx-HASH``, a hash of its context,
build arguments and base image, so an unchanged image can be reused without a build.
(A tag, not a label: on a vfs engine a LABEL step copies the whole file system, over a
minute for a torch image; a tag costs nothing.)

Images (``runner/NAME:latest``; the jobs name them in ``image:``):

    base             CUDA runtime (BASE_IMAGE), Python, sshd, rsync, the agent in /opt/runner
    franka-embedded  base + CPU torch: the franka_cube_stack ``embedded`` profile
    dino-wm          base + CUDA torch + DINO WM (franka_cube_stack, robomimic_can)
    lerobot          base + LeRobot 0.6.1 (act_so101, smolvla_so101, pi0_so101)
    openpi           base + uv + openpi (JAX) (openpi_pi0)

dino-wm and openpi build their program from a repository and ref given as build arguments
(:data:`PROGRAM_BUILD_ARGS`), upstream by default. A job whose ``program.fork`` says it
needs what upstream lacks gets one line from :func:`fork_notice`; ``runner image build``
passes the job's own ``program.repo``/``ref`` when it names them (:func:`fork_build`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import tarfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import RunnerError, SpecError, UsageError

if TYPE_CHECKING:
    from runner.spec import JobSpec

__all__ = [
    "CONTEXT_TAG_PREFIX",
    "PROGRAM_BUILD_ARGS",
    "BuildResult",
    "ForkBuild",
    "ImageDef",
    "build_context",
    "build_image",
    "catalog_specs",
    "docker_client",
    "fork_build",
    "fork_notice",
    "image_name_for",
    "images_dir",
    "known_images",
    "local_image",
    "parse_build_args",
    "push_image",
]

Say = Callable[[str], None]

CONTEXT_TAG_PREFIX = "ctx-"
#: What goes into an image of runner's source (``src/`` in the context).
SOURCE_ITEMS = ("runner", "pyproject.toml", "README.md", "jobs")
_SKIP_PARTS = frozenset({"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"})
_SKIP_SUFFIXES = (".pyc", ".pyo")
#: A build argument with a name like these would put a credential into the image's history.
_SECRET_LOOKING = re.compile(r"(TOKEN|API_KEY|APIKEY|SECRET|PASSWORD|PASSWD|PRIVATE_KEY)", re.I)
#: The build arguments naming the repository and ref of the program an image builds
#: (their defaults, an upstream commit, are in the Dockerfile and its labels).
PROGRAM_BUILD_ARGS: dict[str, tuple[str, str]] = {
    "dino-wm": ("DINO_WM_REPO", "DINO_WM_REF"),
    "openpi": ("OPENPI_REPO", "OPENPI_REF"),
}
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


@dataclass(frozen=True)
class ImageDef:
    """One buildable image: its folder in ``images/`` and the build arguments it fixes."""

    name: str
    folder: Path
    build_args: Mapping[str, str] = field(default_factory=dict)

    @property
    def repository(self) -> str:
        return f"runner/{self.name}"

    def default_base(self) -> str | None:
        """``BASE_IMAGE``'s default in the Dockerfile (None when it declares none)."""
        text = (self.folder / "Dockerfile").read_text(encoding="utf-8")
        match = re.search(r"^\s*ARG\s+BASE_IMAGE=(\S+)", text, re.M)
        return match.group(1).strip("\"'") if match else None


@dataclass(frozen=True)
class BuildResult:
    """What a build made: the image's tag and id, how long it took, whether it was reused."""

    tag: str
    image_id: str
    seconds: float
    reused: bool
    size_bytes: int
    context_hash: str
    pushed: str | None = None


def images_dir() -> Path:
    """``images/`` of the source checkout runner runs from; :class:`RunnerError` without one."""
    folder = Path(__file__).resolve().parents[2] / "images"
    if not folder.is_dir():
        raise RunnerError(
            f"no images/ folder next to runner's source ({folder}); build images from a clone "
            "of the runner repository"
        )
    return folder


def known_images(root: Path | None = None) -> dict[str, ImageDef]:
    """Every image that can be built: each ``images/NAME/Dockerfile``."""
    root = root or images_dir()
    return {
        d.name: ImageDef(d.name, d)
        for d in sorted(root.iterdir())
        if d.is_dir() and (d / "Dockerfile").is_file()
    }


def image_name_for(image_ref: str) -> str | None:
    """The ``runner image build`` name of an image reference, e.g. ``runner/lerobot:latest``."""
    repo = image_ref.rsplit("@", 1)[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rsplit(":", 1)[0]
    prefix, _, name = repo.rpartition("/")
    return name if prefix.endswith("runner") and name else None


def parse_build_args(items: Iterable[str]) -> dict[str, str]:
    """``K=V`` strings as a mapping; :class:`UsageError` for a malformed or secret-looking one."""
    args: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise UsageError(f"bad --build-arg {item!r}: expected KEY=VALUE, e.g. TORCH_SPEC=...")
        if _SECRET_LOOKING.search(key):
            raise UsageError(
                f"--build-arg {key}: a credential in a build argument stays in the image's "
                "history; secrets reach the container at run time (runner launch passes them)"
            )
        args[key] = value
    return args


# --------------------------------------------------------------------------- forks


@dataclass(frozen=True)
class ForkBuild:
    """What a build of an image adds for the catalog's forks: build arguments and notes."""

    build_args: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _program_args(spec: JobSpec) -> tuple[str, str] | None:
    name = image_name_for(spec.image) if spec.image else None
    return PROGRAM_BUILD_ARGS.get(name) if name else None


def _needs(spec: JobSpec) -> str:
    return f"note: {spec.name} needs a fork: {spec.program.fork}"


def _build_with(names: tuple[str, str], repo: str, ref: str) -> str:
    return f"--build-arg {names[0]}={repo} --build-arg {names[1]}={ref}"


def fork_notice(spec: JobSpec) -> str | None:
    """One line for a job that needs a fork (``program.fork``) and names none (``program.repo``).

    e.g. ``note: franka_cube_stack needs a fork: conf/env/... are in your DINO WM fork, not
    upstream; build with --build-arg DINO_WM_REPO=<url> --build-arg DINO_WM_REF=<sha>`` (the
    build arguments of the job's image; without such an image, the first part alone).
    None for every other job.
    """
    if not spec.program.fork or spec.program.repo:
        return None
    names = _program_args(spec)
    if names is None:
        return _needs(spec)
    return f"{_needs(spec)}; build with {_build_with(names, '<url>', '<sha>')}"


def fork_build(name: str, build_args: Mapping[str, str], specs: Iterable[JobSpec]) -> ForkBuild:
    """The build arguments and notes ``runner image build NAME`` adds for the jobs' forks.

    Only for an image that builds its program from a repository (:data:`PROGRAM_BUILD_ARGS`)
    and only when ``build_args`` (the user's) do not name that repository. Each job in
    ``specs`` that uses the image and has ``program.fork`` gets one note: what to pass
    (:func:`fork_notice`), or, when it names its fork (``program.repo`` and ``program.ref``),
    that the build uses it: those become the returned build arguments, unless the jobs name
    different forks (then none is chosen and each note says what to pass). A build argument
    the user gave wins. ``specs`` may hold a job several times (its profiles): once is used.
    """
    names = PROGRAM_BUILD_ARGS.get(name)
    if names is None:
        return ForkBuild()
    repo_arg, ref_arg = names
    if repo_arg in build_args:
        if ref_arg in build_args:
            return ForkBuild()
        return ForkBuild(
            notes=[
                f"note: --build-arg {repo_arg} without {ref_arg}: {name} checks out the "
                f"Dockerfile's default {ref_arg} (an upstream commit) from that repository"
            ]
        )
    forked: dict[str, JobSpec] = {}
    for spec in specs:
        if spec.program.fork and _program_args(spec) == names:
            forked.setdefault(spec.name, spec)
    named = {(s.program.repo, s.program.ref) for s in forked.values() if s.program.repo}
    chosen = next(iter(named)) if len(named) == 1 else None
    args: dict[str, str] = {}
    if chosen is not None and chosen[1]:
        args = {repo_arg: chosen[0], ref_arg: build_args.get(ref_arg, chosen[1])}
    notes = []
    for spec in forked.values():
        repo, ref = spec.program.repo, spec.program.ref
        if repo is None:
            notes.append(fork_notice(spec) or _needs(spec))
        elif not ref:
            notes.append(
                f"{_needs(spec)}; its program.repo has no program.ref: build with "
                f"{_build_with(names, repo, '<sha>')}"
            )
        elif args and (repo, ref) == chosen:
            notes.append(
                f"{_needs(spec)}; building its program.repo and program.ref: "
                f"{_build_with(names, args[repo_arg], args[ref_arg])}"
            )
        else:
            notes.append(
                f"{_needs(spec)}; the jobs name different forks, so none is passed: build with "
                f"{_build_with(names, repo, ref)}"
            )
    return ForkBuild(args, notes)


def catalog_specs() -> list[JobSpec]:
    """Every valid job of the catalog, and each with each of its profiles merged in."""
    from runner.spec import load_all, load_job

    specs: list[JobSpec] = []
    for spec in load_all()[0]:
        specs.append(spec)
        for profile in spec.profiles:
            with contextlib.suppress(SpecError):
                specs.append(load_job(spec.name, profile=profile))
    return specs


# --------------------------------------------------------------------------- context


def _source_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _walk(base: Path) -> Iterator[Path]:
    if base.is_file():
        yield base
        return
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base)
        if _SKIP_PARTS & set(rel.parts) or path.suffix in _SKIP_SUFFIXES:
            continue
        if path.is_file() and not path.is_symlink():
            yield path


def _add(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    # Fixed owner, mode and time: the same files give the same tarball, so the hash
    # (and the engine's layer cache) only moves when a file does.
    data = path.read_bytes()
    info = tarfile.TarInfo(arcname)
    info.size = len(data)
    info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
    info.mtime = 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def build_context(image: ImageDef, *, source_root: Path | None = None) -> tuple[bytes, str]:
    """The build context of ``image`` as an uncompressed tarball, and the sha256 of its files."""
    source_root = source_root or _source_root()
    buf = io.BytesIO()
    digest = hashlib.sha256()
    entries: list[tuple[Path, str]] = [
        (p, p.relative_to(image.folder).as_posix()) for p in _walk(image.folder)
    ]
    for item in SOURCE_ITEMS:
        base = source_root / item
        if not base.exists():
            raise RunnerError(f"runner's source has no {item} at {base}; build from a clone")
        entries.extend((p, "src/" + p.relative_to(source_root).as_posix()) for p in _walk(base))
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, arcname in entries:
            _add(tar, path, arcname)
            digest.update(arcname.encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return buf.getvalue(), digest.hexdigest()


# --------------------------------------------------------------------------- engine


def docker_client() -> Any:
    """A Docker SDK client for the engine ``DOCKER_HOST`` (or the local socket) points at.

    Raises :class:`RunnerError` (one line: what to start) when no engine answers.
    """
    import os

    try:
        import docker
    except ImportError:
        raise RunnerError(
            "the Docker SDK for Python is not installed; reinstall runner (`pip install -e .`)"
        ) from None
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:
        reason = str(exc).split("\n")[0][:160]
        raise RunnerError(
            f"no Docker engine answers at {where} ({reason}); start it (`sudo systemctl start "
            "docker`, or `sudo scripts/ci-infra.sh` here) or point DOCKER_HOST at one"
        ) from None
    return client


def local_image(client: Any, ref: str) -> Any | None:
    """The image ``ref`` on the engine, or None when it is not there."""
    import docker.errors

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise RunnerError(f"the Docker engine cannot look up {ref}: {_api_reason(exc)}") from None


def _api_reason(exc: Any) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).split("\n")[0][:200]


def _ensure_base(client: Any, base: str, say: Say) -> Any:
    """The base image, pulled when it is missing and pullable; :class:`RunnerError` otherwise."""
    found = local_image(client, base)
    if found is not None:
        return found
    name = image_name_for(base)
    if name is not None:
        raise RunnerError(
            f"base image {base} is not on this Docker engine; build it first: "
            f"`runner image build {name}`"
        )
    say(f"pulling base image {base}")
    try:
        for line in client.api.pull(base, stream=True, decode=True):
            if "error" in line:
                raise RunnerError(str(line["error"]))
        found = local_image(client, base)
    except RunnerError as err:
        reason = str(err)
    except Exception as exc:
        reason = _api_reason(exc)
    else:
        if found is not None:
            return found
        reason = "the pull gave no image"
    raise RunnerError(
        f"base image {base} is not on this Docker engine and cannot be pulled ({reason[:160]}); "
        "pull or build it, or pass --base-image IMAGE"
    )


def build_image(
    name: str,
    *,
    base_image: str | None = None,
    tag: str = "latest",
    build_args: Mapping[str, str] | None = None,
    push: str | None = None,
    reuse: bool = False,
    nocache: bool = False,
    say: Say = lambda line: None,
    verbose: bool = False,
    client: Any | None = None,
    root: Path | None = None,
) -> BuildResult:
    """Build ``runner/NAME:TAG`` from ``images/NAME`` (see the module docstring).

    ``base_image`` sets ``BASE_IMAGE``; ``build_args`` add to the image's own. With
    ``reuse``, an image already tagged so whose context hash matches is returned as is.
    ``nocache`` builds every step anew (the engine's layer cache unused).
    ``push`` (a registry, e.g. ``ghcr.io/me``) tags ``REGISTRY/NAME:TAG`` and pushes it.
    Step lines go to ``say``; the build's own output only with ``verbose`` (its last lines
    are shown when a step fails). Raises :class:`RunnerError` (one line) for an unknown
    image, no engine, a missing base, or a failing step.
    """
    images = known_images(root)
    if name not in images:
        raise UsageError(
            f"no image {name!r} in images/ (images: {', '.join(sorted(images)) or 'none'})"
        )
    image = images[name]
    args = {**image.build_args, **(build_args or {})}
    parse_build_args(f"{k}={v}" for k, v in args.items())  # refuses secret-looking names
    if base_image is not None:
        args["BASE_IMAGE"] = base_image
    base = args.get("BASE_IMAGE") or image.default_base()
    client = client or docker_client()
    ref = f"{image.repository}:{tag}"
    started = time.monotonic()
    base_id = _ensure_base(client, base, say).id if base else ""
    context, files_hash = build_context(image)
    context_hash = hashlib.sha256(
        json.dumps([files_hash, sorted(args.items()), base_id]).encode()
    ).hexdigest()[:32]
    hash_tag = CONTEXT_TAG_PREFIX + context_hash
    existing = local_image(client, f"{image.repository}:{hash_tag}") if reuse else None
    if existing is not None:
        say(f"image {ref}: unchanged since its last build ({existing.short_id}), reused")
        image_id, reused = existing.id, True
        client.api.tag(image_id, image.repository, tag=tag)
    else:
        say(f"building {ref} from images/{image.folder.name}" + (f" on {base}" if base else ""))
        image_id = _stream_build(
            client,
            context,
            ref=ref,
            args=args,
            nocache=nocache,
            say=say,
            verbose=verbose,
        )
        reused = False
        _retag_context(client, image.repository, image_id, hash_tag)
    seconds = time.monotonic() - started
    size = int(client.images.get(image_id).attrs.get("Size") or 0)
    if not reused:
        say(f"built {ref} ({image_id[7:19]}, {size / 1e9:.2f} GB) in {seconds:.0f} s")
    pushed = push_image(client, ref, push, say=say) if push else None
    return BuildResult(ref, image_id, seconds, reused, size, context_hash, pushed)


def _stream_build(
    client: Any,
    context: bytes,
    *,
    ref: str,
    args: Mapping[str, str],
    nocache: bool,
    say: Say,
    verbose: bool,
) -> str:
    step = "before the first step"
    recent: deque[str] = deque(maxlen=15)
    image_id: str | None = None
    try:
        stream = client.api.build(
            fileobj=io.BytesIO(context),
            custom_context=True,
            tag=ref,
            buildargs=dict(args),
            network_mode="host",
            rm=True,
            forcerm=True,
            pull=False,
            nocache=nocache,
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                for line in recent:
                    say(f"  | {line}")
                detail = str(chunk.get("error") or "").strip().splitlines()
                message = detail[-1] if detail else "unknown error"
                raise RunnerError(f"building {ref} failed at {step}: {message[:300]}")
            if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                image_id = str(chunk["aux"]["ID"])
            text = str(chunk.get("stream") or chunk.get("status") or "")
            for line in text.splitlines():
                line = line.rstrip()
                if not line:
                    continue
                match = _STEP.match(line)
                if match:
                    step = f"step {match.group(1)}/{match.group(2)} ({match.group(3)[:100]})"
                    recent.clear()
                    say(line[:200])
                elif line.startswith("Successfully built ") and image_id is None:
                    image_id = line.split()[-1]
                else:
                    recent.append(line[:300])
                    if verbose:
                        say(f"  | {line}")
    except RunnerError:
        raise
    except Exception as exc:
        raise RunnerError(f"building {ref} failed at {step}: {_api_reason(exc)}") from None
    if image_id is None:
        raise RunnerError(f"building {ref} ended without an image; run again with --verbose")
    return image_id


def _retag_context(client: Any, repository: str, image_id: str, hash_tag: str) -> None:
    """Tag the new build ``hash_tag``; drop the context tags of builds no other tag names.

    Those are the builds this one (or another) replaced: without their last tag the engine
    frees them, where they would otherwise pile up (a full copy each on vfs). A build still
    tagged otherwise (another ``--tag``, other build arguments) keeps its context tag.
    """
    client.api.tag(image_id, repository, tag=hash_tag)
    for old in client.images.list(name=repository):
        tags = [ref.rpartition(":")[2] for ref in old.tags]
        if all(t.startswith(CONTEXT_TAG_PREFIX) for t in tags) and hash_tag not in tags:
            for t in tags:
                with contextlib.suppress(Exception):  # in use by a container: it stays
                    client.images.remove(f"{repository}:{t}")


def push_image(client: Any, ref: str, registry: str, *, say: Say) -> str:
    """Tag ``ref`` as ``REGISTRY/NAME:TAG`` and push it, one line per layer; the pushed ref."""
    repo, _, tag = ref.rpartition(":")
    target_repo = f"{registry.rstrip('/')}/{repo.rsplit('/', 1)[-1]}"
    target = f"{target_repo}:{tag}"
    try:
        client.api.tag(ref, target_repo, tag=tag)
    except Exception as exc:
        raise RunnerError(f"cannot tag {ref} as {target}: {_api_reason(exc)}") from None
    say(f"pushing {target}")
    done: set[str] = set()
    try:
        for chunk in client.api.push(target_repo, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise RunnerError(
                    f"pushing {target} failed: {str(chunk['error']).splitlines()[0][:200]}; "
                    "log in with `docker login` for that registry"
                )
            status, layer = str(chunk.get("status") or ""), str(chunk.get("id") or "")
            if status in ("Pushed", "Layer already exists", "Mounted from") and layer not in done:
                done.add(layer)
                say(f"  {layer}: {status.lower()}")
            elif status.startswith(f"{tag}: digest:"):
                say(f"  {status}")
    except RunnerError:
        raise
    except Exception as exc:
        raise RunnerError(f"pushing {target} failed: {_api_reason(exc)}") from None
    say(f"pushed {target}")
    return target


def describe_images(client: Any | None, root: Path | None = None) -> list[dict[str, Any]]:
    """Each buildable image with the jobs that use it and, when an engine answers, its build."""
    users: dict[str, set[str]] = {}
    for resolved in catalog_specs():
        if resolved.image and (used := image_name_for(resolved.image)):
            label = resolved.name + (f" ({resolved.profile})" if resolved.profile else "")
            users.setdefault(used, set()).add(label)
    rows = []
    for name, image in sorted(known_images(root).items()):
        ref = f"{image.repository}:latest"
        jobs = sorted(users.get(name, ()))
        found = local_image(client, ref) if client is not None else None
        rows.append(
            {
                "name": name,
                "image": ref,
                "jobs": jobs,
                "built": found is not None,
                "id": found.id[7:19] if found is not None else None,
                "size_bytes": int(found.attrs.get("Size") or 0) if found is not None else None,
                "created": found.attrs.get("Created") if found is not None else None,
            }
        )
    return rows

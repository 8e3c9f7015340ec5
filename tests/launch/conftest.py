"""Image fixtures: a locally made build base, then images/base and images/franka-embedded on it.

Nothing can be pulled here, so the base the real images build on (``BASE_IMAGE``) is made
from the Debian image ``scripts/ci-infra.sh`` imports, plus what only a test machine needs
(these layers live here, never in ``images/``): the host's CA bundle with ``PIP_CERT`` so
pip inside the build trusts this network, and the torch CPU wheel from ``/opt/wheels``
with ``PIP_FIND_LINKS`` so ``torch==2.13.0`` installs from disk, not as gigabytes of CUDA.

Every image is labelled with a hash of its inputs and reused while they are unchanged, so
repeated runs and CI on the same machine do not rebuild; a fresh machine builds them all.
The builds run with ``HF_TOKEN`` and ``WANDB_API_KEY`` set to :data:`BUILD_SECRETS` in
the environment, so the image tests can show that no secret reaches any layer.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.vast_server import BASE_IMAGE as DEBIAN_IMAGE
from tests.fakes.vast_server import docker_unavailable_reason

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
WHEELS = Path("/opt/wheels")
BUILD_BASE = "runner-test/build-base:bookworm"
INPUTS_LABEL = "runner.test-inputs"
EMBEDDED_IMAGE = "runner/franka-embedded:latest"
#: Distinctive values in the builder's environment that must never appear in an image.
BUILD_SECRETS = {
    "HF_TOKEN": "hf_runnerTestLeakCanary7Q2x9Zb",
    "WANDB_API_KEY": "wandbRunnerTestLeakCanary4f8e1d0c",
}
#: Build arguments of franka-embedded in tests: torch from the wheel on disk.
EMBEDDED_ARGS = {"TORCH_INDEX_URL": ""}


@dataclass(frozen=True)
class BuiltImages:
    """The images the launch tests use, and how long making each took in this session."""

    build_base: str
    base: str
    embedded: str
    seconds: dict[str, float]
    reused: dict[str, bool]
    base_files_hash: str  # runner's source + images/base as they were built


def _wheels() -> list[Path]:
    return sorted(WHEELS.glob("torch-*.whl")) if WHEELS.is_dir() else []


def _add_file(tar: tarfile.TarFile, name: str, path: Path | None = None, data: bytes = b"") -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = 0o644, 0
    if path is not None:
        info.size = path.stat().st_size
        with path.open("rb") as f:
            tar.addfile(info, f)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def make_build_base(client: Any) -> tuple[str, bool]:
    """``runner-test/build-base:bookworm`` (made or reused); the tag and whether it was reused."""
    wheels = _wheels()
    debian = client.images.get(DEBIAN_IMAGE)
    dockerfile = (
        f"FROM {DEBIAN_IMAGE}\n"
        "COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n"
        + ("COPY wheels/ /opt/wheels/\n" if wheels else "")
        + "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt"
        + (" PIP_FIND_LINKS=/opt/wheels" if wheels else "")
        + "\n"
    )
    digest = hashlib.sha256(dockerfile.encode() + debian.id.encode())
    digest.update(CA_BUNDLE.read_bytes())
    for wheel in wheels:
        digest.update(f"{wheel.name}:{wheel.stat().st_size}".encode())
    inputs = digest.hexdigest()[:32]
    try:
        found = client.images.get(BUILD_BASE)
        if found.labels.get(INPUTS_LABEL) == inputs:
            return BUILD_BASE, True
    except Exception:
        pass
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_file(tar, "Dockerfile", data=dockerfile.encode())
        _add_file(tar, "ca-certificates.crt", CA_BUNDLE)
        for wheel in wheels:
            _add_file(tar, f"wheels/{wheel.name}", wheel)
    build_context(client, buf, BUILD_BASE, inputs)
    return BUILD_BASE, False


def build_context(client: Any, context: io.BytesIO, tag: str, inputs: str) -> None:
    """Build a test-only image from a context tarball, labelled with the hash of its inputs
    (:data:`INPUTS_LABEL`) so an unchanged one is reused; raises on a failing step."""
    context.seek(0)
    for chunk in client.api.build(
        fileobj=context,
        custom_context=True,
        tag=tag,
        labels={INPUTS_LABEL: inputs},
        network_mode="host",
        rm=True,
        forcerm=True,
        decode=True,
    ):
        if "error" in chunk:
            raise RuntimeError(f"building {tag}: {chunk['error']}")


def build_test_images(client: Any) -> BuiltImages:
    """The build base, then base and franka-embedded on it with ``runner``'s own builder."""
    from runner.launch.images import build_context, build_image, known_images

    files_hash = build_context(known_images()["base"])[1]
    seconds: dict[str, float] = {}
    reused: dict[str, bool] = {}
    started = time.monotonic()
    build_base, reused["build-base"] = make_build_base(client)
    seconds["build-base"] = time.monotonic() - started
    saved = {k: os.environ.get(k) for k in BUILD_SECRETS}
    os.environ.update(BUILD_SECRETS)
    try:
        base = build_image("base", base_image=build_base, reuse=True, client=client)
        embedded = build_image(
            "franka-embedded",
            base_image=base.tag,
            build_args=EMBEDDED_ARGS,
            reuse=True,
            client=client,
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    for result, name in ((base, "base"), (embedded, "franka-embedded")):
        seconds[name], reused[name] = result.seconds, result.reused
    return BuiltImages(build_base, base.tag, embedded.tag, seconds, reused, files_hash)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A Docker SDK client, or a skip saying why there is no engine or Debian image here."""
    reason = docker_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    import docker

    client = docker.from_env(timeout=900)
    yield client
    client.close()


@pytest.fixture(scope="session")
def built_images(docker_client: Any) -> BuiltImages:
    """``runner/base`` and ``runner/franka-embedded`` built here (reused when unchanged)."""
    return build_test_images(docker_client)

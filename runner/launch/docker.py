"""``runner launch JOB --docker``: the job's image on the local Docker engine, under the agent.

The container runs ``runner agent start RUN_DIR``, the same entry a rented host runs, so a
run behaves the same here and there. The run folder is mounted at its own absolute path
(every path in it means the same inside and out) and the dataset read-only under
``/data/NAME``; ``launch.json`` is written with the dataset as the container sees it.
The container shares the host's network (engines here may have no bridge; the agent may
talk to loopback services), runs an init (zombie workers are reaped, signals reach the
agent), may ptrace (py-spy stack dumps), gets the job's ``/dev/shm`` (``shm_gb``) and its
GPUs through the NVIDIA runtime. Secrets are handed over as the container's environment
at start: never in the image, the command line or ``launch.json``.

The container's output is followed while it runs. Ctrl-C or SIGTERM stops it (SIGTERM
to the agent, which stops training and writes its final status; SIGKILL after a grace
period). The outcome is the agent's own final state from ``status.json``. The container
is removed afterwards: everything of the run is in the run folder (``logs/``, events,
status, checkpoints), and containers left behind would each hold a copy of the image's
writable layer. It is named ``runner-RUN_ID`` and labelled ``runner.run_id`` while it
runs, so ``docker ps`` shows it if this process dies.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runner.errors import DeviceError, RunnerError
from runner.rundir import Launch, RunState, read_status
from runner.spec import JobSpec

__all__ = ["CONTAINER_DATA", "DockerOutcome", "container_name", "run_docker"]

Say = Callable[[str], None]

#: Where datasets are mounted in the container (read-only): ``/data/NAME``.
CONTAINER_DATA = "/data"
#: Seconds between SIGTERM and SIGKILL when the run is stopped from here.
STOP_GRACE_S = 30.0
RUN_ID_LABEL = "runner.run_id"


@dataclass(frozen=True)
class DockerOutcome:
    """How a containerised run ended: the container's name, exit code and the agent's state."""

    container: str
    exit_code: int
    state: RunState
    summary: str


class _Stop(Exception):
    """SIGTERM arrived while the container ran."""


def container_name(run_id: str) -> str:
    """``runner-RUN_ID``, with what Docker does not allow in a name replaced."""
    return "runner-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", run_id)


def run_docker(
    launch: Launch,
    run_dir: Path,
    *,
    secrets: Mapping[str, str],
    say: Say,
    client: Any | None = None,
    stop_grace_s: float = STOP_GRACE_S,
) -> DockerOutcome:
    """Run ``launch`` in its job's image until the agent in it ends; see the module docstring.

    Raises :class:`RunnerError` (one line, no container left) when the job has no image,
    the image is not on the engine, no engine answers, or the container cannot start;
    :class:`DeviceError` when the job needs GPUs and the engine has no NVIDIA runtime.
    """
    import docker.errors

    from runner.launch.images import docker_client, image_name_for, local_image

    spec = JobSpec.model_validate(dict(launch.spec))
    if spec.image is None:
        where = f"profile {spec.profile}" if spec.profile else "its base spec"
        raise RunnerError(f"{spec.name} ({where}) names no image; run it with --local")
    client = client or docker_client()
    if local_image(client, spec.image) is None:
        name = image_name_for(spec.image)
        fix = (
            f"build it with `runner image build {name}`"
            if name
            else f"pull it with `docker pull {spec.image}`"
        )
        raise RunnerError(f"image {spec.image} is not on this Docker engine; {fix}")
    device_requests = _gpu_requests(client, spec)
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    volumes = {str(run_dir): {"bind": str(run_dir), "mode": "rw"}}
    dataset = None
    if launch.dataset:
        host = Path(launch.dataset).resolve()
        dataset = f"{CONTAINER_DATA}/{host.name}"
        volumes[str(host)] = {"bind": dataset, "mode": "ro"}
    replace(launch, backend="docker", dataset=dataset).write(run_dir)
    name = container_name(launch.run_id)
    options: dict[str, Any] = {
        "name": name,
        "labels": {RUN_ID_LABEL: launch.run_id, "runner.job": spec.name},
        "environment": dict(secrets),
        "volumes": volumes,
        "network_mode": "host",
        "init": True,
        "cap_add": ["SYS_PTRACE"],
        "detach": True,
    }
    if spec.resources.shm_gb > 0:
        options["shm_size"] = f"{int(spec.resources.shm_gb * 1024)}m"
    if device_requests:
        options["device_requests"] = device_requests
    try:
        container = client.containers.run(
            spec.image, ["runner", "agent", "start", str(run_dir)], **options
        )
    except docker.errors.APIError as exc:
        _remove(client, name)
        reason = str(getattr(exc, "explanation", None) or exc).splitlines()[0][:240]
        if "device driver" in reason and "gpu" in reason:
            raise DeviceError(_no_nvidia(spec, "the engine cannot hand out GPUs")) from None
        raise RunnerError(f"cannot start {spec.image} for {spec.name}: {reason}") from None
    shown = f", GPUs {len(device_requests)} request(s)" if device_requests else ""
    say(f"docker: container {name} ({spec.image}{shown}); Ctrl-C stops it")
    try:
        return _follow(container, run_dir, say=say, stop_grace_s=stop_grace_s)
    finally:
        _remove(client, name)


def _follow(container: Any, run_dir: Path, *, say: Say, stop_grace_s: float) -> DockerOutcome:
    """Show the container's output until it exits (stopping it on Ctrl-C/SIGTERM)."""
    tail: deque[str] = deque(maxlen=5)
    printer = threading.Thread(
        target=_print_logs, args=(container, say, tail), name="docker-logs", daemon=True
    )
    printer.start()
    stopped_by = None
    try:
        with _sigterm_raises():
            code = _wait(container)
    except (KeyboardInterrupt, _Stop) as exc:
        stopped_by = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"
        say(
            f"docker: {stopped_by}: stopping {container.name} (SIGTERM, kill after "
            f"{stop_grace_s:.0f} s)"
        )
        try:
            container.stop(timeout=int(stop_grace_s))
        except KeyboardInterrupt:
            container.kill()
        code = _wait(container)
    printer.join(timeout=5)
    status = read_status(run_dir)
    if status is not None and status.state in ("finished", "failed", "stopped"):
        return DockerOutcome(container.name, code, status.state, status.summary)
    state: RunState
    if stopped_by is not None:
        state, summary = "stopped", f"stopped from here ({stopped_by}) before the agent ended"
    else:
        last = "; ".join(tail) or "no output"
        state = "failed"
        summary = f"the container exited with code {code} before the agent ended ({last})"
    return DockerOutcome(container.name, code or 1, state, summary[:400])


def _wait(container: Any) -> int:
    result = container.wait()
    return int(result.get("StatusCode", 1)) if isinstance(result, dict) else 1


def _print_logs(container: Any, say: Say, tail: deque[str]) -> None:
    """Follow the container's output line by line, reattaching after a read timeout."""
    since: float | None = None
    while True:
        try:
            buffer = b""
            for chunk in container.logs(stream=True, follow=True, timestamps=True, since=since):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    stamp, _, text = raw.decode("utf-8", "replace").partition(" ")
                    since = _seconds(stamp) or since
                    line = text.rstrip("\r")
                    tail.append(line[:200])
                    say(line)
            return
        except Exception:
            # A quiet run outlives the client's read timeout; carry on where it stopped
            # unless the container is gone.
            try:
                container.reload()
            except Exception:
                return
            if container.status not in ("running", "created"):
                return
            since = None if since is None else since + 1e-6


def _seconds(stamp: str) -> float | None:
    """An RFC 3339 timestamp from ``docker logs --timestamps`` as epoch seconds."""
    from datetime import datetime

    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z$", stamp)
    if not match:
        return None
    whole = datetime.fromisoformat(match.group(1) + "+00:00").timestamp()
    return whole + float(match.group(2) or 0)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`_Stop` in the main thread while inside (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Stop()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _gpu_requests(client: Any, spec: JobSpec) -> list[Any]:
    """Device requests for the job's GPUs (the freest ones, by UUID, when NVML sees them)."""
    wanted = spec.resources.gpus
    if wanted <= 0:
        return []
    runtimes = (client.info() or {}).get("Runtimes") or {}
    if "nvidia" not in runtimes:
        shown = ", ".join(sorted(runtimes)) or "none"
        raise DeviceError(_no_nvidia(spec, f"its runtimes: {shown}"))
    import docker.types

    from runner.launch.local import pick_device

    device = pick_device(spec, "cuda")  # DeviceError when too few GPUs are free
    ids = [u for u in device.env.get("CUDA_VISIBLE_DEVICES", "").split(",") if u]
    if len(ids) >= wanted:
        return [docker.types.DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]
    return [docker.types.DeviceRequest(count=wanted, capabilities=[["gpu"]])]


def _no_nvidia(spec: JobSpec, detail: str) -> str:
    profile = " (--profile embedded)" if "embedded" in spec.profiles else ""
    return (
        f"{spec.name} needs {spec.resources.gpus} GPU(s) and this Docker engine has no NVIDIA "
        f"runtime ({detail}); install the NVIDIA Container Toolkit and restart dockerd, "
        f"or run a CPU profile{profile}"
    )


def _remove(client: Any, name: str) -> None:
    with contextlib.suppress(Exception):
        client.containers.get(name).remove(force=True)

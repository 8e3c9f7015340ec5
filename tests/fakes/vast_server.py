"""A loopback vast.ai control plane whose instances are real Docker containers running sshd.

``VastServer`` is a threaded HTTP server on 127.0.0.1 that speaks the wire format the real
``vastai`` client (1.9.x) sends and parses (see ``/work/shared/reference/vast-api.md``), unchanged::

    with VastServer() as vast:
        offer = vast.add_offer(gpu_name="RTX 4090", disk_space=300, dph_total=0.6)
        client = VastAI(api_key=vast.api_key, server_url=vast.url, retry=3)
        client.create_ssh_key(public_key_text)  # authorised in every instance created afterwards
        new = client.create_instance(offer["id"], image="ghcr.io/me/train:latest", disk=300,
                                     runtype="ssh_direc ssh_proxy", cancel_unavail=True)
        ...  # poll show_instance(new["new_contract"]) until actual_status == "running"
        # then: ssh -p <ssh_port> root@127.0.0.1 'df -PT /workspace'
    # closing removes every container it started, unmounts its volumes

Every instance is a container (``docker run -d --network host --init``) of a local image, named
and labelled ``runner-vast-fake-<id>``. With an SSH runtype (``ssh_proxy``, ``ssh_direc ssh_proxy``,
``ssh_direct``, the jupyter ones) the image's entrypoint is replaced, as on vast.ai, by a boot
script: ``ssh-keygen -A``, ``mkdir -p /run/sshd``, ``/root/.ssh/authorized_keys`` from the account's
SSH keys, ``onstart`` written to ``/root/onstart.sh`` and started in the background (output in
``/var/log/onstart.log``), then ``exec /usr/sbin/sshd -D -e -p PORT -o ListenAddress=127.0.0.1`` on
a free loopback port, reported as ``ssh_host`` 127.0.0.1 / ``ssh_port`` PORT (and as
``ports["22/tcp"]`` with ``public_ipaddr`` for direct mode). The ``args`` runtype keeps the image's
entrypoint, runs ``args`` and has no SSH. A request without ``runtype`` gets ``args`` too (the SDK
leaves the key out unless told, and vast.ai's backend then picks the template's default): a caller
that wants SSH must say so.

The image: the requested one if the Docker engine has it locally (a test may build one), otherwise
``base_image`` (default ``$RUNNER_TEST_IMAGE`` or ``runner-test/debian-sshd:bookworm``, what
``scripts/ci-infra.sh`` imports). Nothing is ever pulled. The create body's ``env`` becomes the
container's environment, minus the docker-option entries (``"-p 8080:8080"``, ``"-v V.7:/mnt"``),
plus ``CONTAINER_ID``, ``CONTAINER_API_KEY`` (the create answer's ``instance_api_key``) and
``VAST_CONTAINERLABEL=C.<id>``; as on vast.ai it is visible to ``onstart``
and to the container's processes but not in an SSH session (sshd starts sessions with a clean
environment; write ``/etc/environment`` from ``onstart`` to change that). To hand the project's
probe a fake GPU, either put ``RUNNER_FAKE_NVML`` in the create body's env (the project's own call)
or use the offer knob ``fake_gpu="scenario:healthy:gpus=1"``, which also lands in
``/etc/environment`` (so SSH sessions see it) and in ``/etc/runner-fake-nvml``.

Disks (sizes are GiB, so "300 GB" is never short whichever unit a probe uses): the paid-for disk is
a ``tmpfs`` (rw, exec) mounted at ``/workspace`` sized to the request, so ``df -PT /workspace``
shows its real size and type. Scenario ``small_overlay`` mounts nothing there: ``/workspace`` is
a plain folder of the container's root filesystem (Docker's storage driver: here ``vfs``, whose
``df`` is the host disk; on vast.ai the overlay), i.e. the same filesystem as ``/``, while the
instance still reports the requested ``disk_space``; by default it also mounts a read-only 2 TiB
``tmpfs`` at ``/mnt/big`` (the "2 TB disk" users saw). ``workspace_gb`` and ``ro_mounts`` change
either. Volumes are host folders bind-mounted at their ``mount_path``; as root they are ``tmpfs``
mounts of the volume's size (so ``df`` shows it), otherwise plain folders. A volume lives on one
machine, survives instance destroy and cannot be deleted while an instance uses it.

Offer knobs (``add_offer``; ``scenario`` is one of ``SCENARIOS``):

- ``clean``: a proper writable disk of the requested size at ``/workspace``; reaches running.
- ``small_overlay``: see above.
- ``pull_fail``: stays ``loading`` for ever with ``status_msg`` "Error response from daemon: failed
  to pull image ..." (``fail_msg`` to change it); no container; storage keeps billing.
- ``ssh_refused``: reaches running, but nothing listens on ``ssh_port``.
- ``vanish``: listed by search, gone at create: 404 ``no_such_ask`` (410 with ``cancel_unavail``),
  and gone from search afterwards.
- ``unavailable``: listed, but its GPUs are taken at create time: with ``cancel_unavail`` 410
  ``no_such_ask``; without it vast.ai's trap: ``success`` and a new contract that sits ``stopped``
  ("scheduling"), never runs, and bills storage until destroyed.
- ``boot_delay_s``: seconds in ``loading`` (the image pull) before the container starts.

Rate limits: ``rate_limit(times, retry_after=..., body=...)`` answers the next ``times`` matching
requests with 429 (plain text, ``{"detail"}``, ``rate_limit_exceeded`` or the never-retried
``search_quota_exceeded`` body); ``VastServer(min_interval_s=...)`` enforces vast.ai's per-endpoint
minimum interval. The ``vastai`` client retries 429 (and 502/503/504) ``retry - 1`` times, sleeping
``Retry-After`` (up to 60 s) or 0.15 s x 1.5^n, then raises ``requests.HTTPError`` from
``raise_for_status``.

Paths answered (``{id}`` numeric; a trailing slash is optional; ``?api_key=`` works as well as the
``Authorization: Bearer`` header, anything else is 401). An instance's own key
(``$CONTAINER_API_KEY`` inside it) is accepted for ``GET``, ``PUT`` and ``DELETE
/api/v0/instances/{id}/`` of that one instance, as vast.ai lets an instance show, stop or
destroy itself, and is 401 for everything else::

    POST   /api/v0/bundles/                    search offers (JSON query; GET ?q={json} too)
    PUT    /api/v0/search/asks/                search offers ({"q": {...}}, search_offers_new)
    PUT    /api/v0/asks/{id}/                  create instance
    GET    /api/v1/instances/                  list (select_filters, order_by, limit, after_token)
    GET    /api/v0/instances/                  410 deprecated_endpoint
    GET    /api/v0/instances/{id}/             one instance: {"instances": {...} | null}
    PUT    /api/v0/instances/{id}/             {"state": "stopped"|"running"}, {"label": ...}
    DELETE /api/v0/instances/{id}/             destroy (removes the container)
    PUT    /api/v0/instances/                  bulk state {"ids": [...], "state": ...}
    DELETE /api/v0/instances/                  bulk destroy {"instance_ids": [...]}
    PUT    /api/v0/instances/request_logs/{id}/  -> {success, result_url}; GET result_url: no auth
    POST   /api/v0/instances/{id}/ssh/         attach a key;  DELETE .../ssh/{key_id}/ detach
    GET    /api/v0/ssh/   POST /api/v0/ssh/   PUT|DELETE /api/v0/ssh/{id}/
    GET    /api/v0/users/current/
    POST   /api/v0/volumes/search/             volume offers (one per machine)
    GET    /api/v0/volumes?owner=me&type=...   PUT /api/v0/volumes/   DELETE /api/v0/volumes/?id=N

Error bodies are ``{"success": false, "error": CODE, "msg": TEXT}`` (create adds ``ask_id``):
400 ``invalid_args`` / ``invalid_price`` / ``volume_in_use``, 401 ``invalid_user``, 404
``no_such_ask`` / ``no_such_instance`` / ``no_such_volume`` / ``no_such_key`` / ``not_found``
(unknown path), 410 ``no_such_ask`` / ``deprecated_endpoint``, 500 ``fake_bug`` (also in
``errors``). The 401 code, the 410 of the old list and the SSH key record shape (``id``,
``user_id``, ``public_key``, ``created_at``, ``deleted_at``) are this emulator's choice: the
reference does not pin them.

Billing: ``billing()`` lists one ``BillingRecord`` per instance and volume (storage from creation,
GPU while ``running``, both until destroy/delete); ``still_billing()`` is what a test asserts
empty. ``requests`` is the request log. Containers are labelled with the owning process id, so
``cleanup_leftovers()`` removes those of dead processes only (a killed test run), never another
live server's.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "BASE_IMAGE",
    "DEFAULT_API_KEY",
    "GIB",
    "LABEL",
    "NAME_PREFIX",
    "SCENARIOS",
    "SSH_RUNTYPES",
    "BillingRecord",
    "InstanceInfo",
    "RateLimit",
    "RequestRecord",
    "VastServer",
    "cleanup_leftovers",
    "docker_unavailable_reason",
]

DEFAULT_API_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
"""The key a ``VastServer`` accepts unless told otherwise (64 hex digits, like a real one)."""

BASE_IMAGE = os.environ.get("RUNNER_TEST_IMAGE", "runner-test/debian-sshd:bookworm")
"""Local image an instance runs when the requested one is not on the Docker engine."""

NAME_PREFIX = "runner-vast-fake-"
"""Container names are ``NAME_PREFIX + str(instance_id)``; state folders start with it too."""

LABEL = "runner-vast-fake"
"""Label on every container this module starts (value: the instance id)."""
_LABEL_PID = f"{LABEL}.pid"
_LABEL_SERVER = f"{LABEL}.server"

SCENARIOS = ("clean", "small_overlay", "pull_fail", "ssh_refused", "vanish", "unavailable")
"""What an offer's instance does; see the module docstring."""

SSH_RUNTYPES = frozenset(
    {
        "ssh",
        "ssh_proxy",
        "ssh_direc ssh_proxy",
        "ssh_direct ssh_proxy",
        "ssh_direct",
        "ssh_direc",
        "jupyter",
        "jupyter_proxy ssh_proxy",
        "jupyter_direc ssh_direc ssh_proxy",
        "jupyter_direct ssh_direct ssh_proxy",
    }
)
"""Runtypes whose entrypoint is sshd (the client's ``direc`` spelling and the docs' ``direct``)."""
_RUNTYPES = SSH_RUNTYPES | {"args"}

GIB = 1024**3
_STORAGE_DEFAULT_GB = 5.0  # the client's default allocated_storage
_HOURS_PER_MONTH = 720.0  # storage_cost is $/GB/month
_PAGE_MAX = 25
_LIMITS = {"image": 1024, "label": 256, "args_onstart": 4096, "env_entry": 256, "disk_min": 8.0}
_SEARCH_KEYS = {"order", "type", "limit", "allocated_storage", "disable_bundling", "select_cols"}
_OPS = {"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"}
_TEXT_429 = "API requests too frequent endpoint threshold=1.0s. Please slow down and retry later."


# ------------------------------------------------------------------------------------------------
# Public records
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server answered it."""

    method: str
    path: str
    """URL path without the query string."""
    query: Mapping[str, str]
    """Query parameters (last value of each)."""
    body: Any
    """Parsed JSON body, ``None`` when there was none."""
    status: int
    started: float
    """``time.time()`` when it arrived."""


@dataclass(frozen=True)
class BillingRecord:
    """What one instance or volume costs, as a snapshot.

    Storage bills from creation, the GPU share only while the instance is ``running``; both stop
    at destroy (instances) or delete (volumes).
    """

    kind: str
    """``instance`` or ``volume``."""
    id: int
    label: str | None
    dph_total: float
    """Hourly price while running (GPU + storage); for a volume its storage price."""
    storage_dph: float
    """Hourly storage share, billed whatever the state."""
    started_at: float
    ended_at: float | None
    """Destroy/delete time; ``None`` while it still bills."""
    gpu_seconds: float
    """Seconds spent ``running`` so far."""

    @property
    def billing(self) -> bool:
        return self.ended_at is None

    @property
    def cost(self) -> float:
        """Dollars so far."""
        end = self.ended_at if self.ended_at is not None else time.time()
        storage = self.storage_dph * max(0.0, end - self.started_at) / 3600.0
        return storage + (self.dph_total - self.storage_dph) * self.gpu_seconds / 3600.0


@dataclass(frozen=True)
class InstanceInfo:
    """Server-side view of an instance (snapshot), for assertions beyond the wire format."""

    id: int
    offer_id: int
    machine_id: int
    scenario: str
    label: str | None
    actual_status: str | None
    status_msg: str | None
    image: str
    """Image named in the create request."""
    image_run: str | None
    """Local image the container actually runs (``None`` before/without a container)."""
    runtype: str
    env: Mapping[str, str]
    """The create body's env, as sent."""
    onstart: str | None
    disk_gb: float
    """Disk requested (and billed)."""
    workspace_gb: float | None
    """Size of the tmpfs mounted at the workspace path; ``None``: nothing mounted there."""
    ssh_port: int | None
    container_name: str
    container_id: str | None
    volume_ids: tuple[int, ...]
    created_at: float
    destroyed_at: float | None


@dataclass
class RateLimit:
    """A scripted burst of 429s (``VastServer.rate_limit``); ``hits`` counts answered requests."""

    times: int
    retry_after: float | None
    body: str
    method: str | None
    path_regex: str
    hits: int = 0

    @property
    def exhausted(self) -> bool:
        return self.hits >= self.times


# ------------------------------------------------------------------------------------------------
# Internal model
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Knobs:
    scenario: str
    boot_delay_s: float
    workspace_gb: float | None
    """``None``: the scenario's default (requested disk for clean, nothing for small_overlay)."""
    ro_mounts: Mapping[str, float] | None
    fake_gpu: str | None
    fail_msg: str | None
    workspace_path: str


@dataclass
class _Offer:
    fields: dict[str, Any]
    knobs: _Knobs
    rented_by: int | None = None


@dataclass
class _VolumeAsk:
    id: int
    machine_id: int
    fields: dict[str, Any]
    free_gb: float


@dataclass
class _Volume:
    id: int
    ask_id: int
    machine_id: int
    size_gb: float
    name: str | None
    storage_cost: float
    fields: dict[str, Any]
    path: Path
    backing: str
    """``tmpfs`` (a host tmpfs mount of the volume's size) or ``dir`` (a plain host folder)."""
    created_at: float
    deleted_at: float | None = None
    instances: list[int] = field(default_factory=list)


@dataclass
class _Instance:
    id: int
    offer_id: int
    offer: dict[str, Any]
    """The offer as served at creation (dph_total priced for the requested disk)."""
    knobs: _Knobs
    body: dict[str, Any]
    image: str
    runtype: str
    env: dict[str, str]
    onstart: str | None
    args: list[str] | None
    label: str | None
    disk: float
    storage_dph: float
    keys: list[str]
    ssh_port: int | None
    created_at: float
    volume_mounts: list[tuple[int, str]] = field(default_factory=list)
    volume_info: dict[str, Any] | None = None
    actual_status: str | None = None
    cur_state: str = "running"
    intended_status: str = "running"
    next_state: str = "running"
    status_msg: str | None = None
    image_run: str | None = None
    container_id: str | None = None
    running_since: float | None = None
    gpu_seconds: float = 0.0
    destroyed_at: float | None = None
    override: bool = False
    last_check: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event)
    history: list[tuple[float, str | None, str | None]] = field(default_factory=list)
    api_key: str = field(default_factory=lambda: secrets.token_hex(32))
    """The instance's own key (``instance_api_key``, ``$CONTAINER_API_KEY`` inside it)."""

    @property
    def name(self) -> str:
        return f"{NAME_PREFIX}{self.id}"

    @property
    def ssh(self) -> bool:
        return self.runtype in SSH_RUNTYPES

    @property
    def workspace_gb(self) -> float | None:
        k = self.knobs
        if k.workspace_gb is not None:
            return k.workspace_gb if k.workspace_gb > 0 else None
        return None if k.scenario == "small_overlay" else self.disk

    @property
    def ro_mounts(self) -> Mapping[str, float]:
        if self.knobs.ro_mounts is not None:
            return self.knobs.ro_mounts
        return {"/mnt/big": 2048.0} if self.knobs.scenario == "small_overlay" else {}


class _ApiError(Exception):
    def __init__(self, status: int, error: str, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.status = status
        self.payload: dict[str, Any] = {"success": False, "error": error, "msg": msg, **extra}


_Reply = tuple[int, Any, dict[str, str]]


def _ok(payload: Any) -> _Reply:
    return 200, payload, {}


# ------------------------------------------------------------------------------------------------
# Query matching (offers, volume offers, instance select_filters)
# ------------------------------------------------------------------------------------------------


def _num(value: Any, what: str) -> float:
    """A number that may have travelled as a string (the client sends ``"300"`` for 300)."""
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _ApiError(400, "invalid_args", f"{what}: {value!r} is not a number") from None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "1", "false", "0"):
        return value.lower() in ("true", "1")
    return None


def _equal(field_name: str, have: Any, want: Any) -> bool:
    if want is None or want in ("None", "null"):
        return have is None
    if have is None:
        return False
    if isinstance(have, bool):
        return _as_bool(want) is have
    if isinstance(have, (int, float)):
        try:
            return abs(float(have) - float(want)) < 1e-9
        except (TypeError, ValueError):
            return False
    have_s, want_s = str(have), str(want)
    if field_name == "geolocation" and have_s.endswith(f", {want_s}"):
        return True  # "Ohio, US" is in US
    return have_s == want_s


def _compare(have: Any, op: str, want: Any, field_name: str) -> bool:
    if have is None:
        return False
    if isinstance(have, (int, float)):
        return _ordered(float(have), _num(want, field_name), op)
    return _ordered(str(have), str(want), op)


def _ordered(a: Any, b: Any, op: str) -> bool:
    return bool({"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op])


def _matches(row: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Whether ``row`` passes every filter; a field the row does not have is not filtered on."""
    for name, cond in filters.items():
        if name not in row:
            continue
        ops = cond if isinstance(cond, Mapping) else {"eq": cond}
        have = row[name]
        for op, want in ops.items():
            if op not in _OPS:
                raise _ApiError(400, "invalid_args", f"unknown operator {op!r} on {name}")
            if op in ("in", "notin"):
                values = want if isinstance(want, list) else str(want).strip("[]").split(",")
                values = [v.strip() if isinstance(v, str) else v for v in values]
                hit = any(_equal(name, have, v) for v in values)
                ok = hit if op == "in" else not hit
            elif op in ("eq", "neq"):
                ok = _equal(name, have, want) == (op == "eq")
            else:
                ok = _compare(have, op, want, name)
            if not ok:
                return False
    return True


def _order_rows(rows: list[dict[str, Any]], order: Iterable[Any]) -> list[dict[str, Any]]:
    """Sort by ``[[field, "asc"|"desc"]]`` or ``[{"col", "dir"}]`` items; ``None`` sorts last."""
    keys: list[tuple[str, bool]] = []
    for item in order:
        if isinstance(item, Mapping):
            name, direction = str(item.get("col")), str(item.get("dir", "asc"))
        elif isinstance(item, (list, tuple)) and item:
            name = str(item[0])
            direction = str(item[1]) if len(item) > 1 else "asc"
        else:
            raise _ApiError(400, "invalid_args", f"bad order item {item!r}")
        keys.append((name, direction.lower() == "desc"))

    def cmp(a: Mapping[str, Any], b: Mapping[str, Any]) -> int:
        for name, desc in keys:
            x, y = a.get(name), b.get(name)
            if x is None or y is None:
                if x is None and y is None:
                    continue
                return 1 if x is None else -1
            try:
                less, more = x < y, x > y
            except TypeError:
                less, more = str(x) < str(y), str(x) > str(y)
            if less or more:
                return (-1 if less else 1) * (-1 if desc else 1)
        return 0

    return sorted(rows, key=functools.cmp_to_key(cmp))


def _json_param(query: Mapping[str, str], name: str, default: Any) -> Any:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return raw


# ------------------------------------------------------------------------------------------------
# Docker helpers
# ------------------------------------------------------------------------------------------------


def _docker_client() -> Any:
    import docker  # the Docker SDK: only needed once an instance starts

    return docker.from_env(timeout=120)


def docker_unavailable_reason(image: str = BASE_IMAGE) -> str | None:
    """Why instances cannot run here (no engine, no image), or ``None`` when they can."""
    try:
        client = _docker_client()
        client.ping()
    except Exception as exc:
        return f"no Docker engine ({type(exc).__name__}: {exc}); run scripts/ci-infra.sh as root"
    try:
        client.images.get(image)
    except Exception:
        return f"Docker image {image} is missing; scripts/ci-infra.sh builds it"
    finally:
        client.close()
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unmount(path: Path) -> None:
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def cleanup_leftovers(*, include_live: bool = False) -> int:
    """Remove containers and state folders left by servers of processes that are gone.

    ``include_live`` also removes those of live processes (never from a test: other sessions may
    run their own servers on this engine). Returns how many containers were removed; no Docker
    engine counts as nothing to do.
    """
    removed = 0
    try:
        client = _docker_client()
        containers = client.containers.list(all=True, filters={"label": LABEL})
    except Exception:
        containers = []
        client = None
    for container in containers:
        pid = container.labels.get(_LABEL_PID, "")
        if include_live or not pid.isdigit() or not _pid_alive(int(pid)):
            with contextlib.suppress(Exception):
                container.remove(force=True, v=True)
                removed += 1
    if client is not None:
        client.close()
    for folder in Path(tempfile.gettempdir()).glob(f"{NAME_PREFIX}*"):
        pid_file = folder / "pid"
        pid = pid_file.read_text().strip() if pid_file.is_file() else ""
        if include_live or not pid.isdigit() or not _pid_alive(int(pid)):
            for sub in folder.iterdir() if folder.is_dir() else ():
                _unmount(sub)
            shutil.rmtree(folder, ignore_errors=True)
    return removed


def _boot_script(inst: _Instance, port: int | None) -> str:
    """The entrypoint of an SSH-runtype container (vast.ai replaces the image's with its own)."""
    q = shlex.quote
    keys = "".join(f"{k.strip()}\n" for k in inst.keys)
    lines = [
        "ssh-keygen -A >/dev/null 2>&1 || true",
        f"mkdir -p /run/sshd /root/.ssh {q(inst.knobs.workspace_path)}",
        "chmod 700 /root/.ssh",
        f"printf %s {q(base64.b64encode(keys.encode()).decode())} | base64 -d"
        " > /root/.ssh/authorized_keys",
        "chmod 600 /root/.ssh/authorized_keys",
    ]
    if inst.knobs.fake_gpu:
        line = f"RUNNER_FAKE_NVML={inst.knobs.fake_gpu}"
        lines += [
            f"grep -qxF {q(line)} /etc/environment 2>/dev/null"
            f" || echo {q(line)} >> /etc/environment",
            f"printf '%s\\n' {q(inst.knobs.fake_gpu)} > /etc/runner-fake-nvml",
        ]
    if inst.onstart:
        encoded = base64.b64encode(inst.onstart.encode()).decode()
        lines += [
            f"printf %s {q(encoded)} | base64 -d > /root/onstart.sh",
            "chmod +x /root/onstart.sh",
            "(bash /root/onstart.sh >>/var/log/onstart.log 2>&1 &)",
        ]
    if port is not None and inst.knobs.scenario != "ssh_refused":
        lines.append(f"exec /usr/sbin/sshd -D -e -p {port} -o ListenAddress=127.0.0.1")
    else:
        lines.append("exec sleep infinity")
    return "\n".join(lines) + "\n"


def _sshd_ready(port: int, deadline: float, cancel: threading.Event) -> bool:
    """Whether an SSH banner comes from 127.0.0.1:port before ``deadline``."""
    while time.monotonic() < deadline and not cancel.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.settimeout(2.0)
                if sock.recv(4).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------------------------------------
# HTTP plumbing
# ------------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    vast: VastServer


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        started = time.time()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        body: Any = None
        status: int
        try:
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise _ApiError(400, "invalid_args", "request body is not JSON") from None
            status, payload, headers = self.server.vast._handle(
                method, parts.path, query, body, self.headers.get("Authorization")
            )
        except _ApiError as exc:
            status, payload, headers = exc.status, exc.payload, {}
        except Exception as exc:  # a bug in the fake must reach the test as a 500, not a hang
            self.server.vast.errors.append(traceback.format_exc())
            status, payload, headers = (
                500,
                {"success": False, "error": "fake_bug", "msg": repr(exc)},
                {},
            )
        if isinstance(payload, str):
            data, ctype = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        # Logged before answering, so the log is complete once the client has its response.
        self.server.vast._record(RequestRecord(method, parts.path, query, body, status, started))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


# ------------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------------


class VastServer:
    """The loopback vast.ai control plane; see the module docstring.

    Args:
        api_key: the accepted key (Bearer header or ``?api_key=``).
        base_image: local image for instances whose requested image the engine lacks.
        min_interval_s: if set, a second request to the same endpoint within this many seconds
            gets 429 (plain text, no ``Retry-After``), like vast.ai's per-endpoint limits.
        ssh_ready_timeout_s: how long a booting instance waits for its sshd's banner before it
            reports ``running`` anyway.
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        base_image: str = BASE_IMAGE,
        min_interval_s: float | None = None,
        ssh_ready_timeout_s: float = 30.0,
    ) -> None:
        self.api_key = api_key
        self.base_image = base_image
        self.min_interval_s = min_interval_s
        self.ssh_ready_timeout_s = ssh_ready_timeout_s
        self.token = secrets.token_hex(4)
        """Identifies this server's containers (label ``runner-vast-fake.server``)."""
        self._lock = threading.RLock()
        self._offers: dict[int, _Offer] = {}
        self._volume_asks: dict[int, _VolumeAsk] = {}
        self._volumes: dict[int, _Volume] = {}
        self._instances: dict[int, _Instance] = {}
        self._keys: dict[int, dict[str, Any]] = {}
        self._logs: dict[str, str] = {}
        self._limits: list[RateLimit] = []
        self._last_hit: dict[str, float] = {}
        self._requests: list[RequestRecord] = []
        self._threads: list[threading.Thread] = []
        self._ports: set[int] = set()
        self.errors: list[str] = []
        """Unexpected failures inside the fake (Docker errors while booting, ...), for debugging."""
        # Random bases keep ids (and so container names) apart between concurrent servers.
        base = secrets.randbelow(70_000_000) + 20_000_000
        self._next = {"instance": base, "offer": base + 1_000_000_000, "machine": 40_000}
        self._next.update({"volume_ask": base + 2_000_000_000, "volume": base // 2, "key": 1})
        self._docker: Any = None
        self._docker_lock = threading.Lock()
        self._closed = False
        self._state_dir = Path(tempfile.mkdtemp(prefix=NAME_PREFIX))
        (self._state_dir / "pid").write_text(f"{os.getpid()}\n")
        routes: list[tuple[str, str, Callable[..., _Reply]]] = [
            ("POST", r"/api/v0/bundles", self._h_search),
            ("GET", r"/api/v0/bundles", self._h_search_qs),
            ("PUT", r"/api/v0/search/asks", self._h_search_new),
            ("PUT", r"/api/v0/asks/(\d+)", self._h_create),
            ("GET", r"/api/v1/instances", self._h_list_v1),
            ("GET", r"/api/v0/instances", self._h_list_v0),
            ("PUT", r"/api/v0/instances", self._h_bulk_state),
            ("DELETE", r"/api/v0/instances", self._h_bulk_destroy),
            ("PUT", r"/api/v0/instances/request_logs/(\d+)", self._h_logs),
            ("GET", r"/api/v0/instances/(\d+)", self._h_show),
            ("PUT", r"/api/v0/instances/(\d+)", self._h_update),
            ("DELETE", r"/api/v0/instances/(\d+)", self._h_destroy),
            ("POST", r"/api/v0/instances/(\d+)/ssh", self._h_attach),
            ("DELETE", r"/api/v0/instances/(\d+)/ssh/([^/]+)", self._h_detach),
            ("GET", r"/api/v0/ssh", self._h_keys),
            ("POST", r"/api/v0/ssh", self._h_key_create),
            ("PUT", r"/api/v0/ssh/(\d+)", self._h_key_update),
            ("DELETE", r"/api/v0/ssh/(\d+)", self._h_key_delete),
            ("GET", r"/api/v0/users/current", self._h_user),
            ("POST", r"/api/v0/volumes/search", self._h_volume_search),
            ("GET", r"/api/v0/volumes", self._h_volumes),
            ("PUT", r"/api/v0/volumes", self._h_volume_create),
            ("DELETE", r"/api/v0/volumes", self._h_volume_delete),
        ]
        self._routes = [(m, re.compile(f"^{p}$"), h) for m, p, h in routes]
        self._http = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._http.vast = self
        self._serve = threading.Thread(
            target=self._http.serve_forever, args=(0.05,), name="vast-fake-http", daemon=True
        )
        self._serve.start()

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL to hand the client as ``server_url`` (``http://127.0.0.1:PORT``)."""
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def close(self) -> None:
        """Stop serving, remove every container this server started, unmount its volumes.

        Idempotent; safe after a failed test (it does not depend on instance states).
        """
        if self._closed:
            return
        self._closed = True
        self._http.shutdown()
        self._http.server_close()
        with self._lock:
            for inst in self._instances.values():
                inst.cancel.set()
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=60)
        if self._docker is not None:
            with contextlib.suppress(Exception):
                for c in self._docker.containers.list(
                    all=True, filters={"label": f"{_LABEL_SERVER}={self.token}"}
                ):
                    with contextlib.suppress(Exception):
                        c.remove(force=True, v=True)
            with contextlib.suppress(Exception):
                self._docker.close()
        for vol in self._volumes.values():
            _unmount(vol.path)
        shutil.rmtree(self._state_dir, ignore_errors=True)

    def __enter__(self) -> VastServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- catalogue --------------------------------------------------------------------------------

    def add_offer(
        self,
        *,
        scenario: str = "clean",
        boot_delay_s: float = 0.0,
        workspace_gb: float | None = None,
        ro_mounts: Mapping[str, float] | None = None,
        fake_gpu: str | None = None,
        fail_msg: str | None = None,
        workspace_path: str = "/workspace",
        **fields: Any,
    ) -> dict[str, Any]:
        """Add an offer; returns it as search serves it at the default 5 GB allocated storage.

        ``fields`` override the defaults of any offer field (``gpu_name``, ``num_gpus``,
        ``disk_space`` GB, ``gpu_ram``/``cpu_ram`` MB, ``reliability``, ``geolocation``,
        ``machine_id``...). Price: ``dph_base`` (GPU $/h) plus ``storage_cost`` ($/GB/month) for
        the search's ``allocated_storage``; passing ``dph_total`` instead means the price at 5 GB.
        Offers without ``machine_id`` get a machine of their own. Every machine also has one
        volume offer (``avail_vol_ask_id``, ``avail_vol_size`` GB).

        Knobs: ``scenario`` (``SCENARIOS``); ``boot_delay_s`` in ``loading`` before the
        container starts; ``workspace_gb`` GiB of tmpfs at ``workspace_path`` (default: the
        requested disk; ``small_overlay``: none; 0: none); ``ro_mounts`` ``{path: GiB}``
        read-only tmpfs mounts (``small_overlay`` default ``{"/mnt/big": 2048}``); ``fake_gpu``
        a ``RUNNER_FAKE_NVML`` value put in the container (env, ``/etc/environment``,
        ``/etc/runner-fake-nvml``); ``fail_msg`` the ``pull_fail`` status message.
        """
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario {scenario!r}: expected one of {', '.join(SCENARIOS)}")
        knobs = _Knobs(
            scenario=scenario,
            boot_delay_s=boot_delay_s,
            workspace_gb=workspace_gb,
            ro_mounts=dict(ro_mounts) if ro_mounts is not None else None,
            fake_gpu=fake_gpu,
            fail_msg=fail_msg,
            workspace_path=workspace_path,
        )
        with self._lock:
            oid = int(fields.pop("id", 0)) or self._take("offer")
            if oid in self._offers:
                raise ValueError(f"offer {oid} exists already")
            machine_id = int(fields.get("machine_id") or self._take("machine"))
            storage_cost = float(fields.get("storage_cost", 0.15))
            if "dph_total" in fields and "dph_base" not in fields:
                fields["dph_base"] = float(fields.pop("dph_total")) - (
                    storage_cost * _STORAGE_DEFAULT_GB / _HOURS_PER_MONTH
                )
            fields.pop("dph_total", None)
            num_gpus = int(fields.get("num_gpus", 1))
            gpu_ram = float(fields.get("gpu_ram", 24564))
            values: dict[str, Any] = {
                "id": oid,
                "ask_contract_id": oid,
                "bundle_id": oid,
                "machine_id": machine_id,
                "host_id": 90_000 + machine_id,
                "num_gpus": num_gpus,
                "gpu_name": "RTX 4090",
                "gpu_arch": "nvidia",
                "gpu_ram": gpu_ram,
                "gpu_total_ram": gpu_ram * num_gpus,
                "gpu_frac": 1.0,
                "gpu_display_active": False,
                "gpu_mem_bw": 900.0,
                "gpu_max_power": 450.0,
                "gpu_max_temp": 90.0,
                "cpu_name": "AMD EPYC 7B13 64-Core Processor",
                "cpu_arch": "amd64",
                "cpu_cores": 64,
                "cpu_cores_effective": 16.0,
                "cpu_ghz": 3.5,
                "cpu_ram": 128_000.0,
                "disk_space": 500.0,
                "disk_bw": 2500.0,
                "disk_name": "Samsung SSD 990 PRO",
                "inet_up": 800.0,
                "inet_down": 900.0,
                "inet_up_cost": 0.0,
                "inet_down_cost": 0.0,
                "dph_base": 0.35,
                "storage_cost": storage_cost,
                "min_bid": 0.2,
                "credit_discount_max": 0.0,
                "reliability": 0.995,
                "reliability2": 0.995,
                "cuda_max_good": 12.4,
                "driver_version": "550.54.15",
                "compute_cap": 890,
                "total_flops": 82.6,
                "dlperf": 60.0,
                "verification": "verified",
                "verified": True,
                "external": False,
                "rentable": True,
                "rented": False,
                "geolocation": "Ohio, US",
                "direct_port_count": 100,
                "public_ipaddr": "127.0.0.1",
                "static_ip": True,
                "hosting_type": 0,
                "pci_gen": 4.0,
                "pcie_bw": 25.0,
                "has_avx": 1,
                "mobo_name": "H12SSL-i",
                "os_version": "22.04",
                "ubuntu_version": "22.04",
                "vms_enabled": False,
                "bw_nvlink": 0.0,
                "cluster_id": None,
                "duration": 30 * 86400.0,
                "end_date": time.time() + 30 * 86400.0,
                "start_date": None,
                "avail_vol_size": 1000.0,
            }
            values.update(fields)
            values["id"] = values["ask_contract_id"] = values["bundle_id"] = oid
            values["machine_id"] = machine_id
            ask = self._volume_ask_for(values)
            values["avail_vol_ask_id"] = ask.id
            values["avail_vol_dph"] = round(float(values["storage_cost"]) / _HOURS_PER_MONTH, 6)
            values.setdefault(
                "score",
                round(float(values["dlperf"]) / max(float(values["dph_base"]), 1e-6), 3),
            )
            self._offers[oid] = _Offer(values, knobs)
            return self._serve_offer(self._offers[oid], _STORAGE_DEFAULT_GB, "on-demand")

    def remove_offer(self, offer_id: int) -> None:
        """Take an offer off the market (it then answers ``no_such_ask``)."""
        with self._lock:
            self._offers.pop(offer_id, None)

    def _volume_ask_for(self, offer: Mapping[str, Any]) -> _VolumeAsk:
        machine_id = int(offer["machine_id"])
        for ask in self._volume_asks.values():
            if ask.machine_id == machine_id:
                return ask
        fields = {
            k: offer.get(k)
            for k in (
                "machine_id",
                "host_id",
                "geolocation",
                "reliability",
                "reliability2",
                "verified",
                "verification",
                "external",
                "inet_up",
                "inet_down",
                "disk_bw",
                "disk_name",
                "driver_version",
                "cuda_max_good",
                "static_ip",
                "hosting_type",
                "storage_cost",
                "total_flops",
                "cluster_id",
            )
        }
        ask = _VolumeAsk(
            self._take("volume_ask"), machine_id, fields, float(offer["avail_vol_size"])
        )
        self._volume_asks[ask.id] = ask
        return ask

    def _serve_offer(self, offer: _Offer, storage: float, offer_type: str) -> dict[str, Any]:
        o = dict(offer.fields)
        storage_dph = float(o["storage_cost"]) * storage / _HOURS_PER_MONTH
        gpu = float(o["min_bid"] if offer_type == "bid" else o["dph_base"])
        o["dph_total"] = round(gpu + storage_dph, 6)
        o["storage_total_cost"] = round(storage_dph, 6)
        o["is_bid"] = offer_type == "bid"
        o["dlperf_per_dphtotal"] = round(float(o["dlperf"]) / max(o["dph_total"], 1e-6), 3)
        o["flops_per_dphtotal"] = round(float(o["total_flops"]) / max(o["dph_total"], 1e-6), 3)
        taken = offer.rented_by is not None
        o["rented"] = taken or bool(o.get("rented"))
        o["rentable"] = bool(o.get("rentable")) and not taken
        return o

    # -- inspection and scripting -----------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request answered so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def instances(self) -> list[InstanceInfo]:
        """Every instance ever created (destroyed ones too), by id."""
        with self._lock:
            return [self._info(i) for i in sorted(self._instances.values(), key=lambda i: i.id)]

    def instance(self, instance_id: int) -> InstanceInfo:
        with self._lock:
            return self._info(self._instances[instance_id])

    def _info(self, inst: _Instance) -> InstanceInfo:
        return InstanceInfo(
            id=inst.id,
            offer_id=inst.offer_id,
            machine_id=int(inst.offer["machine_id"]),
            scenario=inst.knobs.scenario,
            label=inst.label,
            actual_status=inst.actual_status,
            status_msg=inst.status_msg,
            image=inst.image,
            image_run=inst.image_run,
            runtype=inst.runtype,
            env=dict(inst.env),
            onstart=inst.onstart,
            disk_gb=inst.disk,
            workspace_gb=inst.workspace_gb,
            ssh_port=inst.ssh_port,
            container_name=inst.name,
            container_id=inst.container_id,
            volume_ids=tuple(v for v, _ in inst.volume_mounts),
            created_at=inst.created_at,
            destroyed_at=inst.destroyed_at,
        )

    def billing(self) -> list[BillingRecord]:
        """One record per instance and volume ever created (a snapshot)."""
        now = time.time()
        with self._lock:
            out = [
                BillingRecord(
                    kind="instance",
                    id=i.id,
                    label=i.label,
                    dph_total=float(i.offer["dph_total"]),
                    storage_dph=i.storage_dph,
                    started_at=i.created_at,
                    ended_at=i.destroyed_at,
                    gpu_seconds=i.gpu_seconds
                    + (now - i.running_since if i.running_since is not None else 0.0),
                )
                for i in self._instances.values()
            ]
            for v in self._volumes.values():
                dph = v.storage_cost * v.size_gb / _HOURS_PER_MONTH
                out.append(
                    BillingRecord("volume", v.id, v.name, dph, dph, v.created_at, v.deleted_at, 0.0)
                )
        return out

    def still_billing(self) -> list[BillingRecord]:
        """Instances not destroyed and volumes not deleted: what a test asserts is empty."""
        return [r for r in self.billing() if r.billing]

    def rate_limit(
        self,
        times: int,
        *,
        retry_after: float | None = None,
        body: str = "text",
        method: str | None = None,
        path_regex: str = "",
    ) -> RateLimit:
        """Answer the next ``times`` matching requests with 429 (consulted before auth).

        ``body``: ``text`` (plain "API requests too frequent..."), ``detail`` (``{"detail"}``),
        ``json`` (``{"success": false, "error": "rate_limit_exceeded"}``) or ``quota``
        (``search_quota_exceeded``, which the client never retries). ``retry_after`` sends
        ``Retry-After: <seconds>``. ``path_regex`` is ``re.search``-ed on the URL path.
        """
        if body not in ("text", "detail", "json", "quota"):
            raise ValueError(f"body {body!r}: expected text, detail, json or quota")
        rule = RateLimit(times, retry_after, body, method.upper() if method else None, path_regex)
        with self._lock:
            self._limits.append(rule)
        return rule

    def set_status(
        self, instance_id: int, actual_status: str, status_msg: str | None = None
    ) -> None:
        """Force ``actual_status`` (``offline``, ``unknown``, ``exited``...); it then sticks."""
        with self._lock:
            inst = self._instances[instance_id]
            inst.override = True
            self._set(inst, actual_status, status_msg)

    def wait_status(self, instance_id: int, actual_status: str, timeout: float = 60.0) -> None:
        """Block until the instance reaches ``actual_status``; ``TimeoutError`` says where it is."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                inst = self._instances[instance_id]
            self._refresh(inst)
            if inst.actual_status == actual_status:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"instance {instance_id} is {inst.actual_status!r} ({inst.status_msg!r}),"
                    f" not {actual_status!r}, after {timeout}s"
                )
            time.sleep(0.05)

    def containers(self) -> list[str]:
        """Names of this server's containers that exist on the engine right now."""
        if self._docker is None:
            return []
        found = self._docker.containers.list(
            all=True, filters={"label": f"{_LABEL_SERVER}={self.token}"}
        )
        return sorted(c.name for c in found)

    def volume_path(self, volume_id: int) -> Path:
        """Host folder backing a volume (what instances see at their mount path).

        As root it is a tmpfs mount of the volume's size (``os.path.ismount`` is true), otherwise
        a plain folder of the host disk.
        """
        with self._lock:
            return self._volumes[volume_id].path

    @property
    def docker_used(self) -> bool:
        """Whether this server has talked to the Docker engine at all (no instance booted: no)."""
        return self._docker is not None

    # -- request entry ----------------------------------------------------------------------------

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def _handle(
        self, method: str, path: str, query: dict[str, str], body: Any, auth: str | None
    ) -> _Reply:
        route = path.rstrip("/") or "/"
        if route.startswith("/_fake/"):  # result_url downloads: pre-signed, no key (like S3)
            match = re.fullmatch(r"/_fake/logs/(\w+)", route)
            if method == "GET" and match is not None:
                return self._h_log_result(match.group(1), query=query, body=body)
            raise _ApiError(404, "not_found", f"{method} {path} is not an endpoint of this fake")
        limited = self._rate_limited(method, route)
        if limited is not None:
            return limited
        key = auth[7:].strip() if auth and auth.startswith("Bearer ") else query.get("api_key")
        if key != self.api_key and not self._instance_key_allows(method, route, key):
            raise _ApiError(401, "invalid_user", "Invalid or missing API key.")
        for route_method, pattern, handler in self._routes:
            match = pattern.match(route) if route_method == method else None
            if match is None:
                continue
            if self.min_interval_s is not None:
                slot = f"{method} {pattern.pattern}"
                now = time.monotonic()
                with self._lock:
                    last = self._last_hit.get(slot)
                    self._last_hit[slot] = now
                if last is not None and now - last < self.min_interval_s:
                    return 429, _TEXT_429, {}
            return handler(*match.groups(), query=query, body=body)
        raise _ApiError(404, "not_found", f"{method} {path} is not an endpoint of this fake")

    def _instance_key_allows(self, method: str, route: str, key: str | None) -> bool:
        """Whether ``key`` is the own key of the one instance ``route`` shows, changes or
        destroys (what ``vastai stop/destroy instance $CONTAINER_ID`` sends from inside)."""
        match = re.fullmatch(r"/api/v0/instances/(\d+)", route)
        if not key or match is None or method not in ("GET", "PUT", "DELETE"):
            return False
        with self._lock:
            inst = self._instances.get(int(match.group(1)))
        return inst is not None and secrets.compare_digest(key, inst.api_key)

    def _rate_limited(self, method: str, route: str) -> _Reply | None:
        with self._lock:
            for rule in self._limits:
                if rule.exhausted or rule.method not in (None, method):
                    continue
                if not re.search(rule.path_regex, route):
                    continue
                rule.hits += 1
                break
            else:
                return None
        headers = {} if rule.retry_after is None else {"Retry-After": f"{rule.retry_after:g}"}
        payload: Any = {
            "text": _TEXT_429,
            "detail": {"detail": "Request was throttled."},
            "json": {"success": False, "error": "rate_limit_exceeded", "msg": _TEXT_429},
            "quota": {
                "success": False,
                "error": "search_quota_exceeded",
                "msg": "Daily search quota exceeded; it resets at 00:00 UTC.",
            },
        }[rule.body]
        return 429, payload, headers

    def _take(self, kind: str) -> int:
        with self._lock:
            self._next[kind] += 1
            return self._next[kind]

    # -- offers -----------------------------------------------------------------------------------

    def _search(self, q: Any) -> _Reply:
        if not isinstance(q, Mapping):
            raise _ApiError(400, "invalid_args", "the search query must be a JSON object")
        storage = _num(q.get("allocated_storage", _STORAGE_DEFAULT_GB), "allocated_storage")
        offer_type = str(q.get("type", "on-demand"))
        if offer_type not in ("on-demand", "bid", "reserved"):
            raise _ApiError(400, "invalid_args", f"type {offer_type!r}: on-demand, bid or reserved")
        filters = {k: v for k, v in q.items() if k not in _SEARCH_KEYS}
        with self._lock:
            rows = [self._serve_offer(o, storage, offer_type) for o in self._offers.values()]
        rows = [r for r in rows if _matches(r, filters)]
        rows = _order_rows(rows, q.get("order") or [["score", "desc"]])
        if q.get("limit") not in (None, ""):
            rows = rows[: max(0, int(_num(q["limit"], "limit")))]
        return _ok({"offers": rows})

    def _h_search(self, *, query: dict[str, str], body: Any) -> _Reply:
        return self._search(body if body is not None else {})

    def _h_search_qs(self, *, query: dict[str, str], body: Any) -> _Reply:
        return self._search(_json_param(query, "q", {}))

    def _h_search_new(self, *, query: dict[str, str], body: Any) -> _Reply:
        return self._search((body or {}).get("q", {}))

    # -- create -----------------------------------------------------------------------------------

    def _h_create(self, ask: str, *, query: dict[str, str], body: Any) -> _Reply:
        ask_id = int(ask)
        body = dict(body or {})
        cancel_unavail = bool(body.get("cancel_unavail"))

        def no_such_ask() -> _ApiError:
            return _ApiError(
                410 if cancel_unavail else 404,
                "no_such_ask",
                f"Instance type by id {ask_id} is not available.",
                ask_id=ask_id,
            )

        with self._lock:
            offer = self._offers.get(ask_id)
            if offer is None or offer.rented_by is not None or not offer.fields.get("rentable"):
                raise no_such_ask()
            if offer.knobs.scenario == "vanish":
                del self._offers[ask_id]
                raise no_such_ask()
            if offer.knobs.scenario == "unavailable" and cancel_unavail:
                raise no_such_ask()
            disk, env, runtype, args, onstart = self._validate_create(ask_id, body, offer)
            volumes = self._resolve_volumes(ask_id, body, env, offer)
            served = self._serve_offer(offer, disk, "bid" if body.get("price") else "on-demand")
            iid = self._take("instance")
            port = self._free_port() if runtype in SSH_RUNTYPES else None
            inst = _Instance(
                id=iid,
                offer_id=ask_id,
                offer=served,
                knobs=offer.knobs,
                body=body,
                image=str(body["image"]),
                runtype=runtype,
                env=env,
                onstart=onstart,
                args=args,
                label=body.get("label"),
                disk=disk,
                storage_dph=float(served["storage_total_cost"]),
                keys=[k["public_key"] for k in self._keys.values() if k["deleted_at"] is None],
                ssh_port=port,
                created_at=time.time(),
            )
            for spec in volumes:
                inst.volume_mounts.append(self._attach_volume(inst, spec))
            if inst.volume_mounts:
                vid, path = inst.volume_mounts[0]
                inst.volume_info = {"volume_id": vid, "mount_path": path}
            self._instances[iid] = inst
            if offer.knobs.scenario == "unavailable":
                inst.cur_state = inst.next_state = "stopped"
                self._set(inst, "stopped", "Waiting for GPUs on the machine: scheduling")
                return _ok(self._created(inst))
            offer.rented_by = iid
            self._set(inst, None, None)
            self._spawn(self._boot, inst)
            return _ok(self._created(inst))

    def _created(self, inst: _Instance) -> dict[str, Any]:
        return {
            "success": True,
            "new_contract": inst.id,
            "instance_api_key": inst.api_key,
        }

    def _validate_create(
        self, ask_id: int, body: dict[str, Any], offer: _Offer
    ) -> tuple[float, dict[str, str], str, list[str] | None, str | None]:
        def bad(msg: str, error: str = "invalid_args") -> _ApiError:
            return _ApiError(400, error, msg, ask_id=ask_id)

        image = body.get("image")
        if not isinstance(image, str) or not image.strip():
            raise bad("image is required")
        if len(image) > _LIMITS["image"]:
            raise bad(f"image is longer than {_LIMITS['image']} characters")
        label = body.get("label")
        if label is not None and len(str(label)) > _LIMITS["label"]:
            raise bad(f"label is longer than {_LIMITS['label']} characters")
        onstart = body.get("onstart")
        args = body.get("args")
        if args is not None and not isinstance(args, list):
            raise bad("args must be a list of strings")
        args_len = len(" ".join(str(a) for a in args or [])) + len(onstart or "")
        if args_len > _LIMITS["args_onstart"]:
            raise bad(f"args + onstart are longer than {_LIMITS['args_onstart']} characters")
        env_in = body.get("env") or {}
        if not isinstance(env_in, Mapping):
            raise bad("env must be an object of strings")
        env = {str(k): str(v) for k, v in env_in.items()}
        for key, value in env.items():
            if len(key) + 1 + len(value) > _LIMITS["env_entry"]:
                raise bad(f"env entry {key} is longer than {_LIMITS['env_entry']} characters")
        disk = _num(body.get("disk", 10), "disk")
        if disk < _LIMITS["disk_min"]:
            raise bad(f"disk must be at least {_LIMITS['disk_min']:g} GB")
        if disk > float(offer.fields["disk_space"]):
            raise bad(
                f"disk {disk:g} GB is more than the {offer.fields['disk_space']:g} GB offered"
            )
        runtype = str(body.get("runtype") or "args")
        if runtype not in _RUNTYPES:
            raise bad(f"runtype {runtype!r} is not one of {', '.join(sorted(_RUNTYPES))}")
        price = body.get("price")
        if price is not None and _num(price, "price") < float(offer.fields["min_bid"]):
            raise bad(f"price {price} is below min_bid {offer.fields['min_bid']}", "invalid_price")
        return disk, env, runtype, [str(a) for a in args] if args else None, onstart

    def _resolve_volumes(
        self, ask_id: int, body: dict[str, Any], env: Mapping[str, str], offer: _Offer
    ) -> list[tuple[str, int, str, float | None, str | None]]:
        """``(create|link, id, mount_path, size, name)``: volume_info, then legacy ``-v V.N:/p``."""
        specs: list[tuple[str, int, str, float | None, str | None]] = []
        info = body.get("volume_info")
        machine = int(offer.fields["machine_id"])

        def bad(msg: str) -> _ApiError:
            return _ApiError(400, "invalid_args", msg, ask_id=ask_id)

        if info:
            if not isinstance(info, Mapping) or not info.get("mount_path"):
                raise bad("volume_info needs a mount_path")
            if info.get("volume_id") in (None, ""):
                raise bad(
                    "volume_info needs a volume_id (a volume offer id to create, or a volume)"
                )
            vid = int(_num(info["volume_id"], "volume_id"))
            size = _num(info["size"], "size") if info.get("size") not in (None, "") else None
            kind = "create" if info.get("create_new") else "link"
            specs.append((kind, vid, str(info["mount_path"]), size, info.get("name")))
        for key in env:
            m = re.fullmatch(r"-v V\.(\d+):(/\S*)", key)
            if m:
                specs.append(("link", int(m.group(1)), m.group(2), None, None))
        for kind, vid, _path, size, _name in specs:
            if kind == "create":
                ask = self._volume_asks.get(vid)
                if ask is None:
                    raise bad(f"no volume offer {vid}")
                if ask.machine_id != machine:
                    raise bad(f"volume offer {vid} is on machine {ask.machine_id}, not {machine}")
                if (size or 15.0) > ask.free_gb:
                    raise bad(f"volume size {size or 15:g} GB exceeds {ask.free_gb:g} GB available")
            else:
                vol = self._volumes.get(vid)
                if vol is None or vol.deleted_at is not None:
                    raise bad(f"no volume {vid}")
                if vol.machine_id != machine:
                    raise bad(
                        f"volume {vid} lives on machine {vol.machine_id}; offer {ask_id} is on"
                        f" machine {machine}: a local volume attaches only on its own machine"
                    )
                if vol.instances:
                    raise bad(f"volume {vid} is in use by instance {vol.instances[0]}")
        return specs

    def _attach_volume(
        self, inst: _Instance, spec: tuple[str, int, str, float | None, str | None]
    ) -> tuple[int, str]:
        kind, vid, path, size, name = spec
        vol = self._new_volume(vid, size or 15.0, name) if kind == "create" else self._volumes[vid]
        vol.instances.append(inst.id)
        return vol.id, path

    def _new_volume(self, ask_id: int, size: float, name: str | None) -> _Volume:
        ask = self._volume_asks[ask_id]
        vid = self._take("volume")
        path = self._state_dir / f"V.{vid}"
        path.mkdir()
        backing = "dir"
        if os.geteuid() == 0:
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={int(size * GIB)}", "tmpfs", str(path)],
                capture_output=True,
                check=False,
            )
            backing = "tmpfs" if done.returncode == 0 else "dir"
        ask.free_gb -= size
        vol = _Volume(
            id=vid,
            ask_id=ask_id,
            machine_id=ask.machine_id,
            size_gb=size,
            name=name,
            storage_cost=float(ask.fields.get("storage_cost") or 0.15),
            fields=dict(ask.fields),
            path=path,
            backing=backing,
            created_at=time.time(),
        )
        self._volumes[vid] = vol
        return vol

    def _free_port(self) -> int:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in self._ports:
                self._ports.add(port)
                return port
        raise RuntimeError("no free loopback port")

    # -- instance lifecycle -----------------------------------------------------------------------

    def _set(self, inst: _Instance, status: str | None, msg: str | None) -> None:
        """Move an instance's status, keeping GPU billing in step with ``running``."""
        with self._lock:
            now = time.time()
            if status == "running" and inst.running_since is None:
                inst.running_since = now
            elif status != "running" and inst.running_since is not None:
                inst.gpu_seconds += now - inst.running_since
                inst.running_since = None
            inst.actual_status, inst.status_msg = status, msg
            inst.history.append((now, status, msg))

    def _spawn(self, target: Callable[[_Instance], None], inst: _Instance) -> None:
        def run() -> None:
            try:
                target(inst)
            except Exception as exc:  # the failure becomes the instance's status, never silence
                self.errors.append(f"instance {inst.id}: {type(exc).__name__}: {exc}")
                with self._lock:
                    if inst.destroyed_at is None and not inst.override:
                        self._set(inst, "loading", f"Error response from daemon: {exc}")

        thread = threading.Thread(target=run, name=f"vast-fake-{inst.id}", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _docker_client(self) -> Any:
        with self._docker_lock:
            if self._docker is None:
                self._docker = _docker_client()
            return self._docker

    def _boot(self, inst: _Instance) -> None:
        self._set(inst, "loading", f"Pulling image {inst.image}")
        if inst.cancel.wait(inst.knobs.boot_delay_s):
            return
        if inst.knobs.scenario == "pull_fail":
            self._set(
                inst,
                "loading",
                inst.knobs.fail_msg
                or f"Error response from daemon: failed to pull image {inst.image}:"
                f" manifest unknown: manifest for {inst.image} not found",
            )
            return
        self._set(inst, "loading", "Creating container")
        client = self._docker_client()
        image = self._resolve_image(client, inst.image)
        with self._lock:
            inst.image_run = image
            if inst.destroyed_at is not None:
                return
        container = client.containers.run(image, **self._run_kwargs(inst))
        with self._lock:
            inst.container_id = container.id
            destroyed = inst.destroyed_at is not None
        if destroyed:  # destroy raced the start: it may have missed the container
            with contextlib.suppress(Exception):
                container.remove(force=True, v=True)
            return
        self._await_running(inst, "success, running " + inst.image)

    def _await_running(self, inst: _Instance, msg: str) -> None:
        if inst.ssh and inst.ssh_port is not None and inst.knobs.scenario != "ssh_refused":
            deadline = time.monotonic() + self.ssh_ready_timeout_s
            if not _sshd_ready(inst.ssh_port, deadline, inst.cancel):
                self.errors.append(f"instance {inst.id}: sshd never answered on {inst.ssh_port}")
        with self._lock:
            if inst.destroyed_at is None and inst.intended_status == "running":
                self._set(inst, "running", msg)

    def _resolve_image(self, client: Any, requested: str) -> str:
        try:
            client.images.get(requested)
            return requested
        except Exception:
            return self.base_image

    def _run_kwargs(self, inst: _Instance) -> dict[str, Any]:
        env = {k: v for k, v in inst.env.items() if not k.startswith("-")}
        env.update(
            {
                "CONTAINER_ID": str(inst.id),
                "CONTAINER_API_KEY": inst.api_key,
                "VAST_CONTAINERLABEL": f"C.{inst.id}",
            }
        )
        if inst.knobs.fake_gpu:
            env["RUNNER_FAKE_NVML"] = inst.knobs.fake_gpu
        tmpfs: dict[str, str] = {}
        if inst.workspace_gb is not None:
            tmpfs[inst.knobs.workspace_path] = f"rw,exec,size={int(inst.workspace_gb * GIB)}"
        for path, gb in inst.ro_mounts.items():
            tmpfs[path] = f"ro,size={int(gb * GIB)}"
        binds = {
            str(self._volumes[vid].path): {"bind": path, "mode": "rw"}
            for vid, path in inst.volume_mounts
        }
        kwargs: dict[str, Any] = {
            "name": inst.name,
            "detach": True,
            "network_mode": "host",
            "init": True,
            "labels": {
                LABEL: str(inst.id),
                _LABEL_PID: str(os.getpid()),
                _LABEL_SERVER: self.token,
            },
            "environment": env,
            "tmpfs": tmpfs,
            "volumes": binds,
        }
        if inst.ssh:
            kwargs["entrypoint"] = ["/bin/sh", "-c", _boot_script(inst, inst.ssh_port)]
        elif inst.args:
            kwargs["command"] = inst.args
        return kwargs

    def _refresh(self, inst: _Instance) -> None:
        """Notice a container that died under a ``running`` instance (checked at most 1/s)."""
        now = time.monotonic()
        with self._lock:
            if inst.override or inst.actual_status != "running" or inst.container_id is None:
                return
            if now - inst.last_check < 1.0:
                return
            inst.last_check = now
            cid = inst.container_id
        try:
            state = self._docker_client().containers.get(cid).attrs["State"]
        except Exception:
            state = {"Running": False, "ExitCode": -1}
        if not state.get("Running"):
            with self._lock:
                if inst.actual_status == "running" and inst.destroyed_at is None:
                    code = state.get("ExitCode")
                    self._set(inst, "exited", f"Container exited with code {code}")

    def _destroy(self, inst: _Instance) -> None:
        with self._lock:
            if inst.destroyed_at is not None:
                return
            self._set(inst, inst.actual_status, inst.status_msg)  # closes the GPU interval
            inst.destroyed_at = time.time()
            inst.cancel.set()
            inst.cur_state = inst.intended_status = inst.next_state = "unloaded"
            offer = self._offers.get(inst.offer_id)
            if offer is not None and offer.rented_by == inst.id:
                offer.rented_by = None
            for vid, _ in inst.volume_mounts:
                with contextlib.suppress(ValueError):
                    self._volumes[vid].instances.remove(inst.id)
            touched = inst.container_id is not None or inst.image_run is not None
        if touched:
            import docker.errors

            try:
                self._docker_client().containers.get(inst.name).remove(force=True, v=True)
            except docker.errors.NotFound:
                pass  # never created, or the boot thread removes it once `run` returns
            except Exception as exc:  # close() still removes it; say so meanwhile
                self.errors.append(f"instance {inst.id}: removing its container: {exc}")

    def _stop(self, inst: _Instance) -> None:
        with self._lock:
            inst.intended_status = inst.next_state = "stopped"
            cid = inst.container_id
        if cid is not None:
            with contextlib.suppress(Exception):
                self._docker_client().containers.get(cid).stop(timeout=1)
        with self._lock:
            if inst.destroyed_at is None and not inst.override:
                inst.cur_state = "stopped"
                self._set(inst, "stopped", "Stopped by user")

    def _start(self, inst: _Instance) -> None:
        with self._lock:
            if inst.knobs.scenario == "unavailable" or inst.actual_status == "running":
                return
            inst.intended_status = inst.next_state = inst.cur_state = "running"
            cid = inst.container_id
            if inst.actual_status != "stopped":
                return  # still booting (or stuck loading): it carries on by itself
        if cid is None:
            self._spawn(self._boot, inst)
            return

        def restart(inst: _Instance) -> None:
            self._set(inst, "loading", "Starting container")
            self._docker_client().containers.get(cid).start()
            self._await_running(inst, "success, running " + inst.image)

        self._spawn(restart, inst)

    # -- instance JSON ----------------------------------------------------------------------------

    def _instance_json(self, inst: _Instance) -> dict[str, Any]:
        o = inst.offer
        running = inst.actual_status == "running"
        port = inst.ssh_port
        out: dict[str, Any] = {
            "id": inst.id,
            "ask_contract_id": inst.offer_id,
            "bundle_id": inst.offer_id,
            "machine_id": o["machine_id"],
            "host_id": o["host_id"],
            "actual_status": inst.actual_status,
            "cur_state": inst.cur_state,
            "intended_status": inst.intended_status,
            "next_state": inst.next_state,
            "status_msg": inst.status_msg,
            "label": inst.label,
            "image_uuid": inst.image,
            "image_runtype": inst.runtype,
            "image_args": inst.args or [],
            "onstart": inst.onstart,
            "template_id": None,
            "template_hash_id": inst.body.get("template_hash_id"),
            "ssh_host": "127.0.0.1" if port is not None else None,
            "ssh_port": port,
            "ssh_idx": None,
            "public_ipaddr": "127.0.0.1",
            "local_ipaddrs": "127.0.0.1",
            "machine_dir_ssh_port": port if "direc" in inst.runtype else None,
            "direct_port_start": -1,
            "direct_port_end": -1,
            "jupyter_token": None,
            "extra_env": [[k, v] for k, v in inst.env.items()],
            "volume_info": inst.volume_info,
            "start_date": inst.created_at,
            "end_date": inst.created_at + float(o.get("duration") or 0.0),
            "uptime_mins": (
                (time.time() - inst.running_since) / 60.0
                if inst.running_since is not None
                else None
            ),
            "disk_space": inst.disk,
            "disk_usage": 0.0 if running else -1,
            "disk_util": None,
            "gpu_util": None,
            "gpu_temp": None,
            "cpu_util": None,
            "mem_usage": None,
            "mem_limit": None,
            "vmem_usage": None,
            "inet_up_billed": None,
            "inet_down_billed": None,
            "time_remaining": "",
            "time_remaining_isbid": "",
            "is_bid": bool(o.get("is_bid")),
            "dph_total": o["dph_total"],
            "storage_total_cost": o["storage_total_cost"],
            "gpu_totalram": o.get("gpu_total_ram"),
        }
        for key in (
            "num_gpus",
            "gpu_name",
            "gpu_ram",
            "gpu_arch",
            "gpu_frac",
            "cpu_name",
            "cpu_cores",
            "cpu_cores_effective",
            "cpu_ram",
            "disk_bw",
            "disk_name",
            "dph_base",
            "storage_cost",
            "inet_up",
            "inet_down",
            "inet_up_cost",
            "inet_down_cost",
            "min_bid",
            "credit_discount_max",
            "reliability2",
            "cuda_max_good",
            "driver_version",
            "compute_cap",
            "total_flops",
            "dlperf",
            "verification",
            "geolocation",
            "hosting_type",
            "static_ip",
            "pci_gen",
            "os_version",
        ):
            out[key] = o.get(key)
        if running and port is not None:
            ports: dict[str, list[dict[str, str]]] = {
                "22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]
            }
            for key in inst.env:
                m = re.fullmatch(r"-p (\d+):(\d+)(?:/(tcp|udp))?", key)
                if m:
                    ports[f"{m.group(2)}/{m.group(3) or 'tcp'}"] = [
                        {"HostIp": "0.0.0.0", "HostPort": m.group(1)}
                    ]
            out["ports"] = ports
        return out

    def _live(self, instance_id: int) -> _Instance:
        with self._lock:
            inst = self._instances.get(instance_id)
        if inst is None or inst.destroyed_at is not None:
            raise _ApiError(404, "no_such_instance", f"Instance {instance_id} not found.")
        return inst

    # -- instance endpoints -----------------------------------------------------------------------

    def _h_show(self, iid: str, *, query: dict[str, str], body: Any) -> _Reply:
        with self._lock:
            inst = self._instances.get(int(iid))
        if inst is None or inst.destroyed_at is not None:
            return _ok({"instances": None})
        self._refresh(inst)
        with self._lock:
            return _ok({"instances": self._instance_json(inst)})

    def _h_list_v0(self, *, query: dict[str, str], body: Any) -> _Reply:
        return (
            410,
            {
                "success": False,
                "error": "deprecated_endpoint",
                "msg": "GET /api/v0/instances/ is gone; use GET /api/v1/instances/ (paged).",
            },
            {},
        )

    def _h_list_v1(self, *, query: dict[str, str], body: Any) -> _Reply:
        filters = _json_param(query, "select_filters", {})
        order = _json_param(query, "order_by", [{"col": "id", "dir": "asc"}])
        if not isinstance(filters, Mapping) or not isinstance(order, list):
            raise _ApiError(
                400, "invalid_args", "select_filters must be an object, order_by a list"
            )
        limit = int(_num(query.get("limit") or _PAGE_MAX, "limit"))
        limit = min(max(limit, 1), _PAGE_MAX)
        offset = 0
        if query.get("after_token"):
            try:
                offset = int(base64.urlsafe_b64decode(query["after_token"].encode()).decode())
            except ValueError:
                raise _ApiError(400, "invalid_args", "after_token is not a token of ours") from None
        with self._lock:
            live = [i for i in self._instances.values() if i.destroyed_at is None]
        for inst in live:
            self._refresh(inst)
        with self._lock:
            rows = [self._instance_json(i) for i in live]
        matched = _order_rows([r for r in rows if _matches(r, filters)], order)
        page = matched[offset : offset + limit]
        more = offset + limit < len(matched)
        cols = _json_param(query, "select_cols", None)
        if isinstance(cols, list) and cols and "*" not in cols:
            page = [{k: r.get(k) for k in ["id", *cols]} for r in page]
        labels: dict[str, int] = {}
        for row in rows:
            labels[str(row["label"])] = labels.get(str(row["label"]), 0) + 1
        token = base64.urlsafe_b64encode(str(offset + limit).encode()).decode() if more else None
        return _ok(
            {
                "success": True,
                "instances_found": len(matched),
                "total_instances": len(rows),
                "label_counts": labels,
                "next_token": token,
                "instances": page,
            }
        )

    def _h_update(self, iid: str, *, query: dict[str, str], body: Any) -> _Reply:
        inst = self._live(int(iid))
        body = body or {}
        if "label" in body:
            label = body["label"]
            if label is not None and len(str(label)) > _LIMITS["label"]:
                raise _ApiError(400, "invalid_args", "label is longer than 256 characters")
            with self._lock:
                inst.label = label
        state = body.get("state")
        if state == "stopped":
            self._stop(inst)
        elif state == "running":
            self._start(inst)
        elif state is not None:
            raise _ApiError(400, "invalid_args", f"state {state!r}: running or stopped")
        return _ok({"success": True})

    def _h_destroy(self, iid: str, *, query: dict[str, str], body: Any) -> _Reply:
        self._destroy(self._live(int(iid)))
        return _ok({"success": True, "msg": "Instance destroyed successfully"})

    def _h_bulk_state(self, *, query: dict[str, str], body: Any) -> _Reply:
        body = body or {}
        for iid in body.get("ids") or []:
            self._h_update(str(iid), query=query, body={"state": body.get("state")})
        return _ok({"success": True})

    def _h_bulk_destroy(self, *, query: dict[str, str], body: Any) -> _Reply:
        done = []
        for iid in (body or {}).get("instance_ids") or []:
            with contextlib.suppress(_ApiError):
                self._destroy(self._live(int(iid)))
                done.append(int(iid))
        return _ok({"success": True, "destroyed": done})

    def _h_logs(self, iid: str, *, query: dict[str, str], body: Any) -> _Reply:
        inst = self._live(int(iid))
        tail = int(_num((body or {}).get("tail") or 1000, "tail"))
        lines = [f"{msg}" for _, status, msg in inst.history if msg]
        text = "\n".join(lines[-tail:]) + "\n"
        if inst.container_id is not None:
            with contextlib.suppress(Exception):
                raw = self._docker_client().containers.get(inst.container_id).logs(tail=tail)
                text = raw.decode(errors="replace")
        token = secrets.token_hex(8)
        with self._lock:
            self._logs[token] = text
        return _ok({"success": True, "result_url": f"{self.url}/_fake/logs/{token}"})

    def _h_log_result(self, token: str, *, query: dict[str, str], body: Any) -> _Reply:
        with self._lock:
            text = self._logs.get(token)
        if text is None:
            return 404, "<Error><Code>NoSuchKey</Code></Error>", {}
        return 200, text, {}

    # -- SSH keys ---------------------------------------------------------------------------------

    def _check_key(self, key: Any) -> str:
        text = str(key or "").strip()
        if not re.match(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-\S+|sk-\S+) [A-Za-z0-9+/=]+", text):
            raise _ApiError(400, "invalid_args", "ssh_key is not an OpenSSH public key")
        return text

    def _h_keys(self, *, query: dict[str, str], body: Any) -> _Reply:
        with self._lock:
            return _ok([dict(k) for k in self._keys.values() if k["deleted_at"] is None])

    def _h_key_create(self, *, query: dict[str, str], body: Any) -> _Reply:
        text = self._check_key((body or {}).get("ssh_key"))
        with self._lock:
            kid = self._take("key")
            self._keys[kid] = {
                "id": kid,
                "user_id": 1,
                "public_key": text,
                "created_at": time.time(),
                "deleted_at": None,
            }
            return _ok({"success": True, **self._keys[kid]})

    def _h_key_update(self, kid: str, *, query: dict[str, str], body: Any) -> _Reply:
        text = self._check_key((body or {}).get("ssh_key"))
        with self._lock:
            key = self._keys.get(int(kid))
            if key is None or key["deleted_at"] is not None:
                raise _ApiError(404, "no_such_key", f"SSH key {kid} not found.")
            key["public_key"] = text
            return _ok({"success": True, **key})

    def _h_key_delete(self, kid: str, *, query: dict[str, str], body: Any) -> _Reply:
        with self._lock:
            key = self._keys.get(int(kid))
            if key is None or key["deleted_at"] is not None:
                raise _ApiError(404, "no_such_key", f"SSH key {kid} not found.")
            key["deleted_at"] = time.time()
        return _ok({"success": True})

    def _h_attach(self, iid: str, *, query: dict[str, str], body: Any) -> _Reply:
        inst = self._live(int(iid))
        text = self._check_key((body or {}).get("ssh_key"))
        with self._lock:
            inst.keys.append(text)
            cid = inst.container_id
        if cid is not None and inst.ssh:
            command = ["sh", "-c", 'printf "%s\\n" "$K" >> /root/.ssh/authorized_keys']
            with contextlib.suppress(Exception):
                self._docker_client().containers.get(cid).exec_run(command, environment={"K": text})
        return _ok({"success": True, "msg": "SSH key attached to instance"})

    def _h_detach(self, iid: str, kid: str, *, query: dict[str, str], body: Any) -> _Reply:
        self._live(int(iid))
        return _ok({"success": True, "msg": "SSH key detached from instance"})

    def _h_user(self, *, query: dict[str, str], body: Any) -> _Reply:
        with self._lock:
            keys = [k["public_key"] for k in self._keys.values() if k["deleted_at"] is None]
        return _ok(
            {
                "id": 1,
                "username": "runner-test",
                "email": "runner-test@example.invalid",
                "credit": 100.0,
                "balance": 0.0,
                "ssh_key": keys[0] if keys else None,
                "has_billing": True,
            }
        )

    # -- volumes ----------------------------------------------------------------------------------

    def _h_volume_search(self, *, query: dict[str, str], body: Any) -> _Reply:
        q = body or {}
        storage = _num(q.get("allocated_storage", 1.0), "allocated_storage")
        filters = {k: v for k, v in q.items() if k not in _SEARCH_KEYS}
        with self._lock:
            rows = []
            for ask in self._volume_asks.values():
                row = dict(ask.fields)
                cost = float(row.get("storage_cost") or 0.15)
                row.update(
                    {
                        "id": ask.id,
                        "ask_contract_id": ask.id,
                        "disk_space": ask.free_gb,
                        "dph_total": round(cost * storage / _HOURS_PER_MONTH, 6),
                        "score": ask.free_gb,
                    }
                )
                rows.append(row)
        rows = _order_rows([r for r in rows if _matches(r, filters)], q.get("order") or [])
        if q.get("limit") not in (None, ""):
            rows = rows[: int(_num(q["limit"], "limit"))]
        return _ok({"offers": rows})

    def _volume_json(self, vol: _Volume) -> dict[str, Any]:
        return {
            **vol.fields,
            "id": vol.id,
            "label": vol.name,
            "disk_space": vol.size_gb,
            "status": "in_use" if vol.instances else "idle",
            "type": "local_volume",
            "start_date": vol.created_at,
            "instances": list(vol.instances),
            "dph_total": round(vol.storage_cost * vol.size_gb / _HOURS_PER_MONTH, 6),
        }

    def _h_volumes(self, *, query: dict[str, str], body: Any) -> _Reply:
        if query.get("type") == "network_volume":
            return _ok({"volumes": []})
        with self._lock:
            live = [v for v in self._volumes.values() if v.deleted_at is None]
            return _ok({"volumes": [self._volume_json(v) for v in live]})

    def _h_volume_create(self, *, query: dict[str, str], body: Any) -> _Reply:
        body = body or {}
        ask_id = int(_num(body.get("id"), "id"))
        size = _num(body.get("size", 15), "size")
        with self._lock:
            ask = self._volume_asks.get(ask_id)
            if ask is None:
                raise _ApiError(404, "no_such_ask", f"Volume offer {ask_id} is not available.")
            if size <= 0 or size > ask.free_gb:
                raise _ApiError(400, "invalid_args", f"size {size:g}: 0 < size <= {ask.free_gb:g}")
            vol = self._new_volume(ask_id, size, body.get("name"))
        return _ok({"success": True, "volume_name": f"V.{vol.id}"})

    def _h_volume_delete(self, *, query: dict[str, str], body: Any) -> _Reply:
        raw = query.get("id", (body or {}).get("id") if isinstance(body, Mapping) else None)
        vid = int(_num(raw, "id"))
        with self._lock:
            vol = self._volumes.get(vid)
            if vol is None or vol.deleted_at is not None:
                raise _ApiError(404, "no_such_volume", f"Volume {vid} not found.")
            if vol.instances:
                raise _ApiError(
                    400,
                    "volume_in_use",
                    f"Volume {vid} is used by instance(s) {vol.instances}; destroy them first.",
                )
            vol.deleted_at = time.time()
            self._volume_asks[vol.ask_id].free_gb += vol.size_gb
        _unmount(vol.path)
        shutil.rmtree(vol.path, ignore_errors=True)
        return _ok({"success": True, "msg": f"Volume {vid} deleted"})

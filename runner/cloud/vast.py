"""The vast.ai API behind one small interface; the only module that imports ``vastai``.

:class:`VastClient` is the interface the rest of runner uses (offers, instances, labels, SSH
keys, volumes), typed with the records below; :class:`VastApi` implements it with the
``vastai`` SDK (>=1.9,<2), so a thin HTTP client could replace it. Errors are mapped here, at
the boundary, into :class:`CloudError` one-liners::

    CloudError (RunnerError)        exit 1
    ├── NoApiKeyError               no key anywhere the vastai CLI looks; says where to put one
    ├── AuthError                   vast.ai refused the key (401/403)
    ├── RateLimitError              429 after bounded retries, a Retry-After too long, or the
    │                               daily search quota
    ├── UnreachableError            no answer from the API server (connection, timeout, 5xx)
    └── ApiError                    any other refusal; ``status`` and ``code`` kept
        ├── OfferUnavailableError   ``no_such_ask``: the offer went between search and create
        └── NotFoundError           ``no_such_instance`` / ``no_such_volume`` / ``no_such_key``

Invariants:

- The API key is read as the vastai CLI reads it (explicit, ``VAST_API_KEY``,
  ``$XDG_CONFIG_HOME/vastai/vast_api_key`` else ``~/.config/vastai/vast_api_key``, legacy
  ``~/.vast_api_key``) and goes only into the ``Authorization`` header: never into an
  instance's env, onstart or label, never into a message (every message passes a redactor).
- Instances are listed through ``GET /api/v1/instances/`` page by page, never the v0 list that
  vast.ai retired (it hid running, billing instances from clients that still used it).
- 429 and 502/503/504 are retried a bounded number of times, honouring ``Retry-After`` up to
  :attr:`RetryPolicy.max_wait_s`; ``search_quota_exceeded`` is never retried.

Environment read here: ``VAST_API_KEY`` (the key), ``VAST_URL`` (the API server; default
``https://console.vast.ai``), ``XDG_CONFIG_HOME`` (where the key file lives).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from runner.errors import RunnerError

__all__ = [
    "DEFAULT_URL",
    "ENV_API_KEY",
    "ENV_URL",
    "RUNTYPE_SSH_DIRECT",
    "ApiError",
    "ApiKey",
    "AuthError",
    "CloudError",
    "Instance",
    "NoApiKeyError",
    "NotFoundError",
    "Offer",
    "OfferUnavailableError",
    "RateLimitError",
    "RetryPolicy",
    "SshKey",
    "UnreachableError",
    "VastApi",
    "VastClient",
    "Volume",
    "VolumeAttach",
    "resolve_api_key",
]

#: The API key (what the vastai CLI reads too).
ENV_API_KEY = "VAST_API_KEY"
#: The API server's base URL (what the vastai client reads too); tests point it at a fake.
ENV_URL = "VAST_URL"
DEFAULT_URL = "https://console.vast.ai"
#: SSH through vast's proxy plus a direct port (the client's own spelling, "direc", sic).
RUNTYPE_SSH_DIRECT = "ssh_direc ssh_proxy"
_KEYS_PAGE = "https://cloud.vast.ai/manage-keys/"
_PAGE_SIZE = 25  # the v1 list's maximum
_T = TypeVar("_T")


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


class CloudError(RunnerError):
    """A vast.ai operation failed; ``str(err)`` is one line that says what to do."""


class NoApiKeyError(CloudError):
    """No API key was found anywhere the vastai CLI looks."""


class AuthError(CloudError):
    """vast.ai refused the API key."""


class RateLimitError(CloudError):
    """vast.ai kept answering 429, asked for a longer wait than allowed, or the quota is spent."""


class UnreachableError(CloudError):
    """The API server did not answer (connection refused, timeout, 502/503/504)."""


class ApiError(CloudError):
    """vast.ai refused a request; ``status`` is the HTTP status, ``code`` its ``error`` field."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class OfferUnavailableError(ApiError):
    """The offer is no longer available (rented by someone else, or withdrawn)."""


class NotFoundError(ApiError):
    """The instance, volume or key does not exist (any more)."""


# ------------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------------


def _float(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(raw: Mapping[str, Any], key: str) -> int | None:
    value = _float(raw, key)
    return None if value is None else int(value)


def _str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return None if value is None else str(value)


@dataclass(frozen=True)
class Offer:
    """One machine's offer as search returned it (prices for the disk searched with)."""

    id: int
    machine_id: int
    host_id: int | None
    gpu_name: str
    num_gpus: int
    gpu_ram_mb: float | None
    """Memory per GPU in MB (vast's unit: ``gpu_ram``)."""
    cpu_ram_mb: float | None
    cpu_cores: float | None
    disk_space_gb: float | None
    """The most disk this offer can give, GB."""
    dph_total: float
    """Dollars per hour, GPU plus storage for the searched disk size."""
    reliability: float | None
    dlperf: float | None
    """vast.ai's deep-learning performance estimate for the whole bundle."""
    total_flops: float | None
    cuda_max_good: float | None
    driver_version: str | None
    inet_down: float | None
    inet_up: float | None
    geolocation: str | None
    hosting_type: int | None
    """1 for a datacenter host."""
    verification: str | None
    avail_vol_ask_id: int | None
    """The volume offer on this machine (to create a local volume with an instance)."""
    avail_vol_size: float | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> Offer:
        reliability = _float(raw, "reliability2")
        if reliability is None:
            reliability = _float(raw, "reliability")
        return cls(
            id=int(raw["id"]),
            machine_id=int(raw.get("machine_id") or 0),
            host_id=_int(raw, "host_id"),
            gpu_name=str(raw.get("gpu_name") or "?"),
            num_gpus=int(raw.get("num_gpus") or 0),
            gpu_ram_mb=_float(raw, "gpu_ram"),
            cpu_ram_mb=_float(raw, "cpu_ram"),
            cpu_cores=_float(raw, "cpu_cores_effective"),
            disk_space_gb=_float(raw, "disk_space"),
            dph_total=float(raw.get("dph_total") or 0.0),
            reliability=reliability,
            dlperf=_float(raw, "dlperf"),
            total_flops=_float(raw, "total_flops"),
            cuda_max_good=_float(raw, "cuda_max_good"),
            driver_version=_str(raw, "driver_version"),
            inet_down=_float(raw, "inet_down"),
            inet_up=_float(raw, "inet_up"),
            geolocation=_str(raw, "geolocation"),
            hosting_type=_int(raw, "hosting_type"),
            verification=_str(raw, "verification"),
            avail_vol_ask_id=_int(raw, "avail_vol_ask_id"),
            avail_vol_size=_float(raw, "avail_vol_size"),
            raw=dict(raw),
        )

    @property
    def gpu_ram_gb(self) -> float | None:
        """Memory per GPU as cards are sold (``gpu_ram`` is MiB: 24564 is a "24 GB" card)."""
        return None if self.gpu_ram_mb is None else self.gpu_ram_mb / 1024.0

    def describe(self) -> str:
        """``offer 12 (1x RTX 4090 24 GB, Ohio, US, machine 4001, $0.62/h)``."""
        mem = f" {self.gpu_ram_gb:.0f} GB" if self.gpu_ram_gb else ""
        where = f", {self.geolocation}" if self.geolocation else ""
        return (
            f"offer {self.id} ({self.num_gpus}x {self.gpu_name}{mem}{where},"
            f" machine {self.machine_id}, ${self.dph_total:.3f}/h)"
        )


@dataclass(frozen=True)
class Instance:
    """One instance as ``show instance`` / the v1 list returns it."""

    id: int
    label: str | None
    actual_status: str | None
    """None while provisioning, then created, loading, running, stopped, exited, offline..."""
    cur_state: str | None
    intended_status: str | None
    status_msg: str | None
    machine_id: int | None
    offer_id: int | None
    gpu_name: str | None
    num_gpus: int | None
    dph_total: float | None
    disk_gb: float | None
    start_date: float | None
    ssh_host: str | None
    ssh_port: int | None
    public_ipaddr: str | None
    direct_ssh_port: int | None
    """``ports["22/tcp"][0]["HostPort"]`` in direct mode; absent until running."""
    image: str | None
    volume_id: int | None
    volume_mount: str | None
    geolocation: str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> Instance:
        direct: int | None = None
        ports = raw.get("ports")
        if isinstance(ports, Mapping):
            bindings = ports.get("22/tcp")
            if isinstance(bindings, list) and bindings and isinstance(bindings[0], Mapping):
                direct = _int(bindings[0], "HostPort")
        volume = raw.get("volume_info")
        volume_id = volume_mount = None
        if isinstance(volume, Mapping):
            volume_id = _int(volume, "volume_id")
            volume_mount = _str(volume, "mount_path")
        return cls(
            id=int(raw["id"]),
            label=_str(raw, "label"),
            actual_status=_str(raw, "actual_status"),
            cur_state=_str(raw, "cur_state"),
            intended_status=_str(raw, "intended_status"),
            status_msg=_str(raw, "status_msg"),
            machine_id=_int(raw, "machine_id"),
            offer_id=_int(raw, "ask_contract_id"),
            gpu_name=_str(raw, "gpu_name"),
            num_gpus=_int(raw, "num_gpus"),
            dph_total=_float(raw, "dph_total"),
            disk_gb=_float(raw, "disk_space"),
            start_date=_float(raw, "start_date"),
            ssh_host=_str(raw, "ssh_host"),
            ssh_port=_int(raw, "ssh_port"),
            public_ipaddr=_str(raw, "public_ipaddr"),
            direct_ssh_port=direct,
            image=_str(raw, "image_uuid"),
            volume_id=volume_id,
            volume_mount=volume_mount,
            geolocation=_str(raw, "geolocation"),
            raw=dict(raw),
        )

    def ssh_endpoints(self) -> list[tuple[str, int]]:
        """Where sshd answers: vast's proxy first (``ssh_host:ssh_port``), then the direct port."""
        found: list[tuple[str, int]] = []
        if self.ssh_host and self.ssh_port:
            found.append((self.ssh_host, self.ssh_port))
        if self.public_ipaddr and self.direct_ssh_port:
            direct = (self.public_ipaddr.strip(), self.direct_ssh_port)
            if direct not in found:
                found.append(direct)
        return found


@dataclass(frozen=True)
class Volume:
    """A local volume: fixed size, lives on one machine, survives instance destroy."""

    id: int
    name: str | None
    size_gb: float
    machine_id: int | None
    status: str | None
    instances: tuple[int, ...]
    dph_total: float | None
    start_date: float | None
    geolocation: str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> Volume:
        users = raw.get("instances") or []
        return cls(
            id=int(raw["id"]),
            name=_str(raw, "label") or _str(raw, "name"),
            size_gb=float(raw.get("disk_space") or raw.get("size") or 0.0),
            machine_id=_int(raw, "machine_id"),
            status=_str(raw, "status"),
            instances=tuple(int(i) for i in users if str(i).isdigit()),
            dph_total=_float(raw, "dph_total"),
            start_date=_float(raw, "start_date"),
            geolocation=_str(raw, "geolocation"),
            raw=dict(raw),
        )


@dataclass(frozen=True)
class SshKey:
    """A public key on the account (installed in instances created afterwards)."""

    id: int
    public_key: str


@dataclass(frozen=True)
class VolumeAttach:
    """A volume for a new instance: link ``volume_id``, or create ``size_gb`` on ``ask_id``."""

    mount_path: str
    volume_id: int | None = None
    """An existing volume to link (it must live on the offer's machine)."""
    create_ask_id: int | None = None
    """The volume offer to create from (the offer's ``avail_vol_ask_id``)."""
    size_gb: float | None = None
    name: str | None = None

    def payload(self) -> dict[str, Any]:
        """The create body's ``volume_info``."""
        if (self.volume_id is None) == (self.create_ask_id is None):
            raise ValueError("VolumeAttach needs exactly one of volume_id or create_ask_id")
        info: dict[str, Any] = {
            "mount_path": self.mount_path,
            "create_new": self.create_ask_id is not None,
            "volume_id": self.create_ask_id if self.create_ask_id is not None else self.volume_id,
        }
        if self.create_ask_id is not None:
            info["size"] = int(self.size_gb or 15)
        if self.name:
            info["name"] = self.name
        return info


# ------------------------------------------------------------------------------------------------
# The interface
# ------------------------------------------------------------------------------------------------


class VastClient(Protocol):
    """What runner needs from vast.ai. Every method raises :class:`CloudError` subclasses."""

    def search_offers(
        self,
        query: Mapping[str, Any],
        *,
        disk_gb: float,
        limit: int = 100,
        order: Sequence[Sequence[str]] = (("dlperf_per_dphtotal", "desc"),),
    ) -> list[Offer]:
        """Offers matching ``query`` (vast's ``{field: {op: value}}``), priced for ``disk_gb``."""
        ...

    def create_instance(
        self,
        offer_id: int,
        *,
        image: str,
        disk_gb: float,
        label: str,
        runtype: str = RUNTYPE_SSH_DIRECT,
        env: Mapping[str, str] | None = None,
        onstart: str | None = None,
        volume: VolumeAttach | None = None,
    ) -> int:
        """Rent ``offer_id`` (``cancel_unavail`` always on); returns the new instance id.

        Raises :class:`OfferUnavailableError` when the offer went away.
        """
        ...

    def show_instance(self, instance_id: int) -> Instance | None:
        """One instance, or ``None`` when the account has no such (live) instance."""
        ...

    def list_instances(self) -> list[Instance]:
        """Every instance on the account (v1 list, all pages)."""
        ...

    def stop_instance(self, instance_id: int) -> None: ...

    def destroy_instance(self, instance_id: int) -> None:
        """Destroy; :class:`NotFoundError` if it is already gone."""
        ...

    def label_instance(self, instance_id: int, label: str) -> None: ...

    def list_ssh_keys(self) -> list[SshKey]: ...

    def add_ssh_key(self, public_key: str) -> SshKey: ...

    def attach_ssh_key(self, instance_id: int, public_key: str) -> None: ...

    def list_volumes(self) -> list[Volume]: ...

    def create_volume(self, ask_id: int, size_gb: float, name: str | None = None) -> int:
        """Create a local volume from a volume offer; returns its id."""
        ...

    def delete_volume(self, volume_id: int) -> None: ...


# ------------------------------------------------------------------------------------------------
# The API key
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKey:
    """A key and where it came from (``source`` is shown in messages; the key never is)."""

    value: str = field(repr=False)
    source: str

    def __str__(self) -> str:
        return f"vast.ai API key from {self.source}"


def _config_home(environ: Mapping[str, str], home: Path) -> Path:
    xdg = environ.get("XDG_CONFIG_HOME", "").strip()
    return Path(xdg) if xdg else home / ".config"


def resolve_api_key(
    explicit: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> ApiKey:
    """The API key, looked up in the vastai CLI's order.

    Explicit argument, ``VAST_API_KEY``, ``$XDG_CONFIG_HOME/vastai/vast_api_key`` (else
    ``~/.config/vastai/vast_api_key``), legacy ``~/.vast_api_key``. Raises
    :class:`NoApiKeyError` naming where to put one.
    """
    env = os.environ if environ is None else environ
    home = Path.home() if home is None else home
    if explicit is not None and explicit.strip():
        return ApiKey(explicit.strip(), "the api_key argument")
    if env.get(ENV_API_KEY, "").strip():
        return ApiKey(env[ENV_API_KEY].strip(), ENV_API_KEY)
    xdg_file = _config_home(env, home) / "vastai" / "vast_api_key"
    legacy = home / ".vast_api_key"
    for path in (xdg_file, legacy):
        if path.is_file():
            try:
                text = path.read_text().strip()
            except OSError as exc:
                raise NoApiKeyError(f"cannot read the vast.ai API key {path}: {exc}") from None
            if text:
                return ApiKey(text, str(path))
    raise NoApiKeyError(
        f"no vast.ai API key: set {ENV_API_KEY}, or save the key to {xdg_file} "
        f"(`vastai set api-key KEY` does); keys are at {_KEYS_PAGE}"
    )


# ------------------------------------------------------------------------------------------------
# The implementation
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How 429 and 502/503/504 answers (and dropped connections) are retried."""

    attempts: int = 5
    """Requests in all, the first included."""
    base_s: float = 0.5
    """First wait when the server gives no ``Retry-After``; doubles each time."""
    max_wait_s: float = 30.0
    """The longest single wait: a longer ``Retry-After`` ends in :class:`RateLimitError`."""


_RETRY_STATUS = {429, 502, 503, 504}


class VastApi:
    """:class:`VastClient` over the ``vastai`` SDK.

    Args:
        api_key: the key, or ``None`` to look it up like the vastai CLI (:func:`resolve_api_key`).
        server_url: the API server (default ``$VAST_URL``, else ``https://console.vast.ai``).
        retry: bounds on retrying rate limits and transient failures.
        timeout_s: per request.
        notify: called with a one-line message before each retry wait (for progress output).
        sleep: the wait function (tests pass a recorder).

    Raises :class:`NoApiKeyError` when no key is found.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        server_url: str | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float = 30.0,
        notify: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._key = resolve_api_key(api_key, environ=env)
        self.url = (server_url or env.get(ENV_URL, "").strip() or DEFAULT_URL).rstrip("/")
        self.retry = retry or RetryPolicy()
        self._notify = notify
        self._sleep = sleep
        from vastai import VastAI  # heavy (about 40 packages): only once a command needs it

        # retry=1: one attempt per SDK call; the bounded retries and their messages are ours.
        self._sdk: Any = VastAI(api_key=self._key.value, server_url=self.url, retry=1)
        self._sdk.client.timeout = timeout_s

    def __repr__(self) -> str:
        return f"VastApi(url={self.url!r}, key from {self._key.source})"

    @property
    def key_source(self) -> str:
        """Where the key came from (an env var name or a file path), for messages."""
        return self._key.source

    # -- the one place requests are sent -------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        import requests

        wait = self.retry.base_s
        for attempt in range(1, max(1, self.retry.attempts) + 1):
            last = attempt >= self.retry.attempts
            try:
                return fn()
            except requests.HTTPError as exc:
                response = exc.response
                status = response.status_code if response is not None else None
                if status not in _RETRY_STATUS or response is None:
                    raise self._http_error(what, exc) from None
                body = _body(response)
                if status == 429 and body.get("error") == "search_quota_exceeded":
                    raise RateLimitError(
                        "vast.ai's daily search quota is spent (search_quota_exceeded); it "
                        "resets at 00:00 UTC"
                    ) from None
                retry_after = _retry_after(response)
                delay = retry_after if retry_after is not None else wait
                if delay > self.retry.max_wait_s:
                    raise RateLimitError(
                        f"vast.ai rate-limits {what} and asks to wait {delay:g} s (more than "
                        f"{self.retry.max_wait_s:g} s); try again in a few minutes"
                    ) from None
                if last:
                    if status == 429:
                        raise RateLimitError(
                            f"vast.ai kept answering 429 (too many requests) to {what} after "
                            f"{attempt} tries; wait a minute and run it again"
                        ) from None
                    raise UnreachableError(
                        f"vast.ai answered {status} to {what} {attempt} times in a row; its API "
                        "is having trouble, try again in a few minutes"
                    ) from None
                reason = "rate limit (429)" if status == 429 else f"server error {status}"
                self._say(f"vast.ai {reason} on {what}; retrying in {delay:g} s")
            except (requests.ConnectionError, requests.Timeout) as exc:
                if last:
                    kind = "timed out" if isinstance(exc, requests.Timeout) else "refused"
                    raise UnreachableError(
                        f"cannot reach vast.ai at {self.url} ({what}: connection {kind} "
                        f"{attempt} times); check the network or {ENV_URL}"
                    ) from None
                delay = wait
                self._say(f"vast.ai did not answer {what}; retrying in {delay:g} s")
            except requests.RequestException as exc:
                raise UnreachableError(
                    self._redact(f"request to vast.ai failed ({what}): {exc}")
                ) from None
            self._sleep(delay)
            wait *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _say(self, message: str) -> None:
        if self._notify is not None:
            self._notify(message)

    def _redact(self, text: str) -> str:
        key = self._key.value
        return text.replace(key, "<api key>") if key else text

    def _http_error(self, what: str, exc: Any) -> CloudError:
        response = exc.response
        status = int(response.status_code) if response is not None else None
        body = _body(response) if response is not None else {}
        code = str(body.get("error") or "") or None
        msg = str(body.get("msg") or body.get("detail") or "").strip()
        if not msg and response is not None and not body:
            lines = (response.text or "").strip().splitlines()
            msg = lines[0][:200] if lines else ""
        msg = self._redact(msg)
        detail = f"{status} {code}" if code else f"{status}"
        if status in (401, 403):
            return AuthError(
                f"vast.ai refused the API key from {self._key.source} ({detail}); check it, "
                f"or make a new one at {_KEYS_PAGE}"
            )
        text = f"vast.ai refused {what} ({detail}{': ' + msg if msg else ''})"
        if code == "no_such_ask":
            return OfferUnavailableError(text, status=status, code=code)
        if code in ("no_such_instance", "no_such_volume", "no_such_key") or (
            status == 404 and code is None
        ):
            return NotFoundError(text, status=status, code=code)
        return ApiError(text, status=status, code=code)

    # -- offers ----------------------------------------------------------------------------------

    def search_offers(
        self,
        query: Mapping[str, Any],
        *,
        disk_gb: float,
        limit: int = 100,
        order: Sequence[Sequence[str]] = (("dlperf_per_dphtotal", "desc"),),
    ) -> list[Offer]:
        q = dict(query)
        rows = self._call(
            "the offer search",
            lambda: self._sdk.search_offers(
                query=q,
                type="on-demand",
                order=[list(o) for o in order],
                limit=limit,
                storage=disk_gb,
                no_default=True,
            ),
        )
        return [Offer.from_api(r) for r in rows or [] if isinstance(r, Mapping) and "id" in r]

    # -- instances -------------------------------------------------------------------------------

    def create_instance(
        self,
        offer_id: int,
        *,
        image: str,
        disk_gb: float,
        label: str,
        runtype: str = RUNTYPE_SSH_DIRECT,
        env: Mapping[str, str] | None = None,
        onstart: str | None = None,
        volume: VolumeAttach | None = None,
    ) -> int:
        env_in = dict(env or {})
        for text in (*env_in.keys(), *env_in.values(), label, onstart or "", image):
            if self._key.value and self._key.value in text:
                # The account key on a community host is the one leak runner must never make.
                raise CloudError("refusing to send the vast.ai API key to an instance")
        answer = self._call(
            f"renting offer {offer_id}",
            lambda: self._sdk.create_instance(
                offer_id,
                image=image,
                disk=disk_gb,
                env=env_in,
                label=label,
                onstart_cmd=onstart,
                cancel_unavail=True,
                runtype=runtype,
                volume_info=volume.payload() if volume is not None else None,
            ),
        )
        if not isinstance(answer, Mapping) or not answer.get("new_contract"):
            detail = self._redact(str(answer.get("msg") if isinstance(answer, Mapping) else ""))
            raise ApiError(f"vast.ai did not rent offer {offer_id}: {detail or 'no contract'}")
        return int(answer["new_contract"])

    def show_instance(self, instance_id: int) -> Instance | None:
        http = self._sdk.client  # the raw call: the SDK's crashes on a row without start_date

        def fetch() -> Any:
            r = http.get(f"/instances/{instance_id}/", query_args={"owner": "me"})
            r.raise_for_status()
            return r.json()

        data = self._call(f"showing instance {instance_id}", fetch)
        row = data.get("instances") if isinstance(data, Mapping) else None
        return Instance.from_api(row) if isinstance(row, Mapping) else None

    def list_instances(self) -> list[Instance]:
        rows: list[Instance] = []
        params: dict[str, Any] = {
            "select_filters": {},
            "order_by": [{"col": "id", "dir": "asc"}],
            "limit": _PAGE_SIZE,
        }
        for _ in range(10_000):  # a bound, not a page count anyone reaches
            page = self._call("listing instances", functools.partial(self._page, params))
            if not isinstance(page, Mapping):
                break
            if page.get("success") is False:
                raise ApiError(
                    f"vast.ai refused listing instances ({page.get('error')}: {page.get('msg')})"
                )
            rows += [Instance.from_api(r) for r in page.get("instances") or []]
            token = page.get("next_token")
            if not token:
                break
            params = {**params, "after_token": token}
        return rows

    def _page(self, params: dict[str, Any]) -> Any:
        return self._sdk.show_instances_v1(params)

    def stop_instance(self, instance_id: int) -> None:
        self._call(f"stopping instance {instance_id}", lambda: self._sdk.stop_instance(instance_id))

    def destroy_instance(self, instance_id: int) -> None:
        self._call(
            f"destroying instance {instance_id}", lambda: self._sdk.destroy_instance(instance_id)
        )

    def label_instance(self, instance_id: int, label: str) -> None:
        self._call(
            f"labelling instance {instance_id}",
            lambda: self._sdk.label_instance(instance_id, label),
        )

    # -- SSH keys --------------------------------------------------------------------------------

    def list_ssh_keys(self) -> list[SshKey]:
        rows = self._call("listing SSH keys", self._sdk.show_ssh_keys)
        if isinstance(rows, Mapping):  # some server versions wrap the list
            rows = rows.get("ssh_keys") or rows.get("keys") or []
        out = []
        for row in rows or []:
            if isinstance(row, Mapping) and row.get("id") is not None and not row.get("deleted_at"):
                out.append(SshKey(int(row["id"]), str(row.get("public_key") or "").strip()))
        return out

    def add_ssh_key(self, public_key: str) -> SshKey:
        row = self._call("adding the SSH key", lambda: self._sdk.create_ssh_key(public_key))
        key_id = row.get("id") if isinstance(row, Mapping) else None
        return SshKey(int(key_id or 0), public_key.strip())

    def attach_ssh_key(self, instance_id: int, public_key: str) -> None:
        self._call(
            f"attaching the SSH key to instance {instance_id}",
            lambda: self._sdk.attach_ssh(instance_id, public_key),
        )

    # -- volumes ---------------------------------------------------------------------------------

    def list_volumes(self) -> list[Volume]:
        rows = self._call("listing volumes", lambda: self._sdk.show_volumes(type="all"))
        return [Volume.from_api(r) for r in rows or [] if isinstance(r, Mapping) and "id" in r]

    def create_volume(self, ask_id: int, size_gb: float, name: str | None = None) -> int:
        answer = self._call(
            "creating a volume",
            lambda: self._sdk.create_volume(ask_id, size=size_gb, name=name),
        )
        text = str(answer.get("volume_name") or "") if isinstance(answer, Mapping) else ""
        digits = text.split(".", 1)[-1]
        if not digits.isdigit():
            raise ApiError(f"vast.ai created a volume but did not say its id ({text or answer})")
        return int(digits)

    def delete_volume(self, volume_id: int) -> None:
        self._call(f"deleting volume {volume_id}", lambda: self._sdk.delete_volume(volume_id))


def _body(response: Any) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return dict(data) if isinstance(data, Mapping) else {}


def _retry_after(response: Any) -> float | None:
    raw = response.headers.get("Retry-After")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except (TypeError, ValueError):
        return None

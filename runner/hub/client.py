"""The one place that talks to ``huggingface_hub``: a small interface over ``HfApi``.

Everything else in runner calls :class:`HubClient` (or anything that satisfies the
:class:`HubApi` protocol) and sees plain dataclasses and :class:`HubError`, never the client's
own types or exceptions. ``huggingface_hub`` is imported inside the methods, so importing this
module (and ``runner --help``) stays instant.

Only calls that exist unchanged in huggingface_hub 1.x and 2.x are used (training images pin
``<2``): ``create_repo``, ``upload_folder``, ``list_repo_tree``, ``list_repo_refs``,
``create_tag``, ``delete_tag``, ``hf_hub_download``.

Errors::

    RunnerError
    └── HubError          one line, never the token; .status, .transient, .retry_after
        └── HubAuthError  no token for a write, or the Hub refused it (401/403)

``HfHubHTTPError`` (and its subclasses), the HTTP library's transport errors (``httpx``,
``httpx2`` in 2.x, ``requests``) and ``OSError`` are mapped in :func:`map_hub_error`, chained
``from exc``. Every message passes through :func:`redact`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from runner.errors import RunnerError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = [
    "DEFAULT_ENDPOINT",
    "ENV_ENDPOINT",
    "ENV_TOKEN",
    "HubApi",
    "HubAuthError",
    "HubClient",
    "HubError",
    "RemoteFile",
    "RemoteFolder",
    "RemoteRefs",
    "RepoType",
    "map_hub_error",
    "redact",
]

ENV_TOKEN = "HF_TOKEN"
ENV_ENDPOINT = "HF_ENDPOINT"
DEFAULT_ENDPOINT = "https://huggingface.co"

RepoType = Literal["model", "dataset"]

#: Statuses worth retrying soon: the Hub's own retry list plus 409/412/423 (a concurrent commit or
#: a lock on the repo; the next attempt usually lands).
_TRANSIENT = frozenset({408, 409, 412, 423, 425, 429, 500, 502, 503, 504})

_TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{6,}")
_BEARER_PATTERN = re.compile(r"(?i)(authorization[:=]\s*(?:bearer\s+)?|bearer\s+)\S+")
_QUERY_PATTERN = re.compile(r"(https?://[^\s'\"?]+)\?[^\s'\"]*")


class HubError(RunnerError):
    """A Hub request failed; ``str(err)`` is one line without the token.

    Attributes:
        status: the HTTP status, or ``None`` for a network error (no answer at all).
        transient: whether retrying the same request later is likely to work (5xx, 429,
            timeouts, dropped connections).
        retry_after: seconds the server asked us to wait (``Retry-After`` on 429/503), or None.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        transient: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(redact(" ".join(message.split())))
        self.status = status
        self.transient = transient
        self.retry_after = retry_after


class HubAuthError(HubError):
    """No token for a write, or the Hub refused the one we have."""


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with tokens, Authorization values and URL query strings (signed upload URLs)
    removed. ``secrets`` are replaced wherever they occur, whatever they look like."""
    for secret in (*secrets, os.environ.get(ENV_TOKEN) or ""):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _TOKEN_PATTERN.sub("hf_***", text)
    text = _BEARER_PATTERN.sub(lambda m: m.group(1) + "***", text)
    return _QUERY_PATTERN.sub(r"\1", text)


@dataclass(frozen=True)
class RemoteFile:
    """A file on the Hub at some revision."""

    path: str
    size: int
    sha256: str | None = None
    """The LFS object id (sha256 of the content); ``None`` for a regular (non-LFS) file."""
    blob_id: str | None = None
    """Git blob id: of the content for a regular file, of the LFS pointer otherwise."""


@dataclass(frozen=True)
class RemoteFolder:
    """A folder on the Hub, with the last commit that touched it (when the Hub says)."""

    path: str
    last_commit: str | None = None
    last_commit_date: str | None = None
    """ISO 8601, UTC."""


@dataclass(frozen=True)
class RemoteRefs:
    """Branches and tags of a repo: ``name -> commit oid``."""

    branches: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)


class HubApi(Protocol):
    """What the pusher, rotation, pull and the commands need from the Hub."""

    @property
    def endpoint(self) -> str: ...

    def require_token(self) -> None: ...

    def ensure_repo(self, repo: str, *, repo_type: RepoType = ..., private: bool = ...) -> None: ...

    def upload_folder(
        self,
        repo: str,
        folder: Path,
        *,
        path_in_repo: str,
        message: str,
        description: str = ...,
        repo_type: RepoType = ...,
        allow_patterns: Sequence[str] | None = ...,
        delete_patterns: Sequence[str] | None = ...,
    ) -> str: ...

    def list_files(
        self, repo: str, path: str = ..., *, revision: str = ..., repo_type: RepoType = ...
    ) -> dict[str, RemoteFile]: ...

    def list_folders(
        self, repo: str, path: str = ..., *, revision: str = ..., repo_type: RepoType = ...
    ) -> list[RemoteFolder]: ...

    def refs(self, repo: str, *, repo_type: RepoType = ...) -> RemoteRefs: ...

    def create_tag(
        self, repo: str, tag: str, revision: str, *, repo_type: RepoType = ...
    ) -> None: ...

    def delete_tag(self, repo: str, tag: str, *, repo_type: RepoType = ...) -> bool: ...

    def download(
        self,
        repo: str,
        paths: Sequence[str],
        dest: Path,
        *,
        revision: str,
        repo_type: RepoType = ...,
    ) -> None: ...


_T = TypeVar("_T")


class HubClient:
    """The real :class:`HubApi`, over ``huggingface_hub.HfApi``.

    Args:
        endpoint: the Hub's URL; default ``$HF_ENDPOINT``, else ``https://huggingface.co``
            (read when the client is made, not when huggingface_hub was imported).
        token: a token; default ``$HF_TOKEN``, else the login stored by ``hf auth login``.
            ``None`` everywhere: reads of public repos still work, writes raise
            :class:`HubAuthError` (:meth:`require_token`).
        hf_api: an existing ``HfApi`` to wrap instead (its endpoint and token are used).

    The token is kept private to this object: it is never in ``repr``, messages or arguments
    of subprocesses.
    """

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        hf_api: HfApi | None = None,
    ) -> None:
        if hf_api is not None:
            self._endpoint = str(hf_api.endpoint).rstrip("/")
            wrapped = hf_api.token if isinstance(hf_api.token, str) else None
            self._token = wrapped or token or _stored_token()
            self._api: HfApi | None = hf_api
        else:
            url = endpoint or os.environ.get(ENV_ENDPOINT) or DEFAULT_ENDPOINT
            self._endpoint = url.rstrip("/")
            self._token = token or _stored_token()
            self._api = None

    @classmethod
    def from_env(cls) -> HubClient:
        """A client for ``$HF_ENDPOINT`` with ``$HF_TOKEN`` or the stored login."""
        return cls()

    def __repr__(self) -> str:
        return f"HubClient(endpoint={self._endpoint!r}, token={'set' if self._token else None})"

    @property
    def endpoint(self) -> str:
        return self._endpoint

    @property
    def has_token(self) -> bool:
        return bool(self._token)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Strings that must never be shown (for :func:`redact`)."""
        return (self._token,) if self._token else ()

    def require_token(self) -> None:
        """Raise :class:`HubAuthError` unless a token is available (writes need one)."""
        if not self._token:
            raise HubAuthError(
                f"no Hugging Face token for writing to {self._endpoint}: set {ENV_TOKEN} "
                "or run `hf auth login`"
            )

    def _hf(self) -> HfApi:
        if self._api is None:
            import importlib

            from huggingface_hub import HfApi

            # The client's tqdm bars would go to the agent's log or under our own display.
            utils = importlib.import_module("huggingface_hub.utils")
            utils.disable_progress_bars()  # documented there in 1.x and 2.x
            self._api = HfApi(endpoint=self._endpoint, token=self._token or False)
        return self._api

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except Exception as exc:
            raise map_hub_error(exc, what, self.secrets) from exc

    # -- writes ----------------------------------------------------------------------------------

    def ensure_repo(
        self, repo: str, *, repo_type: RepoType = "model", private: bool = True
    ) -> None:
        """Create ``repo`` unless it exists (an existing repo keeps its visibility)."""
        self.require_token()
        self._call(
            f"creating {repo_type} repo {repo}",
            lambda: self._hf().create_repo(
                repo, repo_type=repo_type, private=private, exist_ok=True
            ),
        )

    def upload_folder(
        self,
        repo: str,
        folder: Path,
        *,
        path_in_repo: str,
        message: str,
        description: str = "",
        repo_type: RepoType = "model",
        allow_patterns: Sequence[str] | None = None,
        delete_patterns: Sequence[str] | None = None,
    ) -> str:
        """Upload ``folder`` under ``path_in_repo`` in one ``upload_folder`` call; returns the
        commit oid (the current head when nothing changed: no commit is made then)."""
        self.require_token()

        def upload() -> str:
            info = self._hf().upload_folder(
                repo_id=repo,
                folder_path=folder,
                path_in_repo=path_in_repo,
                commit_message=message,
                commit_description=description or None,
                repo_type=repo_type,
                allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
                delete_patterns=list(delete_patterns) if delete_patterns is not None else None,
            )
            oid = getattr(info, "oid", None)
            if not isinstance(oid, str):
                raise TypeError(f"upload_folder returned {type(info).__name__}, not CommitInfo")
            return oid

        return self._call(f"upload of {path_in_repo} to {repo}", upload)

    def create_tag(
        self, repo: str, tag: str, revision: str, *, repo_type: RepoType = "model"
    ) -> None:
        """Create ``tag`` on ``revision``; a :class:`HubError` with status 409 if it exists."""
        self.require_token()
        self._call(
            f"creating tag {tag} in {repo}",
            lambda: self._hf().create_tag(repo, tag=tag, revision=revision, repo_type=repo_type),
        )

    def delete_tag(self, repo: str, tag: str, *, repo_type: RepoType = "model") -> bool:
        """Delete ``tag``; False when it did not exist."""
        self.require_token()
        try:
            self._call(
                f"deleting tag {tag} in {repo}",
                lambda: self._hf().delete_tag(repo, tag=tag, repo_type=repo_type),
            )
        except HubError as err:
            if err.status == 404:
                return False
            raise
        return True

    # -- reads -----------------------------------------------------------------------------------

    def list_files(
        self,
        repo: str,
        path: str = "",
        *,
        revision: str = "main",
        repo_type: RepoType = "model",
    ) -> dict[str, RemoteFile]:
        """Every file under ``path`` (recursive) at ``revision``: ``{path: RemoteFile}``;
        empty when ``path`` does not exist there."""
        from huggingface_hub import RepoFile

        def listing() -> dict[str, RemoteFile]:
            found: dict[str, RemoteFile] = {}
            entries = self._hf().list_repo_tree(
                repo,
                path_in_repo=path or None,
                recursive=True,
                revision=revision,
                repo_type=repo_type,
            )
            for entry in entries:
                if isinstance(entry, RepoFile):
                    sha = entry.lfs.sha256 if entry.lfs is not None else None
                    found[entry.path] = RemoteFile(entry.path, int(entry.size), sha, entry.blob_id)
            return found

        try:
            return self._call(f"listing {repo}/{path} at {revision}", listing)
        except HubError as err:
            if err.status == 404 and _entry_missing(err):
                return {}
            raise

    def list_folders(
        self,
        repo: str,
        path: str = "",
        *,
        revision: str = "main",
        repo_type: RepoType = "model",
    ) -> list[RemoteFolder]:
        """The folders directly under ``path`` with their last commit; empty when ``path``
        does not exist."""
        from huggingface_hub import RepoFolder

        def listing() -> list[RemoteFolder]:
            found = []
            entries = self._hf().list_repo_tree(
                repo, path_in_repo=path or None, expand=True, revision=revision, repo_type=repo_type
            )
            for entry in entries:
                if isinstance(entry, RepoFolder):
                    last = entry.last_commit
                    date = last.date.isoformat() if last is not None else None
                    found.append(RemoteFolder(entry.path, last.oid if last else None, date))
            return found

        try:
            return self._call(f"listing {repo}/{path} at {revision}", listing)
        except HubError as err:
            if err.status == 404 and _entry_missing(err):
                return []
            raise

    def refs(self, repo: str, *, repo_type: RepoType = "model") -> RemoteRefs:
        def read() -> RemoteRefs:
            refs = self._hf().list_repo_refs(repo, repo_type=repo_type)
            return RemoteRefs(
                branches={b.name: b.target_commit for b in refs.branches},
                tags={t.name: t.target_commit for t in refs.tags},
            )

        return self._call(f"reading the refs of {repo}", read)

    def download(
        self,
        repo: str,
        paths: Sequence[str],
        dest: Path,
        *,
        revision: str,
        repo_type: RepoType = "model",
    ) -> None:
        """Download ``paths`` (repo paths) at ``revision`` into ``dest``, keeping their repo
        paths (``dest/<path>``). The client's bookkeeping goes to ``dest/.cache``."""
        from huggingface_hub import hf_hub_download

        self._hf()  # progress bars off
        for path in paths:
            self._call(
                f"download of {path} from {repo}",
                lambda path=path: hf_hub_download(  # type: ignore[misc]
                    repo,
                    path,
                    revision=revision,
                    repo_type=repo_type,
                    local_dir=dest,
                    endpoint=self._endpoint,
                    token=self._token or False,
                ),
            )


def _stored_token() -> str | None:
    """``$HF_TOKEN``, else the login huggingface_hub stored; None when there is neither."""
    token = os.environ.get(ENV_TOKEN, "").strip()
    if token:
        return token
    try:
        from huggingface_hub import get_token

        stored = get_token()
    except Exception:  # a broken login file or an OIDC failure is "no token" here
        return None
    return stored.strip() if isinstance(stored, str) and stored.strip() else None


def _entry_missing(err: HubError) -> bool:
    cause = err.__cause__
    return type(cause).__name__ in ("EntryNotFoundError", "RemoteEntryNotFoundError")


def map_hub_error(exc: BaseException, what: str, secrets: Sequence[str] = ()) -> HubError:
    """Turn a foreign exception from a Hub call into a one-line :class:`HubError`.

    ``what`` names the operation ("upload of checkpoints/step_000000100 to me/run"). The
    client wraps a failed LFS upload in ``RuntimeError`` with the HTTP error as its cause:
    the cause is what gets mapped.
    """
    if isinstance(exc, HubError):
        return exc
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    cause = next((e for e in chain if _is_http_error(e)), None)
    if cause is None:
        cause = next((e for e in chain if _is_network_error(e)), chain[-1])
    response = getattr(cause, "response", None)
    status = getattr(response, "status_code", None) if response is not None else None
    if isinstance(status, int):
        server = getattr(cause, "server_message", None) or ""
        reason = _reason(status)
        detail = f": {_first_line(server)}" if server else ""
        retry_after = _retry_after(getattr(response, "headers", None))
        message = f"{what} failed: HTTP {status} {reason}{detail}"
        kind: type[HubError] = HubAuthError if status in (401, 403) else HubError
        if status in (401, 403):
            message += f" (check that {ENV_TOKEN} is a token with write access to this repo)"
        return kind(
            redact(message, secrets),
            status=status,
            transient=status in _TRANSIENT,
            retry_after=retry_after,
        )
    if isinstance(cause, OSError) and getattr(cause, "filename", None):
        detail = cause.strerror or type(cause).__name__
        return HubError(redact(f"{what} failed: {detail}: {cause.filename}", secrets), status=None)
    if _is_network_error(cause):
        text = _first_line(str(cause)) or type(cause).__name__
        return HubError(
            redact(f"{what} failed: network error: {text}", secrets), status=None, transient=True
        )
    text = _first_line(str(exc)) or type(exc).__name__
    return HubError(
        redact(f"{what} failed: {type(exc).__name__}: {text}", secrets),
        status=None,
        transient=False,
    )


def _is_http_error(exc: BaseException) -> bool:
    try:
        response = getattr(exc, "response", None)
    except Exception:  # httpx raises RuntimeError for some unset attributes
        return False
    return response is not None and isinstance(getattr(response, "status_code", None), int)


def _is_network_error(exc: BaseException) -> bool:
    module = type(exc).__module__.split(".")[0]
    if module.startswith(("httpx", "httpcore", "requests", "urllib3", "h11", "h2")):
        return True  # httpx (1.x), httpx2/httpcore2 (2.x), requests: transport errors
    return isinstance(exc, (ConnectionError, TimeoutError))


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None

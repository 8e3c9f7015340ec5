"""A loopback Hugging Face Hub that the real ``huggingface_hub`` client (1.x, 2.x) accepts as is.

``HubServer`` is a threaded HTTP server on 127.0.0.1 that speaks the Hub's wire protocol for what a
training job's checkpoint push needs: repos, the classic LFS upload flow, NDJSON commits, branches,
tags, tree listings and downloads (``/resolve``), with scriptable faults and a request log::

    with HubServer(tmp_path) as hub:
        api = HfApi(endpoint=hub.url, token=hub.token)  # with HF_HUB_DISABLE_XET=1, see below
        hub.faults.add(method="POST", path_regex=r"/commit/", status=503, times=1)
        ...
        assert not [r for r in hub.requests if r.method == "PUT"]

Xet is not emulated. The client must run with ``HF_HUB_DISABLE_XET=1``: with ``hf_xet`` installed
and Xet on, uploads go through the Xet write-token endpoint, which this server answers with 501 and
a message saying so. The client reads the variable once, at import, into
``huggingface_hub.constants.HF_HUB_DISABLE_XET`` and checks that constant at call time: an
in-process test patches the constant, a subprocess gets the variable from ``client_env()``.
With Xet off, ``upload_folder`` is a single ``create_commit`` in both 1.x and 2.x.

What the client retries (seen in this server's request log, 1.33 and 2.4): preupload, LFS batch,
LFS PUT (parts too) and verify go through its backoff (408/429/500/502/503/504 and dropped
connections; 5 retries, sleeping 1, 2, 4, 8, 8 s, or ``Retry-After`` + 1 s); the commit POST, tag,
branch and repo creation are sent once, so one 503 there fails the call.

Storage: LFS objects in ``storage_dir`` (content-addressed files, so multi-GB pushes do not sit in
memory) or in memory when it is ``None``. Repos, commits and regular (non-LFS) files are always in
memory. Nothing survives ``stop()`` except the LFS files on disk.

Paths the server answers (``{t}`` is ``models``/``datasets``/``spaces``, ``{p}`` the URL prefix:
empty for models, ``datasets/`` or ``spaces/``, ``{type}`` the singular repo type)::

    GET    /api/whoami-v2
    POST   /api/repos/create                      DELETE /api/repos/delete
    POST   /api/validate-yaml
    GET    /api/{t}/{repo}                        GET    /api/{t}/{repo}/revision/{rev}
    POST   /api/{t}/{repo}/preupload/{rev}        POST   /api/{t}/{repo}/commit/{rev}
    GET    /api/{t}/{repo}/tree/{rev}[/{path}]    POST   /api/{t}/{repo}/paths-info/{rev}
    GET    /api/{t}/{repo}/commits/{rev}          GET    /api/{t}/{repo}/refs
    POST   /api/{t}/{repo}/tag/{rev}              DELETE /api/{t}/{repo}/tag/{tag}
    POST   /api/{t}/{repo}/branch/{branch}        DELETE /api/{t}/{repo}/branch/{branch}
    POST   /{p}{repo}.git/info/lfs/objects/batch
    PUT    /lfs-storage/{type}/{repo}/{oid}       (pre-signed upload href: no token, like S3)
    PUT    /lfs-storage/{type}/{repo}/{oid}/part/{n}     (multipart parts)
    POST   /lfs-storage/{type}/{repo}/{oid}              (multipart completion)
    POST   /lfs-verify/{type}/{repo}
    GET    /{p}{repo}/resolve/{rev}/{path}        HEAD (same), with Range support

Faults match on the method and the URL path (no query), first added first.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import socket
import socketserver
import struct
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["DEFAULT_TOKEN", "Fault", "FaultPlan", "HubServer", "HubStats", "RequestRecord"]

DEFAULT_TOKEN = "hf_loopbackFakeTokenForTests0000000000"
"""The token a ``HubServer`` accepts unless told otherwise (shaped like a real ``hf_...`` token)."""

REGULAR_FILE_MAX_BYTES = 10 * 1024 * 1024
"""Files at least this big are sent through LFS (the Hub's 10 MB rule), whatever their name."""

_CHUNK = 1024 * 1024
_PLURAL_TO_TYPE = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}

_LFS_RULE = "filter=lfs diff=lfs merge=lfs -text"
_MODEL_LFS_PATTERNS = [
    *("*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib"),
    *("*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot"),
    *("*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors"),
    *("saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip"),
    *("*.zst", "*tfevents*"),
]
_DATASET_EXTRA_PATTERNS = [
    *("*.lz4", "*.mds", "*.mp3", "*.wav", "*.flac", "*.jpg", "*.jpeg", "*.png", "*.webp"),
    *("*.mp4", "*.webm"),
]


def _default_gitattributes(repo_type: str) -> bytes:
    """The ``.gitattributes`` the Hub writes in a new repo's initial commit (abridged)."""
    patterns = _MODEL_LFS_PATTERNS + (_DATASET_EXTRA_PATTERNS if repo_type == "dataset" else [])
    return "".join(f"{pattern} {_LFS_RULE}\n" for pattern in patterns).encode()


def _git_blob_oid(content: bytes) -> str:
    """Git's object id of a blob: what the Hub returns as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _truthy(values: list[str] | None) -> bool:
    """A query or form flag: ``true``/``True``/``1``."""
    if not values:
        return False
    return values[-1].lower() in ("1", "true", "yes")


# ------------------------------------------------------------------------------------------------
# Public records: the request log, faults, stats
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it, appended once it is answered (or dropped)."""

    method: str
    path: str
    """URL path without the query string, still URL-quoted as sent."""
    status: int | None
    """HTTP status sent back; ``None`` when the connection was dropped (a ``reset`` fault, or the
    client went away)."""
    query: str = ""
    bytes_in: int = 0
    """Request body bytes read from the client."""
    fault: bool = False
    """Whether a scripted fault answered this request."""
    started: float = 0.0
    """``time.monotonic()`` when the request line was read."""


@dataclass
class Fault:
    """A scripted failure; see ``FaultPlan.add``. ``hits`` counts the requests it answered."""

    method: str | None
    path_regex: str
    status: int | None = None
    times: int | None = 1
    retry_after: float | None = None
    reset: bool = False
    reset_after_bytes: int | None = None
    delay_s: float = 0.0
    skip: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    message: str | None = None
    hits: int = 0
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.path_regex)

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times


class FaultPlan:
    """Thread-safe list of scripted faults, consulted before every request is routed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(
        self,
        *,
        method: str | None = None,
        path_regex: str = "",
        status: int | None = None,
        times: int | None = 1,
        retry_after: float | None = None,
        reset: bool = False,
        reset_after_bytes: int | None = None,
        delay_s: float = 0.0,
        skip: int = 0,
        headers: Mapping[str, str] | None = None,
        message: str | None = None,
    ) -> Fault:
        """Script a failure for the next matching requests; returns it (its ``hits`` counts uses).

        Args:
            method: HTTP method to match (``None``: any).
            path_regex: ``re.search``-ed against the URL path (no query), e.g. ``r"/commit/"``,
                ``r"^/lfs-storage/"`` (LFS content PUTs), ``r"/info/lfs/objects/batch$"``,
                ``r"/preupload/"``, ``r"/resolve/"``.
            status: answer with this status (body ``{"error": message}``) instead of handling it.
            times: how many matching requests it answers; ``None``: all of them.
            retry_after: sends ``Retry-After: <int(seconds)>`` with ``status`` (429, 503).
            reset: drop the connection (TCP RST) after reading ``reset_after_bytes`` of the body
                (default: half the ``Content-Length``; 0 for a chunked body), without answering.
            delay_s: sleep this long first. With neither ``status`` nor ``reset``, the request
                is then handled normally (a slow server).
            skip: let this many matching requests through untouched before the fault applies.
            headers: extra response headers sent with ``status``.
        """
        if status is None and not reset and delay_s <= 0:
            raise ValueError("a fault needs a status, reset=True or a delay_s")
        fault = Fault(
            method=method.upper() if method else None,
            path_regex=path_regex,
            status=status,
            times=times,
            retry_after=retry_after,
            reset=reset,
            reset_after_bytes=reset_after_bytes,
            delay_s=delay_s,
            skip=skip,
            headers=dict(headers or {}),
            message=message,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending(self) -> list[Fault]:
        """Faults that still have uses left."""
        with self._lock:
            return [f for f in self._faults if not f.exhausted]

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.exhausted:
                    continue
                if fault.method not in (None, method) or not fault._pattern.search(path):
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.hits += 1
                return fault
        return None


@dataclass(frozen=True)
class HubStats:
    """Counters for benches (a snapshot)."""

    lfs_bytes_received: int
    """Body bytes read on LFS content PUTs (parts included), partial and rejected ones too."""
    lfs_objects_stored: int
    """LFS objects that completed (sha256 and size checked) since the server started."""
    commits: int
    """Commits created through the commit endpoint (initial repo commits not counted)."""
    requests: int


# ------------------------------------------------------------------------------------------------
# Repository model
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _File:
    size: int
    blob_oid: str
    """Git blob id: of the content (regular file) or of the LFS pointer (LFS file)."""
    sha256: str | None = None
    """LFS object id; ``None`` for a regular file."""
    content: bytes | None = None
    """The bytes of a regular file; LFS content lives in the LFS store."""

    @classmethod
    def regular(cls, content: bytes) -> _File:
        return cls(size=len(content), blob_oid=_git_blob_oid(content), content=content)

    @classmethod
    def lfs(cls, sha256: str, size: int) -> _File:
        return cls(size=size, blob_oid=_git_blob_oid(_lfs_pointer(sha256, size)), sha256=sha256)

    @property
    def pointer_size(self) -> int:
        return len(_lfs_pointer(self.sha256 or "", self.size))


@dataclass(frozen=True)
class _Commit:
    oid: str
    parent: str | None
    files: Mapping[str, _File]
    title: str
    message: str
    date: str
    author: str


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)
    """LFS objects uploaded to this repo (the Hub scopes LFS storage per repo)."""

    def resolve(self, revision: str) -> _Commit | None:
        """A branch, a tag, a full commit oid, or ``refs/heads/X``/``refs/tags/X``."""
        if revision.startswith("refs/heads/"):
            oid = self.branches.get(revision[len("refs/heads/") :])
        elif revision.startswith("refs/tags/"):
            oid = self.tags.get(revision[len("refs/tags/") :])
        else:
            oid = self.branches.get(revision) or self.tags.get(revision)
            if oid is None and revision in self.commits:
                oid = revision
        return self.commits.get(oid) if oid else None

    def history(self, head: _Commit) -> Iterator[_Commit]:
        commit: _Commit | None = head
        while commit is not None:
            yield commit
            commit = self.commits.get(commit.parent) if commit.parent else None


def _commit_oid(
    repo: _Repo, parent: str | None, files: Mapping[str, _File], title: str, msg: str
) -> str:
    """Deterministic 40-hex id: the same repo, parent, tree and message give the same oid (as git
    would at a fixed author time)."""
    tree = sorted((path, f.blob_oid) for path, f in files.items())
    material = json.dumps([repo.repo_type, repo.repo_id, parent, tree, title, msg])
    return hashlib.sha1(material.encode()).hexdigest()


def _parents(path: str) -> Iterator[str]:
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        yield "/".join(parts[:i])


def _gitattributes_lfs_patterns(content: bytes | None) -> list[str]:
    patterns = []
    for line in (content or b"").decode(errors="replace").splitlines():
        fields = line.split()
        if len(fields) >= 2 and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def _matches_attributes(path: str, patterns: list[str]) -> bool:
    """``.gitattributes`` matching: a pattern without a slash matches the file name."""
    name = path.rsplit("/", 1)[-1]
    for pattern in patterns:
        anchored = pattern.lstrip("/")
        if fnmatch.fnmatchcase(path if "/" in anchored else name, anchored):
            return True
    return False


def _matches_gitignore(path: str, patterns: list[str]) -> bool:
    """``.gitignore`` matching, simplified: a pattern without a slash matches any path component."""
    parts = path.split("/")
    for pattern in patterns:
        if pattern.startswith("!"):
            continue
        anchored = pattern.strip("/")
        if "/" in anchored:
            if fnmatch.fnmatchcase(path, anchored) or path.startswith(anchored + "/"):
                return True
        elif any(fnmatch.fnmatchcase(part, anchored) for part in parts):
            return True
    return False


# ------------------------------------------------------------------------------------------------
# LFS object store
# ------------------------------------------------------------------------------------------------


class _Upload:
    """An LFS body being received, kept in memory or in a spool file, hashed as it arrives."""

    def __init__(self, spool_dir: Path | None, *, hashed: bool = True) -> None:
        self._sha = hashlib.sha256() if hashed else None
        self.size = 0
        self.etag = uuid.uuid4().hex
        """What S3 would send as the ETag (an md5 there: the client only echoes it back)."""
        self.path: Path | None = None
        self.data: bytes | None = None
        """The bytes once ``finish()``-ed, in memory mode."""
        self._file: BinaryIO
        if spool_dir is None:
            self._file = io.BytesIO()
        else:
            fd, name = tempfile.mkstemp(dir=spool_dir, suffix=".part")
            self.path = Path(name)
            self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        if self._sha is not None:
            self._sha.update(chunk)
        self.size += len(chunk)
        self._file.write(chunk)

    @property
    def sha256(self) -> str:
        assert self._sha is not None, "a part upload is not hashed"
        return self._sha.hexdigest()

    def finish(self) -> None:
        if self._file.closed:
            return
        if isinstance(self._file, io.BytesIO):
            self.data = self._file.getvalue()
        self._file.close()

    def chunks(self) -> Iterator[bytes]:
        """The received bytes, after ``finish()``."""
        if self.path is None:
            yield self.data or b""
            return
        with open(self.path, "rb") as file:
            while chunk := file.read(_CHUNK):
                yield chunk

    def discard(self) -> None:
        self._file.close()
        self.data = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class _LfsStore:
    """Content-addressed LFS objects, in memory or on disk.

    On disk an object is ``objects/ab/abcd...`` or, when it came in a multipart upload, its parts
    ``objects/ab/abcd....parts/00001...`` read back to back (no copy of a multi-GB object).
    """

    def __init__(self, root: Path | None) -> None:
        self._root = root
        self._memory: dict[str, bytes] = {}
        self._segments: dict[str, list[tuple[Path, int]]] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        if root is not None:
            (root / "objects").mkdir(parents=True, exist_ok=True)
            (root / "spool").mkdir(parents=True, exist_ok=True)

    @property
    def spool_dir(self) -> Path | None:
        return None if self._root is None else self._root / "spool"

    def size(self, oid: str) -> int | None:
        with self._lock:
            return self._sizes.get(oid)

    def adopt(self, oid: str, uploads: list[_Upload]) -> None:
        """Make finished, checked uploads (one, or the parts in order) the object ``oid``."""
        for upload in uploads:
            upload.finish()
        if self.size(oid) is not None:  # same content, same object: keep the one we have
            for upload in uploads:
                upload.discard()
            return
        total = sum(u.size for u in uploads)
        if self._root is None:
            data = b"".join(u.data or b"" for u in uploads)
            with self._lock:
                self._memory[oid] = data
                self._sizes[oid] = total
            return
        base = self._root / "objects" / oid[:2] / oid
        base.parent.mkdir(parents=True, exist_ok=True)
        segments: list[tuple[Path, int]] = []
        if len(uploads) == 1:
            assert uploads[0].path is not None
            os.replace(uploads[0].path, base)
            segments.append((base, uploads[0].size))
        else:
            folder = base.with_name(oid + ".parts")
            folder.mkdir(exist_ok=True)
            for number, upload in enumerate(uploads, start=1):
                assert upload.path is not None
                target = folder / f"{number:05d}"
                os.replace(upload.path, target)
                segments.append((target, upload.size))
        with self._lock:
            self._segments[oid] = segments
            self._sizes[oid] = total

    def read(self, oid: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start..end`` (inclusive) of an object, in chunks."""
        with self._lock:
            data = self._memory.get(oid)
            segments = self._segments.get(oid, [])
        if data is not None:
            for offset in range(start, end + 1, _CHUNK):
                yield data[offset : min(offset + _CHUNK, end + 1)]
            return
        offset = 0
        for path, size in segments:
            first, last = max(start, offset), min(end, offset + size - 1)
            if first <= last:
                with open(path, "rb") as file:
                    file.seek(first - offset)
                    remaining = last - first + 1
                    while remaining > 0:
                        chunk = file.read(min(_CHUNK, remaining))
                        if not chunk:
                            raise OSError(f"LFS object {oid}: {path} is shorter than recorded")
                        remaining -= len(chunk)
                        yield chunk
            offset += size


# ------------------------------------------------------------------------------------------------
# HTTP plumbing
# ------------------------------------------------------------------------------------------------


class _HttpError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        """More fields for the JSON error body."""


class _Dropped(Exception):
    """The connection was dropped on purpose (a reset fault)."""


class _Exchange:
    """One request/response on a handler: body reading (length or chunked), answering, dropping."""

    def __init__(self, handler: _Handler, log: Callable[[RequestRecord], None]) -> None:
        self.handler = handler
        self._log = log
        self._logged = False
        self.fault = False
        split = urlsplit(handler.path)
        self.method = handler.command
        self.path = split.path
        self.query_string = split.query
        self.query = parse_qs(split.query, keep_blank_values=True)
        self.started = time.monotonic()
        self.bytes_in = 0
        self.status: int | None = None
        self._body_done = False
        self._length: int | None = None
        length = handler.headers.get("Content-Length")
        self._chunked = "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower()
        if not self._chunked:
            self._length = int(length) if length else 0
            self._body_done = self._length == 0

    def log(self) -> None:
        """Append this exchange to the request log, once. Called before the answer (or the drop)
        goes out, so a client never sees an answer the log does not have yet."""
        if self._logged:
            return
        self._logged = True
        self._log(
            RequestRecord(
                method=self.method,
                path=self.path,
                status=self.status,
                query=self.query_string,
                bytes_in=self.bytes_in,
                fault=self.fault,
                started=self.started,
            )
        )

    @property
    def content_length(self) -> int | None:
        return self._length

    def header(self, name: str) -> str | None:
        return self.handler.headers.get(name)

    def iter_body(self, limit: int | None = None) -> Iterator[bytes]:
        """Yield the request body; stop after ``limit`` bytes if given (body then left unread)."""
        rfile = self.handler.rfile
        budget = limit

        def take(n: int) -> int:
            return n if budget is None else min(n, budget)

        if self._body_done:
            return
        if not self._chunked:
            remaining = (self._length or 0) - self.bytes_in
            while remaining > 0 and (budget is None or budget > 0):
                chunk = rfile.read(take(min(_CHUNK, remaining)))
                if not chunk:
                    raise ConnectionError("client closed the connection mid-body")
                remaining -= len(chunk)
                self.bytes_in += len(chunk)
                if budget is not None:
                    budget -= len(chunk)
                yield chunk
            self._body_done = remaining == 0
            return
        while budget is None or budget > 0:
            size_line = rfile.readline(1024)
            if not size_line:
                raise ConnectionError("client closed the connection mid-body")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                self._body_done = True
                return
            left = size
            while left > 0:
                chunk = rfile.read(min(_CHUNK, left))
                if not chunk:
                    raise ConnectionError("client closed the connection mid-body")
                left -= len(chunk)
                self.bytes_in += len(chunk)
                if budget is not None:
                    budget -= len(chunk)
                yield chunk
            rfile.readline(16)

    def body(self) -> bytes:
        return b"".join(self.iter_body())

    def json(self) -> Any:
        raw = self.body()
        try:
            return json.loads(raw or b"{}")
        except ValueError as exc:
            raise _HttpError(400, f"Invalid JSON body: {exc}") from exc

    def drain(self) -> None:
        for _ in self.iter_body():
            pass

    def send(
        self,
        status: int,
        body: bytes | Iterator[bytes] = b"",
        headers: Mapping[str, str] | None = None,
        *,
        length: int | None = None,
    ) -> None:
        """Answer; the request body is drained first so the client can read the answer."""
        self.drain()
        self.status = status
        self.log()
        handler = self.handler
        handler.send_response(status)
        merged = {"X-Request-Id": str(uuid.uuid4()), "Content-Type": "application/json"}
        merged.update(headers or {})
        if isinstance(body, bytes):
            length = len(body)
        for name, value in merged.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(length or 0))
        handler.end_headers()
        if self.method == "HEAD":
            return
        if isinstance(body, bytes):
            handler.wfile.write(body)
        else:
            for chunk in body:
                handler.wfile.write(chunk)

    def send_json(
        self, status: int, payload: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send(status, json.dumps(payload).encode(), headers)

    def send_error_json(self, error: _HttpError) -> None:
        headers = {"X-Error-Message": error.message, **error.headers}
        if error.code:
            headers["X-Error-Code"] = error.code
        self.send_json(error.status, {"error": error.message, **error.extra}, headers)

    def abort(self) -> None:
        """Drop the connection with a TCP RST, leaving the rest of the body unread."""
        sock = self.handler.connection
        self.handler.close_connection = True
        self.status = None
        self.log()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # makefile() keeps the descriptor open: close the reader so close() really closes.
            self.handler.rfile.close()
            sock.close()
        except OSError:
            pass
        raise _Dropped


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LoopbackHub/1"
    # Without this, Nagle's algorithm and the client's delayed ACK add ~40 ms to
    # every request (a push took 1.4 s instead of 0.16 s).
    disable_nagle_algorithm = True
    timeout = 300  # an idle keep-alive connection is closed after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.hub._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.hub._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is HubServer.requests

    def _dispatch(self) -> None:
        self.server.hub._handle(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections would block server_close() otherwise
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: HubServer) -> None:
        self.hub = hub
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn): not needed, and it can be slow.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that went away is not an error of the server
        super().handle_error(request, client_address)


# ------------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------------


class HubServer:
    """A loopback Hugging Face Hub. Use as a context manager, or ``start()``/``stop()``.

    Args:
        storage_dir: where LFS objects are written (content-addressed files); ``None`` keeps them in
            memory. Use a directory for anything big (benches).
        token: the only token accepted. Writes need it (401 otherwise, as on the Hub); reads of
            public repos work without a token, a wrong token is always a 401.
        user: the account the token belongs to (namespace for ``create_repo("name")``).
        lfs_verify: whether LFS batch answers include the ``verify`` action (the Hub's do).
        multipart_threshold: LFS objects at least this big get a multipart upload (``chunk_size``
            header and one pre-signed URL per part, then a completion POST), as the Hub does for
            large files. ``None``: always a single PUT.
        multipart_chunk_size: part size for multipart uploads.
        host: the address to bind (loopback).

    Attributes:
        url: ``http://127.0.0.1:PORT`` once started.
        token: see above.
        faults: the ``FaultPlan`` consulted before each request.
    """

    def __init__(
        self,
        storage_dir: str | Path | None = None,
        *,
        token: str = DEFAULT_TOKEN,
        user: str = "runner-test",
        lfs_verify: bool = True,
        multipart_threshold: int | None = None,
        multipart_chunk_size: int = 16 * 1024 * 1024,
        host: str = "127.0.0.1",
    ) -> None:
        self.token = token
        self.user = user
        self.lfs_verify = lfs_verify
        self.multipart_threshold = multipart_threshold
        self.multipart_chunk_size = multipart_chunk_size
        self.faults = FaultPlan()
        self._host = host
        self._store = _LfsStore(Path(storage_dir) / "lfs" if storage_dir is not None else None)
        self._secret = secrets.token_bytes(16)
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._parts: dict[tuple[str, str, str, int], _Upload] = {}
        self._log: list[RequestRecord] = []
        self._lfs_bytes = 0
        self._lfs_objects = 0
        self._commits = 0
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> HubServer:
        if self._server is not None:
            return self
        self._server = _Server((self._host, 0), self)
        port = self._server.server_address[1]
        self.url = f"http://{self._host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"hub-server-{port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # wake handler threads parked on idle keep-alive connections
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            parts = list(self._parts.values())
            self._parts.clear()
        for upload in parts:
            upload.discard()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # -- what tests and benches read -------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """The request log so far (a copy), oldest first."""
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    @property
    def lfs_bytes_received(self) -> int:
        """Body bytes read on LFS content PUTs so far, partial attempts included."""
        with self._lock:
            return self._lfs_bytes

    @property
    def stats(self) -> HubStats:
        with self._lock:
            return HubStats(
                lfs_bytes_received=self._lfs_bytes,
                lfs_objects_stored=self._lfs_objects,
                commits=self._commits,
                requests=len(self._log),
            )

    def client_env(self, hf_home: str | Path | None = None) -> dict[str, str]:
        """Environment for a client subprocess: endpoint, token, Xet off, no telemetry."""
        env = {
            "HF_ENDPOINT": self.url,
            "HF_TOKEN": self.token,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        if hf_home is not None:
            env["HF_HOME"] = str(hf_home)
        return env

    def resolve(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str | None:
        """The commit oid a revision points to, or ``None`` (repo or revision unknown)."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            commit = repo.resolve(revision) if repo else None
            return commit.oid if commit else None

    def list_files(
        self, repo_id: str, revision: str = "main", repo_type: str = "model"
    ) -> dict[str, int]:
        """``{path: size}`` at a revision. Raises ``KeyError`` for an unknown repo or revision."""
        return {
            path: f.size for path, f in self._commit_at(repo_id, revision, repo_type).files.items()
        }

    def read_file(
        self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model"
    ) -> bytes:
        """A file's bytes at a revision. Raises ``KeyError`` if absent."""
        entry = self._commit_at(repo_id, revision, repo_type).files[path]
        if entry.content is not None:
            return entry.content
        assert entry.sha256 is not None
        return b"".join(self._store.read(entry.sha256, 0, entry.size - 1)) if entry.size else b""

    def _commit_at(self, repo_id: str, revision: str, repo_type: str) -> _Commit:
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(revision)
            return commit

    # -- request handling ------------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        ex = _Exchange(handler, self._append_record)
        fault = self.faults._take(ex.method, ex.path)
        ex.fault = fault is not None
        try:
            if fault is not None:
                self._apply_fault(ex, fault)
            else:
                self._route(ex)
        except _Dropped:
            ex.status = None
        except _HttpError as error:
            ex.send_error_json(error)
        except (ConnectionError, TimeoutError):
            handler.close_connection = True
        except Exception as exc:  # a bug in the emulator: answer 500 with the traceback, loudly
            detail = "".join(traceback.format_exception(exc))
            handler.close_connection = True
            if ex.status is not None:  # the answer had started: all we can do is cut it short
                traceback.print_exception(exc)
                return
            with contextlib.suppress(OSError):
                ex.send_json(500, {"error": f"hub emulator bug: {exc!r}", "traceback": detail})
        finally:
            ex.log()

    def _append_record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)

    def _apply_fault(self, ex: _Exchange, fault: Fault) -> None:
        if fault.delay_s > 0:
            time.sleep(fault.delay_s)
        is_lfs_put = ex.path.startswith("/lfs-storage/") and ex.method == "PUT"
        if fault.reset:
            limit = fault.reset_after_bytes
            if limit is None:
                limit = (ex.content_length or 0) // 2
            for chunk in ex.iter_body(limit=limit):
                if is_lfs_put:
                    with self._lock:
                        self._lfs_bytes += len(chunk)
            ex.abort()
        if fault.status is None:
            self._route(ex)  # only a delay
            return
        for chunk in ex.iter_body():
            if is_lfs_put:
                with self._lock:
                    self._lfs_bytes += len(chunk)
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["Retry-After"] = str(int(fault.retry_after))
        message = fault.message or f"injected fault: HTTP {fault.status}"
        ex.send_json(fault.status, {"error": message}, {"X-Error-Message": message, **headers})

    def _route(self, ex: _Exchange) -> None:
        parts = ex.path.split("/")[1:]
        method = ex.method
        if parts[:1] == ["api"]:
            self._route_api(ex, parts[1:])
            return
        if parts[:1] == ["lfs-storage"] and len(parts) >= 5:
            repo_type, repo_id, oid = parts[1], f"{parts[2]}/{parts[3]}", parts[4]
            self._lfs_storage(ex, repo_type, repo_id, oid, parts[5:])
            return
        if parts[:1] == ["lfs-verify"] and len(parts) == 4 and method == "POST":
            self._lfs_verify(ex, parts[1], f"{parts[2]}/{parts[3]}")
            return
        repo_type, rest = "model", parts
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type, rest = _PLURAL_TO_TYPE[parts[0]], parts[1:]
        if (
            method == "POST"
            and len(rest) == 6
            and rest[1].endswith(".git")
            and rest[2:] == ["info", "lfs", "objects", "batch"]
        ):
            self._lfs_batch(ex, repo_type, f"{rest[0]}/{rest[1][: -len('.git')]}")
            return
        if method in ("GET", "HEAD") and len(rest) >= 5 and rest[2] == "resolve":
            path = unquote("/".join(rest[4:]))
            self._resolve_file(ex, repo_type, f"{rest[0]}/{rest[1]}", unquote(rest[3]), path)
            return
        raise _HttpError(404, f"Not found: {method} {ex.path} (not emulated)")

    def _route_api(self, ex: _Exchange, parts: list[str]) -> None:
        method = ex.method
        if parts == ["whoami-v2"] and method == "GET":
            self._whoami(ex)
        elif parts == ["repos", "create"] and method == "POST":
            self._create_repo(ex)
        elif parts == ["repos", "delete"] and method == "DELETE":
            self._delete_repo(ex)
        elif parts == ["validate-yaml"] and method == "POST":
            ex.send_json(200, {"errors": [], "warnings": []})
        elif len(parts) >= 3 and parts[0] in _PLURAL_TO_TYPE:
            repo_type, repo_id, rest = (
                _PLURAL_TO_TYPE[parts[0]],
                f"{parts[1]}/{parts[2]}",
                parts[3:],
            )
            self._route_repo(ex, repo_type, repo_id, [unquote(p) for p in rest])
        else:
            raise _HttpError(404, f"Not found: {method} {ex.path} (not emulated)")

    def _route_repo(self, ex: _Exchange, repo_type: str, repo_id: str, rest: list[str]) -> None:
        method, action = ex.method, rest[0] if rest else ""
        if not rest and method == "GET":
            self._repo_info(ex, repo_type, repo_id, "main")
        elif action == "revision" and len(rest) == 2 and method == "GET":
            self._repo_info(ex, repo_type, repo_id, rest[1])
        elif action == "preupload" and len(rest) == 2 and method == "POST":
            self._preupload(ex, repo_type, repo_id, rest[1])
        elif action == "commit" and len(rest) == 2 and method == "POST":
            self._create_commit(ex, repo_type, repo_id, rest[1])
        elif action == "tree" and len(rest) in (2, 3) and method == "GET":
            self._tree(ex, repo_type, repo_id, rest[1], rest[2] if len(rest) == 3 else "")
        elif action == "paths-info" and len(rest) == 2 and method == "POST":
            self._paths_info(ex, repo_type, repo_id, rest[1])
        elif action == "commits" and len(rest) == 2 and method == "GET":
            self._list_commits(ex, repo_type, repo_id, rest[1])
        elif action == "refs" and len(rest) == 1 and method == "GET":
            self._refs(ex, repo_type, repo_id)
        elif action == "tag" and len(rest) == 2 and method in ("POST", "DELETE"):
            if method == "POST":
                self._create_tag(ex, repo_type, repo_id, rest[1])
            else:
                self._delete_ref(ex, repo_type, repo_id, rest[1], "tags")
        elif action == "branch" and len(rest) == 2 and method in ("POST", "DELETE"):
            if method == "POST":
                self._create_branch(ex, repo_type, repo_id, rest[1])
            else:
                self._delete_ref(ex, repo_type, repo_id, rest[1], "branches")
        elif action.startswith("xet-"):
            raise _HttpError(
                501,
                "Xet is not emulated by the loopback Hub: run the client with HF_HUB_DISABLE_XET=1",
            )
        else:
            raise _HttpError(404, f"Not found: {method} {ex.path} (not emulated)")

    # -- auth and lookups ------------------------------------------------------------------------

    def _authenticated(self, ex: _Exchange) -> bool:
        """True with the right token, False with none; a wrong token is a 401 (as on the Hub)."""
        value = ex.header("Authorization")
        if not value:
            return False
        given = value.split(" ", 1)[1].strip() if " " in value else value.strip()
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise _HttpError(401, "Invalid credentials in Authorization header")
        return True

    def _require_auth(self, ex: _Exchange) -> None:
        if not self._authenticated(ex):
            raise _HttpError(401, "Unauthorized: this endpoint needs a token with write access")

    def _get_repo(self, ex: _Exchange, repo_type: str, repo_id: str, *, write: bool) -> _Repo:
        authed = self._authenticated(ex)
        if write and not authed:
            raise _HttpError(401, "Unauthorized: a token with write access is required")
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _HttpError(404, "Repository not found", "RepoNotFound")
        if repo.private and not authed:
            raise _HttpError(401, "Repository not found", "RepoNotFound")
        return repo

    def _get_commit(self, repo: _Repo, revision: str) -> _Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    # -- account and repos -----------------------------------------------------------------------

    def _whoami(self, ex: _Exchange) -> None:
        if not self._authenticated(ex):
            raise _HttpError(401, "Invalid credentials in Authorization header")
        ex.send_json(
            200,
            {
                "type": "user",
                "id": hashlib.sha1(self.user.encode()).hexdigest()[:24],
                "name": self.user,
                "fullname": self.user,
                "email": f"{self.user}@example.invalid",
                "emailVerified": True,
                "isPro": False,
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "loopback", "role": "write"},
                },
            },
        )

    def _create_repo(self, ex: _Exchange) -> None:
        self._require_auth(ex)
        payload = ex.json()
        repo_type = payload.get("type") or "model"
        name = payload.get("name") or ""
        if repo_type not in _URL_PREFIX or not name or "/" in name:
            raise _HttpError(400, f"Invalid repo name or type: {name!r} ({repo_type!r})")
        repo_id = f"{payload.get('organization') or self.user}/{name}"
        visibility = payload.get("visibility")
        private = (
            visibility == "private" if visibility is not None else bool(payload.get("private"))
        )
        with self._lock:
            existing = self._repos.get((repo_type, repo_id))
            if existing is not None:
                # The client's exist_ok=True reads the url from this answer.
                url = self._repo_url(existing)
                raise _HttpError(
                    409, f"You already created this {repo_type} repo", extra={"url": url}
                )
            repo = _Repo(
                repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now_iso()
            )
            files = {".gitattributes": _File.regular(_default_gitattributes(repo_type))}
            oid = _commit_oid(repo, None, files, "initial commit", "")
            repo.commits[oid] = _Commit(
                oid, None, files, "initial commit", "", _now_iso(), "system"
            )
            repo.branches["main"] = oid
            self._repos[(repo_type, repo_id)] = repo
            url = self._repo_url(repo)
        ex.send_json(
            200, {"url": url, "name": repo_id, "id": hashlib.sha1(url.encode()).hexdigest()[:24]}
        )

    def _delete_repo(self, ex: _Exchange) -> None:
        self._require_auth(ex)
        payload = ex.json()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user}/{payload.get('name')}"
        with self._lock:
            if self._repos.pop((repo_type, repo_id), None) is None:
                raise _HttpError(404, "Repository not found", "RepoNotFound")
        ex.send_json(200, {})

    def _repo_info(self, ex: _Exchange, repo_type: str, repo_id: str, revision: str) -> None:
        with self._lock:
            repo = self._get_repo(ex, repo_type, repo_id, write=False)
            commit = self._get_commit(repo, revision)
            blobs = _truthy(ex.query.get("blobs"))
            siblings: list[dict[str, Any]] = []
            for path in sorted(commit.files):
                entry = commit.files[path]
                sibling: dict[str, Any] = {"rfilename": path}
                if blobs:
                    sibling.update(size=entry.size, blobId=entry.blob_oid)
                    if entry.sha256 is not None:
                        sibling["lfs"] = {
                            "sha256": entry.sha256,
                            "size": entry.size,
                            "pointerSize": entry.pointer_size,
                        }
                siblings.append(sibling)
            info: dict[str, Any] = {
                "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(f.size for f in commit.files.values()),
            }
            if repo_type == "model":
                info["modelId"] = repo.repo_id
        ex.send_json(200, info)

    # -- refs ------------------------------------------------------------------------------------

    def _refs(self, ex: _Exchange, repo_type: str, repo_id: str) -> None:
        with self._lock:
            repo = self._get_repo(ex, repo_type, repo_id, write=False)
            payload: dict[str, Any] = {
                "branches": [
                    {"name": n, "ref": f"refs/heads/{n}", "targetCommit": oid}
                    for n, oid in sorted(repo.branches.items())
                ],
                "tags": [
                    {"name": n, "ref": f"refs/tags/{n}", "targetCommit": oid}
                    for n, oid in sorted(repo.tags.items())
                ],
                "converts": [],
            }
        if _truthy(ex.query.get("include_prs")):
            payload["pullRequests"] = []
        ex.send_json(200, payload)

    def _create_tag(self, ex: _Exchange, repo_type: str, repo_id: str, revision: str) -> None:
        payload = ex.json()
        tag = payload.get("tag")
        if not isinstance(tag, str) or not tag:
            raise _HttpError(400, "Missing tag name")
        with self._lock:
            repo = self._get_repo(ex, repo_type, repo_id, write=True)
            commit = self._get_commit(repo, revision)
            if tag in repo.tags:
                # The Hub refuses to move a tag; the client's exist_ok=True swallows this 409.
                raise _HttpError(409, f"Tag {tag} already exists")
            repo.tags[tag] = commit.oid
        ex.send_json(200, {"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": commit.oid})

    def _create_branch(self, ex: _Exchange, repo_type: str, repo_id: str, branch: str) -> None:
        payload = ex.json()
        with self._lock:
            repo = self._get_repo(ex, repo_type, repo_id, write=True)
            commit = self._get_commit(repo, payload.get("startingPoint") or "main")
            if branch in repo.branches:
                raise _HttpError(409, f"Branch {branch} already exists")
            if branch.startswith("refs/") or not branch:
                raise _HttpError(400, f"Invalid branch name: {branch}")
            repo.branches[branch] = commit.oid
        ex.send_json(200, {})

    def _delete_ref(
        self, ex: _Exchange, repo_type: str, repo_id: str, name: str, kind: str
    ) -> None:
        with self._lock:
            repo = self._get_repo(ex, repo_type, repo_id, write=True)
            refs = repo.tags if kind == "tags" else repo.branches
            if name not in refs:
                raise _HttpError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            if kind == "branches" and name == "main":
                raise _HttpError(403, "Cannot delete the default branch")
            del refs[name]
        ex.send_json(200, {})

    def _list_commits(self, ex: _Exchange, repo_type: str, repo_id: str, revision: str) -> None:
        with self._lock:
            repo = self._get_repo(ex, repo_type, repo_id, write=False)
            head = self._get_commit(repo, revision)
            items = [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.message,
                    "authors": [{"user": c.author}],
                    "date": c.date,
                }
                for c in repo.history(head)
            ]
        ex.send_json(200, items)

    # -- tree ------------------------------------------------------------------------------------

    def _last_commit(self, repo: _Repo, head: _Commit, path: str) -> dict[str, str]:
        def signature(commit: _Commit) -> tuple[tuple[str, str], ...]:
            prefix = path + "/"
            return tuple(
                sorted(
                    (p, f.blob_oid)
                    for p, f in commit.files.items()
                    if p == path or p.startswith(prefix)
                )
            )

        found = head
        mine = signature(head)
        for commit in repo.history(head):
            if signature(commit) != mine:
                break
            found = commit
        return {"id": found.oid, "title": found.title, "date": found.date}

    def _entry(
        self, repo: _Repo, commit: _Commit, path: str, dirs: set[str], expand: bool
    ) -> dict[str, Any] | None:
        entry = commit.files.get(path)
        result: dict[str, Any]
        if entry is not None:
            result = {"type": "file", "oid": entry.blob_oid, "size": entry.size, "path": path}
            if entry.sha256 is not None:
                result["lfs"] = {
                    "oid": entry.sha256,
                    "size": entry.size,
                    "pointerSize": entry.pointer_size,
                }
        elif path in dirs:
            prefix = path + "/"
            children = sorted(
                (p, f.blob_oid) for p, f in commit.files.items() if p.startswith(prefix)
            )
            tree_oid = hashlib.sha1(json.dumps(children).encode()).hexdigest()
            result = {"type": "directory", "oid": tree_oid, "size": 0, "path": path}
        else:
            return None
        if expand:
            result["lastCommit"] = self._last_commit(repo, commit, path)
        return result

    def _tree(self, ex: _Exchange, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        recursive = _truthy(ex.query.get("recursive"))
        expand = _truthy(ex.query.get("expand"))
        path = path.strip("/")
        with self._lock:
            repo = self._get_repo(ex, repo_type, repo_id, write=False)
            commit = self._get_commit(repo, revision)
            dirs = {d for p in commit.files for d in _parents(p)}
            if path and path not in dirs:
                raise _HttpError(404, f"Entry not found: {path}", "EntryNotFound")
            prefix = path + "/" if path else ""
            candidates = sorted(
                {p for p in list(commit.files) + list(dirs) if p.startswith(prefix) and p != path}
            )
            if not recursive:
                candidates = [p for p in candidates if "/" not in p[len(prefix) :]]
            entries = [self._entry(repo, commit, p, dirs, expand) for p in candidates]
        ex.send_json(200, [e for e in entries if e is not None])

    def _paths_info(self, ex: _Exchange, repo_type: str, repo_id: str, revision: str) -> None:
        raw = ex.body().decode()
        if (ex.header("Content-Type") or "").startswith("application/json"):
            form = json.loads(raw or "{}")
            paths = form.get("paths") or []
            expand = bool(form.get("expand"))
        else:
            parsed = parse_qs(raw, keep_blank_values=True)
            paths = parsed.get("paths", [])
            expand = _truthy(parsed.get("expand"))
        with self._lock:
            repo = self._get_repo(ex, repo_type, repo_id, write=False)
            commit = self._get_commit(repo, revision)
            dirs = {d for p in commit.files for d in _parents(p)}
            entries = [self._entry(repo, commit, p.strip("/"), dirs, expand) for p in paths]
        ex.send_json(200, [e for e in entries if e is not None])

    # -- uploads ---------------------------------------------------------------------------------

    def _preupload(self, ex: _Exchange, repo_type: str, repo_id: str, revision: str) -> None:
        payload = ex.json()
        with self._lock:
            repo = self._get_repo(ex, repo_type, repo_id, write=True)
            if revision not in repo.branches and not _truthy(ex.query.get("create_pr")):
                raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = self._get_commit(repo, revision if revision in repo.branches else "main")
            attributes = head.files.get(".gitattributes")
            lfs_patterns = _gitattributes_lfs_patterns(attributes.content if attributes else None)
            gitignore = payload.get("gitIgnore")
            if gitignore is None and ".gitignore" in head.files:
                gitignore = (head.files[".gitignore"].content or b"").decode(errors="replace")
            ignore_patterns = [
                line.strip()
                for line in (gitignore or "").splitlines()
                if line.strip() and not line.startswith("#")
            ]
            answers = []
            for item in payload.get("files", []):
                path, size = item["path"], int(item.get("size", 0))
                sample = base64.b64decode(item.get("sample") or "")
                lfs = (
                    size >= REGULAR_FILE_MAX_BYTES
                    or _matches_attributes(path, lfs_patterns)
                    or b"\x00" in sample
                )
                answer: dict[str, Any] = {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": _matches_gitignore(path, ignore_patterns),
                }
                existing = head.files.get(path)
                if existing is not None:
                    answer["oid"] = existing.sha256 or existing.blob_oid
                answers.append(answer)
        ex.send_json(200, {"files": answers, "commitOid": head.oid})

    def _sign(self, repo_type: str, repo_id: str, oid: str, size: int) -> str:
        message = f"{repo_type}/{repo_id}/{oid}/{size}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def _lfs_batch(self, ex: _Exchange, repo_type: str, repo_id: str) -> None:
        payload = ex.json()
        if payload.get("operation") != "upload":
            raise _HttpError(400, "Only the LFS 'upload' operation is emulated")
        with self._lock:
            repo = self._get_repo(ex, repo_type, repo_id, write=True)
            known = {oid for oid in repo.lfs if self._store.size(oid) is not None}
        objects = []
        multipart_used = False
        for obj in payload.get("objects", []):
            oid, size = str(obj.get("oid", "")), int(obj.get("size", -1))
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or size < 0:
                objects.append(
                    {
                        "oid": oid,
                        "size": max(size, 0),
                        "error": {"code": 422, "message": "Invalid oid"},
                    }
                )
                continue
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in known:
                query = f"size={size}&sig={self._sign(repo_type, repo_id, oid, size)}"
                href = f"{self.url}/lfs-storage/{repo_type}/{repo_id}/{oid}?{query}"
                upload: dict[str, Any] = {"href": href, "expires_in": 86400}
                if self.multipart_threshold is not None and size >= self.multipart_threshold:
                    multipart_used = True
                    chunk = self.multipart_chunk_size
                    nparts = max(1, -(-size // chunk))
                    header: dict[str, str] = {"chunk_size": str(chunk)}
                    for n in range(1, nparts + 1):
                        base = f"{self.url}/lfs-storage/{repo_type}/{repo_id}/{oid}/part/{n}"
                        header[f"{n:05d}"] = f"{base}?{query}"
                    upload["header"] = header
                actions: dict[str, Any] = {"upload": upload}
                if self.lfs_verify:
                    actions["verify"] = {
                        "href": f"{self.url}/lfs-verify/{repo_type}/{repo_id}",
                        "header": {"Authorization": f"Bearer {self.token}"},
                    }
                answer["actions"] = actions
            objects.append(answer)
        ex.send_json(
            200,
            {"transfer": "multipart" if multipart_used else "basic", "objects": objects},
            {"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _receive(self, ex: _Exchange, *, hashed: bool = True) -> _Upload:
        upload = _Upload(self._store.spool_dir, hashed=hashed)
        try:
            for chunk in ex.iter_body():
                upload.write(chunk)
                with self._lock:
                    self._lfs_bytes += len(chunk)
        except BaseException:
            upload.discard()
            raise
        return upload

    def _lfs_storage(
        self, ex: _Exchange, repo_type: str, repo_id: str, oid: str, rest: list[str]
    ) -> None:
        size_values = ex.query.get("size") or ["-1"]
        size = int(size_values[-1])
        signature = (ex.query.get("sig") or [""])[-1]
        if not hmac.compare_digest(signature, self._sign(repo_type, repo_id, oid, size)):
            raise _HttpError(403, "SignatureDoesNotMatch: upload URL not issued by this server")
        key = (repo_type, repo_id)
        if ex.method == "PUT" and not rest:
            upload = self._receive(ex)
            if upload.size != size or upload.sha256 != oid:
                upload.discard()
                raise _HttpError(
                    400,
                    f"LFS object mismatch: got {upload.size} bytes with sha256 {upload.sha256},"
                    f" expected {size} bytes with sha256 {oid}",
                )
            self._store_object(key, oid, [upload])
            ex.send(200, b"", {"ETag": f'"{upload.etag}"'})
            return
        if ex.method == "PUT" and len(rest) == 2 and rest[0] == "part" and rest[1].isdigit():
            number = int(rest[1])
            upload = self._receive(ex, hashed=False)  # checked whole, on completion
            upload.finish()
            with self._lock:
                previous = self._parts.pop((repo_type, repo_id, oid, number), None)
                self._parts[(repo_type, repo_id, oid, number)] = upload
            if previous is not None:
                previous.discard()
            ex.send(200, b"", {"ETag": f'"{upload.etag}"'})
            return
        if ex.method == "POST" and not rest:
            self._complete_multipart(ex, repo_type, repo_id, oid, size)
            return
        raise _HttpError(405, f"{ex.method} not allowed on an LFS storage URL")

    def _complete_multipart(
        self, ex: _Exchange, repo_type: str, repo_id: str, oid: str, size: int
    ) -> None:
        payload = ex.json()
        listed = sorted(payload.get("parts", []), key=lambda p: int(p["partNumber"]))
        with self._lock:
            parts = []
            for part in listed:
                upload = self._parts.get((repo_type, repo_id, oid, int(part["partNumber"])))
                if upload is None or part.get("etag", "").strip('"') != upload.etag:
                    raise _HttpError(
                        400, f"InvalidPart: part {part['partNumber']} missing or changed"
                    )
                parts.append(upload)
        digest = hashlib.sha256()
        for upload in parts:
            for chunk in upload.chunks():
                digest.update(chunk)
        if sum(u.size for u in parts) != size or digest.hexdigest() != oid:
            raise _HttpError(400, f"LFS object mismatch after assembling {len(parts)} parts")
        with self._lock:
            for number in [k[3] for k in self._parts if k[:3] == (repo_type, repo_id, oid)]:
                upload = self._parts.pop((repo_type, repo_id, oid, number))
                if upload not in parts:
                    upload.discard()
        self._store_object((repo_type, repo_id), oid, parts)
        ex.send_json(200, {})

    def _store_object(self, key: tuple[str, str], oid: str, uploads: list[_Upload]) -> None:
        self._store.adopt(oid, uploads)
        with self._lock:
            self._lfs_objects += 1
            repo = self._repos.get(key)
            if repo is not None:
                repo.lfs.add(oid)

    def _lfs_verify(self, ex: _Exchange, repo_type: str, repo_id: str) -> None:
        payload = ex.json()
        with self._lock:
            repo = self._get_repo(ex, repo_type, repo_id, write=True)
            oid, size = payload.get("oid"), payload.get("size")
            if oid not in repo.lfs or self._store.size(oid) != size:
                raise _HttpError(404, f"LFS object {oid} ({size} bytes) not found")
        ex.send_json(200, {})

    def _create_commit(self, ex: _Exchange, repo_type: str, repo_id: str, revision: str) -> None:
        if _truthy(ex.query.get("create_pr")):
            ex.drain()
            raise _HttpError(400, "Pull requests (create_pr=1) are not emulated")
        raw = ex.body()
        with self._lock:
            repo = self._get_repo(ex, repo_type, repo_id, write=True)
        try:
            lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except ValueError as exc:
            raise _HttpError(400, f"Invalid NDJSON commit payload: {exc}") from exc
        if not lines or lines[0].get("key") != "header":
            raise _HttpError(400, "The commit payload must start with a header line")
        header = lines[0].get("value") or {}
        title = str(header.get("summary") or "")
        if not title:
            raise _HttpError(400, "Commit summary is required")
        description = str(header.get("description") or "")
        with self._lock:
            if revision not in repo.branches:
                raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.commits[repo.branches[revision]]
            parent_commit = header.get("parentCommit")
            if parent_commit and parent_commit != head.oid:
                raise _HttpError(
                    412,
                    "A commit has happened since. Please refresh and try again.",
                    "PreconditionFailed",
                )
            files = dict(head.files)
            for line in lines[1:]:
                self._apply_operation(repo, files, line.get("key"), line.get("value") or {})
            oid = _commit_oid(repo, head.oid, files, title, description)
            repo.commits[oid] = _Commit(
                oid, head.oid, files, title, description, _now_iso(), self.user
            )
            repo.branches[revision] = oid
            self._commits += 1
            url = f"{self._repo_url(repo)}/commit/{oid}"
        ex.send_json(
            200,
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": url,
                "hookOutput": "",
                "pullRequestUrl": None,
            },
        )

    def _apply_operation(
        self, repo: _Repo, files: dict[str, _File], key: Any, value: dict[str, Any]
    ) -> None:
        path = str(value.get("path") or "").strip("/")
        if not path or any(part in ("", ".", "..", ".git") for part in path.split("/")):
            raise _HttpError(400, f"Invalid path in commit: {value.get('path')!r}")
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise _HttpError(400, "Only base64 file content is emulated")
            files[path] = _File.regular(base64.b64decode(value.get("content") or ""))
        elif key == "lfsFile":
            oid = str(value.get("oid") or "")
            stored = self._store.size(oid)
            if oid not in repo.lfs or stored is None:
                raise _HttpError(
                    422,
                    f"Your push was rejected because an LFS pointer pointed to a file that does not"
                    f" exist: {path} (sha256 {oid})",
                )
            size = value.get("size")
            if size is not None and int(size) != stored:
                raise _HttpError(
                    422, f"LFS file {path}: size {size} does not match stored {stored}"
                )
            files[path] = _File.lfs(oid, stored)
        elif key == "deletedFile":
            if path not in files:
                raise _HttpError(
                    404, f"A file with this name doesn't exist: {path}", "EntryNotFound"
                )
            del files[path]
        elif key == "deletedFolder":
            prefix = path + "/"
            doomed = [p for p in files if p.startswith(prefix)]
            if not doomed:
                raise _HttpError(
                    404, f"A folder with this name doesn't exist: {path}", "EntryNotFound"
                )
            for p in doomed:
                del files[p]
        else:
            raise _HttpError(400, f"Unknown commit operation: {key!r}")

    # -- downloads -------------------------------------------------------------------------------

    def _resolve_file(
        self, ex: _Exchange, repo_type: str, repo_id: str, revision: str, path: str
    ) -> None:
        with self._lock:
            repo = self._get_repo(ex, repo_type, repo_id, write=False)
            commit = self._get_commit(repo, revision)
            entry = commit.files.get(path)
        if entry is None:
            raise _HttpError(
                404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid}
            )
        etag = f'"{entry.sha256 or entry.blob_oid}"'
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "X-Repo-Commit": commit.oid,
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}";',
        }
        if entry.sha256 is not None:
            headers["X-Linked-Etag"] = etag
            headers["X-Linked-Size"] = str(entry.size)
        start, end, status = 0, entry.size - 1, 200
        requested = ex.header("Range")
        if requested and ex.method == "GET":
            match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", requested)
            if match is None or match.group(1) == match.group(2) == "":
                raise _HttpError(
                    416,
                    f"Invalid range: {requested}",
                    headers={"Content-Range": f"bytes */{entry.size}"},
                )
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), entry.size - 1) if match.group(2) else entry.size - 1
            else:
                start = max(entry.size - int(match.group(2)), 0)
            if start >= entry.size or start > end:
                raise _HttpError(
                    416,
                    f"Range not satisfiable: {requested}",
                    headers={"Content-Range": f"bytes */{entry.size}"},
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        length = max(end - start + 1, 0)
        if ex.method == "HEAD" or length == 0:
            ex.send(status, iter(()), headers, length=length)
        elif entry.content is not None:
            ex.send(status, entry.content[start : end + 1], headers)
        else:
            assert entry.sha256 is not None
            ex.send(status, self._store.read(entry.sha256, start, end), headers, length=length)


def isolate_client(monkeypatch: Any, home: Path) -> Path:
    """Point huggingface_hub in this process at the emulator's needs: Xet off (the emulator
    speaks the classic LFS flow), its home, cache and token files under ``home``, no progress
    bars, no telemetry. ``monkeypatch`` is pytest's; everything is undone after the test.

    The client reads its environment once, at import; the constants it checks at call time are
    patched too, so this works whichever test imported it first.
    """
    from huggingface_hub import constants

    values = {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
        monkeypatch.setattr(constants, name, value)
    for name in ("HF_HUB_DISABLE_XET", "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, "1")
        monkeypatch.setattr(constants, name, True)
    return home

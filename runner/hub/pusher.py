"""Push checkpoints to the Hugging Face Hub beside training, and pull them back.

The :class:`Pusher` runs in the agent (never in the training process) as one background thread
that polls the checkpoint folder. For each complete checkpoint (see
:mod:`runner.hub.discovery`), newest first:

1. if the Hub already has every file at its size (and sha256 where known), nothing is sent;
   otherwise one ``upload_folder`` to ``checkpoints/step_NNNNNNNNN/``, the commit message
   naming the step and its metrics;
2. the files are checked on disk again (a checkpoint rewritten during its upload is not
   confirmed), then listed on the Hub at the new commit: every file at its size, or the push
   failed;
3. tags: ``step-N`` on that commit, and ``latest`` moved to it (delete + create: the Hub
   never moves a tag) unless an older step is being back-filled;
4. ``RUN_DIR/push-state.json`` records it (written atomically), a ``push`` event says how
   much, how fast;
5. rotation (:mod:`runner.hub.rotation`) deletes local checkpoints beyond the newest K, each
   only once the Hub lists it again right before the deletion.

A failure (any step, including the commit POST that huggingface_hub sends once) is a
``push_failed`` warning with the one-line reason and the time of the next try; tries back off
exponentially (``Retry-After`` honoured) and the schedule survives restarts of the agent (it is
in the state file). A re-run of ``upload_folder`` resumes: LFS objects already on the Hub are
not sent again.

Everything the Hub returns is redacted (:func:`runner.hub.client.redact`): the token never
appears in events, state, logs or messages. The thread lowers its own CPU priority (``nice``)
so that hashing and uploading yield to the training process.

The other direction: :func:`remote_checkpoints` (what is on the Hub, by step),
:func:`pull_checkpoint` / :func:`pull_latest` (fetch one into a harness-layout folder that
``runner.harness.latest_checkpoint`` finds complete) and :func:`retag` (move a tag).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import CheckpointError, RunnerError
from runner.harness import MANIFEST_FILE, MANIFEST_FORMAT, checkpoint_name, list_checkpoints
from runner.hub.client import HubApi, HubClient, HubError, RemoteFile, RepoType, redact
from runner.hub.discovery import LAYOUTS, Layout, LocalCheckpoint, Scan, Scanner
from runner.hub.rotation import Deleted, plan_rotation, rotate
from runner.rundir import PUSH_STATE_FILE, Event, EventLog, Severity

if TYPE_CHECKING:
    from huggingface_hub import HfApi

    from runner.spec import JobSpec

__all__ = [
    "REMOTE_ROOT",
    "STATE_FILE",
    "PollResult",
    "PushConfig",
    "PushResult",
    "Pusher",
    "RemoteCheckpoint",
    "RetagResult",
    "as_hub_api",
    "pull_checkpoint",
    "pull_latest",
    "push_checkpoint",
    "remote_checkpoints",
    "remote_path",
    "retag",
]

STATE_FILE = PUSH_STATE_FILE
STATE_FORMAT = 1
REMOTE_ROOT = "checkpoints"
LATEST_TAG = "latest"
_REMOTE_STEP = re.compile(r"^step_(\d{9,})$")
_COMMIT_OID = re.compile(r"^[0-9a-f]{40}$")
_REGULAR_MAX = 10 * 1024 * 1024  # the Hub's rule: smaller files may be regular (non-LFS)


def remote_path(step: int) -> str:
    """Where a step's files go in the repo: ``checkpoints/step_NNNNNNNNN``."""
    return f"{REMOTE_ROOT}/{checkpoint_name(step)}"


def step_tag(step: int) -> str:
    return f"step-{step}"


def as_hub_api(api: HubApi | HfApi) -> HubApi:
    """``api`` itself, or a :class:`HubClient` around a ``huggingface_hub.HfApi``."""
    hf = sys.modules.get("huggingface_hub")
    if hf is not None and isinstance(api, hf.HfApi):
        return HubClient(hf_api=api)
    return api  # type: ignore[return-value]


def _secrets(api: HubApi) -> tuple[str, ...]:
    value = getattr(api, "secrets", ())
    return tuple(value) if isinstance(value, (tuple, list)) else ()


# ------------------------------------------------------------------------------------------------
# One push
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushResult:
    """One checkpoint confirmed on the Hub."""

    step: int
    commit: str
    bytes: int
    seconds: float
    uploaded: bool
    """False when the Hub already had every file (nothing was sent, no commit made)."""
    files: Mapping[str, int]
    tags: tuple[str, ...] = ()

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def _git_blob_oid(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _matches(checkpoint: LocalCheckpoint, remote: Mapping[str, RemoteFile], prefix: str) -> bool:
    """Whether ``remote`` (listed under ``prefix``) holds this checkpoint's exact content:
    sizes, plus the LFS sha256 where the local one is known, plus the git blob id of small
    regular files. An LFS file whose sha256 is unknown locally cannot be proven equal."""
    for f in checkpoint.files:
        other = remote.get(f"{prefix}/{f.path}")
        if other is None or other.size != f.size:
            return False
        if other.sha256 is not None:
            if f.sha256 is None or f.sha256 != other.sha256:
                return False
        elif f.size > _REGULAR_MAX or other.blob_id is None:
            return False
        else:
            try:
                if _git_blob_oid(checkpoint.base / f.path) != other.blob_id:
                    return False
            except OSError:
                return False
    return True


def _confirm(checkpoint: LocalCheckpoint, remote: Mapping[str, RemoteFile], prefix: str) -> None:
    for f in checkpoint.files:
        other = remote.get(f"{prefix}/{f.path}")
        if other is None:
            raise HubError(f"the Hub lacks {prefix}/{f.path} after the push", transient=True)
        if other.size != f.size:
            raise HubError(
                f"the Hub has {prefix}/{f.path} at {other.size} bytes, not {f.size}",
                transient=True,
            )
        if f.sha256 and other.sha256 and f.sha256 != other.sha256:
            raise HubError(f"the Hub's {prefix}/{f.path} differs (sha256)", transient=True)


def _commit_message(checkpoint: LocalCheckpoint) -> tuple[str, str]:
    metrics = []
    for key, value in sorted(checkpoint.metrics.items()):
        if isinstance(value, float):
            metrics.append(f"{key}={value:.4g}")
        elif isinstance(value, (int, str)) and len(str(value)) < 40:
            metrics.append(f"{key}={value}")
    title = f"step {checkpoint.step}"
    if checkpoint.snapshot:
        title += f" (snapshot of {checkpoint.files[0].path}, step from {checkpoint.step_source})"
    if metrics:
        title += ": " + ", ".join(metrics[:6])
    description = json.dumps(
        {
            "step": checkpoint.step,
            "layout": checkpoint.layout,
            "bytes": checkpoint.size,
            "files": len(checkpoint.files),
            "metrics": dict(checkpoint.metrics),
            "step_source": checkpoint.step_source,
        },
        default=str,
        sort_keys=True,
    )
    return title, description


def _latest_step(tags: Mapping[str, str]) -> int | None:
    """The step the ``latest`` tag marks (the ``step-N`` tag on the same commit), or None."""
    target = tags.get(LATEST_TAG)
    steps = [
        int(name[5:])
        for name, oid in tags.items()
        if oid == target and name.startswith("step-") and name[5:].isdigit()
    ]
    return max(steps) if steps else None


def _glob_escape(name: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", name)


def _set_tag(
    api: HubApi, repo: str, tag: str, commit: str, tags: Mapping[str, str], repo_type: RepoType
) -> None:
    """Point ``tag`` at ``commit``: create it, or delete and re-create it (the Hub refuses to
    move a tag, and ``create_tag(exist_ok=True)`` silently leaves it where it was)."""
    if tags.get(tag) == commit:
        return
    if tag in tags:
        api.delete_tag(repo, tag, repo_type=repo_type)
    try:
        api.create_tag(repo, tag, commit, repo_type=repo_type)
    except HubError as err:
        if err.status != 409:
            raise
        # Someone re-created it between our delete and create: move it once more.
        api.delete_tag(repo, tag, repo_type=repo_type)
        api.create_tag(repo, tag, commit, repo_type=repo_type)


def push_checkpoint(
    api: HubApi | HfApi,
    repo: str,
    checkpoint: LocalCheckpoint,
    *,
    repo_type: RepoType = "model",
    move_latest: bool | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> PushResult:
    """Push one checkpoint and confirm it (see the module docstring); the repo must exist.

    ``move_latest``: whether the ``latest`` tag moves to it; None: when its step is at least
    the step ``latest`` marks now (a back-filled older step leaves it alone).

    Raises:
        HubError: any step failed; ``transient`` says whether a retry is likely to help. A
            checkpoint that changed on disk during the upload is a transient failure.
    """
    hub = as_hub_api(api)
    prefix = remote_path(checkpoint.step)
    started = clock()
    remote = hub.list_files(repo, prefix, revision="main", repo_type=repo_type)
    refs = hub.refs(repo, repo_type=repo_type)
    uploaded = False
    if remote and _matches(checkpoint, remote, prefix):
        # Already there: keep the step's tag where it is if that commit holds this content
        # (a step re-saved with other content and pushed since would not), else tag the head.
        commit = refs.branches.get("main", "")
        tagged = refs.tags.get(step_tag(checkpoint.step))
        if tagged and tagged != commit:
            at_tag = hub.list_files(repo, prefix, revision=tagged, repo_type=repo_type)
            if _matches(checkpoint, at_tag, prefix):
                commit = tagged
        confirmed = remote
    else:
        title, description = _commit_message(checkpoint)
        if checkpoint.single_file:
            allow: list[str] | None = [_glob_escape(f.path) for f in checkpoint.files]
        else:
            allow = None
        try:
            commit = hub.upload_folder(
                repo,
                checkpoint.base,
                path_in_repo=prefix,
                message=title,
                description=description,
                repo_type=repo_type,
                allow_patterns=allow,
            )
        except HubError:
            changed = checkpoint.changed_on_disk()
            if changed is not None:
                raise HubError(
                    f"step {checkpoint.step} changed on disk during its upload ({changed})",
                    transient=True,
                ) from None
            raise
        uploaded = True
        changed = checkpoint.changed_on_disk()
        if changed is not None:
            raise HubError(
                f"step {checkpoint.step} changed on disk during its upload ({changed}); "
                "not confirmed",
                transient=True,
            )
        confirmed = hub.list_files(repo, prefix, revision=commit, repo_type=repo_type)
    _confirm(checkpoint, confirmed, prefix)
    if not commit:
        raise HubError(f"cannot tell which commit holds {prefix} in {repo}", transient=True)
    tags = [step_tag(checkpoint.step)]
    if move_latest is None:
        marked = _latest_step(refs.tags)
        move_latest = marked is None or checkpoint.step >= marked
    if move_latest:
        tags.append(LATEST_TAG)
    for tag in tags:  # refs from before the upload: _set_tag copes with a tag moved since
        _set_tag(hub, repo, tag, commit, refs.tags, repo_type)
    return PushResult(
        step=checkpoint.step,
        commit=commit,
        bytes=checkpoint.size,
        seconds=max(clock() - started, 1e-9),
        uploaded=uploaded,
        files={f.path: f.size for f in checkpoint.files},
        tags=tuple(tags),
    )


# ------------------------------------------------------------------------------------------------
# State on disk
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushRecord:
    """A checkpoint the Hub confirmed."""

    step: int
    commit: str
    content_id: str
    bytes: int
    seconds: float
    time: float
    files: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    """The current run of failures: how many in a row, when to try again, why."""

    attempts: int
    next_try: float
    """Wall-clock time (``time.time``) of the next attempt."""
    reason: str
    step: int | None = None


class PushState:
    """``RUN_DIR/push-state.json``: what the Hub confirmed and the retry schedule.

    Written with a temporary file, fsync and rename, so a process killed at any instant
    leaves the previous state or the new one. A state file for another repo, or one that
    cannot be read, is ignored (``problem`` says why; the next save replaces it) and the state
    starts empty, which is safe: nothing is deleted locally until the Hub confirms it again,
    and a checkpoint the Hub already has is confirmed without sending it again.
    """

    def __init__(self, path: Path, repo: str, repo_type: RepoType) -> None:
        self.path = path
        self.repo = repo
        self.repo_type = repo_type
        self.pushed: dict[int, PushRecord] = {}
        self.failure: Failure | None = None
        self.problem: str | None = None
        """Why an existing state file was not used, or None."""

    @classmethod
    def load(cls, path: Path, repo: str, repo_type: RepoType) -> PushState:
        state = cls(path, repo, repo_type)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return state
        except (OSError, ValueError) as exc:
            state.problem = f"unreadable ({exc}); starting afresh"
            return state
        try:
            if data.get("repo") != repo or data.get("repo_type", "model") != repo_type:
                state.problem = f"was for {data.get('repo')}; starting afresh for {repo}"
                return state
            for key, value in (data.get("pushed") or {}).items():
                state.pushed[int(key)] = PushRecord(
                    step=int(key),
                    commit=str(value["commit"]),
                    content_id=str(value["content_id"]),
                    bytes=int(value.get("bytes", 0)),
                    seconds=float(value.get("seconds", 0.0)),
                    time=float(value.get("time", 0.0)),
                    files={str(k): int(v) for k, v in (value.get("files") or {}).items()},
                )
            failure = data.get("failure")
            if isinstance(failure, dict):
                state.failure = Failure(
                    attempts=int(failure["attempts"]),
                    next_try=float(failure["next_try"]),
                    reason=str(failure.get("reason", "")),
                    step=failure.get("step"),
                )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            state.pushed.clear()
            state.failure = None
            state.problem = f"malformed ({exc!r}); starting afresh"
        return state

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": STATE_FORMAT,
            "repo": self.repo,
            "repo_type": self.repo_type,
            "pushed": {
                str(step): {
                    "commit": r.commit,
                    "content_id": r.content_id,
                    "bytes": r.bytes,
                    "seconds": round(r.seconds, 3),
                    "time": r.time,
                    "files": dict(r.files),
                }
                for step, r in sorted(self.pushed.items())
            },
            "failure": None
            if self.failure is None
            else {
                "attempts": self.failure.attempts,
                "next_try": self.failure.next_try,
                "reason": self.failure.reason,
                "step": self.failure.step,
            },
        }

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


# ------------------------------------------------------------------------------------------------
# The pusher
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushConfig:
    """How the pusher behaves; every delay is configurable so tests run fast."""

    repo_type: RepoType = "model"
    """``model`` or ``dataset``."""
    private: bool = True
    """Visibility of the repo if the pusher creates it (an existing repo keeps its own)."""
    keep: int = 3
    """Newest complete checkpoints kept locally (``CheckpointSpec.keep``); older ones are
    deleted once the Hub has them. The newest is never deleted."""
    interval_s: float = 30.0
    """Seconds between two looks at the checkpoint folder."""
    settle_s: float = 60.0
    """A foreign checkpoint counts once unchanged this long (see ``discovery``)."""
    backoff_initial_s: float = 10.0
    """Wait after the first failure; doubled after each further one."""
    backoff_max_s: float = 600.0
    """Longest wait between tries."""
    min_commit_interval_s: float = 30.0
    """Least time between two commits (the Hub allows ~128 commits per hour per repo)."""
    reserve_bytes: int | None = None
    """Free space to keep on the checkpoint disk (e.g. 1.2 x one checkpoint): below it, each
    poll pushes and rotates first (:meth:`Pusher.ensure_space`). None: no check."""
    nice: int = 10
    """How much the pusher thread lowers its CPU priority (Linux: per thread; 0: not at all)."""


@dataclass
class PollResult:
    """What one :meth:`Pusher.poll_once` did."""

    pushed: list[PushResult] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    """Complete steps not pushed yet (backing off, rate limit, or stopped)."""


EventSink = Callable[[Event], None]


class Pusher:
    """Pushes a run's checkpoints to the Hub in a background thread (see the module docstring).

    Args:
        api: a :class:`~runner.hub.client.HubClient` (or a ``huggingface_hub.HfApi``).
        repo: ``owner/name`` on the Hub.
        run_dir: the run folder: ``push-state.json`` and ``events.jsonl`` go there.
        layout: the checkpoint layout (``CheckpointSpec.layout``).
        root: the checkpoint folder; default ``run_dir/checkpoints``.
        config: delays, rotation, priority (:class:`PushConfig`).
        events: where events go; default the run folder's ``events.jsonl``.
        clock: wall-clock seconds; tests pass a fake one.
        free_bytes: free bytes on ``root``'s disk; default ``shutil.disk_usage``.

    ``start()``/``stop()`` run it in a thread; ``poll_once()`` is one look (for tests, and what
    the thread calls). ``ensure_space(n)`` may be called from another thread. Nothing here
    raises into the caller's thread for a Hub or disk problem: those become events.
    """

    def __init__(
        self,
        api: HubApi | HfApi,
        repo: str,
        run_dir: Path | str,
        layout: Layout = "harness",
        root: Path | str | None = None,
        *,
        config: PushConfig | None = None,
        events: EventSink | None = None,
        clock: Callable[[], float] = time.time,
        free_bytes: Callable[[Path], int] | None = None,
    ) -> None:
        self.api = as_hub_api(api)
        self.repo = repo
        self.run_dir = Path(run_dir)
        self.root = Path(root) if root is not None else self.run_dir / "checkpoints"
        self.config = config or PushConfig()
        self.layout: Layout = layout
        self._clock = clock
        self._free = free_bytes or (lambda p: shutil.disk_usage(_existing(p)).free)
        self._events = events or EventLog(self.run_dir).append
        self._scanner = Scanner(layout, self.root, settle_s=self.config.settle_s, clock=clock)
        self.state = PushState.load(self.run_dir / STATE_FILE, repo, self.config.repo_type)
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._repo_ready = False
        self._last_commit: float | None = None
        if self.state.problem is not None:
            self._emit(
                "push_failed", "warning", f"{STATE_FILE} {self.state.problem}", {"repo": repo}
            )

    @classmethod
    def from_spec(
        cls,
        api: HubApi | HfApi,
        spec: JobSpec,
        run_dir: Path | str,
        *,
        root: Path | str | None = None,
        config: PushConfig | None = None,
        events: EventSink | None = None,
    ) -> Pusher:
        """A pusher for a job: repo from ``spec.hub``, layout, folder and ``keep`` from
        ``spec.checkpoints``; 1.2 x ``size_gb`` of free space reserved.

        Raises:
            HubError: the job has no ``hub:`` section.
        """
        if spec.hub is None:
            raise HubError(f"job {spec.name} has no hub: section; add hub: {{repo: OWNER/NAME}}")
        run_dir = Path(run_dir)
        ck = spec.checkpoints
        if root is None:
            root = Path(ck.path) if Path(ck.path).is_absolute() else run_dir / ck.path
        reserve = int(ck.size_gb * 1.2e9) if ck.size_gb else None
        base = config or PushConfig()
        config = replace(
            base,
            repo_type=spec.hub.repo_type,
            private=spec.hub.private,
            keep=ck.keep,
            interval_s=spec.hub.push_interval_s,
            min_commit_interval_s=spec.hub.min_commit_interval_s,
            reserve_bytes=base.reserve_bytes if base.reserve_bytes is not None else reserve,
        )
        return cls(api, spec.hub.repo, run_dir, ck.layout, root, config=config, events=events)

    # -- the thread ------------------------------------------------------------------------------

    def start(self) -> Pusher:
        """Start the background thread (once)."""
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="hub-pusher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Ask the thread to stop and wait up to ``timeout``; True when it has stopped. An
        upload in flight cannot be interrupted: it finishes (or fails) first."""
        self._stopping.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        _lower_priority(self.config.nice)
        while not self._stopping.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # a bug must not end the pushing: report it, go on
                self._emit(
                    "push_failed",
                    "warning",
                    f"pusher error: {type(exc).__name__}: {exc}",
                    {"repo": self.repo},
                )
            self._stopping.wait(self._next_wait())

    def _next_wait(self) -> float:
        wait = self.config.interval_s
        failure = self.state.failure
        if failure is not None:
            wait = min(wait, max(0.0, failure.next_try - self._clock()))
        return max(0.05, wait)

    def flush(self, timeout_s: float, *, writer_gone: bool = False) -> bool:
        """Poll until every complete checkpoint is on the Hub or ``timeout_s`` passes (at the
        end of a run); True when nothing is left to push.

        ``writer_gone``: the training process has ended, so a foreign checkpoint that is whole
        counts without waiting ``settle_s`` for it to stop changing (a trainer saves last at
        its final step, and the run ends right after: that one must be pushed too).
        """
        if writer_gone:
            self._scanner.settle_s = 0.0
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.poll_once()
            if not result.waiting and not result.failed:
                return True
            if time.monotonic() >= deadline or self._stopping.is_set():
                return False
            time.sleep(min(max(0.05, self._next_wait()), max(0.05, deadline - time.monotonic())))

    # -- one look --------------------------------------------------------------------------------

    def poll_once(self) -> PollResult:
        """Scan, push what is new (newest first), rotate. Never raises for Hub or disk trouble."""
        with self._lock:
            result = PollResult()
            scan = self._scanner.scan()
            if self.config.reserve_bytes and self._free_now() < self.config.reserve_bytes:
                self._ensure_space(self.config.reserve_bytes, scan, result)
                scan = self._scanner.scan()
            self._push_pending(scan, result, newest_first=True)
            if self.state.failure is None:  # while the Hub fails, rotation could not confirm
                self._rotate(scan, self.config.keep, result)
            return result

    def _pending(self, scan: Scan) -> list[LocalCheckpoint]:
        return [c for c in scan.complete if not self.is_pushed(c)]

    def is_pushed(self, checkpoint: LocalCheckpoint) -> bool:
        """Whether the Hub confirmed this checkpoint with this content."""
        record = self.state.pushed.get(checkpoint.step)
        return record is not None and record.content_id == checkpoint.content_id

    def _push_pending(self, scan: Scan, result: PollResult, *, newest_first: bool) -> None:
        pending = self._pending(scan)
        if newest_first:
            pending.reverse()
        for index, checkpoint in enumerate(pending):
            if self._stopping.is_set() or not self._may_push_now():
                result.waiting.extend(c.step for c in pending[index:])
                return
            if not self._push(checkpoint, result):
                result.waiting.extend(c.step for c in pending[index + 1 :])
                return

    def _may_push_now(self) -> bool:
        failure = self.state.failure
        if failure is not None and self._clock() < failure.next_try:
            return False
        interval = self.config.min_commit_interval_s
        return self._last_commit is None or time.monotonic() - self._last_commit >= interval

    def _push(self, checkpoint: LocalCheckpoint, result: PollResult) -> bool:
        try:
            if not self._repo_ready:
                self.api.ensure_repo(
                    self.repo, repo_type=self.config.repo_type, private=self.config.private
                )
                self._repo_ready = True
            pushed = push_checkpoint(
                self.api,
                self.repo,
                checkpoint,
                repo_type=self.config.repo_type,
            )
        except Exception as exc:
            self._failed(checkpoint, exc, result)
            return False
        if pushed.uploaded:
            self._last_commit = time.monotonic()
        self.state.pushed[checkpoint.step] = PushRecord(
            step=checkpoint.step,
            commit=pushed.commit,
            content_id=checkpoint.content_id,
            bytes=pushed.bytes,
            seconds=pushed.seconds,
            time=self._clock(),
            files=dict(pushed.files),
        )
        self.state.failure = None
        self._save_state()
        result.pushed.append(pushed)
        size = _human_bytes(pushed.bytes)
        if pushed.uploaded:
            message = (
                f"pushed step {pushed.step} to {self.repo}: {size} in {pushed.seconds:.1f} s "
                f"({pushed.mb_per_s:.1f} MB/s)"
            )
        else:
            message = f"step {pushed.step} is already on {self.repo} ({size}): nothing sent"
        self._emit(
            "push",
            "info",
            message,
            {
                "step": pushed.step,
                "bytes": pushed.bytes,
                "seconds": round(pushed.seconds, 3),
                "mb_per_s": round(pushed.mb_per_s, 2),
                "files": len(pushed.files),
                "uploaded": pushed.uploaded,
                "commit": pushed.commit,
                "repo": self.repo,
                "path": remote_path(pushed.step),
                "snapshot": checkpoint.snapshot,
                "step_source": checkpoint.step_source,
            },
        )
        return True

    def _failed(self, checkpoint: LocalCheckpoint, exc: Exception, result: PollResult) -> None:
        reason = str(exc) if isinstance(exc, RunnerError) else f"{type(exc).__name__}: {exc}"
        reason = redact(" ".join(reason.split()), _secrets(self.api))
        if isinstance(exc, HubError) and exc.status == 404:
            self._repo_ready = False  # the repo may have been deleted: create it again
        changed = checkpoint.changed_on_disk()
        if changed is not None:
            # The trainer rewrote or removed it: not the Hub's fault, no back-off. The next
            # scan finds it again (once settled) or finds it gone.
            result.failed.append((checkpoint.step, reason))
            self._emit(
                "push_failed",
                "warning",
                f"push of step {checkpoint.step} to {self.repo} stopped: {changed}; "
                "it is pushed again once it is complete and settled",
                {"step": checkpoint.step, "reason": reason, "retry_in_s": 0, "repo": self.repo},
            )
            return
        previous = self.state.failure
        attempts = (previous.attempts if previous is not None else 0) + 1
        delay = min(
            self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** min(attempts - 1, 30)
        )
        retry_after = exc.retry_after if isinstance(exc, HubError) else None
        if retry_after is not None:
            delay = max(delay, retry_after)
        now = self._clock()
        self.state.failure = Failure(attempts, now + delay, reason, checkpoint.step)
        self._save_state()
        result.failed.append((checkpoint.step, reason))
        self._emit(
            "push_failed",
            "warning",
            f"push of step {checkpoint.step} to {self.repo} failed (attempt {attempts}): "
            f"{reason}; retrying in {delay:.0f} s",
            {
                "step": checkpoint.step,
                "reason": reason,
                "attempt": attempts,
                "retry_in_s": round(delay, 3),
                "retry_at": now + delay,
                "status": exc.status if isinstance(exc, HubError) else None,
                "transient": exc.transient if isinstance(exc, HubError) else False,
                "repo": self.repo,
            },
        )

    def _save_state(self) -> None:
        """Write the state; a failure (a full disk) is reported, the state in memory stays."""
        try:
            self.state.save()
        except OSError as exc:
            self._emit(
                "push_failed",
                "warning",
                f"cannot write {self.state.path}: {exc.strerror or exc}; a restarted agent will "
                "check the Hub again instead",
                {"path": str(self.state.path), "repo": self.repo},
            )

    # -- rotation and space ----------------------------------------------------------------------

    def _confirmed(self, checkpoint: LocalCheckpoint) -> bool:
        """Pushed with this content, unchanged on disk since, and listed by the Hub now."""
        if not self.is_pushed(checkpoint) or checkpoint.changed_on_disk() is not None:
            return False
        prefix = remote_path(checkpoint.step)
        remote = self.api.list_files(
            self.repo, prefix, revision="main", repo_type=self.config.repo_type
        )
        try:
            _confirm(checkpoint, remote, prefix)
        except HubError:
            return False
        return True

    def _rotate(self, scan: Scan, keep: int, result: PollResult) -> list[Deleted]:
        def on_error(checkpoint: LocalCheckpoint, reason: str) -> None:
            self._emit(
                "push_failed",
                "warning",
                f"local step {checkpoint.step}: {reason}",
                {"step": checkpoint.step, "reason": reason, "repo": self.repo},
            )

        deleted = rotate(scan.complete, keep, self._confirmed, on_error=on_error)
        for item in deleted:
            result.deleted.append(item.checkpoint.step)
            record = self.state.pushed.get(item.checkpoint.step)
            self._emit(
                "rotate",
                "info",
                f"deleted local step {item.checkpoint.step} ({_human_bytes(item.freed_bytes)}): "
                f"it is on {self.repo}",
                {
                    "step": item.checkpoint.step,
                    "freed_bytes": item.freed_bytes,
                    "path": str(item.checkpoint.source),
                    "commit": record.commit if record else None,
                    "keep": keep,
                },
            )
        return deleted

    def _free_now(self) -> int:
        try:
            return int(self._free(self.root))
        except OSError:
            return 0

    def ensure_space(self, bytes_needed: int) -> bool:
        """Make ``bytes_needed`` free on the checkpoint disk: push what is not on the Hub yet
        (oldest first, ignoring the retry schedule: once each), rotate to ``keep``, then, if
        still short, down to the newest checkpoint alone (only ones the Hub has). True when
        enough is free; otherwise a critical ``push_rotate_failed`` event and False.

        Blocks while it pushes: call it from the agent's loop, never from training.
        """
        with self._lock:
            result = PollResult()
            return self._ensure_space(bytes_needed, self._scanner.scan(), result)

    def _ensure_space(self, needed: int, scan: Scan, result: PollResult) -> bool:
        if self._free_now() >= needed:
            return True
        for checkpoint in self._pending(scan):  # oldest first: those are what rotation frees
            if self._stopping.is_set():
                break
            self._push(checkpoint, result)
        self._rotate(scan, self.config.keep, result)
        if self._free_now() < needed and self.config.keep > 1:
            self._rotate(self._scanner.scan(), 1, result)
        free = self._free_now()
        if free >= needed:
            return True
        scan = self._scanner.scan()
        unpushed = [c.step for c in scan.complete if not self.is_pushed(c)]
        blocked = [c.step for c in plan_rotation(scan.complete, 1) if c.step in unpushed]
        reason = (
            f"{len(blocked)} older checkpoint(s) are not on the Hub yet"
            if blocked
            else "nothing left that may be deleted (the newest checkpoint is always kept)"
        )
        self._emit(
            "push_rotate_failed",
            "critical",
            f"cannot free {_human_bytes(needed)} on {self.root}: {_human_bytes(free)} free "
            f"after pushing and rotating; {reason}",
            {
                "needed_bytes": needed,
                "free_bytes": free,
                "unpushed_steps": unpushed,
                "local_steps": [c.step for c in scan.complete],
                "deleted_steps": list(result.deleted),
                "last_failure": self.state.failure.reason if self.state.failure else None,
                "repo": self.repo,
            },
        )
        return False

    # -- events ----------------------------------------------------------------------------------

    def _emit(
        self, kind: str, severity: Severity, message: str, evidence: Mapping[str, Any]
    ) -> None:
        secrets = _secrets(self.api)
        clean = {k: redact(v, secrets) if isinstance(v, str) else v for k, v in evidence.items()}
        event = Event(
            kind=kind,
            severity=severity,
            message=redact(" ".join(message.split()), secrets),
            evidence=clean,
        )
        with contextlib.suppress(Exception):  # an event that cannot be written must not stop us
            self._events(event)


def _existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _lower_priority(nice: int) -> None:
    """Lower this thread's CPU priority (on Linux ``setpriority`` on a thread id affects that
    thread only; the upload threads it starts inherit it)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


# ------------------------------------------------------------------------------------------------
# The other direction: what is on the Hub, pull, retag
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteCheckpoint:
    """A checkpoint on the Hub: ``checkpoints/step_NNNNNNNNN/``."""

    step: int
    path: str
    files: Mapping[str, RemoteFile]
    """Keyed by the path relative to the step folder."""
    tags: tuple[str, ...] = ()
    commit: str | None = None
    """The commit to fetch it from: its ``step-N`` tag's, else the folder's last commit."""
    date: str | None = None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files.values())


def remote_checkpoints(
    api: HubApi | HfApi, repo: str, *, repo_type: RepoType = "model"
) -> list[RemoteCheckpoint]:
    """Every checkpoint under ``checkpoints/`` on the Hub's ``main``, oldest step first.

    Raises:
        HubError: the repo does not exist (404) or cannot be read.
    """
    hub = as_hub_api(api)
    files = hub.list_files(repo, REMOTE_ROOT, revision="main", repo_type=repo_type)
    folders = {
        f.path: f for f in hub.list_folders(repo, REMOTE_ROOT, revision="main", repo_type=repo_type)
    }
    refs = hub.refs(repo, repo_type=repo_type)
    grouped: dict[str, dict[str, RemoteFile]] = {}
    for path, entry in files.items():
        parts = path.split("/", 2)
        if len(parts) == 3 and _REMOTE_STEP.match(parts[1]):
            grouped.setdefault(f"{parts[0]}/{parts[1]}", {})[parts[2]] = entry
    found = []
    for folder, entries in grouped.items():
        step = int(folder.rsplit("_", 1)[1])
        tag_commit = refs.tags.get(step_tag(step))
        info = folders.get(folder)
        commit = tag_commit or (info.last_commit if info else None)
        tags = sorted(
            name
            for name, oid in refs.tags.items()
            if name == step_tag(step) or (name == LATEST_TAG and tag_commit and oid == tag_commit)
        )
        found.append(
            RemoteCheckpoint(
                step=step,
                path=folder,
                files=entries,
                tags=tuple(tags),
                commit=commit,
                date=info.last_commit_date if info else None,
            )
        )
    return sorted(found, key=lambda c: c.step)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 << 20)
        view = memoryview(buf)
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pull_checkpoint(
    api: HubApi | HfApi,
    repo: str,
    dest: Path | str,
    *,
    step: int | None = None,
    repo_type: RepoType = "model",
) -> Path:
    """Fetch one checkpoint (default: the newest) into ``dest/step_NNNNNNNNN`` so that
    ``runner.harness.latest_checkpoint(dest)`` finds it complete; returns that folder.

    Downloads into a temporary ``dest/.tmp-step_...`` folder, checks every file's size against
    the Hub (and its sha256 against the manifest's, or the Hub's while writing one), writes the
    harness manifest if the pushed checkpoint has none, fsyncs, and renames it into place.
    A complete local copy of the same step is returned as is.

    Raises:
        CheckpointError: the repo has no checkpoints, or not that step.
        HubError: the Hub cannot be read, or a downloaded file does not match it.
    """
    hub = as_hub_api(api)
    dest = Path(dest)
    available = remote_checkpoints(hub, repo, repo_type=repo_type)
    if not available:
        raise CheckpointError(f"{repo} has no checkpoints under {REMOTE_ROOT}/")
    if step is None:
        chosen = available[-1]
    else:
        match = [c for c in available if c.step == step]
        if not match:
            steps = ", ".join(str(c.step) for c in available[-8:])
            raise CheckpointError(f"{repo} has no checkpoint for step {step} (newest: {steps})")
        chosen = match[0]
    final = dest / checkpoint_name(chosen.step)
    for local in list_checkpoints(dest):
        if local.step == chosen.step:
            return local.path
    revision = chosen.commit or "main"
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".tmp-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        paths = [f"{chosen.path}/{rel}" for rel in sorted(chosen.files)]
        hub.download(repo, paths, staging, revision=revision, repo_type=repo_type)
        folder = staging / chosen.path
        _check_download(folder, chosen)
        _write_manifest_if_missing(folder, chosen, repo, revision)
        for file in folder.rglob("*"):
            if file.is_file():
                with open(file, "rb+") as f:
                    os.fsync(f.fileno())
        if final.exists():
            aside = dest / f".tmp-old-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
            os.replace(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(folder, final)
        _fsync(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _check_download(folder: Path, chosen: RemoteCheckpoint) -> None:
    for rel, remote in chosen.files.items():
        path = folder / rel
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise HubError(f"download of {chosen.path}/{rel} is missing: {exc}") from exc
        if size != remote.size:
            raise HubError(
                f"download of {chosen.path}/{rel} has {size} bytes, the Hub says {remote.size}",
                transient=True,
            )


def _write_manifest_if_missing(
    folder: Path, chosen: RemoteCheckpoint, repo: str, revision: str
) -> None:
    manifest_path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT:
        for entry in manifest.get("files", []):
            remote = chosen.files.get(str(entry.get("path")))
            if remote is None:
                raise HubError(
                    f"{chosen.path} on the Hub lacks {entry.get('path')}, which its manifest lists"
                )
            if remote.sha256 and entry.get("sha256") and remote.sha256 != entry["sha256"]:
                raise HubError(f"{chosen.path}/{entry['path']}: the Hub's sha256 differs")
        return
    files = []
    for rel in sorted(chosen.files):
        if rel == MANIFEST_FILE:
            continue
        digest = _sha256(folder / rel)
        remote = chosen.files[rel]
        if remote.sha256 and remote.sha256 != digest:
            raise HubError(f"download of {chosen.path}/{rel} is corrupt (sha256 differs)")
        files.append({"path": rel, "size": remote.size, "sha256": digest})
    if MANIFEST_FILE in chosen.files:
        # A foreign manifest.json would hide ours: keep it under another name.
        os.replace(manifest_path, folder / "manifest.original.json")
        digest = _sha256(folder / "manifest.original.json")
        size = (folder / "manifest.original.json").stat().st_size
        files.append({"path": "manifest.original.json", "size": size, "sha256": digest})
    manifest = {
        "format": MANIFEST_FORMAT,
        "step": chosen.step,
        "created": time.time(),
        "files": files,
        "metrics": {},
        "source": {"repo": repo, "revision": revision, "path": chosen.path},
    }
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def pull_latest(
    api: HubApi | HfApi,
    repo: str,
    dest: Path | str,
    *,
    repo_type: RepoType = "model",
) -> Path | None:
    """Fetch the Hub's newest checkpoint into the harness checkpoint folder ``dest`` so that a
    fresh run resumes from it; returns its folder.

    None when there is nothing to pull: the repo does not exist or has no checkpoints, or
    ``dest`` already holds a complete checkpoint at least as new (then resume from that).

    Raises:
        HubError: the Hub cannot be reached or refuses the token (a missing repo is None).
    """
    hub = as_hub_api(api)
    try:
        available = remote_checkpoints(hub, repo, repo_type=repo_type)
    except HubError as err:
        if err.status == 404:
            return None
        raise
    if not available:
        return None
    local = list_checkpoints(dest)
    if local and local[-1].step >= available[-1].step:
        return None
    return pull_checkpoint(hub, repo, dest, step=available[-1].step, repo_type=repo_type)


@dataclass(frozen=True)
class RetagResult:
    tag: str
    old: str | None
    """The commit the tag pointed to before, or None when it did not exist."""
    new: str

    @property
    def moved(self) -> bool:
        return self.old != self.new


def retag(
    api: HubApi | HfApi,
    repo: str,
    tag: str,
    *,
    revision: str | None = None,
    repo_type: RepoType = "model",
) -> RetagResult:
    """Point ``tag`` at ``revision`` (a branch, a tag or a commit; default: ``main``'s head),
    deleting and re-creating it: what fixes a stale dataset tag such as ``v3.0``.

    Raises:
        HubError: the repo or revision does not exist, or the token may not write.
    """
    hub = as_hub_api(api)
    refs = hub.refs(repo, repo_type=repo_type)
    wanted = revision or "main"
    if wanted in refs.branches:
        new = refs.branches[wanted]
    elif wanted in refs.tags:
        new = refs.tags[wanted]
    elif _COMMIT_OID.match(wanted):
        new = wanted
    else:
        names = ", ".join(sorted(refs.branches)[:5])
        raise HubError(
            f"{repo} has no branch, tag or commit {wanted!r} (branches: {names})", status=404
        )
    old = refs.tags.get(tag)
    if old != new:
        try:
            _set_tag(hub, repo, tag, new, refs.tags, repo_type)
        except HubError as err:
            if old is not None and tag not in hub.refs(repo, repo_type=repo_type).tags:
                raise HubError(
                    f"tag {tag} was deleted but not re-created ({err}); run the command again"
                ) from err
            raise
    return RetagResult(tag, old, new)


# ------------------------------------------------------------------------------------------------
# Standalone: ``python -m runner.hub.pusher`` (the agent runs the Pusher in its own process)
# ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run a pusher until SIGTERM/SIGINT; the token comes from ``HF_TOKEN`` (never an argument)."""
    import signal

    parser = argparse.ArgumentParser(prog="python -m runner.hub.pusher")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--layout", default="harness", choices=list(LAYOUTS))
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--repo-type", default="model", choices=["model", "dataset"])
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=60.0)
    parser.add_argument("--backoff", type=float, default=10.0)
    parser.add_argument("--backoff-max", type=float, default=600.0)
    parser.add_argument("--min-commit-interval", type=float, default=30.0)
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--once", action="store_true", help="one poll, then exit")
    args = parser.parse_args(argv)
    config = PushConfig(
        repo_type=args.repo_type,
        keep=args.keep,
        interval_s=args.interval,
        settle_s=args.settle,
        backoff_initial_s=args.backoff,
        backoff_max_s=args.backoff_max,
        min_commit_interval_s=args.min_commit_interval,
        nice=args.nice,
    )
    client = HubClient.from_env()
    try:
        client.require_token()
    except HubError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    pusher = Pusher(client, args.repo, args.run_dir, args.layout, args.root, config=config)
    if args.once:
        _lower_priority(config.nice)
        result = pusher.poll_once()
        return 1 if result.failed else 0
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    pusher.start()
    while not done.wait(0.5):
        pass
    pusher.stop(timeout=60.0)
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    sys.exit(main())

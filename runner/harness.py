"""What a training script imports to be supervised: heartbeats and atomic checkpoints.

Standard library only (torch is imported inside :meth:`Harness.save_torch` and
:meth:`Harness.load_torch`), so any training image can use this one file. It
works unchanged when nobody supervises: without ``RUNNER_RUN_DIR`` the heartbeat
is a do-nothing object and checkpoints go where the script says.

The run folder (the contract with the agent and ``runner watch``)::

    $RUNNER_RUN_DIR/
      heartbeat.json        rewritten in place on every step: step, phase, time, metrics
      metrics.jsonl         one JSON line per step, at most one a second
      stacks/               faulthandler dumps (SIGUSR1 asks for one)
      checkpoints/          $RUNNER_CHECKPOINT_DIR overrides
        step_000000100/     a complete checkpoint: its files and manifest.json
        .tmp-step_...       a save in progress or one that died: never read

A checkpoint is complete when its ``manifest.json`` exists and every file it
lists has the listed size. The manifest is written last, inside a temporary
folder that is renamed into place, so a process killed at any instant leaves
either the previous complete checkpoint or the new one, never a half one that
looks whole.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import json
import math
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "CHECKPOINT_DIRNAME",
    "ENV_CHECKPOINT_DIR",
    "ENV_RUN_DIR",
    "HEARTBEAT_FILE",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "Checkpoint",
    "CheckpointWriter",
    "Harness",
    "checkpoint_name",
    "get",
    "latest_checkpoint",
    "list_checkpoints",
    "read_heartbeat",
    "save_checkpoint",
    "verify_checkpoint",
]

ENV_RUN_DIR = "RUNNER_RUN_DIR"
ENV_CHECKPOINT_DIR = "RUNNER_CHECKPOINT_DIR"
ENV_METRICS_INTERVAL = "RUNNER_METRICS_INTERVAL"

HEARTBEAT_FILE = "heartbeat.json"
METRICS_FILE = "metrics.jsonl"
STACKS_DIR = "stacks"
CHECKPOINT_DIRNAME = "checkpoints"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "runner-checkpoint/1"

#: The heartbeat is one fixed-size record rewritten with a single ``pwrite``, so a
#: reader never sees a file that is shorter than the last record.
HEARTBEAT_SIZE = 4096

_STEP_DIR = re.compile(r"^step_(\d{9,})$")
_TMP_PREFIX = ".tmp-"
_CHUNK = 8 << 20


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint for ``step``: sorts by name in step order."""
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    return f"step_{step:09d}"


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk."""

    step: int
    path: Path
    manifest: Mapping[str, Any]

    @property
    def size(self) -> int:
        """Total bytes of the files the manifest lists."""
        return sum(int(f["size"]) for f in self.manifest.get("files", []))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


class CheckpointWriter:
    """Builds one checkpoint in a temporary folder and commits it atomically.

    Use :func:`save_checkpoint` unless the files are written piecewise::

        with CheckpointWriter(root, step) as w:
            torch.save(model_state, w.path / "model.pt")
            (w.path / "notes.txt").write_text("...")
        w.final  # the complete checkpoint's folder

    :meth:`commit` fsyncs and hashes every file, writes the manifest last,
    renames the folder into place and fsyncs the parent. Leaving the block
    with an exception removes the temporary folder and keeps every earlier
    checkpoint untouched.
    """

    def __init__(self, root: Path, step: int, *, metrics: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.step = step
        self.metrics = {k: _jsonable(v) for k, v in (metrics or {}).items()}
        self.final = self.root / checkpoint_name(step)
        self.path = (
            self.root / f"{_TMP_PREFIX}{self.final.name}-{os.getpid()}-{time.monotonic_ns()}"
        )

    def begin(self) -> CheckpointWriter:
        """Create the temporary folder (and clear the leftovers of killed saves)."""
        self.root.mkdir(parents=True, exist_ok=True)
        _remove_dead_temporaries(self.root)
        self.path.mkdir()
        return self

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> CheckpointWriter:
        return self.begin()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self.commit()

    def commit(self) -> Path:
        """Make the checkpoint complete and durable; returns its final folder."""
        try:
            self._commit()
        except BaseException:
            self.discard()
            raise
        return self.final

    def _commit(self) -> None:
        files = []
        for file in sorted(p for p in self.path.rglob("*") if p.is_file()):
            rel = file.relative_to(self.path).as_posix()
            if rel == MANIFEST_FILE:
                raise ValueError(f"{MANIFEST_FILE} is reserved for the harness")
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
            files.append({"path": rel, "size": file.stat().st_size, "sha256": _sha256_file(file)})
        manifest = {
            "format": MANIFEST_FORMAT,
            "step": self.step,
            "created": time.time(),
            "files": files,
            "metrics": self.metrics,
        }
        with open(self.path / MANIFEST_FILE, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        for sub in {p.parent for p in self.path.rglob("*")} | {self.path}:
            _fsync_dir(sub)
        if self.final.exists():
            # The same step saved again (a resumed run repeating its last save):
            # move the old one aside first so a crash here still leaves one whole.
            aside = (
                self.root
                / f"{_TMP_PREFIX}old-{self.final.name}-{os.getpid()}-{time.monotonic_ns()}"
            )
            os.replace(self.final, aside)
            os.replace(self.path, self.final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(self.path, self.final)
        _fsync_dir(self.root)


def _remove_dead_temporaries(root: Path) -> None:
    """Delete temporary folders whose writer process is gone (a killed save).

    Folders of live processes, this one included, may be a save or commit in
    progress and are left alone.
    """
    for entry in root.iterdir():
        if not entry.name.startswith(_TMP_PREFIX):
            continue
        match = re.search(r"-(\d+)-\d+$", entry.name)
        if match and _pid_alive(int(match.group(1))):
            continue
        shutil.rmtree(entry, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_checkpoint(
    root: Path | str,
    step: int,
    write: Callable[[Path], None],
    *,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically and return its final folder.

    ``write(folder)`` puts the checkpoint's files into ``folder`` (a temporary
    folder on the same filesystem). Each file is fsynced and hashed, the
    manifest (sizes, sha256, step, metrics) written last, the folder renamed to
    ``root/step_NNNNNNNNN`` and ``root`` fsynced.
    """
    with CheckpointWriter(Path(root), step, metrics=metrics) as w:
        write(w.path)
    return w.final


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        with open(path / MANIFEST_FILE, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    return manifest


def _complete(path: Path, manifest: Mapping[str, Any]) -> bool:
    try:
        for f in manifest["files"]:
            if (path / f["path"]).stat().st_size != int(f["size"]):
                return False
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return True


def list_checkpoints(root: Path | str) -> list[Checkpoint]:
    """Every complete checkpoint under ``root``, oldest step first.

    Completeness is the cheap check (manifest present, every file at its
    listed size); :func:`verify_checkpoint` also compares hashes.
    """
    root = Path(root)
    found = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = _STEP_DIR.match(entry.name)
        if not match or not entry.is_dir():
            continue
        manifest = _read_manifest(entry)
        if manifest is None or not _complete(entry, manifest):
            continue
        found.append(Checkpoint(step=int(match.group(1)), path=entry, manifest=manifest))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(root: Path | str) -> Checkpoint | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def verify_checkpoint(checkpoint: Checkpoint) -> list[str]:
    """Re-hash every file; return what does not match (empty when intact)."""
    problems = []
    for f in checkpoint.manifest.get("files", []):
        file = checkpoint.path / f["path"]
        if not file.is_file():
            problems.append(f"{f['path']}: missing")
        elif file.stat().st_size != int(f["size"]):
            problems.append(f"{f['path']}: size {file.stat().st_size} != {f['size']}")
        elif _sha256_file(file) != f["sha256"]:
            problems.append(f"{f['path']}: sha256 differs from the manifest")
    return problems


# --------------------------------------------------------------------------- heartbeat


def read_heartbeat(run_dir: Path | str) -> dict[str, Any] | None:
    """The training process's last heartbeat, or None if there is none yet."""
    path = Path(run_dir) / HEARTBEAT_FILE
    for _ in range(3):
        try:
            text = path.read_bytes().rstrip(b" \n\x00")
        except OSError:
            return None
        if not text:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            time.sleep(0.001)  # caught between two writes of the record
            continue
        return value if isinstance(value, dict) else None
    return None


#: Metrics whose first non-finite value the harness remembers (``nonfinite`` in
#: the heartbeat): the agent reads one heartbeat a tick and could miss that step.
NONFINITE_METRICS = ("loss", "grad_norm")


def _jsonable(value: Any) -> Any:
    """A JSON-ready value; a NaN or infinite float becomes ``"nan"``/``"inf"``/``"-inf"``.

    ``json.dumps`` would write bare ``NaN``/``Infinity``, which strict JSON
    readers (jq, JavaScript, W&B's) reject.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    item = getattr(value, "item", None)  # torch / numpy scalars
    if callable(item):
        with contextlib.suppress(Exception):
            return _jsonable(item())
    return str(value)


class Harness:
    """The supervised side of one training process.

    ``Harness()`` reads ``RUNNER_RUN_DIR`` (and ``RUNNER_CHECKPOINT_DIR``); with
    neither set and no ``run_dir`` given, heartbeats do nothing and
    :attr:`checkpoint_dir` is None until the script passes one.
    """

    def __init__(
        self,
        run_dir: Path | str | None = None,
        *,
        checkpoint_dir: Path | str | None = None,
        metrics_interval: float | None = None,
    ) -> None:
        env_run = os.environ.get(ENV_RUN_DIR)
        env_ckpt = os.environ.get(ENV_CHECKPOINT_DIR)
        self.run_dir: Path | None = Path(run_dir) if run_dir else Path(env_run) if env_run else None
        ckpt = checkpoint_dir or env_ckpt
        self.checkpoint_dir: Path | None = (
            Path(ckpt) if ckpt else self.run_dir / CHECKPOINT_DIRNAME if self.run_dir else None
        )
        if metrics_interval is None:
            metrics_interval = float(os.environ.get(ENV_METRICS_INTERVAL, "1.0"))
        self._metrics_interval = metrics_interval
        self._fd: int | None = None
        self._metrics: IO[str] | None = None
        self._stack_file: IO[str] | None = None
        self._phase = "startup"
        self._step: int | None = None
        self._last_step_time: float | None = None
        self._last_metrics_time = 0.0
        self._last_saved: int | None = None
        self._last_finite: dict[str, int] = {}
        self._nonfinite: dict[str, dict[str, Any]] = {}
        self._committer: ThreadPoolExecutor | None = None
        self._pending: Future[Path] | None = None
        self._beat_lock = threading.Lock()
        self._started = time.time()
        if self.run_dir is not None:
            self._open()

    @property
    def supervised(self) -> bool:
        """True when a run folder is known, so heartbeats are written."""
        return self.run_dir is not None

    def _open(self) -> None:
        assert self.run_dir is not None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.run_dir / HEARTBEAT_FILE, os.O_WRONLY | os.O_CREAT, 0o644)
        self._metrics = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        stacks = self.run_dir / STACKS_DIR
        stacks.mkdir(exist_ok=True)
        # SIGUSR1 makes the interpreter write every thread's stack here: the
        # agent's fallback when py-spy cannot attach. Only the main thread may
        # install signal handlers; elsewhere there is simply no fallback.
        if threading.current_thread() is threading.main_thread():
            self._stack_file = open(  # noqa: SIM115
                stacks / f"faulthandler-{os.getpid()}.txt", "a", encoding="utf-8"
            )
            with contextlib.suppress(ValueError, OSError, AttributeError):
                faulthandler.register(signal.SIGUSR1, file=self._stack_file, all_threads=True)
        self._beat({})

    def _beat(self, metrics: Mapping[str, Any]) -> None:
        with self._beat_lock:
            if self._fd is not None:
                self._write_beat(self._fd, metrics)

    def _write_beat(self, fd: int, metrics: Mapping[str, Any]) -> None:
        record: dict[str, Any] = {
            "pid": os.getpid(),
            "phase": self._phase,
            "step": self._step,
            "time": time.time(),
            "started": self._started,
            "checkpoint_step": self._last_saved,
            "metrics": {k: _jsonable(v) for k, v in metrics.items()},
        }
        if self._nonfinite:
            record["nonfinite"] = self._nonfinite
        data = json.dumps(record, separators=(",", ":")).encode()
        if len(data) >= HEARTBEAT_SIZE:
            record["metrics"] = {}
            data = json.dumps(record, separators=(",", ":")).encode()
        os.pwrite(fd, data.ljust(HEARTBEAT_SIZE - 1) + b"\n", 0)

    def step(self, step: int, **metrics: Any) -> None:
        """Report one finished optimizer step, with any metrics worth keeping.

        Conventional names the agent understands: ``loss``, ``grad_norm``,
        ``samples`` (in this step), ``data_wait`` (seconds spent waiting for the
        batch), ``step_time``. For ``loss`` and ``grad_norm`` the first step whose
        value was NaN or infinite, and the last finite step before it, are kept
        and written into every later heartbeat as ``nonfinite``
        (``{"loss": {"first": 57, "last_good": 56, "value": "nan"}}``).
        """
        now = time.time()
        self._track_nonfinite(step, metrics)
        if "step_time" not in metrics and self._last_step_time is not None:
            metrics["step_time"] = now - self._last_step_time
        self._last_step_time = now
        self._step = step
        if self._phase != "checkpoint":
            self._phase = "train"
        if self._fd is None:
            return
        self._beat(metrics)
        if self._metrics is not None and now - self._last_metrics_time >= self._metrics_interval:
            self._last_metrics_time = now
            line = {"step": step, "time": now, **{k: _jsonable(v) for k, v in metrics.items()}}
            self._metrics.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._metrics.flush()

    def _track_nonfinite(self, step: int, metrics: Mapping[str, Any]) -> None:
        for name in NONFINITE_METRICS:
            if name not in metrics or name in self._nonfinite:
                continue
            value = _jsonable(metrics[name])
            if isinstance(value, str) and value in ("nan", "inf", "-inf"):
                self._nonfinite[name] = {
                    "first": step,
                    "last_good": self._last_finite.get(name),
                    "value": value,
                }
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                self._last_finite[name] = step

    @contextlib.contextmanager
    def checkpointing(self, step: int | None = None) -> Iterator[None]:
        """Mark a checkpoint save or load: the agent allows it a longer silence."""
        previous = self._phase
        self._phase = "checkpoint"
        if step is not None:
            self._step = step
        self._beat({})
        try:
            yield
        finally:
            self._phase = previous if previous != "checkpoint" else "train"
            self._beat({})

    def _require_checkpoint_dir(self) -> Path:
        if self.checkpoint_dir is None:
            raise ValueError(
                "no checkpoint folder: pass Harness(run_dir=...) or checkpoint_dir=..., "
                f"or set {ENV_RUN_DIR}"
            )
        return self.checkpoint_dir

    def save_checkpoint(
        self,
        step: int,
        write: Callable[[Path], None],
        *,
        metrics: Mapping[str, Any] | None = None,
        wait: bool = False,
    ) -> Path:
        """Save a checkpoint into :attr:`checkpoint_dir`; returns its final folder.

        ``write(folder)`` runs now, marked as checkpointing. Making it complete
        and durable (fsync, sha256, manifest, rename) runs on a background
        thread so training goes on meanwhile; ``wait=True`` or
        :meth:`wait_for_checkpoints` blocks until it is done. Commits happen in
        step order, one at a time; a failed one is raised by the next save,
        wait or close. Pending commits finish before the interpreter exits.
        """
        root = self._require_checkpoint_dir()
        with self.checkpointing(step):
            writer = CheckpointWriter(root, step, metrics=metrics).begin()
            try:
                write(writer.path)
            except BaseException:
                writer.discard()
                raise
        self._submit(writer)
        if wait:
            self.wait_for_checkpoints()
        return writer.final

    def save_torch(
        self,
        step: int,
        state: Any,
        *,
        filename: str = "state.pt",
        metrics: Mapping[str, Any] | None = None,
        wait: bool = False,
    ) -> Path:
        """``torch.save(state)`` as a complete, atomic checkpoint; returns its folder.

        Training is blocked only for the ``torch.save`` itself (see
        :meth:`save_checkpoint` for the background commit).
        """
        import torch

        return self.save_checkpoint(
            step, lambda folder: torch.save(state, folder / filename), metrics=metrics, wait=wait
        )

    def _submit(self, writer: CheckpointWriter) -> None:
        # Keep at most one commit in flight: a slow disk then slows saving down
        # instead of piling up uncommitted checkpoints.
        self.wait_for_checkpoints()
        if self._committer is None:
            self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-commit")
        self._pending = self._committer.submit(self._commit, writer)

    def _commit(self, writer: CheckpointWriter) -> Path:
        path = writer.commit()
        self._last_saved = writer.step
        self._beat({})
        return path

    def wait_for_checkpoints(self) -> None:
        """Block until every saved checkpoint is committed; raise if one failed."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except Exception as exc:
            raise OSError(f"checkpoint could not be committed: {exc}") from exc

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest complete checkpoint in :attr:`checkpoint_dir`, or None."""
        return latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None

    def load_torch(self, checkpoint: Checkpoint, *, filename: str = "state.pt") -> Any:
        """Load ``filename`` of a checkpoint onto the CPU, marked as checkpointing."""
        import torch

        with self.checkpointing(checkpoint.step):
            return torch.load(checkpoint.path / filename, map_location="cpu", weights_only=False)

    def close(self, *, phase: str = "done") -> None:
        """Finish pending commits, write a last heartbeat with ``phase``, release the files."""
        try:
            self.wait_for_checkpoints()
        finally:
            if self._committer is not None:
                self._committer.shutdown()
                self._committer = None
            self._close_files(phase)

    def _close_files(self, phase: str) -> None:
        if self._fd is None:
            return
        self._phase = phase
        self._beat({})
        with self._beat_lock:
            os.close(self._fd)
            self._fd = None
        if self._metrics is not None:
            self._metrics.close()
        if self._stack_file is not None:
            with contextlib.suppress(ValueError, AttributeError):
                faulthandler.unregister(signal.SIGUSR1)
            self._stack_file.close()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(phase="done" if exc_type is None else "failed")


_default: Harness | None = None


def get() -> Harness:
    """The process-wide harness, configured from the environment on first use."""
    global _default
    if _default is None:
        _default = Harness()
    return _default

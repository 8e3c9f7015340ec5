"""Find complete checkpoints on disk, in the harness's layout and in the trainers' own.

Layouts (``CheckpointSpec.layout``) and what ``root`` is for each::

    harness   root/step_NNNNNNNNN/{files..., manifest.json}
              complete = the harness's manifest (written last, folder renamed into place)
    lerobot   root/NNNNNN/{pretrained_model/, training_state/}   plus root/last -> NNNNNN
    dino_wm   root/[DATE/TIME/]checkpoints/model_{epoch}.pth     (root: Hydra's outputs/ or one
              root/[DATE/TIME/]checkpoints/model_latest.pth       checkpoints/ folder)
    openpi    root/[CONFIG/EXP/]STEP/{params/, train_state/, assets/}

Only the harness marks completeness. Every other checkpoint counts as complete when

1. it has stopped changing: the sizes and mtimes of all its files are the same across scans for
   ``settle_s`` (or every mtime is already ``settle_s`` old, e.g. after the agent restarted), and
2. it passes a cheap integrity check of each file it holds (no torch import, reads headers and
   directories only): ``.safetensors`` header length + JSON header + data size; ``torch.save``
   zips (``.pt``/``.pth``/``.bin``/``.ckpt``): end-of-central-directory readable, every entry's
   local header and data inside the file; ``.json`` and orbax's ``_METADATA`` files parse; and
3. its structure is whole: LeRobot needs both sub-folders and a step not newer than ``last``
   (LeRobot moves ``last`` after the save); openpi's step folder has a plain number name (orbax
   writes ``STEP.orbax-checkpoint-tmp-*`` and renames it when done).

DINO WM's ``model_latest.pth`` is rewritten in place every epoch, so it is never a checkpoint
of its own: when its content (zip CRCs) equals a ``model_{epoch}.pth`` it is that epoch and is
skipped; otherwise it is a *snapshot* with the epoch stored in it (read from its pickle's opcodes,
never unpickled), or, failing that, its mtime (``step_source == "mtime"``). A half-overwritten
``model_latest.pth`` fails the zip check (``torch.save`` truncates first, the directory comes last).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickletools
import re
import struct
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.errors import CheckpointError
from runner.harness import MANIFEST_FILE, MANIFEST_FORMAT, list_checkpoints

__all__ = [
    "LAYOUTS",
    "Layout",
    "LocalCheckpoint",
    "LocalFile",
    "Pending",
    "Scan",
    "Scanner",
    "check_file",
    "check_safetensors",
    "check_torch_zip",
    "inspect_path",
]

Layout = Literal["harness", "lerobot", "dino_wm", "openpi"]
LAYOUTS: tuple[Layout, ...] = ("harness", "lerobot", "dino_wm", "openpi")

_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_JSON_CHECK = 16 << 20
_MAX_SAFETENSORS_HEADER = 100 << 20
_MAX_PICKLE_SCAN = 64 << 20
_DINO_EPOCH = re.compile(r"^model_(\d+)\.pth$")
_DIGITS = re.compile(r"^\d+$")
_STEP_IN_NAME = re.compile(r"(\d+)(?!.*\d)")
_IGNORED_DIRS = {".cache", ".git", "__pycache__"}
#: orbax's JSON files without a suffix (openpi checkpoints).
_JSON_NAMES = {"_CHECKPOINT_METADATA", "_METADATA"}


# ------------------------------------------------------------------------------------------------
# What a checkpoint is
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalFile:
    """One file of a checkpoint."""

    path: str
    """Relative to the checkpoint's ``base``, with ``/``."""
    size: int
    mtime_ns: int = 0
    sha256: str | None = None
    """Known without reading the file (the harness manifest); otherwise None."""


@dataclass(frozen=True)
class LocalCheckpoint:
    """A complete checkpoint on disk, whatever its layout.

    Its files are ``base / f.path``; on the Hub they go to ``checkpoints/step_NNNNNNNNN/f.path``.
    Rotation deletes ``source``: the step folder, or the single file of a DINO WM epoch.
    """

    step: int
    layout: Layout
    base: Path
    source: Path
    files: tuple[LocalFile, ...]
    metrics: Mapping[str, Any] = field(default_factory=dict)
    snapshot: bool = False
    """A copy-in-time of a file the trainer overwrites in place (``model_latest.pth``): never
    deleted locally."""
    step_source: str = "name"
    """Where ``step`` came from: ``name``, ``manifest``, ``pickle`` (the epoch stored in the
    file), ``mtime``, ``option`` (given by the user)."""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def single_file(self) -> bool:
        """One file of a folder (a DINO WM epoch), not a folder of its own."""
        return self.source != self.base

    @property
    def content_id(self) -> str:
        """Changes whenever the checkpoint's content may have: sizes and hashes where known,
        else sizes and mtimes."""
        parts = sorted(
            f"{f.path}\0{f.size}\0{f.sha256 if f.sha256 else f.mtime_ns}" for f in self.files
        )
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()

    def changed_on_disk(self) -> str | None:
        """Re-stat every file now: what differs from when it was found, or None."""
        for f in self.files:
            try:
                st = (self.base / f.path).stat()
            except OSError:
                return f"{f.path} disappeared"
            if st.st_size != f.size:
                return f"{f.path} changed size ({f.size} -> {st.st_size})"
            if f.mtime_ns and st.st_mtime_ns != f.mtime_ns:
                return f"{f.path} was rewritten"
        return None


@dataclass(frozen=True)
class Pending:
    """Something that looks like a checkpoint but is not complete (yet): and why."""

    path: Path
    reason: str
    step: int | None = None


@dataclass(frozen=True)
class Scan:
    """One look at a checkpoint folder: complete checkpoints (oldest step first) and the rest."""

    complete: tuple[LocalCheckpoint, ...]
    pending: tuple[Pending, ...] = ()

    @property
    def newest(self) -> LocalCheckpoint | None:
        return self.complete[-1] if self.complete else None


# ------------------------------------------------------------------------------------------------
# Integrity checks (cheap: headers and directories only)
# ------------------------------------------------------------------------------------------------


def check_safetensors(path: Path) -> str | None:
    """None when ``path`` is a whole safetensors file, else what is wrong.

    Layout: 8-byte little-endian header length N, N bytes of JSON, then the data; the JSON's
    largest ``data_offsets`` end must be exactly the data's size.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{size} bytes: shorter than a safetensors header"
            (length,) = struct.unpack("<Q", head)
            if length > _MAX_SAFETENSORS_HEADER or 8 + length > size:
                return f"header of {length} bytes runs past the end ({size} bytes): truncated"
            header = json.loads(f.read(length).decode("utf-8"))
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    except (ValueError, UnicodeDecodeError):
        return "header is not JSON: truncated or not safetensors"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            return f"tensor {name!r} has no valid data_offsets"
        if not 0 <= begin <= stop:
            return f"tensor {name!r} has data_offsets {begin}..{stop}"
        end = max(end, stop)
    expected = 8 + length + end
    if expected != size:
        return f"data should end at byte {expected} but the file has {size}: truncated or growing"
    return None


def check_torch_zip(path: Path) -> str | None:
    """None when ``path`` is a whole ``torch.save`` zip, else what is wrong.

    Reads the end-of-central-directory record and the directory (``zipfile``), then each
    entry's local header, and checks every entry's data lies before the directory. Legacy
    (pre-1.6, non-zip) torch files cannot be checked this cheaply and pass.
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
            if not magic:
                return "empty file"
            if magic != _ZIP_MAGIC:
                if magic[:1] == b"\x80":
                    return None  # legacy pickle format: nothing cheap to check
                return "neither a torch zip nor a legacy torch file"
            try:
                with zipfile.ZipFile(f) as zf:
                    infos = zf.infolist()
                    directory = int(zf.start_dir)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
                return f"zip directory unreadable ({exc}): truncated or still being written"
            if not infos:
                return "zip has no entries"
            for info in infos:
                f.seek(info.header_offset)
                header = f.read(30)
                if len(header) < 30 or header[:4] != _ZIP_MAGIC:
                    return f"entry {info.filename}: local header missing"
                name_len, extra_len = struct.unpack("<HH", header[26:30])
                end = info.header_offset + 30 + name_len + extra_len + info.compress_size
                if end > directory:
                    return f"entry {info.filename}: data runs past the zip directory"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if not any(i.filename.endswith("data.pkl") for i in infos):
        return "zip without data.pkl: not a torch.save file"
    return None


def check_file(path: Path) -> str | None:
    """The integrity check for one file by its kind; None when whole (or not checkable)."""
    name = path.name.lower()
    if name.endswith(".safetensors"):
        return check_safetensors(path)
    if name.endswith(_TORCH_SUFFIXES):
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc}"
        if name.endswith((".bin", ".ckpt")) and magic[:1] not in (b"P", b"\x80"):
            return None  # some other binary format that happens to use the suffix
        return check_torch_zip(path)
    if name.endswith(".json") or path.name in _JSON_NAMES:
        try:
            if path.stat().st_size > _MAX_JSON_CHECK:
                return None
            json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc}"
        except (ValueError, UnicodeDecodeError):
            return "not valid JSON: truncated or still being written"
    return None


def _zip_signature(path: Path) -> tuple[tuple[str, int, int], ...] | None:
    """Content identity of a torch zip without reading its data: (member, crc, size), with the
    archive's top folder (torch names it after the file) stripped."""
    try:
        with zipfile.ZipFile(path) as zf:
            return tuple(
                sorted(
                    (i.filename.split("/", 1)[-1], i.CRC, i.file_size)
                    for i in zf.infolist()
                    if not i.filename.endswith("/.data/serialization_id")
                )
            )
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return None


def _pickled_epoch(path: Path) -> int | None:
    """The int stored under the key ``"epoch"`` in a torch zip's ``data.pkl``, read from the
    pickle's opcodes (nothing is unpickled, nothing runs)."""
    try:
        with zipfile.ZipFile(path) as zf:
            member = next((i for i in zf.infolist() if i.filename.endswith("/data.pkl")), None)
            if member is None or member.file_size > _MAX_PICKLE_SCAN:
                return None
            data = zf.read(member)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return None
    previous: object = None
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if (
                previous == "epoch"
                and opcode.name in ("BININT", "BININT1", "BININT2", "LONG1", "INT", "LONG")
                and isinstance(arg, int)
                and not isinstance(arg, bool)
            ):
                return arg if arg >= 0 else None
            if opcode.name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                continue  # memo bookkeeping between a key and its value
            previous = arg if "UNICODE" in opcode.name or "STRING" in opcode.name else None
    except (ValueError, EOFError):  # a pickle that ends early: stop looking
        return None
    return None


# ------------------------------------------------------------------------------------------------
# Finding candidates
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """A checkpoint candidate before the completeness checks."""

    step: int
    base: Path
    source: Path
    files: tuple[LocalFile, ...]
    step_source: str = "name"
    snapshot: bool = False
    metrics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return str(self.source)

    @property
    def stat_id(self) -> tuple[tuple[str, int, int], ...]:
        return tuple((f.path, f.size, f.mtime_ns) for f in self.files)

    @property
    def newest_mtime(self) -> float:
        return max((f.mtime_ns for f in self.files), default=0) / 1e9


def _walk_files(folder: Path) -> tuple[LocalFile, ...] | None:
    """Every regular file under ``folder`` (symlinks and tool caches skipped); None if it
    vanished while walking."""
    found = []
    try:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_DIRS)
            for name in sorted(filenames):
                full = Path(dirpath) / name
                st = full.lstat()
                if not full.is_symlink() and os.path.isfile(full):
                    rel = full.relative_to(folder).as_posix()
                    found.append(LocalFile(rel, st.st_size, st.st_mtime_ns))
    except OSError:
        return None
    if not folder.is_dir():
        return None
    return tuple(found)


def _single_file(path: Path) -> tuple[LocalFile, ...] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (LocalFile(path.name, st.st_size, st.st_mtime_ns),)


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def _lerobot_units(root: Path) -> list[_Unit]:
    units = []
    for folder in _subdirs(root):
        if not _DIGITS.match(folder.name):
            continue
        files = _walk_files(folder)
        if files is not None:
            units.append(_Unit(int(folder.name), folder, folder, files))
    return units


def _openpi_units(root: Path) -> list[_Unit]:
    """STEP folders directly under ``root`` (root = the experiment folder) or two levels down
    (root = openpi's ``checkpoints/``); for the same step twice, the newest wins."""
    steps = [p for p in _subdirs(root) if _DIGITS.match(p.name)]
    if not steps:
        steps = [
            p
            for config in _subdirs(root)
            for exp in _subdirs(config)
            for p in _subdirs(exp)
            if _DIGITS.match(p.name)
        ]
    units: dict[int, _Unit] = {}
    for folder in steps:
        files = _walk_files(folder)
        if files is None:
            continue
        unit = _Unit(int(folder.name), folder, folder, files)
        old = units.get(unit.step)
        if old is None or unit.newest_mtime > old.newest_mtime:
            units[unit.step] = unit
    return list(units.values())


def _dino_folders(root: Path) -> list[Path]:
    """Folders holding ``model_*.pth``: ``root`` itself, ``root/checkpoints`` or Hydra's
    ``root/DATE/TIME/checkpoints`` (and ``root/TIME/checkpoints``), oldest first."""
    candidates = [root, root / "checkpoints"]
    for first in _subdirs(root):
        candidates.append(first / "checkpoints")
        candidates.extend(second / "checkpoints" for second in _subdirs(first))
    found = []
    for folder in candidates:
        try:
            if folder.is_dir() and any(p.name.startswith("model_") for p in folder.iterdir()):
                found.append(folder)
        except OSError:
            continue
    return sorted(set(found), key=lambda p: str(p))


def _dino_units(root: Path) -> tuple[list[_Unit], list[_Unit]]:
    """(epoch files, model_latest.pth files); an epoch in several output folders: newest wins."""
    epochs: dict[int, _Unit] = {}
    latest: list[_Unit] = []
    for folder in _dino_folders(root):
        try:
            names = sorted(p.name for p in folder.iterdir())
        except OSError:
            continue
        for name in names:
            path = folder / name
            files = _single_file(path) if path.is_file() else None
            if files is None:
                continue
            match = _DINO_EPOCH.match(name)
            if match:
                unit = _Unit(int(match.group(1)), folder, path, files)
                old = epochs.get(unit.step)
                if old is None or unit.newest_mtime > old.newest_mtime:
                    epochs[unit.step] = unit
            elif name == "model_latest.pth":
                latest.append(_Unit(-1, folder, path, files, snapshot=True))
    return list(epochs.values()), latest


# ------------------------------------------------------------------------------------------------
# The scanner
# ------------------------------------------------------------------------------------------------


class Scanner:
    """Finds complete checkpoints under ``root``, remembering what it saw between scans.

    Args:
        layout: one of :data:`LAYOUTS`.
        root: the checkpoint folder (see the module docstring for each layout).
        settle_s: how long a foreign checkpoint must stay unchanged before it counts.
        clock: wall-clock seconds (``time.time``); tests pass a fake one.
    """

    def __init__(
        self,
        layout: Layout,
        root: Path | str,
        *,
        settle_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if layout not in LAYOUTS:
            raise CheckpointError(
                f"unknown checkpoint layout {layout!r}; use one of {', '.join(LAYOUTS)}"
            )
        self.layout: Layout = layout
        self.root = Path(root)
        self.settle_s = settle_s
        self._clock = clock
        self._seen: dict[str, tuple[tuple[tuple[str, int, int], ...], float]] = {}
        self._checked: dict[tuple[str, tuple[tuple[str, int, int], ...]], str | None] = {}
        self._signatures: dict[
            tuple[str, tuple[tuple[str, int, int], ...]], tuple[tuple[str, int, int], ...] | None
        ] = {}

    def scan(self) -> Scan:
        """Look once. Never raises for what is on disk: problems become :class:`Pending`."""
        if self.layout == "harness":
            return self._scan_harness()
        now = self._clock()
        pending: list[Pending] = []
        complete: list[LocalCheckpoint] = []
        latest: list[_Unit] = []
        if self.layout == "lerobot":
            units = _lerobot_units(self.root)
        elif self.layout == "openpi":
            units = _openpi_units(self.root)
        else:
            units, latest = _dino_units(self.root)
        last_step = self._lerobot_last() if self.layout == "lerobot" else None
        present = {u.key for u in units} | {u.key for u in latest}
        for key in list(self._seen):
            if key not in present:
                self._seen.pop(key)
        self._checked = {k: v for k, v in self._checked.items() if k[0] in present}
        self._signatures = {k: v for k, v in self._signatures.items() if k[0] in present}

        for unit in sorted(units, key=lambda u: u.step):
            reason = self._settling(unit, now)
            if reason is None and last_step is not None and unit.step > last_step:
                reason = f"newer than `last` (step {last_step}): LeRobot is still saving it"
            if reason is None:
                reason = self._integrity(unit)
            if reason is not None:
                pending.append(Pending(unit.source, reason, unit.step))
            else:
                complete.append(self._complete(unit))
        by_folder: dict[Path, list[LocalCheckpoint]] = {}
        for c in complete:
            by_folder.setdefault(c.base, []).append(c)
        for unit in latest:
            found = self._snapshot(unit, now, by_folder.get(unit.base, []))
            if isinstance(found, Pending):
                pending.append(found)
            elif found is not None and found.step not in {c.step for c in complete}:
                complete.append(found)
        complete.sort(key=lambda c: (c.step, c.snapshot))
        return Scan(tuple(complete), tuple(pending))

    def _scan_harness(self) -> Scan:
        found = []
        for ck in list_checkpoints(self.root):
            try:
                files = []
                for f in ck.manifest.get("files", []):
                    st = (ck.path / str(f["path"])).stat()
                    sha = str(f.get("sha256") or "") or None
                    files.append(LocalFile(str(f["path"]), int(f["size"]), st.st_mtime_ns, sha))
                st = (ck.path / MANIFEST_FILE).stat()
            except (OSError, KeyError, TypeError, ValueError):
                continue  # rotated away between the listing and now
            files.append(LocalFile(MANIFEST_FILE, st.st_size, st.st_mtime_ns, None))
            metrics = ck.manifest.get("metrics") or {}
            found.append(
                LocalCheckpoint(
                    step=ck.step,
                    layout="harness",
                    base=ck.path,
                    source=ck.path,
                    files=tuple(files),
                    metrics=dict(metrics) if isinstance(metrics, dict) else {},
                    step_source="name",
                )
            )
        pending = []
        try:
            for entry in self.root.iterdir():
                if entry.name.startswith(".tmp-step_"):
                    pending.append(Pending(entry, "a save in progress (or a killed one)"))
        except OSError:
            pass
        return Scan(tuple(found), tuple(pending))

    def _settling(self, unit: _Unit, now: float) -> str | None:
        if not unit.files:
            return "empty folder"
        seen = self._seen.get(unit.key)
        if seen is None or seen[0] != unit.stat_id:
            self._seen[unit.key] = (unit.stat_id, now)
            quiet = 0.0
        else:
            quiet = now - seen[1]
        if quiet >= self.settle_s or now - unit.newest_mtime >= self.settle_s:
            return None
        return f"changed {now - unit.newest_mtime:.0f} s ago: waiting {self.settle_s:g} s to settle"

    def _integrity(self, unit: _Unit) -> str | None:
        key = (unit.key, unit.stat_id)
        if key in self._checked:
            return self._checked[key]
        problem = self._structure(unit)
        if problem is None:
            for f in unit.files:
                issue = check_file(unit.base / f.path)
                if issue is not None:
                    problem = f"{f.path}: {issue}"
                    break
        self._checked[key] = problem
        return problem

    def _structure(self, unit: _Unit) -> str | None:
        if self.layout == "lerobot":
            names = {f.path.split("/", 1)[0] for f in unit.files if "/" in f.path}
            missing = [d for d in ("pretrained_model", "training_state") if d not in names]
            if missing:
                return f"no {' or '.join(missing)}/ yet"
        return None

    def _lerobot_last(self) -> int | None:
        last = self.root / "last"
        try:
            target = os.readlink(last) if last.is_symlink() else None
        except OSError:
            return None
        if target is None:
            return None
        name = Path(target).name
        return int(name) if _DIGITS.match(name) else None

    def _complete(self, unit: _Unit) -> LocalCheckpoint:
        return LocalCheckpoint(
            step=unit.step,
            layout=self.layout,
            base=unit.base,
            source=unit.source,
            files=unit.files,
            metrics=unit.metrics,
            snapshot=unit.snapshot,
            step_source=unit.step_source,
        )

    def _signature(
        self, path: Path, stat_id: tuple[tuple[str, int, int], ...]
    ) -> tuple[tuple[str, int, int], ...] | None:
        key = (str(path), stat_id)
        if key not in self._signatures:
            self._signatures[key] = _zip_signature(path)
        return self._signatures[key]

    def _snapshot(
        self, unit: _Unit, now: float, epochs: Iterable[LocalCheckpoint]
    ) -> LocalCheckpoint | Pending | None:
        """``model_latest.pth``: skipped when it equals an epoch file; else a snapshot."""
        reason = self._settling(unit, now) or self._integrity(unit)
        if reason is not None:
            return Pending(unit.source, reason)
        signature = self._signature(unit.source, unit.stat_id)
        for ck in sorted(epochs, key=lambda c: -c.step):
            if ck.size != unit.files[0].size:
                continue
            stat_id = tuple((f.path, f.size, f.mtime_ns) for f in ck.files)
            if self._signature(ck.source, stat_id) == signature:
                return None  # the same content as model_{epoch}.pth: pushed as that epoch
        epoch = _pickled_epoch(unit.source)
        if epoch is not None:
            step, source = epoch, "pickle"
        else:
            step, source = int(unit.newest_mtime), "mtime"
        return LocalCheckpoint(
            step=step,
            layout=self.layout,
            base=unit.base,
            source=unit.source,
            files=unit.files,
            snapshot=True,
            step_source=source,
        )


# ------------------------------------------------------------------------------------------------
# A folder named by the user (``runner push PATH``)
# ------------------------------------------------------------------------------------------------


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT:
        return manifest
    return None


def _step_from_name(name: str) -> int | None:
    match = _STEP_IN_NAME.search(name)
    return int(match.group(1)) if match else None


def inspect_path(path: Path | str, *, step: int | None = None) -> LocalCheckpoint:
    """A checkpoint folder (or one checkpoint file) named by the user, checked for integrity.

    The step is ``step`` if given, else the harness manifest's, else the last number in the
    name (``step_000000100``, ``006000``, ``model_12.pth``, ``checkpoint-500``), else LeRobot's
    ``training_state/training_step.json``.

    Raises:
        CheckpointError: the path is missing or empty, a file fails its integrity check, a
            harness manifest does not match the files, or no step can be found.
    """
    path = Path(path).absolute()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    layout: Layout
    if path.is_file():
        files = _single_file(path) or ()
        base, layout, manifest = path.parent, "dino_wm", None
    else:
        files = _walk_files(path) or ()
        base, manifest = path, _read_manifest(path)
        if manifest is not None:
            layout = "harness"
        elif (path / "pretrained_model").is_dir():
            layout = "lerobot"
        else:
            layout = "openpi"
    if not files:
        raise CheckpointError(f"{path} holds no files to push")
    problems = []
    sha: dict[str, str] = {}
    if manifest is not None:
        by_path = {f.path: f for f in files}
        for entry in manifest.get("files", []):
            local = by_path.get(str(entry.get("path")))
            if local is None:
                problems.append(f"{entry.get('path')}: listed in the manifest but missing")
            elif local.size != int(entry.get("size", -1)):
                problems.append(f"{local.path}: {local.size} bytes, manifest says {entry['size']}")
            elif entry.get("sha256"):
                sha[local.path] = str(entry["sha256"])
    for f in files:
        if f.path in sha:
            continue  # the harness manifest vouches for it (size checked above)
        issue = check_file(base / f.path)
        if issue is not None:
            problems.append(f"{f.path}: {issue}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{path} is not a complete checkpoint: {problems[0]}{more}")
    step_source = "option"
    if step is None and manifest is not None and isinstance(manifest.get("step"), int):
        step, step_source = int(manifest["step"]), "manifest"
    if step is None:
        step, step_source = _step_from_name(path.name), "name"
    if step is None and path.is_dir():
        try:
            state = json.loads((path / "training_state" / "training_step.json").read_text())
            step, step_source = int(state["step"]), "manifest"
        except (OSError, ValueError, KeyError, TypeError):
            step = None
    if step is None or step < 0:
        raise CheckpointError(f"cannot tell the step of {path}; pass --step N")
    metrics = manifest.get("metrics") if manifest is not None else None
    return LocalCheckpoint(
        step=step,
        layout=layout,
        base=base,
        source=path,
        files=tuple(LocalFile(f.path, f.size, f.mtime_ns, sha.get(f.path)) for f in files),
        metrics=dict(metrics) if isinstance(metrics, dict) else {},
        step_source=step_source,
    )

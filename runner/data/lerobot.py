"""The LeRobot v3.0 dataset layout (act_so101, smolvla_so101, pi0_so101): check it, and
synthesise small ones.

A dataset folder holds (facts from LeRobot 0.6.1, ``lerobot/datasets/utils.py``,
``dataset_metadata.py``, ``dataset_writer.py``, ``io_utils.py``, ``compute_stats.py``)::

    meta/info.json      codebase_version "v3.0", fps, features {name: {dtype, shape, names}},
                        total_episodes, total_frames, total_tasks, chunks_size, file size
                        limits, data_path and video_path templates, robot_type, splits
    meta/stats.json     {feature: {min, max, mean, std, count, q01, q10, q50, q90, q99}}
    meta/tasks.parquet  one row per task: task_index, and the task string as the pandas index
    meta/episodes/chunk-000/file-000.parquet
                        one row per episode: episode_index, tasks, length, data/chunk_index,
                        data/file_index, dataset_from_index, dataset_to_index,
                        videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp},
                        stats/<feature>/<stat>, meta/episodes/{chunk_index,file_index}
    data/chunk-000/file-000.parquet
                        one row per frame, one column per non-video feature (images as
                        PNG bytes in a struct<bytes, path>), episodes in order
    videos/<key>/chunk-000/file-000.mp4
                        for every feature of dtype "video"

:func:`check_lerobot` checks it with the standard library alone (JSON, names, sizes, magic
bytes); when pyarrow is importable it also reads the parquet footers and the small integer
columns (row counts, columns, episode and frame indices), never image data.
:func:`synth_lerobot` writes a small synthetic SO-101 pick-and-place dataset (needs pyarrow).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import string
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from runner.data._staging import check_new_folder, write_staged
from runner.data.franka import Problem
from runner.errors import DatasetError, UsageError, missing_dependency

__all__ = [
    "CODEBASE_VERSION",
    "SO101_JOINTS",
    "Feature",
    "LeRobotReport",
    "check",
    "check_lerobot",
    "synth",
    "synth_lerobot",
]

#: The only dataset format LeRobot 0.6.1 reads (``dataset_metadata.py`` CODEBASE_VERSION).
CODEBASE_VERSION = "v3.0"
#: SO-101 follower joints, as ``so_follower.py`` names them (``f"{motor}.pos"``).
SO101_JOINTS = (
    "shoulder_pan.pos",
    "shoulder_lift.pos",
    "elbow_flex.pos",
    "wrist_flex.pos",
    "wrist_roll.pos",
    "gripper.pos",
)

INFO = "meta/info.json"
STATS = "meta/stats.json"
TASKS = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
EPISODES_PATH = EPISODES_DIR + "/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
#: Columns LeRobot adds to every dataset (``utils/constants.py`` DEFAULT_FEATURES).
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
#: Quantiles in stats.json (``compute_stats.py`` DEFAULT_QUANTILES -> keys q01 ... q99).
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
_STAT_KEYS = ("min", "max", "mean", "std", "count", *(f"q{round(q * 100):02d}" for q in QUANTILES))
_CAMERA_DTYPES = ("image", "video")
_TEXT_DTYPES = ("string", "language")
_NUMERIC_DTYPES = frozenset(
    {"bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64"}
    | {"uint8", "uint16", "uint32", "uint64"}
)
_EPISODE_COLUMNS = (
    "episode_index",
    "length",
    "data/chunk_index",
    "data/file_index",
    "dataset_from_index",
    "dataset_to_index",
)
_VIDEO_COLUMNS = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
_INDEX_COLUMNS = ("episode_index", "index", "task_index")
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Feature:
    """One entry of meta/info.json's features."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def is_camera(self) -> bool:
        return self.dtype in _CAMERA_DTYPES


@dataclass(frozen=True)
class LeRobotReport:
    """What :func:`check_lerobot` found.

    Fields are ``None`` when meta/info.json is missing or does not define them.
    """

    path: Path
    codebase_version: str | None
    fps: int | None
    #: total_episodes and total_frames as meta/info.json declares them.
    n_episodes: int | None
    total_frames: int | None
    #: The well-formed features of meta/info.json, in its order.
    features: tuple[Feature, ...]
    #: Whether pyarrow was there to read the parquet footers and index columns; without
    #: it the parquet files were checked by name, size and magic bytes only.
    parquet_read: bool
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def cameras(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.is_camera)

    def feature(self, name: str) -> Feature | None:
        return next((f for f in self.features if f.name == name), None)


# -- checks --------------------------------------------------------------------------------------


@dataclass
class _Info:
    """The parts of meta/info.json the file checks need (defaults where it lacks them)."""

    version: str | None = None
    fps: int | None = None
    features: tuple[Feature, ...] = ()
    total_episodes: int | None = None
    total_frames: int | None = None
    total_tasks: int | None = None
    data_path: str = DATA_PATH
    video_path: str | None = VIDEO_PATH
    #: Every name in info.json's features, well-formed or not; None without a features
    #: object (then the columns cannot be checked).
    declared: frozenset[str] | None = None

    @property
    def video_keys(self) -> list[str]:
        return [f.name for f in self.features if f.dtype == "video"]


def check_lerobot(path: Path) -> LeRobotReport:
    """Check a LeRobot v3.0 dataset folder and report every problem, not just the first.

    Without pyarrow: meta/info.json (every field LeRobot reads), meta/stats.json (an entry
    of the right size per feature), and the presence, size and magic bytes of
    meta/tasks.parquet, meta/episodes/, data/ and videos/<key>/ for each video feature.
    With pyarrow, also each parquet footer and the small integer columns: row counts
    against total_frames/total_episodes/total_tasks, columns against the features, episode
    and frame indices contiguous, every file the episodes point at present. Image and video
    data are never read. Raises :class:`DatasetError` only when ``path`` is not a folder.
    """
    root = Path(path)
    if not root.exists():
        raise DatasetError(
            f"no dataset at {root}; point at the folder that holds meta/info.json, "
            f"or make one with `runner data synth`"
        )
    if not root.is_dir():
        raise DatasetError(f"{root} is a file; point at the dataset folder that holds it")
    problems: list[Problem] = []
    info = _read_info(root, problems)
    _check_stats(root, info, problems)
    data_files = _check_files(root, info, problems)
    pq = _parquet()
    if pq is not None:
        _check_parquet(pq, root, info, data_files, problems)
    return LeRobotReport(
        path=root,
        codebase_version=info.version,
        fps=info.fps,
        n_episodes=info.total_episodes,
        total_frames=info.total_frames,
        features=info.features,
        parquet_read=pq is not None,
        problems=tuple(problems),
    )


def _parquet() -> ModuleType | None:
    """``pyarrow.parquet``, or ``None`` when pyarrow is not installed."""
    try:
        return importlib.import_module("pyarrow.parquet")
    except ImportError:
        return None


def _read_json(root: Path, name: str, fix: str, problems: list[Problem]) -> Any:
    path = root / name
    if not path.is_file():
        problems.append(Problem(name, f"{'missing' if not path.exists() else 'not a file'}; {fix}"))
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        problems.append(Problem(name, f"not valid JSON ({exc}); {fix}"))
        return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_info(root: Path, problems: list[Problem]) -> _Info:
    info = _Info()
    raw = _read_json(
        root, INFO, "every LeRobot dataset has one (LeRobotDataset.create writes it)", problems
    )
    if raw is None:
        return info
    if not isinstance(raw, dict):
        problems.append(Problem(INFO, f"holds a JSON {type(raw).__name__}, expected an object"))
        return info

    def bad(message: str) -> None:
        problems.append(Problem(INFO, message))

    version = raw.get("codebase_version")
    if version is None:
        bad(f"has no codebase_version; LeRobot 0.6.1 reads only {CODEBASE_VERSION!r} datasets")
    elif version != CODEBASE_VERSION:
        info.version = str(version)
        if isinstance(version, str) and version.startswith("v2"):
            bad(
                f"codebase_version is {version!r}, expected {CODEBASE_VERSION!r} (LeRobot 0.6.1 "
                f"reads only v3.0); convert it with "
                f"`python -m lerobot.scripts.convert_dataset_v21_to_v30 --repo-id=REPO`"
            )
        else:
            bad(f"codebase_version is {version!r}, expected {CODEBASE_VERSION!r}")
    else:
        info.version = version

    def count(key: str, minimum: int) -> int | None:
        value = raw.get(key)
        if value is None:
            bad(f"has no {key}")
        elif not _is_int(value) or value < minimum:
            bad(f"{key} is {value!r}, expected an integer >= {minimum}")
        else:
            return int(value)
        return None

    info.fps = count("fps", 1)
    info.total_episodes = count("total_episodes", 0)
    info.total_frames = count("total_frames", 0)
    info.total_tasks = count("total_tasks", 0)
    if "chunks_size" in raw:  # absent, LeRobot takes its default (1000)
        count("chunks_size", 1)
    for key in ("data_files_size_in_mb", "video_files_size_in_mb"):
        value = raw.get(key)  # optional: LeRobot defaults them
        if value is not None and not (_is_int(value) and value > 0):
            bad(f"{key} is {value!r}, expected a positive integer")

    info.features = _read_features(raw.get("features"), bad)
    if isinstance(raw.get("features"), dict):
        info.declared = frozenset(raw["features"])
    info.data_path = _template(raw, "data_path", DATA_PATH, ("chunk_index", "file_index"), bad)
    video_keys = info.video_keys
    if "video_path" in raw and raw["video_path"] is None:  # as LeRobot writes it without videos
        info.video_path = None
        if video_keys:
            bad(
                f"video_path is null but {_names(video_keys)} "
                f"{'is a video feature' if len(video_keys) == 1 else 'are video features'}; "
                f"set it to {VIDEO_PATH!r}"
            )
    else:
        info.video_path = _template(
            raw, "video_path", VIDEO_PATH, ("video_key", "chunk_index", "file_index"), bad
        )
    return info


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _read_features(raw: object, bad: Callable[[str], None]) -> tuple[Feature, ...]:
    if raw is None:
        bad("has no features")
        return ()
    if not isinstance(raw, dict):
        bad(f"features is a JSON {type(raw).__name__}, expected an object")
        return ()
    features: list[Feature] = []
    for name, spec in raw.items():
        where = f"features[{name!r}]"
        if "/" in name:
            bad(f"{where}: feature names must not contain '/' (LeRobot refuses them)")
        if not isinstance(spec, dict):
            bad(f"{where} is a JSON {type(spec).__name__}, expected an object")
            continue
        dtype, shape, ok = spec.get("dtype"), spec.get("shape"), True
        dims: tuple[int, ...] = ()
        if "names" not in spec:
            bad(f"{where} has no names (a list, an object, or null)")
        elif spec["names"] is not None and not isinstance(spec["names"], (list, dict)):
            bad(f"{where} names is {_short(spec['names'])}, expected a list, an object or null")
        if not isinstance(dtype, str):
            bad(f"{where} has no dtype" if dtype is None else f"{where} dtype is {dtype!r}")
            ok = False
        elif dtype not in _NUMERIC_DTYPES | set(_CAMERA_DTYPES) | set(_TEXT_DTYPES):
            bad(f"{where} dtype is {dtype!r}, not one LeRobot knows")
            ok = False
        if not (isinstance(shape, list) and shape and all(_is_int(n) and n > 0 for n in shape)):
            bad(f"{where} shape is {_short(shape)}, expected a list of positive integers")
            ok = False
        else:
            dims = tuple(int(n) for n in shape)
        if dims and dtype in _CAMERA_DTYPES and (len(dims) != 3 or dims[2] not in (1, 3)):
            bad(f"{where} shape is {shape}, expected [height, width, channels], 1 or 3 channels")
            ok = False
        names = spec.get("names")
        if dims and _is_vector(spec) and isinstance(names, list) and len(names) != dims[0]:
            bad(f"{where} has {len(names)} names for shape {shape}")
        if ok:
            features.append(Feature(name, str(dtype), dims))
    missing = [name for name in DEFAULT_FEATURES if name not in raw]
    if missing:
        bad(
            f"features lack {_names(missing)}; LeRobot adds timestamp, frame_index, "
            f"episode_index, index and task_index to every dataset"
        )
    if "action" not in raw:
        bad("features have no 'action'; LeRobot policies train to predict it")
    return tuple(features)


def _is_vector(spec: Mapping[str, Any]) -> bool:
    """A numeric feature of one dimension (a vector, or a scalar as shape [1])."""
    shape = spec.get("shape")
    return spec.get("dtype") in _NUMERIC_DTYPES and isinstance(shape, list) and len(shape) == 1


def _template(
    raw: Mapping[str, Any],
    key: str,
    default: str,
    fields: Sequence[str],
    bad: Callable[[str], None],
) -> str:
    """A path template of info.json, checked to name exactly ``fields``; else the default
    (which LeRobot's DatasetInfo also takes when the key is absent)."""
    if key not in raw:
        return default
    value = raw[key]
    if not isinstance(value, str):
        bad(f"{key} is {_short(value)}, expected a string like {default!r}")
        return default
    try:
        named = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        value.format(**dict.fromkeys(fields, 0))
    except (ValueError, KeyError, IndexError):
        named = None
    if named != set(fields):
        bad(f"{key} is {value!r}, expected a template of {_names(fields)} like {default!r}")
        return default
    if value.startswith("/") or ".." in value.split("/"):
        bad(f"{key} is {value!r}, expected a path inside the dataset like {default!r}")
        return default
    return value


def _glob_of(template: str, **known: str) -> str:
    """The glob pattern of a path template: known fields filled in, the others ``*``."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.sub(r"([*?\[])", r"[\1]", literal))
        if name is not None:
            parts.append(known.get(name, "*"))
    return "".join(parts)


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_stats(root: Path, info: _Info, problems: list[Problem]) -> None:
    stats = _read_json(
        root, STATS, "lerobot-train normalises with it; LeRobot writes it with the data", problems
    )
    if stats is None:
        return
    if not isinstance(stats, dict):
        problems.append(Problem(STATS, f"holds a JSON {type(stats).__name__}, expected an object"))
        return
    for feature in info.features:
        if feature.dtype in _TEXT_DTYPES:
            continue
        entry = stats.get(feature.name)
        if not isinstance(entry, dict):
            problems.append(
                Problem(STATS, f"has no stats for {feature.name!r}; lerobot-train needs them")
            )
            continue
        missing = [key for key in ("min", "max", "mean", "std") if key not in entry]
        if missing:
            problems.append(Problem(STATS, f"{feature.name!r} lacks {', '.join(missing)}"))
        expected = (feature.shape[2], 1, 1) if feature.is_camera else feature.shape
        for key in ("min", "max", "mean", "std"):
            if key not in entry:
                continue
            try:
                value = np.asarray(entry[key], dtype=np.float64)
            except (TypeError, ValueError):
                problems.append(Problem(STATS, f"{feature.name!r} {key} is not numbers"))
                continue
            if value.size != math.prod(expected) or (feature.is_camera and value.ndim != 3):
                problems.append(
                    Problem(
                        STATS,
                        f"{feature.name!r} {key} has shape {list(value.shape)}, expected "
                        f"{list(expected)}",
                    )
                )
            elif not np.isfinite(value).all():
                problems.append(Problem(STATS, f"{feature.name!r} {key} holds NaN or inf"))


def _check_magic(root: Path, rel: str, problems: list[Problem]) -> bool:
    """A parquet file starts and ends with PAR1; an MP4 has its ftyp box first."""
    path = root / rel
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if rel.endswith(".parquet") and size >= 12:
                fh.seek(-4, os.SEEK_END)
                tail = fh.read(4)
    except OSError as exc:
        problems.append(Problem(rel, f"unreadable ({exc.strerror or exc})"))
        return False
    if size == 0:
        problems.append(Problem(rel, "is empty"))
        return False
    if rel.endswith(".parquet"):
        if size < 12 or head[:4] != b"PAR1" or tail != b"PAR1":
            problems.append(Problem(rel, "is not a parquet file (truncated or overwritten?)"))
            return False
    elif head[4:8] != b"ftyp":
        problems.append(Problem(rel, "is not an MP4 file (no ftyp box at the start)"))
        return False
    return True


def _matching(root: Path, pattern: str) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.glob(pattern) if p.is_file())


def _check_files(root: Path, info: _Info, problems: list[Problem]) -> list[str]:
    """Presence and magic bytes of every file; returns the data files (relative, sorted)."""
    tasks = root / TASKS
    if not tasks.is_file():
        problems.append(Problem(TASKS, "missing; LeRobot reads the task strings from it"))
    else:
        _check_magic(root, TASKS, problems)

    episodes = _matching(root, _glob_of(EPISODES_PATH))
    if not episodes:
        problems.append(
            Problem(
                f"{EPISODES_DIR}/",
                "has no chunk-*/file-*.parquet; LeRobot reads each episode's length and "
                "file from them",
            )
        )
    for rel in episodes:
        _check_magic(root, rel, problems)

    data = _matching(root, _glob_of(info.data_path))
    if not data:
        where = info.data_path.split("/", 1)[0] + "/"
        problems.append(Problem(where, f"has no parquet files ({_glob_of(info.data_path)})"))
    data = [rel for rel in data if _check_magic(root, rel, problems)]

    if info.video_path is not None:
        for key in info.video_keys:
            pattern = _glob_of(info.video_path, video_key=key)
            videos = _matching(root, pattern)
            if not videos:
                where = info.video_path.format(video_key=key, chunk_index=0, file_index=0)
                problems.append(
                    Problem(
                        where.rsplit("/", 2)[0] + "/",
                        f"no video for the video feature {key!r} ({pattern})",
                    )
                )
            for rel in videos:
                _check_magic(root, rel, problems)
    return data


def _check_parquet(
    pq: ModuleType, root: Path, info: _Info, data_files: list[str], problems: list[Problem]
) -> None:
    """Footers and integer columns of the parquet files (pyarrow only)."""
    columns = [f for f in info.features if f.dtype != "video"]

    # data/: rows, columns, and the episode/frame/task indices in file order.
    total_rows = 0
    index_parts: dict[str, list[np.ndarray]] = {name: [] for name in _INDEX_COLUMNS}
    rows_by_file: dict[str, np.ndarray] = {}
    for rel in data_files:
        table = _read(
            pq, root, rel, problems, wanted=_INDEX_COLUMNS, schema=columns, declared=info.declared
        )
        if table is None:
            continue
        total_rows += table.num_rows
        for name in _INDEX_COLUMNS:
            if name in table.column_names:
                index_parts[name].append(table.column(name).to_numpy())
        if "episode_index" in table.column_names:
            rows_by_file[rel] = table.column("episode_index").to_numpy()
    if info.total_frames is not None and data_files and total_rows != info.total_frames:
        problems.append(
            Problem(
                _dir_of(data_files),
                f"the parquet files hold {total_rows} frames but {INFO} total_frames is "
                f"{info.total_frames}",
            )
        )

    ep_frames: dict[int, int] = {}
    if index_parts["episode_index"] and len(index_parts["episode_index"]) == len(data_files):
        episode_index = np.concatenate(index_parts["episode_index"])
        ep_frames = _check_episode_runs(episode_index, info, _dir_of(data_files), problems)
    if index_parts["index"] and len(index_parts["index"]) == len(data_files):
        index = np.concatenate(index_parts["index"])
        if not np.array_equal(index, np.arange(len(index))):
            first = int(np.flatnonzero(index != np.arange(len(index)))[0])
            problems.append(
                Problem(
                    _dir_of(data_files),
                    f"the index column is not 0, 1, 2, ... in file order (row {first} has "
                    f"{int(index[first])})",
                )
            )

    n_tasks = _check_tasks(pq, root, problems)
    if n_tasks is not None and info.total_tasks is not None and n_tasks != info.total_tasks:
        problems.append(
            Problem(TASKS, f"has {n_tasks} tasks but {INFO} total_tasks is {info.total_tasks}")
        )
    if n_tasks is not None and index_parts["task_index"]:
        task_index = np.concatenate(index_parts["task_index"])
        if len(task_index) and (task_index.min() < 0 or task_index.max() >= n_tasks):
            problems.append(
                Problem(
                    _dir_of(data_files),
                    f"task_index runs {int(task_index.min())}..{int(task_index.max())} but "
                    f"{TASKS} has {n_tasks} tasks",
                )
            )

    _check_episodes(pq, root, info, data_files, rows_by_file, ep_frames, problems)


def _dir_of(files: list[str]) -> str:
    return files[0].split("/", 1)[0] + "/" if files else "data/"


def _read(
    pq: ModuleType,
    root: Path,
    rel: str,
    problems: list[Problem],
    *,
    wanted: Sequence[str],
    schema: Sequence[Feature] | None = None,
    declared: frozenset[str] | None = None,
) -> Any:
    """The ``wanted`` columns of a parquet file (those it has), after checking its columns
    against the features ``schema`` (of the ``declared`` names) when given; ``None`` with a
    problem recorded when pyarrow cannot read it."""
    try:
        pfile = pq.ParquetFile(root / rel)
        names = list(pfile.schema_arrow.names)
        if schema is not None and declared is not None:
            _check_columns(pfile.schema_arrow, schema, declared, rel, problems)
        return pfile.read(columns=[n for n in wanted if n in names])
    except Exception as exc:
        # pyarrow raises ArrowInvalid, OSError and more for a damaged file: all unreadable.
        problems.append(Problem(rel, f"unreadable parquet ({type(exc).__name__}: {exc})"))
        return None


def _check_columns(
    schema: Any,
    features: Sequence[Feature],
    declared: frozenset[str],
    rel: str,
    problems: list[Problem],
) -> None:
    """Columns against the (well-formed, non-video) features; ``declared`` names them all."""
    names = list(schema.names)
    missing = [f.name for f in features if f.name not in names]
    if missing:
        problems.append(Problem(rel, f"has no column for the feature(s) {_names(missing)}"))
    extra = [n for n in names if n not in declared]
    if extra:
        problems.append(
            Problem(rel, f"has column(s) {_names(extra)} that {INFO} features do not declare")
        )
    for feature in features:
        if feature.name not in names:
            continue
        arrow_type = schema.field(feature.name).type
        text = str(arrow_type)
        if feature.dtype == "image":
            if not text.startswith("struct<") or "bytes" not in text:
                problems.append(
                    Problem(
                        rel,
                        f"column {feature.name!r} is {text}, expected struct<bytes, path> "
                        f"(an image feature)",
                    )
                )
        elif feature.dtype in _NUMERIC_DTYPES and len(feature.shape) == 1:
            size = getattr(arrow_type, "list_size", None)
            if feature.shape == (1,) and text.startswith(("list<", "fixed_size_list<")):
                problems.append(
                    Problem(rel, f"column {feature.name!r} is {text}, expected one value per row")
                )
            elif feature.shape != (1,) and size is not None and size != feature.shape[0]:
                problems.append(
                    Problem(
                        rel,
                        f"column {feature.name!r} holds {size} values per frame but {INFO} "
                        f"shape is {list(feature.shape)}",
                    )
                )


def _check_episode_runs(
    episode_index: np.ndarray, info: _Info, where: str, problems: list[Problem]
) -> dict[int, int]:
    """Each episode's frames form one run, in episode order; returns frames per episode."""
    if not len(episode_index):
        return {}
    starts = np.concatenate(([0], np.flatnonzero(np.diff(episode_index)) + 1))
    runs = episode_index[starts]
    lengths = np.diff(np.append(starts, len(episode_index)))
    frames = {int(e): int(n) for e, n in zip(runs, lengths, strict=True)}
    if len(frames) != len(runs):
        split = sorted({int(e) for e in runs if np.count_nonzero(runs == e) > 1})
        problems.append(
            Problem(where, f"the frames of episode(s) {_ints(split)} are not contiguous")
        )
    elif np.any(np.diff(runs) < 0):
        problems.append(Problem(where, "episodes are not in episode_index order"))
    if info.total_episodes is not None:
        expected = set(range(info.total_episodes))
        absent, unknown = sorted(expected - frames.keys()), sorted(frames.keys() - expected)
        if absent:
            problems.append(
                Problem(
                    where,
                    f"has no frames of episode(s) {_ints(absent)} ({INFO} total_episodes is "
                    f"{info.total_episodes})",
                )
            )
        if unknown:
            problems.append(
                Problem(
                    where,
                    f"has frames of episode(s) {_ints(unknown)} beyond {INFO} total_episodes "
                    f"{info.total_episodes}",
                )
            )
    return frames


def _ints(values: Sequence[int]) -> str:
    text = ", ".join(str(v) for v in values[:8])
    return text + (f" and {len(values) - 8} more" if len(values) > 8 else "")


def _check_tasks(pq: ModuleType, root: Path, problems: list[Problem]) -> int | None:
    if not (root / TASKS).is_file():
        return None
    table = _read(pq, root, TASKS, problems, wanted=("task_index", "task"))
    if table is None:
        return None
    if "task_index" not in table.column_names or "task" not in table.column_names:
        problems.append(Problem(TASKS, "needs the columns task_index and task (the task string)"))
        return None
    if not np.array_equal(table.column("task_index").to_numpy(), np.arange(table.num_rows)):
        problems.append(Problem(TASKS, "task_index is not 0, 1, 2, ... in row order"))
    # LeRobot reads it with pandas and takes each task string from the frame's index.
    try:
        pandas_meta = json.loads((table.schema.metadata or {})[b"pandas"])
        index = pandas_meta.get("index_columns")
    except (KeyError, ValueError, AttributeError):
        index = None
    if index != ["task"]:
        problems.append(
            Problem(
                TASKS,
                "the task strings are not its pandas index, where LeRobot reads them; write "
                "it with pd.DataFrame({'task_index': [...]}, index=pd.Index(tasks, "
                "name='task')).to_parquet(...)",
            )
        )
    return int(table.num_rows)


def _check_episodes(
    pq: ModuleType,
    root: Path,
    info: _Info,
    data_files: list[str],
    rows_by_file: Mapping[str, np.ndarray],
    ep_frames: Mapping[int, int],
    problems: list[Problem],
) -> None:
    """meta/episodes/: one row per episode, pointing at the data (and video) files."""
    video_keys = list(info.video_keys)
    video_columns = [f"videos/{k}/{c}" for k in video_keys for c in _VIDEO_COLUMNS]
    wanted = (*_EPISODE_COLUMNS, *video_columns)
    tables = []
    for rel in _matching(root, _glob_of(EPISODES_PATH)):
        table = _read(pq, root, rel, problems, wanted=wanted)
        if table is None:
            return
        missing = [name for name in _EPISODE_COLUMNS if name not in table.column_names]
        if missing:
            problems.append(Problem(rel, f"has no column(s) {_names(missing)}"))
            return
        for key in list(video_keys):
            lacking = [c for c in _VIDEO_COLUMNS if f"videos/{key}/{c}" not in table.column_names]
            if lacking:
                problems.append(
                    Problem(
                        rel,
                        f"has no videos/{key}/{{{','.join(lacking)}}} columns, so no episode "
                        f"says where its {key!r} frames are",
                    )
                )
                video_keys.remove(key)
        tables.append(table)
    if not tables:
        return
    wanted = (*_EPISODE_COLUMNS, *(f"videos/{k}/{c}" for k in video_keys for c in _VIDEO_COLUMNS))
    cols = {
        name: np.concatenate([t.column(name).to_numpy(zero_copy_only=False) for t in tables])
        for name in wanted
    }
    where = f"{EPISODES_DIR}/"
    n = len(cols["episode_index"])
    if info.total_episodes is not None and n != info.total_episodes:
        problems.append(
            Problem(where, f"has {n} episodes but {INFO} total_episodes is {info.total_episodes}")
        )
    if not np.array_equal(cols["episode_index"], np.arange(n)):
        problems.append(Problem(where, "episode_index is not 0, 1, 2, ... in row order"))
        return
    length, start, stop = cols["length"], cols["dataset_from_index"], cols["dataset_to_index"]
    if n and (start[0] != 0 or np.any(start[1:] != stop[:-1]) or np.any(stop - start != length)):
        problems.append(
            Problem(
                where,
                "dataset_from_index/dataset_to_index do not tile 0..total_frames by each "
                "episode's length",
            )
        )
    if info.total_frames is not None and int(length.sum()) != info.total_frames:
        problems.append(
            Problem(
                where,
                f"episode lengths add up to {int(length.sum())} but {INFO} total_frames is "
                f"{info.total_frames}",
            )
        )
    wrong = [e for e, n_frames in ep_frames.items() if e < n and length[e] != n_frames]
    if wrong:
        e = wrong[0]
        problems.append(
            Problem(
                where,
                f"episode {e} has length {int(length[e])} but {ep_frames[e]} frames in "
                f"{_dir_of(data_files)}"
                + (f" ({len(wrong) - 1} more like it)" if wrong[1:] else ""),
            )
        )

    # Every file an episode points at exists, holds that episode, and is pointed at.
    present = set(data_files)
    referenced: set[str] = set()
    absent: dict[str, list[int]] = {}
    for e in range(n):
        rel = _format(info.data_path, cols["data/chunk_index"][e], cols["data/file_index"][e])
        referenced.add(rel)
        if rel not in present and not (root / rel).is_file():
            absent.setdefault(rel, []).append(e)
        elif rel in rows_by_file and not np.any(rows_by_file[rel] == e):
            problems.append(Problem(rel, f"holds no frames of episode {e}, which points at it"))
    for rel, eps in absent.items():
        problems.append(Problem(rel, f"missing; episode(s) {_ints(eps)} point at it"))
    for rel in sorted(present - referenced):
        problems.append(
            Problem(rel, "no episode points at it, but LeRobot loads every file in data/")
        )
    if info.video_path is None:
        return
    for key in video_keys:
        gone: dict[str, list[int]] = {}
        for e in range(n):
            chunk, file = cols[f"videos/{key}/chunk_index"][e], cols[f"videos/{key}/file_index"][e]
            rel = _format(info.video_path, chunk, file, video_key=key)
            if not (root / rel).is_file():
                gone.setdefault(rel, []).append(e)
        for rel, eps in gone.items():
            problems.append(
                Problem(rel, f"missing; episode(s) {_ints(eps)} of {key!r} point at it")
            )


def _format(template: str, chunk: object, file: object, **extra: str) -> str:
    return template.format(chunk_index=int(chunk), file_index=int(file), **extra)  # type: ignore[call-overload]


# -- synthesis -----------------------------------------------------------------------------------

#: Frames per second of the synthetic recordings (SO-101 datasets record at 30).
FPS = 30
TASK = "Pick up the red cube and put it on the green square."
ROBOT_TYPE = "so101_follower"
CAMERA = "observation.images.front"
_MIN_STEPS = 2  # LeRobot's stats need two frames per episode
_DATA_FILE_MB = 100  # info.json data_files_size_in_mb, as LeRobot's default
_CHUNKS_SIZE = 1000  # files per chunk folder, as LeRobot's default
_OPEN, _CLOSED = 45.0, 5.0  # gripper.pos (0..100) open, closed on the cube


def synth_lerobot(
    path: Path,
    *,
    episodes: int,
    steps: int,
    image_size: int = 64,
    fps: int = FPS,
    seed: int = 0,
    on_episode: Callable[[int, int], None] | None = None,
) -> LeRobotReport:
    """Write a synthetic SO-101 LeRobot v3.0 dataset to ``path``; return its check report.

    ``episodes`` scripted pick-and-place episodes of exactly ``steps`` frames at ``fps``:
    the arm reaches a red cube, closes the gripper, carries the cube onto a green square
    and lets go. Features: ``observation.state`` and ``action`` (float32 [6], the
    :data:`SO101_JOINTS`, degrees and gripper 0..100; the action is the next frame's joint
    targets), and unless ``image_size`` is 0, ``observation.images.front``, a top-down
    camera of ``image_size`` x ``image_size`` RGB stored as dtype ``image`` (PNG bytes in
    the parquet, as LeRobot's ``use_videos=False`` writes them: no video encoder needed).
    One task string; stats.json and the per-episode stats as LeRobot computes them
    (quantiles exact rather than LeRobot's histogram estimate). Same seed, same bytes.

    Written to a hidden sibling folder and renamed into place at the end, so an interrupted
    run leaves nothing at ``path``. ``on_episode(done, total)`` follows each episode.

    Raises :class:`UsageError` for out-of-range arguments, :class:`DatasetError` when
    ``path`` exists and is not an empty folder, and :class:`runner.errors.DependencyError`
    when pyarrow is not installed.
    """
    path = Path(path)
    if episodes < 1:
        raise UsageError(f"episodes must be at least 1 (got {episodes})")
    if steps < _MIN_STEPS:
        raise UsageError(f"steps must be at least {_MIN_STEPS} (got {steps})")
    if image_size != 0 and not 8 <= image_size <= 4096:
        raise UsageError(f"image_size must be 0 (no camera) or 8 to 4096 pixels (got {image_size})")
    if fps < 1:
        raise UsageError(f"fps must be at least 1 (got {fps})")
    check_new_folder(path)
    if importlib.util.find_spec("pyarrow") is None:
        raise missing_dependency("pyarrow")
    write_staged(
        path,
        lambda out: _Writer(out, steps=steps, image_size=image_size, fps=fps).write(
            episodes, seed, on_episode
        ),
    )
    return check_lerobot(path)


#: The layout-generic names.
check = check_lerobot
synth = synth_lerobot


def _features(image_size: int) -> dict[str, dict[str, Any]]:
    names = list(SO101_JOINTS)
    features: dict[str, dict[str, Any]] = {
        "observation.state": {"dtype": "float32", "shape": [6], "names": names},
        "action": {"dtype": "float32", "shape": [6], "names": list(names)},
    }
    if image_size:
        features[CAMERA] = {
            "dtype": "image",
            "shape": [image_size, image_size, 3],
            "names": ["height", "width", "channels"],
        }
    return {**features, **{k: dict(v) for k, v in DEFAULT_FEATURES.items()}}


class _Writer:
    """Writes the episodes, one parquet row group each, then the metadata."""

    def __init__(self, out: Path, *, steps: int, image_size: int, fps: int) -> None:
        import pyarrow as pa

        self.pa = pa
        self.out, self.steps, self.size, self.fps = out, steps, image_size, fps
        self.features = _features(image_size)
        self.writer: Any = None
        self.chunk = self.file = 0
        self.file_bytes = 0
        self.episode_rows: list[dict[str, Any]] = []
        #: Every episode's columns, and the pixel histograms, for the dataset's stats.
        self.columns: dict[str, list[np.ndarray]] = {}
        self.hists: np.ndarray | None = None

    def write(
        self, episodes: int, seed: int, on_episode: Callable[[int, int], None] | None
    ) -> None:
        rng = np.random.default_rng(seed)
        for e in range(episodes):
            self._episode(e, rng)
            if on_episode is not None:
                on_episode(e + 1, episodes)
        self._close()
        self._write_meta(episodes)

    # One episode: arrays, stats, a row group and an episodes row.
    def _episode(self, e: int, rng: np.random.Generator) -> None:
        pa = self.pa
        n = self.steps
        joints, frames = _pick_and_place(rng, n, self.size)
        state = (joints + rng.normal(0.0, 0.05, joints.shape)).astype(np.float32)
        action = joints[np.minimum(np.arange(n) + 1, n - 1)].astype(np.float32)
        start = sum(row["length"] for row in self.episode_rows)
        columns: dict[str, np.ndarray] = {
            "observation.state": state,
            "action": action,
            "timestamp": (np.arange(n) / self.fps).astype(np.float32),
            "frame_index": np.arange(n, dtype=np.int64),
            "episode_index": np.full(n, e, dtype=np.int64),
            "index": np.arange(start, start + n, dtype=np.int64),
            "task_index": np.zeros(n, dtype=np.int64),
        }
        arrays: dict[str, Any] = {}
        for name, values in columns.items():
            if values.ndim == 2:
                arrays[name] = pa.FixedSizeListArray.from_arrays(
                    pa.array(values.reshape(-1)), values.shape[1]
                )
            else:
                arrays[name] = pa.array(values)
        stats = {name: _vector_stats(values) for name, values in columns.items()}
        if frames is not None:
            pngs = [_png(frame) for frame in frames]
            arrays[CAMERA] = pa.StructArray.from_arrays(
                [pa.array(pngs, pa.binary()), pa.array([f"frame-{i:06d}.png" for i in range(n)])],
                names=["bytes", "path"],
            )
            hist = _histograms(frames)
            stats[CAMERA] = _image_stats(hist, n)
            self.hists = hist if self.hists is None else self.hists + hist
        order = list(self.features)
        table = pa.table([arrays[name] for name in order], schema=self._schema())
        stats = {name: stats[name] for name in order}

        if self.writer is not None and self.file_bytes + table.nbytes > _DATA_FILE_MB * _MIB:
            self._close()
            self.chunk, self.file = (
                (self.chunk + 1, 0)
                if self.file == _CHUNKS_SIZE - 1
                else (self.chunk, self.file + 1)
            )
        if self.writer is None:
            rel = DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
            (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
            self.writer = _parquet_writer(self.out / rel, table.schema)
            self.file_bytes = 0
        self.writer.write_table(table)  # one row group per episode, as LeRobot writes them
        self.file_bytes += table.nbytes

        row: dict[str, Any] = {
            "episode_index": e,
            "tasks": [TASK],
            "length": n,
            "data/chunk_index": self.chunk,
            "data/file_index": self.file,
            "dataset_from_index": start,
            "dataset_to_index": start + n,
        }
        for name, feature_stats in stats.items():
            for key, value in feature_stats.items():
                row[f"stats/{name}/{key}"] = value
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        self.episode_rows.append(row)
        for name, values in columns.items():
            self.columns.setdefault(name, []).append(values)

    def _schema(self) -> Any:
        pa = self.pa
        fields = []
        hf: dict[str, Any] = {}
        for name, spec in self.features.items():
            dtype = spec["dtype"]
            if dtype == "image":
                fields.append(
                    pa.field(name, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
                )
                hf[name] = {"_type": "Image"}
            elif spec["shape"] == [1]:
                fields.append(pa.field(name, pa.from_numpy_dtype(np.dtype(dtype))))
                hf[name] = {"dtype": dtype, "_type": "Value"}
            else:
                fields.append(
                    pa.field(name, pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), spec["shape"][0]))
                )
                hf[name] = {
                    "feature": {"dtype": dtype, "_type": "Value"},
                    "length": spec["shape"][0],
                    "_type": "List",
                }
        # What the Hugging Face `datasets` library writes, so it reads the columns back typed.
        meta = {b"huggingface": json.dumps({"info": {"features": hf}}).encode()}
        return pa.schema(fields, metadata=meta)

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _write_meta(self, episodes: int) -> None:
        pa = self.pa
        total = sum(row["length"] for row in self.episode_rows)
        info = {
            "codebase_version": CODEBASE_VERSION,
            "fps": self.fps,
            "features": self.features,
            "total_episodes": episodes,
            "total_frames": total,
            "total_tasks": 1,
            "chunks_size": _CHUNKS_SIZE,
            "data_files_size_in_mb": _DATA_FILE_MB,
            "video_files_size_in_mb": 200,
            "data_path": DATA_PATH,
            "video_path": None,
            "robot_type": ROBOT_TYPE,
            "splits": {"train": f"0:{episodes}"},
        }
        _write_json(self.out / INFO, info)

        stats = {name: _vector_stats(np.concatenate(parts)) for name, parts in self.columns.items()}
        if self.hists is not None:
            stats[CAMERA] = _image_stats(self.hists, total)
        _write_json(self.out / STATS, {name: stats[name] for name in self.features})

        rel = EPISODES_PATH.format(chunk_index=0, file_index=0)
        (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(self.episode_rows)
        writer = _parquet_writer(self.out / rel, table.schema)
        writer.write_table(table)
        writer.close()

        # pandas metadata makes `task` the index when LeRobot reads it with pd.read_parquet.
        pandas_meta = {
            "index_columns": ["task"],
            "column_indexes": [
                {
                    "name": None,
                    "field_name": None,
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": {"encoding": "UTF-8"},
                }
            ],
            "columns": [
                {
                    "name": "task_index",
                    "field_name": "task_index",
                    "pandas_type": "int64",
                    "numpy_type": "int64",
                    "metadata": None,
                },
                {
                    "name": "task",
                    "field_name": "task",
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": None,
                },
            ],
            "attributes": {},
            "creator": {"library": "pyarrow", "version": pa.__version__},
        }
        tasks = pa.table(
            {"task_index": pa.array([0], pa.int64()), "task": pa.array([TASK], pa.string())}
        ).replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        writer = _parquet_writer(self.out / TASKS, tasks.schema)
        writer.write_table(tasks)
        writer.close()


def _parquet_writer(path: Path, schema: Any) -> Any:
    import pyarrow.parquet as pq

    return pq.ParquetWriter(str(path), schema, compression="snappy", use_dictionary=True)


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")


def _vector_stats(values: np.ndarray) -> dict[str, Any]:
    """Per-dimension stats of (N,) or (N, D) values: lists of D floats, count [N]."""
    data = values.astype(np.float64).reshape(len(values), -1)
    stats: dict[str, Any] = {
        "min": data.min(axis=0).tolist(),
        "max": data.max(axis=0).tolist(),
        "mean": data.mean(axis=0).tolist(),
        "std": data.std(axis=0).tolist(),
        "count": [len(values)],
    }
    for q, value in zip(QUANTILES, np.quantile(data, QUANTILES, axis=0), strict=True):
        stats[f"q{round(q * 100):02d}"] = value.tolist()
    return stats


def _histograms(frames: np.ndarray) -> np.ndarray:
    """(3, 256) pixel counts per channel of uint8 (N, H, W, 3) frames."""
    return np.stack(
        [np.bincount(frames[..., c].reshape(-1), minlength=256) for c in range(3)]
    ).astype(np.int64)


def _image_stats(hist: np.ndarray, count: int) -> dict[str, Any]:
    """Per-channel stats in [0, 1], each (3, 1, 1) as nested lists (LeRobot's image stats)."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    total = hist.sum(axis=1)
    mean = (hist * levels).sum(axis=1) / total
    std = np.sqrt(np.maximum((hist * levels**2).sum(axis=1) / total - mean**2, 0.0))
    present = hist > 0
    stats: dict[str, Any] = {
        "min": levels[present.argmax(axis=1)],
        "max": levels[255 - present[:, ::-1].argmax(axis=1)],
        "mean": mean,
        "std": std,
    }
    cumulative = hist.cumsum(axis=1)
    quantiles = {}
    for q in QUANTILES:
        rank = np.maximum(1, np.ceil(q * total)).astype(np.int64)
        index = np.array([np.searchsorted(cumulative[c], rank[c]) for c in range(3)])
        quantiles[f"q{round(q * 100):02d}"] = levels[index]
    nested = {key: value.reshape(3, 1, 1).tolist() for key, value in stats.items()}
    return {
        **nested,
        "count": [count],
        **{key: value.reshape(3, 1, 1).tolist() for key, value in quantiles.items()},
    }


def _png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of (H, W, 3) uint8, each row filtered with Sub (PNG filter 1)."""
    height, width, _ = rgb.shape
    rows = rgb.reshape(height, width * 3)
    sub = rows.copy()
    sub[:, 3:] = rows[:, 3:] - rows[:, :-3]  # uint8 arithmetic wraps, as PNG's filter does
    raw = np.empty((height, width * 3 + 1), dtype=np.uint8)
    raw[:, 0] = 1
    raw[:, 1:] = sub

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def _pick_and_place(
    rng: np.random.Generator, n: int, size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Joint positions (n, 6) of one scripted pick and place, and its frames (n, S, S, 3).

    The workspace is the unit square seen from above, the arm's base at (0.5, 0.95).
    """
    cube = np.array([rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.6)])
    while True:
        goal = np.array([rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.6)])
        if np.linalg.norm(goal - cube) > 0.2:
            break
    home = np.array([0.5 + rng.uniform(-0.05, 0.05), 0.7])
    roll = rng.uniform(-45.0, 45.0)
    # Keyframes: (fraction of the episode, x, y, height 0..1, wrist roll, gripper).
    keys = np.array(
        [
            (0.00, *home, 1.0, 0.0, _OPEN),
            (0.25, *cube, 1.0, roll, _OPEN),
            (0.35, *cube, 0.0, roll, _OPEN),
            (0.42, *cube, 0.0, roll, _CLOSED),  # grasped
            (0.52, *cube, 1.0, roll, _CLOSED),
            (0.72, *goal, 1.0, 0.0, _CLOSED),
            (0.80, *goal, 0.0, 0.0, _CLOSED),
            (0.86, *goal, 0.0, 0.0, _OPEN),  # released on the goal
            (0.92, *goal, 1.0, 0.0, _OPEN),
            (1.00, *home, 1.0, 0.0, _OPEN),
        ]
    )
    s = np.linspace(0.0, 1.0, n)
    seg = np.clip(np.searchsorted(keys[:, 0], s, side="right") - 1, 0, len(keys) - 2)
    u = np.clip((s - keys[seg, 0]) / (keys[seg + 1, 0] - keys[seg, 0]), 0.0, 1.0)
    u = (u * u * (3 - 2 * u))[:, None]  # smoothstep: the arm stops at every keyframe
    path = keys[seg, 1:] * (1 - u) + keys[seg + 1, 1:] * u  # (n, 5): x, y, z, roll, gripper
    x, y, z, wrist_roll, gripper = path.T

    # A planar two-link arm in the vertical plane through the base and the gripper.
    link = 0.45
    dx, dy = x - 0.5, 0.95 - y
    pan = np.degrees(np.arctan2(dx, dy))
    reach = np.hypot(dx, dy)
    height = 0.2 * z - 0.05
    dist = np.clip(np.hypot(reach, height), 0.05, 2 * link - 1e-3)
    bend = np.arccos(np.clip((dist**2 - 2 * link**2) / (2 * link**2), -1.0, 1.0))
    lift = np.arctan2(reach, height) - np.arctan2(link * np.sin(bend), link * (1 + np.cos(bend)))
    elbow = np.degrees(bend) - 90.0
    shoulder = np.degrees(lift) - 90.0
    wrist = 90.0 - np.degrees(lift) - np.degrees(bend)  # keeps the gripper pointing down
    joints = np.stack([pan, shoulder, elbow, wrist, wrist_roll, gripper], axis=1)
    if not size:
        return joints, None

    held = (s >= keys[3, 0]) & (s < keys[7, 0])
    cube_xy = np.where(held[:, None], path[:, :2], np.where((s >= keys[7, 0])[:, None], goal, cube))
    return joints, _render(size, path, cube_xy, goal)


def _render(size: int, path: np.ndarray, cube_xy: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Top-down frames (n, size, size, 3) uint8: table, goal, cube, arm, gripper."""
    n = len(path)
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    frames[:] = (196, 178, 150)

    def box(frame: np.ndarray, x: float, y: float, half: float, rgb: tuple[int, int, int]) -> None:
        r0, r1 = round((y - half) * size), round((y + half) * size)
        c0, c1 = round((x - half) * size), round((x + half) * size)
        frame[max(r0, 0) : max(r1, r0 + 1, 0), max(c0, 0) : max(c1, c0 + 1, 0)] = rgb

    samples = np.linspace(0.0, 1.0, max(8, size))
    for i in range(n):
        frame = frames[i]
        x, y, z, _, gripper = path[i]
        box(frame, goal[0], goal[1], 0.07, (90, 170, 90))
        box(frame, cube_xy[i, 0], cube_xy[i, 1], 0.04, (200, 40, 40))
        # The arm: a grey line from the base to the gripper.
        xs = np.clip(((0.5 + (x - 0.5) * samples) * size).astype(int), 0, size - 1)
        ys = np.clip(((0.95 + (y - 0.95) * samples) * size).astype(int), 0, size - 1)
        for d in (-1, 0, 1):
            frame[ys, np.clip(xs + d, 0, size - 1)] = (110, 110, 110)
        # The gripper: two fingers, apart by the opening, larger when raised.
        gap = 0.01 + 0.04 * gripper / 100.0
        half = 0.015 + 0.01 * z
        box(frame, x - gap, y, half, (40, 40, 40))
        box(frame, x + gap, y, half, (40, 40, 40))
    return frames

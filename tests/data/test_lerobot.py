"""The LeRobot v3.0 layout: ``runner.data.lerobot`` and ``runner data check/synth`` on it.

Format facts, and the upstream LeRobot 0.6.1 file (``src/lerobot/...``) each comes from:

- ``codebase_version`` "v3.0" is the only version read; an older major is refused and a v2.1
  dataset is pointed at ``convert_dataset_v21_to_v30``: ``datasets/dataset_metadata.py``
  (CODEBASE_VERSION, ``_load_metadata``), ``datasets/utils.py`` (check_version_compatibility,
  V30_MESSAGE).
- meta/info.json's fields (fps, features, total_episodes/frames/tasks, chunks_size, the
  file size limits, data_path/video_path templates, robot_type, splits) and the paths
  ``meta/stats.json``, ``meta/tasks.parquet``, ``meta/episodes/chunk-000/file-000.parquet``,
  ``data/chunk-000/file-000.parquet``, ``videos/<key>/chunk-000/file-000.mp4``:
  ``datasets/utils.py`` (DatasetInfo, INFO_PATH, DEFAULT_*_PATH).
- Every dataset has timestamp, frame_index, episode_index, index, task_index:
  ``utils/constants.py`` (DEFAULT_FEATURES); feature names have no "/":
  ``utils/feature_utils.py`` (_validate_feature_names).
- Columns: a shape-[1] feature is a scalar ``Value``, a 1-D one a fixed-length list, an image
  a struct of PNG bytes and path; video features have no column:
  ``datasets/feature_utils.py`` (get_hf_features_from_features), ``datasets/io_utils.py``
  (embed_images); one row group per episode: ``datasets/dataset_writer.py``
  (_save_episode_data).
- meta/episodes columns (episode_index, tasks, length, data/chunk_index, data/file_index,
  dataset_from_index, dataset_to_index, videos/<key>/{chunk_index, file_index,
  from_timestamp, to_timestamp}, stats/<feature>/<stat>, meta/episodes/*):
  ``datasets/dataset_writer.py`` (_save_episode_data, _save_episode_video),
  ``datasets/dataset_metadata.py`` (save_episode, _save_episode_metadata).
- tasks.parquet is a pandas frame indexed by the task string, with a task_index column:
  ``datasets/dataset_metadata.py`` (save_episode_tasks), ``datasets/io_utils.py``
  (write_tasks, load_tasks).
- stats: min, max, mean, std, count, q01, q10, q50, q90, q99 per feature; per dimension for
  vectors, (3, 1, 1) in [0, 1] for images: ``datasets/compute_stats.py``
  (DEFAULT_QUANTILES, get_feature_stats, compute_episode_stats), ``datasets/io_utils.py``
  (write_stats).
- The reader loads every ``data/*/*.parquet`` and returns images as float CxHxW in [0, 1]:
  ``datasets/io_utils.py`` (load_nested_dataset, hf_transform_to_torch),
  ``datasets/dataset_reader.py``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runner.cli import main
from runner.data.lerobot import (
    CODEBASE_VERSION,
    SO101_JOINTS,
    check_lerobot,
    synth_lerobot,
)
from tests.conftest import RUNNER_BIN

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CAM = "observation.images.front"
DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"
VIDEO = f"videos/{CAM}/chunk-000/file-000.mp4"
STAT_KEYS = {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lerobot") / "good"
    synth_lerobot(path, episodes=3, steps=12, image_size=16)
    return path


@pytest.fixture
def ds(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "ds"))


@pytest.fixture
def no_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if pyarrow were not installed (an import of it raises ImportError)."""
    for name in list(sys.modules):
        if name == "pyarrow" or name.startswith("pyarrow."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pyarrow", None)


def _info(path: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((path / "meta/info.json").read_text())
    return info


def _write_info(path: Path, info: dict[str, Any]) -> None:
    (path / "meta/info.json").write_text(json.dumps(info, indent=4))


def _lines(path: Path) -> list[str]:
    return [str(p) for p in check_lerobot(path).problems]


def _as_video(path: Path) -> None:
    """Turn the camera into a video feature, as LeRobot with use_videos=True stores it.

    The MP4 is a stand-in (an ftyp box and nothing else): the check never decodes video.
    """
    info = _info(path)
    info["features"][CAM]["dtype"] = "video"
    info["video_path"] = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    _write_info(path, info)
    data = pq.read_table(path / DATA)
    pq.write_table(data.drop_columns([CAM]), path / DATA)
    episodes = pq.read_table(path / EPISODES)
    length = episodes.column("length").to_numpy() / info["fps"]
    ends = np.cumsum(length)
    for name, values in {
        "chunk_index": pa.array(np.zeros(len(ends), dtype=np.int64)),
        "file_index": pa.array(np.zeros(len(ends), dtype=np.int64)),
        "from_timestamp": pa.array(ends - length),
        "to_timestamp": pa.array(ends),
    }.items():
        episodes = episodes.append_column(f"videos/{CAM}/{name}", values)
    pq.write_table(episodes, path / EPISODES)
    (path / VIDEO).parent.mkdir(parents=True)
    (path / VIDEO).write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2")


# -- synth then check ----------------------------------------------------------------------------


def test_a_synthetic_dataset_checks(good: Path) -> None:
    report = check_lerobot(good)
    assert report.problems == ()
    assert report.ok and report.parquet_read
    assert (report.codebase_version, report.fps) == (CODEBASE_VERSION, 30)
    assert (report.n_episodes, report.total_frames) == (3, 36)
    shapes = {f.name: (f.dtype, f.shape) for f in report.features}
    assert shapes == {
        "observation.state": ("float32", (6,)),
        "action": ("float32", (6,)),
        CAM: ("image", (16, 16, 3)),
        "timestamp": ("float32", (1,)),
        "frame_index": ("int64", (1,)),
        "episode_index": ("int64", (1,)),
        "index": ("int64", (1,)),
        "task_index": ("int64", (1,)),
    }
    assert [f.name for f in report.cameras] == [CAM]
    info = _info(good)
    assert info["features"]["observation.state"]["names"] == list(SO101_JOINTS)
    assert info["features"]["action"]["names"] == list(SO101_JOINTS)
    assert info["video_path"] is None
    assert sorted(p.relative_to(good).as_posix() for p in good.rglob("*") if p.is_file()) == [
        DATA,
        EPISODES,
        "meta/info.json",
        "meta/stats.json",
        "meta/tasks.parquet",
    ]


def test_the_synthetic_columns_are_what_lerobot_writes(good: Path) -> None:
    data = pq.read_table(good / DATA)
    assert str(data.schema.field("observation.state").type) == "fixed_size_list<element: float>[6]"
    assert str(data.schema.field(CAM).type) == "struct<bytes: binary, path: string>"
    assert str(data.schema.field("timestamp").type) == "float"
    assert pq.ParquetFile(good / DATA).metadata.num_row_groups == 3  # one per episode
    hf = json.loads(data.schema.metadata[b"huggingface"])["info"]["features"]
    assert hf[CAM] == {"_type": "Image"}
    assert hf["action"] == {
        "feature": {"dtype": "float32", "_type": "Value"},
        "length": 6,
        "_type": "List",
    }
    rows = data.to_pydict()
    assert rows["episode_index"] == [e for e in range(3) for _ in range(12)]
    assert rows["frame_index"] == list(range(12)) * 3
    assert rows["index"] == list(range(36))
    assert rows["timestamp"] == pytest.approx([i / 30 for i in range(12)] * 3)
    # The action is the next frame's joint targets: the state follows it within noise.
    state, action = np.array(rows["observation.state"]), np.array(rows["action"])
    assert np.abs(state[1:12] - action[0:11]).max() < 1.0
    image = rows[CAM][5]
    assert image["path"] == "frame-000005.png"
    pil = pytest.importorskip("PIL.Image")
    with pil.open(io.BytesIO(image["bytes"])) as png:
        assert (png.format, png.mode, png.size) == ("PNG", "RGB", (16, 16))

    tasks = pq.read_table(good / "meta/tasks.parquet")
    assert tasks.to_pydict() == {"task_index": [0], "task": [tasks.column("task")[0].as_py()]}
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    episodes = pq.read_table(good / EPISODES).to_pydict()
    assert episodes["length"] == [12, 12, 12]
    assert episodes["dataset_from_index"] == [0, 12, 24]
    assert episodes["dataset_to_index"] == [12, 24, 36]
    assert np.array(episodes[f"stats/{CAM}/mean"][0]).shape == (3, 1, 1)


def test_the_stats_are_what_lerobot_expects(good: Path) -> None:
    stats = json.loads((good / "meta/stats.json").read_text())
    assert list(stats) == list(_info(good)["features"])
    for name, entry in stats.items():
        assert set(entry) == STAT_KEYS, name
        assert entry["count"] == [36], name
    rows = pq.read_table(good / DATA).to_pydict()
    state = np.array(rows["observation.state"], dtype=np.float64)
    assert stats["observation.state"]["mean"] == pytest.approx(state.mean(axis=0).tolist())
    assert stats["observation.state"]["std"] == pytest.approx(state.std(axis=0).tolist())
    assert stats["observation.state"]["q50"] == pytest.approx(np.median(state, axis=0).tolist())
    assert stats["index"]["max"] == [35.0]
    camera = {key: np.array(value) for key, value in stats[CAM].items()}
    for key in STAT_KEYS - {"count"}:
        assert camera[key].shape == (3, 1, 1), key
        assert ((camera[key] >= 0) & (camera[key] <= 1)).all(), key
    assert (camera["min"] <= camera["q01"]).all() and (camera["q99"] <= camera["max"]).all()


def test_synth_is_deterministic(good: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    synth_lerobot(again, episodes=3, steps=12, image_size=16)
    for path in good.rglob("*"):
        if path.is_file():
            rel = path.relative_to(good)
            assert (again / rel).read_bytes() == path.read_bytes(), rel
    other = tmp_path / "other"
    synth_lerobot(other, episodes=3, steps=12, image_size=16, seed=1)
    assert (other / DATA).read_bytes() != (good / DATA).read_bytes()


def test_synth_without_a_camera(tmp_path: Path) -> None:
    report = synth_lerobot(tmp_path / "ds", episodes=2, steps=5, image_size=0)
    assert report.ok, report.problems
    assert report.cameras == ()
    assert CAM not in json.loads((tmp_path / "ds/meta/stats.json").read_text())


def test_check_without_pyarrow_reads_json_and_files_only(good: Path, no_pyarrow: None) -> None:
    report = check_lerobot(good)
    assert report.ok, report.problems
    assert not report.parquet_read


# -- damage, each reported with its line ---------------------------------------------------------


@pytest.mark.parametrize("pyarrow", ["with pyarrow", "without pyarrow"])
def test_a_missing_info_json(ds: Path, pyarrow: str, request: pytest.FixtureRequest) -> None:
    if pyarrow == "without pyarrow":
        request.getfixturevalue("no_pyarrow")
    (ds / "meta/info.json").unlink()
    report = check_lerobot(ds)
    assert (report.codebase_version, report.n_episodes, report.features) == (None, None, ())
    assert [str(p) for p in report.problems] == [
        "meta/info.json: missing; every LeRobot dataset has one (LeRobotDataset.create writes it)"
    ]


@pytest.mark.parametrize("pyarrow", ["with pyarrow", "without pyarrow"])
def test_a_wrong_codebase_version(ds: Path, pyarrow: str, request: pytest.FixtureRequest) -> None:
    if pyarrow == "without pyarrow":
        request.getfixturevalue("no_pyarrow")
    info = _info(ds)
    _write_info(ds, {**info, "codebase_version": "v2.1"})
    assert _lines(ds) == [
        "meta/info.json: codebase_version is 'v2.1', expected 'v3.0' (LeRobot 0.6.1 reads only "
        "v3.0); convert it with `python -m lerobot.scripts.convert_dataset_v21_to_v30 "
        "--repo-id=REPO`"
    ]
    _write_info(ds, {**info, "codebase_version": "v4.0"})
    assert _lines(ds) == ["meta/info.json: codebase_version is 'v4.0', expected 'v3.0'"]


def test_a_missing_data_file(ds: Path) -> None:
    (ds / DATA).unlink()
    assert _lines(ds) == [
        "data/: has no parquet files (data/chunk-*/file-*.parquet)",
        f"{DATA}: missing; episode(s) 0, 1, 2 point at it",
    ]


def test_a_missing_data_file_without_pyarrow(ds: Path, no_pyarrow: None) -> None:
    (ds / DATA).unlink()
    assert _lines(ds) == ["data/: has no parquet files (data/chunk-*/file-*.parquet)"]


def test_a_truncated_parquet_file(ds: Path, no_pyarrow: None) -> None:
    blob = (ds / DATA).read_bytes()
    (ds / DATA).write_bytes(blob[: len(blob) // 2])
    assert _lines(ds) == [f"{DATA}: is not a parquet file (truncated or overwritten?)"]


def test_a_frame_count_mismatch(ds: Path) -> None:
    data = pq.read_table(ds / DATA)
    pq.write_table(data.slice(0, data.num_rows - 1), ds / DATA)  # episode 2 lost a frame
    assert _lines(ds) == [
        "data/: the parquet files hold 35 frames but meta/info.json total_frames is 36",
        "meta/episodes/: episode 2 has length 12 but 11 frames in data/",
    ]


def test_total_frames_that_disagree_with_the_files(ds: Path) -> None:
    _write_info(ds, {**_info(ds), "total_frames": 40})
    assert _lines(ds) == [
        "data/: the parquet files hold 36 frames but meta/info.json total_frames is 40",
        "meta/episodes/: episode lengths add up to 36 but meta/info.json total_frames is 40",
    ]


def test_a_video_feature_checks_when_its_video_is_there(ds: Path) -> None:
    _as_video(ds)
    report = check_lerobot(ds)
    assert report.ok, report.problems
    assert [(f.name, f.dtype) for f in report.cameras] == [(CAM, "video")]


def test_a_missing_video(ds: Path) -> None:
    _as_video(ds)
    (ds / VIDEO).unlink()
    assert _lines(ds) == [
        f"videos/{CAM}/: no video for the video feature '{CAM}' (videos/{CAM}/chunk-*/file-*.mp4)",
        f"{VIDEO}: missing; episode(s) 0, 1, 2 of '{CAM}' point at it",
    ]


def test_a_missing_video_without_pyarrow(ds: Path, request: pytest.FixtureRequest) -> None:
    _as_video(ds)
    (ds / VIDEO).unlink()
    request.getfixturevalue("no_pyarrow")
    assert _lines(ds) == [
        f"videos/{CAM}/: no video for the video feature '{CAM}' (videos/{CAM}/chunk-*/file-*.mp4)"
    ]


def test_a_video_feature_without_a_video_path(ds: Path) -> None:
    _as_video(ds)
    _write_info(ds, {**_info(ds), "video_path": None})
    assert _lines(ds) == [
        f"meta/info.json: video_path is null but '{CAM}' is a video feature; set it to "
        "'videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4'"
    ]


def test_bad_features_and_stats(ds: Path) -> None:
    info = _info(ds)
    features = info["features"]
    features["observation.state"] = {"dtype": "float32", "shape": [7], "names": None}
    features[CAM]["shape"] = [16, 16]
    del features["index"]
    features["bad/name"] = {"dtype": "complex", "shape": [1], "names": None}
    _write_info(ds, info)
    stats = json.loads((ds / "meta/stats.json").read_text())
    del stats["action"]
    stats["timestamp"]["mean"] = [float("nan")]
    (ds / "meta/stats.json").write_text(json.dumps(stats))
    assert _lines(ds) == [
        f"meta/info.json: features['{CAM}'] shape is [16, 16], expected [height, width, "
        "channels], 1 or 3 channels",
        "meta/info.json: features['bad/name']: feature names must not contain '/' (LeRobot "
        "refuses them)",
        "meta/info.json: features['bad/name'] dtype is 'complex', not one LeRobot knows",
        "meta/info.json: features lack 'index'; LeRobot adds timestamp, frame_index, "
        "episode_index, index and task_index to every dataset",
        "meta/stats.json: 'observation.state' min has shape [6], expected [7]",
        "meta/stats.json: 'observation.state' max has shape [6], expected [7]",
        "meta/stats.json: 'observation.state' mean has shape [6], expected [7]",
        "meta/stats.json: 'observation.state' std has shape [6], expected [7]",
        "meta/stats.json: has no stats for 'action'; lerobot-train needs them",
        "meta/stats.json: 'timestamp' mean holds NaN or inf",
        f"{DATA}: has column(s) 'index' that meta/info.json features do not declare",
        f"{DATA}: column 'observation.state' holds 6 values per frame but meta/info.json "
        "shape is [7]",
    ]


def test_episodes_out_of_order_and_an_unreferenced_data_file(ds: Path) -> None:
    data = pq.read_table(ds / DATA)
    order = np.r_[12:24, 0:12, 24:36]
    pq.write_table(data.take(pa.array(order)), ds / DATA)
    shutil.copy(ds / DATA, ds / "data/chunk-000/file-001.parquet")
    assert _lines(ds) == [
        "data/: the parquet files hold 72 frames but meta/info.json total_frames is 36",
        "data/: the frames of episode(s) 0, 1, 2 are not contiguous",
        "data/: the index column is not 0, 1, 2, ... in file order (row 0 has 12)",
        "data/chunk-000/file-001.parquet: no episode points at it, but LeRobot loads every "
        "file in data/",
    ]


def test_tasks_without_the_task_as_pandas_index(ds: Path) -> None:
    tasks = pq.read_table(ds / "meta/tasks.parquet")
    pq.write_table(tasks.replace_schema_metadata(None), ds / "meta/tasks.parquet")
    assert _lines(ds) == [
        "meta/tasks.parquet: the task strings are not its pandas index, where LeRobot reads "
        "them; write it with pd.DataFrame({'task_index': [...]}, index=pd.Index(tasks, "
        "name='task')).to_parquet(...)"
    ]


def test_templates_that_leave_the_dataset(ds: Path) -> None:
    _write_info(ds, {**_info(ds), "data_path": "/data/{chunk_index}/{file_index}.parquet"})
    assert _lines(ds) == [
        "meta/info.json: data_path is '/data/{chunk_index}/{file_index}.parquet', expected a "
        "path inside the dataset like 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'"
    ]
    _write_info(ds, {**_info(ds), "data_path": "data/chunk-{chunk_index:03d}.parquet"})
    assert _lines(ds)[0] == (
        "meta/info.json: data_path is 'data/chunk-{chunk_index:03d}.parquet', expected a "
        "template of 'chunk_index', 'file_index' like "
        "'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'"
    )


def test_not_a_folder(tmp_path: Path) -> None:
    from runner.errors import DatasetError

    with pytest.raises(DatasetError, match="no dataset at"):
        check_lerobot(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        check_lerobot(tmp_path / "file")


# -- synth's arguments ---------------------------------------------------------------------------


def test_synth_refuses_bad_arguments_and_never_overwrites(good: Path, tmp_path: Path) -> None:
    from runner.errors import DatasetError, UsageError

    with pytest.raises(UsageError, match="steps must be at least 2"):
        synth_lerobot(tmp_path / "x", episodes=1, steps=1)
    with pytest.raises(UsageError, match="image_size must be 0"):
        synth_lerobot(tmp_path / "x", episodes=1, steps=4, image_size=4)
    with pytest.raises(DatasetError, match="already exists"):
        synth_lerobot(good, episodes=1, steps=4)
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_check_a_good_dataset(ds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["data", "check", "act_so101", str(ds)])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out == (
        f"{ds}: v3.0, 3 episodes, 36 frames at 30 fps; observation.state [6], action [6], "
        f"{CAM} 16x16 image\n"
    )
    assert err == f"{ds} is a valid act_so101 dataset\n"


def test_cli_check_lists_every_problem(ds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_info(ds, {**_info(ds), "codebase_version": "v2.1"})
    (ds / "meta/stats.json").unlink()
    rc = main(["data", "check", "smolvla_so101", str(ds)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert out.splitlines() == [
        f"{ds}: v2.1, 3 episodes, 36 frames at 30 fps; observation.state [6], action [6], "
        f"{CAM} 16x16 image",
        "meta/info.json: codebase_version is 'v2.1', expected 'v3.0' (LeRobot 0.6.1 reads only "
        "v3.0); convert it with `python -m lerobot.scripts.convert_dataset_v21_to_v30 "
        "--repo-id=REPO`",
        "meta/stats.json: missing; lerobot-train normalises with it; LeRobot writes it with "
        "the data",
    ]
    assert err == f"error: 2 problems in {ds}\n"


def test_cli_check_without_pyarrow_says_so(
    ds: Path, no_pyarrow: None, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["data", "check", "act_so101", str(ds)])
    _, err = capsys.readouterr()
    assert rc == 0
    assert err.splitlines() == [
        "warning: pyarrow is not installed, so the parquet files were checked by name and "
        "size only; install it (runner[train]) to check their rows and columns too",
        f"{ds} is a valid act_so101 dataset",
    ]


def test_cli_check_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["data", "check", "act_so101", str(tmp_path / "nope")])
    out, err = capsys.readouterr()
    assert (rc, out) == (1, "")
    assert err == (
        f"error: no dataset at {tmp_path / 'nope'}; point at the folder that holds "
        f"meta/info.json, or make one with `runner data synth`\n"
    )


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "new"
    argv = ["data", "synth", "pi0_so101", str(path), "--episodes", "2", "--steps", "8"]
    rc = main([*argv, "--image-size", "0", "--seed", "3"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert check_lerobot(path).ok
    assert (
        out == f"{path}: v3.0, 2 episodes, 16 frames at 30 fps; observation.state [6], action [6]\n"
    )
    assert err.splitlines() == [
        f"synthesising 2 episodes x 8 steps (no camera) at {path}",
        "  1/2 episodes",
        "  2/2 episodes",
        f"wrote {path}",
    ]


def test_cli_synth_image_size_defaults_to_64(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        ["data", "synth", "act_so101", str(tmp_path / "d"), "--episodes", "1", "--steps", "2"]
    )
    assert rc == 0
    assert "(64px)" in capsys.readouterr().err
    assert _info(tmp_path / "d")["features"][CAM]["shape"] == [64, 64, 3]


def test_cli_synth_without_pyarrow_is_one_line(
    tmp_path: Path, no_pyarrow: None, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["data", "synth", "act_so101", str(tmp_path / "d"), "--episodes", "1", "--steps", "2"]
    rc = main(argv)
    _, err = capsys.readouterr()
    assert rc == 1
    assert err.splitlines()[-1] == (
        "error: this needs pyarrow, which is not installed; install the training side with "
        "`pip install 'runner[train]'` (or run ./train.sh, which sets it up)"
    )
    assert "Traceback" not in err
    assert not (tmp_path / "d").exists()


def test_cli_synth_bad_image_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "synth", "act_so101", str(tmp_path / "d"), "--episodes", "1", "--steps", "2"]
    rc = main([*argv, "--image-size", "5"])
    _, err = capsys.readouterr()
    assert rc == 2
    assert err.splitlines()[-1] == (
        "error: image_size must be 0 (no camera) or 8 to 4096 pixels (got 5)"
    )


def test_check_through_the_installed_command(ds: Path, subprocess_env: dict[str, str]) -> None:
    (ds / DATA).write_bytes(b"PAR1 not really")
    result = subprocess.run(
        [str(RUNNER_BIN), "data", "check", "act_so101", str(ds)],
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"error: 1 problem in {ds}\n"
    assert result.stdout.splitlines()[1:] == [
        f"{DATA}: is not a parquet file (truncated or overwritten?)"
    ]


# -- the real LeRobot 0.6.1 (slow: its venv is built on first use) ---------------------------------


def _lerobot_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}


def _run_in(venv: Path, script: str, *args: str, timeout: int = 300) -> str:
    """Run ``script`` with the LeRobot venv's Python; its last stdout line, parsed as JSON."""
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        env=_lerobot_env(),
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


_LOAD = """
import json, sys, torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

root = sys.argv[1]
ds = LeRobotDataset("local/synth", root=root)
batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=0)))
print(json.dumps({
    "len": len(ds),
    "episodes": ds.num_episodes,
    "fps": ds.fps,
    "shapes": {k: list(v) for k, v in ds.meta.shapes.items()},
    "camera_keys": ds.meta.camera_keys,
    "tasks": list(ds.meta.tasks.index),
    "item_task": ds[0]["task"],
    "batch": {k: [str(v.dtype), list(v.shape)] for k, v in batch.items() if torch.is_tensor(v)},
    "pixels": [[float(batch[k].min()), float(batch[k].max())] for k in ds.meta.camera_keys],
    "stats": {k: list(v["mean"].shape) for k, v in ds.meta.stats.items()},
}))
"""


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("image_size", [32, 0])
def test_real_lerobot_loads_the_synthetic_dataset(
    lerobot_venv: Path, tmp_path: Path, image_size: int
) -> None:
    """LeRobotDataset (0.6.1, ``datasets/lerobot_dataset.py``) reads what synth writes."""
    path = tmp_path / "synth"
    synth_lerobot(path, episodes=3, steps=10, image_size=image_size)
    got = json.loads(_run_in(lerobot_venv, _LOAD, str(path)))
    assert (got["len"], got["episodes"], got["fps"]) == (30, 3, 30)
    assert got["shapes"]["observation.state"] == [6]
    assert got["shapes"]["action"] == [6]
    assert got["item_task"] == got["tasks"][0]
    assert got["batch"]["observation.state"] == ["torch.float32", [4, 6]]
    assert got["batch"]["action"] == ["torch.float32", [4, 6]]
    assert got["batch"]["index"] == ["torch.int64", [4]]
    assert got["stats"]["observation.state"] == [6]
    if image_size:
        assert got["camera_keys"] == [CAM]
        assert got["shapes"][CAM] == [32, 32, 3]
        assert got["batch"][CAM] == ["torch.float32", [4, 3, 32, 32]]
        assert 0.0 <= got["pixels"][0][0] < got["pixels"][0][1] <= 1.0
        assert got["stats"][CAM] == [3, 1, 1]
    else:
        assert got["camera_keys"] == []
        assert CAM not in got["shapes"]


_WRITE = """
import json, sys
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

root, dtype = sys.argv[1], sys.argv[2]
names = json.loads(sys.argv[3])
features = {
    "observation.state": {"dtype": "float32", "shape": (6,), "names": names},
    "action": {"dtype": "float32", "shape": (6,), "names": names},
    "observation.images.front": {
        "dtype": dtype, "shape": (64, 64, 3), "names": ["height", "width", "channels"]
    },
}
ds = LeRobotDataset.create(
    "local/ref", fps=30, features=features, root=root, use_videos=dtype == "video"
)
rng = np.random.default_rng(0)
for _ in range(2):
    for _ in range(6):
        ds.add_frame({
            "observation.state": rng.random(6, dtype=np.float32),
            "action": rng.random(6, dtype=np.float32),
            "observation.images.front": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            "task": "pick",
        })
    ds.save_episode()
ds.finalize()
print(json.dumps("done"))
"""


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("dtype", ["image", "video"])
def test_datasets_lerobot_writes_pass_the_check(
    lerobot_venv: Path, tmp_path: Path, dtype: str
) -> None:
    """LeRobotDataset.create/add_frame/save_episode/finalize (``datasets/lerobot_dataset.py``,
    ``dataset_writer.py``) write what check_lerobot accepts; a lost video is reported."""
    path = tmp_path / "ref"
    _run_in(lerobot_venv, _WRITE, str(path), dtype, json.dumps(list(SO101_JOINTS)))
    report = check_lerobot(path)
    assert report.problems == ()
    assert (report.n_episodes, report.total_frames) == (2, 12)
    assert [(f.name, f.dtype) for f in report.cameras] == [(CAM, dtype)]
    if dtype == "video":
        (path / VIDEO).unlink()
        assert _lines(path) == [
            f"videos/{CAM}/: no video for the video feature '{CAM}' "
            f"(videos/{CAM}/chunk-*/file-*.mp4)",
            f"{VIDEO}: missing; episode(s) 0, 1 of '{CAM}' point at it",
        ]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_real_lerobot_train_accepts_the_synthetic_dataset(
    lerobot_venv: Path, tmp_path: Path
) -> None:
    """A tiny ACT trains 3 steps on it on the CPU and writes checkpoints
    (``scripts/lerobot_train.py``, ``common/train_utils.py``)."""
    path = tmp_path / "synth"
    synth_lerobot(path, episodes=2, steps=30, image_size=64)
    out = tmp_path / "out"
    result = subprocess.run(
        [
            str(lerobot_venv / "bin" / "lerobot-train"),
            "--dataset.repo_id=local/synth",
            f"--dataset.root={path}",
            "--dataset.video_backend=pyav",
            "--policy.type=act",
            "--policy.device=cpu",
            "--policy.push_to_hub=false",
            "--wandb.enable=false",
            "--policy.pretrained_backbone_weights=null",
            "--policy.dim_model=64",
            "--policy.n_heads=2",
            "--policy.dim_feedforward=128",
            "--policy.n_encoder_layers=1",
            "--policy.n_decoder_layers=1",
            "--policy.chunk_size=10",
            "--policy.n_action_steps=10",
            "--batch_size=2",
            "--steps=3",
            "--save_freq=2",
            "--log_freq=1",
            "--num_workers=0",
            f"--output_dir={out}",
        ],
        capture_output=True,
        text=True,
        env=_lerobot_env(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dataset.num_frames=60" in result.stderr
    assert "step:3 " in result.stderr
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["000002", "000003", "last"]
    assert os.readlink(checkpoints / "last") == "000003"
    assert (checkpoints / "000003/pretrained_model/model.safetensors").is_file()
    assert (checkpoints / "000003/training_state/training_step.json").is_file()

"""runner.data.torchfile against real torch.save output."""

from __future__ import annotations

import os
import pickle
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from runner.data import TensorInfo, load_array, read_tensor_info
from runner.errors import DatasetError

torch = pytest.importorskip("torch")

_BASE = torch.arange(4 * 6 * 5, dtype=torch.float32).reshape(4, 6, 5)

CASES: dict[str, Callable[[], object]] = {
    "contiguous": lambda: _BASE.clone(),
    "slice with offset": lambda: _BASE[1:, 2:],
    "transposed": lambda: _BASE.transpose(0, 2),
    "strided": lambda: _BASE[::2, :, ::3],
    "expanded (stride 0)": lambda: torch.ones(3, 1).expand(3, 4),
    "uint8 images": lambda: torch.randint(0, 255, (3, 8, 8, 3), dtype=torch.uint8),
    "int64": lambda: torch.arange(7, dtype=torch.int64) - 3,
    "float64": lambda: torch.linspace(0, 1, 5, dtype=torch.float64),
    "float16": lambda: torch.linspace(0, 1, 5, dtype=torch.float16),
    "bool": lambda: _BASE > 50,
    "uint16 (v3 rebuild, untyped storage)": lambda: _BASE.to(torch.uint16)[1:],
    "scalar": lambda: torch.tensor(3.5),
    "empty": lambda: torch.zeros(0, 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trips_real_torch_save(tmp_path: Path, case: str) -> None:
    tensor = CASES[case]()
    path = tmp_path / "t.pth"
    torch.save(tensor, path)

    info = read_tensor_info(path)
    assert info.ok, info.problem
    assert info.shape == tuple(tensor.shape)
    assert info.dtype == str(tensor.dtype).removeprefix("torch.")
    assert info.stride == tuple(tensor.stride())
    assert info.storage_offset == tensor.storage_offset()
    assert info.itemsize == tensor.element_size()
    assert info.nbytes == tensor.numel() * tensor.element_size()
    # torch.save writes a view's whole storage, offset and all.
    assert info.storage_nbytes == tensor.untyped_storage().nbytes() == info.file_nbytes

    array = load_array(path)
    expected = tensor.numpy()
    assert array.shape == expected.shape
    assert array.dtype == expected.dtype
    np.testing.assert_array_equal(array, expected)
    assert array.flags.c_contiguous and array.flags.writeable and array.flags.owndata


def test_a_slice_keeps_its_whole_storage_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "slice.pth"
    torch.save(_BASE[2, 3:], path)
    info = read_tensor_info(path)
    assert info.storage_offset == 2 * 30 + 3 * 5
    assert info.storage_nbytes == _BASE.numel() * 4
    assert info.nbytes == 3 * 5 * 4
    np.testing.assert_array_equal(load_array(path), _BASE[2, 3:].numpy())


def test_bfloat16_header_reads_but_numpy_cannot_hold_it(tmp_path: Path) -> None:
    path = tmp_path / "bf.pth"
    torch.save(torch.ones(2, 3, dtype=torch.bfloat16), path)
    info = read_tensor_info(path)
    assert (info.dtype, info.itemsize, info.shape) == ("bfloat16", 2, (2, 3))
    with pytest.raises(DatasetError, match=r"bf\.pth: holds bfloat16, which numpy cannot"):
        load_array(path)


def test_truncated_file_is_a_dataset_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "obses.pth"
    torch.save(torch.zeros(4, 16, 16, 3, dtype=torch.uint8), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError) as err:
        read_tensor_info(path)
    assert str(err.value).startswith(f"{path}: truncated or corrupt")
    assert "re-copy or regenerate" in str(err.value)


def _rewrite(path: Path, change: Callable[[str, bytes], bytes]) -> None:
    """Rewrite the archive member by member through ``change(name, data)``."""
    with zipfile.ZipFile(path) as zf:
        members = [(name, zf.read(name)) for name in zf.namelist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(name, change(name, data))


def test_storage_shorter_than_its_header_says(tmp_path: Path) -> None:
    path = tmp_path / "states.pth"
    torch.save(torch.ones(2, 5, 22), path)
    _rewrite(path, lambda name, data: data[:100] if "/data/" in name else data)

    info = read_tensor_info(path)
    assert not info.ok
    assert info.file_nbytes == 100
    assert info.problem == (
        "its storage data/0 holds 100 bytes but the header says 880 "
        "(truncated or corrupt file; re-copy or regenerate it)"
    )
    with pytest.raises(DatasetError, match="holds 100 bytes but the header says 880"):
        load_array(path)


def test_missing_storage_member(tmp_path: Path) -> None:
    path = tmp_path / "t.pth"
    torch.save(torch.ones(3), path)
    with zipfile.ZipFile(path) as zf:
        members = [(n, zf.read(n)) for n in zf.namelist() if "/data/" not in n]
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    info = read_tensor_info(path)
    assert info.file_nbytes is None
    assert info.problem == "its storage data/0 is missing from the archive (corrupt file)"


def test_big_endian_storage(tmp_path: Path) -> None:
    path = tmp_path / "t.pth"
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    torch.save(tensor, path)

    def swap(name: str, data: bytes) -> bytes:
        if name.endswith("/byteorder"):
            return b"big"
        if "/data/" in name:
            return np.frombuffer(data, "<f4").astype(">f4").tobytes()
        return data

    _rewrite(path, swap)
    assert read_tensor_info(path).byteorder == "big"
    np.testing.assert_array_equal(load_array(path), tensor.numpy())


def test_legacy_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    torch.save(torch.ones(3), path, _use_new_zipfile_serialization=False)
    with pytest.raises(DatasetError, match=r"old\.pth: a legacy \(pre-zip\) torch.save file"):
        read_tensor_info(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, this is text\n", r"not a torch.save file \(it starts with b'hello, t'\)"),
        (b"", r"empty; re-copy or regenerate"),
        (pickle.dumps([1, 2]), r"not a torch.save file"),
    ],
)
def test_not_a_torch_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        read_tensor_info(path)


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x/readme.txt", "hi")
    with pytest.raises(DatasetError, match=r"a zip archive but not a torch.save file"):
        read_tensor_info(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope\.pth: does not exist"):
        read_tensor_info(tmp_path / "nope.pth")
    with pytest.raises(DatasetError, match="is a folder"):
        read_tensor_info(tmp_path)


def test_a_dict_of_tensors_is_not_a_tensor(tmp_path: Path) -> None:
    path = tmp_path / "d.pth"
    torch.save({"a": torch.ones(2), "b": torch.zeros(1)}, path)
    with pytest.raises(DatasetError, match=r"holds a dict \(keys 'a', 'b'\), not a single tensor"):
        read_tensor_info(path)


class _Payload:
    """Unpickling this would create a folder: proof of code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_arbitrary_pickled_code_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"x": _Payload(marker)}, path)
    with pytest.raises(DatasetError) as err:
        read_tensor_info(path)
    assert not marker.exists()
    message = str(err.value)
    assert message.startswith(f"{path}: holds a pickled ")
    assert "mkdir, which runner will not execute" in message


def _bytes_read() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_header_of_a_100mb_file_reads_kilobytes_in_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "obses.pth"
    torch.save(torch.zeros(530, 256, 256, 3, dtype=torch.uint8), path)
    assert path.stat().st_size > 100_000_000

    before = _bytes_read()
    info = read_tensor_info(path)
    read = _bytes_read() - before
    assert info.ok and info.shape == (530, 256, 256, 3)
    assert read < 64 * 1024, f"read {read} bytes for a header"

    times = []
    for _ in range(5):
        start = time.perf_counter()
        read_tensor_info(path)
        times.append(time.perf_counter() - start)
    assert min(times) < 0.010, times


def test_tensor_info_is_frozen() -> None:
    info = TensorInfo((1,), "uint8", 1, (1,), 0, 1, 1)
    with pytest.raises(AttributeError):
        info.dtype = "float32"  # type: ignore[misc]
    assert info.ok and info.nbytes == 1

"""Read ``torch.save`` files without importing torch and without executing their pickle.

A ``torch.save`` file (zip format, torch >= 1.6) is an uncompressed zip archive::

    <name>/data.pkl        the pickled object; tensors refer to storages by key
    <name>/data/<key>      one member per storage: its raw bytes
    <name>/byteorder       "little" or "big"
    <name>/version, ...    format bookkeeping

:func:`read_tensor_info` unpickles ``data.pkl`` with an unpickler that knows only
torch's tensor-rebuild functions, storage classes and dtypes (as local stand-ins)
and refuses every other global, so a hostile file cannot run code. It reads the
zip directory and ``data.pkl`` only (a few KB, whatever the tensor's size) and
compares the storage size the header promises with the member's real size,
which catches truncated or corrupted files. :func:`load_array` also reads the
storage bytes and returns a numpy array; use it for small tensors only.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import DatasetError

__all__ = ["TensorInfo", "load_array", "read_tensor_info"]

#: torch dtype name -> (itemsize, numpy dtype or None where numpy has no equivalent).
_DTYPES: dict[str, tuple[int, str | None]] = {
    "float64": (8, "f8"),
    "float32": (4, "f4"),
    "float16": (2, "f2"),
    "bfloat16": (2, None),
    "complex128": (16, "c16"),
    "complex64": (8, "c8"),
    "complex32": (4, None),
    "int64": (8, "i8"),
    "int32": (4, "i4"),
    "int16": (2, "i2"),
    "int8": (1, "i1"),
    "uint64": (8, "u8"),
    "uint32": (4, "u4"),
    "uint16": (2, "u2"),
    "uint8": (1, "u1"),
    "bool": (1, "b1"),
    "float8_e4m3fn": (1, None),
    "float8_e4m3fnuz": (1, None),
    "float8_e5m2": (1, None),
    "float8_e5m2fnuz": (1, None),
    "float8_e8m0fnu": (1, None),
}

#: Legacy typed-storage classes (``torch.FloatStorage``, ...) -> dtype name.
_STORAGE_CLASSES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}

_ZIP_MAGIC = b"PK\x03\x04"
# A legacy (pre-zip) torch.save file starts with a protocol-2 pickle of this magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


@dataclass(frozen=True)
class TensorInfo:
    """What the header of a ``torch.save`` file says about the one tensor it holds.

    ``problem`` is ``None`` when the file is consistent; otherwise one sentence
    (the storage member is missing, shorter or longer than the header says, or
    the tensor's view reaches past its storage).
    """

    shape: tuple[int, ...]
    #: torch dtype name without the ``torch.`` prefix: ``"float32"``, ``"uint8"``.
    dtype: str
    #: Bytes per element.
    itemsize: int
    stride: tuple[int, ...]
    #: Offset of the tensor's first element in its storage, in elements.
    storage_offset: int
    #: Size of the storage in bytes, as the header declares it.
    storage_nbytes: int
    #: Size of the storage member in the archive; ``None`` when it is missing.
    file_nbytes: int | None
    #: ``"little"`` or ``"big"``: the byte order the storage was written in.
    byteorder: str = "little"
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor itself (a view may use less than its whole storage)."""
        return self.numel * self.itemsize


def read_tensor_info(path: Path | str) -> TensorInfo:
    """Describe the tensor in a ``torch.save`` file from its header, reading a few KB.

    Raises :class:`DatasetError` when ``path`` is missing, is not a zip-format
    torch file (a legacy torch file, or something else), is truncated so that
    its zip directory is gone, or holds anything but a single tensor.
    """
    path = Path(path)
    try:
        info, _ = _read(path, with_data=False)
    except _Unreadable as exc:
        raise DatasetError(f"{path}: {exc.reason}") from exc.__cause__
    return info


def load_array(path: Path | str) -> np.ndarray[Any, Any]:
    """Load the tensor in a ``torch.save`` file as a numpy array (a copy that owns its memory).

    Reads the whole storage into memory: meant for small tensors (states,
    actions). Raises :class:`DatasetError` for everything
    :func:`read_tensor_info` does, for an inconsistent file, and for dtypes
    numpy cannot represent (bfloat16, float8).
    """
    path = Path(path)
    try:
        info, raw = _read(path, with_data=True)
    except _Unreadable as exc:
        raise DatasetError(f"{path}: {exc.reason}") from exc.__cause__
    if info.problem is not None:
        raise DatasetError(f"{path}: {info.problem}")
    np_code = _DTYPES[info.dtype][1]
    if np_code is None:
        raise DatasetError(
            f"{path}: holds {info.dtype}, which numpy cannot represent; "
            f"convert it with tensor.float() before saving"
        )
    dtype = np.dtype(np_code).newbyteorder("<" if info.byteorder == "little" else ">")
    if info.numel == 0:
        return np.empty(info.shape, dtype=dtype.newbyteorder("="))
    assert raw is not None
    view: np.ndarray[Any, Any] = np.ndarray(
        info.shape,
        dtype=dtype,
        buffer=raw,
        offset=info.storage_offset * info.itemsize,
        strides=tuple(s * info.itemsize for s in info.stride),
    )
    return np.array(view, dtype=dtype.newbyteorder("="), order="C", copy=True)


# -- the archive ---------------------------------------------------------------------------------


class _Unreadable(Exception):
    """The file cannot be described at all; ``reason`` says why and what to do, without the path."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _read(path: Path, *, with_data: bool) -> tuple[TensorInfo, bytes | None]:
    """The header of ``path`` (and its storage bytes when asked); raises :class:`_Unreadable`."""
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError as exc:
        raise _Unreadable("does not exist") from exc
    except IsADirectoryError as exc:
        raise _Unreadable("is a folder, not a torch.save file") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise _not_a_zip(path, exc) from exc
    with zf:
        prefix = _archive_prefix(zf)
        try:
            pickled = zf.read(prefix + "data.pkl")
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise _Unreadable(
                f"corrupt: its data.pkl cannot be read ({exc}); re-copy or regenerate the file"
            ) from exc
        obj = _unpickle(pickled)
        if not isinstance(obj, _Tensor):
            raise _Unreadable(
                f"holds {_describe(obj)}, not a single tensor; "
                f"save the tensor itself with torch.save(tensor, path)"
            )
        byteorder = _byteorder(zf, prefix)
        member = prefix + "data/" + obj.storage.key
        try:
            file_nbytes: int | None = zf.getinfo(member).file_size
        except KeyError:
            file_nbytes = None
        info = _info(obj, file_nbytes, byteorder, member=f"data/{obj.storage.key}")
        raw = None
        if with_data and info.ok:
            try:
                raw = zf.read(member)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise _Unreadable(
                    f"corrupt: its storage data/{obj.storage.key} cannot be read ({exc}); "
                    f"re-copy or regenerate the file"
                ) from exc
    return info, raw


def _not_a_zip(path: Path, exc: Exception) -> _Unreadable:
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_LEGACY_MAGIC))
    except OSError as err:
        return _Unreadable(f"cannot be read ({err})")
    if head.startswith(_LEGACY_MAGIC):
        return _Unreadable(
            "a legacy (pre-zip) torch.save file, which runner does not read; re-save it in "
            "the zip format with torch >= 1.6: torch.save(torch.load(p), p)"
        )
    if head.startswith(_ZIP_MAGIC):
        return _Unreadable(
            f"truncated or corrupt (its zip directory is unreadable: {exc}); "
            f"re-copy or regenerate the file"
        )
    if not head:
        return _Unreadable("empty; re-copy or regenerate the file")
    return _Unreadable(
        f"not a torch.save file (it starts with {head[:8]!r}); "
        f"write it with torch.save(tensor, path)"
    )


def _archive_prefix(zf: zipfile.ZipFile) -> str:
    # torch names the top folder after the file, but loads any single top folder.
    for name in zf.namelist():
        if name.endswith("/data.pkl") and name.count("/") == 1:
            return name[: -len("data.pkl")]
    raise _Unreadable(
        "a zip archive but not a torch.save file (it has no data.pkl); "
        "write it with torch.save(tensor, path)"
    )


def _byteorder(zf: zipfile.ZipFile, prefix: str) -> str:
    try:
        order = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
    except (KeyError, zipfile.BadZipFile, OSError, EOFError):
        return "little"  # files from before torch wrote it are little-endian in practice
    return order if order in ("little", "big") else "little"


def _info(tensor: _Tensor, file_nbytes: int | None, byteorder: str, *, member: str) -> TensorInfo:
    dtype = tensor.dtype
    itemsize = _DTYPES[dtype][0]
    storage = tensor.storage
    storage_nbytes = storage.nbytes
    problem = None
    if file_nbytes is None:
        problem = f"its storage {member} is missing from the archive (corrupt file)"
    elif file_nbytes != storage_nbytes:
        problem = (
            f"its storage {member} holds {file_nbytes} bytes but the header says "
            f"{storage_nbytes} (truncated or corrupt file; re-copy or regenerate it)"
        )
    elif tensor.numel > 0:
        pairs = zip(tensor.shape, tensor.stride, strict=True)
        last = tensor.offset + sum((n - 1) * s for n, s in pairs)
        if (last + 1) * itemsize > storage_nbytes:
            problem = (
                f"the tensor's view ends at byte {(last + 1) * itemsize} "
                f"but its storage has only {storage_nbytes} (corrupt file)"
            )
    return TensorInfo(
        shape=tensor.shape,
        dtype=dtype,
        itemsize=itemsize,
        stride=tensor.stride,
        storage_offset=tensor.offset,
        storage_nbytes=storage_nbytes,
        file_nbytes=file_nbytes,
        byteorder=byteorder,
        problem=problem,
    )


def _describe(obj: object) -> str:
    if isinstance(obj, dict):
        keys = ", ".join(repr(k) for k in list(obj)[:5])
        return f"a dict (keys {keys})" if keys else "an empty dict"
    return f"a {type(obj).__name__}"


# -- the restricted unpickler --------------------------------------------------------------------


class _Malformed(Exception):
    """data.pkl has the right globals in the wrong shape."""


class _Refused(pickle.UnpicklingError):
    """data.pkl names a global that would have to be executed."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


@dataclass(frozen=True)
class _DType:
    name: str


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co; ``untyped`` for ``torch.UntypedStorage``."""

    dtype: str
    untyped: bool = False


@dataclass(frozen=True)
class _Storage:
    key: str
    #: The storage's element dtype (uint8 for an untyped storage).
    dtype: str
    #: Elements for a typed storage, bytes for an untyped one.
    numel: int
    untyped: bool

    @property
    def nbytes(self) -> int:
        return self.numel if self.untyped else self.numel * _DTYPES[self.dtype][0]


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise _Malformed(f"{what} is {value!r}, not a tuple of non-negative ints")
    return tuple(value)


def _tensor(storage: object, offset: object, size: object, stride: object, dtype: str) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise _Malformed(f"a tensor's storage is {type(storage).__name__}")
    if not isinstance(offset, int) or offset < 0:
        raise _Malformed(f"a tensor's storage offset is {offset!r}")
    shape, strides = _ints(size, "a tensor's size"), _ints(stride, "a tensor's stride")
    if len(shape) != len(strides):
        raise _Malformed(f"a tensor has size {shape} but stride {strides}")
    return _Tensor(storage, offset, shape, strides, dtype)


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object) -> _Tensor:
    dtype = storage.dtype if isinstance(storage, _Storage) else "uint8"
    return _tensor(storage, offset, size, stride, dtype)


def _rebuild_tensor_v2(
    storage: object, offset: object, size: object, stride: object, *_rest: object
) -> _Tensor:
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(
    storage: object,
    offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    backward_hooks: object,
    dtype: object,
    *_rest: object,
) -> _Tensor:
    if not isinstance(dtype, _DType):
        raise _Malformed(f"a tensor's dtype is {dtype!r}")
    return _tensor(storage, offset, size, stride, dtype.name)


_REBUILDERS: dict[str, Any] = {
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
}


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` into stand-ins; any other global raises :class:`_Refused`."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in _REBUILDERS:
            return _REBUILDERS[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" and name in _STORAGE_CLASSES:
            return _StorageType(_STORAGE_CLASSES[name])
        if module in ("torch", "torch.storage") and name == "UntypedStorage":
            return _StorageType("uint8", untyped=True)
        if module == "torch" and name in _DTYPES:
            return _DType(name)
        raise _Refused(module, name)

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or len(pid) != 5:
            raise _Malformed(f"unknown persistent id {pid!r}")
        typename, storage_type, key, _location, numel = pid
        if isinstance(typename, bytes):
            typename = typename.decode("ascii", "replace")
        if typename != "storage" or not isinstance(storage_type, _StorageType):
            raise _Malformed(f"unknown persistent id {pid!r}")
        if not isinstance(numel, int) or numel < 0:
            raise _Malformed(f"a storage has size {numel!r}")
        return _Storage(str(key), storage_type.dtype, numel, storage_type.untyped)


def _unpickle(data: bytes) -> object:
    try:
        return _TorchUnpickler(io.BytesIO(data)).load()
    except _Refused as exc:
        raise _Unreadable(
            f"holds a pickled {exc.qualname}, which runner will not execute; only plain "
            f"tensors are read: save the tensor itself with torch.save(tensor, path)"
        ) from exc
    except _Malformed as exc:
        raise _Unreadable(f"malformed header ({exc}); regenerate the file") from exc
    except Exception as exc:
        # Any failure while unpickling bytes we did not write is a corrupt file,
        # never a bug in runner: name the file rather than crash.
        raise _Unreadable(
            f"corrupt header ({type(exc).__name__}: {exc}); re-copy or regenerate the file"
        ) from exc

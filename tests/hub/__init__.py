"""Fixtures and checkpoint builders shared by the Hub tests.

Test modules import the fixtures by name (``from tests.hub import hub_fixture as hub_fixture``);
each is registered under its short name (``hub``, ``client``, ``hf_env``).

The builders write real files in each trainer's layout: safetensors files built byte by byte,
``torch.save``-shaped zips (stored entries under ``<name>/``, a protocol-2 ``data.pkl``), so
the tests need neither torch nor safetensors (a test that uses real ``torch.save`` skips
without torch).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.harness import save_checkpoint
from runner.hub.client import HubClient
from runner.rundir import Event, read_events
from tests.fakes import hub_server
from tests.fakes.hub_server import HubServer, RequestRecord, isolate_client

__all__ = [
    "BIG",
    "LFS_PUT",
    "REPO",
    "age",
    "client_fixture",
    "commits",
    "dino_file",
    "events",
    "harness_checkpoint",
    "hf_env_fixture",
    "hub_fixture",
    "lerobot_checkpoint",
    "lfs_puts",
    "openpi_checkpoint",
    "safetensors_bytes",
    "torch_zip_bytes",
]

REPO = "runner-test/ckpt"
LFS_PUT = r"^/lfs-storage/"
BIG = 11 * 1024 * 1024  # over the Hub's 10 MB rule: always an LFS file


@pytest.fixture(name="hf_env")
def hf_env_fixture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The in-process client isolated for the emulator (see ``isolate_client``)."""
    return isolate_client(monkeypatch, tmp_path / "hf_home")


@pytest.fixture(name="hub")
def hub_fixture(
    tmp_path: Path, hf_env: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HubServer]:
    # TCP_NODELAY on the emulator's connections, as any production HTTP server has: without it
    # every small answer waits ~40 ms for the client's delayed ACK (headers and body go out in
    # two writes), which makes request count, not bytes, the cost of a test.
    monkeypatch.setattr(hub_server._Handler, "disable_nagle_algorithm", True)
    with HubServer(tmp_path / "hub-storage") as server:
        yield server


@pytest.fixture(name="client")
def client_fixture(hub: HubServer) -> HubClient:
    return HubClient(endpoint=hub.url, token=hub.token)


# ------------------------------------------------------------------------------------------------
# Request log helpers
# ------------------------------------------------------------------------------------------------


def lfs_puts(hub: HubServer, since: int = 0) -> list[RequestRecord]:
    return [r for r in hub.requests[since:] if r.method == "PUT" and re.search(LFS_PUT, r.path)]


def commits(hub: HubServer, since: int = 0) -> list[RequestRecord]:
    return [r for r in hub.requests[since:] if r.method == "POST" and "/commit/" in r.path]


def events(run_dir: Path, kind: str | None = None) -> list[Event]:
    return [e for e in read_events(run_dir) if kind is None or e.kind == kind]


# ------------------------------------------------------------------------------------------------
# File builders
# ------------------------------------------------------------------------------------------------


def safetensors_bytes(tensors: dict[str, int]) -> bytes:
    """A valid safetensors file: ``{name: nbytes}`` of uint8 tensors with random content."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, size in tensors.items():
        header[name] = {"dtype": "U8", "shape": [size], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + os.urandom(offset)


def torch_zip_bytes(
    archive: str, storages: list[int], *, epoch: int | None = None, seed: bytes = b""
) -> bytes:
    """A ``torch.save``-shaped zip: ``archive/data.pkl`` (protocol 2, a dict with ``epoch``
    when given), ``archive/data/N`` storages, ``archive/version``, ``archive/byteorder``.
    ``seed`` makes the content reproducible (same seed and sizes: same CRCs)."""
    buffer = io.BytesIO()
    obj: dict[str, Any] = {"model": [f"storage-{i}" for i in range(len(storages))]}
    if epoch is not None:
        obj = {"epoch": epoch, **obj}
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive}/data.pkl", pickle.dumps(obj, protocol=2))
        zf.writestr(f"{archive}/byteorder", "little")
        for i, size in enumerate(storages):
            repeated = (seed * (size // max(1, len(seed)) + 1))[:size]
            block = repeated if seed else os.urandom(size)
            zf.writestr(f"{archive}/data/{i}", block)
        zf.writestr(f"{archive}/version", "3\n")
    return buffer.getvalue()


def harness_checkpoint(
    root: Path, step: int, *, size: int = 1000, metrics: dict[str, Any] | None = None
) -> Path:
    """A complete harness checkpoint: ``state.pt`` (a torch-shaped zip of about ``size`` random
    bytes) and a small config."""

    def write(folder: Path) -> None:
        (folder / "state.pt").write_bytes(torch_zip_bytes("state", [max(0, size - 600)]))
        (folder / "config.json").write_text(json.dumps({"step": step}))

    return save_checkpoint(root, step, write, metrics=metrics or {"loss": 1.0 / (step + 1)})


def lerobot_checkpoint(root: Path, step: int, *, size: int = 2000, last: bool = True) -> Path:
    """LeRobot's layout: ``root/NNNNNN/{pretrained_model,training_state}``, ``root/last``."""
    folder = root / f"{step:06d}"
    model = folder / "pretrained_model"
    state = folder / "training_state"
    model.mkdir(parents=True)
    state.mkdir()
    (model / "config.json").write_text(json.dumps({"type": "act"}))
    (model / "model.safetensors").write_bytes(safetensors_bytes({"w": size, "b": 64}))
    (model / "train_config.json").write_text(json.dumps({"steps": 100000}))
    (state / "optimizer_state.safetensors").write_bytes(safetensors_bytes({"m": size}))
    (state / "optimizer_param_groups.json").write_text(json.dumps([{"lr": 1e-4}]))
    (state / "training_step.json").write_text(json.dumps({"step": step}))
    if last:
        link = root / "last"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(folder.name)
    return folder


def dino_file(
    folder: Path, name: str, *, epoch: int | None = None, size: int = 3000, seed: bytes = b""
) -> Path:
    """A DINO WM checkpoint file ``folder/name`` (``model_{epoch}.pth``, ``model_latest.pth``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    archive = name.removesuffix(".pth")
    path.write_bytes(torch_zip_bytes(archive, [size, 128], epoch=epoch, seed=seed))
    return path


def openpi_checkpoint(root: Path, step: int, *, size: int = 2000) -> Path:
    """openpi's layout (orbax): ``root/CONFIG/EXP/STEP/{params,train_state,assets}``."""
    folder = root / "pi0_so101" / "exp1" / str(step)
    for sub in ("params", "train_state", "assets/so101"):
        (folder / sub).mkdir(parents=True)
    (folder / "params" / "_METADATA").write_text(json.dumps({"tree": "params"}))
    (folder / "params" / "d").mkdir()
    (folder / "params" / "d" / "0a1b2c").write_bytes(os.urandom(size))
    (folder / "train_state" / "_METADATA").write_text(json.dumps({"tree": "state"}))
    (folder / "train_state" / "ocdbt.process_0").write_bytes(os.urandom(size // 2))
    (folder / "assets" / "so101" / "norm_stats.json").write_text(json.dumps({"mean": [0.0]}))
    (folder / "_CHECKPOINT_METADATA").write_text(json.dumps({"step": step}))
    return folder


def age(path: Path, seconds: float) -> None:
    """Set the mtime of ``path`` and everything under it ``seconds`` into the past."""
    when = os.stat(path).st_mtime - seconds
    targets = [path, *path.rglob("*")] if path.is_dir() else [path]
    for target in targets:
        if not target.is_symlink():
            os.utime(target, (when, when))

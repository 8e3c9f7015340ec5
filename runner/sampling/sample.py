"""One sample of everything the agent watches, and the sampler that takes it.

A :class:`Sample` is one tick: the host (RAM, load, disks), the supervised
process tree, every GPU and the XID events since the last tick. It is frozen
and serialises to one JSON line (:meth:`Sample.to_json`), which
:meth:`Sample.from_json` turns back into an equal sample.

:class:`Sampler` takes the three parts in turn. A part that fails is recorded
in :attr:`Sample.errors` and left empty (``None`` or ``()``); the other parts
are kept: one broken sensor must not blind the agent to the rest.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from runner.sampling.host import MOUNTS_PATH, HostSampler, HostSnapshot
from runner.sampling.procs import CMDLINE_MAX, ProcessTree, ProcessTreeSampler

__all__ = [
    "SAMPLE_FORMAT",
    "GpuSnapshotLike",
    "GpuSource",
    "NoGpus",
    "Sample",
    "Sampler",
    "XidEventLike",
]

#: Version of the JSON line; bumped when a field changes meaning.
SAMPLE_FORMAT = 1
#: Longest error message kept per failed part, in characters.
_ERROR_MAX = 300


class GpuSnapshotLike(Protocol):
    """One GPU at one tick (:class:`runner.sampling.nvml.GpuSnapshot`)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, read back by ``GpuSnapshot.from_dict``."""
        ...


class XidEventLike(Protocol):
    """One XID event (:class:`runner.sampling.nvml.XidEvent`)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, read back by ``XidEvent.from_dict``."""
        ...


class GpuSource(Protocol):
    """Where a sample's GPUs come from: NVML, a recorded trace, or nothing."""

    def sample_gpus(self) -> tuple[Sequence[GpuSnapshotLike], Sequence[XidEventLike]]:
        """The GPUs of one tick and the XID events since the previous call.

        May raise: the sampler records the failure and keeps the other parts.
        """
        ...


class NoGpus:
    """The GPU source of a host without GPUs: always zero GPUs and no events."""

    def sample_gpus(self) -> tuple[Sequence[GpuSnapshotLike], Sequence[XidEventLike]]:
        """``((), ())``."""
        return (), ()


@dataclass(frozen=True)
class Sample:
    """Everything sampled at one tick.

    Round trip: ``Sample.from_json(s.to_json()) == s`` when the GPUs and events
    are :mod:`runner.sampling.nvml` snapshots.
    """

    #: When the tick started, seconds since the epoch.
    time: float
    #: RAM, load and disks; ``None`` when the host part failed (see ``errors``).
    host: HostSnapshot | None
    #: The supervised process tree; ``None`` when no process is supervised or the
    #: part failed (see ``errors``).
    procs: ProcessTree | None
    #: One snapshot per GPU, NVML index order; ``()`` on a GPU-less host or when
    #: the GPU part failed (see ``errors``).
    gpus: tuple[GpuSnapshotLike, ...] = ()
    #: XID events received since the previous sample.
    xids: tuple[XidEventLike, ...] = ()
    #: One line per part that failed: ``"<part>: <ExceptionType>: <message>"``,
    #: part being ``gpus``, ``procs`` or ``host``. Empty when all went well.
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The sample as JSON-ready values (the object :meth:`to_json` writes)."""
        return {
            "v": SAMPLE_FORMAT,
            "time": self.time,
            "host": None if self.host is None else self.host.to_dict(),
            "procs": None if self.procs is None else self.procs.to_dict(),
            "gpus": [g.to_dict() for g in self.gpus],
            "xids": [x.to_dict() for x in self.xids],
            "errors": list(self.errors),
        }

    def to_json(self) -> str:
        """One line of JSON, no newline at the end."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sample:
        """The inverse of :meth:`to_dict`.

        Raises ``ValueError`` for another format version and ``KeyError`` for a
        missing field.
        """
        # Imported here so that this module works while NVML's is unimportable.
        from runner.sampling.nvml import GpuSnapshot, XidEvent

        if data.get("v") != SAMPLE_FORMAT:
            raise ValueError(f"sample format {data.get('v')!r} is not {SAMPLE_FORMAT}")
        host, procs = data["host"], data["procs"]
        return cls(
            time=data["time"],
            host=None if host is None else HostSnapshot.from_dict(host),
            procs=None if procs is None else ProcessTree.from_dict(procs),
            gpus=tuple(GpuSnapshot.from_dict(g) for g in data["gpus"]),
            xids=tuple(XidEvent.from_dict(x) for x in data["xids"]),
            errors=tuple(data["errors"]),
        )

    @classmethod
    def from_json(cls, line: str) -> Sample:
        """Read one line written by :meth:`to_json`.

        Raises ``ValueError`` (``json.JSONDecodeError`` included) for a line that
        is not a sample, ``KeyError`` for one missing a field.
        """
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("a sample line must hold a JSON object")
        return cls.from_dict(data)


class Sampler:
    """Takes a :class:`Sample`: GPUs, the process tree of ``root_pid``, and ``disks``.

    ``gpu_source`` defaults to :class:`NoGpus`; ``root_pid`` ``None`` means no
    process tree (``Sample.procs`` is ``None``); ``disks`` maps a role (``run``,
    ``checkpoints``, ``dataset``, ``shm``) to a path. The sampler keeps the
    previous CPU times and used space, so CPU and write rates are per interval
    between two calls of :meth:`sample`. Not thread-safe.
    """

    def __init__(
        self,
        *,
        gpu_source: GpuSource | None = None,
        root_pid: int | None = None,
        disks: Mapping[str, str | os.PathLike[str]] | None = None,
        mounts_path: str | os.PathLike[str] = MOUNTS_PATH,
        cmdline_max: int = CMDLINE_MAX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gpu_source: GpuSource = gpu_source if gpu_source is not None else NoGpus()
        self.host = HostSampler(disks, mounts_path=mounts_path)
        self.cmdline_max = cmdline_max
        self.procs: ProcessTreeSampler | None = None
        self.set_root_pid(root_pid)
        self._clock = clock

    def set_root_pid(self, root_pid: int | None) -> None:
        """Supervise another process (a restart), or none; its CPU history starts afresh."""
        self.procs = (
            None if root_pid is None else ProcessTreeSampler(root_pid, cmdline_max=self.cmdline_max)
        )

    def sample(self) -> Sample:
        """Sample every part now. Never raises for a failing part (see ``errors``)."""
        now = self._clock()
        errors: list[str] = []
        gpus: tuple[GpuSnapshotLike, ...] = ()
        xids: tuple[XidEventLike, ...] = ()
        procs: ProcessTree | None = None
        host: HostSnapshot | None = None
        try:
            gpu_list, xid_list = self.gpu_source.sample_gpus()
            gpus, xids = tuple(gpu_list), tuple(xid_list)
        except Exception as exc:  # one broken part must not lose the others
            errors.append(_describe("gpus", exc))
        if self.procs is not None:
            try:
                procs = self.procs.sample()
            except Exception as exc:
                errors.append(_describe("procs", exc))
        try:
            host = self.host.sample()
        except Exception as exc:
            errors.append(_describe("host", exc))
        return Sample(now, host, procs, gpus, xids, tuple(errors))


def _describe(part: str, exc: BaseException) -> str:
    line = f"{part}: {type(exc).__name__}: {exc}".replace("\n", " ")
    return line if len(line) <= _ERROR_MAX else line[: _ERROR_MAX - 3] + "..."

"""Which GPUs a job should use: the users' score, hard filters, and the export by UUID.

The score is the users' own (their shared-server script): ``0.7 x memory used %
+ 0.3 x utilisation %``; lower is freer. Filters come first and are hard: a
GPU that fails one is never picked, whatever its score. A filter that cannot be
checked (the value is not available) excludes the GPU and says so: a choice
runner cannot justify is not made.

Ties in score go to the higher NVML index, as nvitop does: on a shared server
the others' jobs tend to start from GPU 0.

The choice is exported by UUID with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``: CUDA
numbers GPUs fastest first and renumbers them under ``CUDA_VISIBLE_DEVICES``,
which is how the users' script once trained on the wrong GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runner.errors import DeviceError, UsageError
from runner.sampling.nvml import GpuSnapshot

__all__ = [
    "DEFAULT_WEIGHTS",
    "Candidate",
    "Filters",
    "NotEnoughGpus",
    "Selection",
    "Weights",
    "process_owner",
    "rank",
    "score",
    "select",
]

GIB = 1 << 30


@dataclass(frozen=True)
class Weights:
    """How much memory in use and utilisation count in the score."""

    #: Weight of memory used, percent of the GPU's total.
    memory: float = 0.7
    #: Weight of GPU utilisation, percent.
    utilization: float = 0.3

    @classmethod
    def parse(cls, text: str) -> Weights:
        """``"0.7,0.3"`` (memory, utilisation); raises :class:`UsageError` naming ``--weights``."""
        parts = [p.strip() for p in text.split(",")]
        try:
            memory, utilization = (float(p) for p in parts)
        except ValueError:
            raise UsageError(
                f"--weights {text!r}: expected two numbers MEMORY,UTILISATION, e.g. 0.7,0.3"
            ) from None
        if memory < 0 or utilization < 0 or memory + utilization == 0:
            raise UsageError(
                f"--weights {text!r}: weights must be >= 0 and not both 0, e.g. 0.7,0.3"
            )
        return cls(memory, utilization)

    def __str__(self) -> str:
        return f"{self.memory:g} x memory % + {self.utilization:g} x utilisation %"


DEFAULT_WEIGHTS = Weights()


@dataclass(frozen=True)
class Filters:
    """Hard limits a GPU must pass to be picked; ``None``/``False`` turns one off."""

    #: At least this much free memory, GiB (2^30 bytes, as nvidia-smi's MiB).
    min_free_gib: float | None = None
    #: At most this GPU utilisation, percent.
    max_util_percent: float | None = None
    #: No compute process of another user (a process whose owner cannot be
    #: read, e.g. a host pid seen from a container, counts as another user's).
    exclude_busy: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values."""
        return {
            "min_free_gib": self.min_free_gib,
            "max_util_percent": self.max_util_percent,
            "exclude_busy": self.exclude_busy,
        }


@dataclass(frozen=True)
class Candidate:
    """One GPU as the selection saw it."""

    snapshot: GpuSnapshot
    #: The score (lower is freer); ``None`` for a lost GPU.
    score: float | None
    #: Why the GPU cannot be picked, one phrase per failed filter; ``()`` if it can.
    excluded: tuple[str, ...] = ()

    @property
    def eligible(self) -> bool:
        """True when every filter passed."""
        return not self.excluded

    def to_dict(self) -> dict[str, Any]:
        """Index, UUID, score and exclusions as JSON-ready values."""
        return {
            "index": self.snapshot.index,
            "uuid": self.snapshot.uuid,
            "score": self.score,
            "excluded": list(self.excluded),
        }


@dataclass(frozen=True)
class Selection:
    """The GPUs picked, and every GPU ranked: eligible best first, then the excluded."""

    wanted: int
    weights: Weights
    filters: Filters
    ranked: tuple[Candidate, ...]
    #: The ``wanted`` best eligible GPUs, best first (CUDA's device 0 is the best).
    chosen: tuple[GpuSnapshot, ...]

    @property
    def visible_devices(self) -> str:
        """The value of ``CUDA_VISIBLE_DEVICES``: the chosen UUIDs, comma-separated."""
        return ",".join(g.uuid or "" for g in self.chosen)

    @property
    def env(self) -> dict[str, str]:
        """The environment that pins a process to the chosen GPUs."""
        return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": self.visible_devices}

    def to_dict(self) -> dict[str, Any]:
        """The selection as JSON-ready values."""
        return {
            "wanted": self.wanted,
            "weights": {"memory": self.weights.memory, "utilization": self.weights.utilization},
            "filters": self.filters.to_dict(),
            "ranked": [c.to_dict() for c in self.ranked],
            "chosen": [g.uuid for g in self.chosen],
            "env": self.env,
        }


class NotEnoughGpus(DeviceError):
    """Fewer GPUs pass the filters than were asked for; ``ranked`` says why each failed."""

    def __init__(self, wanted: int, ranked: Sequence[Candidate]) -> None:
        self.wanted = wanted
        self.ranked = tuple(ranked)
        eligible = sum(c.eligible for c in ranked)
        total = len(ranked)
        why = "; ".join(
            f"GPU {c.snapshot.index}: {', '.join(c.excluded)}" for c in ranked if c.excluded
        )
        if not why:
            message = f"cannot pick {wanted} GPUs: this machine has {total}"
        else:
            message = (
                f"cannot pick {wanted} GPU{'s' if wanted > 1 else ''}: "
                f"{eligible} of {total} pass the filters ({why}); "
                "ask for fewer or loosen the filters"
            )
        super().__init__(message)


OwnerOf = Callable[[int], "int | None"]


def process_owner(pid: int) -> int | None:
    """The real uid of ``pid``; ``None`` when unreadable (gone, denied, another pid namespace)."""
    import psutil

    try:
        return int(psutil.Process(pid).uids().real)
    except (psutil.Error, OSError):
        return None


def score(snapshot: GpuSnapshot, weights: Weights = DEFAULT_WEIGHTS) -> float | None:
    """``weights.memory x memory % + weights.utilization x utilisation %``; lower is freer.

    Unknown memory counts as full (100 %); unknown utilisation as 0 %, so memory
    decides. ``None`` for a lost GPU.
    """
    if snapshot.lost:
        return None
    memory = snapshot.memory_percent
    util = snapshot.utilization_gpu_percent
    return weights.memory * (100.0 if memory is None else memory) + weights.utilization * (
        0.0 if util is None else float(util)
    )


def _exclusions(
    snap: GpuSnapshot, filters: Filters, uid: int | None, owner_of: OwnerOf
) -> tuple[str, ...]:
    if snap.lost:
        return (f"lost ({snap.lost_reason or 'GPU is lost'})",)
    out: list[str] = []
    if not snap.uuid:
        out.append("no UUID to export it by")
    if filters.min_free_gib is not None:
        free = snap.memory_free_bytes
        if free is None:
            out.append("free memory not available")
        elif free < filters.min_free_gib * GIB:
            out.append(f"{free / GIB:.1f} GiB free < {filters.min_free_gib:g} GiB")
    if filters.max_util_percent is not None:
        util = snap.utilization_gpu_percent
        if util is None:
            out.append("utilisation not available")
        elif util > filters.max_util_percent:
            out.append(f"utilisation {util}% > {filters.max_util_percent:g}%")
    if filters.exclude_busy:
        if snap.processes is None:
            out.append("process list not available")
        else:
            others = [p.pid for p in snap.processes if uid is None or owner_of(p.pid) != uid]
            if others:
                pids = ", ".join(str(pid) for pid in others)
                whose = (
                    "process {} of another user"
                    if len(others) == 1
                    else "processes {} of other users"
                )
                out.append("busy: " + whose.format(pids))
    return tuple(out)


def rank(
    snapshots: Sequence[GpuSnapshot],
    *,
    weights: Weights = DEFAULT_WEIGHTS,
    filters: Filters = Filters(),
    uid: int | None = None,
    owner_of: OwnerOf = process_owner,
) -> tuple[Candidate, ...]:
    """Every GPU scored and filtered: eligible ones best first, then the excluded by index.

    ``uid`` is whose processes do not make a GPU busy (default: this process's
    real uid); ``owner_of`` maps a pid to its uid (psutil; injectable for tests).
    """
    if uid is None and filters.exclude_busy:
        uid = os.getuid()
    candidates = [
        Candidate(s, score(s, weights), _exclusions(s, filters, uid, owner_of)) for s in snapshots
    ]
    eligible = [c for c in candidates if c.eligible]
    # Round so float noise cannot break a tie that the user would call equal.
    eligible.sort(key=lambda c: (round(c.score or 0.0, 6), -c.snapshot.index))
    excluded = sorted((c for c in candidates if not c.eligible), key=lambda c: c.snapshot.index)
    return (*eligible, *excluded)


def select(
    snapshots: Sequence[GpuSnapshot],
    count: int = 1,
    *,
    weights: Weights = DEFAULT_WEIGHTS,
    filters: Filters = Filters(),
    uid: int | None = None,
    owner_of: OwnerOf = process_owner,
) -> Selection:
    """The ``count`` best GPUs that pass ``filters``; raises :class:`NotEnoughGpus` otherwise."""
    if count < 1:
        raise UsageError(f"cannot pick {count} GPUs: ask for 1 or more")
    ranked = rank(snapshots, weights=weights, filters=filters, uid=uid, owner_of=owner_of)
    eligible = [c.snapshot for c in ranked if c.eligible]
    if len(eligible) < count:
        raise NotEnoughGpus(count, ranked)
    return Selection(count, weights, filters, ranked, tuple(eligible[:count]))

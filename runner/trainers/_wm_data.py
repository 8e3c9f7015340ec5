"""The franka dataset layout, read with torch, and the training windows cut from it.

Layout (DINO WM's ``franka_cube_stack_ds/``)::

    states.pth        float32 (N, T_max, 22)  EE pos 3, EE quat wxyz 4, gripper 1, q 7, dq 7
    actions.pth       float32 (N, T_max, 9)   7 joint commands + 2 gripper commands
    metadata.pkl      pickle {'episode_lengths': [L_0, ..., L_{N-1}], ...}
    000000/obses.pth  uint8 (L_0, H, W, 3)
    ...

:class:`FrankaData` checks every shape this trainer relies on and raises
:class:`~runner.errors.DatasetError` naming the file at fault; episode images are
memory-mapped and read only where a window needs them.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from runner.errors import DatasetError

STATE_DIM = 22
ACTION_DIM = 9

#: Memory-mapped episodes cost an address range, not RAM: keep many open.
_MAX_MAPPED = 1024
#: Episodes saved in torch's legacy (non-zip) format cannot be mapped and are read
#: whole (~180 MB each at 935x256x256x3), so only a few stay cached.
_MAX_LOADED = 4


def _load_tensor(path: Path, expected: str) -> torch.Tensor:
    if not path.is_file():
        raise DatasetError(f"dataset {path.parent}: {path.name} is missing (expected {expected})")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DatasetError(f"dataset file {path} cannot be read as a tensor: {exc}") from exc
    if not isinstance(value, torch.Tensor):
        raise DatasetError(f"{path} holds a {type(value).__name__}, expected a tensor {expected}")
    return value


def _check_shape(path: Path, value: torch.Tensor, last: int, expected: str) -> None:
    if value.ndim != 3 or value.shape[-1] != last or not value.is_floating_point():
        raise DatasetError(
            f"{path} has shape {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}, "
            f"expected {expected}"
        )


class FrankaData:
    """States, actions and episode lengths in memory; episode images opened on demand.

    Raises :class:`DatasetError` (from the constructor) when a file is missing or a
    shape is not the one documented in the module docstring.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        if not root.is_dir():
            raise DatasetError(
                f"dataset folder {root} does not exist; pass data.path=... or set DATASET_DIR"
            )
        states = _load_tensor(root / "states.pth", f"float32 (N, T_max, {STATE_DIM})")
        _check_shape(root / "states.pth", states, STATE_DIM, f"float32 (N, T_max, {STATE_DIM})")
        actions = _load_tensor(root / "actions.pth", f"float32 (N, T_max, {ACTION_DIM})")
        n, t_max = states.shape[0], states.shape[1]
        _check_shape(
            root / "actions.pth", actions, ACTION_DIM, f"float32 ({n}, {t_max}, {ACTION_DIM})"
        )
        if actions.shape[:2] != states.shape[:2]:
            raise DatasetError(
                f"{root / 'actions.pth'} has shape {tuple(actions.shape)}, expected "
                f"({n}, {t_max}, {ACTION_DIM}) to match states.pth"
            )
        self.states = states.float().contiguous()
        self.actions = actions.float().contiguous()
        self.lengths = self._read_lengths(root / "metadata.pkl", n, t_max)
        for i in range(n):
            if not self.obses_path(i).is_file():
                raise DatasetError(
                    f"dataset {root}: {self.obses_path(i).relative_to(root)} is missing "
                    f"(episode {i} of {n})"
                )
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._mapped: dict[int, bool] = {}
        self.image_shape: tuple[int, int] | None = None
        for i in range(n):
            # Mapping reads only the header, so every episode is checked up front
            # rather than failing hours into a run.
            self._open(i, check_only=True)

    @staticmethod
    def _read_lengths(path: Path, n: int, t_max: int) -> list[int]:
        if not path.is_file():
            raise DatasetError(
                f"dataset {path.parent}: metadata.pkl is missing "
                "(expected a pickled dict with 'episode_lengths')"
            )
        try:
            with path.open("rb") as f:
                meta = pickle.load(f)
        except Exception as exc:
            raise DatasetError(f"{path} cannot be unpickled: {exc}") from exc
        if not isinstance(meta, dict) or "episode_lengths" not in meta:
            raise DatasetError(f"{path} has no 'episode_lengths' entry")
        raw = meta["episode_lengths"]
        try:
            lengths = [int(x) for x in raw]
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: 'episode_lengths' is not a list of integers") from exc
        if len(lengths) != n:
            raise DatasetError(
                f"{path}: 'episode_lengths' has {len(lengths)} entries, states.pth has {n} episodes"
            )
        bad = [(i, x) for i, x in enumerate(lengths) if not 1 <= x <= t_max]
        if bad:
            i, x = bad[0]
            raise DatasetError(
                f"{path}: episode {i} has length {x}, expected 1..{t_max} (T_max of states.pth)"
            )
        return lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def obses_path(self, episode: int) -> Path:
        return self.root / f"{episode:06d}" / "obses.pth"

    def _open(self, episode: int, *, check_only: bool = False) -> torch.Tensor:
        path = self.obses_path(episode)
        mapped = True
        try:
            obses = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:
            if check_only:
                # A legacy-format file cannot be mapped; checking it would read
                # it whole, so it is checked when first used instead.
                return torch.empty(0)
            mapped = False
            try:
                obses = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise DatasetError(f"{path} cannot be read as a tensor: {exc}") from exc
        except Exception as exc:
            raise DatasetError(f"{path} cannot be read as a tensor: {exc}") from exc
        if not isinstance(obses, torch.Tensor):
            raise DatasetError(f"{path} holds a {type(obses).__name__}, expected a tensor")
        length = self.lengths[episode]
        if (
            obses.ndim != 4
            or obses.shape[0] != length
            or obses.shape[-1] != 3
            or obses.dtype != torch.uint8
        ):
            raise DatasetError(
                f"{path} has shape {tuple(obses.shape)} {str(obses.dtype).removeprefix('torch.')}, "
                f"expected uint8 ({length}, H, W, 3) (episode length {length} from metadata.pkl)"
            )
        if self.image_shape is None:
            self.image_shape = (int(obses.shape[1]), int(obses.shape[2]))
        self._mapped[episode] = mapped
        return obses

    def obses(self, episode: int) -> torch.Tensor:
        """The episode's images, uint8 (L, H, W, 3); memory-mapped where the file allows."""
        cached = self._cache.get(episode)
        if cached is not None:
            self._cache.move_to_end(episode)
            return cached
        obses = self._open(episode)
        self._cache[episode] = obses
        loaded = [e for e in self._cache if not self._mapped[e]]
        for e in loaded[: max(0, len(loaded) - _MAX_LOADED)]:
            del self._cache[e]
        while len(self._cache) > _MAX_MAPPED:
            self._cache.popitem(last=False)
        return obses

    def __getstate__(self) -> dict[str, Any]:
        # A spawned DataLoader worker must not receive copies of cached images.
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state


def split_episodes(n: int, seed: int, val_fraction: float = 0.1) -> tuple[list[int], list[int]]:
    """Deterministic train/val split by episode: 10% for validation, at least 1 when n >= 2."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = 0 if n < 2 else max(1, round(n * val_fraction))
    return sorted(order[n_val:]), sorted(order[:n_val])


@dataclass(frozen=True)
class WindowSpec:
    """How a training sample is cut: ``num_hist`` frames ``frameskip`` apart, plus a target."""

    num_hist: int
    frameskip: int
    img_size: int

    @property
    def span(self) -> int:
        """Steps from the first history frame to the target frame."""
        return self.num_hist * self.frameskip


class Windows(Dataset[dict[str, torch.Tensor]]):
    """Every window of ``spec`` that fits inside one of ``episodes``.

    A sample starting at ``t`` holds:

    - ``obs``: float (num_hist + 1, 3, img_size, img_size) in [0, 1], frames
      t, t+fs, ..., t+num_hist*fs (the last is the prediction target);
    - ``proprio``: float (num_hist + 1, 22), the state at those frames;
    - ``actions``: float (num_hist, 9*fs), for history frame k the fs actions
      t+k*fs ... t+(k+1)*fs-1 concatenated (DINO WM's action dim x frameskip).
    """

    def __init__(self, data: FrankaData, episodes: Sequence[int], spec: WindowSpec) -> None:
        self.data = data
        self.spec = spec
        rows = [
            (e, t)
            for e in episodes
            for t in range(max(0, data.lengths[e] - spec.span))  # t + span <= length - 1
        ]
        self.index = np.asarray(rows, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        episode, start = (int(x) for x in self.index[i])
        fs, k = self.spec.frameskip, self.spec.num_hist
        frames = torch.arange(k + 1) * fs + start
        obs = self.data.obses(episode)[frames].permute(0, 3, 1, 2)
        size = self.spec.img_size
        if obs.shape[-2:] != (size, size):
            # Resizing uint8 (exact rounding, no clamp needed) is several times
            # cheaper than resizing the float copy.
            obs = F.interpolate(
                obs.contiguous(memory_format=torch.channels_last),
                size=(size, size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        obs = obs.float().div_(255.0).contiguous()
        actions = self.data.actions[episode, start : start + k * fs].reshape(k, fs * ACTION_DIM)
        return {
            "obs": obs,
            "proprio": self.data.states[episode, frames],
            "actions": actions,
        }


def normalisation(data: FrankaData, episodes: Sequence[int]) -> dict[str, torch.Tensor]:
    """Mean and std of states and actions over the valid steps of ``episodes``.

    The std has a floor so a constant dimension (a gripper that never moves) does
    not divide by zero.
    """
    if not episodes:
        episodes = list(range(len(data)))
    states = torch.cat([data.states[e, : data.lengths[e]] for e in episodes])
    actions = torch.cat([data.actions[e, : data.lengths[e]] for e in episodes])
    return {
        "state_mean": states.mean(0),
        "state_std": states.std(0, correction=0).clamp_min(1e-3),
        "action_mean": actions.mean(0),
        "action_std": actions.std(0, correction=0).clamp_min(1e-3),
    }


class EpochSampler(Sampler[int]):
    """A shuffled order fixed by ``(seed, epoch)``, so a resumed run sees the same batches.

    :meth:`set_position` picks the epoch and how many samples of it were already
    consumed before the next ``iter()``.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        self.epoch = epoch
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(self.n, generator=g)[self.skip :].tolist()

    def __len__(self) -> int:
        return max(0, self.n - self.skip)

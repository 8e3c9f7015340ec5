"""The franka_cube_stack dataset layout (DINO WM): check it, and synthesise small ones.

A dataset folder holds::

    states.pth      float32 (N, T_max, 22): EE position 3, EE quaternion wxyz 4, gripper 1,
                    joint positions 7, joint velocities 7; zero past each episode's length
    actions.pth     float32 (N, T_max, 9): 7 joint commands, 2 gripper commands
    metadata.pkl    a pickled dict with 'episode_lengths' (N ints; more keys allowed)
    000000/obses.pth, 000001/obses.pth, ...
                    uint8 (T, H, W, 3) per episode, T == that episode's length

:func:`check_franka` reads the headers of every file (never image data) plus the
small states and actions arrays, and reports every problem it finds.
:func:`synth_franka` writes a synthetic pick-and-place dataset in that layout.
"""

from __future__ import annotations

import importlib.util
import io
import math
import pickle
import re
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runner.data._staging import check_new_folder, write_staged
from runner.data.torchfile import TensorInfo, _read, _Unreadable, load_array
from runner.errors import DatasetError, UsageError, missing_dependency

if TYPE_CHECKING:
    import torch

__all__ = [
    "ACTION_DIM",
    "STATE_DIM",
    "FrankaReport",
    "Problem",
    "check_franka",
    "synth_franka",
]

STATE_DIM = 22
ACTION_DIM = 9
STATES = "states.pth"
ACTIONS = "actions.pth"
METADATA = "metadata.pkl"
OBSES = "obses.pth"
_EPISODE_DIR = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset."""

    #: Path relative to the dataset folder: ``"states.pth"``, ``"000012/obses.pth"``,
    #: ``"000012/"`` for an episode folder.
    where: str
    #: What is wrong and, where it is not obvious, what to do about it.
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class FrankaReport:
    """What :func:`check_franka` found.

    Fields are ``None`` when every file that defines them is missing or unreadable.
    """

    path: Path
    #: Episodes per metadata.pkl's episode_lengths (else states.pth, else actions.pth).
    n_episodes: int | None
    #: The padded time dimension of states.pth (else actions.pth).
    t_max: int | None
    #: (H, W) of most episodes' images; episodes that differ are problems.
    image_hw: tuple[int, int] | None
    #: Sum of the episode lengths in metadata.pkl (0 when unreadable).
    total_frames: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_franka(path: Path) -> FrankaReport:
    """Check a franka_cube_stack dataset folder and report every problem, not just the first.

    Reads file headers, metadata.pkl and the states/actions arrays (to find
    NaN/inf inside each episode's valid steps); image data is never read, so
    the time does not depend on image size. Raises :class:`DatasetError` only
    when ``path`` is not a folder at all.
    """
    root = Path(path)
    if not root.exists():
        raise DatasetError(
            f"no dataset at {root}; point at the folder that holds states.pth, "
            f"or make one with `runner data synth`"
        )
    if not root.is_dir():
        raise DatasetError(f"{root} is a file; point at the dataset folder that holds it")
    problems: list[Problem] = []

    states = _header(root, STATES, problems)
    actions = _header(root, ACTIONS, problems)
    _expect_float_sequence(states, STATES, STATE_DIM, problems)
    _expect_float_sequence(actions, ACTIONS, ACTION_DIM, problems)
    lengths = _episode_lengths(root, problems)

    # Episode counts: metadata.pkl defines the episodes; the tensors must agree with it.
    counts = {
        f"{METADATA} episode_lengths": None if lengths is None else len(lengths),
        STATES: _dim(states, 0),
        ACTIONS: _dim(actions, 0),
    }
    known = [(name, n) for name, n in counts.items() if n is not None]
    n_episodes = known[0][1] if known else None
    for name, n in known[1:]:
        if n != n_episodes:
            problems.append(Problem(name, f"has {n} episodes but {known[0][0]} has {n_episodes}"))

    t_max = _dim(states, 1)
    t_actions = _dim(actions, 1)
    if t_max is None:
        t_max = t_actions
    elif t_actions is not None and t_actions != t_max:
        problems.append(
            Problem(ACTIONS, f"has T_max {t_actions} but {STATES} has {t_max}; pad both alike")
        )

    if lengths is not None:
        for i, n in enumerate(lengths):
            if n <= 0:
                problems.append(Problem(METADATA, f"episode_lengths[{i}] is {n}, not positive"))
            elif t_max is not None and n > t_max:
                problems.append(
                    Problem(METADATA, f"episode_lengths[{i}] is {n}, more than T_max {t_max}")
                )

    image_hw = _check_episodes(root, n_episodes, lengths, problems)
    for name, info, dim in ((STATES, states, STATE_DIM), (ACTIONS, actions, ACTION_DIM)):
        _check_finite(root, name, info, dim, lengths, problems)

    return FrankaReport(
        path=root,
        n_episodes=n_episodes,
        t_max=t_max,
        image_hw=image_hw,
        total_frames=sum(n for n in lengths if n > 0) if lengths else 0,
        problems=tuple(problems),
    )


# -- checks --------------------------------------------------------------------------------------


def _header(root: Path, name: str, problems: list[Problem]) -> TensorInfo | None:
    """The header of ``root/name``, or ``None`` with a problem recorded."""
    path = root / name
    if not path.is_file():
        problems.append(Problem(name, "missing" if not path.exists() else "not a file"))
        return None
    try:
        info, _ = _read(path, with_data=False)
    except _Unreadable as exc:
        problems.append(Problem(name, exc.reason))
        return None
    if info.problem is not None:
        problems.append(Problem(name, info.problem))
    return info


def _dim(info: TensorInfo | None, axis: int) -> int | None:
    return info.shape[axis] if info is not None and len(info.shape) == 3 else None


def _expect_float_sequence(
    info: TensorInfo | None, name: str, dim: int, problems: list[Problem]
) -> None:
    if info is None:
        return
    if info.dtype != "float32":
        problems.append(Problem(name, f"dtype is {info.dtype}, expected float32"))
    if len(info.shape) != 3:
        problems.append(Problem(name, f"shape is {info.shape}, expected (N, T_max, {dim})"))
    elif info.shape[2] != dim:
        problems.append(
            Problem(name, f"last dimension is {info.shape[2]}, expected {dim} (shape {info.shape})")
        )


def _check_episodes(
    root: Path, n_episodes: int | None, lengths: list[int] | None, problems: list[Problem]
) -> tuple[int, int] | None:
    """Check the episode folders and their obses.pth headers; returns the common (H, W)."""
    present = {p.name for p in root.iterdir() if p.is_dir() and _EPISODE_DIR.match(p.name)}
    if n_episodes is None:
        expected = sorted(name for name in present if len(name) == 6)
    else:
        expected = [f"{i:06d}" for i in range(n_episodes)]
        last = f"000000 to {n_episodes - 1:06d}" if n_episodes else "none"
        for name in sorted(present - set(expected)):
            problems.append(
                Problem(
                    f"{name}/",
                    f"unexpected episode folder; for {n_episodes} episodes they are {last}",
                )
            )

    sizes: dict[str, tuple[int, int]] = {}
    for name in expected:
        if name not in present:
            problems.append(Problem(f"{name}/", "episode folder is missing"))
            continue
        where = f"{name}/{OBSES}"
        info = _header(root, where, problems)
        if info is None:
            continue
        if info.dtype != "uint8":
            problems.append(Problem(where, f"dtype is {info.dtype}, expected uint8"))
        if len(info.shape) != 4:
            problems.append(Problem(where, f"shape is {info.shape}, expected (T, H, W, 3)"))
            continue
        frames, height, width, channels = info.shape
        if channels != 3:
            problems.append(
                Problem(where, f"has {channels} channels (shape {info.shape}), expected 3 (RGB)")
            )
        index = int(name)
        if lengths is not None and index < len(lengths) and frames != lengths[index]:
            problems.append(
                Problem(
                    where,
                    f"has {frames} frames but {METADATA} episode_lengths[{index}] "
                    f"is {lengths[index]}",
                )
            )
        sizes[name] = (height, width)

    if not sizes:
        return None
    # The first-seen of the most common sizes is "the" size; the rest are the odd ones out.
    common = Counter(sizes.values()).most_common(1)[0][0]
    for name, hw in sizes.items():
        if hw != common:
            problems.append(
                Problem(
                    f"{name}/{OBSES}",
                    f"images are {hw[0]}x{hw[1]} but the other episodes' are "
                    f"{common[0]}x{common[1]}",
                )
            )
    return common


def _check_finite(
    root: Path,
    name: str,
    info: TensorInfo | None,
    dim: int,
    lengths: list[int] | None,
    problems: list[Problem],
) -> None:
    """Report NaN/inf inside each episode's valid steps (the zero padding is not checked)."""
    if info is None or not info.ok or len(info.shape) != 3 or not info.dtype.startswith("float"):
        return
    try:
        values = load_array(root / name)
    except DatasetError as exc:
        problems.append(Problem(name, str(exc).removeprefix(f"{root / name}: ")))
        return
    n, t_max = values.shape[0], values.shape[1]
    valid = np.ones((n, t_max), dtype=bool)
    if lengths is not None:
        ends = np.zeros(n, dtype=np.int64)
        m = min(n, len(lengths))
        ends[:m] = np.clip(lengths[:m], 0, t_max)
        valid = np.arange(t_max)[None, :] < ends[:, None]
    bad = ~np.isfinite(values).all(axis=2) & valid
    for episode in np.flatnonzero(bad.any(axis=1)):
        steps = np.flatnonzero(bad[episode])
        dims = np.flatnonzero(~np.isfinite(values[episode, steps]).all(axis=0))
        problems.append(
            Problem(
                name,
                f"episode {episode} has NaN/inf at {len(steps)} step(s) "
                f"(first at step {steps[0]}; dims {', '.join(str(d) for d in dims)} of {dim})",
            )
        )


def _episode_lengths(root: Path, problems: list[Problem]) -> list[int] | None:
    path = root / METADATA
    fix = "re-create it with pickle.dump({'episode_lengths': [...]}, f)"
    if not path.is_file():
        problems.append(Problem(METADATA, f"missing; {fix}"))
        return None
    try:
        meta = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
    except _RefusedGlobal as exc:
        problems.append(
            Problem(
                METADATA,
                f"holds a pickled {exc.qualname}, which runner will not execute; keep it to "
                f"dicts, lists, numbers, strings and numpy arrays",
            )
        )
        return None
    except Exception as exc:
        # Whatever unpickling garbage raises, it means the same thing: an unreadable file.
        problems.append(Problem(METADATA, f"unreadable ({type(exc).__name__}: {exc}); {fix}"))
        return None
    if not isinstance(meta, dict):
        problems.append(Problem(METADATA, f"holds a {type(meta).__name__}, expected a dict; {fix}"))
        return None
    if "episode_lengths" not in meta:
        keys = ", ".join(repr(k) for k in list(meta)[:8]) or "none"
        problems.append(Problem(METADATA, f"has no 'episode_lengths' (keys: {keys}); {fix}"))
        return None
    raw = meta["episode_lengths"]
    if isinstance(raw, np.ndarray):
        raw = raw.tolist() if raw.ndim == 1 else None
    if isinstance(raw, (list, tuple)) and all(_is_int(n) for n in raw):
        return [int(n) for n in raw]
    problems.append(
        Problem(METADATA, f"episode_lengths is {_short(raw)}, expected a list of ints; {fix}")
    )
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, qualname: str) -> None:
        super().__init__(qualname)
        self.qualname = qualname


class _MetadataUnpickler(pickle.Unpickler):
    """Plain containers and numpy arrays/scalars only; any other global is refused, not run."""

    _BUILTINS = frozenset(
        {"set", "frozenset", "list", "dict", "tuple", "int", "float", "complex", "str", "bytes"}
        | {"bytearray", "bool", "slice", "range"}
    )
    _NUMPY = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            *((m, "_reconstruct") for m in ("numpy.core.multiarray", "numpy._core.multiarray")),
            *((m, "scalar") for m in ("numpy.core.multiarray", "numpy._core.multiarray")),
            *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in self._BUILTINS:
            return getattr(__import__("builtins"), name)
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("_codecs", "encode"):  # protocol-2 pickles spell bytes this way
            import codecs

            return codecs.encode
        if (module, name) in self._NUMPY:
            return super().find_class(module, name)
        raise _RefusedGlobal(f"{module}.{name}")


# -- synthesis -----------------------------------------------------------------------------------

#: Seconds per step of the synthetic control loop (joint velocities are q differences / DT).
DT = 0.05
_CUBE = 0.05  # cube edge, m
_OPEN, _CLOSED = 0.08, _CUBE  # gripper width: fully open, closed on a cube
_HOVER = 0.20  # transit height of the EE, m
_MIN_STEPS = 2  # as runner.spec.SyntheticData allows; ~20+ makes a meaningful episode


def synth_franka(
    path: Path,
    *,
    episodes: int,
    steps: int,
    image_size: int = 256,
    seed: int = 0,
    on_episode: Callable[[int, int], None] | None = None,
) -> FrankaReport:
    """Write a synthetic franka_cube_stack dataset to ``path`` and return its check report.

    Each episode is a scripted pick-and-place: the end effector moves from home
    above a red cube, grasps it, carries it onto a blue cube, releases it and
    retreats. Images are a top-down camera view of both cubes, the gripper
    fingers and the EE's shadow; states follow from the EE path through a
    smooth arm model (unit quaternions, joint velocities = joint position
    differences / :data:`DT`); actions are the next step's joint positions and
    finger targets. Episode lengths vary between 70 % and 100 % of ``steps``
    (= T_max); states and actions are zero past each length.

    The dataset is written to a hidden sibling folder and renamed into place
    at the end, so an interrupted run leaves no half dataset at ``path``.
    ``on_episode(done, total)`` is called after each episode is written.

    Raises :class:`UsageError` for out-of-range arguments, :class:`DatasetError`
    when ``path`` exists and is not an empty folder, and
    :class:`runner.errors.DependencyError` when torch is not installed.
    """
    path = Path(path)
    if episodes < 1:
        raise UsageError(f"episodes must be at least 1 (got {episodes})")
    if steps < _MIN_STEPS:
        raise UsageError(f"steps must be at least {_MIN_STEPS} (got {steps})")
    if image_size < 8:
        raise UsageError(f"image_size must be at least 8 pixels (got {image_size})")
    check_new_folder(path)
    if importlib.util.find_spec("torch") is None:
        raise missing_dependency("torch")
    write_staged(
        path, lambda out: _write_dataset(out, episodes, steps, image_size, seed, on_episode)
    )
    return check_franka(path)


def _write_dataset(
    out: Path,
    episodes: int,
    steps: int,
    image_size: int,
    seed: int,
    on_episode: Callable[[int, int], None] | None,
) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    low = max(_MIN_STEPS, math.ceil(0.7 * steps))
    lengths = torch.randint(low, steps + 1, (episodes,), generator=gen).tolist()
    states = torch.zeros(episodes, steps, STATE_DIM, dtype=torch.float32)
    actions = torch.zeros(episodes, steps, ACTION_DIM, dtype=torch.float32)
    for i, length in enumerate(lengths):
        ep_states, ep_actions, frames = _episode(gen, length, image_size)
        states[i, :length] = ep_states
        actions[i, :length] = ep_actions
        folder = out / f"{i:06d}"
        folder.mkdir()
        torch.save(frames, folder / OBSES)
        if on_episode is not None:
            on_episode(i + 1, episodes)
    torch.save(states, out / STATES)
    torch.save(actions, out / ACTIONS)
    meta = {
        "episode_lengths": lengths,
        "generator": "runner synth_franka",
        "seed": seed,
        "image_size": image_size,
        "dt": DT,
    }
    with (out / METADATA).open("wb") as fh:
        pickle.dump(meta, fh)


def _episode(
    gen: torch.Generator, length: int, image_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """States (L, 22), actions (L, 9) and frames (L, H, W, 3) uint8 of one pick and place."""
    import torch

    def uniform(lo: float, hi: float, n: int = 1) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)

    # Two cubes on the table, far enough apart not to touch; the red one (a) goes onto b.
    while True:
        a_xy = torch.cat([uniform(0.35, 0.65), uniform(-0.18, 0.18)])
        b_xy = torch.cat([uniform(0.35, 0.65), uniform(-0.18, 0.18)])
        if torch.linalg.norm(a_xy - b_xy) > 0.12:
            break
    a_yaw, b_yaw = uniform(-math.pi / 4, math.pi / 4, 2).tolist()
    home = torch.cat([uniform(0.42, 0.48), uniform(-0.05, 0.05), uniform(0.38, 0.42)])
    half = _CUBE / 2

    def at(xy: torch.Tensor, z: float) -> list[float]:
        return [*xy.tolist(), z]

    # Keyframes: (fraction of the episode, EE position, EE yaw, gripper width).
    keys = [
        (0.00, home.tolist(), 0.0, _OPEN),
        (0.18, at(a_xy, _HOVER), a_yaw, _OPEN),
        (0.28, at(a_xy, half), a_yaw, _OPEN),
        (0.34, at(a_xy, half), a_yaw, _CLOSED),  # grasped
        (0.44, at(a_xy, _HOVER), a_yaw, _CLOSED),
        (0.62, at(b_xy, _HOVER), b_yaw, _CLOSED),
        (0.72, at(b_xy, _CUBE + half), b_yaw, _CLOSED),
        (0.78, at(b_xy, _CUBE + half), b_yaw, _OPEN),  # released on top of b
        (0.86, at(b_xy, _HOVER), b_yaw, _OPEN),
        (1.00, home.tolist(), 0.0, _OPEN),
    ]
    fracs = torch.tensor([k[0] for k in keys], dtype=torch.float64)
    key_vals = torch.tensor([[*k[1], k[2], k[3]] for k in keys], dtype=torch.float64)
    s = torch.linspace(0.0, 1.0, length, dtype=torch.float64)
    seg = (torch.searchsorted(fracs, s, right=True) - 1).clamp(0, len(keys) - 2)
    u = ((s - fracs[seg]) / (fracs[seg + 1] - fracs[seg])).clamp(0.0, 1.0)
    u = (u * u * (3 - 2 * u))[:, None]  # smoothstep: the EE stops at every keyframe
    path = key_vals[seg] * (1 - u) + key_vals[seg + 1] * u  # (L, 5): x, y, z, yaw, width
    ee, yaw, width = path[:, :3], path[:, 3], path[:, 4]

    # Red cube: on the table, then carried by the EE (grasp to release), then on the blue one.
    grasped = (s >= keys[3][0]) & (s < keys[7][0])
    placed = s >= keys[7][0]
    a_pos = torch.tensor(at(a_xy, half), dtype=torch.float64).repeat(length, 1)
    a_pos[grasped] = ee[grasped]
    a_pos[placed] = torch.tensor(at(b_xy, _CUBE + half), dtype=torch.float64)
    a_rot = torch.full((length,), a_yaw, dtype=torch.float64)
    a_rot[grasped] = yaw[grasped]
    a_rot[placed] = b_yaw

    q = _joint_positions(ee, yaw)
    qd = torch.zeros_like(q)
    qd[1:] = (q[1:] - q[:-1]) / DT
    # Gripper pointing down, turned by yaw about z: (w, x, y, z) = (0, cos(yaw/2), sin(yaw/2), 0).
    quat = torch.stack(
        [torch.zeros_like(yaw), torch.cos(yaw / 2), torch.sin(yaw / 2), torch.zeros_like(yaw)], 1
    )
    states = torch.cat([ee, quat, width[:, None], q, qd], dim=1)
    nxt = torch.cat([torch.arange(1, length), torch.tensor([length - 1])])
    actions = torch.cat([q[nxt], (width[nxt] / 2)[:, None].repeat(1, 2)], dim=1)

    frames = _render(image_size, ee, yaw, width, a_pos, a_rot, at(b_xy, half), b_yaw)
    return states.float(), actions.float(), frames


def _joint_positions(ee: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """A smooth 7-joint arm model: base turn, a two-link shoulder/elbow, a wrist keeping the
    gripper vertical, and a flange turn for yaw (Franka-like ranges, not Franka's exact IK)."""
    import torch

    link = 0.4
    base = torch.atan2(ee[:, 1], ee[:, 0])
    reach = torch.linalg.norm(ee[:, :2], dim=1)
    height = ee[:, 2] + 0.2 - 0.333  # wrist above the EE, shoulder above the table
    dist = torch.sqrt(reach**2 + height**2).clamp(0.05, 2 * link - 1e-3)
    bend = torch.acos(((dist**2 - 2 * link**2) / (2 * link**2)).clamp(-1.0, 1.0))
    shoulder = torch.atan2(reach, height) - torch.atan2(
        link * torch.sin(bend), link + link * torch.cos(bend)
    )
    zeros = torch.zeros_like(base)
    wrist = math.pi - shoulder - bend
    return torch.stack([base, shoulder, zeros, -bend, zeros, wrist, yaw - base + math.pi / 4], 1)


def _render(
    size: int,
    ee: torch.Tensor,
    yaw: torch.Tensor,
    width: torch.Tensor,
    a_pos: torch.Tensor,
    a_yaw: torch.Tensor,
    b_pos: list[float],
    b_yaw: float,
) -> torch.Tensor:
    """Top-down pinhole camera 1 m above the table centre: (L, size, size, 3) uint8.

    Shapes are painted bottom to top (shadow, blue cube, red cube, fingers, hand),
    which is also their height order in every frame, so no depth buffer is needed;
    each is rasterised only inside a window around it, not over the whole image.
    """
    import torch

    length = ee.shape[0]
    cam_x, cam_y, cam_z = 0.5, 0.0, 1.0
    focal = size * cam_z / 0.5  # the table plane shows 0.5 m x 0.5 m
    image = torch.full((length, size, size, 3), 225, dtype=torch.uint8)
    frame = torch.arange(length)[:, None, None]

    def paint(
        rgb: tuple[int, int, int],
        x: torch.Tensor | float,
        y: torch.Tensor | float,
        top: torch.Tensor | float,
        *,
        rot: torch.Tensor | float = 0.0,
        half: tuple[float, float] = (0.0, 0.0),
        radius: float = 0.0,
    ) -> None:
        """A disc of ``radius`` or a ``half``-extent rectangle turned by ``rot``, at height top."""

        def per_frame(v: torch.Tensor | float) -> torch.Tensor:
            return torch.as_tensor(v, dtype=torch.float64).expand(length)[:, None, None]

        cx, cy, depth, angle = per_frame(x), per_frame(y), cam_z - per_frame(top), per_frame(rot)
        extent = radius or math.hypot(*half)
        reach = math.ceil(float((extent * focal / depth).max())) + 1
        offsets = torch.arange(-reach, reach + 1)
        rows = torch.floor(size / 2 - (cx - cam_x) * focal / depth).long() + offsets[:, None]
        cols = torch.floor(size / 2 + (cy - cam_y) * focal / depth).long() + offsets[None, :]
        # Each pixel's centre, seen on the plane at the shape's height, relative to the shape.
        wx = cam_x - (rows + 0.5 - size / 2) / focal * depth - cx
        wy = cam_y + (cols + 0.5 - size / 2) / focal * depth - cy
        if radius:
            inside = wx**2 + wy**2 <= radius**2
        else:
            cos, sin = torch.cos(angle), torch.sin(angle)
            u, v = cos * wx + sin * wy, cos * wy - sin * wx
            inside = (u.abs() <= half[0]) & (v.abs() <= half[1])
        inside &= (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
        shape = inside.shape
        image[
            frame.expand(shape)[inside], rows.expand(shape)[inside], cols.expand(shape)[inside]
        ] = torch.tensor(rgb, dtype=torch.uint8)

    cube = (_CUBE / 2, _CUBE / 2)
    ex, ey, ez = ee[:, 0], ee[:, 1], ee[:, 2]
    # Fingers sit on the gripper's local y axis (yaw + 90 degrees in the table plane).
    off = width / 2 + 0.006
    fx, fy = -torch.sin(yaw) * off, torch.cos(yaw) * off
    finger = (0.02, 0.006)
    paint((150, 150, 150), ex, ey, 0.0, radius=0.03)  # the EE's shadow on the table
    paint((40, 80, 210), b_pos[0], b_pos[1], _CUBE, rot=b_yaw, half=cube)
    paint((210, 40, 40), a_pos[:, 0], a_pos[:, 1], a_pos[:, 2] + _CUBE / 2, rot=a_yaw, half=cube)
    paint((30, 30, 30), ex + fx, ey + fy, ez + 0.04, rot=yaw, half=finger)
    paint((30, 30, 30), ex - fx, ey - fy, ez + 0.04, rot=yaw, half=finger)
    paint((240, 200, 40), ex, ey, ez + 0.1, radius=0.012)  # the hand's centre, on top
    return image

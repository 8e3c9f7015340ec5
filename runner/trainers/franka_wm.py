"""Reference trainer of the ``franka_cube_stack`` job: a compact DINO-WM-shaped world model.

It is the job's ``embedded`` profile, what ``./train.sh franka_cube_stack`` runs
on a plain machine: no GPU, no dataset download, no account. It reads the DINO
WM franka dataset layout (see :mod:`runner.trainers._wm_data`), trains the model
of :mod:`runner.trainers._wm_model` with accelerate, and checkpoints through
:mod:`runner.harness`, resuming from the newest complete checkpoint::

    python -m runner.trainers.franka_wm env=franka_cube_stack frameskip=5 num_hist=3 \\
        training.batch_size=16 data.path=./data/franka_cube_stack_ds

Overrides are Hydra-style ``key=value`` (``+key=value`` is accepted as a plain
set); ``--help`` lists every key. Any :class:`~runner.errors.RunnerError` ends the
process with one ``error: ...`` line on stderr and the error's exit code.

torch and accelerate are imported when training starts, so ``--help`` and a bad
override answer at once, and a missing torch is a one-line error.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import inspect
import itertools
import math
import os
import random
import sys
import textwrap
import time
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.constants import ENV_DATASET_DIR, ENV_DEVICE
from runner.errors import CheckpointError, DeviceError, RunnerError, UsageError, missing_dependency
from runner.harness import ENV_RUN_DIR

if TYPE_CHECKING:
    import torch

    from runner import harness as harness_mod
    from runner.trainers._wm_model import WorldModel

PROG = "python -m runner.trainers.franka_wm"

# --------------------------------------------------------------------------- config


def _min(low: float) -> dict[str, Any]:
    return {"min": low}


@dataclass
class ModelConfig:
    """Sizes of the world model (defaults train at a few steps/s on two CPU cores)."""

    patch_size: int = field(default=8, metadata=_min(1))
    """Side of a square image patch in pixels; ``img_size`` must be a multiple of it."""
    emb_dim: int = field(default=64, metadata=_min(1))
    """Width of a visual patch token (DINOv2 ViT-S/14, which this stands in for, has 384)."""
    encoder_depth: int = field(default=2, metadata=_min(0))
    """Transformer blocks of the frozen image encoder."""
    encoder_heads: int = field(default=4, metadata=_min(1))
    """Attention heads of the frozen image encoder; must divide ``emb_dim``."""
    action_emb_dim: int = field(default=16, metadata=_min(1))
    """Width of the action embedding concatenated to every patch token (DINO WM: 10)."""
    proprio_emb_dim: int = field(default=16, metadata=_min(1))
    """Width of the proprio embedding concatenated to every patch token (DINO WM: 10)."""
    predictor_depth: int = field(default=3, metadata=_min(1))
    """Transformer blocks of the predictor."""
    predictor_heads: int = field(default=4, metadata=_min(1))
    """Attention heads of the predictor; must divide emb_dim + action_emb_dim + proprio_emb_dim."""
    mlp_ratio: float = field(default=4.0, metadata=_min(0.01))
    """Hidden width of the transformer MLPs as a multiple of the token width."""
    dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 0.99})
    """Dropout in the predictor (0 keeps runs bit-for-bit resumable)."""


@dataclass
class DataConfig:
    """Where the dataset is."""

    path: str = field(default_factory=lambda: os.environ.get(ENV_DATASET_DIR) or "./data")
    """Dataset folder in the franka layout (default: ``$DATASET_DIR``, else ``./data``)."""


@dataclass
class TrainingConfig:
    """Optimisation, logging and checkpoint schedule."""

    batch_size: int = field(default=16, metadata=_min(1))
    """Samples per optimizer step (per process)."""
    steps: int = field(default=300, metadata=_min(1))
    """Total optimizer steps of the run (a resumed run continues up to this number)."""
    epochs: int | None = field(default=None, metadata=_min(1))
    """If set, overrides ``steps`` with epochs x steps per epoch."""
    lr: float = field(default=1e-3, metadata={"above": 0})
    """AdamW learning rate of the predictor and the action and proprio encoders."""
    weight_decay: float = field(default=0.0, metadata=_min(0.0))
    """AdamW weight decay."""
    save_every: int = field(default=100, metadata=_min(1))
    """Save a checkpoint every this many steps (and always at the last step)."""
    log_every: int = field(default=20, metadata=_min(1))
    """Print a progress line every this many steps."""
    val_batches: int = field(default=2, metadata=_min(0))
    """Validation batches evaluated at each checkpoint (0: no validation)."""
    num_workers: int = field(default=0, metadata=_min(0))
    """DataLoader worker processes (0: load in the training process)."""
    mixed_precision: str = field(default="no", metadata={"choices": ("no", "bf16", "fp16")})
    """accelerate's mixed precision: no, bf16 or fp16."""


@dataclass
class Config:
    """Everything one run of the trainer needs; every leaf is a ``key=value`` override."""

    env: str = "franka_cube_stack"
    """Environment name; accepted for DINO WM compatibility and only logged."""
    frameskip: int = field(default=5, metadata=_min(1))
    """Dataset steps between two model frames; each frame carries that many actions."""
    num_hist: int = field(default=3, metadata=_min(1))
    """History frames the predictor sees (plus one target frame per sample)."""
    img_size: int = field(default=64, metadata=_min(1))
    """Side in pixels that images are resized to."""
    seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1})
    """Seeds the split, the frozen encoder, the initialisation and the data order."""
    run_dir: str = field(
        default_factory=lambda: os.environ.get(ENV_RUN_DIR) or "runs/franka_cube_stack"
    )
    """Run folder; checkpoints go to its ``checkpoints/`` (default: ``$RUNNER_RUN_DIR``)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


#: Keys that shape the model or its frozen encoder: a checkpoint only fits a run
#: with the same values.
_MODEL_KEYS = ("frameskip", "num_hist", "img_size", "seed")


@dataclass(frozen=True)
class _Leaf:
    key: str
    owner: type
    field: dataclasses.Field[Any]
    type: Any


def _leaves(cls: type = Config, prefix: str = "") -> dict[str, _Leaf]:
    hints = typing.get_type_hints(cls)
    out: dict[str, _Leaf] = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            out.update(_leaves(tp, key + "."))
        else:
            out[key] = _Leaf(key, cls, f, tp)
    return out


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field (torchtitan style), read from the source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _describe(leaf: _Leaf) -> str:
    """What a value for ``leaf`` must be, as the end of an error message."""
    meta = leaf.field.metadata
    base, optional = _unwrap_optional(leaf.type)
    kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        base, str(base)
    )
    if "choices" in meta:
        kind = "one of " + ", ".join(meta["choices"])
    if "min" in meta and "max" in meta:
        kind += f" in [{meta['min']}, {meta['max']}]"
    elif "min" in meta:
        kind += f" >= {meta['min']}"
    elif "above" in meta:
        kind += f" > {meta['above']}"
    if optional:
        kind += " (or null)"
    return kind


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(leaf: _Leaf, raw: str) -> Any:
    base, optional = _unwrap_optional(leaf.type)
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    if optional and text.lower() in ("null", "none", "~"):
        return None
    try:
        if base is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(text)
        if base is int:
            return int(text)
        if base is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value
    except ValueError:
        raise UsageError(f"{leaf.key}={raw}: expected {_describe(leaf)}") from None
    return text


def _check_range(leaf: _Leaf, value: Any, raw: str) -> None:
    meta = leaf.field.metadata
    if value is None:
        return
    bad = (
        ("choices" in meta and value not in meta["choices"])
        or ("min" in meta and value < meta["min"])
        or ("max" in meta and value > meta["max"])
        or ("above" in meta and value <= meta["above"])
    )
    if bad:
        raise UsageError(f"{leaf.key}={raw}: expected {_describe(leaf)}")


def parse_overrides(args: Sequence[str]) -> Config:
    """A :class:`Config` with Hydra-style ``key=value`` overrides applied.

    Raises :class:`UsageError` naming the key and the bad value for a malformed
    argument, an unknown key (with close matches), a value of the wrong type or
    out of range, or values that do not fit together.
    """
    cfg = Config()
    leaves = _leaves()
    for arg in args:
        key, sep, raw = arg.partition("=")
        key = key.lstrip("+").strip()
        if not sep or not key:
            raise UsageError(f"expected key=value, got {arg!r} (see {PROG} --help)")
        leaf = leaves.get(key)
        if leaf is None:
            close = _close_matches(key, list(leaves))
            hint = (
                f"did you mean {' or '.join(close)}?"
                if close
                else f"run {PROG} --help for the keys"
            )
            raise UsageError(f"unknown override key {key!r} in {arg!r}; {hint}")
        value = _coerce(leaf, raw)
        _check_range(leaf, value, raw)
        owner: Any = cfg
        *path, name = key.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, name, value)
    _check_consistent(cfg)
    return cfg


def _close_matches(key: str, keys: list[str]) -> list[str]:
    """Up to three keys like ``key``, only those nearly as close as the best one."""
    same_name = [k for k in keys if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
    if same_name:  # the right name in the wrong group, or the group left out
        return same_name[:3]
    scored = sorted(
        ((difflib.SequenceMatcher(None, key, k).ratio(), k) for k in keys), reverse=True
    )
    best = scored[0][0] if scored else 0.0
    return [k for r, k in scored[:3] if r >= 0.6 and r >= best - 0.08]


def _check_consistent(cfg: Config) -> None:
    m = cfg.model
    if cfg.img_size % m.patch_size:
        raise UsageError(
            f"img_size={cfg.img_size}: expected a multiple of model.patch_size={m.patch_size}"
        )
    if m.emb_dim % m.encoder_heads:
        raise UsageError(
            f"model.encoder_heads={m.encoder_heads}: expected a divisor of "
            f"model.emb_dim={m.emb_dim}"
        )
    width = m.emb_dim + m.action_emb_dim + m.proprio_emb_dim
    if width % m.predictor_heads:
        raise UsageError(
            f"model.predictor_heads={m.predictor_heads}: expected a divisor of the token width "
            f"{width} (model.emb_dim + model.action_emb_dim + model.proprio_emb_dim)"
        )


def help_text() -> str:
    """Usage and every override key with its type, default and docstring."""
    lines = [
        f"usage: {PROG} [key=value ...]",
        "",
        "Train the franka_cube_stack reference world model (DINO WM shape) with accelerate.",
        "",
        "overrides:",
    ]
    defaults = Config()
    docs: dict[type, dict[str, str]] = {}
    for key, leaf in _leaves().items():
        value: Any = defaults
        for part in key.split("."):
            value = getattr(value, part)
        doc = docs.setdefault(leaf.owner, _field_docs(leaf.owner)).get(leaf.field.name, "")
        lines.append(f"  {key}={value}  ({_describe(leaf)})")
        if doc:
            lines.append(f"      {doc}")
    lines += [
        "",
        "environment:",
        f"  {ENV_DATASET_DIR}  default data.path",
        f"  {ENV_RUN_DIR}  default run_dir",
        f"  {ENV_DEVICE}  cpu forces the CPU (default: CUDA when available)",
        "  WANDB_API_KEY  log to Weights & Biases when set and wandb is installed",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- training


def _say(message: str) -> None:
    print(message, flush=True)


class _NullLogger:
    """Metrics logger used when W&B is off: does nothing."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class _WandbLogger:
    def __init__(self, run: Any) -> None:
        self.run = run

    def log(self, metrics: dict[str, float], step: int) -> None:
        # W&B trouble (network, quota) must never stop training.
        with contextlib.suppress(Exception):
            self.run.log(metrics, step=step)

    def finish(self) -> None:
        with contextlib.suppress(Exception):
            self.run.finish()


def _metrics_logger(cfg: Config) -> _NullLogger | _WandbLogger:
    """W&B when ``WANDB_API_KEY`` is set and wandb imports, else a do-nothing logger."""
    if not os.environ.get("WANDB_API_KEY"):
        return _NullLogger()
    try:
        import wandb
    except Exception:
        return _NullLogger()
    try:
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "runner"),
            name=Path(cfg.run_dir).name,
            config=dataclasses.asdict(cfg),
            dir=cfg.run_dir,
            resume="allow",
        )
    except Exception as exc:
        _say(f"warning: wandb disabled, init failed: {' '.join(str(exc).split())}")
        return _NullLogger()
    return _WandbLogger(run)


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: Config) -> WorldModel:
    """The world model described by ``cfg`` (the frozen encoder drawn from ``cfg.seed``)."""
    from runner.trainers._wm_data import ACTION_DIM, STATE_DIM
    from runner.trainers._wm_model import WorldModel

    m = cfg.model
    return WorldModel(
        img_size=cfg.img_size,
        patch_size=m.patch_size,
        num_hist=cfg.num_hist,
        frameskip=cfg.frameskip,
        emb_dim=m.emb_dim,
        encoder_depth=m.encoder_depth,
        encoder_heads=m.encoder_heads,
        action_emb_dim=m.action_emb_dim,
        proprio_emb_dim=m.proprio_emb_dim,
        predictor_depth=m.predictor_depth,
        predictor_heads=m.predictor_heads,
        mlp_ratio=m.mlp_ratio,
        dropout=m.dropout,
        state_dim=STATE_DIM,
        action_dim=ACTION_DIM,
        seed=cfg.seed,
    )


def _check_resumable(saved: Any, cfg: Config, model: WorldModel, path: Path) -> dict[str, Any]:
    """The checkpoint's state, or :class:`CheckpointError` if it does not fit this run."""
    if not isinstance(saved, dict) or not {"model", "optimizer", "step", "config"} <= set(saved):
        raise CheckpointError(
            f"checkpoint {path} is not one of this trainer's (no model/optimizer/step/config); "
            "use another run_dir"
        )
    old = saved["config"]
    new = dataclasses.asdict(cfg)
    keys = [*_MODEL_KEYS, *(f"model.{f.name}" for f in dataclasses.fields(ModelConfig))]
    for key in keys:
        a: Any = old
        b: Any = new
        for part in key.split("."):
            a = a.get(part) if isinstance(a, dict) else None
            b = b[part]
        if a != b:
            raise CheckpointError(
                f"checkpoint {path} was trained with {key}={a}, this run has {key}={b}; "
                f"pass {key}={a} or use another run_dir"
            )
    fingerprint = saved.get("encoder_fingerprint")
    if fingerprint is not None and not math.isclose(
        fingerprint, model.encoder_fingerprint(), rel_tol=1e-9, abs_tol=1e-6
    ):
        raise CheckpointError(
            f"checkpoint {path} was trained with a different frozen encoder "
            "(another torch version draws other random weights from the seed); use another run_dir"
        )
    return saved


def _batches(
    loader: Any, sampler: Any, start_step: int, steps_per_epoch: int, per_step: int
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """(epoch, batch) for the steps after ``start_step``, forever, in the resumable order."""
    epoch, offset = divmod(start_step, steps_per_epoch)
    while True:
        sampler.set_position(epoch, offset * per_step)
        for batch in loader:
            yield epoch, batch
        epoch, offset = epoch + 1, 0


def train(cfg: Config) -> int:
    """Train (or resume) the run described by ``cfg``; returns the exit code."""
    try:
        import torch
    except ImportError as exc:
        raise missing_dependency("torch") from exc
    try:
        from accelerate import Accelerator
    except ImportError as exc:
        raise missing_dependency("accelerate") from exc
    from torch.utils.data import DataLoader, Subset

    from runner import harness
    from runner.trainers import _wm_data

    device_env = os.environ.get(ENV_DEVICE, "").strip().lower()
    if device_env == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{ENV_DEVICE}=cuda but torch sees no CUDA device; unset it or use cpu")
    use_cpu = device_env == "cpu" or not torch.cuda.is_available()

    _seed_everything(cfg.seed)
    data = _wm_data.FrankaData(Path(cfg.data.path))
    train_eps, val_eps = _wm_data.split_episodes(len(data), cfg.seed)
    spec = _wm_data.WindowSpec(cfg.num_hist, cfg.frameskip, cfg.img_size)
    train_set = _wm_data.Windows(data, train_eps, spec)
    val_set = _wm_data.Windows(data, val_eps, spec)
    if len(train_set) == 0:
        raise _dataset_too_short(data, train_eps, spec)

    accelerator = Accelerator(cpu=use_cpu, mixed_precision=cfg.training.mixed_precision)
    main_process = accelerator.is_main_process
    bs = cfg.training.batch_size
    per_step = bs * accelerator.num_processes
    drop_last = len(train_set) >= per_step
    steps_per_epoch = len(train_set) // per_step if drop_last else 1
    total = cfg.training.steps
    if cfg.training.epochs is not None:
        total = cfg.training.epochs * steps_per_epoch

    h = harness.Harness(run_dir=Path(cfg.run_dir)) if main_process else None
    # Leaving the block closes the heartbeat with phase "done", or "failed" on an exception.
    with h if h is not None else contextlib.nullcontext():
        ck = h.latest_checkpoint() if h is not None else None
        if ck is not None and ck.step >= total:
            _say(
                f"newest checkpoint: step {ck.step} ({ck.path}); run already complete "
                f"(training.steps={total}): pass training.steps=... to train longer"
            )
            return 0
        model = build_model(cfg)
        model.set_normalisation(_wm_data.normalisation(data, train_eps))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=cfg.training.lr, weight_decay=cfg.training.weight_decay
        )
        start = 0
        saved: dict[str, Any] | None = None
        if ck is not None and h is not None:
            try:
                raw = h.load_torch(ck)
            except Exception as exc:
                raise CheckpointError(
                    f"cannot load checkpoint {ck.path}: {' '.join(str(exc).split())}; "
                    "delete it to fall back to the one before"
                ) from exc
            saved = _check_resumable(raw, cfg, model, ck.path)
            try:
                model.load_trainable_state(saved["model"])
                optimizer.load_state_dict(saved["optimizer"])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise CheckpointError(
                    f"checkpoint {ck.path} does not fit this model: {' '.join(str(exc).split())}"
                ) from exc
            start = int(saved["step"])
            _say(f"resuming from step {start} ({ck.path})")

        sampler = _wm_data.EpochSampler(len(train_set), cfg.seed)
        loader = DataLoader(
            train_set,
            batch_size=bs,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=cfg.training.num_workers,
            persistent_workers=cfg.training.num_workers > 0,
        )
        n_val = min(len(val_set), cfg.training.val_batches * bs)
        val_idx = [round(i * len(val_set) / n_val) for i in range(n_val)] if n_val else []
        val_loader = DataLoader(Subset(val_set, val_idx), batch_size=bs) if n_val else None
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        if val_loader is not None:
            val_loader = accelerator.prepare(val_loader)
        if saved is not None and "rng" in saved:
            _set_rng_state(saved["rng"])

        unwrapped: WorldModel = accelerator.unwrap_model(model)
        if main_process:
            trainable = sum(p.numel() for p in params)
            _say(
                f"franka world model: env={cfg.env} data={cfg.data.path} "
                f"({len(train_eps)} train / {len(val_eps)} val episodes, "
                f"{len(train_set)} windows, {steps_per_epoch} steps/epoch), "
                f"{trainable / 1e3:.0f}k trainable params, device {accelerator.device}, "
                f"steps {start + 1}..{total}"
            )
        logger = _metrics_logger(cfg) if main_process else _NullLogger()
        try:
            _loop(
                cfg,
                accelerator,
                model,
                unwrapped,
                optimizer,
                _batches(loader, sampler, start, steps_per_epoch, per_step),
                val_loader,
                h,
                logger,
                start=start,
                total=total,
                steps_per_epoch=steps_per_epoch,
            )
        finally:
            logger.finish()
    return 0


def _dataset_too_short(data: Any, episodes: list[int], spec: Any) -> RunnerError:
    from runner.errors import DatasetError

    need = spec.span + 1
    longest = max((data.lengths[e] for e in episodes), default=0)
    return DatasetError(
        f"dataset {data.root}: no training episode is long enough for one sample: "
        f"num_hist*frameskip+1 = {need} frames needed, the longest has {longest}; "
        "lower num_hist or frameskip"
    )


def _loop(
    cfg: Config,
    accelerator: Any,
    model: Any,
    unwrapped: WorldModel,
    optimizer: Any,
    batches: Iterator[tuple[int, dict[str, torch.Tensor]]],
    val_loader: Any,
    h: harness_mod.Harness | None,
    logger: _NullLogger | _WandbLogger,
    *,
    start: int,
    total: int,
    steps_per_epoch: int,
) -> None:
    log_every, save_every = cfg.training.log_every, cfg.training.save_every
    model.train()
    window_t = window_wait = 0.0
    window_steps = window_samples = 0
    sums = [0.0, 0.0, 0.0]
    last_saved = start
    for step in range(start + 1, total + 1):
        t0 = time.perf_counter()
        epoch, batch = next(batches)
        t1 = time.perf_counter()
        out = model(batch["obs"], batch["proprio"], batch["actions"])
        accelerator.backward(out.loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses = [float(x.detach()) for x in out]
        t2 = time.perf_counter()
        if not all(math.isfinite(x) for x in losses):
            raise RunnerError(
                f"loss became {losses[0]} at step {step}; lower training.lr "
                "(the last checkpoint is intact)"
            )
        samples = int(batch["obs"].shape[0]) * accelerator.num_processes
        window_t += t2 - t0
        window_wait += t1 - t0
        window_steps += 1
        window_samples += samples
        sums = [s + x for s, x in zip(sums, losses, strict=True)]

        metrics: dict[str, Any] = {
            "loss": losses[0],
            "visual_loss": losses[1],
            "proprio_loss": losses[2],
            "samples": samples,
            "data_wait": t1 - t0,
            "step_time": t2 - t0,
            "epoch": epoch,
            "total_steps": total,  # runner watch's ETA
        }
        save = step % save_every == 0 or step == total
        if save and val_loader is not None:
            metrics.update(_validate(model, val_loader))
            model.train()
        if h is not None:
            h.step(step, **metrics)
        if accelerator.is_main_process and (step % log_every == 0 or step == total or save):
            if window_steps:
                rate = window_steps / window_t
                loss, vis, prop = (s / window_steps for s in sums)
                _say(
                    f"step {step}/{total} loss {loss:.4f} (vis {vis:.4f} prop {prop:.4f}) "
                    f"{rate:.1f} steps/s {window_samples / window_t:.1f} samples/s "
                    f"data-wait {100 * window_wait / window_t:.0f}%"
                )
                logger.log(
                    {
                        "train/loss": loss,
                        "train/visual_loss": vis,
                        "train/proprio_loss": prop,
                        "perf/steps_per_s": rate,
                        "perf/samples_per_s": window_samples / window_t,
                        "perf/data_wait": window_wait / window_t,
                    },
                    step,
                )
            if "val_loss" in metrics:
                _say(
                    f"step {step}/{total} val loss {metrics['val_loss']:.4f} "
                    f"(vis {metrics['val_visual_loss']:.4f} "
                    f"prop {metrics['val_proprio_loss']:.4f})"
                )
                logger.log({f"val/{k[4:]}": v for k, v in metrics.items() if k[:4] == "val_"}, step)
            window_t = window_wait = 0.0
            window_steps = window_samples = 0
            sums = [0.0, 0.0, 0.0]
        if save and step > last_saved:
            accelerator.wait_for_everyone()
            if h is not None:
                state = {
                    "model": unwrapped.trainable_state(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "epoch": (step - 1) // steps_per_epoch,
                    "rng": _rng_state(),
                    "config": dataclasses.asdict(cfg),
                    "total_steps": total,
                    "encoder_fingerprint": unwrapped.encoder_fingerprint(),
                }
                path = h.save_torch(step, state, metrics={"loss": losses[0]})
                _say(f"saved checkpoint step {step} ({path})")
            last_saved = step


def _validate(model: Any, loader: Any) -> dict[str, float]:
    import torch

    model.eval()
    sums = [0.0, 0.0, 0.0]
    n = 0
    with torch.no_grad():
        for batch in loader:
            out = model(batch["obs"], batch["proprio"], batch["actions"])
            k = int(batch["obs"].shape[0])
            sums = [s + float(x) * k for s, x in zip(sums, out, strict=True)]
            n += k
    if n == 0:
        return {}
    return {
        "val_loss": sums[0] / n,
        "val_visual_loss": sums[1] / n,
        "val_proprio_loss": sums[2] / n,
    }


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Parse overrides and train; a :class:`RunnerError` becomes one ``error:`` line."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if any(a in ("-h", "--help") for a in args):
            print(help_text())
            return 0
        return train(parse_overrides(args))
    except RunnerError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted (the last complete checkpoint is kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The users' training programs, each in its own terms.

A job names its program (``program.kind``); runner then hands the job's fields
to it the way that program takes them, reads its progress the way it prints it,
and resumes it the way it resumes. Each fact below is read from the program's
own source (``../shared/reference/trainers.md`` has the details; the tests cite
the file and line):

- ``lerobot`` (``lerobot-train``, LeRobot 0.6.1): ``--save_freq`` (default 20000),
  ``--policy.push_to_hub=false`` (default true, and then ``--policy.repo_id`` is
  required), ``--dataset.revision`` / ``--dataset.root``, ``--dataset.video_backend``,
  ``--wandb.enable``; checkpoints in ``OUTPUT/checkpoints/NNNNNN``; a resume is
  ``--resume=true --config_path=CKPT/pretrained_model/train_config.json`` without
  ``--policy.path`` (which would win over the resume; the command line still wins over
  the saved config, so a halved batch reaches it),
  and a fresh start refuses an existing output folder (``FileExistsError``);
  progress is the ``step:1K`` INFO line every ``--log_freq`` (default 200) steps
  and the tqdm bar ``Training: 5%| | 1/20``, which counts from the resumed step.
- ``openpi`` (``scripts/train.py``, tyro): ``--save-interval``, ``--no-wandb-enabled``,
  ``--resume`` (a bare flag), or a fresh start with the old folder moved aside (it is made at
  start-up: a second start without ``--resume`` or ``--overwrite`` is ``FileExistsError``,
  and ``--overwrite`` deletes it); progress
  ``Step N: grad_norm=..., loss=...`` with the absolute step.
- ``dino_wm`` (``train.py``, Hydra + accelerate): resumes from
  ``checkpoints/model_latest.pth`` in its Hydra run folder, which is new and
  timestamped on every start unless ``hydra.run.dir`` is pinned; W&B runs
  unconditionally (``WANDB_MODE=disabled`` turns it off); progress is a per-epoch
  tqdm bar ``Epoch N Train: i/total``.
- ``generic``: the job's own ``overrides`` and ``restart.resume_args``, as before.

Nothing here starts a process: :func:`program_for` gives the adapter, and the
agent (at the start of a run and on each restart) and pre-flight call it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.spec import JobSpec, ProgressSpec

__all__ = [
    "DinoWm",
    "Generic",
    "LeRobot",
    "OpenPi",
    "Prepared",
    "Program",
    "RunContext",
    "cli_value",
    "program_for",
    "set_cli",
]

#: Where the W&B client reads its key.
WANDB_KEY = "WANDB_API_KEY"


@dataclass(frozen=True)
class RunContext:
    """What the program adapter needs to know about this run on this host."""

    run_dir: Path
    cwd: Path
    env: Mapping[str, str]
    dataset: Path | None = None
    device: str | None = None  # "cpu" or "cuda" when runner picked it


@dataclass(frozen=True)
class Prepared:
    """A command made ready: argv, extra environment, and one line per change made."""

    argv: list[str]
    env: dict[str, str]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Program:
    """How runner hands a job to a program it does not know (the base: the job's own terms)."""

    kind: str = "generic"

    def prepare(
        self, job: JobSpec, argv: Sequence[str], env: Mapping[str, str], ctx: RunContext
    ) -> Prepared:
        """The command of a new run with the job's fields in the program's terms."""
        return Prepared(list(argv), dict(env))

    def resume(
        self,
        job: JobSpec,
        argv: Sequence[str],
        env: Mapping[str, str],
        checkpoint: Path | None,
        ctx: RunContext,
    ) -> Prepared | None:
        """The command that resumes from ``checkpoint`` (``None``: none exists, start afresh).

        ``None`` for programs whose resume runner does not know: the job's
        ``restart.resume_args`` apply instead.
        """
        return None

    def checkpoint_root(self, job: JobSpec, ctx: RunContext) -> Path | None:
        """Where the program writes its checkpoints (``None``: the job's ``checkpoints.path``)."""
        return None

    def progress(self, job: JobSpec, argv: Sequence[str]) -> ProgressSpec:
        """How its output shows progress: the job's ``progress`` when it gives one."""
        return job.progress

    def ignored_fields(self, job: JobSpec) -> list[str]:
        """The job's fields that are set but do not reach this program (for pre-flight)."""
        return []


Generic = Program


# --------------------------------------------------------------------------- CLI helpers


def cli_value(argv: Sequence[str], name: str) -> str | None:
    """The value of ``--name=V`` or ``--name V`` in ``argv`` (the last one), else ``None``.

    A bare ``--name`` reads as ``"true"``.
    """
    flag = f"--{name}"
    found: str | None = None
    for i, arg in enumerate(argv):
        key, sep, value = arg.partition("=")
        if key != flag:
            continue
        if sep:
            found = value
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            found = argv[i + 1]
        else:
            found = "true"
    return found


def set_cli(argv: Sequence[str], name: str, value: str | None) -> list[str]:
    """``argv`` with every ``--name`` setting removed, then ``--name=value`` added
    (``value`` ``""``: the bare flag; ``None``: only removed)."""
    flag = f"--{name}"
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        key, sep, _ = arg.partition("=")
        if key == flag:
            if not sep and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                skip = True
            continue
        out.append(arg)
    if value is None:
        return out
    return [*out, flag if value == "" else f"{flag}={value}"]


def _has(argv: Sequence[str], name: str) -> bool:
    return cli_value(argv, name) is not None


def _rel(path: Path, cwd: Path) -> Path:
    return path if path.is_absolute() else cwd / path


def _move_aside(folder: Path) -> tuple[str, ...]:
    """A program's folder without a complete checkpoint, renamed out of its way (never
    deleted); the note that says so, or none when there was no folder."""
    if not folder.exists():
        return ()
    aside = folder.with_name(f"{folder.name}.incomplete-{int(time.time())}")
    os.replace(folder, aside)
    return (f"{folder} had no complete checkpoint: moved to {aside.name}",)


# --------------------------------------------------------------------------- LeRobot

#: LeRobot's defaults (``configs/train.py``): log every 200 steps, save every 20000.
LEROBOT_LOG_FREQ = 200
#: The INFO record of ``MetricsTracker.__str__`` (``utils/logging_utils.py``) and
#: the tqdm bar of ``scripts/lerobot_train.py`` (``desc="Training"``, ``unit="step"``).
LEROBOT_PATTERNS = [
    r"step:(?P<step>\d+(?:\.\d+)?[KMB]?) smpl:\S+ ep:\S+ epch:\S+ loss:(?P<loss>\S+)"
    r" grdn:(?P<grad_norm>\S+)",
    r"Training:\s*\d+%\|[^|]*\|\s*(?P<bar>\d+)/\d+",
]


@dataclass(frozen=True)
class LeRobot(Program):
    kind: str = "lerobot"

    def output_dir(self, job: JobSpec, ctx: RunContext) -> Path:
        """``--output_dir``: the folder above the job's ``checkpoints.path``."""
        return _rel(Path(job.checkpoints.path), ctx.cwd).parent

    def checkpoint_root(self, job: JobSpec, ctx: RunContext) -> Path | None:
        return self.output_dir(job, ctx) / "checkpoints"

    def prepare(
        self, job: JobSpec, argv: Sequence[str], env: Mapping[str, str], ctx: RunContext
    ) -> Prepared:
        out, extra, notes = list(argv), dict(env), []
        out = set_cli(out, "output_dir", str(self.output_dir(job, ctx)))
        if cli_value(out, "policy.push_to_hub") != "false":
            out = set_cli(out, "policy.push_to_hub", "false")
            notes.append("--policy.push_to_hub=false: runner pushes the checkpoints")
        if job.checkpoints.every_steps and not _has(out, "save_freq"):
            out = set_cli(out, "save_freq", str(job.checkpoints.every_steps))
            notes.append(f"--save_freq={job.checkpoints.every_steps} (checkpoints.every_steps)")
        ds = job.dataset
        if ds.source == "hub" and ds.revision and not _has(out, "dataset.revision"):
            out = set_cli(out, "dataset.revision", ds.revision)
        if ctx.dataset is not None and not _has(out, "dataset.root"):
            out = set_cli(out, "dataset.root", str(ctx.dataset))
            notes.append(f"--dataset.root={ctx.dataset}: the dataset runner brought")
        backend = extra.pop("VIDEO_BACKEND", None) or job.env.get("VIDEO_BACKEND")
        if backend and not _has(out, "dataset.video_backend"):
            out = set_cli(out, "dataset.video_backend", backend)
        if not ctx.env.get(WANDB_KEY) and cli_value(out, "wandb.enable") != "false":
            out = set_cli(out, "wandb.enable", "false")
            notes.append("--wandb.enable=false: no WANDB_API_KEY is set")
        if ctx.device == "cpu" and not _has(out, "policy.device"):
            out = set_cli(out, "policy.device", "cpu")
        return Prepared(out, extra, tuple(notes))

    def resume(
        self,
        job: JobSpec,
        argv: Sequence[str],
        env: Mapping[str, str],
        checkpoint: Path | None,
        ctx: RunContext,
    ) -> Prepared | None:
        out = set_cli(set_cli(argv, "resume", None), "config_path", None)
        if checkpoint is not None:
            # A pretrained path wins over --resume (configs/train.py
            # _resolve_pretrained_from_cli): with --policy.path still given, the checkpoint
            # is never read and lerobot-train fails in load_training_state(None). The saved
            # train_config.json names the policy and its start already.
            for path_arg in ("policy.path", "reward_model.path"):
                out = set_cli(out, path_arg, None)
            config = checkpoint / "pretrained_model" / "train_config.json"
            out = [*out, "--resume=true", f"--config_path={config}"]
            return Prepared(out, dict(env), (f"resuming from {checkpoint.name}",))
        # A fresh start: LeRobot refuses an output folder that exists (FileExistsError);
        # one without a complete checkpoint is moved aside, never deleted.
        return Prepared(out, dict(env), _move_aside(self.output_dir(job, ctx)))

    def progress(self, job: JobSpec, argv: Sequence[str]) -> ProgressSpec:
        if job.progress.pattern is not None:
            return job.progress
        log_freq = cli_value(argv, "log_freq")
        every = int(log_freq) if log_freq and log_freq.isdigit() and int(log_freq) > 0 else None
        return ProgressSpec(pattern=LEROBOT_PATTERNS, line_every=every or LEROBOT_LOG_FREQ)

    def ignored_fields(self, job: JobSpec) -> list[str]:
        out = []
        if job.checkpoints.every_minutes:
            out.append("checkpoints.every_minutes (lerobot-train saves every --save_freq steps)")
        if job.restart.resume_args:
            out.append("restart.resume_args (runner resumes lerobot-train with --config_path)")
        return out


# --------------------------------------------------------------------------- openpi

#: ``scripts/train.py``: ``pbar.write(f"Step {step}: {info_str}")``, info_str ``k=v`` pairs.
#: ``grad_norm, loss, param_norm`` in that order (JAX flattens the info dict sorted). When
#: stdout is no terminal, tqdm_loggable logs ``Progress on: 1.01kit/30.0kit ...`` every 10 s
#: instead of a bar (``tqdm_logging.py``): a rounded count, read as a coarse one.
OPENPI_PATTERNS = [
    r"Step (?P<step>\d+): grad_norm=(?P<grad_norm>[^,\s]+), loss=(?P<loss>[^,\s]+)",
    r"Progress on:\s*(?P<step>\d+(?:\.\d+)?[kMG]?)it/",
]


@dataclass(frozen=True)
class OpenPi(Program):
    kind: str = "openpi"

    def prepare(
        self, job: JobSpec, argv: Sequence[str], env: Mapping[str, str], ctx: RunContext
    ) -> Prepared:
        out, notes = list(argv), []
        if job.checkpoints.every_steps and not _has(out, "save-interval"):
            out = set_cli(out, "save-interval", str(job.checkpoints.every_steps))
        if not ctx.env.get(WANDB_KEY) and not _has(out, "no-wandb-enabled"):
            out = set_cli(out, "wandb-enabled", None)
            out = set_cli(out, "no-wandb-enabled", "")
            notes.append("--no-wandb-enabled: no WANDB_API_KEY is set")
        return Prepared(out, dict(env), tuple(notes))

    def resume(
        self,
        job: JobSpec,
        argv: Sequence[str],
        env: Mapping[str, str],
        checkpoint: Path | None,
        ctx: RunContext,
    ) -> Prepared | None:
        out = set_cli(set_cli(argv, "resume", None), "overwrite", None)
        if checkpoint is not None:
            return Prepared(set_cli(out, "resume", ""), dict(env))
        # The folder exists from the first start on (FileExistsError without --resume or
        # --overwrite), and --overwrite deletes it (checkpoints.py rmtree): a folder without
        # a complete checkpoint is moved aside instead, never deleted, and openpi starts afresh.
        return Prepared(out, dict(env), _move_aside(_rel(Path(job.checkpoints.path), ctx.cwd)))

    def progress(self, job: JobSpec, argv: Sequence[str]) -> ProgressSpec:
        if job.progress.pattern is not None:
            return job.progress
        return ProgressSpec(pattern=OPENPI_PATTERNS)

    def ignored_fields(self, job: JobSpec) -> list[str]:
        out = []
        if job.checkpoints.every_minutes:
            out.append("checkpoints.every_minutes (openpi saves every --save-interval steps)")
        if job.dataset.revision:
            out.append("dataset.revision (openpi's data config names the dataset itself)")
        return out


# --------------------------------------------------------------------------- DINO WM

#: ``train.py``: ``tqdm(..., desc=f"Epoch {epoch} Train")``: a per-epoch counter.
DINO_WM_PATTERNS = [r"Epoch (?P<epoch>\d+) Train:\s*\d+%\|[^|]*\|\s*(?P<step>\d+)/(?P<total>\d+)"]


@dataclass(frozen=True)
class DinoWm(Program):
    kind: str = "dino_wm"

    def run_folder(self, ctx: RunContext) -> Path:
        return ctx.run_dir / "dino_wm"

    def checkpoint_root(self, job: JobSpec, ctx: RunContext) -> Path | None:
        return self.run_folder(ctx) / "checkpoints"

    def prepare(
        self, job: JobSpec, argv: Sequence[str], env: Mapping[str, str], ctx: RunContext
    ) -> Prepared:
        out, extra, notes = list(argv), dict(env), []
        pinned = [a for a in out if a.startswith("hydra.run.dir=")]
        if not pinned:
            # A new timestamped folder per start would lose model_latest.pth on a restart.
            out.append(f"hydra.run.dir={self.run_folder(ctx)}")
            notes.append(f"hydra.run.dir={self.run_folder(ctx)}: a restart resumes there")
        if not ctx.env.get(WANDB_KEY) and "WANDB_MODE" not in extra and "WANDB_MODE" not in ctx.env:
            extra["WANDB_MODE"] = "disabled"
            notes.append("WANDB_MODE=disabled: no WANDB_API_KEY is set")
        return Prepared(out, extra, tuple(notes))

    def resume(
        self,
        job: JobSpec,
        argv: Sequence[str],
        env: Mapping[str, str],
        checkpoint: Path | None,
        ctx: RunContext,
    ) -> Prepared | None:
        # train.py reads checkpoints/model_latest.pth from its (pinned) run folder itself.
        return Prepared(list(argv), dict(env))

    def progress(self, job: JobSpec, argv: Sequence[str]) -> ProgressSpec:
        if job.progress.pattern is not None:
            return job.progress
        return ProgressSpec(pattern=DINO_WM_PATTERNS, first_epoch=1)

    def ignored_fields(self, job: JobSpec) -> list[str]:
        out = []
        if job.checkpoints.every_steps:
            out.append("checkpoints.every_steps (DINO WM saves once per epoch)")
        if job.checkpoints.every_minutes:
            out.append("checkpoints.every_minutes (DINO WM saves once per epoch)")
        if job.restart.resume_args:
            out.append("restart.resume_args (DINO WM resumes from its pinned run folder)")
        return out


_PROGRAMS: dict[str, Program] = {
    "generic": Program(),
    "lerobot": LeRobot(),
    "openpi": OpenPi(),
    "dino_wm": DinoWm(),
}


def program_for(job: JobSpec | None) -> Program:
    """The adapter of ``job``'s program (the generic one without a job)."""
    return _PROGRAMS[job.program.kind if job is not None else "generic"]

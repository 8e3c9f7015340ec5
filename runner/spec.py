"""Job specs: what a job runs, on what, with which data, and how it is kept alive.

A job is one YAML file in ``jobs/`` (or ``$RUNNER_JOBS_DIR``) named after the
job. Profiles are partial specs merged over the base (``profiles.embedded``
is what runs on a plain machine with no GPU, dataset or accounts). Secrets are
named, never given: their values come from the user's environment at launch.

Every validation error names the file, the field and what is expected, in one
line, as :class:`runner.errors.SpecError`.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from runner.constants import ENV_JOBS_DIR
from runner.errors import SpecError, UsageError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
#: Environment names whose value is a credential: never allowed as a literal in a job file.
_SECRET_LOOKING = re.compile(r"(TOKEN|API_KEY|APIKEY|SECRET|PASSWORD|PASSWD|PRIVATE_KEY)", re.I)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _split_command(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the command string: {exc}") from exc
    return value


Command = Annotated[list[str], BeforeValidator(_split_command)]


class SyntheticData(_Model):
    """Size of the synthetic dataset made when the job runs without one."""

    episodes: int = Field(16, ge=1, description="number of episodes")
    steps: int = Field(120, ge=2, description="T_max: steps of the longest episode")
    image_size: int = Field(64, ge=8, description="square image side in pixels")


class DatasetSpec(_Model):
    """Where the job's data comes from and how it reaches the training process."""

    source: Literal["hub", "local", "synthetic", "none"] = "none"
    repo: str | None = Field(None, description="Hub repo id (source: hub)")
    revision: str | None = Field(
        None, description="Hub revision: a commit sha or tag, pinned (source: hub)"
    )
    repo_type: Literal["dataset", "model"] = "dataset"
    path: str | None = Field(None, description="dataset folder (source: local), or in the image")
    layout: str | None = Field(None, description="layout checked before launch, e.g. franka")
    env: str = Field("DATASET_DIR", description="variable that carries the path to the job")
    size_gb: float | None = Field(None, ge=0, description="size on disk, for the disk projection")
    synthetic: SyntheticData | None = None

    @model_validator(mode="after")
    def _source_fields(self) -> DatasetSpec:
        if self.source == "hub" and not (self.repo and self.revision):
            raise ValueError(
                "a hub dataset needs repo and revision (pin a commit or tag: a moved tag "
                "serves stale data)"
            )
        if self.source == "local" and not self.path:
            raise ValueError("a local dataset needs path")
        if self.source == "synthetic" and self.synthetic is None:
            return self.model_copy(update={"synthetic": SyntheticData()})
        if not _ENV_NAME.match(self.env):
            raise ValueError(f"env must be a variable name, got {self.env!r}")
        return self


class Resources(_Model):
    """What one run needs from a machine."""

    gpus: int = Field(1, ge=0, description="GPU count (0: CPU only)")
    min_gpu_memory_gb: float | None = Field(None, gt=0, description="per GPU")
    disk_gb: float = Field(50, gt=0, description="free disk for checkpoints and data")
    shm_gb: float = Field(8, ge=0, description="/dev/shm for DataLoader workers")
    ram_gb: float | None = Field(None, gt=0, description="host RAM")


class CheckpointSpec(_Model):
    """How the job writes checkpoints, so runner can find, size and push them."""

    layout: Literal["harness", "lerobot", "dino_wm", "openpi"] = "harness"
    path: str = Field("checkpoints", description="folder, relative to the run folder or workdir")
    size_gb: float | None = Field(None, ge=0, description="size of one checkpoint")
    every_steps: int | None = Field(None, ge=1, description="cadence in steps")
    every_minutes: float | None = Field(None, gt=0, description="cadence in minutes")
    keep: int = Field(3, ge=1, description="newest checkpoints kept locally")


class HubSpec(_Model):
    """Where checkpoints are pushed on the Hugging Face Hub."""

    repo: str
    repo_type: Literal["model", "dataset"] = "model"
    private: bool = True
    push_interval_s: float = Field(30, gt=0, description="seconds between looks for new ones")
    min_commit_interval_s: float = Field(
        30, ge=0, description="least time between commits (the Hub allows ~128 per hour)"
    )


class OverrideSpec(_Model):
    """How ``runner launch JOB key=value`` overrides reach the job."""

    style: Literal["hydra", "cli", "env", "none"] = "hydra"
    defaults: list[str] = Field(default_factory=list, description="always passed")


class ProgressSpec(_Model):
    """How the agent reads step progress from a script that does not use the harness.

    ``pattern`` is one regular expression or several, each searched in every
    output line (a tqdm redraw is a line). Named groups:

    - ``step``: the step, digits with an optional K/M/B suffix (LeRobot prints
      ``step:1K`` for 1000-1499: a *coarse* reading, worth ``line_every`` steps
      per line between changes of the printed value);
    - ``bar``: a progress bar's position counted from the step the attempt
      resumed from (LeRobot's tqdm bar restarts at 0 on a resume);
    - ``epoch`` with ``step`` and ``total``: a per-epoch counter (DINO WM's
      ``Epoch 3 Train: 450/1000``), made absolute as ``epoch x total + step``;
    - ``loss``, ``grad_norm``: read as metrics for the training-health detectors.
    """

    pattern: str | list[str] | None = Field(
        None, description="regex (or list of them) with a named group 'step' or 'bar'"
    )
    line_every: int | None = Field(
        None,
        ge=1,
        description="steps between two lines of a coarse 'step' pattern (LeRobot's log_freq); "
        "learned from exact readings when not given",
    )
    first_epoch: int = Field(0, ge=0, description="number of the first epoch (per-epoch counters)")

    @property
    def patterns(self) -> list[str]:
        """The patterns as a list (none, one or several)."""
        if self.pattern is None:
            return []
        return [self.pattern] if isinstance(self.pattern, str) else list(self.pattern)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is None:
            return None
        for one in [value] if isinstance(value, str) else value:
            try:
                compiled = re.compile(one)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
            if not {"step", "bar"} & set(compiled.groupindex):
                raise ValueError("the pattern needs a named group (?P<step>...) or (?P<bar>...)")
        return value


#: Programs runner knows by name: how their job fields, progress and resume work.
ProgramKind = Literal["generic", "lerobot", "openpi", "dino_wm"]


class ProgramSpec(_Model):
    """The program a job starts, when runner knows it (:mod:`runner.programs`).

    A known program gets the job's fields in its own terms (checkpoint cadence,
    dataset revision and folder, W&B off without a key, no pushing of its own)
    and restarts that resume the way it resumes. ``repo`` and ``ref`` are where
    its image builds it from (openpi, DINO WM); ``fork`` says, in one line, what
    this job needs that the upstream repository lacks.
    """

    kind: ProgramKind = "generic"
    repo: str | None = Field(None, description="git repository the image builds (a fork)")
    ref: str | None = Field(None, description="commit or tag of repo")
    fork: str | None = Field(None, description="what the job needs that upstream lacks")


class RestartPolicy(_Model):
    """When the agent restarts a failed run from its newest complete checkpoint."""

    max_restarts: int = Field(5, ge=0, description="within window_minutes")
    window_minutes: float = Field(30, gt=0)
    max_without_checkpoint: int = Field(3, ge=1, description="restarts with no new checkpoint")
    on_oom: Literal["stop", "reduce_batch"] = "stop"
    batch_override: str | None = Field(
        None, description="override key halved on OOM when on_oom is reduce_batch"
    )
    resume_args: list[str] = Field(
        default_factory=list,
        description="overrides added on a restart so the job resumes (harness jobs need none)",
    )

    @model_validator(mode="after")
    def _oom(self) -> RestartPolicy:
        if self.on_oom == "reduce_batch" and not self.batch_override:
            raise ValueError("on_oom: reduce_batch needs batch_override (e.g. training.batch_size)")
        return self


class WatchdogSpec(_Model):
    """Thresholds of the agent's detectors (see watchdog.md for where they come from).

    A stall is no new step for longer than the learned limit
    max(stall_factor x the longest recent step interval, stall_min_s), with
    separate limits before the first step and while the job checkpoints. A stall
    confirmed by a second signal (GPU power collapsed or idle, or no CPU progress
    in the process tree) is acted on after confirm_s instead.
    """

    sample_interval_s: float = Field(1.0, gt=0, le=60, description="agent tick")
    history_interval_s: float = Field(
        5.0, gt=0, le=600, description="seconds between records of samples.jsonl"
    )
    startup_timeout_s: float = Field(900, gt=0, description="limit before the first step")
    stall_min_s: float = Field(120, gt=0, description="floor of the learned stall limit")
    stall_factor: float = Field(5.0, ge=1, description="x the longest recent step interval")
    checkpoint_timeout_s: float = Field(900, gt=0, description="silence allowed while saving")
    confirm_s: float = Field(30, gt=0, description="stall confirmed by GPU or CPU: act after")
    busy_stall_factor: float = Field(
        3.0,
        ge=1,
        description="an unconfirmed stall while the tree still uses CPU warns and dumps stacks "
        "at the stall limit and restarts only at this x the limit (a slow step is no hang)",
    )
    power_collapse_fraction: float = Field(0.35, gt=0, lt=1, description="of busy median")
    power_collapse_s: float = Field(60, gt=0, description="low power for this long")
    thermal_margin_c: float = Field(3, ge=0, description="degrees below the slowdown threshold")
    thermal_window_s: float = Field(60, gt=0, description="throttling for this long")
    input_bound_fraction: float = Field(0.5, gt=0, lt=1, description="data wait / step time")
    input_bound_steps: int = Field(50, ge=5, description="steps averaged for input-bound")
    disk_warn_factor: float = Field(2.0, gt=0, description="free < this x checkpoint size")
    disk_critical_factor: float = Field(1.0, gt=0, description="free < this x checkpoint size")
    shm_min_gb: float = Field(1.0, ge=0, description="/dev/shm below this with workers")
    ram_pressure_fraction: float = Field(0.95, gt=0, le=1, description="RAM used fraction")
    explosion_factor: float = Field(
        10.0, gt=1, description="loss / grad_norm above this x the median of recent values"
    )
    explosion_window: int = Field(50, ge=3, description="recent finite values in the median")
    explosion_warmup: int = Field(20, ge=1, description="values seen before explosions count")
    explosion_hold_steps: int = Field(3, ge=1, description="seen steps the value stays high")
    grad_norm_max: float | None = Field(100.0, gt=0, description="absolute grad_norm limit")
    throughput_drop_fraction: float = Field(
        0.3, gt=0, lt=1, description="steps/s below this x the run's steady rate"
    )
    throughput_window_s: float = Field(60, gt=0, description="slow for this long")
    stack_dumps: bool = Field(True, description="dump every stack before acting on a stall")


#: Where the W&B mirror reads its API key (online mode): a secret, never a job-file value.
WANDB_KEY_ENV = "WANDB_API_KEY"


class WandbSpec(_Model):
    """Mirroring of the run's health, step rate and events into Weights & Biases.

    The agent runs the mirror in a process of its own (:mod:`runner.agent.mirror`)
    that tails the run folder, so a slow or absent network never stalls training
    or the agent. Online, the key is the secret ``WANDB_API_KEY`` from the
    environment (added to the job's secrets as optional when enabled); offline,
    the run is written to ``RUN_DIR/wandb/`` for ``runner wandb-sync RUN`` later.
    """

    enabled: bool = Field(False, description="mirror this job's runs into W&B")
    project: str | None = Field(None, description="W&B project (default: the job's name)")
    entity: str | None = Field(None, description="W&B team or user (default: the key's own)")
    mode: Literal["online", "offline"] = Field(
        "online", description="offline writes RUN_DIR/wandb/ for `runner wandb-sync` later"
    )
    name: str | None = Field(None, description="W&B run name (default: the run id)")
    flush_s: float = Field(
        60, gt=0, description="seconds the agent waits at the end for the mirror to upload"
    )

    @field_validator("project", "entity")
    @classmethod
    def _w_and_b_name(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[\w.-]+$", value):
            raise ValueError("letters, digits, '_', '-' and '.' only")
        return value


class SecretRef(_Model):
    """A secret the job reads from its environment, by name only."""

    name: str
    required: bool = True
    purpose: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            raise ValueError(f"a secret is an environment variable name, got {value!r}")
        return value


def _secret(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class JobSpec(_Model):
    """One training job, resolved (base plus profile)."""

    name: str
    description: str = ""
    image: str | None = Field(None, description="Docker image; None runs on the host")
    command: Command
    workdir: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    secrets: list[Annotated[SecretRef, BeforeValidator(_secret)]] = Field(default_factory=list)
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    resources: Resources = Field(default_factory=Resources)
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)
    hub: HubSpec | None = None
    overrides: OverrideSpec = Field(default_factory=OverrideSpec)
    progress: ProgressSpec = Field(default_factory=ProgressSpec)
    program: ProgramSpec = Field(default_factory=ProgramSpec)
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    watchdog: WatchdogSpec = Field(default_factory=WatchdogSpec)
    wandb: WandbSpec = Field(default_factory=WandbSpec)
    on_end: Literal["destroy", "stop", "keep"] = Field(
        "destroy",
        description="a rented host once the run ended and its checkpoints are on the Hub "
        "(a stopped instance still bills its disk; destroy is the safe default)",
    )
    profile: str | None = Field(None, description="the profile merged in, if any")
    profiles: list[str] = Field(default_factory=list, description="profiles the job offers")

    @field_validator("name")
    @classmethod
    def _job_name(cls, value: str) -> str:
        if not _JOB_NAME.match(value):
            raise ValueError("lowercase letters, digits, '_', '-' and '.' only")
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("the command is empty")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not an environment variable name")
            if _SECRET_LOOKING.search(key):
                raise ValueError(
                    f"{key} looks like a credential: list it under secrets and keep its value "
                    "in your environment, never in the job file"
                )
        return value

    @model_validator(mode="after")
    def _secrets_not_in_env(self) -> JobSpec:
        for secret in self.secrets:
            if secret.name in self.env:
                raise ValueError(
                    f"{secret.name} is a secret: remove its value from env (it comes from your "
                    "environment at launch)"
                )
        return self

    @model_validator(mode="before")
    @classmethod
    def _wandb_key_is_a_secret(cls, data: Any) -> Any:
        # Online mirroring needs the key on the host: name it, so launch hands it
        # over (optional: without it the run goes on unmirrored, with a warning).
        if not isinstance(data, dict):
            return data
        wandb = data.get("wandb")
        if isinstance(wandb, WandbSpec):
            wandb = wandb.model_dump()
        if not isinstance(wandb, dict) or not wandb.get("enabled"):
            return data
        if wandb.get("mode", "online") != "online":
            return data
        secrets = list(data.get("secrets") or [])
        named = {s if isinstance(s, str) else getattr(s, "name", None) for s in secrets}
        named |= {s.get("name") for s in secrets if isinstance(s, dict)}
        if WANDB_KEY_ENV not in named:
            secrets.append({"name": WANDB_KEY_ENV, "required": False, "purpose": "W&B mirror"})
        return {**data, "secrets": secrets}

    def with_hub(self, repo: str) -> JobSpec:
        """This job pushing its checkpoints to ``repo`` (its other Hub settings kept).

        Raises :class:`UsageError` unless ``repo`` is ``OWNER/NAME``.
        """
        if not re.match(r"^[\w.-]+/[\w.-]+$", repo):
            raise UsageError(f"--hub {repo!r}: expected a Hub repo id, OWNER/NAME")
        hub = self.hub.model_copy(update={"repo": repo}) if self.hub else HubSpec(repo=repo)
        return self.model_copy(update={"hub": hub})

    @property
    def secret_names(self) -> list[str]:
        return [s.name for s in self.secrets]

    def apply_overrides(self, overrides: list[str]) -> tuple[list[str], dict[str, str]]:
        """The command and extra environment after ``key=value`` overrides.

        Raises :class:`UsageError` for an override that is not ``key=value`` or
        for a job that takes none.
        """
        given = list(self.overrides.defaults) + list(overrides)
        for item in overrides:
            key, sep, _ = item.partition("=")
            if not sep or not re.match(r"^[+~]{0,2}[A-Za-z_][\w.\-/]*$", key.lstrip("-")):
                raise UsageError(f"bad override {item!r}: expected key=value, e.g. frameskip=5")
        style = self.overrides.style
        if style == "none" and overrides:
            raise UsageError(f"job {self.name} takes no overrides (got {overrides[0]!r})")
        if style == "env":
            env = {}
            for item in given:
                key, _, value = item.partition("=")
                if not _ENV_NAME.match(key):
                    raise UsageError(f"bad override {item!r}: {self.name} takes VARIABLE=value")
                env[key] = value
            return list(self.command), env
        if style == "cli":
            return list(self.command) + [
                item if item.startswith("--") else f"--{item}" for item in given
            ], {}
        return list(self.command) + given, {}


# --------------------------------------------------------------------------- loading


def jobs_dirs() -> list[Path]:
    """Where job files are looked up: ``$RUNNER_JOBS_DIR`` alone when set, else
    ``./jobs`` and then the shipped jobs, the first match winning."""
    if env := os.environ.get(ENV_JOBS_DIR):
        return [Path(env)] if Path(env).is_dir() else []
    dirs = [Path.cwd() / "jobs"]
    here = Path(__file__).resolve().parent
    dirs.extend([here / "_jobs", here.parent / "jobs"])  # installed wheel, source checkout
    unique: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def job_files() -> dict[str, Path]:
    """Job name -> file, the first folder of :func:`jobs_dirs` winning."""
    found: dict[str, Path] = {}
    for folder in jobs_dirs():
        for file in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            found.setdefault(file.stem, file)
    return found


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: {where}invalid YAML: {problem}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of fields (name, image, command, ...)")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(err: dict[str, Any], data: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    kind = err["type"]
    if kind == "extra_forbidden":
        field = str(err["loc"][-1])
        parent_loc = err["loc"][:-1]
        model: Any = JobSpec
        for part in parent_loc:
            fields = getattr(model, "model_fields", {})
            if part in fields:
                model = fields[part].annotation
                model = next(
                    (a for a in getattr(model, "__args__", ()) if hasattr(a, "model_fields")),
                    model,
                )
        known = sorted(getattr(model, "model_fields", {}))
        close = difflib.get_close_matches(field, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(known)}"
        return f"{loc}: unknown field ({hint})"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        return f"{loc}: required field is missing"
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
    return f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}"


def parse_job(data: dict[str, Any], *, path: Path, profile: str | None = None) -> JobSpec:
    """Validate one job's data, merging ``profile`` over the base."""
    data = dict(data)
    profiles = data.pop("profiles", None) or {}
    if not isinstance(profiles, dict):
        raise SpecError(f"{path}: profiles: expected a mapping of profile name to fields")
    if profile is not None:
        if profile not in profiles:
            offered = ", ".join(sorted(profiles)) or "none"
            raise SpecError(f"{path}: no profile {profile!r} (profiles: {offered})")
        if not isinstance(profiles[profile], dict):
            raise SpecError(f"{path}: profiles.{profile}: expected a mapping of fields")
        data = _merge(data, profiles[profile])
    data.setdefault("name", path.stem)
    data["profile"] = profile
    data["profiles"] = sorted(profiles)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        prefix = f"profiles.{profile} merged: " if profile else ""
        problems = "; ".join(_describe(e, data) for e in exc.errors())  # type: ignore[arg-type]
        raise SpecError(f"{path}: {prefix}{problems}") from None
    if spec.name != path.stem:
        raise SpecError(f"{path}: name: {spec.name!r} must match the file name {path.stem!r}")
    return spec


def load_job(name: str, *, profile: str | None = None) -> JobSpec:
    """The job called ``name``, with ``profile`` merged in.

    Raises :class:`SpecError` for an unknown job (with the close matches) or an
    invalid file.
    """
    files = job_files()
    if name not in files:
        close = [f for f in files if f.startswith(name) or name in f][:3]
        close = close or difflib.get_close_matches(name, files, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see `runner jobs`"
        where = ", ".join(str(d) for d in jobs_dirs()) or "no jobs folder found"
        raise SpecError(f"unknown job {name!r} ({hint}; looked in {where})")
    return parse_job(_read_yaml(files[name]), path=files[name], profile=profile)


def load_all() -> tuple[list[JobSpec], list[SpecError]]:
    """Every job file: the valid specs and, separately, the errors of the invalid ones."""
    specs, errors = [], []
    for name, path in job_files().items():
        try:
            specs.append(parse_job(_read_yaml(path), path=path))
        except SpecError as err:
            errors.append(err)
        del name
    return specs, errors


def local_profile(spec: JobSpec) -> str | None:
    """The profile a plain machine runs: ``embedded`` when the job offers it."""
    return "embedded" if "embedded" in spec.profiles else None

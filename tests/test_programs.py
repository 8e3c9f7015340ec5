"""The program adapters (runner/programs.py) on the shipped jobs and on small made-up ones.

Each fact a test rests on is read from the program's own source:

LeRobot 0.6.1 (the wheel in the venv of scripts/setup-lerobot-env.sh, ``site-packages/lerobot``):

- ``configs/train.py`` L86 ``output_dir``, L93 ``resume``, L102 ``batch_size``, L111 ``steps``,
  L114 ``log_freq: int = 200``, L123 ``save_freq: int = 20_000`` (fields of
  ``TrainPipelineConfig``, L78-79); L175-180: ``--policy.path`` is taken before ``resume``,
  so ``_resolve_resume_checkpoint`` (L182) never runs and ``checkpoint_path`` stays ``None``
  (L143), which ``scripts/lerobot_train.py`` L422-428 hands to ``load_training_state``
  (``common/train_utils.py`` L235: ``TypeError``); L191-195: ``--resume`` without
  ``--config_path`` is a ``ValueError``; L259-263: an existing output folder without
  ``--resume`` is ``FileExistsError``; L283-289: ``push_to_hub`` needs ``repo_id``.
- ``configs/default.py`` L26 ``DatasetConfig``: L37 ``root``, L40 ``revision``, L42
  ``video_backend``; L81-82 ``WandBConfig.enable``; ``configs/policies.py`` L62 ``device``,
  L70 ``push_to_hub: bool = True``.
- ``configs/parser.py`` L414 ``parse_arg("config_path")``, L422-424 ``from_pretrained(config,
  cli_args=...)`` and ``configs/train.py`` L367-368 ``draccus.parse(cls, config_file,
  args=cli_args)``: the command line wins over the saved config, wherever it stands in argv
  (seen here too: a resume given ``--batch_size=1`` ran at "effective batch size: 1").
- ``utils/logging_utils.py`` L209-220 ``MetricsTracker.__str__`` (``step:``, ``smpl:``,
  ``ep:``, ``epch:``, then the meters of ``scripts/lerobot_train.py`` L559-571: ``loss``,
  ``grdn``, ``lr``, ...), printed by ``logging.info`` at L641 every ``log_freq`` steps (L627);
  ``utils/utils.py`` L103-112 ``format_big_number`` (``1K``); the bar at
  ``scripts/lerobot_train.py`` L589-596 ``tqdm(total=cfg.steps - step, desc="Training",
  unit="step")``.

openpi at Physical-Intelligence/openpi@15a9616a00943ada6c20a0f158e3adb39df2ccac (tyro 0.9.22 and
tqdm-loggable 0.2 in its ``uv.lock``): ``scripts/train.py`` L266-267 ``pbar.write(f"Step {step}:
{info_str}")``; ``src/openpi/training/checkpoints.py`` L33-36 ``FileExistsError`` "Use
--overwrite or --resume"; ``src/openpi/training/config.py`` L555-556 refuses both at once;
tqdm-loggable 0.2 ``tqdm_logging.py`` L147 ``"Progress on:%s %s/%s rate:%s remaining:%s ..."``.

DINO WM at gaoyuezhou/dino_wm@0a9492fa12044b852ae9e001cc74604b79c8bb0c, ``train.py``: L33
``saved_folder = os.getcwd()`` (the Hydra run folder) and L206 reads
``saved_folder/checkpoints/model_latest.pth``; L100-105 ``wandb.init`` on the main process with
no switch; L371 ``init_epoch = self.epoch + 1`` (epochs count from 1); L443-444 ``Epoch {epoch}
Train`` and L555-556 ``Epoch {epoch} Valid`` bars; L379 saves every ``save_every_x_epoch``.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from runner.agent.progress import ProgressTracker
from runner.agent.restart import set_override
from runner.programs import (
    DinoWm,
    LeRobot,
    OpenPi,
    Prepared,
    Program,
    RunContext,
    cli_value,
    program_for,
    set_cli,
)
from runner.spec import JobSpec, ProgressSpec, load_job
from tests.conftest import REPO

#: The environment pytest was started in (read at collection, before the hermetic HOME).
_STARTUP_ENV = dict(os.environ)

# Real lines, as LeRobot 0.6.1, openpi and DINO WM print them.
LR_INFO = (
    "INFO 2026-12-07 14:25:30 ot_train.py:641 step:20 smpl:40 ep:1 epch:0.25 loss:69.456 "
    "grdn:396.874 lr:1.0e-05 updt_s:0.415 data_s:0.009 smp/s:5 l1_loss:0.895 kld_loss:6.856"
)
LR_INFO_1K = (
    "INFO 2026-12-07 14:31:02 ot_train.py:641 step:1K smpl:2K ep:50 epch:12.50 loss:0.912 "
    "grdn:12.874 lr:1.0e-05 updt_s:0.415 data_s:0.009 smp/s:5 l1_loss:0.095 kld_loss:0.856"
)
LR_BAR = "Training:  23%|██▎       | 7/30 [00:05<00:13,  1.67step/s]"
LR_GLUED = "Training:  67%|██████▋   | 20/30 [00:08<00:01,  8.04step/s]" + LR_INFO
OPENPI_STEP = "Step 1100: grad_norm=1.2346, loss=0.5000, param_norm=1802.3000"
OPENPI_TQDM = "Progress on: 1.01kit/30.0kit rate:10.0it/s remaining:48:30 elapsed:00:00 postfix:-"
DINO_TRAIN = "Epoch 3 Train:  45%|████▌     | 450/1000 [01:02<01:16,  7.2it/s]"
DINO_VALID = "Epoch 3 Valid:  45%|████▌     | 450/1000 [01:02<01:16,  7.2it/s]"


def ctx(
    tmp_path: Path,
    env: Mapping[str, str] | None = None,
    dataset: Path | None = None,
    device: str | None = None,
) -> RunContext:
    """This run on this host: run folder ``tmp/run``, working folder ``tmp/work``."""
    return RunContext(
        run_dir=tmp_path / "run",
        cwd=tmp_path / "work",
        env=dict(env or {}),
        dataset=dataset,
        device=device,
    )


def made_up(kind: str, command: str = "train", **fields: Any) -> JobSpec:
    """A small job of program ``kind``."""
    data: dict[str, Any] = {"name": "t", "command": command, "program": {"kind": kind}}
    data.update(fields)
    return JobSpec.model_validate(data)


def prepare(job: JobSpec, c: RunContext, argv: list[str] | None = None) -> Prepared:
    """The job's command (its default overrides applied, or ``argv``) made ready."""
    default_argv, env = job.apply_overrides([])
    return program_for(job).prepare(job, default_argv if argv is None else argv, env, c)


def every(argv: list[str], name: str) -> list[str]:
    """Every token that sets ``--name`` (``--name=V``, ``--name`` and its value, bare)."""
    flag = f"--{name}"
    return [a for a in argv if a == flag or a.startswith(flag + "=")]


def matches(spec: ProgressSpec, line: str) -> list[dict[str, str | Any]]:
    """The named groups of every pattern of ``spec`` that matches ``line``."""
    return [m.groupdict() for p in spec.patterns if (m := re.search(p, line)) is not None]


# -- which adapter ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "profile", "kind"),
    [
        ("act_so101", None, "lerobot"),
        ("act_so101", "cpu", "lerobot"),
        ("smolvla_so101", None, "lerobot"),
        ("pi0_so101", None, "lerobot"),
        ("openpi_pi0", None, "openpi"),
        ("franka_cube_stack", None, "dino_wm"),
        ("franka_cube_stack", "embedded", "generic"),
        ("robomimic_can", None, "dino_wm"),
    ],
)
def test_program_for_the_shipped_jobs(name: str, profile: str | None, kind: str) -> None:
    job = load_job(name, profile=profile)
    program = program_for(job)
    assert program.kind == kind
    expected = {"lerobot": LeRobot, "openpi": OpenPi, "dino_wm": DinoWm, "generic": Program}
    assert type(program) is expected[kind]
    assert program_for(None).kind == "generic"


def test_a_generic_job_is_handed_over_unchanged(tmp_path: Path) -> None:
    """The embedded franka profile and a job naming no program: their own command and terms."""
    for job in (load_job("franka_cube_stack", profile="embedded"), made_up("generic")):
        program = program_for(job)
        argv, env = job.apply_overrides([])
        c = ctx(tmp_path, dataset=tmp_path / "ds", device="cpu")
        prepared = program.prepare(job, argv, {**env, "VIDEO_BACKEND": "pyav"}, c)
        assert prepared == Prepared(argv, {**env, "VIDEO_BACKEND": "pyav"})
        assert prepared.argv is not argv  # a copy: the caller's command is never changed
        assert program.resume(job, argv, env, tmp_path / "ck", c) is None  # resume_args apply
        assert program.checkpoint_root(job, c) is None
        assert program.progress(job, argv) == job.progress
        assert program.ignored_fields(job) == []
    assert JobSpec.model_validate({"name": "t", "command": "x"}).program.kind == "generic"


# -- LeRobot: prepare ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "output"),
    [
        ("act_so101", "outputs/train/act_so101"),
        ("smolvla_so101", "outputs/train/smolvla_so101"),
        ("pi0_so101", "outputs/train/pi0_so101_20k"),
    ],
)
def test_lerobot_prepare_on_the_shipped_gpu_jobs(tmp_path: Path, name: str, output: str) -> None:
    job = load_job(name)
    argv, env = job.apply_overrides([])
    c = ctx(tmp_path)  # no WANDB_API_KEY, no dataset brought, the device not picked
    got = program_for(job).prepare(job, argv, env, c)
    out = c.cwd / output
    # The job's own command, untouched and in order, then runner's flags.
    assert got.argv[: len(argv)] == argv
    assert got.argv[len(argv) :] == [
        f"--output_dir={out}",
        "--policy.push_to_hub=false",
        "--save_freq=5000",
        "--dataset.revision=main",
        "--wandb.enable=false",
    ]
    assert every(got.argv, "dataset.video_backend") == ["--dataset.video_backend=pyav"]
    assert every(got.argv, "dataset.root") == [] and every(got.argv, "policy.device") == []
    assert got.env == env
    assert got.notes == (
        "--policy.push_to_hub=false: runner pushes the checkpoints",
        "--save_freq=5000 (checkpoints.every_steps)",
        "--wandb.enable=false: no WANDB_API_KEY is set",
    )
    assert program_for(job).checkpoint_root(job, c) == out / "checkpoints"
    assert c.cwd / job.checkpoints.path == out / "checkpoints"


def test_lerobot_prepare_on_the_cpu_profile(tmp_path: Path) -> None:
    """The synthetic dataset runner brought, the CPU, a W&B key: root and device, W&B left on."""
    job = load_job("act_so101", profile="cpu")
    argv, env = job.apply_overrides([])
    c = ctx(tmp_path, env={"WANDB_API_KEY": "k"}, dataset=tmp_path / "ds", device="cpu")
    got = program_for(job).prepare(job, argv, env, c)
    assert got.argv[: len(argv)] == argv
    assert got.argv[len(argv) :] == [
        f"--output_dir={c.cwd / 'outputs/train/act_so101'}",
        "--policy.push_to_hub=false",
        "--save_freq=100",
        f"--dataset.root={tmp_path / 'ds'}",
        "--policy.device=cpu",
    ]
    assert every(got.argv, "dataset.revision") == []  # a synthetic dataset has none
    assert every(got.argv, "wandb.enable") == []
    assert f"--dataset.root={tmp_path / 'ds'}: the dataset runner brought" in got.notes


def test_lerobot_prepare_replaces_push_to_hub_and_keeps_what_the_job_sets(
    tmp_path: Path,
) -> None:
    job = made_up(
        "lerobot",
        "lerobot-train --policy.push_to_hub=true --save_freq 123 --dataset.revision=v2.1 "
        "--dataset.root=/mine --policy.device=cuda --wandb.enable=true --output_dir=/elsewhere",
        dataset={"source": "hub", "repo": "me/ds", "revision": "v2.0"},
        checkpoints={"path": "/abs/out/checkpoints", "every_steps": 50},
    )
    got = prepare(job, ctx(tmp_path, dataset=tmp_path / "ds", device="cpu"))
    assert every(got.argv, "policy.push_to_hub") == ["--policy.push_to_hub=false"]
    # Runner must know where the checkpoints go: its --output_dir, the job's checkpoints.path.
    assert every(got.argv, "output_dir") == ["--output_dir=/abs/out"]
    assert cli_value(got.argv, "save_freq") == "123" and every(got.argv, "save_freq") == [
        "--save_freq"
    ]
    assert cli_value(got.argv, "dataset.revision") == "v2.1"
    assert cli_value(got.argv, "dataset.root") == "/mine"
    assert cli_value(got.argv, "policy.device") == "cuda"
    # No key: W&B off, even where the command turns it on (wandb.init would fail without one).
    assert every(got.argv, "wandb.enable") == ["--wandb.enable=false"]
    # A save_freq given as an override counts too.
    overridden = made_up(
        "lerobot",
        "lerobot-train",
        overrides={"style": "cli", "defaults": ["save_freq=7"]},
        checkpoints={"every_steps": 50},
    )
    assert every(prepare(overridden, ctx(tmp_path)).argv, "save_freq") == ["--save_freq=7"]
    # An explicit false stays as it is, once, with no note.
    quiet = made_up("lerobot", "lerobot-train --policy.push_to_hub false --wandb.enable=false")
    kept = prepare(quiet, ctx(tmp_path))
    assert kept.argv[:5] == [
        "lerobot-train",
        "--policy.push_to_hub",
        "false",
        "--wandb.enable=false",
        f"--output_dir={tmp_path / 'work'}",
    ]
    assert len(kept.argv) == 5 and kept.notes == ()


def test_lerobot_prepare_without_cadence_dataset_or_key(tmp_path: Path) -> None:
    """No checkpoints.every_steps: LeRobot's own --save_freq; no Hub dataset: no revision; a
    W&B key set: W&B as the command says."""
    job = made_up("lerobot", "lerobot-train --wandb.enable=true", dataset={"source": "none"})
    got = prepare(job, ctx(tmp_path, env={"WANDB_API_KEY": "k"}))
    assert every(got.argv, "save_freq") == []
    assert every(got.argv, "dataset.revision") == [] and every(got.argv, "dataset.root") == []
    assert every(got.argv, "wandb.enable") == ["--wandb.enable=true"]
    assert every(got.argv, "policy.device") == []  # the device was not picked: LeRobot's own


def test_lerobot_video_backend_comes_from_the_variable_it_never_reads(tmp_path: Path) -> None:
    """Nothing in LeRobot reads VIDEO_BACKEND: it becomes --dataset.video_backend."""
    job = made_up("lerobot", "lerobot-train", overrides={"style": "cli"})
    got = program_for(job).prepare(
        job, ["lerobot-train"], {"VIDEO_BACKEND": "torchcodec", "OTHER": "1"}, ctx(tmp_path)
    )
    assert every(got.argv, "dataset.video_backend") == ["--dataset.video_backend=torchcodec"]
    assert got.env == {"OTHER": "1"}  # taken out of the environment it was given in
    in_job = made_up("lerobot", "lerobot-train", env={"VIDEO_BACKEND": "pyav"})
    got = prepare(in_job, ctx(tmp_path))
    assert every(got.argv, "dataset.video_backend") == ["--dataset.video_backend=pyav"]
    given = made_up("lerobot", "lerobot-train --dataset.video_backend=pyav")
    got = program_for(given).prepare(
        given, list(given.command), {"VIDEO_BACKEND": "torchcodec"}, ctx(tmp_path)
    )
    assert every(got.argv, "dataset.video_backend") == ["--dataset.video_backend=pyav"]
    assert got.env == {}


# -- LeRobot: resume -------------------------------------------------------------------------


def _checkpoint(c: RunContext, job: JobSpec, step: int) -> Path:
    root = program_for(job).checkpoint_root(job, c)
    assert root is not None
    return root / f"{step:06d}"


def _config(ck: Path) -> str:
    return f"--config_path={ck / 'pretrained_model' / 'train_config.json'}"


def test_lerobot_resume_from_a_checkpoint_replaces_earlier_resumes(tmp_path: Path) -> None:
    job = load_job("act_so101")
    c = ctx(tmp_path)
    program = program_for(job)
    prepared = prepare(job, c)
    first, second = _checkpoint(c, job, 5000), _checkpoint(c, job, 10000)
    got = program.resume(job, prepared.argv, prepared.env, first, c)
    assert got is not None
    assert got.argv == [*prepared.argv, "--resume=true", _config(first)]
    assert got.notes == ("resuming from 005000",)
    # The next restart: the newer checkpoint, once; the earlier --resume/--config_path gone,
    # in either spelling.
    stale = [*got.argv[:-2], "--resume", "true", "--config_path", "/old/train_config.json"]
    again = program.resume(job, stale, {}, second, c)
    assert again is not None
    assert again.argv == [*prepared.argv, "--resume=true", _config(second)]


def test_lerobot_resume_keeps_a_halved_batch(tmp_path: Path) -> None:
    """The OOM path halves the batch after the resume is made (runner.agent.restart
    .set_override); the next resume keeps it. LeRobot applies the command line over the saved
    config wherever the flag stands (parser.py L422-424, train.py L367-368)."""
    c = ctx(tmp_path)
    # act_so101 sets --batch_size=8 (its default overrides): halved in place.
    job = load_job("act_so101")
    program = program_for(job)
    prepared = prepare(job, c)
    one = program.resume(job, prepared.argv, {}, _checkpoint(c, job, 5000), c)
    assert one is not None
    halved, env = set_override(one.argv, {}, "batch_size", "4", "cli")
    assert env == {} and every(halved, "batch_size") == ["--batch_size=4"]
    two = program.resume(job, halved, env, _checkpoint(c, job, 10000), c)
    assert two is not None
    assert every(two.argv, "batch_size") == ["--batch_size=4"]
    assert every(two.argv, "resume") == ["--resume=true"]
    assert every(two.argv, "config_path") == [_config(_checkpoint(c, job, 10000))]
    # A command without one: the halved batch comes after --config_path, and stays.
    bare = made_up("lerobot", "lerobot-train --policy.type=act", checkpoints={"path": "o/ck"})
    ck1, ck2 = tmp_path / "work/o/checkpoints/000002", tmp_path / "work/o/checkpoints/000004"
    one = program.resume(bare, prepare(bare, c).argv, {}, ck1, c)
    assert one is not None
    halved, _ = set_override(one.argv, {}, "batch_size", "4", "cli")
    assert halved[-3:] == ["--resume=true", _config(ck1), "--batch_size=4"]
    two = program.resume(bare, halved, {}, ck2, c)
    assert two is not None
    assert two.argv[-3:] == ["--batch_size=4", "--resume=true", _config(ck2)]
    assert every(two.argv, "resume") == ["--resume=true"]


@pytest.mark.parametrize("name", ["smolvla_so101", "pi0_so101"])
def test_lerobot_resume_drops_the_pretrained_path(tmp_path: Path, name: str) -> None:
    """--policy.path wins over --resume (configs/train.py L175-180): kept, the checkpoint would
    never be read and lerobot-train fails in load_training_state(None). A fresh start keeps it."""
    job = load_job(name)
    c = ctx(tmp_path)
    prepared = prepare(job, c)
    assert len(every(prepared.argv, "policy.path")) == 1
    ck = _checkpoint(c, job, 5000)
    got = program_for(job).resume(job, prepared.argv, prepared.env, ck, c)
    assert got is not None
    assert every(got.argv, "policy.path") == []
    assert got.argv == [
        *[a for a in prepared.argv if not a.startswith("--policy.path=")],
        "--resume=true",
        _config(ck),
    ]
    if name == "pi0_so101":  # the policy's other settings still reach it
        assert cli_value(got.argv, "policy.dtype") == "bfloat16"
    fresh = program_for(job).resume(job, got.argv, {}, None, c)
    assert fresh is not None
    assert every(fresh.argv, "resume") == [] and every(fresh.argv, "config_path") == []
    again = program_for(job).resume(job, prepared.argv, {}, None, c)
    assert again is not None and again.argv == prepared.argv


def test_lerobot_fresh_start_moves_an_incomplete_output_aside(tmp_path: Path) -> None:
    """lerobot-train refuses an existing output folder without --resume (train.py L259-263):
    one without a complete checkpoint is moved aside, never deleted."""
    job = load_job("act_so101", profile="cpu")
    c = ctx(tmp_path)
    program = program_for(job)
    output = c.cwd / "outputs/train/act_so101"
    argv = [*prepare(job, c).argv, "--resume=true", "--config_path=/x/train_config.json"]
    # Nothing there: nothing moved, nothing made.
    got = program.resume(job, argv, {"A": "1"}, None, c)
    assert got is not None
    assert got.argv == argv[:-2] and got.env == {"A": "1"} and got.notes == ()
    assert not output.parent.exists()
    # A half-written checkpoint: moved beside it, whole.
    partial = output / "checkpoints/000100/pretrained_model"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")
    got = program.resume(job, argv, {}, None, c)
    assert got is not None and got.argv == argv[:-2]
    assert not output.exists()
    (aside,) = output.parent.iterdir()
    assert re.fullmatch(r"act_so101\.incomplete-\d+", aside.name)
    assert (aside / "checkpoints/000100/pretrained_model/config.json").read_text() == "{}"
    assert got.notes == (f"{output} had no complete checkpoint: moved to {aside.name}",)


# -- LeRobot: progress -----------------------------------------------------------------------


def test_lerobot_patterns_read_its_lines() -> None:
    job = load_job("act_so101")
    spec = program_for(job).progress(job, job.apply_overrides([])[0])
    assert spec.line_every == 200 and spec.first_epoch == 0
    assert matches(spec, LR_INFO) == [{"step": "20", "loss": "69.456", "grad_norm": "396.874"}]
    assert matches(spec, LR_INFO_1K) == [{"step": "1K", "loss": "0.912", "grad_norm": "12.874"}]
    assert matches(spec, LR_BAR) == [{"bar": "7"}]
    # The bar and the record on one physical line (a \r redraw): both read.
    assert matches(spec, LR_GLUED) == [
        {"step": "20", "loss": "69.456", "grad_norm": "396.874"},
        {"bar": "20"},
    ]
    assert matches(spec, "INFO 2026-12-07 14:25:30 ot_train.py:687 Checkpoint policy after") == []


@pytest.mark.parametrize(
    ("flags", "every_"),
    [([], 200), (["--log_freq=20"], 20), (["--log_freq", "50"], 50), (["--log_freq=0"], 200)],
)
def test_lerobot_line_every_is_its_log_freq(flags: list[str], every_: int) -> None:
    job = made_up("lerobot", "lerobot-train")
    assert program_for(job).progress(job, ["lerobot-train", *flags]).line_every == every_


def test_lerobot_cpu_profile_logs_every_20_and_the_bar_counts_from_the_resume() -> None:
    job = load_job("act_so101", profile="cpu")
    spec = program_for(job).progress(job, job.apply_overrides([])[0])
    assert spec.line_every == 20
    tracker = ProgressTracker(None, spec.patterns, line_every=spec.line_every)
    tracker.reset(0.0, base_step=100)  # resumed from checkpoint 000100: the bar starts at 0
    seen = tracker.update([LR_GLUED.replace("step:20 ", "step:120 ")], 1.0)
    assert seen.step == 120 and seen.metrics == {"loss": 69.456, "grad_norm": 396.874}


def test_a_job_s_own_progress_pattern_wins() -> None:
    own = {"pattern": r"it (?P<step>\d+)", "line_every": 5}
    for kind in ("lerobot", "openpi", "dino_wm"):
        job = made_up(kind, progress=own)
        assert program_for(job).progress(job, ["x", "--log_freq=9"]) == job.progress


def test_lerobot_flag_names_are_lerobot_s_own() -> None:
    """The fields runner passes exist in LeRobot 0.6.1's config classes (read, not imported)."""
    site = _lerobot_site()
    if site is None:
        pytest.skip("no LeRobot venv here (scripts/setup-lerobot-env.sh builds it)")
    train = _fields(site / "configs" / "train.py")
    default = _fields(site / "configs" / "default.py")
    policies = _fields(site / "configs" / "policies.py")
    assert {"save_freq", "output_dir", "resume", "log_freq", "batch_size", "steps"} <= train[
        "TrainPipelineConfig"
    ]
    assert {"dataset", "wandb", "policy"} <= train["TrainPipelineConfig"]
    assert {"root", "revision", "video_backend", "repo_id"} <= default["DatasetConfig"]
    assert "enable" in default["WandBConfig"]
    assert {"push_to_hub", "device"} <= policies["PreTrainedConfig"]


def _lerobot_site() -> Path | None:
    """``site-packages/lerobot`` of a finished scripts/setup-lerobot-env.sh venv, never built
    here (that takes minutes)."""
    digest = hashlib.sha256((REPO / "images/lerobot/requirements.txt").read_bytes()).hexdigest()
    venvs = [Path(v) for v in [_STARTUP_ENV.get("RUNNER_LEROBOT_VENV")] if v]
    home = Path(_STARTUP_ENV.get("HOME", "~")).expanduser()
    caches = [
        _STARTUP_ENV.get("RUNNER_CI_CACHE"),
        "/var/cache/runner-ci",
        str(Path(_STARTUP_ENV.get("XDG_CACHE_HOME") or home / ".cache") / "runner-ci"),
    ]
    venvs += [Path(cache) / f"lerobot-{digest[:16]}" for cache in caches if cache]
    for venv in venvs:
        stamp = venv / ".runner-lerobot"
        if stamp.is_file() and stamp.read_text().strip() == digest[:16]:
            found = sorted(venv.glob("lib/python3.*/site-packages/lerobot"))
            if found:
                return found[0]
    return None


def _fields(path: Path) -> dict[str, set[str]]:
    """Class name -> its annotated fields, in one source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name: {
            item.target.id
            for item in node.body
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
        }
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    }


# -- openpi ----------------------------------------------------------------------------------


def test_openpi_prepare_on_the_shipped_job(tmp_path: Path) -> None:
    job = load_job("openpi_pi0")
    argv, env = job.apply_overrides([])
    program = program_for(job)
    got = program.prepare(job, argv, env, ctx(tmp_path))
    # --save-interval=5000 is already among its default overrides: not twice.
    assert got.argv == [*argv, "--no-wandb-enabled"]
    assert every(got.argv, "save-interval") == ["--save-interval=5000"]
    assert got.notes == ("--no-wandb-enabled: no WANDB_API_KEY is set",)
    # The flags land after `train` ($0 of the bash -c script), in its "$@".
    assert argv[:2] == ["bash", "-c"] and argv[3] == "train"
    assert argv[4:] == ["--num-train-steps=30000", "--save-interval=5000"]
    keyed = program.prepare(job, argv, env, ctx(tmp_path, env={"WANDB_API_KEY": "k"}))
    assert keyed.argv == argv and keyed.notes == ()
    assert program.checkpoint_root(job, ctx(tmp_path)) is None  # checkpoints.path, as the job says


def test_openpi_prepare_sets_the_cadence_and_turns_wandb_off(tmp_path: Path) -> None:
    job = made_up(
        "openpi", "uv run scripts/train.py cfg --wandb-enabled", checkpoints={"every_steps": 250}
    )
    got = prepare(job, ctx(tmp_path))
    assert got.argv[:4] == ["uv", "run", "scripts/train.py", "cfg"]
    assert got.argv[4:] == ["--save-interval=250", "--no-wandb-enabled"]
    told = made_up("openpi", "train.py cfg --save-interval 10 --no-wandb-enabled")
    assert prepare(told, ctx(tmp_path)).argv == list(told.command)


def test_openpi_resume_is_a_bare_flag_or_a_fresh_folder(tmp_path: Path) -> None:
    """tyro 0.9.22 booleans are bare flag pairs (``--resume True`` is "Unrecognized arguments:
    True"); the checkpoint folder exists from start-up on (checkpoints.py L33-36: a start
    without --resume or --overwrite is FileExistsError), and --overwrite rmtree()s it
    (L26-28): a start without a complete checkpoint moves the folder aside instead and passes
    neither flag; never both (config.py L555-556)."""
    job = load_job("openpi_pi0")
    c = ctx(tmp_path)
    program = program_for(job)
    prepared = prepare(job, c)
    ck = tmp_path / "work/checkpoints/pi0_so101/pi0_so101/5000"
    resumed = program.resume(job, prepared.argv, prepared.env, ck, c)
    assert resumed is not None
    assert resumed.argv == [*prepared.argv, "--resume"]
    assert resumed.env == prepared.env
    folder = tmp_path / "work/checkpoints/pi0_so101/pi0_so101"
    (folder / "1000.orbax-checkpoint-tmp-0").mkdir(parents=True)
    fresh = program.resume(job, [*resumed.argv, "--overwrite"], {}, None, c)
    assert fresh is not None and fresh.argv == prepared.argv
    assert not folder.exists(), "the folder openpi would refuse is still there"
    (aside,) = folder.parent.glob("pi0_so101.incomplete-*")
    assert (aside / "1000.orbax-checkpoint-tmp-0").is_dir(), "moved aside, never deleted"
    assert fresh.notes and "moved to" in fresh.notes[0]
    back = program.resume(job, [*fresh.argv, "--resume=true"], {}, ck, c)
    assert back is not None and back.argv == [*prepared.argv, "--resume"]
    for argv in (resumed.argv, fresh.argv, back.argv):
        assert not any(a.startswith(("--resume=", "--overwrite=")) for a in argv)
        assert len(every(argv, "resume") + every(argv, "overwrite")) <= 1


def test_openpi_patterns_read_its_lines() -> None:
    job = load_job("openpi_pi0")
    spec = program_for(job).progress(job, [])
    assert (spec.line_every, spec.first_epoch) == (None, 0)
    assert matches(spec, OPENPI_STEP) == [{"step": "1100", "grad_norm": "1.2346", "loss": "0.5000"}]
    assert matches(spec, OPENPI_TQDM) == [{"step": "1.01k"}]
    tracker = ProgressTracker(None, spec.patterns)
    seen = tracker.update([OPENPI_STEP], 1.0)
    assert seen.step == 1100 and seen.metrics == {"loss": 0.5, "grad_norm": 1.2346}


# -- DINO WM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["franka_cube_stack", "robomimic_can"])
def test_dino_wm_prepare_pins_the_run_folder_and_turns_wandb_off(tmp_path: Path, name: str) -> None:
    job = load_job(name)
    argv, env = job.apply_overrides([])
    c = ctx(tmp_path)
    program = program_for(job)
    got = program.prepare(job, argv, env, c)
    folder = tmp_path / "run" / "dino_wm"
    assert got.argv == [*argv, f"hydra.run.dir={folder}"]
    assert got.env == {**env, "WANDB_MODE": "disabled"}
    assert got.notes == (
        f"hydra.run.dir={folder}: a restart resumes there",
        "WANDB_MODE=disabled: no WANDB_API_KEY is set",
    )
    assert program.checkpoint_root(job, c) == folder / "checkpoints"
    keyed = program.prepare(job, argv, env, ctx(tmp_path, env={"WANDB_API_KEY": "k"}))
    assert "WANDB_MODE" not in keyed.env
    offline = program.prepare(job, argv, env, ctx(tmp_path, env={"WANDB_MODE": "offline"}))
    assert "WANDB_MODE" not in offline.env  # the user's own choice stands
    mine = program.prepare(job, [*argv, "hydra.run.dir=/mine"], {"WANDB_MODE": "online"}, c)
    assert mine.argv == [*argv, "hydra.run.dir=/mine"]
    assert mine.env == {"WANDB_MODE": "online"} and mine.notes == ()


def test_dino_wm_resume_is_its_own(tmp_path: Path) -> None:
    """train.py reads checkpoints/model_latest.pth from its run folder by itself (L33, L206)."""
    job = load_job("franka_cube_stack")
    c = ctx(tmp_path)
    prepared = prepare(job, c)
    program = program_for(job)
    for ck in (tmp_path / "run/dino_wm/checkpoints", None):
        got = program.resume(job, prepared.argv, prepared.env, ck, c)
        assert got == Prepared(prepared.argv, prepared.env)


def test_dino_wm_pattern_reads_the_train_bar_only() -> None:
    job = load_job("franka_cube_stack")
    spec = program_for(job).progress(job, [])
    assert spec.first_epoch == 1
    assert matches(spec, DINO_TRAIN) == [{"epoch": "3", "step": "450", "total": "1000"}]
    assert matches(spec, DINO_VALID) == []
    tracker = ProgressTracker(None, spec.patterns, first_epoch=spec.first_epoch)
    assert tracker.update([DINO_VALID], 1.0).step is None
    assert tracker.update([DINO_TRAIN], 2.0).step == 2 * 1000 + 450  # epochs 1 and 2 done


# -- fields a program never sees -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "profile", "ignored"),
    [
        ("act_so101", None, []),
        ("act_so101", "cpu", []),
        ("smolvla_so101", None, []),
        ("pi0_so101", None, []),
        (
            "openpi_pi0",
            None,
            ["dataset.revision (openpi's data config names the dataset itself)"],
        ),
        ("franka_cube_stack", None, []),
        ("franka_cube_stack", "embedded", []),
        ("robomimic_can", None, []),
    ],
)
def test_ignored_fields_of_the_shipped_jobs(
    name: str, profile: str | None, ignored: list[str]
) -> None:
    job = load_job(name, profile=profile)
    assert program_for(job).ignored_fields(job) == ignored


def test_ignored_fields_of_made_up_jobs() -> None:
    fields: dict[str, Any] = {
        "checkpoints": {"every_steps": 100, "every_minutes": 30},
        "restart": {"resume_args": ["--resume"]},
        "dataset": {"source": "hub", "repo": "me/ds", "revision": "v1"},
    }
    assert LeRobot().ignored_fields(made_up("lerobot", **fields)) == [
        "checkpoints.every_minutes (lerobot-train saves every --save_freq steps)",
        "restart.resume_args (runner resumes lerobot-train with --config_path)",
    ]
    assert OpenPi().ignored_fields(made_up("openpi", **fields)) == [
        "checkpoints.every_minutes (openpi saves every --save-interval steps)",
        "dataset.revision (openpi's data config names the dataset itself)",
    ]
    assert DinoWm().ignored_fields(made_up("dino_wm", **fields)) == [
        "checkpoints.every_steps (DINO WM saves once per epoch)",
        "checkpoints.every_minutes (DINO WM saves once per epoch)",
        "restart.resume_args (DINO WM resumes from its pinned run folder)",
    ]
    assert Program().ignored_fields(made_up("generic", **fields)) == []
    for kind in ("lerobot", "openpi", "dino_wm"):
        assert program_for(made_up(kind)).ignored_fields(made_up(kind)) == []


# -- the command-line helpers ----------------------------------------------------------------


def test_cli_value_reads_every_spelling() -> None:
    argv = ["prog", "--a=1", "--b", "2", "--bare", "--c=x=y", "--empty=", "--a", "3", "pos"]
    assert cli_value(argv, "a") == "3"  # the last one counts
    assert cli_value(argv, "b") == "2"
    assert cli_value(argv, "bare") == "true"  # followed by another flag
    assert cli_value(argv, "c") == "x=y"
    assert cli_value(argv, "empty") == ""
    assert cli_value(argv, "missing") is None
    assert cli_value(["prog", "--end"], "end") == "true"  # bare at the end
    assert cli_value(["prog", "--abc=1"], "ab") is None  # a name, not a prefix
    assert cli_value(["prog", "-a=1", "a=1"], "a") is None  # only --name


def test_set_cli_replaces_every_setting_once() -> None:
    argv = ["prog", "--k=1", "pos", "--k", "2", "--other", "--k", "--last=x"]
    assert set_cli(argv, "k", "9") == ["prog", "pos", "--other", "--last=x", "--k=9"]
    assert set_cli(argv, "k", None) == ["prog", "pos", "--other", "--last=x"]
    assert set_cli(argv, "k", "") == ["prog", "pos", "--other", "--last=x", "--k"]  # bare
    assert set_cli(["prog", "--kk=1"], "k", None) == ["prog", "--kk=1"]
    assert set_cli(["prog", "--k"], "k", None) == ["prog"]  # bare at the end
    assert set_cli(["prog", "--k", "-v"], "k", None) == ["prog", "-v"]  # a flag is no value
    original = ["prog", "--k=1"]
    set_cli(original, "k", "2")
    assert original == ["prog", "--k=1"]  # never changed in place
    assert cli_value(set_cli(argv, "k", "9"), "k") == "9"

"""The franka_cube_stack reference trainer: dataset windows, model, overrides, training, resume.

Every dataset here is a tiny one written by :func:`make_franka` in the exact
layout of the real one, with random content.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from runner import harness  # noqa: E402
from runner.errors import DatasetError  # noqa: E402
from runner.trainers import _wm_data, franka_wm  # noqa: E402
from runner.trainers._wm_model import WorldModel, frame_causal_mask  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

#: A model small enough that a training step takes milliseconds.
TINY = [
    "img_size=16",
    "model.patch_size=4",
    "model.emb_dim=32",
    "model.encoder_depth=1",
    "model.action_emb_dim=8",
    "model.proprio_emb_dim=8",
    "model.predictor_depth=2",
]


def make_franka(
    root: Path,
    lengths: Sequence[int] = (30, 24, 19, 16, 30),
    *,
    t_max: int | None = None,
    image_size: int = 20,
    seed: int = 0,
) -> Path:
    """Write a random dataset in the franka layout (values encode episode and step).

    ``states[e, t, 0] == e`` and ``states[e, t, 1] == t``, ``actions[e, t, 0] == e``
    and ``actions[e, t, 1] == t``, so a test can read back where a sample came from.
    States drift slowly and each episode's images are one random picture plus
    noise, so there is something for the model to learn.
    """
    g = torch.Generator().manual_seed(seed)
    t_max = t_max or max(lengths)
    n = len(lengths)
    states = torch.randn(n, t_max, 22, generator=g).mul(0.1).cumsum(1)
    actions = torch.randn(n, t_max, 9, generator=g)
    for e, length in enumerate(lengths):
        states[e, :, 0] = actions[e, :, 0] = e
        states[e, :, 1] = actions[e, :, 1] = torch.arange(t_max, dtype=torch.float32)
        # Padding beyond an episode's end is garbage the trainer must never read.
        states[e, length:] = actions[e, length:] = 1e6
        folder = root / f"{e:06d}"
        folder.mkdir(parents=True)
        picture = torch.randint(0, 256, (1, image_size, image_size, 3), generator=g)
        noise = torch.randint(-8, 9, (length, image_size, image_size, 3), generator=g)
        obses = (picture + noise).clamp(0, 255).to(torch.uint8)
        torch.save(obses, folder / "obses.pth")
    torch.save(states, root / "states.pth")
    torch.save(actions, root / "actions.pth")
    with open(root / "metadata.pkl", "wb") as f:
        pickle.dump({"episode_lengths": list(lengths), "env": "franka_cube_stack"}, f)
    return root


@pytest.fixture(autouse=True)
def on_cpu_in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    # tests/conftest.py already cleared the environment.
    monkeypatch.setenv("RUNNER_DEVICE", "cpu")
    monkeypatch.chdir(tmp_path)  # the default run_dir is relative
    # These models are tiny; with one thread a step cannot stall on OpenMP
    # threads spinning against other processes for the same cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_franka(tmp_path / "ds")


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = franka_wm.main(args)
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- data


def test_every_window_lies_inside_its_episode(dataset: Path) -> None:
    data = _wm_data.FrankaData(dataset)
    spec = _wm_data.WindowSpec(num_hist=3, frameskip=2, img_size=8)
    windows = _wm_data.Windows(data, range(len(data)), spec)
    span = 3 * 2
    assert len(windows) == sum(max(0, n - span) for n in data.lengths)
    for i in range(len(windows)):
        sample = windows[i]
        episode, start = (int(x) for x in windows.index[i])
        length = data.lengths[episode]
        assert start >= 0 and start + span <= length - 1
        assert sample["obs"].shape == (4, 3, 8, 8)
        assert sample["proprio"].shape == (4, 22)
        assert sample["actions"].shape == (3, 9 * 2)
        # proprio is the state at frames start, start+fs, ...
        assert sample["proprio"][:, 0].eq(episode).all()
        assert sample["proprio"][:, 1].tolist() == [start, start + 2, start + 4, start + 6]
        # history step k carries actions start+k*fs .. start+(k+1)*fs-1, concatenated
        chunks = sample["actions"].reshape(3, 2, 9)
        assert chunks[..., 0].eq(episode).all()
        assert chunks[..., 1].flatten().tolist() == list(range(start, start + span))
        assert chunks.abs().max() < 1e6  # never the padding past the episode's end


def test_window_images_are_resized_and_scaled(dataset: Path) -> None:
    data = _wm_data.FrankaData(dataset)
    raw = data.obses(1)
    windows = _wm_data.Windows(data, [1], _wm_data.WindowSpec(2, 3, raw.shape[1]))
    sample = windows[0]
    assert sample["obs"].dtype == torch.float32
    assert sample["obs"].min() >= 0.0 and sample["obs"].max() <= 1.0
    expected = raw[[0, 3, 6]].permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(sample["obs"], expected)  # same size: no resampling

    small = _wm_data.Windows(data, [1], _wm_data.WindowSpec(2, 3, 10))[0]["obs"]
    assert small.shape == (3, 3, 10, 10)


def test_short_episodes_are_skipped(tmp_path: Path) -> None:
    data = _wm_data.FrankaData(make_franka(tmp_path / "ds", lengths=(7, 6, 3)))
    windows = _wm_data.Windows(data, range(3), _wm_data.WindowSpec(3, 2, 8))
    assert [int(e) for e, _ in windows.index] == [0]  # only the 7-step episode fits once


def test_split_is_by_episode_deterministic_and_keeps_one_for_validation() -> None:
    train, val = _wm_data.split_episodes(100, seed=3)
    assert len(val) == 10 and sorted(train + val) == list(range(100))
    assert _wm_data.split_episodes(100, seed=3) == (train, val)
    assert _wm_data.split_episodes(100, seed=4) != (train, val)
    assert len(_wm_data.split_episodes(2, seed=0)[1]) == 1
    assert len(_wm_data.split_episodes(5, seed=0)[1]) == 1
    assert _wm_data.split_episodes(1, seed=0) == ([0], [])


def test_sampler_resumes_mid_epoch_in_the_same_order() -> None:
    sampler = _wm_data.EpochSampler(50, seed=7)
    sampler.set_position(2, 0)
    full = list(sampler)
    sampler.set_position(2, 20)
    assert list(sampler) == full[20:]
    sampler.set_position(3, 0)
    assert list(sampler) != full and sorted(sampler) == list(range(50))


# --------------------------------------------------------------------------- dataset errors


def _error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    return lines[0]


def test_missing_states_is_one_line(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (dataset / "states.pth").unlink()
    code, _, err = run_main([f"data.path={dataset}", *TINY], capsys)
    assert code == DatasetError.exit_code == 1
    line = _error_line(err)
    assert "states.pth is missing" in line and str(dataset) in line


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda d: torch.save(torch.zeros(5, 30, 8), d / "actions.pth"), "actions.pth"),
        (lambda d: torch.save(torch.zeros(5, 30), d / "states.pth"), "states.pth"),
        (lambda d: (d / "metadata.pkl").write_bytes(pickle.dumps({"x": 1})), "episode_lengths"),
        (lambda d: (d / "000003" / "obses.pth").unlink(), "000003/obses.pth"),
        (
            lambda d: torch.save(
                torch.zeros(5, 8, 8, 3, dtype=torch.uint8), d / "000002/obses.pth"
            ),
            "000002/obses.pth",
        ),
        (lambda d: (d / "states.pth").write_bytes(b"not a tensor"), "states.pth"),
    ],
)
def test_bad_dataset_names_the_file(
    dataset: Path, capsys: pytest.CaptureFixture[str], damage: object, named: str
) -> None:
    damage(dataset)  # type: ignore[operator]
    code, _, err = run_main([f"data.path={dataset}", *TINY], capsys)
    assert code == 1
    assert named in _error_line(err)


def test_no_episode_long_enough(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = make_franka(tmp_path / "ds", lengths=(8, 9, 8))
    code, _, err = run_main([f"data.path={ds}", *TINY], capsys)
    assert code == 1
    assert "16 frames needed" in _error_line(err)


# --------------------------------------------------------------------------- overrides


def test_overrides_set_nested_fields_with_their_types() -> None:
    cfg = franka_wm.parse_overrides(
        [
            "env=franka_cube_stack",
            "frameskip=2",
            "+num_hist=4",
            "training.batch_size=8",
            "training.lr=3e-4",
            "training.epochs=2",
            "data.path=/d",
        ]
    )
    assert (cfg.frameskip, cfg.num_hist) == (2, 4)
    assert cfg.training.batch_size == 8 and cfg.training.lr == pytest.approx(3e-4)
    assert cfg.training.epochs == 2 and cfg.data.path == "/d"
    assert franka_wm.parse_overrides(["training.epochs=null"]).training.epochs is None


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = franka_wm.Config()
    assert (cfg.data.path, cfg.run_dir) == ("./data", "runs/franka_cube_stack")
    assert (cfg.frameskip, cfg.num_hist, cfg.training.batch_size) == (5, 3, 16)
    monkeypatch.setenv("DATASET_DIR", "/datasets/franka")
    monkeypatch.setenv("RUNNER_RUN_DIR", "/runs/r1")
    cfg = franka_wm.Config()
    assert (cfg.data.path, cfg.run_dir) == ("/datasets/franka", "/runs/r1")


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (
            "training.batchsize=8",
            "error: unknown override key 'training.batchsize' in 'training.batchsize=8'; "
            "did you mean training.batch_size?",
        ),
        ("batch_size=8", "did you mean training.batch_size?"),
        ("frameskip=five", "error: frameskip=five: expected an integer >= 1"),
        ("training.batch_size=0", "error: training.batch_size=0: expected an integer >= 1"),
        ("frameskip=0", "error: frameskip=0: expected an integer >= 1"),
        ("training.lr=-1", "error: training.lr=-1: expected a number > 0"),
        ("training.mixed_precision=fp8", "expected one of no, bf16, fp16"),
        ("img_size=60", "error: img_size=60: expected a multiple of model.patch_size=8"),
        ("frameskip", "error: expected key=value, got 'frameskip'"),
    ],
)
def test_bad_override_is_one_line_and_exit_2(
    arg: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main([arg], capsys)
    assert code == 2
    assert expected in _error_line(err)
    assert out == ""


def test_help_lists_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    for key in ("frameskip=5", "training.batch_size=16", "model.emb_dim=", "data.path="):
        assert key in out
    assert "Total optimizer steps" in out  # field docstrings are shown


# --------------------------------------------------------------------------- model


def _tiny_model(seed: int = 0) -> WorldModel:
    return franka_wm.build_model(franka_wm.parse_overrides([*TINY, f"seed={seed}", "frameskip=2"]))


def test_encoder_is_frozen_and_fixed_by_the_seed() -> None:
    model = _tiny_model()
    model.train()
    assert not model.encoder.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.predictor.parameters())
    assert _tiny_model().encoder_fingerprint() == model.encoder_fingerprint()
    assert _tiny_model(seed=1).encoder_fingerprint() != model.encoder_fingerprint()
    assert not any(k.startswith("encoder.") for k in model.trainable_state())


def test_predictor_mask_is_frame_causal() -> None:
    mask = frame_causal_mask(frames=3, patches=2)
    assert mask.tolist() == [
        [True, True, False, False, False, False],
        [True, True, False, False, False, False],
        [True, True, True, True, False, False],
        [True, True, True, True, False, False],
        [True, True, True, True, True, True],
        [True, True, True, True, True, True],
    ]
    model = _tiny_model().eval()
    tokens = torch.randn(1, 3 * 16, 48)
    changed = tokens.clone()
    changed[:, 32:] += 1.0  # only the last frame's tokens
    a, b = model.predictor(tokens), model.predictor(changed)
    assert torch.allclose(a[:, :32], b[:, :32], atol=1e-6)
    assert not torch.allclose(a[:, 32:], b[:, 32:])


def test_loss_drops_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = _tiny_model()
    batch = {
        "obs": torch.rand(4, 4, 3, 16, 16),
        "proprio": torch.randn(4, 4, 22),
        "actions": torch.randn(4, 3, 18),
    }
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(60):
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss.detach()))
    assert out.loss.shape == out.visual.shape == out.proprio.shape == ()
    assert losses[-1] < 0.5 * losses[0], losses[::10]


# --------------------------------------------------------------------------- training


def _checkpoints(run_dir: Path) -> list[harness.Checkpoint]:
    return harness.list_checkpoints(run_dir / "checkpoints")


@pytest.mark.slow
def test_train_checkpoint_resume_and_complete(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    base = [*TINY, f"data.path={dataset}", f"run_dir={run_dir}", "training.batch_size=8"]
    args = [*base, "training.steps=60", "training.save_every=25", "training.log_every=10"]
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    steps = [c.step for c in _checkpoints(run_dir)]
    assert steps == [25, 50, 60]  # every save_every and at the end
    assert all(harness.verify_checkpoint(c) == [] for c in _checkpoints(run_dir))
    logged = [line for line in out.splitlines() if line.startswith("step ") and "/60 loss" in line]
    assert len(logged) == 7  # steps 10..60, plus the save at 25
    assert "steps/s" in logged[0] and "samples/s" in logged[0] and "data-wait" in logged[0]
    first, last = (float(line.split(" loss ")[1].split()[0]) for line in (logged[0], logged[-1]))
    assert last < 0.5 * first, out
    assert "resuming" not in out
    heartbeat = harness.read_heartbeat(run_dir)
    assert heartbeat is not None and heartbeat["step"] == 60 and heartbeat["phase"] == "done"
    # The step metrics carry the job's last step, so runner watch can show an ETA.
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and {r["total_steps"] for r in rows} == {60}

    state = torch.load(_checkpoints(run_dir)[-1].path / "state.pt", weights_only=False)
    assert state["step"] == 60 and state["config"]["training"]["batch_size"] == 8
    assert {"torch", "numpy", "python"} <= set(state["rng"])
    assert {"model", "optimizer", "epoch"} <= set(state)

    code, out, err = run_main([*base, "training.steps=80", "training.save_every=25"], capsys)
    assert code == 0, err
    resume = [line for line in out.splitlines() if line.startswith("resuming")]
    assert resume == [f"resuming from step 60 ({run_dir / 'checkpoints' / 'step_000000060'})"]
    assert "step 61/80" not in out and "step 80/80 loss" in out
    assert [c.step for c in _checkpoints(run_dir)] == [25, 50, 60, 75, 80]

    code, out, err = run_main([*base, "training.steps=80"], capsys)
    assert code == 0, err
    assert out.strip() == (
        f"newest checkpoint: step 80 ({run_dir / 'checkpoints' / 'step_000000080'}); "
        "run already complete (training.steps=80): pass training.steps=... to train longer"
    )

    code, _, err = run_main([*base, "training.steps=90", "model.emb_dim=64"], capsys)
    assert code == 1
    assert "model.emb_dim=32" in _error_line(err)


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def final_state(run_dir: Path, *stops: int) -> dict[str, Any]:
        for stop in stops:
            args = [*TINY, f"data.path={dataset}", f"run_dir={run_dir}", "training.batch_size=8"]
            code, _, err = run_main([*args, f"training.steps={stop}"], capsys)
            assert code == 0, err
        state = torch.load(_checkpoints(run_dir)[-1].path / "state.pt", weights_only=False)
        return state["model"]  # type: ignore[no-any-return]

    # 13 steps cross an epoch boundary (4 train episodes, 39 windows: 4 steps/epoch).
    straight = final_state(tmp_path / "a", 13)
    resumed = final_state(tmp_path / "b", 6, 13)
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key


@pytest.mark.slow
def test_epochs_override_steps(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*TINY, f"data.path={dataset}", f"run_dir={tmp_path / 'r'}", "training.batch_size=8"]
    code, out, err = run_main([*args, "training.epochs=2", "training.steps=1000"], capsys)
    assert code == 0, err
    per_epoch = int(out.split(" steps/epoch")[0].rsplit("windows, ", 1)[1])
    assert [c.step for c in _checkpoints(tmp_path / "r")][-1] == 2 * per_epoch


@pytest.mark.slow
def test_module_runs_as_a_subprocess(
    dataset: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    env = subprocess_env
    env |= {
        "OMP_NUM_THREADS": "1",
        "RUNNER_DEVICE": "cpu",
        "DATASET_DIR": str(dataset),
        "RUNNER_RUN_DIR": str(tmp_path / "r"),
    }
    cmd = [sys.executable, "-m", "runner.trainers.franka_wm", *TINY, "training.steps=5"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "step 5/5 loss" in done.stdout
    assert [c.step for c in _checkpoints(tmp_path / "r")] == [5]
    assert (tmp_path / "r" / "heartbeat.json").is_file()

    env["DATASET_DIR"] = str(tmp_path / "nowhere")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: dataset folder {tmp_path / 'nowhere'} does not exist; "
        "pass data.path=... or set DATASET_DIR"
    ]


class _FakeRun:
    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, float], int]] = []
        self.finished = False

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append((metrics, step))

    def finish(self) -> None:
        self.finished = True


@pytest.mark.slow
@pytest.mark.parametrize("wandb", ["missing", "broken", "working"])
def test_wandb_only_with_a_key_and_never_fatal(
    wandb: str,
    dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = _FakeRun()

    def init(**kwargs: object) -> _FakeRun:
        if wandb == "broken":
            raise RuntimeError("api.wandb.ai unreachable")
        return run

    module = None if wandb == "missing" else types.SimpleNamespace(init=init)
    monkeypatch.setitem(sys.modules, "wandb", module)  # None makes the import fail
    monkeypatch.setenv("WANDB_API_KEY", "test-key")
    args = [*TINY, f"data.path={dataset}", f"run_dir={tmp_path / 'r'}", "training.steps=4"]
    code, out, err = run_main([*args, "training.log_every=2"], capsys)
    assert code == 0, err
    wandb_lines = [line for line in out.splitlines() if "wandb " in line]
    if wandb == "broken":
        assert wandb_lines == ["warning: wandb disabled, init failed: api.wandb.ai unreachable"]
    else:
        assert wandb_lines == []
    if wandb == "working":
        assert [step for _, step in run.logged] == [2, 4, 4]  # train at 2 and 4, val at 4
        assert "train/loss" in run.logged[0][0] and run.finished

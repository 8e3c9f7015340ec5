"""Job specs: the shipped catalog, validation errors as a user meets them, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import SpecError, UsageError
from runner.spec import HubSpec, load_all, load_job, local_profile

SHIPPED = {
    "franka_cube_stack",
    "pi0_so101",
    "act_so101",
    "smolvla_so101",
    "robomimic_can",
    "openpi_pi0",
}


def _job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, name: str = "j") -> Path:
    monkeypatch.setenv("RUNNER_JOBS_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_every_shipped_job_is_valid() -> None:
    specs, errors = load_all()
    assert errors == []
    assert {s.name for s in specs} >= SHIPPED
    for spec in specs:
        for profile in spec.profiles:
            load_job(spec.name, profile=profile)


def test_franka_embedded_profile_runs_on_a_plain_machine() -> None:
    base = load_job("franka_cube_stack")
    assert base.image and base.resources.gpus == 1 and local_profile(base) == "embedded"
    spec = load_job("franka_cube_stack", profile="embedded")
    # Its own small image for --docker and rented hosts; ./train.sh runs the command here.
    assert spec.image == "runner/franka-embedded:latest" and spec.resources.gpus == 0
    assert spec.command[:3] == ["python", "-m", "runner.trainers.franka_wm"]
    assert spec.dataset.source == "synthetic" and spec.dataset.layout == "franka"
    assert spec.checkpoints.layout == "harness"
    # unchanged by the profile: secrets are names only, optional here
    assert [(s.name, s.required) for s in spec.secrets] == [
        ("WANDB_API_KEY", False),
        ("HF_TOKEN", False),
    ]


def test_robomimic_is_multi_gpu_through_accelerate() -> None:
    spec = load_job("robomimic_can")
    assert spec.resources.gpus == 2
    assert spec.command[:3] == ["accelerate", "launch", "--num_processes=2"]


@pytest.mark.parametrize(
    ("name", "overrides", "argv_tail", "env"),
    [
        (
            "franka_cube_stack",
            ["training.batch_size=8"],
            ["frameskip=5", "num_hist=3", "training.batch_size=16", "training.batch_size=8"],
            {},
        ),
        ("pi0_so101", ["steps=100"], ["--batch_size=32", "--steps=100"], {}),
        ("act_so101", ["steps=10"], ["--batch_size=8", "--steps=10"], {}),
    ],
)
def test_overrides_reach_the_job_in_its_own_style(
    name: str, overrides: list[str], argv_tail: list[str], env: dict[str, str]
) -> None:
    argv, extra_env = load_job(name).apply_overrides(overrides)
    assert argv[-len(argv_tail) :] == argv_tail
    assert extra_env == env


@pytest.mark.parametrize("bad", ["frameskip", "=5", "two words=1", "a;b=1"])
def test_malformed_override_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match=r"bad override .*expected key=value"):
        load_job("franka_cube_stack").apply_overrides([bad])


def test_unknown_job_suggests_close_names() -> None:
    with pytest.raises(
        SpecError, match=r"unknown job 'franka_cube' \(did you mean franka_cube_stack"
    ):
        load_job("franka_cube")


def test_unknown_profile_lists_the_offered_ones() -> None:
    with pytest.raises(SpecError, match=r"no profile 'gpu' \(profiles: embedded\)"):
        load_job("franka_cube_stack", profile="gpu")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "command: [python, x.py]\nname: j\n  bad: indent\n",
            r"j\.yaml: line 3, column \d+: invalid YAML",
        ),
        ("- just\n- a list\n", r"j\.yaml: expected a mapping of fields"),
        ("image: x\n", r"j\.yaml: command: required field is missing"),
        (
            "command: python x.py\nresources: {gpus: two}\n",
            r"j\.yaml: resources\.gpus: Input should be a valid integer.*\(got 'two'\)",
        ),
        (
            "command: python x.py\nresorces: {gpus: 1}\n",
            r"j\.yaml: resorces: unknown field \(did you mean 'resources'\?\)",
        ),
        (
            "command: python x.py\ncheckpoints: {layot: harness}\n",
            r"j\.yaml: checkpoints\.layot: unknown field \(did you mean 'layout'\?\)",
        ),
        (
            "command: python x.py\nenv: {HF_TOKEN: hf_abc}\n",
            r"env: HF_TOKEN looks like a credential: list it under secrets",
        ),
        (
            "command: python x.py\nsecrets: [ROBOT_CRED]\nenv: {ROBOT_CRED: x}\n",
            r"ROBOT_CRED is a secret: remove its value from env",
        ),
        (
            "command: python x.py\ndataset: {source: hub, repo: a/b}\n",
            r"dataset: .*needs repo and revision",
        ),
        ("command: python x.py\nprogress: {pattern: 'step (\\d+)'}\n", r"named group"),
        ("command: ''\n", r"command: .*the command is empty"),
        ("name: other\ncommand: x\n", r"name: 'other' must match the file name 'j'"),
        (
            "command: x\nrestart: {on_oom: reduce_batch}\n",
            r"restart: on_oom: reduce_batch needs batch_override",
        ),
    ],
)
def test_malformed_job_file_names_file_field_and_expectation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    _job(tmp_path, monkeypatch, text)
    with pytest.raises(SpecError, match=message) as info:
        load_job("j")
    assert "\n" not in str(info.value)


def test_profile_errors_say_the_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _job(tmp_path, monkeypatch, "command: x\nprofiles:\n  small: {resources: {gpus: -1}}\n")
    assert load_job("j").resources.gpus == 1
    with pytest.raises(
        SpecError,
        match=r"profiles\.small merged: resources\.gpus: .*greater than or equal to 0 \(got -1\)",
    ):
        load_job("j", profile="small")


def test_invalid_files_do_not_hide_valid_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _job(tmp_path, monkeypatch, "command: python ok.py\n", name="good")
    (tmp_path / "bad.yaml").write_text("command: [\n")
    specs, errors = load_all()
    assert [s.name for s in specs] == ["good"]
    assert len(errors) == 1 and "bad.yaml" in str(errors[0])


def test_with_hub_sets_the_repo_and_keeps_the_rest() -> None:
    spec = load_job("pi0_so101").with_hub("me/pi0-run")
    assert spec.hub is not None and spec.hub.repo == "me/pi0-run" and spec.hub.private
    franka = load_job("franka_cube_stack")
    assert franka.hub is None and franka.with_hub("me/wm").hub == HubSpec(repo="me/wm")

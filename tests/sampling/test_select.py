"""GPU selection: the users' score, hard filters, pick N, ties, and ./train.sh using the same."""

from __future__ import annotations

import os
from typing import Any

import pytest

from runner.errors import DeviceError, UsageError
from runner.launch.local import pick_device
from runner.sampling.nvml import GpuProcess, GpuSnapshot
from runner.sampling.select import (
    Filters,
    NotEnoughGpus,
    Weights,
    process_owner,
    rank,
    score,
    select,
)
from runner.spec import load_job

GIB = 1 << 30
ME, OTHER = 1000, 1001


def _gpu(index: int, used_gib: float = 0, util: int | None = 0, **kw: Any) -> GpuSnapshot:
    values: dict[str, Any] = {
        "uuid": f"GPU-{index}",
        "name": "NVIDIA H100",
        "memory_used_bytes": int(used_gib * GIB),
        "memory_total_bytes": 80 * GIB,
        "utilization_gpu_percent": util,
        "processes": (),
        **kw,
    }
    return GpuSnapshot(index=index, timestamp=0.0, **values)


def _owners(pid: int) -> int | None:
    return {1: ME, 2: OTHER}.get(pid)


def _indices(gpus: tuple[GpuSnapshot, ...]) -> list[int]:
    return [g.index for g in gpus]


def test_score_is_the_users_formula() -> None:
    gpu = _gpu(0, used_gib=40, util=20)  # 50 % memory
    assert score(gpu) == pytest.approx(0.7 * 50 + 0.3 * 20)
    assert score(gpu, Weights(1, 0)) == pytest.approx(50)
    assert score(gpu, Weights(0, 1)) == pytest.approx(20)
    # Unknown utilisation: memory decides. Unknown memory: counted as full.
    assert score(_gpu(0, used_gib=40, util=None)) == pytest.approx(35)
    assert score(_gpu(0, memory_used_bytes=None, util=0)) == pytest.approx(70)
    assert score(_gpu(0, lost=True)) is None


def test_lower_score_first_and_ties_go_to_the_higher_index() -> None:
    gpus = [_gpu(0), _gpu(1, used_gib=8), _gpu(2), _gpu(3, util=50)]
    ranked = rank(gpus)
    assert [c.snapshot.index for c in ranked] == [2, 0, 1, 3]
    assert _indices(select(gpus, 2).chosen) == [2, 0]


def test_weights_change_the_order() -> None:
    gpus = [_gpu(0, used_gib=40, util=0), _gpu(1, used_gib=0, util=60)]
    assert _indices(select(gpus).chosen) == [1]  # 35 vs 18
    assert _indices(select(gpus, weights=Weights(0.2, 0.8)).chosen) == [0]  # 10 vs 48


def test_weights_parse() -> None:
    assert Weights.parse("0.7,0.3") == Weights(0.7, 0.3)
    assert Weights.parse(" 1 , 0 ") == Weights(1.0, 0.0)
    assert str(Weights()) == "0.7 x memory % + 0.3 x utilisation %"
    for bad in ("0.7", "a,b", "0.7,0.3,0", "-1,2", "0,0"):
        with pytest.raises(UsageError, match="--weights"):
            Weights.parse(bad)


def test_min_free_and_max_util_filters() -> None:
    gpus = [_gpu(0, used_gib=75), _gpu(1, used_gib=10, util=95), _gpu(2, used_gib=20, util=10)]
    ranked = rank(gpus, filters=Filters(min_free_gib=40, max_util_percent=80))
    assert [(c.snapshot.index, c.excluded) for c in ranked] == [
        (2, ()),
        (0, ("5.0 GiB free < 40 GiB",)),
        (1, ("utilisation 95% > 80%",)),
    ]


def test_a_filter_that_cannot_be_checked_excludes() -> None:
    gpus = [
        _gpu(0, memory_used_bytes=None),
        _gpu(1, util=None),
        _gpu(2, processes=None),
        _gpu(3, uuid=None),
        _gpu(4, lost=True, lost_reason="GPU is lost"),
    ]
    filters = Filters(min_free_gib=1, max_util_percent=50, exclude_busy=True)
    excluded = {c.snapshot.index: c.excluded for c in rank(gpus, filters=filters, uid=ME)}
    assert excluded == {
        0: ("free memory not available",),
        1: ("utilisation not available",),
        2: ("process list not available",),
        3: ("no UUID to export it by",),
        4: ("lost (GPU is lost)",),
    }


def test_exclude_busy_spares_our_own_processes() -> None:
    gpus = [
        _gpu(0, processes=(GpuProcess(1, GIB),)),  # ours
        _gpu(1, processes=(GpuProcess(2, GIB),)),  # another user's
        _gpu(2, processes=(GpuProcess(3, GIB), GpuProcess(1, GIB))),  # unreadable pid 3
        _gpu(3, processes=()),
    ]
    ranked = rank(gpus, filters=Filters(exclude_busy=True), uid=ME, owner_of=_owners)
    assert [(c.snapshot.index, c.excluded) for c in ranked] == [
        (3, ()),
        (0, ()),
        (1, ("busy: process 2 of another user",)),
        (2, ("busy: process 3 of another user",)),
    ]
    # Without the filter, busy GPUs are ranked by score only.
    assert all(c.eligible for c in rank(gpus, owner_of=_owners))


def test_pick_n_exports_by_uuid_in_pci_order_mode() -> None:
    gpus = [_gpu(0, used_gib=60), _gpu(1), _gpu(2, used_gib=10)]
    selection = select(gpus, 2)
    assert _indices(selection.chosen) == [1, 2]
    assert selection.visible_devices == "GPU-1,GPU-2"
    assert selection.env == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "GPU-1,GPU-2",
    }
    data = selection.to_dict()
    assert data["chosen"] == ["GPU-1", "GPU-2"] and data["wanted"] == 2
    assert [r["index"] for r in data["ranked"]] == [1, 2, 0]


def test_not_enough_gpus_is_one_line_that_says_why() -> None:
    gpus = [_gpu(0), _gpu(1, processes=(GpuProcess(2, GIB),))]
    with pytest.raises(NotEnoughGpus) as err:
        select(gpus, 3)
    assert str(err.value) == "cannot pick 3 GPUs: this machine has 2"
    with pytest.raises(NotEnoughGpus) as err:
        select(gpus, 2, filters=Filters(exclude_busy=True), uid=ME, owner_of=_owners)
    assert str(err.value) == (
        "cannot pick 2 GPUs: 1 of 2 pass the filters (GPU 1: busy: process 2 of another user); "
        "ask for fewer or loosen the filters"
    )
    assert isinstance(err.value, DeviceError) and err.value.exit_code == 1
    with pytest.raises(UsageError):
        select(gpus, 0)


def test_process_owner_reads_the_real_uid() -> None:
    assert process_owner(os.getpid()) == os.getuid()
    assert process_owner(2**22 + 12345) is None  # above any pid_max: no such process


def test_train_picks_with_the_same_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_FAKE_NVML", "scenario:healthy:gpus=3,gpu=2")
    choice = pick_device(load_job("franka_cube_stack", profile="embedded"))
    assert choice.kind == "cuda"
    assert choice.description == "GPU 1 NVIDIA RTX A4000"  # 0 and 1 tie: the higher index
    assert choice.env == {
        "RUNNER_DEVICE": "cuda",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "GPU-fa4e0001-0000-4000-8000-000000000001",
    }
    two = pick_device(load_job("robomimic_can"))
    assert two.env["CUDA_VISIBLE_DEVICES"] == (
        "GPU-fa4e0001-0000-4000-8000-000000000001,GPU-fa4e0000-0000-4000-8000-000000000000"
    )


def test_train_without_usable_gpus_keeps_its_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_FAKE_NVML", "scenario:xid:gpus=1,at=0")
    spec = load_job("franka_cube_stack", profile="embedded")
    cpu = pick_device(spec)
    assert (cpu.kind, cpu.description) == ("cpu", "CPU (GPU 0 is lost (GPU is lost))")
    with pytest.raises(DeviceError) as err:
        pick_device(spec, "cuda")
    assert str(err.value) == (
        "franka_cube_stack needs 1 GPU(s) and 0 are visible (GPU 0 is lost (GPU is lost)); "
        "run it on a rented GPU or pick a profile that runs on the CPU"
    )
    monkeypatch.setenv("RUNNER_FAKE_NVML", "no-driver")
    assert pick_device(spec).description == "CPU (no NVIDIA driver (NVML library not found))"

"""The harness remembers the first non-finite loss / grad_norm step, and writes strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

from runner.harness import HEARTBEAT_FILE, METRICS_FILE, Harness, _jsonable, read_heartbeat


def _strict(text: str) -> object:
    def refuse(name: str) -> object:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_first_nonfinite_step_and_last_finite_one_are_kept(tmp_path: Path) -> None:
    h = Harness(tmp_path, metrics_interval=0.0)
    h.step(1, loss=2.0, grad_norm=1.0)
    h.step(2, loss=1.5, grad_norm=1.2)
    h.step(3, loss=float("nan"), grad_norm=1.3)
    h.step(4, loss=float("nan"), grad_norm=float("inf"))
    h.step(5, loss=1.0, grad_norm=float("-inf"))
    beat = read_heartbeat(tmp_path)
    assert beat is not None
    assert beat["nonfinite"] == {
        "loss": {"first": 3, "last_good": 2, "value": "nan"},
        "grad_norm": {"first": 4, "last_good": 3, "value": "inf"},
    }
    assert beat["metrics"]["grad_norm"] == "-inf"
    h.close()


def test_nonfinite_at_the_first_step_has_no_last_good(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.step(1, loss=float("inf"))
    beat = read_heartbeat(tmp_path)
    assert beat is not None
    assert beat["nonfinite"] == {"loss": {"first": 1, "last_good": None, "value": "inf"}}
    h.close()


def test_healthy_run_has_no_nonfinite_record(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.step(1, loss=1.0, grad_norm=0.5)
    beat = read_heartbeat(tmp_path)
    assert beat is not None
    assert "nonfinite" not in beat
    h.close()


def test_heartbeat_and_metrics_stay_strict_json_with_nan(tmp_path: Path) -> None:
    h = Harness(tmp_path, metrics_interval=0.0)
    h.step(1, loss=float("nan"), other=float("-inf"))
    h.close()
    _strict((tmp_path / HEARTBEAT_FILE).read_bytes().rstrip(b" \n\x00").decode())
    for line in (tmp_path / METRICS_FILE).read_text().splitlines():
        record = _strict(line)
        assert isinstance(record, dict)
        assert record["loss"] == "nan"


class _Scalar:
    def __init__(self, value: float) -> None:
        self.value = value

    def item(self) -> float:
        return self.value


def test_jsonable_turns_nonfinite_scalars_into_text() -> None:
    assert _jsonable(float("nan")) == "nan"
    assert _jsonable(math.inf) == "inf"
    assert _jsonable(-math.inf) == "-inf"
    assert _jsonable(_Scalar(float("nan"))) == "nan"
    assert _jsonable(_Scalar(2.5)) == 2.5
    assert _jsonable(3) == 3

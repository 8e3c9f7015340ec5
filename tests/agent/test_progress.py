"""Progress from harness heartbeats and from log lines (tqdm's carriage returns included)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from runner import harness
from runner.agent.logs import LineSplitter, split_lines
from runner.agent.progress import HISTORY, ProgressTracker


def _beat(run: Path, **fields: object) -> None:
    record = {"pid": os.getpid(), "phase": "train", "time": time.time(), **fields}
    (run / harness.HEARTBEAT_FILE).write_text(json.dumps(record))


def test_no_source_is_none(tmp_path: Path) -> None:
    tracker = ProgressTracker(tmp_path, None)
    tracker.reset(100.0)
    p = tracker.update(["step 5/10"], 101.0)
    assert p.source == "none" and p.step is None and p.last_step_time is None


def test_harness_heartbeat_gives_step_phase_metrics_and_data_wait(tmp_path: Path) -> None:
    tracker = ProgressTracker(tmp_path, None)
    tracker.reset(1000.0)
    _beat(
        tmp_path,
        started=1000.5,
        step=1,
        metrics={"loss": 0.5, "data_wait": 0.02, "step_time": 0.1},
        checkpoint_step=None,
    )
    p = tracker.update([], 1001.0)
    assert (p.source, p.step, p.last_step_time, p.phase) == ("harness", 1, 1001.0, "train")
    assert p.intervals == ()  # the first sighting has nothing to measure against
    assert p.metrics["loss"] == 0.5
    assert p.data_wait_fractions == pytest.approx((0.2,))
    # Four steps later, two seconds on: four intervals of half a second.
    _beat(
        tmp_path,
        started=1000.5,
        step=5,
        phase="checkpoint",
        checkpoint_step=4,
        metrics={"data_wait": 0.06, "step_time": 0.1, "tag": "x", "bad": float("nan")},
    )
    p = tracker.update([], 1003.0)
    assert p.step == 5 and p.phase == "checkpoint" and p.checkpoint_step == 4
    assert p.intervals == pytest.approx((0.5, 0.5, 0.5, 0.5))
    assert set(p.metrics) == {"data_wait", "step_time"}  # numbers only, finite only
    assert p.data_wait_fractions == pytest.approx((0.2, 0.6))
    assert tracker.steps_per_s() == pytest.approx(2.0)
    # No new step: nothing moves, last_step_time stays.
    p = tracker.update([], 1010.0)
    assert p.last_step_time == 1003.0 and len(p.intervals) == 4


def test_heartbeat_of_an_earlier_attempt_is_not_progress(tmp_path: Path) -> None:
    _beat(tmp_path, started=500.0, step=99)
    tracker = ProgressTracker(tmp_path, r"^step (?P<step>\d+)")
    tracker.reset(1000.0)
    p = tracker.update(["step 3"], 1001.0)
    assert p.source == "log" and p.step == 3  # the stale heartbeat is ignored


def test_harness_wins_over_log_lines(tmp_path: Path) -> None:
    tracker = ProgressTracker(tmp_path, r"^step (?P<step>\d+)")
    tracker.reset(1000.0)
    _beat(tmp_path, started=1000.1, step=7)
    p = tracker.update(["step 100"], 1001.0)
    assert (p.source, p.step) == ("harness", 7)
    p = tracker.update(["step 200"], 1002.0)  # a later heartbeat-less tick: still harness
    assert (p.source, p.step) == ("harness", 7)


def test_log_pattern_with_tqdm_carriage_returns(tmp_path: Path) -> None:
    tracker = ProgressTracker(None, r"(?P<step>\d+)/(?P<total>\d+) \[")
    tracker.reset(0.0)
    # What tqdm writes: one physical line redrawn with \r.
    raw = b"\r  0%|          | 0/100 [00:00<?, ?it/s]\r 10%|#  | 10/100 [00:01<00:09]\r 20%|## "
    head, lines, rest = split_lines(raw)
    assert [line.decode() for line in lines] == [
        "  0%|          | 0/100 [00:00<?, ?it/s]",
        " 10%|#  | 10/100 [00:01<00:09]",
    ]
    assert rest == b" 20%|## " and head + rest == raw
    p = tracker.update([line.decode() for line in lines], 1.0)
    assert p.source == "log" and p.step == 10 and p.last_step_time == 1.0
    p = tracker.update(["| 30/100 [00:03<00:07]"], 3.0)
    assert p.step == 30 and p.intervals == pytest.approx([0.1] * 20)


def test_several_lines_in_one_tick_share_its_time(tmp_path: Path) -> None:
    tracker = ProgressTracker(None, r"^step (?P<step>\d+)")
    tracker.reset(0.0)
    tracker.update(["step 1"], 1.0)
    p = tracker.update(["step 2", "noise", "step 3", "step 4"], 2.5)
    assert p.step == 4 and p.intervals == pytest.approx((0.5, 0.5, 0.5))


def test_epoch_and_step_pattern_counts_absolute_steps_across_epochs() -> None:
    pattern = r"Epoch (?P<epoch>\d+).*?(?P<step>\d+)/(?P<total>\d+)"
    tracker = ProgressTracker(None, pattern, first_epoch=1)
    tracker.reset(0.0)
    tracker.update(["Epoch 1: 99/100"], 1.0)
    p = tracker.update(["Epoch 2: 0/100"], 2.0)  # the per-epoch counter went back: one step on
    assert p.step == 100 and p.last_step_time == 2.0 and p.intervals == (1.0,)
    p = tracker.update(["Epoch 2: 0/100"], 3.0)  # the same line again: no progress
    assert p.last_step_time == 2.0


def test_history_is_bounded() -> None:
    tracker = ProgressTracker(None, r"^step (?P<step>\d+)")
    tracker.reset(0.0)
    tracker.update(["step 0"], 1.0)
    p = tracker.update(["step 100000"], 2.0)
    assert len(p.intervals) == HISTORY
    for i in range(1, 200):
        p = tracker.update([f"step {100000 + i}"], 2.0 + i)
    assert len(p.intervals) == HISTORY and p.intervals[-1] == pytest.approx(1.0)


def test_reset_forgets_the_attempt(tmp_path: Path) -> None:
    tracker = ProgressTracker(tmp_path, r"^step (?P<step>\d+)")
    tracker.reset(0.0)
    tracker.update(["step 4"], 1.0)
    tracker.reset(10.0)
    p = tracker.progress
    assert p.step is None and p.source == "none" and p.intervals == ()


def test_checkpoint_step_from_disk_when_the_harness_gives_none(tmp_path: Path) -> None:
    tracker = ProgressTracker(None, r"^step (?P<step>\d+)")
    tracker.reset(0.0)
    assert tracker.update(["step 1"], 1.0, checkpoint_step=40).checkpoint_step == 40


# -- the splitter and tqdm's redraws ---------------------------------------------


def test_a_redraw_is_a_line_when_written_and_handed_on_once() -> None:
    splitter = LineSplitter(1 << 16)
    # tqdm writes "\r" + the bar and flushes: the text after the last "\r" is complete.
    out, lines = splitter.feed(b"\r  0%|  | 0/100 [00:00<?, ?it/s]\r 10%|# | 10/100 [00:01<00:09]")
    assert lines == [b"  0%|  | 0/100 [00:00<?, ?it/s]", b" 10%|# | 10/100 [00:01<00:09]"]
    assert out.endswith(b"10/100 [00:01<00:09]")  # the log file has the bar's state at once
    # The next redraw's "\r" ends the last one: it is not handed on twice.
    out, lines = splitter.feed(b"\r 20%|## | 20/100 [00:02<00:08]")
    assert lines == [b" 20%|## | 20/100 [00:02<00:08]"] and out.startswith(b"\r 20%")
    # The same bar redrawn (tqdm's monitor thread) is a line again; progress dedups it.
    assert splitter.feed(b"\r 20%|## | 20/100 [00:12<00:48]")[1] == [
        b" 20%|## | 20/100 [00:12<00:48]"
    ]
    # The bar closes with a line end; "\r\n" is one line end even across chunks.
    assert splitter.feed(b"\r100%|###| 100/100\r")[1] == [b"100%|###| 100/100"]
    assert splitter.feed(b"\nstep 5")[1] == []  # an unfinished line after "\n" waits
    out, lines = splitter.feed(b" done\r\n")
    assert lines == [b"step 5 done"] and out == b"step 5 done\r\n"
    # A writer that puts "\r" and then its line in pieces: each longer state is handed on.
    assert splitter.feed(b"\rabc")[1] == [b"abc"]
    assert splitter.feed(b"def\n")[1] == [b"abcdef"]
    assert splitter.end() == (b"", [])


def test_the_splitter_keeps_every_byte_and_bounds_a_line() -> None:
    raw = b"a\r\nb\rc\r" + b"x" * 50 + b"\ny\rz"
    splitter = LineSplitter(16)
    written, lines = b"", []
    for i in range(0, len(raw), 7):
        out, got = splitter.feed(raw[i : i + 7])
        written += out
        lines += got
    out, got = splitter.end()
    written, lines = written + out, lines + got
    assert written.replace(b"\n", b"") == raw.replace(b"\n", b"")  # only line ends added
    assert lines[:3] == [b"a", b"b", b"c"] and lines[-2:] == [b"y", b"z"]
    assert all(len(line) <= 16 + 7 for line in lines)


def test_monitor_refresh_after_a_freeze_is_no_step_and_teaches_no_interval() -> None:
    tracker = ProgressTracker(None, r"(?P<step>\d+)/\d+ \[")
    tracker.reset(0.0)
    for t in range(1, 11):  # 20 it/s, one tick a second, ~10 redraws a tick
        p = tracker.update([f"{20 * t - 2}/1000 [", f"{20 * t}/1000 ["], float(t))
    assert p.step == 200 and p.last_step_time == 10.0
    # Frozen at 201 with the bar at 200; tqdm's monitor redraws it 13 s later at 201,
    # and then again at 201: neither is progress made now.
    p = tracker.update(["201/1000 [00:23<..."], 23.0)
    assert p.step == 201 and p.last_step_time == 10.0 and max(p.intervals) < 0.1
    p = tracker.update(["201/1000 [00:33<..."], 33.0)
    assert p.step == 201 and p.last_step_time == 10.0 and tracker.late_redraws == 1
    # Training resumes: the wait is learned then, from the last step that was progress.
    p = tracker.update(["221/1000 ["], 34.0)
    assert p.last_step_time == 34.0 and max(p.intervals) == pytest.approx(24.0 / 21)


def test_a_bar_that_redraws_every_step_has_no_late_redraws() -> None:
    tracker = ProgressTracker(None, r"(?P<step>\d+)/\d+ \[")
    tracker.reset(0.0)
    for t in range(1, 6):
        tracker.update([f"{t}/100 ["], float(t))
    p = tracker.update(["6/100 ["], 30.0)  # a slow step is a step
    assert p.last_step_time == 30.0 and max(p.intervals) == pytest.approx(25.0)


def test_log_pattern_loss_and_grad_norm_groups_keep_nan_visible() -> None:
    pattern = r"step (?P<step>\d+) loss (?P<loss>\S+) grad (?P<grad_norm>\S+)"
    tracker = ProgressTracker(None, pattern)
    tracker.reset(100.0)
    p = tracker.update(["step 1 loss 0.9 grad 1.5", "step 2 loss 0.8 grad 1.25"], 101.0)
    assert p.metrics == {"loss": 0.8, "grad_norm": 1.25} and p.nonfinite == {}
    # Two lines in one tick: the first bad step is the line's, not the tick's last.
    p = tracker.update(["step 3 loss nan grad inf", "step 4 loss nan grad nan"], 102.0)
    assert p.step == 4 and p.metrics == {}  # metrics stay finite only
    assert p.nonfinite == {
        "loss": {"first": 3, "last_good": 2, "value": "nan"},
        "grad_norm": {"first": 3, "last_good": 2, "value": "inf"},
    }
    p = tracker.update(["step 5 loss 0.7 grad 1.0"], 103.0)
    assert p.metrics["loss"] == 0.7 and p.nonfinite["loss"]["first"] == 3  # the first stays
    tracker.reset(200.0)
    assert tracker.progress.nonfinite == {}


def test_harness_nonfinite_record_reaches_progress(tmp_path: Path) -> None:
    """A real Harness writes NaN as text plus the first bad step; both read back."""
    h = harness.Harness(run_dir=tmp_path)
    tracker = ProgressTracker(tmp_path, None)
    tracker.reset(time.time() - 1)
    for step in range(1, 4):
        h.step(step, loss=1.0 / step, grad_norm=1.0)
    h.step(4, loss=float("nan"), grad_norm=float("inf"))
    h.step(5, loss=float("nan"), grad_norm=2.0)  # the agent sees only this heartbeat
    text = (tmp_path / harness.HEARTBEAT_FILE).read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in the heartbeat"))
    p = tracker.update([], time.time())
    assert p.step == 5 and "loss" not in p.metrics and p.metrics["grad_norm"] == 2.0
    assert p.nonfinite["loss"] == {"first": 4, "last_good": 3, "value": "nan"}
    assert p.nonfinite["grad_norm"] == {"first": 4, "last_good": 3, "value": "inf"}
    h.close()

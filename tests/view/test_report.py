"""``runner report``: the figure drawn from a real freeze-and-restart run, checked artist by
artist (event lines and labels, the panels' line data), its markdown, and the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from PIL import Image

from runner.cli import main
from runner.launch.runs import RunRecord, Runs
from runner.rundir import Event, read_events, read_samples, read_status
from runner.view.report import (
    MAX_LABEL_ROWS,
    SEVERITY_COLOURS,
    RunFiles,
    build_timeline,
    draw,
    read_run_files,
    save_png,
    summary,
)
from tests.conftest import RUNNER_BIN
from tests.view.conftest import DPH, FREEZE_AT


def _axes(fig: Figure, key: str) -> Axes:
    found = [ax for ax in fig.axes if ax.get_label() == key]
    assert len(found) == 1, [ax.get_label() for ax in fig.axes]
    return found[0]


def _event_xs(ax: Axes) -> list[float]:
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines) == 1
    return [float(seg[0][0]) for seg in lines[0].get_segments()]


def _gpu_values(samples: list[dict[str, Any]], field: str) -> tuple[list[float], list[float]]:
    """(sample time, value) of GPU 0 in every sample that has it."""
    xs, ys = [], []
    for s in samples:
        for gpu in s["gpus"]:
            if gpu["index"] == 0 and gpu.get(field) is not None:
                xs.append(s["time"])
                ys.append(float(gpu[field]))
    return xs, ys


def test_the_figure_marks_every_event_and_plots_the_samples(recorded_run: Path) -> None:
    events, samples = read_events(recorded_run), read_samples(recorded_run)
    status = read_status(recorded_run)
    assert status is not None
    timeline = build_timeline(read_run_files(recorded_run))
    fig = draw(timeline)

    # A run of a few seconds is drawn in seconds since the agent started it.
    assert (timeline.unit, timeline.scale, timeline.origin) == ("s", 1.0, status.started)

    def since(t: float) -> float:
        return t - status.started

    strip = fig.axes[0]
    assert strip.get_label() == "events"
    keys = ["power", "temperature", "utilization", "steps_per_s", "loss", "disk_free"]
    assert [ax.get_label() for ax in fig.axes[1:]] == keys
    # Every event is a vertical line at its time, through the strip and every panel.
    for ax in fig.axes:
        assert _event_xs(ax) == pytest.approx([since(e.time) for e in events], abs=1e-9)

    # Every event has its own label, at its time, coloured by severity.
    kinds = [e.kind for e in events]
    assert kinds[:5] == ["started", "stall", "stack_dump", "exited", "restart"]
    assert {"started", "finished"} <= set(kinds)
    drawn = sorted((t.get_position()[0], t.get_text().strip(), t.get_color()) for t in strip.texts)
    wanted = sorted(
        (
            since(e.time),
            e.kind,
            "#2e7d32" if e.kind == "finished" else SEVERITY_COLOURS[e.severity],
        )
        for e in events
    )
    assert [d[0] for d in drawn] == pytest.approx([w[0] for w in wanted], abs=1e-9)
    assert [d[1:] for d in drawn] == [w[1:] for w in wanted]
    stall = next(e for e in events if e.kind == "stall")
    assert stall.severity == "critical" and stall.evidence["step"] == FREEZE_AT
    # The stall and what the agent did about it (dump, kill, restart) come within a
    # fraction of a second: their labels go into rows of their own, none over another.
    rows = {t.get_text().strip(): t.get_position()[1] for t in strip.texts[1:5]}
    assert len(set(rows.values())) > 1, rows
    assert _overlaps(fig) == []

    # GPU power: 80 W training, 20 W frozen, at the samples' times; the limit dashed.
    power = _axes(fig, "power").get_lines()
    xs, ys = _gpu_values(samples, "power_w")
    assert list(power[0].get_xdata()) == pytest.approx([since(t) for t in xs])
    assert list(power[0].get_ydata()) == ys
    assert {80.0, 20.0} <= set(ys)
    assert power[1].get_linestyle() == "--"
    assert list(power[1].get_ydata()) == _gpu_values(samples, "power_limit_w")[1]
    temperature = _axes(fig, "temperature").get_lines()
    assert list(temperature[0].get_ydata()) == _gpu_values(samples, "temperature_c")[1]
    assert set(temperature[1].get_ydata()) == {98.0}  # the slowdown threshold
    utilization = _axes(fig, "utilization").get_lines()[0]
    assert list(utilization.get_ydata()) == _gpu_values(samples, "utilization_gpu_percent")[1]

    # Steps/s and loss: the samples' own values, where they have one.
    rated = [s for s in samples if s["steps_per_s"] is not None]
    (steps,) = _axes(fig, "steps_per_s").get_lines()
    assert list(steps.get_xdata()) == pytest.approx([since(s["time"]) for s in rated])
    assert list(steps.get_ydata()) == [s["steps_per_s"] for s in rated]
    with_loss = [s for s in samples if "loss" in s["metrics"]]
    (loss,) = _axes(fig, "loss").get_lines()
    assert list(loss.get_xdata()) == pytest.approx([since(s["time"]) for s in with_loss])
    assert list(loss.get_ydata()) == [s["metrics"]["loss"] for s in with_loss]
    assert len(with_loss) >= 3
    # Disk free: the checkpoint disk, in GB.
    (disk,) = _axes(fig, "disk_free").get_lines()
    free = [
        d["free_bytes"] / 1e9
        for s in samples
        if s["host"]
        for d in s["host"]["disks"]
        if "checkpoints" in d["roles"]
    ]
    assert list(disk.get_ydata()) == pytest.approx(free)


def test_the_markdown_tells_how_it_ended_why_it_restarted_and_what_it_cost(
    recorded_run: Path,
) -> None:
    files = read_run_files(recorded_run)
    text = summary(files, build_timeline(files))
    lines = text.splitlines()
    assert lines[0] == f"# Run {recorded_run.name}"
    assert "![timeline](report.png)" in lines
    assert "- job: loop" in lines
    assert "- backend: local" in lines
    assert "- GPUs: 1 × NVIDIA RTX A4000" in lines
    assert "- state: finished (exit code 0)" in lines
    assert any(ln.startswith("- why: finished at step 40 (exit code 0); 1 restart") for ln in lines)
    assert "## Restarts: 1" in lines
    (restart,) = [ln for ln in lines if ln.startswith("1. ")]
    assert f"after stall at step {FREEZE_AT} (no step for" in restart
    assert restart.endswith("resumed from checkpoint step 20")
    assert "- newest checkpoint step: 40" in lines
    assert "- Hub: no push-state.json (checkpoints were not pushed)" in lines
    # Cost: launch.json's hourly price times the run's length, agent start to last word.
    status = read_status(recorded_run)
    assert status is not None
    events, samples = read_events(recorded_run), read_samples(recorded_run)
    end = max(status.agent_time, samples[-1]["time"], events[-1].time)
    hours = (end - status.started) / 3600
    assert f"- {DPH:g} $/h × {hours:.4f} h = ${DPH * hours:.4f}" in lines
    # Every event is a row of the table; the stack dump's row names its file.
    rows = [ln for ln in lines if ln.startswith("| ") and "since start" not in ln]
    assert [r.split(" | ")[4] for r in rows] == [e.kind for e in events]
    dump = next(e for e in events if e.kind == "stack_dump")
    (dump_row,) = [r for r in rows if " stack_dump " in r]
    assert f"`{dump.evidence['files'][0]}`" in dump_row
    assert dump.evidence["files"][0].startswith("stacks/001-stall/pid-")


def test_the_cli_writes_both_files_into_the_run_folder_and_prints_their_paths(
    recorded_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / recorded_run.name
    shutil.copytree(recorded_run, run)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [str(run / "report.png"), str(run / "report.md")]
    assert (run / "report.md").read_text().startswith(f"# Run {run.name}\n")
    # A real PNG, of the figure's size at 100 dpi.
    assert (run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = draw(build_timeline(read_run_files(run))).get_size_inches() * 100
    with Image.open(run / "report.png") as png:
        assert png.format == "PNG"
        assert png.size == (round(width), round(height))


def test_the_cli_finds_a_run_by_its_registry_id_and_writes_to_out(
    recorded_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    Runs().add(
        RunRecord(
            run_id="loop-20261203-000000-abcd",
            job="loop",
            backend="local",
            run_dir=str(recorded_run),
            started=now,
            state="finished",
            updated=now,
        )
    )
    out = tmp_path / "reports" / "new"
    assert main(["report", "loop-2026", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [str(out / "report.png"), str(out / "report.md")]
    assert "# Run loop-20261203-000000-abcd" in (out / "report.md").read_text()
    assert not (recorded_run / "report.png").exists()


def test_bad_refs_and_folders_with_nothing_to_report_are_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"error: no run folder {tmp_path / 'nope'} (and no run of that name in `runner runs`)"
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "status.json").write_text(json.dumps({"state": "starting"}))
    assert main(["report", str(empty)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: empty: nothing to report: no samples.jsonl")
    assert not (empty / "report.png").exists()


def test_a_run_with_events_but_no_samples_is_reported_with_its_events(
    recorded_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "events-only"
    run.mkdir()
    shutil.copy(recorded_run / "events.jsonl", run)
    shutil.copy(recorded_run / "status.json", run)
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    files = read_run_files(run)
    fig = draw(build_timeline(files))
    assert [ax.get_label() for ax in fig.axes] == ["events"]
    assert len(fig.axes[0].texts) == len(files.events) == 8
    md = (run / "report.md").read_text()
    assert "- GPUs: none seen" in md and "## Events: 8" in md


def _overlaps(fig: Figure) -> list[tuple[str, str]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in fig.axes[0].texts]
    return [
        (a, b)
        for i, (a, box_a) in enumerate(boxes)
        for b, box_b in boxes[i + 1 :]
        if box_a.overlaps(box_b)
    ]


def test_crowded_events_fold_into_labels_that_do_not_overlap(tmp_path: Path) -> None:
    t0 = 1_800_000_000.0
    kinds = ["stall", "stack_dump", "restart", "push", "thermal", "disk_low", "exited"]
    events = [
        # bursts of seven events within a second, every ten minutes, for five hours
        Event(kinds[i % 7], "critical" if i % 7 == 0 else "info", f"e{i}", time=t0 + burst + i % 7)
        for burst in range(0, 5 * 3600, 600)
        for i in range(7)
    ]
    status = {"started": t0, "agent_time": t0 + 5 * 3600, "state": "finished"}
    files = RunFiles("crowded", (), tuple(events), status=status)
    timeline = build_timeline(files)
    assert timeline.unit == "h"
    assert timeline.rows <= MAX_LABEL_ROWS
    # Every event is in exactly one label; a folded label counts the ones it holds.
    held = sorted(i for label in timeline.labels for i in label.markers)
    assert held == list(range(len(events)))
    for label in timeline.labels:
        more = len(label.markers) - 1
        assert label.text == events[label.markers[0]].kind + (f" +{more}" if more else "")
        if any(events[i].severity == "critical" for i in label.markers):
            assert label.colour == SEVERITY_COLOURS["critical"]
    assert any(len(label.markers) > 1 for label in timeline.labels)
    fig = draw(timeline)
    assert _overlaps(fig) == []
    assert _event_xs(fig.axes[0]) == pytest.approx([(e.time - t0) / 3600 for e in events])
    assert len(fig.axes[0].texts) == len(timeline.labels)
    save_png(fig, tmp_path / "crowded.png")
    with Image.open(tmp_path / "crowded.png") as png:
        assert png.size[0] == 1200


@pytest.mark.slow
def test_runner_report_end_to_end_in_a_subprocess(
    recorded_run: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    done = subprocess.run(
        [str(RUNNER_BIN), "report", str(recorded_run), "--out", str(tmp_path), "--clock"],
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(tmp_path / "report.png"), str(tmp_path / "report.md")]
    with Image.open(tmp_path / "report.png") as png:
        assert png.format == "PNG" and png.size[0] == 1200
    bad = subprocess.run(
        [str(RUNNER_BIN), "report", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=60,
    )
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        f"error: no run folder {tmp_path / 'nope'} (and no run of that name in `runner runs`)"
    ]

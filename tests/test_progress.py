"""Progress that only moves forward: stages, fractions and time left from progress events."""

from __future__ import annotations

import re

import pytest

from napari_anogan.events import EventKind, ProgressEvent
from napari_anogan.progress import Progress, ProgressTracker, format_duration

E = EventKind


def scoring_events() -> list[ProgressEvent]:
    """What score_volume yields for a volume in two chunks: totals switch between units."""
    return [
        ProgressEvent(E.STAGE, 0, 0, message="preprocessing scan"),
        # chunk 1: patch-steps of the whole volume, then scored patches
        ProgressEvent(E.MAPPING_STEP, 300, 1000),
        ProgressEvent(E.MAPPING_STEP, 500, 1000),
        ProgressEvent(E.MAPPING_BATCH, 40, 100, message="mapped 40/100 patches"),
        # chunk 2 starts: a raw, chunk-relative step count would fall back here
        ProgressEvent(E.MAPPING_STEP, 450, 1000),
        ProgressEvent(E.MAPPING_STEP, 930, 1000),
        ProgressEvent(E.MAPPING_BATCH, 100, 100, message="mapped 100/100 patches"),
        ProgressEvent(E.STAGE, 0, 0, message="writing the outputs of scan"),
        ProgressEvent(E.DONE, 1, 1, message="scan scored"),
    ]


def training_events() -> list[ProgressEvent]:
    events = [ProgressEvent(E.STAGE, i, 2, message=f"preprocessing eye{i}.tif") for i in range(2)]
    for epoch in range(2):
        events.append(ProgressEvent(E.EPOCH_START, epoch, 2, message="x", epoch=epoch))
        for b in range(1, 5):
            events.append(ProgressEvent(E.BATCH, b, 4, message=f"epoch {epoch + 1}", epoch=epoch))
            events.append(ProgressEvent(E.SAMPLES, b, 4, epoch=epoch))
        events.append(ProgressEvent(E.EPOCH_END, epoch + 1, 2, epoch=epoch))
        events.append(ProgressEvent(E.CHECKPOINT, epoch + 1, 2, message="model.pt"))
    events.append(ProgressEvent(E.REFERENCE, 0, 64, message="scoring 64 held-out patches"))
    events.append(ProgressEvent(E.MAPPING_STEP, 32, 64))
    events.append(ProgressEvent(E.MAPPING_BATCH, 64, 64, message="mapped 64/64 patches"))
    events.append(ProgressEvent(E.EPOCH_START, 0, 1, message="encoder epoch 1/1", epoch=0))
    events.append(ProgressEvent(E.BATCH, 2, 2, message="encoder epoch 1, batch 2/2", epoch=0))
    events.append(ProgressEvent(E.DONE, 1, 1))
    return events


def run(events, clock=None) -> list[Progress]:
    tracker = ProgressTracker(clock=clock or iter(range(1000)).__next__, eta_min_s=2.0)
    return [tracker.update(event) for event in events]


def test_scoring_has_three_stages_and_each_only_moves_forward():
    shown = run(scoring_events())
    assert [p.stage for p in shown] == ["preprocess"] + ["map"] * 6 + ["write"] * 2
    assert [p.stage_number for p in shown if p.new_stage] == [1, 2, 3]
    assert shown[0].fraction is None  # preprocessing: a busy indicator
    fractions = [p.fraction for p in shown if p.stage == "map"]
    assert fractions == [0.3, 0.5, 0.5, 0.5, 0.93, 1.0]  # never back from 50 % to 45 %
    assert shown[-1].fraction == 1.0
    assert shown[3].detail == "mapped 40/100 patches"
    assert shown[4].detail == "mapped 40/100 patches"  # the step events keep it
    assert shown[1].detail == "searching the latent codes"


def test_training_stages_epochs_batches_and_time_left():
    shown = run(training_events())
    stages = [p.stage for p in shown if p.new_stage]
    assert stages == ["preprocess", "train GAN", "reference", "train encoder"]
    gan = [p for p in shown if p.stage == "train GAN"]
    fractions = [p.fraction for p in gan]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    batch = next(p for p in gan if p.detail.startswith("epoch 2/2, batch 3/4"))
    assert batch.fraction == pytest.approx((1 + 3 / 4) / 2)
    # one clock tick per event: time left = rate since the first batch, once timed 2 s
    assert batch.eta_s == pytest.approx(
        (1 - batch.fraction) * (batch.elapsed_s - 1) / (batch.fraction - 1 / 8), rel=1e-6
    )
    assert "left" in batch.text()
    assert shown[-1].stage == "train encoder"
    assert shown[-1].fraction == 1.0


def test_time_left_waits_for_progress_and_the_minimum_time():
    clock = iter([0.0, 0.5, 1.0, 4.0]).__next__
    tracker = ProgressTracker(clock=clock, eta_min_s=2.0)
    first = tracker.update(ProgressEvent(E.MAPPING_BATCH, 10, 100))  # warm-up: not timed
    assert first.eta_s is None
    assert tracker.update(ProgressEvent(E.MAPPING_BATCH, 20, 100)).eta_s is None  # 0.5 s
    assert tracker.update(ProgressEvent(E.MAPPING_BATCH, 20, 100)).eta_s is None  # 1 s
    last = tracker.update(ProgressEvent(E.MAPPING_BATCH, 40, 100))
    assert last.eta_s == pytest.approx(0.6 * 4.0 / 0.3)
    assert last.text() == "map 40 % · 40/100 · about 8 s left"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0 s"), (59.4, "59 s"), (61, "1 min 01 s"), (3725, "1 h 02 min")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_cli_bars_one_per_stage_never_falling_back(capsys):
    from napari_anogan.cli import _drain

    def job():
        yield from scoring_events()
        return "result"

    assert _drain(job(), "score scan") == "result"
    err = capsys.readouterr().err
    lines = [line.strip() for line in re.split(r"[\r\n]+", err) if line.strip()]
    for stage in ("preprocess", "map", "write"):
        assert any(line.startswith(f"score scan · {stage}:") for line in lines), stage
    percents = {}
    for line in lines:
        match = re.match(r"score scan · (\w+):\s+(\d+)%", line)
        if match:
            percents.setdefault(match[1], []).append(int(match[2]))
    assert percents["map"] == sorted(percents["map"])
    assert percents["map"][-1] == 100
    assert "done in" in lines[-1]
    assert "/s" not in err  # no rates of a unit that changes under it

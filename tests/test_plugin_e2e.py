"""End to end in a real napari viewer (Xvfb): train -> score -> candidates -> export.

A tiny model trained for one epoch on a tiny synthetic volume; scoring with a few
mapping steps. Slow-ish (seconds), but every widget runs its real core job in a worker.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from napari_anogan._widgets import _common
from napari_anogan._widgets.candidates import CandidatesWidget
from napari_anogan._widgets.export import ExportWidget
from napari_anogan._widgets.score import ScoreWidget
from napari_anogan._widgets.train import SAMPLES_LAYER, TrainWidget

pytestmark = [pytest.mark.qt, pytest.mark.slow]

TIMEOUT_MS = 180_000


@pytest.fixture
def data_dir(synthetic_dir) -> Path:
    """Tiny synthetic scans (``healthy_0/1``, ``diseased``; shared conftest fixture)."""
    return synthetic_dir


@pytest.fixture
def tiny_model(tiny_model_path) -> Path:
    """A tiny model trained for one epoch (shared conftest fixture)."""
    return tiny_model_path


@pytest.fixture
def notes(monkeypatch) -> dict[str, list[str]]:
    """Notifications shown by the widgets, by kind."""
    shown: dict[str, list[str]] = {"error": [], "info": []}
    monkeypatch.setattr(_common, "show_error", shown["error"].append)
    monkeypatch.setattr(_common, "show_info", shown["info"].append)
    return shown


def _score(qtbot, widget: ScoreWidget, *, steps: int = 3) -> str:
    widget.steps.setValue(steps)
    with qtbot.waitSignal(widget.finished, timeout=TIMEOUT_MS) as blocker:
        widget.run_button.click()
    return blocker.args[0]


def test_train_widget_one_epoch(make_napari_viewer, qtbot, data_dir, notes, tmp_path):
    from napari_anogan.checkpoint import load_checkpoint

    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    widget.set_paths([data_dir / "healthy_0.ome.tif"])
    widget.preset.setCurrentText("tiny")
    widget.epochs.setValue(1)
    widget.patches_per_scan.setValue(16)
    widget.reference_steps.setValue(5)
    output = tmp_path / "gui.pt"
    widget.output.setText(str(output))
    seen = []  # what the progress bar and the status line show after each event

    show = widget.job._on_event

    def record(event):  # after the widget has shown the event
        show(event)
        seen.append((widget.progress.format(), widget.progress.value(), widget.status.text()))

    # in place before the worker starts: its first events (preprocessing) are seen too
    widget.job._on_event = record
    with qtbot.waitSignal(widget.finished, timeout=TIMEOUT_MS) as blocker:
        widget.train_button.click()
        assert widget.cancel_button.isEnabled()
        assert not widget.train_button.isEnabled()
    assert blocker.args == ["done"]
    # one bar per stage, each only moving forward; epochs and batches in the status line
    runs = [list(group) for _, group in itertools.groupby(seen, key=lambda s: s[0])]
    stages = [run[0][0].split(":")[0] for run in runs]
    assert stages[:2] == ["preprocess", "train GAN"]
    assert "train encoder" in stages
    for run in runs:
        values = [v for _, v, _ in run if v >= 0]  # -1: a busy bar, share unknown
        assert values == sorted(values), run[0][0]
    assert any("epoch 1/1, batch" in text for fmt, _, text in seen if "train GAN" in fmt)
    assert widget.status.text() == f"done: healthy model written to {output}"
    assert not notes["error"]
    assert load_checkpoint(output).model_config.preset == "tiny"
    assert widget.plot.values["d_loss"]
    assert widget.plot.values["g_loss"]
    assert SAMPLES_LAYER in viewer.layers
    assert widget.train_button.isEnabled()
    assert "written" in notes["info"][-1]


def test_train_cancel_keeps_checkpoint_and_resumes(
    make_napari_viewer, qtbot, data_dir, notes, tmp_path
):
    from napari_anogan.checkpoint import load_checkpoint

    widget = TrainWidget(make_napari_viewer())
    widget.set_paths([data_dir / "healthy_0.ome.tif"])
    widget.preset.setCurrentText("tiny")
    widget.epochs.setValue(200)
    widget.patches_per_scan.setValue(16)
    widget.reference_steps.setValue(5)
    output = tmp_path / "cancelled.pt"
    widget.output.setText(str(output))
    checkpoints = []

    def on_event(event):
        if getattr(event.kind, "value", "") == "checkpoint":
            checkpoints.append(event)
            widget.cancel_button.click()

    with qtbot.waitSignal(widget.finished, timeout=TIMEOUT_MS) as blocker:
        widget.train_button.click()
        widget.job.worker.yielded.connect(on_event)
    assert blocker.args == ["cancelled"]
    assert checkpoints
    assert not notes["error"]
    done = load_checkpoint(output).training["epochs_done"]
    assert 1 <= done < 200
    assert "Resume" in widget.status.text()

    widget.epochs.setValue(done + 1)
    with qtbot.waitSignal(widget.finished, timeout=TIMEOUT_MS) as blocker:
        widget.resume_button.click()
    assert blocker.args == ["done"]
    assert load_checkpoint(output).training["epochs_done"] == done + 1


def test_score_candidates_export(make_napari_viewer, qtbot, data_dir, tiny_model, notes, tmp_path):
    from napari_anogan.io import read_volume

    viewer = make_napari_viewer()
    (image,) = viewer.open(str(data_dir / "diseased.ome.tif"), plugin="napari-anogan")
    score = ScoreWidget(viewer)
    score.model_path.setText(str(tiny_model))
    score.device.setCurrentIndex(score.device.findData("cpu"))
    assert _score(qtbot, score) == "done"
    assert not notes["error"]
    for kind in ("reconstruction", "residual", "patch scores", "score bars", "boundaries"):
        layer = viewer.layers[f"diseased {kind}"]
        np.testing.assert_allclose(layer.scale, image.scale)
    assert viewer.layers["diseased residual"].data.shape == image.data.shape
    en_face = viewer.layers["diseased en face"]
    assert en_face.data.shape == (image.data.shape[0], image.data.shape[2])
    marker = viewer.layers["diseased en face slice"]
    viewer.dims.set_point(0, 2 * image.scale[0])
    assert marker.data[0][:, 0].tolist() == [2.0, 2.0]  # the marker follows the B-scan
    features = viewer.layers["diseased patch scores"].features
    assert {"residual_percentile", "discrimination_percentile"} <= set(features.columns)
    bars = viewer.layers["diseased score bars"]
    assert set(bars.features["component"]) == {"residual", "discrimination"}

    candidates = CandidatesWidget(viewer)
    assert candidates.source.currentText() == "diseased patch scores"
    candidates.threshold.setValue(0.0)  # everything is anomalous: at least one region
    assert candidates.table.rowCount() >= 1
    candidates.select(0)
    top = candidates.candidates[0]
    slice_world = viewer.dims.point[0] / image.scale[0]
    assert top["slice_start"] - 0.5 <= slice_world <= top["slice_end"] + 0.5
    candidates.decide("keep")

    export = ExportWidget(viewer)
    export.folder.setText(str(tmp_path))
    written = export.export()
    assert not notes["error"]
    heatmap = read_volume(written["heatmap"])
    assert heatmap.data.shape == image.data.shape
    np.testing.assert_allclose(heatmap.spacing, read_volume(data_dir / "diseased.ome.tif").spacing)
    with open(written["candidates"], newline="") as handle:
        assert next(csv.DictReader(handle))["decision"] == "keep"
    summary = json.loads(Path(written["summary"]).read_text())
    assert summary["model"]["path"].endswith("tiny.pt")
    assert summary["settings"]["steps"] == 3
    (reopened,) = viewer.open(str(written["heatmap"]), plugin="napari-anogan")
    assert reopened.data.shape == image.data.shape


def test_score_current_bscan_and_rectangles(make_napari_viewer, qtbot, data_dir, tiny_model):
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(data_dir / "diseased.ome.tif"), plugin="napari-anogan")
    score = ScoreWidget(viewer)
    score.model_path.setText(str(tiny_model))
    viewer.dims.set_point(0, 1 * image.scale[0])
    score.region.setCurrentIndex(1)
    assert _score(qtbot, score, steps=1) == "done"
    slices = set(viewer.layers["diseased patch scores"].features["slice"])
    assert slices == {1}
    whole_bscan = len(viewer.layers["diseased patch scores"].features)

    rect = np.array([[2, 90, 60], [2, 90, 140], [2, 150, 140], [2, 150, 60]], float)
    viewer.add_shapes([rect], shape_type="rectangle", scale=image.scale, name="roi")
    score.region.setCurrentIndex(2)
    assert score.shapes.currentText() == "roi"
    assert _score(qtbot, score, steps=1) == "done"
    features = viewer.layers["diseased patch scores"].features
    assert set(features["slice"]) == {2}
    assert 0 < len(features) < whole_bscan


def test_score_cancel_mid_run(make_napari_viewer, qtbot, data_dir, tiny_model, notes):
    viewer = make_napari_viewer()
    viewer.open(str(data_dir / "diseased.ome.tif"), plugin="napari-anogan")
    score = ScoreWidget(viewer)
    score.model_path.setText(str(tiny_model))
    score.steps.setValue(5000)
    events = []

    def on_event(event):
        events.append(event)
        if len(events) == 3:
            score.cancel_button.click()

    with qtbot.waitSignal(score.finished, timeout=TIMEOUT_MS) as blocker:
        score.run_button.click()
        score.job.worker.yielded.connect(on_event)
    assert blocker.args == ["cancelled"]
    assert len(events) < 100
    assert [layer.name for layer in viewer.layers] == ["diseased"]
    assert score.run_button.isEnabled()
    assert not score.cancel_button.isEnabled()
    assert not notes["error"]


def test_bad_model_file_notifies_and_adds_nothing(
    make_napari_viewer, qtbot, data_dir, notes, tmp_path
):
    viewer = make_napari_viewer()
    viewer.open(str(data_dir / "diseased.ome.tif"), plugin="napari-anogan")
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"this is not a checkpoint")
    score = ScoreWidget(viewer)
    score.model_path.setText(str(bad))
    assert _score(qtbot, score) == "error"
    assert "broken.pt" in notes["error"][-1]
    assert [layer.name for layer in viewer.layers] == ["diseased"]
    assert score.run_button.isEnabled()


def test_bad_image_file_gives_error_and_no_layer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(Exception, match=r"broken\.tif"):
        viewer.open(str(bad), plugin="napari-anogan")
    assert len(viewer.layers) == 0


def test_gui_stays_usable_while_scoring(
    make_napari_viewer, qtbot, data_dir, tiny_model, monkeypatch
):
    """While the worker maps patches the event loop runs, partial heatmaps arrive before the
    result, and the viewer can be used. (Cancel: ``test_score_cancel_mid_run``; how long
    the event loop is held up is measured, not asserted: benchmarks/bench_gui_responsiveness.py.)
    """
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    viewer.open(str(data_dir / "diseased.ome.tif"), plugin="napari-anogan")
    score = ScoreWidget(viewer)
    score.model_path.setText(str(tiny_model))
    score.steps.setValue(30)
    log: list[str] = []
    used_while_busy: list[bool] = []
    show_partial, on_result = score._show_partial, score.job._on_result

    def partial(p):
        log.append("partial")
        if score.job.running and not used_while_busy:  # use the viewer while the job runs
            viewer.dims.set_current_step(0, 1)
            used_while_busy.append(score.cancel_button.isEnabled())
        show_partial(p)

    monkeypatch.setattr(score, "_show_partial", partial)
    monkeypatch.setattr(score.job, "_on_result", lambda r: (log.append("result"), on_result(r)))
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: log.append("tick"))
    timer.start()
    with qtbot.waitSignal(score.finished, timeout=TIMEOUT_MS) as blocker:
        score.run_button.click()
    timer.stop()
    assert blocker.args == ["done"]
    before_result = log[: log.index("result")]
    assert before_result.count("tick") > 10  # the event loop ran during scoring
    assert before_result.count("partial") >= 2  # the blank heatmap, then mapped patches
    assert used_while_busy == [True]
    assert viewer.dims.current_step[0] == 1
    assert score.run_button.isEnabled()
    assert not score.cancel_button.isEnabled()


def test_score_real_bscan_sample_2d(make_napari_viewer, qtbot, tiny_model, notes):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-anogan", "real_bscan")
    (image,) = viewer.layers
    assert image.ndim == 2
    score = ScoreWidget(viewer)
    score.model_path.setText(str(tiny_model))
    score.region.setCurrentIndex(1)  # current B-scan of a single B-scan: the whole image
    assert _score(qtbot, score, steps=1) == "done"
    assert not notes["error"]
    residual = viewer.layers[f"{image.name} residual"]
    assert residual.data.shape == image.data.shape
    assert f"{image.name} en face" not in viewer.layers
    patches = viewer.layers[f"{image.name} patch scores"]
    assert patches.ndim == 2
    assert len(patches.data) > 0

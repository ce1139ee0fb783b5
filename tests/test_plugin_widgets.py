"""Widgets in a real napari viewer (Xvfb) with a hand-made scoring result.

These need no trained model: the result layers are built from ``fake_result`` so the
candidate table, threshold, keep/reject and export are tested quickly.
"""

from __future__ import annotations

import csv
import gc
import json
import weakref
from pathlib import Path

import numpy as np
import pytest

from napari_anogan import settings
from napari_anogan._widgets import _common
from napari_anogan._widgets._layers import LAYER_KINDS
from napari_anogan._widgets._results import add_result_layers, boxes_from_shapes
from napari_anogan._widgets.candidates import DECISION_COLUMN, CandidatesWidget
from napari_anogan._widgets.export import ExportWidget
from napari_anogan._widgets.score import ScoreWidget
from napari_anogan._widgets.train import TrainWidget
from test_plugin_layers import H, S, W, fake_result

pytestmark = [pytest.mark.qt, pytest.mark.slow]

SCALE = (120.0, 3.9, 11.0)


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """Error notifications shown by the widgets."""
    shown: list[str] = []
    monkeypatch.setattr(_common, "show_error", shown.append)
    monkeypatch.setattr(_common, "show_info", lambda message: None)
    return shown


@pytest.fixture
def scored_viewer(make_napari_viewer):
    """A viewer with an image 'scan' and the layers of a fake scoring result."""
    from napari_anogan._widgets._layers import result_layers

    viewer = make_napari_viewer()
    data = np.random.default_rng(1).uniform(0, 255, (S, H, W)).astype(np.float32)
    viewer.add_image(data, name="scan", scale=SCALE)
    tuples = result_layers(fake_result(), "scan", scale=SCALE)
    add_result_layers(viewer, tuples, "scan")
    return viewer


def test_result_layers_added_over_the_image(scored_viewer):
    names = [layer.name for layer in scored_viewer.layers]
    assert names[0] == "scan"
    for kind in ("reconstruction", "residual", "patch scores", "score bars", "boundaries"):
        layer = scored_viewer.layers[f"scan {kind}"]
        np.testing.assert_allclose(layer.scale[-3:], SCALE)
    residual = scored_viewer.layers["scan residual"]
    assert residual.blending == "translucent"
    assert residual.colorbar.visible  # the heatmap's colour bar, in residual units
    assert residual.metadata["heatmap_threshold"]["value"] == residual.contrast_limits[0]
    raw = scored_viewer.layers["scan residual (raw)"]
    assert raw.data is residual.data  # one array, two displays
    cands = scored_viewer.layers["scan candidates"]
    assert len(cands.data) >= 1
    assert "decision" in cands.features.columns
    # every layer inserted hidden was shown again; only G(z), the raw residual and the
    # patch boxes stay hidden (they would cover the scan)
    hidden = [layer.name for layer in scored_viewer.layers if not layer.visible]
    assert hidden == ["scan reconstruction", "scan residual (raw)", "scan patch scores"]


def test_result_layer_steps_insert_hidden_then_show(make_napari_viewer):
    from napari_anogan._widgets._layers import result_layers
    from napari_anogan._widgets._results import result_layer_steps

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((S, H, W), np.float32), name="scan")
    steps = result_layer_steps(
        viewer, result_layers(fake_result(), "scan", scale=(1, 1, 1)), "scan"
    )
    log = []
    for step in steps:
        name = step.split(" ", 1)[1]
        log.append((step, viewer.layers[name].visible))
    inserted = [step for step, _ in log if step.startswith("inserted")]
    assert len(inserted) == len(LAYER_KINDS)
    # a layer is never inserted and drawn for the first time in one step
    assert all(not visible for step, visible in log if step.startswith("inserted"))
    shown = [step.split(" ", 1)[1] for step, visible in log if step.startswith("showed")]
    assert all(visible for step, visible in log if step.startswith("showed"))
    starts_hidden = ("reconstruction", "residual (raw)", "patch scores")
    assert shown == [f"scan {kind}" for kind in LAYER_KINDS if kind not in starts_hidden]


def test_rescoring_replaces_layers(scored_viewer):
    from napari_anogan._widgets._layers import result_layers

    before = len(scored_viewer.layers)
    add_result_layers(scored_viewer, result_layers(fake_result(), "scan", scale=SCALE), "scan")
    assert len(scored_viewer.layers) == before


def test_rescoring_updates_images_in_place_and_keeps_the_order(scored_viewer):
    from napari_anogan._widgets._layers import result_layers

    residual = scored_viewer.layers["scan residual"]
    bars = scored_viewer.layers["scan score bars"]
    again = fake_result()
    again.residual = again.residual * 3.0
    add_result_layers(scored_viewer, result_layers(again, "scan", scale=SCALE), "scan")
    assert scored_viewer.layers["scan residual"] is residual  # same layer, new data
    assert residual.data.max() == 3.0
    assert residual.contrast_limits[1] == pytest.approx(3.0)
    assert scored_viewer.layers["scan score bars"] is not bars  # shapes are replaced
    assert [layer.name for layer in scored_viewer.layers] == ["scan"] + [
        f"scan {kind}" for kind in LAYER_KINDS
    ]
    assert scored_viewer.layers.selection.active is scored_viewer.layers["scan"]


def _qt_selected_names(viewer) -> tuple[list[str], str]:
    """Layer names selected in the Qt layer list, and the layer whose controls show."""
    qt_viewer = viewer.window._qt_viewer
    view = qt_viewer.layers
    rows = sorted(index.row() for index in view.selectionModel().selectedRows())
    names = [view.model().index(row, 0).data() for row in rows]
    container = qt_viewer.controls
    shown = [layer.name for layer, w in container.widgets.items() if w is container.currentWidget()]
    return names, shown[0] if shown else ""


@pytest.mark.parametrize("selected_first", ["scan", "other", "both"])
def test_adding_results_leaves_the_scan_selected_in_model_and_qt(
    make_napari_viewer, selected_first
):
    """The results are inserted with selection events blocked when only the scan is
    selected; either way the Qt layer list and controls must agree with the model."""
    from napari_anogan._widgets._layers import result_layers

    viewer = make_napari_viewer()
    data = np.random.default_rng(1).uniform(0, 255, (S, H, W)).astype(np.float32)
    scan = viewer.add_image(data, name="scan", scale=SCALE)
    other = viewer.add_image(data, name="other", scale=SCALE)
    if selected_first == "scan":
        viewer.layers.selection.active = scan
    elif selected_first == "both":
        viewer.layers.selection.update({scan, other})
    tuples = result_layers(fake_result(), "scan", scale=SCALE)
    add_result_layers(viewer, tuples, "scan")
    assert set(viewer.layers.selection) == {scan}
    assert viewer.layers.selection.active is scan
    assert _qt_selected_names(viewer) == (["scan"], "scan")
    # the Qt views still follow the model afterwards
    bars = viewer.layers["scan score bars"]
    viewer.layers.selection.active = bars
    assert _qt_selected_names(viewer) == (["scan score bars"], "scan score bars")


def test_step_queue_runs_between_turns_and_newest_waiting_task_wins(qtbot):
    log: list[str] = []
    done: list[str] = []

    def task(name: str, steps: int = 2):
        def run():
            for i in range(steps):
                log.append(f"{name}{i}")
                yield name

        return run

    queue = _common.StepQueue(budget_ms=0.0)
    queue.submit("a", task("a"), on_done=lambda: done.append("a"))
    queue.submit("b", task("old b"))
    queue.submit("b", task("b"), on_done=lambda: done.append("b"))
    assert log == []  # nothing runs inside submit
    assert queue.busy
    assert not queue.idle.is_set()
    idle: list[bool] = []
    queue.when_idle(lambda: idle.append(True))
    qtbot.waitUntil(lambda: not queue.busy, timeout=5_000)
    assert log == ["a0", "a1", "b0", "b1"]
    assert done == ["a", "b"]
    assert idle == [True]
    assert queue.idle.is_set()
    assert queue.last_step == "b"


def test_step_queue_reports_a_failing_step_and_goes_on(qtbot):
    failures: list[BaseException] = []
    log: list[int] = []

    def failing():
        log.append(1)
        yield
        raise ValueError("broken step")

    def fine():
        log.append(2)
        yield

    queue = _common.StepQueue()
    queue.submit("x", failing, on_error=failures.append)
    queue.submit("y", fine)
    queue.run_all()
    assert log == [1, 2]
    assert [str(exc) for exc in failures] == ["broken step"]
    assert not queue.busy


@pytest.mark.parametrize(
    ("threads", "cpus", "load", "expected"),
    [
        (2, 2, 0.3, 2),  # idle machine: every core for the mapping
        (2, 2, 1.0, 1),  # another process busy: one core left to the GUI
        (2, 2, 4.5, 1),
        (16, 16, 3.0, 16),
        (16, 16, 15.2, 15),
        (1, 1, 2.0, 1),  # never below one thread
        (4, 16, 20.0, 4),  # never more than torch had
    ],
)
def test_torch_threads_for_gui(threads, cpus, load, expected):
    from napari_anogan._widgets._results import torch_threads_for_gui

    assert torch_threads_for_gui(threads, cpus, load) == expected


def test_gui_torch_threads_restores_the_setting(monkeypatch):
    import os

    import torch

    from napari_anogan._widgets._results import gui_torch_threads

    before = torch.get_num_threads()
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    with gui_torch_threads():
        inside = torch.get_num_threads()
    assert inside == max(1, min(before, (os.cpu_count() or 1) - 1))
    assert torch.get_num_threads() == before


def test_half_made_layers_are_removed(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((S, H, W)), name="scan")
    good = (np.zeros((S, H, W)), {"name": "scan residual"}, "image")
    bad = (np.zeros((S, H, W)), {"name": "scan patch scores", "no_such_arg": 1}, "image")
    with pytest.raises(TypeError):
        add_result_layers(viewer, [good, bad], "scan")
    assert [layer.name for layer in viewer.layers] == ["scan"]


def test_candidates_table_click_threshold_and_decisions(scored_viewer, errors):
    widget = CandidatesWidget(scored_viewer)
    assert widget.source.currentText() == "scan patch scores"
    assert widget.table.rowCount() == len(widget.candidates) >= 1
    top = widget.candidates[0]

    widget.select(0)  # a click on the first row moves to its B-scan and zooms in
    middle = (top["slice_start"] + top["slice_end"]) / 2
    assert scored_viewer.dims.point[0] == pytest.approx(middle * SCALE[0], abs=SCALE[0])
    camera = _common.camera_of(scored_viewer)
    centre_col = (top["col"] + top["width"] / 2 - 0.5) * SCALE[2]
    assert camera.center[-1] == pytest.approx(centre_col, abs=SCALE[2])

    widget.decide("keep")
    features = scored_viewer.layers["scan candidates"].features
    assert set(features.loc[features["rank"] == top["rank"], "decision"]) == {"keep"}

    widget.threshold.setValue(99.95)  # above every patch: no candidate left
    assert widget.table.rowCount() == 0
    assert len(scored_viewer.layers["scan candidates"].data) == 0
    bars = scored_viewer.layers["scan score bars"]
    assert np.allclose(bars.face_color[:, :3], 0.35)  # all bars unlit

    widget.threshold.setValue(99.0)  # back: the region and its decision return
    assert widget.table.rowCount() == len(widget.candidates) >= 1
    assert widget.candidates[0]["decision"] == "keep"
    assert widget.table.item(0, DECISION_COLUMN).text() == "keep"
    assert not errors


def test_candidates_widget_without_results(make_napari_viewer, errors):
    viewer = make_napari_viewer()
    widget = CandidatesWidget(viewer)
    assert widget.table.rowCount() == 0
    widget.decide("keep")  # nothing selected: no-op
    widget.apply_threshold()
    assert not errors


def test_export_writes_files_that_reopen(scored_viewer, tmp_path, errors):
    from napari_anogan.io import read_volume

    candidates = CandidatesWidget(scored_viewer)
    candidates.select(0)
    candidates.decide("reject")
    widget = ExportWidget(scored_viewer)
    widget.folder.setText(str(tmp_path))
    written = widget.export()
    assert not errors
    assert set(written) == {"heatmap", "candidates", "scores", "overview", "snapshot", "summary"}
    # the CLI's file names for the ``score`` outputs
    from napari_anogan._widgets._common import RESULT_KEY
    from napari_anogan.pipeline import output_paths

    cli = output_paths(widget.source.layer().metadata[RESULT_KEY].name, tmp_path, figures=True)
    kinds = ("heatmap", "scores", "overview", "summary")
    assert [written[k] for k in kinds] == list(cli.values())
    heatmap = read_volume(written["heatmap"])
    assert heatmap.data.shape == (S, H, W)
    np.testing.assert_allclose(heatmap.spacing, SCALE)
    with open(written["candidates"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["decision"] == "reject"
    assert rows[0]["rank"] == "1"
    with open(written["scores"], newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(fake_result().patches["slice"])
    summary = json.loads(Path(written["summary"]).read_text())
    assert summary["candidates"][0]["decision"] == "reject"
    assert summary["model"]["path"] == "model.pt"
    from PIL import Image

    assert Image.open(written["snapshot"]).size[0] > 10
    # the CLI's overview figure, at the heatmap threshold the viewer shows
    assert Image.open(written["overview"]).size[0] >= 0.9 * settings.FIGURE_MIN_WIDTH
    shown = scored_viewer.layers["scan residual"].metadata["heatmap_threshold"]
    assert summary["heatmap_threshold"]["source"] == shown["source"]


def test_export_to_missing_folder_notifies(scored_viewer, tmp_path, errors):
    widget = ExportWidget(scored_viewer)
    widget.folder.setText(str(tmp_path / "nope"))
    assert widget.export() == {}
    assert errors
    assert "does not exist" in errors[0]
    assert list(tmp_path.iterdir()) == []


def test_export_without_results_notifies(make_napari_viewer, errors):
    widget = ExportWidget(make_napari_viewer())
    assert widget.export() == {}
    assert "score an image first" in errors[0]


def test_boxes_from_shapes_use_world_coordinates(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((S, H, W)), name="scan", scale=SCALE)
    # drawn on a layer with scale 1: vertices are world coordinates
    world_rect = np.array([[2, 10, 20], [2, 10, 40], [2, 30, 40], [2, 30, 20]], float)
    world_rect *= np.array(SCALE)
    shapes = viewer.add_shapes([world_rect], shape_type="rectangle")
    ((s, r0, c0, r1, c1),) = boxes_from_shapes(shapes, image)
    assert (s, r0, c0, r1, c1) == (2, 10, 20, 31, 41)


def test_score_widget_defaults_and_input_errors(make_napari_viewer, errors, tmp_path):
    viewer = make_napari_viewer()
    widget = ScoreWidget(viewer)
    assert widget.device.itemData(0) == "auto"
    assert widget.device.itemText(0).startswith("auto (")
    widget.run()  # no image
    assert "open an OCT image" in errors[-1]
    viewer.add_image(np.zeros((S, H, W)), name="scan")
    assert widget.image.currentText() == "scan"
    widget.model_path.setText(str(tmp_path / "missing.pt"))
    widget.run()
    assert "model file not found" in errors[-1]
    widget.model_path.setText(__file__)
    widget.region.setCurrentIndex(2)
    assert widget.shapes.isEnabled()
    widget.run()
    assert "Shapes layer" in errors[-1]
    assert not widget.job.running
    assert [layer.name for layer in viewer.layers] == ["scan"]


def test_score_widget_offers_only_scans(scored_viewer):
    scored_viewer.add_image(np.zeros((10, 10, 3), np.uint8), name="photo", rgb=True)
    widget = ScoreWidget(scored_viewer)
    assert [widget.image.itemText(i) for i in range(widget.image.count())] == ["scan"]


def test_train_widget_input_errors(make_napari_viewer, errors, tmp_path):
    widget = TrainWidget(make_napari_viewer())
    assert widget.preset.currentText() == settings.TRAIN_PRESET == "small"  # as the CLI
    widget.start()
    assert "add healthy scans" in errors[-1]
    widget.set_paths([tmp_path])
    widget.start()
    assert "choose the model file" in errors[-1]
    widget.output.setText(str(tmp_path / "model.pt"))
    widget.start(resume=True)
    assert "no checkpoint to resume" in errors[-1]
    assert not widget.job.running


def test_open_viewer_docks_widgets_and_opens_path(make_napari_viewer, monkeypatch, tmp_path):
    import napari

    from napari_anogan._widgets.viewer import WIDGETS, open_viewer
    from napari_anogan.io import write_tiff

    path = tmp_path / "scan.ome.tif"
    write_tiff(path, np.zeros((2, 16, 24), np.uint8), spacing=(100.0, 4.0, 10.0))
    monkeypatch.setattr(napari, "Viewer", lambda **kwargs: make_napari_viewer(**kwargs))
    try:
        viewer = open_viewer(path, block=False)
        assert [layer.name for layer in viewer.layers] == ["scan"]
        assert set(WIDGETS) <= {name.split(" (")[0] for name in viewer.window.dock_widgets}
        # the application set up before the scan was opened is frozen out of collection
        assert gc.get_freeze_count() > 10_000
        # the scan's layer is not: once removed, it is collected
        gone = weakref.ref(viewer.layers["scan"])
        viewer.layers.remove("scan")
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()


def test_dock_widgets(make_napari_viewer):
    from napari_anogan._widgets.viewer import WIDGETS, dock_widgets

    viewer = make_napari_viewer()
    widgets = dock_widgets(viewer)
    assert list(widgets) == list(WIDGETS)
    assert isinstance(widgets["Score volume"], ScoreWidget)


def test_partial_results_show_while_scoring(make_napari_viewer, qtbot, errors, monkeypatch):
    """The residual of a partial result appears while the job still runs, then the final
    result updates that layer in place and adds the rest (core yields ``partial``)."""
    import threading
    from dataclasses import dataclass
    from typing import Any

    from napari_anogan import pipeline
    from napari_anogan._widgets._results import PartialLayers

    @dataclass
    class Event:
        kind: str
        step: int
        total: int
        message: str = ""
        partial: Any = None

    shown = threading.Event()
    seen: dict[str, Any] = {}

    def fake_score_volume(volume, model, settings, **region):
        first = fake_result()
        first.residual = first.residual * 0.5
        yield Event("mapping_batch", 1, 2, "batch 1/2", partial=first)
        # the worker goes on only once the GUI thread has shown the partial heatmap
        seen["waited"] = shown.wait(20)
        yield Event("mapping_batch", 2, 2, "batch 2/2")
        return fake_result()

    monkeypatch.setattr(pipeline, "score_volume", fake_score_volume)
    monkeypatch.setattr("napari_anogan.checkpoint.load_checkpoint", lambda path: object())
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((S, H, W), np.float32), name="scan")
    widget = ScoreWidget(viewer)
    original = widget._show_partial

    def show_partial(partial):
        seen["partial"] = partial
        original(partial)

    monkeypatch.setattr(widget, "_show_partial", show_partial)

    def on_data(event):
        seen.setdefault("maxima", []).append(float(event.source.data.max()))
        if seen["maxima"][-1] == 0.5:
            seen["running"] = widget.job.running
            shown.set()

    def on_inserted(event):
        if event.value.name == "scan residual":
            seen["residual"] = event.value
            seen["inserted_max"] = float(event.value.data.max())
            seen["inserted_visible"] = event.value.visible
            event.value.events.data.connect(on_data)

    viewer.layers.events.inserted.connect(on_inserted)
    widget.model_path.setText(__file__)  # any existing file: the fake ignores it
    with qtbot.waitSignal(widget.finished, timeout=30_000) as blocker:
        widget.run_button.click()
    assert blocker.args == ["done"]
    assert not errors
    assert seen["waited"]
    assert seen["running"]
    assert isinstance(seen["partial"], PartialLayers)  # prepared in the worker
    # a blank heatmap goes in at the click, then each partial and the result fill it
    assert seen["inserted_max"] == 0.0
    assert seen["inserted_visible"] is False  # shown a step after its insertion
    assert viewer.layers["scan residual"].visible
    assert seen["maxima"][0] == 0.5
    assert seen["maxima"][-1] == 1.0
    assert viewer.layers["scan residual"] is seen["residual"]  # updated in place
    assert viewer.layers["scan residual"].data.max() == 1.0  # by the final result
    names = [layer.name for layer in viewer.layers]
    assert names == ["scan"] + [f"scan {kind}" for kind in LAYER_KINDS]
    assert viewer.layers.selection.active is viewer.layers["scan"]
    assert not widget.busy
    assert widget.run_button.isEnabled()


def test_napari_save_uses_plugin_writers(make_napari_viewer, tmp_path):
    from napari_anogan.io import read_volume

    viewer = make_napari_viewer()
    data = np.arange(S * H * W, dtype=np.uint16).reshape(S, H, W)
    viewer.add_image(data, name="scan", scale=SCALE)
    rect = np.array([[1, 2, 3], [1, 2, 9], [1, 8, 9], [1, 8, 3]], float)
    viewer.add_shapes([rect], shape_type="rectangle", features={"score": [4.5]}, name="roi")
    image_path = tmp_path / "scan.ome.tif"
    viewer.layers["scan"].save(str(image_path), plugin="napari-anogan")
    back = read_volume(image_path)
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.spacing, SCALE)
    shapes_path = tmp_path / "roi.csv"
    viewer.layers["roi"].save(str(shapes_path), plugin="napari-anogan")
    with open(shapes_path, newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["shape_type"] == "rectangle"
    assert float(row["score"]) == 4.5


def test_youden_threshold_from_evaluation(scored_viewer, tmp_path, errors):
    widget = CandidatesWidget(scored_viewer)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"anomaly_score": {"youden": {"threshold": 4.0}}}))
    widget.load_youden(metrics)
    assert widget.mode.currentText() == "anomaly score"
    assert widget.threshold.value() == pytest.approx(4.0)
    assert len(widget.candidates) == 1  # only the planted hot patches score ~5
    metrics.write_text(json.dumps({"residual_score": {}}))
    widget.load_youden(metrics)
    assert "no Youden threshold" in errors[-1]
    assert widget.threshold.value() == pytest.approx(4.0)


def test_score_widget_defaults_to_the_scoring_mode(make_napari_viewer):
    from napari_anogan._widgets.score import ScoreWidget
    from napari_anogan.pipeline import ScoreSettings

    widget = ScoreWidget(make_napari_viewer())
    defaults = ScoreSettings()
    assert widget.mode.currentText() == defaults.mode == "hybrid"
    assert widget.steps.value() == defaults.hybrid_steps
    assert widget.settings().hybrid_steps == defaults.hybrid_steps
    widget.mode.setCurrentText("iterative")  # the paper's mapping, one choice away
    assert widget.steps.value() == 500
    assert widget.settings().steps == 500
    widget.mode.setCurrentText("encoder")
    assert not widget.steps.isEnabled()
    widget.mode.setCurrentText("hybrid")
    widget.steps.setValue(4)
    assert (widget.settings().hybrid_steps, widget.settings().steps) == (4, 4)


def test_failed_rescoring_gives_the_earlier_heatmap_back(scored_viewer, qtbot, errors, monkeypatch):
    """A re-score's partial heatmaps update the earlier residual layer in place; if the
    re-score fails, that layer gets its earlier data and contrast limits back.

    The failure is a RuntimeError (torch's usual type), which superqt would swallow
    without ever finishing the job, leaving the widget busy for good."""
    from types import SimpleNamespace

    from napari_anogan import pipeline

    residual = scored_viewer.layers["scan residual"]
    before_data = residual.data
    before_limits = tuple(residual.contrast_limits)
    names = [layer.name for layer in scored_viewer.layers]
    shown: dict[str, float] = {}

    def fake_score_volume(volume, model, settings, **region):
        partial = fake_result()
        partial.residual = partial.residual * 7.0
        yield SimpleNamespace(kind="mapping_batch", step=1, total=2, message="", partial=partial)
        raise RuntimeError("the mapping broke half way")

    def on_data(event):
        shown.setdefault("max", float(event.source.data.max()))

    residual.events.data.connect(on_data)
    monkeypatch.setattr(pipeline, "score_volume", fake_score_volume)
    monkeypatch.setattr("napari_anogan.checkpoint.load_checkpoint", lambda path: object())
    widget = ScoreWidget(scored_viewer)
    widget.model_path.setText(__file__)
    with qtbot.waitSignal(widget.finished, timeout=30_000) as blocker:
        widget.run_button.click()
    assert blocker.args == ["error"]
    assert errors
    assert "(RuntimeError): the mapping broke half way" in errors[-1]
    assert shown["max"] == 7.0  # the partial heatmap was shown in the earlier layer
    assert scored_viewer.layers["scan residual"] is residual
    assert residual.data is before_data
    assert tuple(residual.contrast_limits) == pytest.approx(before_limits)
    assert [layer.name for layer in scored_viewer.layers] == names


def test_real_sample_is_scored_with_the_bundled_real_model(make_napari_viewer):
    """File > Open Sample > the OCTDL B-scan: its layer names the bundled real model, which
    the Score widget takes (the synthetic model stays for the synthetic sample)."""
    from napari_anogan.resources import BUNDLED_MODEL, BUNDLED_REAL_MODEL, sample_path

    viewer = make_napari_viewer()
    widget = ScoreWidget(viewer)
    assert Path(widget.model_path.text()) == sample_path(BUNDLED_MODEL)
    viewer.open_sample("napari-anogan", "octdl_bscan")
    layer = viewer.layers[-1]
    assert layer.data.shape == (409, 1095)
    assert layer.metadata["model"] == str(sample_path(BUNDLED_REAL_MODEL))
    assert widget.image.layer() is layer
    assert Path(widget.model_path.text()) == sample_path(BUNDLED_REAL_MODEL)


def _transparent_share(layer, where=None) -> float:
    """Share of a heatmap layer's pixels (``where`` True) that napari draws fully transparent."""
    low, high = layer.contrast_limits
    data = np.asarray(layer.data, dtype=float)
    norm = np.clip((data - low) / (high - low), 0.0, 1.0)
    alpha = layer.colormap.map(norm.ravel())[:, 3].reshape(data.shape)
    selected = alpha[where] if where is not None else alpha
    return float(np.mean(selected == 0.0))


def test_heatmap_threshold_moves_from_the_candidate_widget(make_napari_viewer, errors):
    """The heatmap is transparent below a healthy pixel percentile: 99 by default, moved
    from the Candidate markers widget, stored in the residual layer's metadata."""
    from napari_anogan._widgets._layers import pixel_reference_from_metadata, result_layers

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((S, H, W), np.float32), name="scan", scale=SCALE)
    result = fake_result()
    rng = np.random.default_rng(0)
    result.residual = rng.uniform(0.1, 0.2, (S, H, W)).astype(np.float32)
    result.residual[1, 16:48, 32:64] = 1.5  # what only the anomalous patches cover
    add_result_layers(viewer, result_layers(result, "scan", scale=SCALE), "scan")
    residual = viewer.layers["scan residual"]
    lesion = np.zeros((S, H, W), bool)
    lesion[1, 16:48, 32:64] = True
    # 99th percentile: the lesion and about 1 % of the rest are coloured
    assert residual.metadata["heatmap_threshold"]["percentile"] == settings.HEATMAP_PERCENTILE
    assert _transparent_share(residual, lesion) == 0.0
    assert 0.985 <= _transparent_share(residual, ~lesion) <= 0.995
    widget = CandidatesWidget(viewer)
    assert widget.heatmap_percentile.value() == settings.HEATMAP_PERCENTILE
    reference = pixel_reference_from_metadata(residual.metadata)
    widget.heatmap_percentile.setValue(60.0)
    assert residual.contrast_limits[0] == pytest.approx(reference.value_at(60.0))
    assert residual.metadata["heatmap_threshold"]["percentile"] == 60.0
    assert 0.58 <= _transparent_share(residual, ~lesion) <= 0.62
    assert "p60 of the" in widget.legend.heatmap_text.text()
    # the raw residual is kept, hidden, coloured from 0
    raw = viewer.layers["scan residual (raw)"]
    assert not raw.visible
    assert raw.blending == "additive"
    assert raw.contrast_limits[0] == 0.0
    assert not errors


def test_legend_says_what_the_colours_mean(scored_viewer):
    widget = CandidatesWidget(scored_viewer)
    widget.show()
    legend = widget.legend
    assert legend.isVisible()
    assert legend.heatmap_bar.pixmap().width() == 200
    texts = [label.text() for label in legend.bar_labels + legend.box_labels]
    assert any(t.startswith("upper bar: residual score R") for t in texts)
    assert any(t.startswith("lower bar: discrimination score D") for t in texts)
    assert any("below the threshold" in t for t in texts)
    assert any("candidate region" in t for t in texts)
    assert "lit at healthy p99" in legend.bars_title.text()
    residual = scored_viewer.layers["scan residual"]
    low = residual.contrast_limits[0]
    assert f"transparent up to {low:.3g}" in legend.heatmap_text.text()
    assert residual.colorbar.visible  # and the canvas shows the heatmap's colour bar
    widget.threshold.setValue(99.95)  # bars follow the candidates' threshold
    assert "lit at healthy p99.95" in legend.bars_title.text()


def test_candidate_table_fits_the_default_dock(make_napari_viewer, qtbot, errors):
    """Rank, B-scans, score, percentile, decision: no horizontal scrolling in the dock the
    plugin opens with; the rest of a region in its tooltip and the details line."""
    from napari_anogan._widgets._layers import result_layers
    from napari_anogan._widgets.candidates import COLUMNS
    from napari_anogan._widgets.viewer import dock_widgets

    viewer = make_napari_viewer(show=True)
    widgets = dock_widgets(viewer)
    viewer.add_image(np.zeros((S, H, W), np.float32), name="scan", scale=SCALE)
    add_result_layers(viewer, result_layers(fake_result(), "scan", scale=SCALE), "scan")
    widget = widgets["Candidate markers"]
    widget.parent().raise_()
    qtbot.waitUntil(lambda: widget.table.isVisible() and widget.table.rowCount() > 0)
    qtbot.wait(50)
    table = widget.table
    headers = [table.horizontalHeaderItem(i).text() for i in range(table.columnCount())]
    assert headers == list(COLUMNS) == ["#", "B-scans", "score", "pct", "decision"]
    assert table.horizontalScrollBar().maximum() == 0  # nothing hidden to the right
    metrics = table.horizontalHeader().fontMetrics()
    for i, text in enumerate(headers):  # every header readable in full
        assert table.horizontalHeader().sectionSize(i) >= metrics.horizontalAdvance(text)
    tip = table.item(0, 0).toolTip()
    assert "rows" in tip
    assert "columns" in tip
    assert "mean" in tip
    widget.select(0)
    assert widget.details.text() == tip
    assert widget.details.wordWrap()
    assert not errors


def test_messages_are_shown_in_full_in_the_widgets(make_napari_viewer, errors, tmp_path):
    viewer = make_napari_viewer()
    score = ScoreWidget(viewer)
    score.run()  # no image
    assert score.status.text() == errors[-1]
    assert score.status.wordWrap()
    train = TrainWidget(viewer)
    train.start()
    assert train.status.text() == errors[-1]
    export = ExportWidget(viewer)
    export.export()
    assert export.status.text() == errors[-1]
    assert "nothing to export yet" in export.status.text()


def test_bundled_sample_heatmap_colours_what_healthy_tissue_rarely_shows(
    make_napari_viewer, qtbot, errors
):
    """The README's first look: the synthetic sample scored with the bundled model in
    napari. The heatmap leaves most of the retina clear and colours the planted lesions
    several times as often; the progress bar ends on "done" and the status line says the
    whole result."""
    from napari_anogan._widgets.viewer import dock_widgets
    from napari_anogan.io import read_volume
    from napari_anogan.resources import SAMPLE_MASK, sample_path

    viewer = make_napari_viewer()
    widgets = dock_widgets(viewer)
    viewer.open_sample("napari-anogan", "synthetic_volume")
    score = widgets["Score volume"]
    with qtbot.waitSignal(score.finished, timeout=600_000) as blocker:
        score.run_button.click()
    assert blocker.args == ["done"]
    assert not errors
    assert score.progress.format() == "done"
    assert score.status.text().startswith("sample_volume: volume score ")
    assert "candidate regions above the 99th healthy percentile" in score.status.text()
    residual = viewer.layers["sample_volume residual"]
    result = viewer.layers["sample_volume patch scores"].metadata["anogan_result"]
    rows = np.arange(residual.data.shape[1])[None, :, None]
    retina = (rows >= np.floor(result.ilm)[:, None, :]) & (rows <= np.ceil(result.bm)[:, None, :])
    mask = read_volume(sample_path(SAMPLE_MASK)).data > 0
    clear = _transparent_share(residual, retina & ~mask)
    assert 0.93 <= clear <= 0.995  # measured 0.97: the retina is no longer covered
    coloured_lesion = 1.0 - _transparent_share(residual, mask)
    assert coloured_lesion >= 4 * (1.0 - clear)  # measured 5x as often in the lesions
    before = _transparent_share(viewer.layers["sample_volume residual (raw)"], retina)
    assert before < 0.01  # the raw residual, coloured from 0, covers it all


def test_real_scan_with_the_synthetic_model_is_marked_unreliable(make_napari_viewer, qtbot, errors):
    """The Kermany sample scored with the bundled synthetic model: the Score widget shows
    the model card under the model and a visible warning beside the results, and the
    Candidate markers list says it is unreliable; the OCTDL model on its own sample fits."""
    from napari_anogan._widgets.viewer import dock_widgets

    viewer = make_napari_viewer()
    widgets = dock_widgets(viewer)
    score, candidates = widgets["Score volume"], widgets["Candidate markers"]
    assert "trained on: synthetic scans" in score.card.text()
    assert "for demonstration" in score.card.text()
    viewer.open_sample("napari-anogan", "real_bscan")  # Kermany NORMAL-1384-1
    assert Path(score.model_path.text()).name == "anogan_small.pt"  # no model named
    with qtbot.waitSignal(score.finished, timeout=300_000) as blocker:
        score.run_button.click()
    assert blocker.args == ["done"]
    assert not errors
    assert not score.fit_warning.isHidden()
    assert "does not fit kermany2018_NORMAL-1384-1" in score.fit_warning.text()
    assert "candidates are not meaningful" in score.fit_warning.text()
    assert "model fit: does not fit" in score.status.text()
    qtbot.waitUntil(lambda: candidates.result() is not None, timeout=10_000)
    assert not candidates.unreliable.isHidden()
    assert candidates.unreliable.text().startswith("UNRELIABLE: the model does not fit")

    viewer.open_sample("napari-anogan", "octdl_bscan")  # names the real model: card follows
    score.image.setCurrentText(viewer.layers[-1].name)
    assert "trained on: real scans" in score.card.text()
    assert "Optovue" in score.card.text()
    with qtbot.waitSignal(score.finished, timeout=300_000) as blocker:
        score.run_button.click()
    assert blocker.args == ["done"]
    assert score.fit_warning.isHidden()
    assert "model fit: fits" in score.status.text()


def test_train_widget_estimates_and_adapts_a_model(make_napari_viewer, qtbot, errors, tmp_path):
    """Train from a folder with 'start from model': the estimate names epochs, updates and
    a duration before training; the adapted model (2 epochs) keeps the initial one's
    architecture, records it and the description in its card, and is complete."""
    from napari_anogan._sample_data import REAL_BSCAN
    from napari_anogan.checkpoint import load_checkpoint
    from napari_anogan.model_card import model_card
    from napari_anogan.resources import BUNDLED_REAL_MODEL, sample_path

    folder = tmp_path / "healthy"
    folder.mkdir()
    (folder / REAL_BSCAN).write_bytes(sample_path(REAL_BSCAN).read_bytes())
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    assert widget.epochs.value() == 0  # shown as "auto": chosen for the data
    assert widget.epochs.specialValueText() == "auto"
    widget.set_paths([str(folder)])
    widget.init_model.setText(str(sample_path(BUNDLED_REAL_MODEL)))
    with qtbot.waitSignal(widget.estimated, timeout=120_000):
        widget.estimate_button.click()
    # 1 B-scan of 64 patches: one update an epoch, as many epochs as the cap allows
    epochs = min(settings.ADAPT_UPDATES, settings.TRAIN_MAX_EPOCHS)
    assert widget.plan["epochs"] == epochs
    assert widget.estimate.text().startswith("about ")
    assert f"{epochs} epochs ({epochs} updates) over 1 B-scans of 1 scans" in widget.estimate.text()
    widget.epochs.setValue(2)
    widget.description.setText("one Spectralis eye")
    widget.output.setText(str(tmp_path / "adapted.pt"))
    with qtbot.waitSignal(widget.finished, timeout=300_000) as blocker:
        widget.train_button.click()
    assert blocker.args == ["done"]
    assert not errors
    model = load_checkpoint(tmp_path / "adapted.pt")
    card = model_card(model)
    assert card["adapted_from"]["file"] == BUNDLED_REAL_MODEL
    assert card["description"] == "one Spectralis eye"
    assert model.training["epochs_done"] == 2
    assert model.encoder is not None
    assert model.feature_bank is not None

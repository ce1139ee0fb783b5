"""Score volume: run :func:`napari_anogan.pipeline.score_volume` on an image layer.

The widget collects the settings, runs the core generator in a napari worker (progress
bar, Cancel) and turns the :class:`~napari_anogan.pipeline.VolumeResult` into the layers
of ``design.md`` (reconstruction, residual, boundaries, patch scores, score bars,
candidates, en face) with :func:`._layers.result_layers`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_anogan._widgets._common import (
    Job,
    LayerCombo,
    StepQueue,
    browse_row,
    bundled_model_path,
    device_choices,
    layer_by_name,
    notify_error,
    notify_info,
    show_progress,
    volume_from_layer,
)
from napari_anogan._widgets._forms import score_parameters
from napari_anogan._widgets._layers import layer_name, residual_layer, result_layers
from napari_anogan._widgets._results import (
    PartialLayers,
    boxes_from_shapes,
    partial_layer_steps,
    result_layer_steps,
    score_job,
    undo_partial_layers,
    update_en_face_markers,
    warm_up,
)
from napari_anogan.errors import InputError
from napari_anogan.progress import ProgressTracker

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

#: Milliseconds between two steps of layer work (see :class:`._common.StepQueue`).
LAYER_STEP_PAUSE_MS = 20

#: Colour of the model-fit warning (the overview figure's).
FIT_WARNING_COLOR = "#d62728"
REGIONS = ("whole volume", "current B-scan", "rectangles of a Shapes layer")


class ScoreWidget(QWidget):
    """Score an OCT image layer with a healthy model and show the results as layers.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (injected by napari).
    """

    #: Emitted when a job ends, with ``"done"``, ``"error"`` or ``"cancelled"``.
    finished = Signal(str)

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import napari.layers

        from napari_anogan.pipeline import ScoreSettings

        self.viewer = viewer
        defaults = ScoreSettings()
        self.image = LayerCombo(viewer, (napari.layers.Image,), accept=_scan_image)
        bundled = bundled_model_path()
        self.model_path = QLineEdit(str(bundled) if bundled else "")
        self.model_path.setPlaceholderText("healthy model checkpoint (.pt)")
        #: The model card of the chosen model (what it was trained on), under its path.
        self.card = QLabel("")
        self.card.setWordWrap(True)
        self.card.setStyleSheet("color: gray;")
        self._card_of: str | None = None
        self.region = QComboBox()
        self.region.addItems(REGIONS)
        self.shapes = LayerCombo(viewer, (napari.layers.Shapes,), accept=_user_shapes)
        # the parameter form (magicgui, initial values from napari_anogan.settings)
        self.params = score_parameters(_mapping_modes())
        self.mode = self.params["mode"].native
        self.steps = self.params["steps"].native
        self.lam = self.params["lam"].native
        self.stride = self.params["stride"].native
        self._default_steps = {"iterative": defaults.steps, "hybrid": defaults.hybrid_steps}
        self.mode.currentTextChanged.connect(self._mode_changed)
        self._mode_changed(self.mode.currentText())
        self.device = QComboBox()
        for label, value in device_choices():
            self.device.addItem(label, value)
        self.run_button = QPushButton("Score")
        self.cancel_button = QPushButton("Cancel")
        self.progress = QProgressBar()
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        #: Shown beside the results when the model does not fit the scan (model_fit).
        self.fit_warning = QLabel("")
        self.fit_warning.setWordWrap(True)
        self.fit_warning.setStyleSheet(f"color: {FIT_WARNING_COLOR}; font-weight: bold;")
        self.fit_warning.setVisible(False)

        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("model", browse_row(self.model_path, "…", self._browse_model))
        form.addRow("", self.card)
        form.addRow("region", self.region)
        form.addRow("shapes", self.shapes)
        for widget in self.params.values():
            form.addRow(widget.label, widget.native)
        form.addRow("device", self.device)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.fit_warning)
        layout.addStretch(1)

        self.job = Job("Scoring", self._on_event, self._on_result, self._on_finish)
        # Layer work on the GUI thread, one step per event-loop turn (see StepQueue), with
        # a pause for input and painting between steps: each new layer is drawn before
        # the next goes in, and no chain of steps holds up the event loop.
        self.layer_steps = StepQueue(budget_ms=0.0, pause_ms=LAYER_STEP_PAUSE_MS, parent=self)
        self._image_layer: Any = None
        self._failed = False
        #: The last job's outcome in words (the widget's status line once it is done).
        self._message = ""
        self.tracker = ProgressTracker()
        #: What this run's partial heatmaps changed (undone if it does not finish).
        self._partial_undo: list = []
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.job.cancel)
        self.region.currentIndexChanged.connect(self._update_enabled)
        self.image.currentTextChanged.connect(self._suggest_model)
        self.model_path.editingFinished.connect(self._show_card)
        self._suggest_model()
        self._show_card()
        viewer.dims.events.current_step.connect(self._follow_slice)
        self._update_enabled()
        # After the widget is shown: imports of the first job, off its critical path.
        QTimer.singleShot(0, warm_up)

    # ------------------------------------------------------------------ settings
    def _suggest_model(self, *_: Any) -> None:
        """Take the model an image layer names (``metadata["model"]``, e.g. a sample's)."""
        layer = self.image.layer()
        suggested = (getattr(layer, "metadata", None) or {}).get("model")
        if suggested and Path(suggested).is_file():
            self.model_path.setText(str(suggested))
            self._show_card()

    def _show_card(self) -> None:
        """Show the chosen model's card (what it was trained on) under its path."""
        from napari_anogan.model_card import card_text

        path = self.model_path.text().strip()
        if path == self._card_of:
            return
        self._card_of = path
        self.card.setText(card_text(path) if path and Path(path).is_file() else "")

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Healthy model", self.model_path.text(), "Checkpoints (*.pt *.pth);;All (*)"
        )
        if path:
            self.model_path.setText(path)
            self._show_card()

    @property
    def busy(self) -> bool:
        """Whether a job runs or its layers are still being put in the viewer."""
        return self.job.running or self.layer_steps.busy

    def _update_enabled(self) -> None:
        busy = self.busy
        for widget in (
            self.image,
            self.model_path,
            self.region,
            self.mode,
            self.steps,
            self.lam,
            self.stride,
            self.device,
            self.run_button,
        ):
            widget.setEnabled(not busy)
        self.shapes.setEnabled(not busy and self.region.currentIndex() == 2)
        self.steps.setEnabled(not busy and self.mode.currentText() in self._default_steps)
        self.cancel_button.setEnabled(busy)

    def _mode_changed(self, mode: str) -> None:
        """Show the chosen mode's own default step count (none for the encoder mode)."""
        self.steps.setEnabled(mode in self._default_steps)
        if mode in self._default_steps:
            self.steps.setValue(self._default_steps[mode])

    def settings(self) -> Any:
        """Return the :class:`~napari_anogan.pipeline.ScoreSettings` shown in the form.

        ``steps`` are the hybrid mode's K in that mode (and the steps of its iterative
        fallback for a model without encoder), the paper's Gamma in the iterative mode.
        """
        from napari_anogan.pipeline import ScoreSettings

        steps = int(self.steps.value())
        mode = self.mode.currentText()
        return ScoreSettings(
            mode=mode,
            steps=steps,
            hybrid_steps=steps if mode == "hybrid" else ScoreSettings().hybrid_steps,
            lam=float(self.lam.value()),
            stride=int(self.stride.value()),
            device=str(self.device.currentData()),
        )

    def _region(self, layer: Any) -> dict[str, Any]:
        """Keyword arguments ``slices`` / ``boxes`` for the chosen region."""
        choice = self.region.currentIndex()
        if choice == 1:
            world = list(self.viewer.dims.point)
            index = round(float(layer.world_to_data(world)[0])) if layer.ndim == 3 else 0
            return {"slices": [max(0, min(index, layer.data.shape[0] - 1))]}
        if choice == 2:
            shapes = self.shapes.layer()
            if shapes is None or len(shapes.data) == 0:
                raise InputError("choose a Shapes layer with at least one rectangle to score")
            boxes = boxes_from_shapes(shapes, layer)
            if not boxes:
                raise InputError(f"the shapes of {shapes.name!r} do not overlap {layer.name!r}")
            return {"boxes": boxes}
        return {}

    # ------------------------------------------------------------------ running
    def run(self) -> None:
        """Start scoring the chosen image layer (errors become notifications)."""
        if self.busy:
            return
        try:
            layer = self.image.layer()
            if layer is None:
                raise InputError("open an OCT image first (File > Open, or a sample)")
            model = self.model_path.text().strip()
            if not model:
                raise InputError("choose a healthy model file")
            if not Path(model).is_file():
                raise InputError("model file not found", model)
            region = self._region(layer)
            volume = volume_from_layer(layer)
            settings = self.settings()
        except Exception as exc:
            self.status.setText(notify_error(exc, "Scoring"))
            return
        self._image_layer = layer
        self._failed = False
        self._message = ""
        self._partial_undo = []
        self.tracker = ProgressTracker()
        self.progress.setRange(0, 0)
        self.progress.setFormat("starting: %p%")
        self.status.setText(f"scoring {layer.name}…")
        self.fit_warning.setVisible(False)
        geometry = {
            "image_name": layer.name,
            "scale": tuple(layer.scale),
            "translate": tuple(layer.translate),
            "ndim": layer.ndim,
        }
        if layer_by_name(self.viewer, layer_name(layer.name, "residual")) is None:
            self._show_partial(PartialLayers.blank(volume.data.shape, geometry))
        self.job.start(score_job, volume, model, settings, region, geometry, self.layer_steps.idle)
        self._update_enabled()

    def _on_event(self, event: Any) -> None:
        show_progress(self.progress, self.status, self.tracker.update(event))
        partial = getattr(event, "partial", None)
        if partial is not None:
            self._show_partial(partial)
            if not self.layer_steps.busy:  # nothing to show: let the worker go on
                self.layer_steps.idle.set()

    def _on_result(self, outcome: tuple[Any, list]) -> None:
        result, layers = outcome
        self._show(result, layers)

    def _on_finish(self, outcome: str) -> None:
        # The worker is done; the result's layers may still be going in, step by step.
        self.layer_steps.when_idle(lambda: self._finish(outcome))

    def _finish(self, outcome: str) -> None:
        if self._failed and outcome == "done":
            outcome = "error"
        if outcome != "done":  # no half-made result: undo the partial heatmaps
            undo_partial_layers(self.viewer, self._partial_undo)
        self._partial_undo = []
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if outcome == "done" else 0)
        self.progress.setFormat(
            {"done": "done", "cancelled": "cancelled", "error": "failed"}[outcome]
        )
        if outcome == "done":
            self.status.setText(self._message or "done")
        elif outcome == "cancelled":
            self.status.setText("cancelled: the earlier results, if any, are back")
        else:
            self.status.setText(self._message or self.job.error or "failed")
        self._update_enabled()
        self.finished.emit(outcome)

    def _show_partial(self, partial: Any) -> None:
        """Show the residual heatmap of a partial result while scoring runs.

        The residual layer is added, or updated in place (cheap: its data and contrast
        limits come ready from the worker, :class:`PartialLayers`); the other layers
        follow with the final result. A newer partial replaces one not yet shown.
        """
        layer = self._image_layer
        if layer is None:
            return
        if not isinstance(partial, PartialLayers):  # a bare VolumeResult (library callers)
            residual = residual_layer(
                partial,
                layer.name,
                scale=tuple(layer.scale),
                translate=tuple(layer.translate),
                ndim=layer.ndim,
            )
            partial = PartialLayers([residual])
        viewer, name = self.viewer, layer.name
        undo = self._partial_undo
        self.layer_steps.submit("partial", lambda: partial_layer_steps(viewer, partial, name, undo))

    def _show(self, result: Any, layers: list | None = None) -> None:
        """Add (or replace) the result layers, all or none, one layer per event-loop turn.

        ``layers`` are the layers already built in the worker (see :func:`score_job`);
        without them they are built here from ``result``.
        """
        layer = self._image_layer
        if layer is None:
            return
        if layers is None:
            layers = self._layer_tuples(result, layer)
        viewer, name = self.viewer, layer.name
        self.status.setText(f"adding the layers of {name}…")

        def done() -> None:
            self._follow_slice()
            self._message = result_message(result)
            self.show_fit(result, name)
            notify_info(self._message)

        def failed(exc: BaseException) -> None:
            self._failed = True
            self._message = notify_error(exc, "Scoring")

        self.layer_steps.submit(
            "result", lambda: result_layer_steps(viewer, layers, name), done, failed
        )

    def show_fit(self, result: Any, scan: str) -> None:
        """Show, beside the results, that the model does not fit the scan (or hide it)."""
        from napari_anogan.scoring.fit import fit_message

        model = Path(self.model_path.text().strip()).name
        message = fit_message(getattr(result, "model_fit", None) or {}, model, scan)
        self.fit_warning.setText(message or "")
        self.fit_warning.setVisible(bool(message))

    def _layer_tuples(self, result: Any, layer: Any) -> list:
        return result_layers(
            result,
            layer.name,
            scale=tuple(layer.scale),
            translate=tuple(layer.translate),
            ndim=layer.ndim,
        )

    def _follow_slice(self, event: Any = None) -> None:
        try:
            update_en_face_markers(self.viewer)
        except RuntimeError:  # this widget was deleted while the viewer lives on
            logger.debug("en-face marker update skipped", exc_info=True)


def result_message(result: Any) -> str:
    """Say what a scoring result found, in full (the status line and the notification)."""
    n = len(result.candidates)
    what = "B-scan" if int(result.shape[0]) == 1 else "volume"
    line = (
        f"{result.name}: {what} score {result.volume_score:.4g}, {n} candidate "
        f"region{'s' if n != 1 else ''} above the "
        f"{float((result.settings or {}).get('percentile_threshold', 99)):g}th healthy percentile"
    )
    fit = getattr(result, "model_fit", None)
    if fit:
        line += f"; model fit: {str(fit.get('verdict', '?')).replace('_', ' ')}"
    return line + " (see Candidate markers)"


def _scan_image(layer: Any) -> bool:
    """Grey images the user opened (not RGB, not the plugin's result or sample layers)."""
    metadata = layer.metadata or {}
    return not layer.rgb and "anogan_image" not in metadata and "anogan_samples" not in metadata


def _user_shapes(layer: Any) -> bool:
    """Shapes drawn by the user (not the plugin's own result layers)."""
    return "anogan_image" not in (layer.metadata or {})


def _mapping_modes() -> list[str]:
    try:
        from napari_anogan.mapping import MAPPING_MODES

        return list(MAPPING_MODES)
    except ImportError:
        return ["iterative"]

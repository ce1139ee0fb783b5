"""Train healthy model: run :func:`napari_anogan.pipeline.train_from_paths` in a worker.

Shows a progress bar, live D/G loss curves and a layer with a grid of generated samples
refreshed while training runs. Cancel stops at the next batch; the checkpoint of the
last finished epoch stays on disk and Resume continues from it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_anogan._widgets._common import (
    Job,
    browse_row,
    device_choices,
    notify_error,
    notify_info,
    show_progress,
)
from napari_anogan._widgets._forms import train_parameters
from napari_anogan._widgets._loss_plot import LossPlot
from napari_anogan.errors import InputError
from napari_anogan.progress import ProgressTracker

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

SAMPLES_LAYER = "anogan training samples"


def _presets() -> list[str]:
    from napari_anogan.models.presets import PRESETS

    return [name for name in PRESETS if name != "tiny"] + ["tiny"]


class TrainWidget(QWidget):
    """Train a healthy AnoGAN model from healthy scans, in the background.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (injected by napari).
    """

    #: Emitted when a job ends, with ``"done"``, ``"error"`` or ``"cancelled"``.
    finished = Signal(str)
    #: Emitted when an estimate ends, with its outcome.
    estimated = Signal(str)

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.inputs = QListWidget()
        self.inputs.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.inputs.setMaximumHeight(90)
        add_files = QPushButton("Add files…")
        add_folder = QPushButton("Add folder…")
        remove = QPushButton("Remove")
        # the parameter form (magicgui, initial values from napari_anogan.settings)
        self.params = train_parameters(_presets())
        self.preset = self.params["preset"].native
        self.epochs = self.params["epochs"].native
        self.epochs.setSpecialValueText("auto")  # 0: chosen for the data
        self.time_limit = self.params["time_limit"].native
        self.time_limit.setSpecialValueText("none")
        self.patches_per_scan = self.params["patches_per_scan"].native
        self.reference_steps = self.params["reference_steps"].native
        self.device = QComboBox()
        for label, value in device_choices():
            self.device.addItem(label, value)
        self.folders = QComboBox()
        self.folders.addItems(["auto", "volume", "collection"])
        self.folders.setToolTip(
            "a folder of B-scan images is one volume (exported slices of one scan) or a "
            "collection of independent B-scans; auto: a volume when its images share one "
            "size and their names differ in one number only"
        )
        self.init_model = QLineEdit()
        self.init_model.setPlaceholderText("optional: a model to adapt (a few scans suffice)")
        self.description = QLineEdit()
        self.description.setPlaceholderText("for the model card: device, protocol, cohort")
        self.output = QLineEdit()
        self.output.setPlaceholderText("model file to write, e.g. healthy_model.pt")
        self.estimate_button = QPushButton("Estimate time")
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)
        self.train_button = QPushButton("Train")
        self.cancel_button = QPushButton("Cancel")
        self.resume_button = QPushButton("Resume")
        self.progress = QProgressBar()
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.plot = LossPlot()

        file_buttons = QHBoxLayout()
        for button in (add_files, add_folder, remove):
            file_buttons.addWidget(button)
        form = QFormLayout()
        form.addRow("folders are", self.folders)
        form.addRow("start from model", browse_row(self.init_model, "…", self._browse_init))
        for widget in self.params.values():
            form.addRow(widget.label, widget.native)
        form.addRow("device", self.device)
        form.addRow("description", self.description)
        form.addRow("output", browse_row(self.output, "…", self._browse_output))
        run_buttons = QHBoxLayout()
        for button in (self.train_button, self.cancel_button, self.resume_button):
            run_buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("healthy scans (files or folders)"))
        layout.addWidget(self.inputs)
        layout.addLayout(file_buttons)
        layout.addLayout(form)
        layout.addWidget(self.estimate_button)
        layout.addWidget(self.estimate)
        layout.addLayout(run_buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.addStretch(1)

        self.job = Job("Training", self._on_event, self._on_result, self._on_finish)
        self.plan_job = Job("Estimating", lambda event: None, self._on_plan, self._on_plan_end)
        self.result: Any = None
        #: The last estimate (:func:`~napari_anogan.pipeline.training_plan`), if any.
        self.plan: dict | None = None
        self.tracker = ProgressTracker()
        add_files.clicked.connect(self._add_files)
        add_folder.clicked.connect(self._add_folder)
        remove.clicked.connect(self._remove_selected)
        self.train_button.clicked.connect(lambda: self.start(resume=False))
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.cancel_button.clicked.connect(self.job.cancel)
        self.estimate_button.clicked.connect(self.start_estimate)
        self._editors = (
            self.inputs, add_files, add_folder, remove, self.preset, self.epochs,
            self.time_limit, self.patches_per_scan, self.reference_steps, self.device,
            self.output, self.folders, self.init_model, self.description,
            self.train_button, self.resume_button, self.estimate_button,
        )  # fmt: skip
        self._update_enabled()

    # ------------------------------------------------------------------ inputs
    def set_paths(self, paths: list[str | Path]) -> None:
        """Replace the list of healthy inputs."""
        self.inputs.clear()
        self.inputs.addItems([str(p) for p in paths])

    def paths(self) -> list[str]:
        """Return the healthy inputs listed."""
        return [self.inputs.item(i).text() for i in range(self.inputs.count())]

    def _add_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Healthy scans")
        self.inputs.addItems(files)

    def _add_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of healthy scans")
        if folder:
            self.inputs.addItem(folder)

    def _remove_selected(self) -> None:
        for item in self.inputs.selectedItems():
            self.inputs.takeItem(self.inputs.row(item))

    def _browse_init(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Model to adapt", self.init_model.text(), "Checkpoints (*.pt)"
        )
        if path:
            self.init_model.setText(path)

    def _browse_output(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Model file", self.output.text(), "Checkpoints (*.pt)"
        )
        if path:
            self.output.setText(path)

    def _options(self) -> dict[str, Any]:
        """Return the form's training options, as :func:`train_from_paths` takes them."""
        init = self.init_model.text().strip() or None
        if init is not None and not Path(init).is_file():
            raise InputError("model to start from not found", init)
        epochs = int(self.epochs.value())
        return {
            "preset": self.preset.currentText(),
            "epochs": epochs or None,
            "patches_per_scan": int(self.patches_per_scan.value()),
            "device": str(self.device.currentData()),
            "init": init,
            "folders": self.folders.currentText(),
        }

    def _update_enabled(self) -> None:
        busy = self.job.running or self.plan_job.running
        for widget in self._editors:
            widget.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)

    # ------------------------------------------------------------------ running
    def start(self, resume: bool = False) -> None:
        """Start (or resume) training; errors become notifications."""
        from napari_anogan.pipeline import train_from_paths

        try:
            paths = self.paths()
            if not paths:
                raise InputError("add healthy scans (files or folders) to train on")
            output = self.output.text().strip()
            if not output:
                raise InputError("choose the model file to write")
            if resume and not Path(output).is_file():
                raise InputError("no checkpoint to resume from", output)
            if not Path(output).parent.is_dir():
                raise InputError("output folder does not exist", Path(output).parent)
            options = self._options()
        except Exception as exc:
            self.status.setText(notify_error(exc, "Training"))
            return
        if not resume:
            self.plot.clear()
        self.tracker = ProgressTracker()
        self.progress.setRange(0, 0)
        self.progress.setFormat("starting: %p%")
        self.status.setText("resuming…" if resume else "starting…")
        self.job.start(
            train_from_paths,
            paths,
            output,
            **options,
            resume=resume,
            train_overrides={"reference_steps": int(self.reference_steps.value())},
            time_limit=float(self.time_limit.value()) or None,
            description=self.description.text().strip(),
        )
        self._update_enabled()

    def start_estimate(self) -> None:
        """Estimate the training time of the listed scans with these options (a worker)."""
        try:
            paths = self.paths()
            if not paths:
                raise InputError("add healthy scans (files or folders) to train on")
            options = self._options()
        except Exception as exc:
            self.estimate.setText(notify_error(exc, "Estimate"))
            return
        self.estimate.setText("estimating: counting B-scans, timing a few updates…")
        self.plan_job.start(_plan, paths, **options)
        self._update_enabled()

    def _on_plan(self, plan: dict) -> None:
        self.plan = plan
        self.estimate.setText(plan_text(plan, float(self.time_limit.value()) or None))

    def _on_plan_end(self, outcome: str) -> None:
        if outcome == "error":
            self.estimate.setText(self.plan_job.error or "estimate failed")
        self._update_enabled()
        self.estimated.emit(outcome)

    def _on_event(self, event: Any) -> None:
        kind = getattr(event.kind, "value", event.kind)
        if kind == "batch" and event.losses:
            self.plot.add(event.losses)
        if event.samples is not None:
            self._show_samples(event.samples)
        # stage (train GAN, reference, train encoder, ...), epochs and batches, time left
        show_progress(self.progress, self.status, self.tracker.update(event))

    def _show_samples(self, samples: np.ndarray) -> None:
        """Show (or refresh) the grid of generated samples beside the data."""
        grid = np.asarray(samples, dtype=np.float32)
        if SAMPLES_LAYER in self.viewer.layers:
            layer = self.viewer.layers[SAMPLES_LAYER]
            layer.data = grid
            return
        scale, translate = samples_placement(self.viewer, grid.shape)
        self.viewer.add_image(
            grid,
            name=SAMPLES_LAYER,
            colormap="gray",
            contrast_limits=(-1.0, 1.0),
            scale=scale,
            translate=translate,
            metadata={"anogan_samples": True},
        )

    def _on_result(self, result: Any) -> None:
        self.result = result
        path = getattr(result, "path", None) or self.output.text().strip()
        notify_info(f"healthy model written to {path}")

    def _on_finish(self, outcome: str) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if outcome == "done" else 0)
        self.progress.setFormat(
            {"done": "done", "cancelled": "cancelled", "error": "failed"}[outcome]
        )
        if outcome == "cancelled":
            self.status.setText(
                "cancelled: the checkpoint of the last finished epoch is kept; Resume continues"
            )
        elif outcome == "error":
            self.status.setText(self.job.error or "failed")
        else:
            path = getattr(self.result, "path", None) or self.output.text().strip()
            self.status.setText(f"done: healthy model written to {path}")
        self._update_enabled()
        self.finished.emit(outcome)


def _plan(paths: list[str], **options: Any):
    """:func:`~napari_anogan.pipeline.training_plan` as a job (a generator) for a worker."""
    from napari_anogan.events import EventKind, ProgressEvent
    from napari_anogan.pipeline import training_plan

    yield ProgressEvent(EventKind.STAGE, 0, 1, message="estimating the training time")
    return training_plan(paths, **options)


def plan_text(plan: dict, time_limit: float | None = None) -> str:
    """Say what training will do and how long it should take (the widget's estimate line).

    Examples
    --------
    >>> plan_text({"scans": 5, "bscans": 5, "epochs": 80, "updates": 400, "seconds": 75.0})
    'about 1 min 15 s on this machine: 80 epochs (400 updates) over 5 B-scans of 5 scans'
    """
    from napari_anogan.progress import format_duration

    text = (
        f"about {format_duration(plan['seconds'])} on this machine: {plan['epochs']} epochs "
        f"({plan['updates']} updates) over {plan['bscans']} B-scans of {plan['scans']} scans"
    )
    if time_limit and plan["seconds"] > 60 * time_limit:
        text += f"; the {time_limit:g} min limit will stop it early (a usable model still)"
    return text


def samples_placement(
    viewer: Any, grid_shape: tuple[int, ...]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Scale and translate that show the sample grid to the right of the data.

    The grid is sized to the height of what the viewer shows (it would be a speck beside
    a scan scaled in micrometres otherwise) and placed just right of it.
    """
    height = grid_shape[-2]
    if len(viewer.layers) == 0:
        return (1.0, 1.0), (0.0, 0.0)
    low, high = np.asarray(viewer.layers.extent.world, dtype=float)[:, -2:]
    span = high - low
    size = float(span[0]) if span[0] > 0 else float(height)
    step = size / max(height, 1)
    return (step, step), (float(low[0]), float(high[1] + 0.05 * max(span[1], size)))

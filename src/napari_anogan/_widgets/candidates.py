"""Candidate markers: browse, re-threshold and keep/reject the candidate regions.

The candidates themselves come from the core (:func:`napari_anogan.scoring.candidates.
find_candidates`); this widget shows them in a table ranked by score (the columns that
fit a dock: rank, B-scans, score, healthy percentile, decision; the rest in each row's
tooltip and in a details line for the selected region), moves the viewer to a region
when its row is clicked, stores keep/reject decisions in the candidate layer's
features, and recomputes candidates and score-bar colours live when the threshold
changes. It also sets the residual heatmap's threshold and shows the legend of the
heatmap, the score bars and the boxes (:class:`._legend.LegendPanel`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_anogan import settings as defaults
from napari_anogan._widgets._common import (
    RESULT_KEY,
    LayerCombo,
    is_result_layer,
    layer_by_name,
    notify_error,
    zoom_to_box,
)
from napari_anogan._widgets._layers import (
    HEATMAP_KEY,
    bar_colors,
    candidate_features,
    candidate_rectangles,
    decision_colors,
    layer_name,
    pixel_reference_from_metadata,
)
from napari_anogan._widgets._legend import LegendPanel
from napari_anogan.scoring.display import HeatmapThreshold, heatmap_range

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

# What fits a dock: rank, where, how anomalous, the decision. Position, size, mean score
# and patch count are in each row's tooltip and in the details line of the selected row.
COLUMNS = ("#", "B-scans", "score", "pct", "decision")
TOOLTIPS = (
    "rank by highest patch score",
    "first–last B-scan of the region",
    "highest patch score of the region",
    "healthy percentile of the highest score (100: above every healthy patch)",
    "keep / reject (stored in the candidates layer's features)",
)
DECISION_COLUMN = COLUMNS.index("decision")
THRESHOLD_MODES = {"healthy percentile": "healthy_percentile", "anomaly score": "anomaly_score"}


def region_key(candidate: Mapping[str, Any]) -> tuple:
    """Identity of a region, to carry decisions over when candidates are recomputed."""
    return tuple(
        int(candidate[k]) for k in ("slice_start", "slice_end", "row", "col", "height", "width")
    )


def recompute_candidates(
    result: Any,
    threshold: float,
    by: str = "healthy_percentile",
    decisions: Mapping[tuple, str] | None = None,
) -> list[dict]:
    """Candidates of ``result`` at a new threshold, keeping known decisions.

    Parameters
    ----------
    result : VolumeResult
        A scoring result (its patch table and stride).
    threshold : float
        Threshold on the column ``by``.
    by : str
        ``healthy_percentile`` or ``anomaly_score``.
    decisions : mapping, optional
        :func:`region_key` -> ``keep``/``reject`` of earlier candidates.

    Returns
    -------
    list of dict
        Ranked candidates with a ``decision`` entry.
    """
    from napari_anogan.scoring.candidates import find_candidates

    stride = int((result.settings or {}).get("stride", 32))
    candidates = find_candidates(result.patches, stride=stride, threshold=threshold, by=by)
    decisions = decisions or {}
    for cand in candidates:
        cand["decision"] = decisions.get(region_key(cand), "")
    return candidates


def youden_threshold(path: str | Path) -> float:
    """Read the Youden threshold on the anomaly score from an evaluation's ``metrics.json``.

    Parameters
    ----------
    path : str or Path
        ``metrics.json`` written by ``napari-anogan evaluate`` (same model and mapping
        settings as the scored image, or the threshold means little).

    Returns
    -------
    float
        ``metrics["anomaly_score"]["youden"]["threshold"]`` (patch level when the
        evaluation had masks, else B-scan level).

    Raises
    ------
    InputError
        If the file cannot be read or holds no anomaly-score Youden threshold.
    """
    from napari_anogan.errors import InputError

    try:
        metrics = json.loads(Path(path).read_text(encoding="utf-8"))
        value = float(metrics["anomaly_score"]["youden"]["threshold"])
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the evaluation metrics ({exc})", path) from exc
    except (KeyError, TypeError) as exc:
        raise InputError(
            "no Youden threshold of the anomaly score in this file; expected the "
            "metrics.json of 'napari-anogan evaluate'",
            path,
        ) from exc
    if not np.isfinite(value):
        raise InputError("the Youden threshold is not a finite number", path)
    return value


def peak_slice(candidate: Mapping[str, Any], result: Any | None = None) -> int:
    """Return the B-scan of the candidate's highest-scoring patch (else its middle one).

    Shapes are drawn on whole B-scans, so the viewer must go to an integer slice.
    """
    members = candidate.get("patch_index")
    if result is not None and members:
        members = np.asarray(members, dtype=int)
        column = (result.settings or {}).get("score_column", "anomaly_score")
        scores = np.asarray(result.patches[column], dtype=float)[members]
        return int(np.asarray(result.patches["slice"])[members[np.nanargmax(scores)]])
    return (int(candidate["slice_start"]) + int(candidate["slice_end"])) // 2


class CandidatesWidget(QWidget):
    """Table of candidate regions of a scored image, with threshold and keep/reject.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (injected by napari).
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import napari.layers

        self.viewer = viewer
        self.source = LayerCombo(viewer, (napari.layers.Shapes,), accept=is_result_layer)
        self.mode = QComboBox()
        self.mode.addItems(list(THRESHOLD_MODES))
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 100.0)
        self.threshold.setDecimals(4)
        self.threshold.setSingleStep(0.5)
        self.threshold.setValue(defaults.PERCENTILE_THRESHOLD)
        self.threshold.setToolTip(
            "candidates: patches at or above this value; score bars light up from it"
        )
        self.heatmap_percentile = QDoubleSpinBox()
        self.heatmap_percentile.setRange(50.0, 100.0)
        self.heatmap_percentile.setDecimals(1)
        self.heatmap_percentile.setSingleStep(0.5)
        self.heatmap_percentile.setValue(defaults.HEATMAP_PERCENTILE)
        self.heatmap_percentile.setToolTip(
            "residual heatmap: transparent at and below this percentile of the healthy pixel "
            "residual (stored in the residual layer's metadata)"
        )
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        for column, tip in enumerate(TOOLTIPS):
            self.table.horizontalHeaderItem(column).setToolTip(tip)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        for column in range(len(COLUMNS)):  # every column shares the dock's width
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Stretch)
        header.setMinimumSectionSize(24)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.details = QLabel("select a region for its position, size and mean score")
        self.details.setWordWrap(True)
        self.legend = LegendPanel()
        self.keep_button = QPushButton("Keep")
        self.reject_button = QPushButton("Reject")
        self.clear_button = QPushButton("Undecided")
        self.youden_button = QPushButton("Youden threshold from evaluation…")
        self.youden_button.setToolTip(
            "use the Youden operating point of a metrics.json from 'napari-anogan evaluate'"
        )
        self.summary = QLabel("no scored image yet: use Score volume")
        self.summary.setWordWrap(True)
        #: Marks the list unreliable when the model does not fit the scan (model_fit).
        self.unreliable = QLabel("")
        self.unreliable.setWordWrap(True)
        self.unreliable.setStyleSheet("color: #d62728; font-weight: bold;")
        self.unreliable.setVisible(False)

        form = QFormLayout()
        form.addRow("results of", self.source)
        form.addRow("threshold on", self.mode)
        form.addRow("threshold", self.threshold)
        form.addRow("", self.youden_button)
        form.addRow("heatmap above p", self.heatmap_percentile)
        buttons = QHBoxLayout()
        for button in (self.keep_button, self.reject_button, self.clear_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.summary)
        layout.addWidget(self.unreliable)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.details)
        layout.addLayout(buttons)
        layout.addWidget(self.legend)

        self.candidates: list[dict] = []
        # keep/reject remembered by region, so a decision survives a threshold round trip
        self._decisions: dict[tuple, str] = {}
        self.source.currentTextChanged.connect(self._load)
        self.mode.currentTextChanged.connect(self._mode_changed)
        self.threshold.valueChanged.connect(self.apply_threshold)
        self.heatmap_percentile.valueChanged.connect(self.apply_heatmap_threshold)
        self.table.itemSelectionChanged.connect(self._row_selected)
        self.keep_button.clicked.connect(lambda: self.decide("keep"))
        self.reject_button.clicked.connect(lambda: self.decide("reject"))
        self.clear_button.clicked.connect(lambda: self.decide(""))
        self.youden_button.clicked.connect(self._browse_youden)
        self._load()

    # ------------------------------------------------------------------ state
    def result(self) -> Any | None:
        """Return the VolumeResult of the chosen scored image, or None."""
        layer = self.source.layer()
        return None if layer is None else layer.metadata[RESULT_KEY]

    def image_name(self) -> str | None:
        """Return the name of the scored image layer."""
        layer = self.source.layer()
        return None if layer is None else layer.metadata.get("anogan_image")

    def _layer(self, kind: str) -> Any | None:
        name = self.image_name()
        if name is None:
            return None
        full = layer_name(name, kind)
        return layer_by_name(self.viewer, full)

    def _load(self, *_: Any) -> None:
        """Show the candidates stored in the chosen result's candidate layer."""
        layer = self._layer("candidates")
        result = self.result()
        self._load_heatmap()
        if result is None:
            self.candidates = []
            self._fill_table()
            return
        threshold = (layer.metadata.get("threshold") if layer is not None else None) or float(
            (result.settings or {}).get("percentile_threshold", defaults.PERCENTILE_THRESHOLD)
        )
        if not np.isfinite(np.asarray(result.patches.get("healthy_percentile", []), float)).any():
            # a model without a healthy reference: only raw scores can be thresholded
            self.mode.blockSignals(True)
            self.mode.setCurrentText("anomaly score")
            self.mode.blockSignals(False)
            self._set_score_range(result)
            self.candidates = []
            self._decisions = {}
            self.apply_threshold()
            return
        if self.mode.currentText() != "healthy percentile":
            self.mode.blockSignals(True)
            self.mode.setCurrentText("healthy percentile")
            self.threshold.setRange(0.0, 100.0)
            self.mode.blockSignals(False)
        self.threshold.blockSignals(True)
        self.threshold.setValue(float(threshold))
        self.threshold.blockSignals(False)
        self.candidates = [dict(c, decision=c.get("decision", "")) for c in result.candidates]
        if layer is not None and len(layer.features):
            decisions = _decisions_from_features(layer.features)
            for cand in self.candidates:
                cand["decision"] = decisions.get(int(cand["rank"]), cand["decision"])
        self._decisions = {region_key(c): c["decision"] for c in self.candidates if c["decision"]}
        self._fill_table()

    def _mode_changed(self, text: str) -> None:
        by = THRESHOLD_MODES[text]
        result = self.result()
        self.threshold.blockSignals(True)
        if by == "healthy_percentile":
            self.threshold.setRange(0.0, 100.0)
            self.threshold.setValue(defaults.PERCENTILE_THRESHOLD)
        else:
            self._set_score_range(result)
        self.threshold.blockSignals(False)
        self.apply_threshold()

    def _set_score_range(self, result: Any | None) -> None:
        """Threshold range and default (99th percentile of this scan) for raw scores."""
        scores = np.asarray(result.patches["anomaly_score"]) if result is not None else []
        high = float(np.nanmax(scores)) * 2 if len(scores) else 1e6
        self.threshold.blockSignals(True)
        self.threshold.setRange(0.0, max(high, 1.0))
        self.threshold.setValue(float(np.nanpercentile(scores, 99)) if len(scores) else 0.0)
        self.threshold.blockSignals(False)

    # ------------------------------------------------------------------ actions
    def apply_threshold(self, *_: Any) -> None:
        """Recompute candidates at the current threshold; update layers and table."""
        result = self.result()
        if result is None:
            return
        try:
            by = THRESHOLD_MODES[self.mode.currentText()]
            value = float(self.threshold.value())
            self.candidates = recompute_candidates(result, value, by, self._decisions)
            self._update_candidate_layer(value)
            bars = self._layer("score bars")
            if bars is not None and len(bars.data) and by == "healthy_percentile":
                bars.face_color = bar_colors(_features_dict(bars.features), value)
        except Exception as exc:
            notify_error(exc, "Updating candidates")
            return
        self._fill_table()

    def _load_heatmap(self) -> None:
        """Show the residual layer's threshold in the spin box and the legend."""
        layer = self._layer("residual")
        shown = (getattr(layer, "metadata", None) or {}).get(HEATMAP_KEY)
        if layer is None or not shown:
            self.legend.show_heatmap(None, None)
            return
        self.heatmap_percentile.blockSignals(True)
        self.heatmap_percentile.setValue(float(shown["percentile"]))
        self.heatmap_percentile.blockSignals(False)
        self.legend.show_heatmap(shown, layer.contrast_limits)

    def apply_heatmap_threshold(self, *_: Any) -> None:
        """Make the residual heatmap transparent up to the chosen healthy percentile.

        The threshold is read from the pixel reference the layer stored (no rescoring),
        set as the layer's lower contrast limit and stored in its metadata.
        """
        layer = self._layer("residual")
        reference = pixel_reference_from_metadata(getattr(layer, "metadata", None) or {})
        if layer is None or reference is None:
            return
        percentile = float(self.heatmap_percentile.value())
        threshold = HeatmapThreshold(reference.value_at(percentile), percentile, reference)
        low, high = threshold.value, float(layer.contrast_limits[1])
        if high <= low:  # the old top of the range is below the new threshold
            high = heatmap_range(layer.data, low)[1]
        range_low, range_high = (float(v) for v in layer.contrast_limits_range)
        if low < range_low or high > range_high:  # napari clips limits to this range
            layer.contrast_limits_range = (min(low, range_low), max(high, range_high))
        layer.contrast_limits = (low, high)
        layer.metadata = {**layer.metadata, HEATMAP_KEY: threshold.to_dict()}
        self.legend.show_heatmap(layer.metadata[HEATMAP_KEY], layer.contrast_limits)

    def _browse_youden(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Evaluation metrics", "", "JSON (*.json)")
        if path:
            self.load_youden(path)

    def load_youden(self, path: str | Path) -> None:
        """Set the threshold to the anomaly score's Youden point of an evaluation."""
        try:
            value = youden_threshold(path)
        except Exception as exc:
            notify_error(exc, "Loading the Youden threshold")
            return
        self.mode.blockSignals(True)
        self.mode.setCurrentText("anomaly score")
        self.mode.blockSignals(False)
        self.threshold.blockSignals(True)
        self.threshold.setRange(0.0, max(self.threshold.maximum(), value * 2, 1.0))
        self.threshold.setValue(value)
        self.threshold.blockSignals(False)
        self.apply_threshold()

    def decide(self, decision: str) -> None:
        """Store ``keep``/``reject`` (or undecided ``""``) for the selected candidate."""
        row = self.selected_row()
        if row is None:
            return
        self.candidates[row]["decision"] = decision
        self._decisions[region_key(self.candidates[row])] = decision
        layer = self._layer("candidates")
        if layer is not None and len(layer.data):
            features = layer.features.copy()
            rank = self.candidates[row]["rank"]
            features.loc[features["rank"] == rank, "decision"] = decision
            layer.features = features
            layer.edge_color = decision_colors(features["decision"])
        item = self.table.item(row, DECISION_COLUMN)
        if item is not None:
            item.setText(decision)
        self.details.setText(candidate_details(self.candidates[row], self.result()))

    def selected_row(self) -> int | None:
        """Return the index of the selected candidate, or None."""
        rows = {index.row() for index in self.table.selectedIndexes()}
        return min(rows) if rows else None

    def select(self, row: int) -> None:
        """Select a candidate row (as a click would): the viewer goes to it."""
        self.table.selectRow(row)

    def _row_selected(self) -> None:
        row = self.selected_row()
        if row is not None and row < len(self.candidates):
            self.details.setText(candidate_details(self.candidates[row], self.result()))
            self.go_to(self.candidates[row])

    def go_to(self, candidate: Mapping[str, Any]) -> None:
        """Move the viewer to the candidate's peak B-scan and zoom on its box."""
        image = layer_by_name(self.viewer, self.image_name() or "")
        if image is None:
            return
        s = peak_slice(candidate, self.result())
        r0, c0 = float(candidate["row"]), float(candidate["col"])
        r1, c1 = r0 + float(candidate["height"]), c0 + float(candidate["width"])
        lo = np.array([s, r0, c0][-image.ndim :])
        hi = np.array([s, r1, c1][-image.ndim :])
        world_lo = np.asarray(image.data_to_world(lo))
        world_hi = np.asarray(image.data_to_world(hi))
        if image.ndim == 3:
            self.viewer.dims.set_point(self.viewer.dims.ndim - 3, float(world_lo[0]))
        zoom_to_box(self.viewer, world_lo, world_hi)

    # ------------------------------------------------------------------ views
    def _update_candidate_layer(self, threshold: float) -> None:
        layer = self._layer("candidates")
        if layer is None:
            return
        image = self.viewer.layers[self.image_name()]
        features = candidate_features(self.candidates)
        rects = candidate_rectangles(self.candidates, ndim=image.ndim)
        layer.data = []
        if rects:
            layer.add_rectangles(rects, edge_color=decision_colors(features["decision"]))
        layer.features = features
        layer.metadata = {**layer.metadata, "threshold": threshold}
        layer.refresh()

    def _fill_table(self) -> None:
        self.table.setRowCount(len(self.candidates))
        result = self.result()
        for i, cand in enumerate(self.candidates):
            cells = (
                str(cand["rank"]),
                _slices(cand),
                f"{cand['max_score']:.4g}",
                _percent(cand.get("healthy_percentile")),
                str(cand.get("decision", "")),
            )
            tip = candidate_details(cand, result)
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                item.setToolTip(tip)
                self.table.setItem(i, j, item)
        row = self.selected_row()
        if row is None or row >= len(self.candidates):
            self.details.setText("select a region for its position, size and mean score")
        fit = (getattr(result, "model_fit", None) or {}) if result is not None else {}
        misfit = fit.get("verdict") == "does_not_fit"
        self.unreliable.setVisible(misfit)
        self.unreliable.setText(
            "UNRELIABLE: the model does not fit this scan (its typical patch is "
            f"{fit.get('median_excess') or 0:.2f} x the healthy 99th percentile): these "
            "candidates are not meaningful; adapt or train a model on healthy scans of "
            "this device"
            if misfit
            else ""
        )
        if result is None:
            self.summary.setText("no scored image yet: use Score volume")
            self.legend.show_bars(None)
        else:
            n = len(self.candidates)
            by = THRESHOLD_MODES[self.mode.currentText()].replace("_", " ")
            self.summary.setText(
                f"{result.name}: {n} candidate region{'s' if n != 1 else ''} at {by} >= "
                f"{self.threshold.value():g}; volume score {result.volume_score:.4g}"
            )
            percentile = self.mode.currentText() == "healthy percentile"
            self.legend.show_bars(
                float(self.threshold.value()) if percentile else None,
                str((result.settings or {}).get("score_column", "anomaly_score")),
            )


def _slices(cand: Mapping[str, Any]) -> str:
    first, last = int(cand["slice_start"]), int(cand["slice_end"])
    return f"{first}" if first == last else f"{first}–{last}"


def candidate_details(cand: Mapping[str, Any], result: Any | None = None) -> str:
    """Describe a candidate region in full: what the table's columns leave out.

    Parameters
    ----------
    cand : mapping
        A candidate (:data:`~napari_anogan.scoring.candidates.CANDIDATE_COLUMNS`).
    result : VolumeResult, optional
        Its result, for the B-scan where the region peaks.

    Returns
    -------
    str
        E.g. ``"#1: B-scans 2–9 (peak 5), rows 147–365, columns 0–397 (219 × 398 px), 160
        patches; highest score 2035 (healthy percentile 100.0), mean 1234; undecided"``.
    """
    row, col = int(cand["row"]), int(cand["col"])
    height, width = int(cand["height"]), int(cand["width"])
    where = (
        f"B-scans {_slices(cand)}"
        if cand["slice_start"] != cand["slice_end"]
        else (f"B-scan {_slices(cand)}")
    )
    if result is not None and cand["slice_start"] != cand["slice_end"]:
        where += f" (peak {peak_slice(cand, result)})"
    n = int(cand.get("n_patches", 0) or 0)
    percent = _percent(cand.get("healthy_percentile"))
    decision = str(cand.get("decision", "") or "") or "undecided"
    return (
        f"#{cand['rank']}: {where}, rows {row}–{row + height - 1}, columns {col}–"
        f"{col + width - 1} ({height} × {width} px), {n} patch{'es' if n != 1 else ''}; "
        f"highest score {cand['max_score']:.4g}"
        + (f" (healthy percentile {percent})" if percent else "")
        + f", mean {cand['mean_score']:.4g}; {decision}"
    )


def _percent(value: Any) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if not np.isfinite(value) else f"{value:.1f}"


def _features_dict(features: Any) -> dict[str, np.ndarray]:
    return {c: features[c].to_numpy() for c in features.columns}


def _decisions_from_features(features: Any) -> dict[int, str]:
    if "rank" not in features or "decision" not in features:
        return {}
    pairs: Sequence = list(zip(features["rank"], features["decision"], strict=True))
    return {int(rank): str(decision or "") for rank, decision in pairs}

"""Export: write a scored image's results to a folder.

The ``score`` outputs, through the CLI's own writers and file names
(:func:`napari_anogan.pipeline.write_score_outputs`): ``<stem>_residual.tif`` (heatmap,
here with the image layer's physical pixel sizes), ``<stem>_scores.csv`` (patch table),
``<stem>_overview.png`` (the CLI's quick-look figure, at the heatmap threshold shown
now) and ``<stem>_summary.json`` (the CLI's summary plus the image layer, the threshold
and the candidates with their keep/reject decisions); and two files only the viewer has:
``<stem>_candidates.csv`` (with the decisions) and ``<stem>_snapshot.png`` (the canvas).
``<stem>`` is the scored volume's name made safe as a file name, as in the CLI.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_anogan._widgets._common import (
    RESULT_KEY,
    LayerCombo,
    browse_row,
    is_result_layer,
    layer_by_name,
    notify_error,
    notify_info,
    spacing_of_layer,
)
from napari_anogan._widgets._forms import export_choices
from napari_anogan._widgets._layers import (
    HEATMAP_KEY,
    layer_name,
    pixel_reference_from_metadata,
)
from napari_anogan.errors import OutputError

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

ARTEFACTS = {
    "heatmap": "residual heatmap (OME-TIFF)",
    "candidates": "candidates with decisions (CSV)",
    "scores": "patch scores (CSV)",
    "overview": "overview figure, as 'score' writes it (PNG)",
    "snapshot": "snapshot of the view (PNG)",
    "summary": "summary: scores, candidates, model, settings (JSON)",
}

CORE_KINDS = {
    "heatmap": "residual",
    "scores": "scores",
    "overview": "overview",
    "summary": "summary",
}
"""Export choices that are ``score`` outputs, and their kind in the CLI's outputs."""


def candidate_rows(features: Any) -> list[dict]:
    """Return one CSV row per candidate region (features hold one row per region and B-scan)."""
    if features is None or len(features) == 0:
        return []
    table = features.drop(columns=[c for c in ("slice",) if c in features.columns])
    table = table.drop_duplicates(subset=["rank"]).sort_values("rank")
    return [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        for row in table.to_dict(orient="records")
    ]


def export_result(
    viewer: Any,
    patch_layer: Any,
    folder: str | Path,
    *,
    include: dict[str, bool] | None = None,
) -> dict[str, Path]:
    """Write the chosen artefacts of one scored image; return their paths by kind.

    Parameters
    ----------
    viewer : napari.Viewer
        For the snapshot and the derived layers (candidates with decisions).
    patch_layer : napari.layers.Shapes
        The ``<image> patch scores`` layer (it holds the VolumeResult).
    folder : str or Path
        Existing output folder.
    include : dict of str to bool, optional
        Which of :data:`ARTEFACTS` to write (default: all).

    Raises
    ------
    OutputError
        If the folder does not exist or a file cannot be written.
    """
    from napari_anogan.io import safe_stem, write_csv
    from napari_anogan.pipeline import summary_dict, write_score_outputs
    from napari_anogan.scoring.candidates import CANDIDATE_COLUMNS

    folder = Path(folder)
    if not folder.is_dir():
        raise OutputError("export folder does not exist", folder)
    include = {k: True for k in ARTEFACTS} | (include or {})
    result = patch_layer.metadata[RESULT_KEY]
    image_name = patch_layer.metadata.get("anogan_image", result.name)
    image = layer_by_name(viewer, image_name)
    cand_layer = layer_by_name(viewer, layer_name(image_name, "candidates"))
    candidates = candidate_rows(cand_layer.features if cand_layer is not None else None)
    threshold = (cand_layer.metadata.get("threshold") if cand_layer is not None else None) or (
        result.settings or {}
    ).get("percentile_threshold")
    stem = safe_stem(result.name)  # the CLI's stem, for the two files only the viewer has

    written: dict[str, Path] = {}
    core = write_score_outputs(
        result,
        folder,
        include=[kind for key, kind in CORE_KINDS.items() if include[key] and kind != "summary"],
        spacing=spacing_of_layer(image) if image is not None else None,
        image=None if image is None else image.data,
        heatmap=shown_heatmap_threshold(viewer, image_name),
    )
    written.update({key: core[kind] for key, kind in CORE_KINDS.items() if kind in core})
    if include["candidates"]:
        columns = [*CANDIDATE_COLUMNS, "decision"]
        written["candidates"] = write_csv(folder / f"{stem}_candidates.csv", candidates, columns)
    if include["snapshot"]:
        written["snapshot"] = _write_png(folder / f"{stem}_snapshot.png", viewer)
    if include["summary"]:
        summary = summary_dict(result)
        summary.update(
            image_layer=image_name,
            threshold=threshold,
            candidates=candidates,
            files={k: p.name for k, p in written.items()},
        )
        core = write_score_outputs(result, folder, include=["summary"], summary=summary)
        written["summary"] = core["summary"]
    logger.info("exported %s to %s: %s", image_name, folder, sorted(written))
    return written


def shown_heatmap_threshold(viewer: Any, image_name: str) -> Any | None:
    """Return the heatmap threshold the residual layer of ``image_name`` shows (or None)."""
    from napari_anogan.scoring.display import HeatmapThreshold

    layer = layer_by_name(viewer, layer_name(image_name, "residual"))
    metadata = getattr(layer, "metadata", None) or {}
    reference = pixel_reference_from_metadata(metadata)
    shown = metadata.get(HEATMAP_KEY)
    if reference is None or not shown:
        return None
    return HeatmapThreshold(float(shown["value"]), float(shown["percentile"]), reference)


def _write_png(path: Path, viewer: Any) -> Path:
    """Screenshot of the canvas, written atomically."""
    from PIL import Image

    from napari_anogan._atomic import atomic_path

    pixels = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return path


class ExportWidget(QWidget):
    """Write a scored image's heatmap, tables, snapshot and settings to a folder.

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
        self.folder = QLineEdit(str(Path.cwd()))
        # the choices (magicgui check boxes), all checked
        self.params = export_choices(ARTEFACTS)
        self.checks = {key: box.native for key, box in self.params.items()}
        self.export_button = QPushButton("Export")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("results of", self.source)
        form.addRow("folder", browse_row(self.folder, "…", self._browse))
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for box in self.checks.values():
            layout.addWidget(box)
        layout.addWidget(self.export_button)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.export_button.clicked.connect(self.export)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export folder", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def export(self) -> dict[str, Path]:
        """Export the chosen result (errors become notifications); return written paths."""
        try:
            layer = self.source.layer()
            if layer is None:
                raise OutputError("nothing to export yet: score an image first")
            include = {k: box.isChecked() for k, box in self.checks.items()}
            written = export_result(self.viewer, layer, self.folder.text().strip(), include=include)
        except Exception as exc:
            self.status.setText(notify_error(exc, "Export"))
            return {}
        names = ", ".join(p.name for p in written.values())
        self.status.setText(f"wrote {names}")
        notify_info(f"exported {len(written)} files to {self.folder.text().strip()}")
        return written

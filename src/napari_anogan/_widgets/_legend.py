"""The legend of a scored image's layers: heatmap colours, score bars, candidate boxes.

Shown in the Candidate markers widget. The words and colours come from
:mod:`napari_anogan.scoring.display`, as in the ``score`` overview figure, so the viewer
and the file say the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QImage, QPixmap
from qtpy.QtWidgets import QGridLayout, QGroupBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from napari_anogan.scoring.display import (
    BAR_LEGEND,
    BAR_RULE,
    HEATMAP_OPACITY,
    PIXEL_SOURCES,
    heatmap_rgba,
    ranking_note,
)

#: Candidate box colours by decision, in words.
BOX_LEGEND = (
    ("", "orange box: candidate region (#rank), undecided"),
    ("keep", "green: kept"),
    ("reject", "grey: rejected"),
)


def _qcolor(rgba: Sequence[float]) -> QColor:
    r, g, b, a = (float(v) for v in rgba)
    return QColor.fromRgbF(r, g, b, a)


def swatch(rgba: Sequence[float], *, outline: bool = False, size: tuple[int, int] = (22, 10)):
    """Return a small QPixmap of one colour (filled, or an outlined box)."""
    from qtpy.QtGui import QPainter, QPen

    pixmap = QPixmap(*size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    if outline:
        pen = QPen(_qcolor(rgba))
        pen.setWidth(2)
        painter.setPen(pen)
        painter.drawRect(1, 1, size[0] - 2, size[1] - 2)
    else:
        painter.fillRect(0, 0, size[0], size[1], _qcolor(rgba))
    painter.end()
    return pixmap


def colour_bar(low: float, high: float, width: int = 200, height: int = 12) -> QPixmap:
    """Return the heatmap's colours from ``low`` (the threshold) to ``high`` as a pixmap."""
    ramp = np.linspace(low, high, width)
    rgba = heatmap_rgba(ramp + 1e-12 * max(abs(high - low), 1.0), low, high)
    rgba[..., 3] = np.where(rgba[..., 3] > 0, HEATMAP_OPACITY, 0.0)
    pixels = np.ascontiguousarray(
        np.repeat((255 * rgba[None, :, :]).round().astype(np.uint8), height, axis=0)
    )
    image = QImage(pixels.data, width, height, 4 * width, QImage.Format.Format_RGBA8888)
    return QPixmap.fromImage(image.copy())


class LegendPanel(QGroupBox):
    """What the colours of a scored image's layers mean.

    Attributes
    ----------
    heatmap_bar : QLabel
        The heatmap's colour bar (its pixmap), from the threshold up.
    heatmap_text : QLabel
        The heatmap's range and where its threshold comes from.
    bar_labels : list of QLabel
        One line per score-bar colour (R, D, unlit).
    box_labels : list of QLabel
        One line per candidate-box colour.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("legend", parent)
        self.setToolTip("what the colours of the heatmap, the score bars and the boxes mean")
        self.heatmap_bar = QLabel()
        self.heatmap_bar.setToolTip(
            "residual heatmap |x − G(z)|: transparent at and below the threshold, then "
            "purple to yellow as the residual grows"
        )
        self.heatmap_low = QLabel("")
        self.heatmap_high = QLabel("")
        self.heatmap_high.setAlignment(Qt.AlignmentFlag.AlignRight)
        self.heatmap_text = QLabel("heatmap: score an image first")
        self.heatmap_text.setWordWrap(True)
        bar_row = QHBoxLayout()
        bar_row.addWidget(self.heatmap_low)
        bar_row.addWidget(self.heatmap_bar, 1)
        bar_row.addWidget(self.heatmap_high)

        self.bars_title = QLabel("score bars above the retina (paper Fig. 3)")
        self.bars_title.setWordWrap(True)
        self.bars_title.setToolTip(BAR_RULE)
        grid = QGridLayout()
        grid.setHorizontalSpacing(6)
        grid.setVerticalSpacing(2)
        self.bar_labels: list[QLabel] = []
        for row, (_, rgba, _, text) in enumerate(BAR_LEGEND):
            icon = QLabel()
            icon.setPixmap(swatch(rgba))
            label = QLabel(text)
            label.setWordWrap(True)
            label.setToolTip(BAR_RULE)
            grid.addWidget(icon, row, 0)
            grid.addWidget(label, row, 1)
            self.bar_labels.append(label)
        self.box_labels: list[QLabel] = []
        from napari_anogan._widgets._layers import DECISION_COLORS

        for k, (decision, text) in enumerate(BOX_LEGEND):
            icon = QLabel()
            icon.setPixmap(swatch(DECISION_COLORS[decision], outline=True))
            label = QLabel(text)
            label.setWordWrap(True)
            grid.addWidget(icon, len(BAR_LEGEND) + k, 0)
            grid.addWidget(label, len(BAR_LEGEND) + k, 1)
            self.box_labels.append(label)
        grid.setColumnStretch(1, 1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(3)
        layout.addLayout(bar_row)
        layout.addWidget(self.heatmap_text)
        layout.addWidget(self.bars_title)
        layout.addLayout(grid)
        self.show_heatmap(None, None)

    def show_heatmap(
        self, threshold: Mapping[str, Any] | None, limits: Sequence[float] | None
    ) -> None:
        """Show the heatmap's colour bar for ``threshold`` (layer metadata) and ``limits``."""
        if threshold is None or limits is None:
            self.heatmap_bar.setPixmap(colour_bar(0.0, 1.0))
            self.heatmap_low.setText("")
            self.heatmap_high.setText("")
            self.heatmap_text.setText("heatmap: residual |x − G(z)|; score an image first")
            return
        low, high = (float(v) for v in limits)
        self.heatmap_bar.setPixmap(colour_bar(low, high))
        self.heatmap_low.setText(f"{low:.3g}")
        self.heatmap_high.setText(f"{high:.3g}")
        source = str(threshold.get("source", ""))
        self.heatmap_text.setText(
            f"heatmap: residual |x − G(z)|, transparent up to {low:.3g} = "
            f"p{float(threshold.get('percentile', 0)):g} of {PIXEL_SOURCES.get(source, source)}"
        )

    def show_bars(self, threshold: float | None, column: str = "anomaly_score") -> None:
        """Say at which healthy percentile the score bars light up.

        ``column`` is the score the candidates come from: when it is neither R nor D nor
        their sum A (the feature distance), the bars may stay grey over a candidate, and
        the legend says why.
        """
        if threshold is None:
            text = "score bars above the retina (paper Fig. 3)"
        else:
            text = f"score bars above the retina (paper Fig. 3), lit at healthy p{threshold:g}"
        self.bars_title.setText(text + ranking_note(column) + ":")

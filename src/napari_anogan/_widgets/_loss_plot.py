"""A small live plot of the discriminator and generator losses (matplotlib in Qt)."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

_BACKGROUND = "#262930"  # napari's dark theme
_FOREGROUND = "#d1d2d4"


class LossPlot(FigureCanvasQTAgg):
    """Loss curves of D and G against the training batch, redrawn as losses arrive.

    Parameters
    ----------
    keys : tuple of (str, str)
        (loss name in the progress events, legend label) pairs.
    """

    def __init__(
        self, keys: tuple[tuple[str, str], ...] = (("d_loss", "D"), ("g_loss", "G"))
    ) -> None:
        figure = Figure(figsize=(3.2, 1.8), dpi=90, facecolor=_BACKGROUND, layout="tight")
        super().__init__(figure)
        self.setFixedHeight(170)
        self.keys = keys
        self.axes = figure.add_subplot()
        self.axes.set_facecolor(_BACKGROUND)
        for spine in self.axes.spines.values():
            spine.set_color(_FOREGROUND)
        self.axes.tick_params(colors=_FOREGROUND, labelsize=7)
        self.axes.set_xlabel("batch", color=_FOREGROUND, fontsize=8)
        self.axes.set_ylabel("loss", color=_FOREGROUND, fontsize=8)
        self.lines = {
            key: self.axes.plot([], [], label=label, linewidth=1.2)[0] for key, label in keys
        }
        legend = self.axes.legend(fontsize=7, facecolor=_BACKGROUND, edgecolor=_FOREGROUND)
        for text in legend.get_texts():
            text.set_color(_FOREGROUND)
        self.values: dict[str, list[float]] = {key: [] for key, _ in keys}

    def clear(self) -> None:
        """Forget all points."""
        for key in self.values:
            self.values[key] = []
        self._redraw()

    def add(self, losses: dict[str, float]) -> None:
        """Append one batch's losses (missing keys are skipped) and redraw."""
        if not any(key in losses for key in self.values):
            return
        for key in self.values:
            if key in losses:
                self.values[key].append(float(losses[key]))
        self._redraw()

    def _redraw(self) -> None:
        for key, line in self.lines.items():
            values = self.values[key]
            line.set_data(range(1, len(values) + 1), values)
        self.axes.relim()
        self.axes.autoscale_view()
        self.draw_idle()

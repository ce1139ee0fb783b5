"""The widgets' parameter forms, built with magicgui; initial values from the settings.

Each function returns the form's magicgui widgets by name, with the defaults of
:mod:`napari_anogan.settings` (the command line's), so the GUI and the CLI start from the
same values. The widgets place the ``.native`` Qt widgets in their layouts; hand-written
Qt remains only where magicgui has no widget (layer pickers, the candidate table, the
loss plot, the sample grid).
"""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, SpinBox
from magicgui.widgets.bases import ValueWidget

from napari_anogan import settings as defaults

MAX_STEPS = 5000
"""Largest number of mapping steps the forms offer."""


def score_parameters(modes: list[str]) -> dict[str, ValueWidget]:
    """Return the Score widget's mapping mode, steps, lambda and grid stride."""
    lam = FloatSpinBox(
        label="lambda",
        min=0.0,
        max=1.0,
        step=0.05,
        value=defaults.SCORING_LAM,
        tooltip="weight of the discrimination loss in the mapping and of D in the anomaly "
        f"score A = (1 - lambda) R + lambda D; {defaults.SCORING_LAM} was chosen on a "
        "validation set (the paper: 0.1); percentiles compare with the model's healthy "
        "reference, mapped with its own lambda",
    )
    lam.native.setDecimals(3)
    return {
        "mode": ComboBox(label="mapping", choices=modes, value=defaults.MAPPING_MODE),
        "steps": SpinBox(label="steps", min=0, max=MAX_STEPS, value=defaults.HYBRID_STEPS),
        "lam": lam,
        "stride": SpinBox(label="stride", min=4, max=256, value=defaults.SCORE_STRIDE),
    }


def train_parameters(presets: list[str]) -> dict[str, ValueWidget]:
    """Return the Train widget's preset, epochs, patches per B-scan and reference steps."""
    return {
        "preset": ComboBox(label="preset", choices=presets, value=defaults.TRAIN_PRESET),
        "epochs": SpinBox(
            label="epochs",
            min=0,
            max=1000,
            value=0,
            tooltip="GAN epochs; auto (0): chosen for the data, about "
            f"{defaults.TRAIN_UPDATES} updates ({defaults.ADAPT_UPDATES} when starting from a "
            "model)",
        ),
        "time_limit": SpinBox(
            label="time limit (min)",
            min=0,
            max=10000,
            value=0,
            tooltip="stop training in time to finish a usable model (encoder, feature bank, "
            "healthy reference) within this many minutes; 0: no limit",
        ),
        "patches_per_scan": SpinBox(
            label="patches per B-scan", min=1, max=10000, value=defaults.PATCHES_PER_SCAN
        ),
        "reference_steps": SpinBox(
            label="reference steps",
            min=0,
            max=MAX_STEPS,
            value=defaults.REFERENCE_STEPS,
            tooltip="mapping steps used to score held-out healthy patches after training; "
            "use the steps you will score with, so healthy percentiles are calibrated",
        ),
    }


def export_choices(artefacts: dict[str, str]) -> dict[str, CheckBox]:
    """Return one checked box per artefact the Export widget can write."""
    return {key: CheckBox(text=text, value=True) for key, text in artefacts.items()}

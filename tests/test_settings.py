"""Every user-facing default is defined once, in ``napari_anogan.settings``."""

from __future__ import annotations

import pytest

from napari_anogan import settings
from napari_anogan.cli import build_parser
from napari_anogan.mapping import MappingConfig
from napari_anogan.pipeline import ScoreSettings
from napari_anogan.preprocess import PreprocessConfig
from napari_anogan.training import EncoderConfig, TrainConfig

SCORE_OPTIONS = {
    "mapping": settings.MAPPING_MODE,
    "steps": settings.MAPPING_STEPS,
    "hybrid_steps": settings.HYBRID_STEPS,
    "lam": settings.SCORING_LAM,
    "stride": settings.SCORE_STRIDE,
    "batch_size": settings.SCORE_BATCH_SIZE,
    "device": settings.DEVICE,
    "seed": settings.SEED,
}


def _parse(*argv: str) -> dict:
    return vars(build_parser().parse_args(list(argv)))


def test_cli_defaults_are_the_settings():
    args = _parse("preprocess", "x.tif", "-o", "o")
    assert (args["target_width"], args["margin_above"], args["margin_below"]) == (
        settings.TARGET_WIDTH,
        settings.MARGIN_ABOVE,
        settings.MARGIN_BELOW,
    )
    args = _parse("train", "x.tif", "-o", "m.pt")
    assert {k: args[k] for k in ("preset", "epochs", "patches_per_scan", "batch_size")} == {
        "preset": settings.TRAIN_PRESET,
        "epochs": None,  # chosen for the data: about settings.TRAIN_UPDATES updates
        "patches_per_scan": settings.PATCHES_PER_SCAN,
        "batch_size": settings.TRAIN_BATCH_SIZE,
    }
    assert (args["seed"], args["device"], args["encoder_epochs"]) == (
        settings.SEED,
        settings.DEVICE,
        settings.ENCODER_EPOCHS,
    )
    args = _parse("score", "x.tif", "-m", "m.pt", "-o", "o")
    assert {k: args[k] for k in SCORE_OPTIONS} == SCORE_OPTIONS
    assert args["chunk_slices"] == settings.SCORE_CHUNK_SLICES
    args = _parse("evaluate", "-m", "m", "--normal", "n", "--anomalous", "a", "-o", "o")
    assert {k: args[k] for k in SCORE_OPTIONS} == SCORE_OPTIONS
    assert args["acae_epochs"] == settings.ACAE_EPOCHS


def test_help_shows_every_default(capsys):
    for command in ("preprocess", "train", "score", "evaluate"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = capsys.readouterr().out
        assert "(default: " in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["score", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for value in (settings.SCORING_LAM, settings.SCORE_STRIDE, settings.HYBRID_STEPS):
        assert f"(default: {value})" in text


def test_configs_read_the_settings():
    score = ScoreSettings()
    assert (score.mode, score.steps, score.hybrid_steps, score.lam) == (
        settings.MAPPING_MODE,
        settings.MAPPING_STEPS,
        settings.HYBRID_STEPS,
        settings.SCORING_LAM,
    )
    assert (score.stride, score.batch_size, score.percentile_threshold) == (
        settings.SCORE_STRIDE,
        settings.SCORE_BATCH_SIZE,
        settings.PERCENTILE_THRESHOLD,
    )
    mapping = MappingConfig()
    assert (mapping.lam, mapping.steps, mapping.hybrid_steps, mapping.lr) == (
        settings.PAPER_LAM,
        settings.MAPPING_STEPS,
        settings.HYBRID_STEPS,
        settings.MAPPING_LR,
    )
    pre = PreprocessConfig()
    assert (pre.target_width, pre.margin_above, pre.margin_below, pre.patch_size) == (
        settings.TARGET_WIDTH,
        settings.MARGIN_ABOVE,
        settings.MARGIN_BELOW,
        settings.PATCH_SIZE,
    )
    train = TrainConfig()
    assert (train.epochs, train.batch_size, train.reference_steps, train.reference_lam) == (
        settings.TRAIN_EPOCHS,
        settings.TRAIN_BATCH_SIZE,
        settings.REFERENCE_STEPS,
        settings.SCORING_LAM,
    )
    assert EncoderConfig().epochs == settings.ENCODER_EPOCHS


def test_boundary_search_defaults_are_the_preprocessing_ones():
    import inspect

    from napari_anogan.preprocess import detect_boundaries

    params = inspect.signature(detect_boundaries).parameters
    detection = PreprocessConfig().detection_params()
    for name, value in detection.items():
        if name != "row_scale":
            assert params[name].default == value, name


@pytest.mark.qt
@pytest.mark.slow
def test_widget_defaults_are_the_settings(make_napari_viewer):
    from napari_anogan._widgets.candidates import CandidatesWidget
    from napari_anogan._widgets.score import ScoreWidget
    from napari_anogan._widgets.train import TrainWidget

    viewer = make_napari_viewer()
    score = ScoreWidget(viewer)
    shown = score.settings()
    assert (shown.mode, shown.steps, shown.lam, shown.stride) == (
        settings.MAPPING_MODE,
        settings.HYBRID_STEPS,  # the hybrid mode shows its own K
        settings.SCORING_LAM,
        settings.SCORE_STRIDE,
    )
    score.mode.setCurrentText("iterative")
    assert score.settings().steps == settings.MAPPING_STEPS
    train = TrainWidget(viewer)
    assert train.preset.currentText() == settings.TRAIN_PRESET
    assert train.epochs.value() == 0  # "auto": chosen for the data, as the CLI does
    assert train.patches_per_scan.value() == settings.PATCHES_PER_SCAN
    assert train.reference_steps.value() == settings.REFERENCE_STEPS
    assert CandidatesWidget(viewer).threshold.value() == settings.PERCENTILE_THRESHOLD

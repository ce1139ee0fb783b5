"""What the heatmap and the score bars show (scoring.display): thresholds, colours, bars."""

from __future__ import annotations

import numpy as np
import pytest

from napari_anogan import settings
from napari_anogan.preprocess.geometry import retina_rows
from napari_anogan.scoring import QUANTILE_LEVELS
from napari_anogan.scoring.display import (
    PIXEL_SOURCES,
    PixelReference,
    heatmap_range,
    heatmap_rgba,
    heatmap_threshold,
    pixel_reference,
    score_bars,
    stored_pixel_reference,
)
from test_plugin_layers import H, W, fake_result


def _with_reference(result, quantiles):
    result.model = {"reference": {"levels": QUANTILE_LEVELS.tolist(), "pixel_residual": quantiles}}
    return result


def test_a_stored_pixel_reference_wins():
    quantiles = np.linspace(0.0, 2.0, 101).tolist()  # as a result's summary stores it: lists
    result = _with_reference(fake_result(), quantiles)
    reference = pixel_reference(result)
    assert reference.source == "healthy reference"
    threshold = heatmap_threshold(result, 99.0)
    assert threshold.value == pytest.approx(1.98)
    assert threshold.at(50.0).value == pytest.approx(1.0)
    assert threshold.at(99.5).value == pytest.approx(1.99)  # between stored levels
    assert threshold.to_dict() == {
        "value": pytest.approx(1.98),
        "percentile": 99.0,
        "source": "healthy reference",
        "meaning": PIXEL_SOURCES["healthy reference"],
    }
    assert stored_pixel_reference({"levels": [0, 100]}) is None  # an old model: no pixels


def test_without_a_pixel_reference_healthy_looking_patches_stand_in():
    """An old model: the pixels of the patches at or below the healthy median."""
    result = fake_result()
    rng = np.random.default_rng(0)
    result.residual = rng.uniform(0.1, 0.2, result.residual.shape).astype(np.float32)
    # a lesion only the anomalous patches (healthy percentile 99.9) cover
    result.residual[1, 16:48, 32:64] = 1.5
    reference = pixel_reference(result)
    assert reference.source == "healthy-looking patches"
    threshold = heatmap_threshold(result)
    assert threshold.percentile == settings.HEATMAP_PERCENTILE
    assert 0.19 <= threshold.value <= 0.2  # the calm tissue's own 99th percentile
    shown = result.residual > threshold.value
    assert shown[1, 16:48, 32:64].all()  # the lesion is coloured
    shown[1, 16:48, 32:64] = False
    assert shown.mean() <= 0.015  # ... and about 1 % of the rest


def test_without_any_reference_the_scan_itself_is_used_and_said():
    result = fake_result()
    result.patches = {k: v[:0] for k, v in result.patches.items()}  # a partial result
    reference = pixel_reference(result)
    assert reference.source == "this scan"
    assert "not what is unlike healthy tissue" in PIXEL_SOURCES[reference.source]
    assert reference.value_at(100) == pytest.approx(1.0)  # the planted block, all 1.0


def test_threshold_percentile_is_checked():
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        heatmap_threshold(fake_result(), 101.0)


def test_heatmap_colours_are_transparent_up_to_the_threshold():
    values = np.array([np.nan, 0.0, 0.5, 0.51, 1.0, 3.0])
    rgba = heatmap_rgba(values, 0.5, 1.0)
    assert rgba.shape == (6, 4)
    np.testing.assert_array_equal(rgba[:3, 3], 0.0)  # NaN, below, at the threshold
    np.testing.assert_array_equal(rgba[3:, 3], 1.0)
    np.testing.assert_allclose(rgba[4], rgba[5])  # clipped at the top of the range


def test_heatmap_range_starts_at_the_threshold_and_is_never_empty():
    residual = np.linspace(0.0, 1.0, 10_001)
    low, high = heatmap_range(residual, 0.3)
    assert low == 0.3
    assert high == pytest.approx(0.999, abs=1e-3)
    assert heatmap_range(np.zeros(10), 0.0)[1] > 0.0
    assert heatmap_range(residual, 2.0) == (2.0, 2.5)


def test_pixel_reference_percentile_of_round_trips():
    reference = PixelReference(np.array([0.0, 50.0, 100.0]), np.array([0.0, 1.0, 2.0]), "x")
    assert reference.value_at(75) == pytest.approx(1.5)
    assert float(reference.percentile_of(1.5)) == pytest.approx(75.0)


def test_score_bars_sit_above_the_ilm_two_rows_per_patch_column():
    result = fake_result()
    bars = score_bars(result.patches, result.ilm, image_height=H)
    assert set(bars["component"]) == {"residual", "discrimination"}
    assert np.all(bars["row1"] <= 14)  # above the ILM at row 14
    upper = bars["component"] == "residual"
    assert np.all(bars["row0"][upper] < bars["row0"][~upper])  # R above D
    assert np.all(bars["col0"] >= 0)
    assert np.all(bars["col1"] <= W)


def test_retina_rows_crop_to_the_boundaries_with_margins():
    ilm = np.array([100.0, 110.0, np.nan])
    bm = np.array([300.0, 320.5, np.nan])
    assert retina_rows(ilm, bm, 496, above=10, below=20) == (90, 342)
    assert retina_rows(np.full(3, np.nan), bm, 496) == (0, 496)
    assert retina_rows(ilm - 200, bm + 300, 496, above=5, below=5) == (0, 496)


def test_training_stores_the_pixel_reference_that_scoring_thresholds_at(
    synthetic_dir, tiny_model_path
):
    """A model trained now keeps the quantiles of its held-out patches' pixel residual;
    the heatmap of a scan it scores is then thresholded at them."""
    from napari_anogan.checkpoint import load_checkpoint
    from napari_anogan.events import drain
    from napari_anogan.io import read_volume
    from napari_anogan.pipeline import ScoreSettings, score_volume

    model = load_checkpoint(tiny_model_path)
    quantiles = model.reference["pixel_residual"]
    assert quantiles.shape == model.reference["levels"].shape == (101,)
    assert np.all(np.diff(quantiles) >= 0)
    assert 0.0 <= quantiles[0] <= quantiles[-1] <= 2.0
    volume = read_volume(synthetic_dir / "diseased.ome.tif")
    result = drain(score_volume(volume, model, ScoreSettings(mode="iterative", steps=2)))
    threshold = heatmap_threshold(result)
    assert threshold.source == "healthy reference"
    assert threshold.value == pytest.approx(np.interp(99.0, model.reference["levels"], quantiles))

"""The quick-look figure ``<stem>_overview.png`` and where it sits among the score outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_anogan import settings
from napari_anogan.pipeline import output_paths, write_score_outputs
from napari_anogan.pipeline.overview import _fit_line, overview_bscans, write_overview
from test_plugin_layers import H, S, W, fake_result


def _image() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (S, H, W)).astype(np.float32)


def test_overview_is_readable_at_full_size(tmp_path):
    path = write_overview(fake_result(), _image(), tmp_path / "scan_overview.png")
    with Image.open(path) as png:
        width, height = png.size
    # 96 columns enlarged 9x (whole pixels) to about FIGURE_MIN_WIDTH, plus margins
    assert width == 96 * 9 + 2 * 16
    assert width >= 0.9 * settings.FIGURE_MIN_WIDTH
    # three B-scans, each at most its 64 rows enlarged 9x, with captions, header and legend
    assert height <= 3 * 64 * 9 + 700
    assert 20_000 < path.stat().st_size < 3_000_000


def test_overview_shows_the_candidates_peaks_first():
    result = fake_result()
    assert overview_bscans(result, 3)[0] == 1  # the hot B-scan, where candidate #1 peaks
    assert sorted(overview_bscans(result, 3)) == [0, 1, 2]
    result.candidates = []
    assert overview_bscans(result, 1) == [1]  # then the highest B-scan score


def test_model_fit_verdict_words():
    assert _fit_line(None) is None
    text, colour = _fit_line(
        {"verdict": "does_not_fit", "median_excess": 1.42, "share_above_p99": 0.31}
    )
    assert "does NOT fit" in text
    assert "typical patch 1.42 x the healthy 99th percentile" in text
    assert "31 % of patches above it" in text
    assert colour != "black"
    assert _fit_line({"verdict": "fits", "median_excess": 0.6})[0].startswith(
        "model fit: the model fits"
    )
    assert _fit_line({"verdict": "no_reference"})[0].startswith("model fit: unknown")
    assert _fit_line({}) is None  # a result scored before model fits were judged


def test_overview_with_a_model_fit_verdict(tmp_path):
    result = fake_result()
    result.model_fit = {"verdict": "fits", "median_percentile": 51.0, "share_above_p99": 0.01}
    assert write_overview(result, _image(), tmp_path / "o.png").stat().st_size > 20_000


def test_score_outputs_write_the_overview_before_the_summary(tmp_path):
    result = fake_result()
    paths = output_paths(result.name, tmp_path, figures=True)
    assert list(paths) == ["residual", "scores", "overview", "summary"]  # the summary last
    assert list(output_paths(result.name, tmp_path)) == ["residual", "scores", "summary"]
    written = write_score_outputs(
        result, tmp_path, include=["residual", "scores", "overview", "summary"], image=_image()
    )
    assert written["overview"] == tmp_path / "scan_overview.png"
    assert written["overview"].stat().st_mtime_ns <= written["summary"].stat().st_mtime_ns
    summary = json.loads(written["summary"].read_text())
    assert summary["heatmap_threshold"]["percentile"] == settings.HEATMAP_PERCENTILE
    assert summary["heatmap_threshold"]["source"] == "healthy-looking patches"
    # without the scan's grey values there is nothing to draw on
    again = write_score_outputs(result, tmp_path / ".", include=["overview"])
    assert again == {}


@pytest.mark.parametrize("width", [512, 768, 1095])
def test_wide_bscans_are_drawn_pixel_for_pixel(tmp_path, width):
    from napari_anogan.preprocess.outputs import draw_boundaries

    bscans = np.random.default_rng(1).uniform(0, 1, (1, 200, width))
    ilm, bm = np.full((1, width), 60.0), np.full((1, width), 140.0)
    draw_boundaries(tmp_path / "b.png", bscans, ilm, bm)
    scale = max(1, round(settings.FIGURE_MIN_WIDTH / width))
    with Image.open(tmp_path / "b.png") as png:
        assert png.size[0] == width * scale + 24
        # cropped to the retina and its margins (rows 36-176), not the whole 200 rows
        assert png.size[1] <= (176 - 36 + 1) * scale + 50

"""Pure conversion of a scoring result into napari layer data (no viewer needed)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_anogan import settings
from napari_anogan._widgets import _layers
from napari_anogan.pipeline import VolumeResult
from napari_anogan.scoring.candidates import find_candidates
from napari_anogan.scoring.display import PIXEL_SOURCES, heatmap_rgba

S, H, W, P, STRIDE = 3, 64, 96, 32, 16


def fake_result(name: str = "scan", *, hot_slice: int = 1) -> VolumeResult:
    """A hand-made result: a 3 x 64 x 96 volume, 32 px patches on a 16 px grid.

    Patches of ``hot_slice`` around column 48 score high (percentile 99.9).
    """
    rng = np.random.default_rng(0)
    rows, cols, slices = [], [], []
    for s in range(S):
        for r in (16,):
            for c in range(0, W - P + 1, STRIDE):
                slices.append(s)
                rows.append(r)
                cols.append(c)
    n = len(slices)
    slices_a = np.array(slices)
    cols_a = np.array(cols)
    hot = (slices_a == hot_slice) & (np.abs(cols_a + P / 2 - 48) <= 16)
    anomaly = np.where(hot, 5.0, 1.0) + rng.uniform(0, 0.1, n)
    percentile = np.where(hot, 99.9, 50.0)
    patches = {
        "slice": slices_a,
        "row": np.array(rows),
        "col": cols_a,
        "height": np.full(n, P),
        "width": np.full(n, P),
        "residual_score": anomaly * 0.9,
        "discrimination_score": anomaly * 0.1,
        "anomaly_score": anomaly,
        "reference_discrimination_score": anomaly,
        "discriminator_output": np.full(n, 0.5),
        "healthy_percentile": percentile,
        "flat_row": np.array(rows),
        "flat_col": cols_a,
    }
    residual = np.zeros((S, H, W), np.float32)
    residual[hot_slice, 20:40, 40:60] = 1.0
    reconstruction = rng.uniform(0, 255, (S, H, W)).astype(np.float32)
    reconstruction[:, :10] = np.nan
    ilm = np.full((S, W), 14.0)
    ilm[:, :3] = np.nan
    bm = np.full((S, W), 50.0)
    return VolumeResult(
        name=name,
        shape=(S, H, W),
        reconstruction=reconstruction,
        residual=residual,
        patches=patches,
        bscan_scores=np.array([1.1, 5.1, 1.1]),
        volume_score=5.1,
        ilm=ilm,
        bm=bm,
        en_face=residual.mean(axis=1),
        candidates=find_candidates(patches, stride=STRIDE, threshold=99.0),
        settings={"stride": STRIDE, "percentile_threshold": 99.0, "steps": 5},
        model={"path": "model.pt"},
    )


def test_result_layers_names_and_types():
    result = fake_result()
    layers = _layers.result_layers(result, "scan", scale=(2.0, 1.0, 1.5))
    names = [meta["name"] for _, meta, _ in layers]
    assert names == [f"scan {kind}" for kind in _layers.LAYER_KINDS]
    types = {meta["name"]: kind for _, meta, kind in layers}
    assert types["scan residual"] == "image"
    assert types["scan residual (raw)"] == "image"
    assert types["scan patch scores"] == "shapes"
    by_name = {meta["name"]: (data, meta) for data, meta, _ in layers}
    data, residual = by_name["scan residual"]
    assert residual["blending"] == "translucent"
    assert residual["scale"] == (2.0, 1.0, 1.5)
    assert data.shape == (S, H, W)
    # the thresholded heatmap starts at its threshold, which its metadata states
    threshold = residual["metadata"][_layers.HEATMAP_KEY]
    assert residual["contrast_limits"][0] == threshold["value"]
    assert threshold["percentile"] == settings.HEATMAP_PERCENTILE
    assert threshold["source"] in PIXEL_SOURCES
    # the raw residual: same array, hidden, coloured from 0 as before
    raw_data, raw = by_name["scan residual (raw)"]
    assert raw_data is data
    assert raw["visible"] is False
    assert raw["contrast_limits"][0] == 0.0


def test_reconstruction_limits_ignore_nan():
    layers = _layers.result_layers(fake_result(), "scan", scale=(1, 1, 1))
    low, high = layers[0][1]["contrast_limits"]
    assert np.isfinite(low)
    assert np.isfinite(high)
    assert high > low


def test_contrast_limits_of_a_large_volume_from_a_subsample():
    rng = np.random.default_rng(3)
    volume = rng.uniform(0.0, 1.0, (8, 300, 400)).astype(np.float32)  # ~1M values
    volume[0, :5] = np.nan
    assert volume.size > 2 * _layers.LIMIT_SAMPLES
    low, high = _layers._robust_limits(volume)
    assert low == pytest.approx(0.005, abs=0.003)
    assert high == pytest.approx(0.995, abs=0.003)
    assert _layers._robust_limits(np.full((4, 4), np.nan)) == (0.0, 1.0)
    assert _layers._robust_limits(np.ones((4, 4))) == (1.0, 2.0)


def test_image_layers_are_the_first_three_result_layers():
    result = fake_result()
    images = _layers.image_layers(result, "scan", scale=(2.0, 1.0, 1.5))
    full = _layers.result_layers(result, "scan", scale=(2.0, 1.0, 1.5))
    assert [m["name"] for _, m, _ in images] == [
        "scan reconstruction",
        "scan residual (raw)",
        "scan residual",
    ]
    for (data, meta, kind), (data2, meta2, kind2) in zip(images, full[:3], strict=True):
        np.testing.assert_array_equal(data, data2)
        assert {k: v for k, v in meta.items() if k != "colormap"} == {
            k: v for k, v in meta2.items() if k != "colormap"
        }
        assert kind == kind2 == "image"


def test_heatmap_is_transparent_at_and_below_its_threshold():
    """napari's colormap of the residual layer: alpha 0 up to the threshold, opaque above."""
    result = fake_result()
    data, meta, _ = _layers.residual_layer(result, "scan", scale=(1, 1, 1))
    low, high = meta["contrast_limits"]
    colormap = meta["colormap"]
    norm = np.clip((data - low) / (high - low), 0, 1)
    alpha = colormap.map(norm.ravel())[:, 3]
    hot = (data > low).ravel()
    assert hot.sum() == 20 * 20  # the planted 20 x 20 block of residual 1.0
    assert np.all(alpha[~hot] == 0.0)
    assert np.all(alpha[hot] == 1.0)
    # the same colours as the overview figure draws
    rgba = heatmap_rgba(data, low, high).reshape(-1, 4)
    np.testing.assert_allclose(rgba[hot], colormap.map(norm.ravel()[hot]), atol=0.01)


def test_patch_rectangles_cover_pixel_edges():
    rect = _layers.rectangle(2, 10, 20, 32, 16)
    assert rect.shape == (4, 3)
    np.testing.assert_array_equal(rect[:, 0], 2)
    assert rect[:, 1].min() == 9.5
    assert rect[:, 1].max() == 41.5
    assert rect[:, 2].min() == 19.5
    assert rect[:, 2].max() == 35.5


def test_patch_score_layer_keeps_the_table():
    result = fake_result()
    data, meta, kind = _layers.patch_score_layer(result.patches, "p")
    assert kind == "shapes"
    assert len(data) == len(result.patches["slice"])
    assert set(result.patches) <= set(meta["features"])
    assert meta["edge_color"] == "healthy_percentile"


def test_score_bars_tile_without_overlap_and_light_hot_patches():
    result = fake_result()
    data, meta, _ = _layers.score_bar_layer(
        result.patches, result.ilm, "bars", image_height=H, threshold=99.0
    )
    feats = meta["features"]
    n_positions = len(range(0, W - P + 1, STRIDE))
    assert len(data) == S * n_positions * 2
    for s in range(S):
        for component in ("residual", "discrimination"):
            sel = (feats["slice"] == s) & (feats["component"] == component)
            lo, hi = feats["col0"][sel], feats["col1"][sel]
            order = np.argsort(lo)
            np.testing.assert_allclose(hi[order][:-1], lo[order][1:])  # contiguous, no overlap
            assert lo.min() == 0
            assert hi.max() == W
    # bars sit above the ILM (row 14)
    assert max(np.asarray(r)[:, 1].max() for r in data) <= 14
    colours = meta["face_color"]
    lit = ~np.all(colours == np.array(_layers.UNLIT_COLOR), axis=1)
    assert set(feats["slice"][lit]) == {1}
    res_lit = lit & (feats["component"] == "residual")
    assert np.all(colours[res_lit] == np.array(_layers.RESIDUAL_COLOR))


def test_bar_colors_follow_threshold():
    feats = {
        "component": np.array(["residual", "discrimination", "residual"]),
        "percentile": np.array([99.5, 99.5, np.nan]),
    }
    assert _layers.bar_colors(feats, 99.0)[0].tolist() == list(_layers.RESIDUAL_COLOR)
    assert _layers.bar_colors(feats, 99.0)[1].tolist() == list(_layers.DISCRIMINATION_COLOR)
    assert _layers.bar_colors(feats, 99.9)[0].tolist() == list(_layers.UNLIT_COLOR)
    assert _layers.bar_colors(feats, 0.0)[2].tolist() == list(_layers.UNLIT_COLOR)


def test_component_percentiles_prefer_core_columns():
    patches = {
        "healthy_percentile": np.array([10.0]),
        "residual_percentile": np.array([20.0]),
    }
    residual, discrimination = _layers.component_percentiles(patches)
    assert residual.tolist() == [20.0]
    assert discrimination.tolist() == [10.0]


def test_boundaries_break_at_nan():
    ilm = np.array([[np.nan, 5, 5, np.nan, 6, 6, 6]], float)
    bm = np.full((1, 7), 9.0)
    data, meta, _ = _layers.boundary_layer(ilm, bm, "b", step=1)
    kinds = list(meta["features"]["boundary"])
    assert kinds.count("ILM") == 2
    assert kinds.count("BM") == 1
    ilm_pieces = [d for d, k in zip(data, kinds, strict=True) if k == "ILM"]
    assert [p[:, 2].tolist() for p in ilm_pieces] == [[1, 2], [4, 5, 6]]


def test_candidate_layer_one_rectangle_per_slice():
    cands = [
        {"rank": 1, "slice_start": 0, "slice_end": 2, "row": 1, "col": 2, "height": 3,
         "width": 4, "n_patches": 3, "max_score": 2.0, "mean_score": 1.5,
         "healthy_percentile": 99.5, "decision": "keep"},
    ]  # fmt: skip
    data, meta, _ = _layers.candidate_layer(cands, "c")
    assert len(data) == 3
    assert meta["features"]["slice"].tolist() == [0, 1, 2]
    assert list(meta["features"]["decision"]) == ["keep"] * 3
    np.testing.assert_array_equal(meta["edge_color"][0], _layers.DECISION_COLORS["keep"])


def test_empty_result_gives_empty_layers():
    result = fake_result()
    empty = {k: v[:0] for k, v in result.patches.items()}
    result.patches = empty
    result.candidates = []
    layers = _layers.result_layers(result, "scan", scale=(1, 1, 1))
    shapes = [d for d, _, kind in layers if kind == "shapes" and d]
    assert all(len(d) > 0 for d in shapes)  # only boundaries remain non-empty
    names = {m["name"] for d, m, k in layers if k == "shapes" and d}
    assert names == {"scan boundaries", "scan en face slice"}


def test_two_d_image_drops_slice_axis():
    result = fake_result()
    result.shape = (1, H, W)
    for key in ("residual", "reconstruction"):
        setattr(result, key, getattr(result, key)[:1])
    result.ilm, result.bm, result.en_face = result.ilm[:1], result.bm[:1], result.en_face[:1]
    keep = result.patches["slice"] == 0
    result.patches = {k: v[keep] for k, v in result.patches.items()}
    result.candidates = []
    layers = _layers.result_layers(result, "b", scale=(1.0, 1.0), ndim=2)
    by_name = {m["name"]: d for d, m, _ in layers}
    assert not any("en face" in name for name in by_name)  # no en face for one B-scan
    assert by_name["b residual"].shape == (H, W)
    assert all(np.asarray(v).shape[1] == 2 for v in by_name["b patch scores"])
    assert all(np.asarray(v).shape[1] == 2 for v in by_name["b boundaries"])


@pytest.mark.parametrize("ndim", [2, 3])
def test_scale_from_spacing(ndim):
    from napari_anogan._widgets._common import scale_from_spacing

    assert scale_from_spacing((120.0, 3.9, 11.0), ndim=ndim) == (120.0, 3.9, 11.0)[-ndim:]
    assert scale_from_spacing((None, 3.9, 11.0), ndim=ndim) == (11.0, 3.9, 11.0)[-ndim:]
    assert scale_from_spacing((120.0, None, 11.0), ndim=ndim) == (1.0, 1.0, 1.0)[-ndim:]
    assert scale_from_spacing(None, ndim=ndim) == (1.0,) * ndim


def test_en_face_map_sits_below_the_bscan_column_aligned():
    result = fake_result()
    scale = (120.0, 3.9, 11.0)
    layers = {m["name"]: (d, m) for d, m, _ in _layers.result_layers(result, "s", scale=scale)}
    data, meta = layers["s en face"]
    assert data.shape == (S, W)
    assert meta["scale"][1] == 11.0  # same column scale as the B-scan
    assert meta["translate"][1] == 0.0  # columns line up
    assert meta["translate"][0] > H * 3.9  # below the B-scan
    assert S * meta["scale"][0] <= 0.6 * H * 3.9 + 1e-9
    marker, marker_meta = layers["s en face slice"]
    assert marker_meta["scale"] == meta["scale"]
    assert marker[0].shape == (2, 2)


def test_peak_slice_prefers_the_highest_patch():
    from napari_anogan._widgets.candidates import peak_slice

    result = fake_result(hot_slice=2)
    (cand,) = result.candidates
    assert peak_slice(cand, result) == 2
    assert peak_slice({"slice_start": 1, "slice_end": 4}) == 2

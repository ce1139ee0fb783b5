"""Preprocessing: normalisation, resampling, boundaries, flattening, patches, outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from skimage.graph import MCP

from napari_anogan.datasets.synthetic import make_volume
from napari_anogan.errors import InputError
from napari_anogan.io.volume import Volume
from napari_anogan.preprocess import (
    Geometry,
    Patches,
    PreprocessConfig,
    PreprocessedVolume,
    detect_boundaries,
    grid_coords,
    grid_patches,
    normalise_intensity,
    preprocess_volume,
    random_patches,
    resample_width,
    write_preprocess_outputs,
)
from napari_anogan.preprocess._graph import min_cost_rows
from napari_anogan.preprocess.normalise import resampled_width

# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def healthy():
    return make_volume(5, 496, 512, seed=3)


@pytest.fixture(scope="module")
def pre_healthy(healthy) -> PreprocessedVolume:
    return preprocess_volume(Volume(healthy.data, spacing=healthy.spacing, name="healthy"))


def _toy_bscans(n_slices=1, height=120, width=96, *, noise=0.0, seed=0, membrane=False):
    """Dark vitreous, a retina band (rows 40-79), a bright RPE (74-79), dark choroid."""
    img = np.full((n_slices, height, width), 20.0)
    img[:, 40:80] = 120.0
    img[:, 74:80] = 230.0
    img[:, 80:] = 60.0
    if membrane:
        img[:, 18:20] = 140.0  # thin detached vitreous membrane above the retina
    if noise:
        img += np.random.default_rng(seed).normal(0, noise, img.shape)
    return img


# -- normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_normalise_exact_values(dtype):
    data = np.array([[0, 25, 50], [75, 100, 100]], dtype=dtype)
    out, (lo, hi) = normalise_intensity(data, 0, 100)
    assert out.dtype == np.float32
    assert (lo, hi) == (0.0, 100.0)
    np.testing.assert_allclose(out, [[-1, -0.5, 0], [0.5, 1, 1]], atol=1e-6)


def test_normalise_clips_to_percentiles():
    data = np.arange(11, dtype=np.float64)  # 0..10
    out, (lo, hi) = normalise_intensity(data, 10, 90)
    assert (lo, hi) == pytest.approx((1.0, 9.0))
    np.testing.assert_allclose(out[[0, 1, 5, 9, 10]], [-1, -1, 0, 1, 1], atol=1e-6)
    assert out.min() == -1
    assert out.max() == 1


def test_normalise_mostly_constant_falls_back_to_min_max():
    data = np.zeros(10000)
    data[:3] = 50.0
    out, (lo, hi) = normalise_intensity(data)
    assert (lo, hi) == (0.0, 50.0)
    assert out.max() == 1.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.full((2, 4, 4), 7, np.uint8), "constant"),
        (np.array([1.0, np.nan, 3.0]), "NaN"),
        (np.array([1.0, np.inf, 3.0]), "NaN or infinite"),
        (np.zeros((0, 4)), "empty"),
    ],
)
def test_normalise_rejects_bad_input(data, message):
    with pytest.raises(InputError, match=message) as info:
        normalise_intensity(data, source="scan.tif")
    assert info.value.path == "scan.tif"


# -- width resampling ---------------------------------------------------------------------


def test_resampled_width_rule():
    assert resampled_width(512, 11.5, 22.0, 256) == round(512 * 11.5 / 22.0) == 268
    assert resampled_width(512, None, 22.0, 256) == 256
    assert resampled_width(768, float("nan"), 22.0, 200) == 200


def test_resample_width_keeps_depth_and_linear_ramps():
    ramp = np.tile(np.arange(512, dtype=np.float32), (2, 10, 1))
    out = resample_width(ramp, 256)
    assert out.shape == (2, 10, 256)
    assert out.dtype == np.float32
    u = np.arange(256)
    expected = (u + 0.5) * 2 - 0.5  # pixel centres as skimage.transform.resize aligns them
    np.testing.assert_allclose(out[0, 0, 5:-5], expected[5:-5], atol=1e-3)
    np.testing.assert_array_equal(resample_width(ramp, 512), ramp)


# -- config -------------------------------------------------------------------------------


def test_config_json_round_trip():
    cfg = PreprocessConfig(target_width=128, band_height=96, margin_above=8)
    again = PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert PreprocessConfig.from_dict({"patch_size": 32, "future_key": 1}).patch_size == 32


def test_detection_params_scale_with_depth_spacing():
    cfg = PreprocessConfig()
    assert cfg.detection_params()["row_scale"] == 1.0
    assert cfg.detection_params(7.74)["row_scale"] == pytest.approx(0.5)


# -- graph search -------------------------------------------------------------------------


def test_min_cost_rows_matches_skimage_mcp():
    rng = np.random.default_rng(0)
    cost = rng.random((3, 30, 25)) + 0.01
    rows = min_cost_rows(cost, max_jump=2)
    for s in range(3):
        mcp = MCP(cost[s], offsets=[(d, 1) for d in range(-2, 3)])
        cum, _ = mcp.find_costs([(r, 0) for r in range(30)])
        assert cost[s][rows[s], np.arange(25)].sum() == pytest.approx(cum[:, -1].min())
        assert np.abs(np.diff(rows[s])).max() <= 2


def test_min_cost_rows_respects_band_and_penalty():
    cost = np.ones((1, 20, 10))
    cost[0, 5, :5] = 0.0
    cost[0, 15, 5:] = 0.0
    lower = np.full((1, 10), 3)
    upper = np.full((1, 10), 12)
    rows = min_cost_rows(cost, max_jump=3, lower=lower, upper=upper)
    assert rows.min() >= 3
    assert rows.max() <= 12
    assert np.all(rows[0, :5] == 5)
    # a large jump penalty keeps the path straight
    flat = min_cost_rows(cost, max_jump=3, jump_penalty=10.0)
    assert np.all(flat == flat[0, 0])


def test_min_cost_rows_restarts_where_bands_step_apart():
    # The allowed band steps down by 18 rows at column 5, more than max_jump: the path
    # restarts there (it used to backtrack through unreachable rows into an IndexError).
    rng = np.random.default_rng(3)
    cost = rng.random((2, 40, 10)) + 0.01
    lower = np.array([[2] * 5 + [20] * 5, [20] * 5 + [2] * 5])
    upper = lower + 2
    rows = min_cost_rows(cost, max_jump=3, lower=lower, upper=upper)
    assert np.all((rows >= lower) & (rows <= upper))
    # each side of the step is the cheapest path within its own band
    for s in range(2):
        for cols in (slice(0, 5), slice(5, 10)):
            part = min_cost_rows(
                cost[s : s + 1, :, cols],
                max_jump=3,
                lower=lower[s : s + 1, cols],
                upper=upper[s : s + 1, cols],
            )
            np.testing.assert_array_equal(rows[s, cols], part[0])


def test_preprocessing_of_an_eye_whose_bm_bands_step_apart():
    # Validation eye 6002 of make_synthetic_dataset.py (HRF and a PED): its BM search band
    # steps by more than max_jump where the RPE lifts, which crashed preprocessing.
    syn = make_volume(16, 496, 512, lesions=["hrf", "ped"], seed=6002)
    pre = preprocess_volume(Volume(syn.data, spacing=syn.spacing, name="validation_002"))
    assert np.abs(pre.ilm - syn.ilm).mean() < 1.0  # measured 0.23 px
    assert np.abs(pre.bm - syn.bm).mean() < 1.0  # measured 0.24 px


# -- boundaries ---------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [0.0, 15.0])
def test_boundaries_on_hand_made_bscans(noise):
    x, _ = normalise_intensity(_toy_bscans(3, noise=noise, seed=1))
    ilm, bm = detect_boundaries(x)
    assert ilm.shape == bm.shape == (3, 96)
    np.testing.assert_allclose(np.median(ilm), 39.5, atol=1.0)
    np.testing.assert_allclose(np.median(bm), 79.5, atol=1.0)
    assert np.abs(ilm - 39.5).max() < 3
    assert np.abs(bm - 79.5).max() < 3


def test_ilm_ignores_a_thin_membrane_above_the_retina():
    x, _ = normalise_intensity(_toy_bscans(1, noise=10.0, membrane=True))
    ilm, _ = detect_boundaries(x)
    assert np.abs(ilm - 39.5).max() < 3


def test_boundaries_on_synthetic_volume(healthy, pre_healthy):
    assert np.abs(pre_healthy.ilm - healthy.ilm).mean() < 1.0
    assert np.abs(pre_healthy.bm - healthy.bm).mean() < 1.0


def test_boundaries_with_vitreous_membrane_and_lesions():
    syn = make_volume(3, 496, 512, seed=5, vitreous_membrane=True, lesions=["ped", "irf"])
    pre = preprocess_volume(Volume(syn.data, spacing=syn.spacing))
    assert np.abs(pre.ilm - syn.ilm).mean() < 2.0
    assert np.abs(pre.bm - syn.bm).mean() < 3.0


def test_neighbouring_bscans_correct_a_corrupted_one():
    syn = make_volume(5, 496, 512, seed=2)
    data = syn.data.copy()
    rows = np.arange(496)[:, None]
    top = (syn.ilm[2] - 45)[None, :]
    band = (rows >= top) & (rows < top + 18)  # thick bright artefact above the retina
    data[2][band] = np.clip(data[2][band].astype(int) + 110, 0, 255)
    vol = Volume(data, spacing=syn.spacing)
    alone = preprocess_volume(vol, PreprocessConfig(slice_band=0))
    assert np.abs(alone.ilm[2] - syn.ilm[2]).mean() > 20  # fooled without its neighbours
    pre = preprocess_volume(vol)
    assert np.abs(pre.ilm - syn.ilm).mean(axis=1).max() < 1.0


def test_white_padding_wedge_is_not_taken_for_the_retina():
    img = _toy_bscans(1, noise=10.0, seed=2)
    rows = np.arange(img.shape[1])[:, None]
    cols = np.arange(img.shape[2])[None, :]
    img[0][rows < 25 - cols * 0.2] = 255.0  # rotated export: white wedge at the top
    x, _ = normalise_intensity(img)
    ilm, bm = detect_boundaries(x)
    assert np.abs(ilm - 39.5).max() < 3
    assert np.abs(bm - 79.5).max() < 3


# -- flattening ---------------------------------------------------------------------------


def test_flattening_puts_bm_on_one_row(healthy, pre_healthy):
    pre = pre_healthy
    g = pre.geometry
    s, hb, wr = pre.flat.shape
    assert (s, wr) == (5, 268)
    assert pre.flat.dtype == np.float32
    assert pre.flat.min() >= -1
    assert pre.flat.max() <= 1
    assert hb >= pre.config.patch_size
    np.testing.assert_array_equal(pre.bm_flat, g.bm_row)
    # the BM rows, resampled and shifted, lie within half a row of bm_row
    u = g.flat_col_to_raw(np.arange(wr))
    bm_r = np.stack([np.interp(u, np.arange(512), pre.bm[i]) for i in range(s)])
    assert np.abs(bm_r - g.offsets - g.bm_row).max() <= 0.6  # 0.5 + re-interpolation
    # band: margin above the highest ILM, margin below BM
    assert pre.ilm_flat.min() == pytest.approx(pre.config.margin_above, abs=1.0)
    assert hb - 1 - g.bm_row == pre.config.margin_below
    # the true BM of the generator is flat in the band too
    truth = g.raw_to_flat_points(
        np.stack(
            [
                np.repeat(np.arange(s), 512),
                healthy.bm.ravel(),
                np.tile(np.arange(512), s),
            ],
            axis=1,
        )
    )
    assert np.abs(truth[:, 1] - g.bm_row).mean() < 1.0


def test_retina_mask_between_boundaries(pre_healthy):
    pre = pre_healthy
    rows = np.arange(pre.flat.shape[1])[None, :, None]
    expected = (rows >= pre.ilm_flat[:, None, :]) & (rows <= pre.bm_flat[:, None, :])
    np.testing.assert_array_equal(pre.retina_mask, expected)
    # the retina is brighter than the vitreous above it in the band
    above = rows < pre.ilm_flat[:, None, :] - 3
    assert (
        pre.flat[pre.retina_mask].mean() > pre.flat[np.broadcast_to(above, pre.flat.shape)].mean()
    )


def test_fixed_band_height():
    syn = make_volume(2, 496, 512, seed=1)
    cfg = PreprocessConfig(band_height=200)
    pre = preprocess_volume(Volume(syn.data), cfg)
    assert pre.flat.shape == (2, 200, 256)  # no spacing -> target_width
    assert pre.geometry.bm_row == 200 - 1 - cfg.margin_below


def test_two_dimensional_bscan_is_one_slice():
    img = _toy_bscans(1, 120, 96, noise=5.0)[0].astype(np.uint8)
    pre = preprocess_volume(Volume(img), PreprocessConfig(target_width=96))
    assert pre.flat.shape[0] == 1
    assert pre.ilm.shape == (1, 96)


@pytest.mark.parametrize(
    ("shape", "cfg"), [((2, 50, 200), {}), ((2, 200, 200), {"target_width": 40})]
)
def test_too_small_for_a_patch(shape, cfg):
    vol = Volume(
        np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8), source="tiny.tif"
    )
    with pytest.raises(InputError, match="smaller than one 64x64 patch") as info:
        preprocess_volume(vol, PreprocessConfig(**cfg))
    assert "tiny.tif" in str(info.value)
    assert str(shape[1]) in str(info.value)


@pytest.mark.parametrize(("value", "message"), [(np.nan, "NaN"), (None, "constant")])
def test_bad_volumes_raise_input_error(value, message):
    data = np.full((2, 100, 100), 3.0, np.float32)
    if value is not None:
        data[0, 5, 5] = value
    with pytest.raises(InputError, match=message) as info:
        preprocess_volume(Volume(data, source="bad.tif"))
    assert info.value.path == "bad.tif"


def test_wrong_dimensions_raise_input_error():
    with pytest.raises(InputError, match="slices, height, width"):
        preprocess_volume(Volume(np.zeros((2, 3, 100, 100)), source="4d.tif"))


# -- patches ------------------------------------------------------------------------------


def test_random_patches_inside_retina_and_seeded(pre_healthy):
    pre = pre_healthy
    p = pre.config.patch_size
    a = random_patches(pre, 20, seed=7)
    b = random_patches(pre, 20, seed=7)
    c = random_patches(pre, 20, seed=8)
    assert isinstance(a, Patches)
    assert len(a) == 5 * 20
    assert a.images.shape == (100, 1, p, p)
    assert a.images.dtype == np.float32
    assert a.coords.dtype == np.int64
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.coords, c.coords)
    np.testing.assert_array_equal(np.bincount(a.coords[:, 0]), [20] * 5)
    s, r, col = a.coords.T
    assert r.min() >= 0
    assert r.max() <= pre.flat.shape[1] - p
    assert col.min() >= 0
    assert col.max() <= pre.flat.shape[2] - p
    assert pre.retina_mask[s, r + p // 2, col + p // 2].all()  # centred in the retina
    for i in (0, 37, 99):
        si, ri, ci = a.coords[i]
        np.testing.assert_array_equal(a.images[i, 0], pre.flat[si, ri : ri + p, ci : ci + p])
    gen = np.random.default_rng(3)
    assert len(random_patches(pre, 4, seed=gen)) == 20


def _coverage(coords, shape, p):
    covered = np.zeros(shape, bool)
    for si, ri, ci in coords:
        covered[si, ri : ri + p, ci : ci + p] = True
    return covered


def test_grid_patches_cover_the_retina(pre_healthy):
    pre = pre_healthy
    p = pre.config.patch_size
    g = grid_patches(pre, stride=32)
    s_idx, r, c = g.coords.T
    assert set(np.unique(s_idx)) == set(range(5))
    assert np.all((r % 32 == 0) | (r == pre.flat.shape[1] - p))
    assert np.all((c % 32 == 0) | (c == pre.flat.shape[2] - p))
    assert _coverage(g.coords, pre.flat.shape, p)[pre.retina_mask].all()
    for i in (0, len(g) // 2, len(g) - 1):
        si, ri, ci = g.coords[i]
        np.testing.assert_array_equal(g.images[i, 0], pre.flat[si, ri : ri + p, ci : ci + p])
    only = grid_patches(pre, stride=64, slices=[1, 3])
    assert set(np.unique(only.coords[:, 0])) == {1, 3}
    with pytest.raises(ValueError, match="slices"):
        grid_patches(pre, slices=[9])


def test_grid_keeps_patches_centred_in_the_retina_as_training_draws_them():
    # A band much taller than this B-scan's retina (as when a lesion elsewhere in the
    # volume thickens the retina): rows 0-79 vitreous, 80-139 retina, 140-171 choroid.
    mask = np.zeros((2, 172, 256), bool)
    mask[:, 80:140] = True
    c = grid_coords(mask, 64, stride=32)
    centre = mask[c[:, 0], c[:, 1] + 32, c[:, 2] + 32]
    assert centre.all()
    # every grid window whose centre is in the retina is kept, and nothing else is needed
    assert sorted(set(c[:, 1])) == [64, 96]
    assert len(c) == 2 * 2 * 7  # 2 slices x 2 rows x 7 columns (0, 32, ..., 192)
    assert _coverage(c, mask.shape, 64)[mask].all()
    # the old rule (>= 10 % retina) also took rows 0, 32 and the flush 108: vitreous-
    # and choroid-centred patches
    assert not (c[:, 1] < 64).any()


def test_grid_adds_the_fewest_off_centre_patches_that_cover_a_steep_edge():
    # The retina climbs steeply at the left edge: columns 0-15 hold retina only in rows
    # 0-40, which no retina-centred patch reaches (their centres sit in rows 100-160).
    mask = np.zeros((1, 200, 128), bool)
    mask[0, 100:160, :] = True
    mask[0, 0:40, 0:16] = True
    c = grid_coords(mask, 64, stride=32)
    covered = _coverage(c, mask.shape, 64)
    assert covered[mask].all()
    off = ~mask[c[:, 0], c[:, 1] + 32, c[:, 2] + 32]
    # one extra window covers the 40 x 16 strip: row 0, column 0 (the most retina)
    assert c[off].tolist() == [[0, 0, 0]]
    # without it the strip would be uncovered
    assert not _coverage(c[~off], mask.shape, 64)[0, 0:40, 0:16].any()


# -- outputs ------------------------------------------------------------------------------


def test_write_preprocess_outputs(tmp_path, healthy, pre_healthy):
    import tifffile

    vol = Volume(healthy.data, spacing=healthy.spacing, name="eye")
    paths = write_preprocess_outputs(vol, pre_healthy, tmp_path)
    assert set(paths) == {"flat", "boundaries", "overview"}
    assert paths["flat"].name == "eye_flat.tif"
    flat = tifffile.imread(paths["flat"])
    assert flat.dtype == np.float32
    np.testing.assert_array_equal(flat, pre_healthy.flat)
    with open(paths["boundaries"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["slice", "column", "ilm_row", "bm_row"]
    assert len(rows) == 5 * 512
    assert float(rows[512 + 7]["ilm_row"]) == pytest.approx(pre_healthy.ilm[1, 7], abs=0.01)
    assert paths["overview"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".tmp-*"))


def test_geometry_dict_round_trip(pre_healthy):
    g = pre_healthy.geometry
    again = Geometry.from_dict(json.loads(json.dumps(g.to_dict())))
    assert again == g

"""Geometry: raw grid <-> flattened band, round trips (property-based with hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_anogan.preprocess import Geometry


@st.composite
def geometries(draw) -> Geometry:
    s = draw(st.integers(1, 3))
    h = draw(st.integers(16, 200))
    w = draw(st.integers(4, 300))
    wr = draw(st.integers(2, 300))
    hb = draw(st.integers(4, h))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    # smooth-ish offsets, allowed to reach outside the image (band above/below)
    steps = rng.integers(-4, 5, size=(s, wr))
    start = rng.integers(-10, h, size=(s, 1))
    offsets = start + np.cumsum(steps, axis=1)
    return Geometry((s, h, w), wr, hb, offsets, bm_row=draw(st.integers(0, hb - 1)))


@settings(max_examples=200, deadline=None)
@given(geometries(), st.data())
def test_points_round_trip_within_one_raw_pixel(g, data):
    s, h, w = g.raw_shape
    n = 20
    raw = np.stack(
        [
            data.draw(st.lists(st.integers(0, s - 1), min_size=n, max_size=n)),
            data.draw(st.lists(st.floats(0, h - 1), min_size=n, max_size=n)),
            data.draw(st.lists(st.floats(-0.5, w - 0.5), min_size=n, max_size=n)),
        ],
        axis=1,
    ).astype(float)
    back = g.flat_to_raw_points(g.raw_to_flat_points(raw))
    assert np.abs(back - raw).max() <= 1.0
    flat = g.raw_to_flat_points(raw)
    again = g.raw_to_flat_points(g.flat_to_raw_points(flat))
    assert np.abs(again - flat).max() <= 1e-6


@settings(max_examples=100, deadline=None)
@given(geometries(), st.integers(0, 10**6))
def test_box_holds_every_pixel_it_came_from(g, seed):
    rng = np.random.default_rng(seed)
    s, h, w = g.raw_shape
    _, hb, wr = g.band_shape
    i = int(rng.integers(0, s))
    height = int(rng.integers(1, hb + 1))
    width = int(rng.integers(1, wr + 1))
    row = int(rng.integers(0, hb - height + 1))
    col = int(rng.integers(0, wr - width + 1))
    r0, c0, r1, c1 = g.box_to_raw(i, row, col, height, width)
    assert 0 <= r0 <= r1 <= h
    assert 0 <= c0 <= c1 <= w
    rr, cc = np.meshgrid(np.arange(row, row + height), np.arange(col, col + width), indexing="ij")
    pts = np.stack([np.full(rr.size, i), rr.ravel(), cc.ravel()], axis=1).astype(float)
    raw = g.flat_to_raw_points(pts)
    inside = (raw[:, 1] >= 0) & (raw[:, 1] <= h - 1)
    assert np.all(raw[inside, 1] >= r0)
    assert np.all(raw[inside, 1] < r1)
    assert np.all(np.floor(raw[:, 2] + 0.5) >= c0)
    assert np.all(np.floor(raw[:, 2] + 0.5) < max(c1, 1))


@settings(max_examples=60, deadline=None)
@given(geometries())
def test_images_round_trip_where_the_band_covers(g):
    _, h, _ = g.raw_shape
    # depends on the row only, so width resampling cannot change it
    raw = np.broadcast_to(np.arange(h, dtype=np.float32)[None, :, None] * 2.0 + 1.0, g.raw_shape)
    flat = g.raw_to_flat_image(np.ascontiguousarray(raw), fill=-5.0)
    assert flat.shape == g.band_shape
    valid = g.valid_mask()
    expected = np.arange(g.band_height)[None, :, None] + g.offsets[:, None, :]
    np.testing.assert_allclose(flat[valid], (expected * 2.0 + 1.0)[valid], rtol=1e-5)
    assert np.all(flat[~valid] == -5.0)
    back = g.flat_to_raw_image(flat)
    assert back.shape == g.raw_shape
    assert back.dtype == np.float32
    covered = np.isfinite(back)
    np.testing.assert_allclose(back[covered], raw[covered], rtol=1e-5)


@pytest.mark.parametrize(("w", "wr"), [(512, 268), (768, 256), (100, 300), (7, 3)])
def test_half_column_points_round_trip_exactly(w, wr):
    rng = np.random.default_rng(0)
    offsets = rng.integers(0, 50, size=(1, wr))
    g = Geometry((1, 100, w), wr, 40, offsets, 20)
    u = np.arange(wr) + 0.5
    flat = np.stack([np.zeros_like(u), np.full_like(u, 7.0), u], axis=1)
    again = g.raw_to_flat_points(g.flat_to_raw_points(flat))
    np.testing.assert_allclose(again, flat, atol=1e-9)


def test_flat_to_raw_image_fill_and_nan():
    g = Geometry((1, 10, 8), 4, 4, np.array([[2, 2, 3, 3]]), 3)
    flat = np.ones(g.band_shape, np.float32)
    flat[0, :, 3] = np.nan  # e.g. no patch scored there
    out = g.flat_to_raw_image(flat, fill=0.0)
    assert out[0, 0].tolist() == [0.0] * 8  # above the band
    assert out[0, 3, 0] == 1.0
    assert out[0, 3, 7] == 0.0  # only NaN neighbours -> fill
    assert out[0, 4, 5] == 1.0  # one NaN neighbour is left out


def test_integer_masks_keep_thin_lesions():
    g = Geometry((1, 20, 8), 4, 20, np.zeros((1, 4), int), 10)
    mask = np.zeros((1, 20, 8), np.uint8)
    mask[0, 5, 3] = 2  # one pixel wide
    flat = g.raw_to_flat_image(mask)
    assert flat.dtype == np.uint8
    assert flat[0, 5].tolist() == [0, 2, 0, 0]  # raw columns 2-3 -> band column 1
    up = Geometry((1, 20, 4), 8, 20, np.zeros((1, 8), int), 10)
    flat_up = up.raw_to_flat_image(mask[:, :, :4])
    assert flat_up[0, 5].tolist() == [0, 0, 0, 0, 0, 0, 2, 2]


def test_geometry_validates_offsets():
    with pytest.raises(ValueError, match="offsets"):
        Geometry((2, 10, 8), 4, 5, np.zeros((1, 4)), 2)

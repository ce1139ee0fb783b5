"""Chunked preprocessing: exact percentiles, boundaries and bands independent of the chunk size.

The whole-volume results these are compared with are those of the code before chunking
(``np.percentile`` of the whole volume; one boundary search over all B-scans), so a chunk
size changes memory, never a result.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from napari_anogan.datasets.synthetic import make_volume
from napari_anogan.errors import InputError
from napari_anogan.io import Volume
from napari_anogan.preprocess import (
    PreprocessConfig,
    detect_boundaries,
    normalise_intensity,
    plan_preprocessing,
    preprocess_volume,
    resample_width,
)
from napari_anogan.preprocess._quantiles import chunked_percentiles
from napari_anogan.preprocess.normalise import apply_intensity_range, intensity_range_chunked

FIELDS = ("flat", "ilm", "bm", "ilm_flat", "bm_flat", "retina_mask")


def _split(x: np.ndarray, cuts):
    parts = np.split(x, cuts)
    return lambda: iter(parts)


@pytest.mark.parametrize(
    "dtype",
    [
        np.uint8,
        np.uint16,
        np.int8,
        np.int16,
        np.int32,
        np.uint32,
        np.float16,
        np.float32,
        np.float64,
    ],
)
def test_chunked_percentiles_equal_numpy_bit_for_bit(dtype):
    rng = np.random.default_rng(3)
    for trial in range(12):
        n = int(rng.integers(1, 2500))
        if np.dtype(dtype).kind == "f":
            x = (rng.standard_normal(n) * [1e-3, 1.0, 1e4][trial % 3]).astype(dtype)
            if trial % 4 == 0:
                x[rng.random(n) < 0.6] = 0.0  # many ties, and -0.0 / +0.0
                x[:2] = -0.0
        else:
            info = np.iinfo(dtype)
            x = rng.integers(info.min, info.max, n, endpoint=True, dtype=dtype)
        q = [[1.0, 99.9], [0.0, 100.0], [50.0], list(rng.uniform(0, 100, 3))][trial % 4]
        got = chunked_percentiles(_split(x, np.sort(rng.integers(0, n, 3))), q)
        expected = np.percentile(x, q)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


def test_intensity_range_chunked_equals_normalise_intensity():
    data = make_volume(5, 160, 128, seed=1).data
    x, expected = normalise_intensity(data)
    got = intensity_range_chunked(_split(data, [1, 3]))
    assert got == expected
    parts = [apply_intensity_range(data[a:b], got) for a, b in ((0, 2), (2, 5))]
    np.testing.assert_array_equal(np.concatenate(parts), x)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.full((3, 8, 8), 7, np.uint8), "constant"),
        (np.array([[[1.0, np.nan], [np.inf, 2.0]]]), "2 NaN or infinite"),
        (np.zeros((0, 4, 4), np.float32), "empty"),
        (np.ones((2, 3, 3), np.complex64), "real numbers"),
    ],
)
def test_intensity_range_chunked_errors_name_the_file(data, message):
    with pytest.raises(InputError, match=message) as err:
        intensity_range_chunked(_split(data, [1]), source="scan.tif")
    assert "scan.tif" in str(err.value)


def _odd_volume() -> Volume:
    """Lesions plus three B-scans that disagree with their neighbours (second search)."""
    syn = make_volume(n_slices=7, height=320, width=256, lesions=["ped", "irf"], seed=3)
    data = syn.data.copy()
    data[2] = np.roll(data[2], 50, axis=0)
    data[4, :, :120] = data[4, :, :120].mean()
    return Volume(data, spacing=syn.spacing, name="odd")


@pytest.fixture(scope="module")
def odd_volume() -> Volume:
    return _odd_volume()


def test_boundaries_do_not_depend_on_the_chunk_size(odd_volume, caplog):
    x, _ = normalise_intensity(odd_volume.data)
    x = resample_width(x, 232)
    params = PreprocessConfig().detection_params(odd_volume.spacing[1])
    caplog.set_level("DEBUG", logger="napari_anogan.preprocess.boundaries")
    whole_dbg: dict = {}
    whole = detect_boundaries(x, **params, chunk_slices=x.shape[0], debug=whole_dbg)
    assert "re-searching B-scans" in caplog.text  # the second pass ran
    for chunk in (1, 2, 3):
        dbg: dict = {}
        got = detect_boundaries(x, **params, chunk_slices=chunk, debug=dbg)
        for a, b in zip(whole, got, strict=True):
            np.testing.assert_array_equal(a, b)
        assert sorted(dbg) == sorted(whole_dbg)
        for key in dbg:
            np.testing.assert_array_equal(dbg[key], whole_dbg[key])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_preprocess_does_not_depend_on_the_chunk_size(odd_volume, dtype):
    data = odd_volume.data.astype(dtype) * (3 if dtype != np.uint8 else 1)
    vol = Volume(data, spacing=odd_volume.spacing, name="odd")
    whole = preprocess_volume(vol, chunk_slices=vol.shape[0])
    for chunk in (1, 3):
        got = preprocess_volume(vol, chunk_slices=chunk)
        assert got.geometry == whole.geometry
        assert got.intensity_range == whole.intensity_range
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(got, name), getattr(whole, name), err_msg=name)


def test_plan_chunks_are_the_slices_of_the_whole(odd_volume):
    plan = plan_preprocessing(odd_volume, chunk_slices=2)
    whole = plan.preprocessed()
    part = plan.preprocessed(2, 5)
    assert part.geometry == whole.geometry.sub(2, 5)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(part, name), getattr(whole, name)[2:5])
    heat = np.random.default_rng(0).random(whole.flat.shape, dtype=np.float32)
    np.testing.assert_array_equal(
        part.geometry.flat_to_raw_image(heat[2:5]), whole.geometry.flat_to_raw_image(heat)[2:5]
    )
    assert list(plan.chunks()) == [(0, 2), (2, 4), (4, 6), (6, 7)]


def test_geometry_sub_checks_its_range(odd_volume):
    geometry = plan_preprocessing(odd_volume).geometry
    with pytest.raises(ValueError, match="start < stop"):
        geometry.sub(3, 3)


@pytest.mark.slow
def test_preprocessing_memory_is_a_few_chunks_not_the_volume():
    """Working memory (traced peak minus the band kept) is a bounded number of chunks.

    Before chunking, preprocessing held about 20 float arrays of the whole raw volume
    at once (here 20 x 5 MiB); now it is a few arrays of one chunk (2 B-scans).
    """
    syn = make_volume(n_slices=16, height=320, width=256, seed=5)
    vol = Volume(syn.data, spacing=(None, None, None), name="big")
    chunk_float32 = 2 * 320 * 256 * 4
    tracemalloc.start()
    try:
        pre = preprocess_volume(vol, chunk_slices=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    band = pre.flat.nbytes + pre.retina_mask.nbytes
    working = peak - band
    assert working < 16 * chunk_float32, (working / chunk_float32, syn.data.size * 4 / 2**20)

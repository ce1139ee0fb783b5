"""Big volumes: lazy reading, slice-by-slice TIFF writing, chunked (streamed) scoring.

Scoring to files in chunks (``score_volume(..., outdir=...)``, what ``napari-anogan
score`` runs) is compared with the whole volume in memory: with one-B-scan chunks the
preprocessing, patch grid and heatmaps are identical and the patch scores equal to
float32 rounding of batched convolutions (one chunk: tests/test_one_scoring_path.py).
"""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_anogan.datasets.synthetic import make_volume
from napari_anogan.errors import InputError, OutputError
from napari_anogan.events import drain
from napari_anogan.io import TiffSliceWriter, read_volume, write_tiff
from napari_anogan.io import readers as io_readers
from napari_anogan.pipeline import PATCH_COLUMNS, ScoreSettings, score_volume, write_score_outputs

SETTINGS = ScoreSettings(mode="iterative", steps=3, device="cpu")


@pytest.fixture(scope="module")
def volume_path(tmp_path_factory) -> Path:
    syn = make_volume(n_slices=4, height=200, width=256, lesions=["irf"], seed=11)
    path = tmp_path_factory.mktemp("stream") / "eye.ome.tif"
    write_tiff(path, syn.data, spacing=syn.spacing)
    return path


# ----------------------------------------------------------------------------- lazy reads


@pytest.mark.parametrize("suffix", [".ome.tif", ".npy"])
def test_lazy_read_is_dask_and_equals_eager(tmp_path, suffix):
    data = np.random.default_rng(0).integers(0, 4000, (9, 40, 30), dtype=np.uint16)
    path = tmp_path / f"v{suffix}"
    if suffix == ".npy":
        np.save(path, data)
    else:
        write_tiff(path, data, spacing=(20.0, 3.9, 11.0))
    lazy = read_volume(path, lazy=True)
    eager = read_volume(path)
    assert type(lazy.data).__module__.startswith("dask")
    assert (lazy.shape, lazy.data.dtype, lazy.spacing, lazy.name) == (
        eager.shape,
        eager.data.dtype,
        eager.spacing,
        eager.name,
    )
    np.testing.assert_array_equal(np.asarray(lazy.data), data)
    np.testing.assert_array_equal(np.asarray(lazy.data[2:7, 5:9, ::3]), data[2:7, 5:9, ::3])
    np.testing.assert_array_equal(np.asarray(lazy.data[4]), data[4])
    # small files stay in memory unless asked
    assert isinstance(read_volume(path, lazy=None).data, np.ndarray)


def test_lazy_none_reads_big_files_lazily(tmp_path, monkeypatch):
    path = tmp_path / "v.tif"
    write_tiff(path, np.ones((3, 20, 20), np.uint8))
    monkeypatch.setattr(io_readers, "LAZY_MIN_BYTES", 100)
    assert not isinstance(read_volume(path, lazy=None).data, np.ndarray)


def test_lazy_falls_back_to_eager_for_colour_and_2d(tmp_path):
    rgb = np.zeros((32, 40, 3), np.uint8)
    rgb[..., 0] = 200
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "flat.tif", np.ones((32, 40), np.uint16))
    with pytest.warns(UserWarning, match="converted to grey"):
        colour = read_volume(tmp_path / "rgb.tif", lazy=True)
    assert isinstance(colour.data, np.ndarray)
    assert colour.shape == (1, 32, 40)
    assert isinstance(read_volume(tmp_path / "flat.tif", lazy=True).data, np.ndarray)


def test_lazy_nan_is_an_input_error_naming_the_file_when_read(tmp_path, tiny_model_path):
    data = make_volume(n_slices=2, height=200, width=256, seed=2).data.astype(np.float32)
    data[1, 50, 60] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, data)
    volume = read_volume(path, lazy=True)  # no full scan at open time
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="NaN") as err:
        drain(score_volume(volume, tiny_model_path, SETTINGS, outdir=tmp_path / "out"))
    assert "nan.npy" in str(err.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_napari_reader_gives_dask_layers_for_big_files(volume_path, monkeypatch):
    from napari_anogan import _reader

    monkeypatch.setattr(io_readers, "LAZY_MIN_BYTES", 1)
    [(data, _meta, kind)] = _reader.read_layers(str(volume_path))
    assert kind == "image"
    assert not isinstance(data, np.ndarray)
    np.testing.assert_array_equal(np.asarray(data), read_volume(volume_path).data)


# --------------------------------------------------------------------- slice-wise writing


def test_tiff_slice_writer_equals_write_tiff(tmp_path):
    data = np.random.default_rng(1).random((7, 30, 20), dtype=np.float32)
    spacing = (50.0, 3.9, 11.0)
    with TiffSliceWriter(tmp_path / "s.ome.tif", data.shape, spacing=spacing) as writer:
        for a, b in ((0, 3), (3, 4), (4, 7)):
            writer.write(data[a:b])
    write_tiff(tmp_path / "w.ome.tif", data, spacing=spacing)
    got, ref = read_volume(tmp_path / "s.ome.tif"), read_volume(tmp_path / "w.ome.tif")
    np.testing.assert_array_equal(got.data, ref.data)
    assert got.data.dtype == np.float32
    assert got.spacing == ref.spacing == spacing


def _write(path: Path, shape, chunks, fail: Exception | None = None) -> None:
    with TiffSliceWriter(path, shape) as writer:
        for chunk in chunks:
            writer.write(chunk)
        if fail is not None:
            raise fail


def test_tiff_slice_writer_leaves_nothing_on_error_or_missing_slices(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        _write(tmp_path / "a.tif", (3, 4, 4), [np.zeros((1, 4, 4))], RuntimeError("boom"))
    with pytest.raises(OutputError, match="only 2 of 3"):
        _write(tmp_path / "b.tif", (3, 4, 4), [np.zeros((2, 4, 4))])
    with pytest.raises(ValueError, match="shape"):
        _write(tmp_path / "c.tif", (3, 4, 4), [np.zeros((1, 5, 4))])
    with pytest.raises(ValueError, match="more than the 3"):
        _write(tmp_path / "c.tif", (3, 4, 4), [np.zeros((2, 4, 4))] * 2)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="does not exist"):
        _write(tmp_path / "no" / "d.tif", (1, 2, 2), [])


def test_tiff_slice_writer_disk_full_is_an_output_error(tmp_path, monkeypatch):
    def full(path, *args, data=None, **kwargs):
        next(data)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full)
    with pytest.raises(OutputError, match="No space left"):
        _write(tmp_path / "e.tif", (2, 4, 4), [np.zeros((1, 4, 4))] * 2)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- streamed scoring


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _summary(path: Path) -> dict:
    data = json.loads(path.read_text())
    data["model"]["path"] = ""
    return data


@pytest.fixture(scope="module")
def in_memory(volume_path, tiny_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("in_memory")
    result = drain(score_volume(read_volume(volume_path), tiny_model_path, SETTINGS))
    return result, write_score_outputs(result, out)


@pytest.mark.slow  # scores a volume several times
def test_streamed_in_one_bscan_chunks_equals_in_memory_to_float32_rounding(
    in_memory, volume_path, tiny_model_path, tmp_path
):
    ref, ref_paths = in_memory
    volume = read_volume(volume_path, lazy=True)
    events = []
    result = drain(
        score_volume(volume, tiny_model_path, SETTINGS, outdir=tmp_path, chunk_slices=1),
        events.append,
    )
    paths = result.outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())
    assert result.reconstruction is None
    got, expected = _rows(paths["scores"]), _rows(ref_paths["scores"])
    assert len(got) == len(expected) > 0
    for name in ("slice", "row", "col", "height", "width"):  # same patch grid, raw boxes
        assert [r[name] for r in got] == [r[name] for r in expected]
    for name in PATCH_COLUMNS[5:]:
        np.testing.assert_allclose(
            result.patches[name], ref.patches[name], rtol=1e-6, atol=1e-6, err_msg=name
        )
    np.testing.assert_allclose(
        tifffile.imread(paths["residual"]), ref.residual, rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(result.bscan_scores, ref.bscan_scores, rtol=1e-6)
    assert [c["slice_start"] for c in result.candidates] == [
        c["slice_start"] for c in ref.candidates
    ]
    # progress is reported for the whole volume, not per chunk
    batches = [e for e in events if e.kind == "mapping_batch"]
    assert batches[-1].step == batches[-1].total == len(expected)
    assert [e.step for e in batches] == sorted(e.step for e in batches)


@pytest.mark.slow  # scores a volume several times
def test_streamed_slices_and_boxes_match_in_memory(volume_path, tiny_model_path, tmp_path):
    volume = read_volume(volume_path)
    for region in ({"slices": [1, 3]}, {"boxes": [(2, 60, 40, 140, 160)]}):
        ref = drain(score_volume(volume, tiny_model_path, SETTINGS, **region))
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        out.mkdir()
        got = drain(
            score_volume(volume, tiny_model_path, SETTINGS, outdir=out, chunk_slices=2, **region)
        )
        for name in ("slice", "row", "col", "flat_row", "flat_col"):
            np.testing.assert_array_equal(got.patches[name], ref.patches[name])
        np.testing.assert_allclose(
            got.patches["anomaly_score"], ref.patches["anomaly_score"], rtol=1e-6
        )
    with pytest.raises(InputError, match="no patch"):
        drain(score_volume(volume, tiny_model_path, SETTINGS, outdir=out, boxes=[(0, 0, 0, 2, 2)]))


@pytest.mark.slow
def test_streamed_scoring_memory_does_not_grow_with_the_number_of_bscans(tiny_model_path, tmp_path):
    """numpy's traced peak: 12 B-scans need about what 3 need (chunks of 3)."""
    peaks = {}
    for n in (3, 12):
        syn = make_volume(n_slices=n, height=200, width=256, seed=4)
        path = tmp_path / f"v{n}.ome.tif"
        write_tiff(path, syn.data, spacing=syn.spacing)
        volume = read_volume(path, lazy=True)
        out = tmp_path / f"out{n}"
        out.mkdir()
        settings = ScoreSettings(mode="iterative", steps=1, device="cpu")
        tracemalloc.start()
        try:
            drain(score_volume(volume, tiny_model_path, settings, outdir=out, chunk_slices=3))
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    raw_float32 = 12 * 200 * 256 * 4
    assert peaks[12] < 1.25 * peaks[3] + 0.1 * raw_float32, peaks

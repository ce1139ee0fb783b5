"""The napari reader, writers and sample data (no viewer needed)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_anogan import _reader, _sample_data, _writer
from napari_anogan._widgets._common import SPACING_KEY
from napari_anogan.io import read_volume, write_tiff


@pytest.fixture
def volume_file(tmp_path: Path) -> Path:
    data = np.random.default_rng(0).integers(0, 255, (4, 32, 48), dtype=np.uint8)
    path = tmp_path / "scan.ome.tif"
    write_tiff(path, data, spacing=(120.0, 3.9, 11.5))
    return path


@pytest.mark.parametrize(
    "path", ["notes.txt", "model.pt", "", "missing_folder/", ["a.tif", "b.txt"], []]
)
def test_reader_declines_unsupported(tmp_path, path):
    if isinstance(path, str) and path.endswith("/"):
        path = str(tmp_path / path)
    assert _reader.get_reader(path) is None


def test_reader_declines_empty_folder_and_odd_input(tmp_path):
    assert _reader.get_reader(str(tmp_path)) is None
    assert _reader.get_reader(None) is None  # type: ignore[arg-type]
    assert _reader.get_reader(42) is None  # type: ignore[arg-type]


def test_reader_reads_volume_with_scale(volume_file):
    reader = _reader.get_reader(str(volume_file))
    assert reader is not None
    ((data, meta, kind),) = reader(str(volume_file))
    assert kind == "image"
    assert data.shape == (4, 32, 48)
    assert meta["name"] == "scan"
    np.testing.assert_allclose(meta["scale"], (120.0, 3.9, 11.5))
    np.testing.assert_allclose(meta["metadata"][SPACING_KEY], (120.0, 3.9, 11.5))


def test_reader_single_bscan_is_2d_and_unknown_spacing_is_pixels(tmp_path):
    from PIL import Image

    path = tmp_path / "bscan.png"
    Image.fromarray(np.full((20, 30), 7, np.uint8)).save(path)
    ((data, meta, _kind),) = _reader.get_reader(str(path))(str(path))
    assert data.shape == (20, 30)
    assert meta["scale"] == (1.0, 1.0)


def test_reader_folder_and_mask(tmp_path):
    from PIL import Image

    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 30), i, np.uint8)).save(folder / f"b{i}.png")
    ((data, _, kind),) = _reader.get_reader(str(folder))(str(folder))
    assert (kind, data.shape) == ("image", (3, 20, 30))  # numbered, one size: one volume
    mask = tmp_path / "scan_mask.ome.tif"
    write_tiff(mask, np.eye(10, dtype=np.uint8)[None])
    ((labels, _meta, kind),) = _reader.read_layers(str(mask))
    assert kind == "labels"
    assert labels.dtype.kind == "i"
    assert labels.sum() == 10


def test_reader_opens_a_collection_folder_as_one_layer_per_bscan(tmp_path):
    from PIL import Image

    folder = tmp_path / "archive"
    folder.mkdir()
    sizes = {"NORMAL-4872585-1.png": (20, 30), "CNV-6294785-1.png": (20, 45)}
    for name, shape in sizes.items():
        Image.fromarray(np.full(shape, 9, np.uint8)).save(folder / name)
    layers = _reader.get_reader(str(folder))(str(folder))
    assert [m["name"] for _, m, _ in layers] == ["CNV-6294785-1", "NORMAL-4872585-1"]
    assert [d.shape for d, _, _ in layers] == [(20, 45), (20, 30)]  # not stacked


def test_reader_list_of_paths(volume_file, tmp_path):
    other = tmp_path / "other.ome.tif"
    write_tiff(other, np.zeros((2, 8, 8), np.uint16))
    layers = _reader.get_reader([str(volume_file), str(other)])([str(volume_file), str(other)])
    assert [m["name"] for _, m, _ in layers] == ["scan", "other"]


def test_reader_function_raises_project_error_on_corrupt_file(tmp_path):
    from napari_anogan.errors import AnoganError

    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff at all")
    reader = _reader.get_reader(str(bad))
    assert reader is not None  # the check is cheap: by suffix only
    with pytest.raises(AnoganError, match=r"broken\.tif"):
        reader(str(bad))


def test_image_writer_round_trip_keeps_spacing(volume_file, tmp_path):
    ((data, meta, _),) = _reader.read_layers(str(volume_file))
    out = tmp_path / "copy.ome.tif"
    assert _writer.write_image(str(out), data, meta) == [str(out)]
    back = read_volume(out)
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.spacing, (120.0, 3.9, 11.5))


def test_image_writer_uses_scale_without_stored_spacing(tmp_path):
    out = tmp_path / "b.ome.tif"
    _writer.write_image(str(out), np.ones((10, 12), np.float32), {"scale": (3.9, 11.5)})
    back = read_volume(out)
    assert back.data.shape == (1, 10, 12)
    assert back.spacing[1:] == pytest.approx((3.9, 11.5))


def test_labels_writer(tmp_path):
    out = tmp_path / "m.ome.tif"
    _writer.write_labels(str(out), np.arange(24, dtype=np.int32).reshape(2, 3, 4), {})
    assert read_volume(out).data.sum() == sum(range(24))


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_shapes_writer_rows_with_features(tmp_path):
    data = [
        np.array([[1, 0, 0], [1, 0, 4], [1, 2, 4], [1, 2, 0]], float),
        np.array([[2, 5, 5], [2, 6, 7]], float),
    ]
    meta = {
        "shape_type": ["rectangle", "line"],
        "features": pd.DataFrame({"score": [0.5, 2.0], "decision": ["keep", ""]}),
    }
    out = tmp_path / "s.csv"
    assert _writer.write_shapes(str(out), data, meta) == [str(out)]
    rows = _read_csv(out)
    assert len(rows) == 2
    assert rows[0]["shape_type"] == "rectangle"
    assert float(rows[0]["axis-2_max"]) == 4.0
    assert rows[1]["score"] == "2.0"
    assert rows[0]["decision"] == "keep"
    assert len(rows[1]["vertices"].split(";")) == 2


def test_points_writer_rows_with_features(tmp_path):
    out = tmp_path / "p.csv"
    meta = {"features": {"label": np.array(["a", "b"])}}
    _writer.write_points(str(out), np.array([[0, 1.5, 2], [3, 4, 5]]), meta)
    rows = _read_csv(out)
    assert [r["label"] for r in rows] == ["a", "b"]
    assert float(rows[0]["axis-1"]) == 1.5


def test_empty_shapes_writer(tmp_path):
    out = tmp_path / "e.csv"
    _writer.write_shapes(str(out), [], {"features": pd.DataFrame()})
    assert out.read_text().strip() == "index,shape_type,vertices"


def _bundled(name: str) -> bool:
    from napari_anogan.resources import sample_data_dir

    try:
        return (sample_data_dir() / name).is_file()
    except Exception:
        return False


def test_sample_volume_with_mask():
    from napari_anogan.resources import SAMPLE_MASK, SAMPLE_VOLUME

    if not (_bundled(SAMPLE_VOLUME) and _bundled(SAMPLE_MASK)):
        pytest.skip("bundled sample volume not generated yet")
    (image, image_meta, image_kind), (labels, labels_meta, labels_kind) = (
        _sample_data.sample_volume()
    )
    assert (image_kind, labels_kind) == ("image", "labels")
    assert image.shape == labels.shape
    assert labels.max() > 0
    assert labels_meta["name"].endswith("lesions")
    assert all(s > 1 for s in image_meta["scale"])  # physical spacing, micrometres


def test_sample_real_bscan_is_credited():
    ((data, meta, kind),) = _sample_data.sample_real_bscan()
    assert kind == "image"
    assert data.shape == (496, 768)
    assert "CC BY 4.0" in meta["metadata"]["credit"]
    credits = Path(__file__).resolve().parents[1] / "sample_data" / "CREDITS.md"
    assert _sample_data.REAL_BSCAN in credits.read_text(encoding="utf-8")

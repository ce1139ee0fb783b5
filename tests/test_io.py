"""Tests of napari_anogan.io: readers, vendor dispatch, writers."""

from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_anogan.errors import InputError, OutputError
from napari_anogan.io import (
    SUPPORTED_SUFFIXES,
    VENDOR_SUFFIXES,
    Volume,
    is_supported,
    read_volume,
    write_csv,
    write_json,
    write_tiff,
)
from napari_anogan.io import vendor as vendor_mod

REAL_OCT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-oct"
INSTALL_HINT = 'pip install "napari-anogan[vendor]"'


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _bscan(rng: np.random.Generator, shape=(24, 32), dtype=np.uint8) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return rng.random(shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


# ------------------------------------------------------------------------------ TIFF


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_2d_becomes_one_slice_and_keeps_dtype(tmp_path, rng, dtype):
    img = _bscan(rng, dtype=dtype)
    tifffile.imwrite(tmp_path / "b.tif", img)
    vol = read_volume(tmp_path / "b.tif")
    assert isinstance(vol, Volume)
    assert vol.shape == (1, 24, 32)
    assert vol.data.dtype == dtype
    np.testing.assert_array_equal(vol.data[0], img)
    assert vol.spacing == (None, None, None)
    assert vol.name == "b"
    assert vol.source == str(tmp_path / "b.tif")


def test_multipage_tiff_is_slice_depth_width(tmp_path, rng):
    stack = _bscan(rng, shape=(5, 24, 32), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "v.tiff", stack, photometric="minisblack")
    vol = read_volume(str(tmp_path / "v.tiff"))
    assert vol.shape == (5, 24, 32)
    np.testing.assert_array_equal(vol.data, stack)


def test_ome_tiff_spacing_units_converted_to_micrometres(tmp_path, rng):
    stack = _bscan(rng, shape=(3, 24, 32))
    meta = {
        "axes": "ZYX",
        "PhysicalSizeZ": 0.12,
        "PhysicalSizeZUnit": "mm",
        "PhysicalSizeY": 3900.0,
        "PhysicalSizeYUnit": "nm",
        "PhysicalSizeX": 11.5,  # no unit: OME default is µm
    }
    tifffile.imwrite(tmp_path / "eye.ome.tif", stack, ome=True, metadata=meta)
    vol = read_volume(tmp_path / "eye.ome.tif")
    assert vol.name == "eye"
    assert vol.metadata["format"] == "ome-tiff"
    assert vol.spacing == pytest.approx((120.0, 3.9, 11.5))


def test_imagej_tiff_spacing(tmp_path, rng):
    stack = _bscan(rng, shape=(3, 24, 32))
    tifffile.imwrite(
        tmp_path / "ij.tif",
        stack,
        imagej=True,
        resolution=(1 / 11.5, 1 / 3.9),
        metadata={"spacing": 120.0, "unit": "micron", "axes": "ZYX"},
    )
    vol = read_volume(tmp_path / "ij.tif")
    assert vol.metadata["format"] == "imagej-tiff"
    assert vol.spacing == pytest.approx((120.0, 3.9, 11.5), rel=1e-5)


def test_tiff_resolution_tags_in_cm_give_spacing_but_screen_dpi_does_not(tmp_path, rng):
    img = _bscan(rng)
    # 11 µm x 4 µm pixels: 1/0.0011 and 1/0.0004 pixels per centimetre
    tifffile.imwrite(
        tmp_path / "cm.tif", img, resolution=(1 / 0.0011, 1 / 0.0004), resolutionunit="CENTIMETER"
    )
    assert read_volume(tmp_path / "cm.tif").spacing == pytest.approx((None, 4.0, 11.0))
    tifffile.imwrite(tmp_path / "dpi.tif", img, resolution=(72, 72), resolutionunit="INCH")
    assert read_volume(tmp_path / "dpi.tif").spacing == (None, None, None)


def test_rgb_tiff_converted_to_grey_with_warning_and_log(tmp_path, caplog):
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[..., 0] = 100  # pure red 100 -> 0.2125 * 100 = 21.25 -> 21
    rgb[0, 0] = (10, 200, 30)  # 2.125 + 143.08 + 2.163 = 147.368 -> 147
    tifffile.imwrite(tmp_path / "col.tif", rgb, photometric="rgb")
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="col.tif"):
        vol = read_volume(tmp_path / "col.tif")
    assert vol.shape == (1, 8, 10)
    assert vol.data.dtype == np.uint8
    assert vol.data[0, 0, 0] == 147
    assert vol.data[0, 1, 1] == 21
    assert any("col.tif" in r.getMessage() and "grey" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------- PNG / JPEG / BMP


def test_png_8_and_16_bit_kept(tmp_path, rng):
    img8 = _bscan(rng)
    img16 = _bscan(rng, dtype=np.uint16)
    Image.fromarray(img8).save(tmp_path / "a.png")
    Image.fromarray(img16).save(tmp_path / "b.png")
    v8, v16 = read_volume(tmp_path / "a.png"), read_volume(tmp_path / "b.png")
    assert v8.data.dtype == np.uint8
    assert v16.data.dtype == np.uint16
    np.testing.assert_array_equal(v8.data[0], img8)
    np.testing.assert_array_equal(v16.data[0], img16)
    assert v8.shape == (1, 24, 32)


def test_jpeg_and_bmp(tmp_path, rng):
    img = np.full((16, 20), 128, np.uint8)
    Image.fromarray(img).save(tmp_path / "j.JPEG")
    Image.fromarray(img).save(tmp_path / "b.bmp")
    j = read_volume(tmp_path / "j.JPEG")
    assert j.shape == (1, 16, 20)
    assert j.data.dtype == np.uint8
    assert np.abs(j.data.astype(int) - 128).max() <= 2  # lossy
    np.testing.assert_array_equal(read_volume(tmp_path / "b.bmp").data[0], img)


def test_grey_stored_as_rgb_png_is_exact(tmp_path, rng):
    grey = _bscan(rng)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "g.png")
    with pytest.warns(UserWarning, match="g.png"):
        vol = read_volume(tmp_path / "g.png")
    np.testing.assert_array_equal(vol.data[0], grey)


def test_rgba_png_drops_alpha(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 1] = 200  # green 200 -> 0.7154 * 200 = 143.08 -> 143
    rgba[..., 3] = 7
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    with pytest.warns(UserWarning, match="a.png"):
        vol = read_volume(tmp_path / "a.png")
    assert vol.data.dtype == np.uint8
    assert np.all(vol.data == 143)


# ------------------------------------------------------------------------------- npy


def test_npy_2d_and_3d(tmp_path, rng):
    a2 = _bscan(rng, dtype=np.float32)
    a3 = _bscan(rng, shape=(4, 24, 32), dtype=np.uint16)
    np.save(tmp_path / "a2.npy", a2)
    np.save(tmp_path / "a3.npy", a3)
    v2, v3 = read_volume(tmp_path / "a2.npy"), read_volume(tmp_path / "a3.npy")
    assert v2.shape == (1, 24, 32)
    assert v2.data.dtype == np.float32
    np.testing.assert_array_equal(v3.data, a3)
    assert v3.name == "a3"


def test_bool_npy_becomes_uint8(tmp_path):
    np.save(tmp_path / "m.npy", np.eye(6, dtype=bool))
    vol = read_volume(tmp_path / "m.npy")
    assert vol.data.dtype == np.uint8
    np.testing.assert_array_equal(vol.data[0], np.eye(6, dtype=np.uint8))


def test_pickled_npy_refused(tmp_path):
    np.save(tmp_path / "p.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="pickle") as err:
        read_volume(tmp_path / "p.npy")
    assert err.value.path == str(tmp_path / "p.npy")


def test_pickle_file_renamed_npy_refused(tmp_path):
    (tmp_path / "x.npy").write_bytes(pickle.dumps({"a": np.zeros(3)}))
    with pytest.raises(InputError, match=r"x\.npy"):
        read_volume(tmp_path / "x.npy")


# --------------------------------------------------------------------- folders, lists


def _write_scans(folder: Path, names: list[str], shape=(8, 10)) -> None:
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full(shape, 10 * (i + 1), np.uint8)).save(folder / name)


def test_folder_natural_sort_skips_masks_hidden_and_other_files(tmp_path):
    folder = tmp_path / "patient7"
    # values: scan10 -> 10, scan2 -> 20, scan1 -> 30
    _write_scans(folder, ["scan10.png", "scan2.png", "scan1.png"])
    _write_scans(folder, ["scan1_mask.png", "scan2-mask.PNG", "scan1_drusen-mask.png"])
    _write_scans(folder, [".hidden.png"], shape=(3, 3))
    (folder / "README.md").write_text("not an image")
    (folder / "sub").mkdir()
    vol = read_volume(folder)
    assert vol.shape == (3, 8, 10)
    assert [int(s[0, 0]) for s in vol.data] == [30, 20, 10]  # scan1, scan2, scan10
    assert vol.name == "patient7"
    assert [Path(f).name for f in vol.metadata["files"]] == ["scan1.png", "scan2.png", "scan10.png"]


def test_folder_of_tiffs_keeps_in_plane_spacing(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    for i in range(2):
        tifffile.imwrite(
            folder / f"b{i}.ome.tif",
            np.full((6, 7), i, np.uint16),
            ome=True,
            metadata={"PhysicalSizeX": 11.0, "PhysicalSizeY": 4.0},
        )
    vol = read_volume(folder)
    assert vol.shape == (2, 6, 7)
    assert vol.data.dtype == np.uint16
    assert vol.spacing == pytest.approx((None, 4.0, 11.0))


def test_list_of_files_stacked_in_given_order(tmp_path):
    _write_scans(tmp_path / "d", ["a.png", "b.png"])
    vol = read_volume([tmp_path / "d" / "b.png", str(tmp_path / "d" / "a.png")])
    assert [int(s[0, 0]) for s in vol.data] == [20, 10]
    assert vol.name == "d"


def test_one_item_list_reads_that_file(tmp_path, rng):
    np.save(tmp_path / "v.npy", _bscan(rng, shape=(3, 8, 9)))
    vol = read_volume([tmp_path / "v.npy"])
    assert vol.shape == (3, 8, 9)
    assert vol.name == "v"


def test_folder_rgb_scans_warn_once(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    for name in ("x1.png", "x2.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / name)
    with pytest.warns(UserWarning, match=r"x1\.png and 1 other") as rec:
        vol = read_volume(folder)
    assert len([w for w in rec if issubclass(w.category, UserWarning)]) == 1
    assert vol.shape == (2, 8, 8)


# ------------------------------------------------------------------------------ errors


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        read_volume(tmp_path / "nope.tif")
    assert "nope.tif" in str(err.value)


@pytest.mark.parametrize("name", ["e.tif", "e.png", "e.npy", "e.jpg"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).touch()
    with pytest.raises(InputError, match=r"empty \(0 bytes\)") as err:
        read_volume(tmp_path / name)
    assert name in str(err.value)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_tiff(tmp_path, rng, compression):
    tifffile.imwrite(
        tmp_path / "full.tif",
        _bscan(rng, shape=(4, 64, 64), dtype=np.uint16),
        photometric="minisblack",
        compression=compression,
    )
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "half.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"half\.tif.*cannot read as TIFF"):
        read_volume(tmp_path / "half.tif")


def test_random_bytes_png(tmp_path, rng):
    (tmp_path / "r.png").write_bytes(rng.bytes(300))
    with pytest.raises(InputError, match=r"r\.png.*cannot read as PNG"):
        read_volume(tmp_path / "r.png")


def test_truncated_jpeg(tmp_path, rng):
    Image.fromarray(_bscan(rng, shape=(64, 64))).save(tmp_path / "f.jpg")
    data = (tmp_path / "f.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"t\.jpg.*truncated"):
        read_volume(tmp_path / "t.jpg")


def test_truncated_npy(tmp_path, rng):
    np.save(tmp_path / "f.npy", _bscan(rng, shape=(4, 16, 16)))
    data = (tmp_path / "f.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"t\.npy"):
        read_volume(tmp_path / "t.npy")


def test_unknown_suffix(tmp_path):
    (tmp_path / "x.xyz").write_bytes(b"abc")
    with pytest.raises(InputError, match=r"x\.xyz.*unsupported file type '\.xyz'.*\.tif"):
        read_volume(tmp_path / "x.xyz")


def test_empty_folder_and_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: folder holds no B-scan images"):
        read_volume(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    _write_scans(tmp_path / "other", ["only_mask.png"])
    with pytest.raises(InputError, match="no B-scan images"):
        read_volume(tmp_path / "other")


def test_empty_list():
    with pytest.raises(InputError, match="no files given"):
        read_volume([])


@pytest.mark.parametrize(
    ("shape", "pattern"),
    [
        ((2, 2, 8, 8), r"4-D data of shape \(2, 2, 8, 8\); expected a 2-D B-scan"),
        ((5,), r"1-D data of shape \(5,\); expected a 2-D B-scan"),
        ((3, 0, 8), r"axis of size 0 \(shape \(3, 0, 8\)\)"),
        ((0, 8), r"axis of size 0"),
    ],
)
def test_bad_dimensions_npy(tmp_path, shape, pattern):
    np.save(tmp_path / "bad.npy", np.zeros(shape, np.float32))
    with pytest.raises(InputError, match=pattern) as err:
        read_volume(tmp_path / "bad.npy")
    assert err.value.path == str(tmp_path / "bad.npy")


def test_4d_tiff(tmp_path):
    tifffile.imwrite(
        tmp_path / "h.ome.tif",
        np.zeros((2, 3, 8, 8), np.uint8),
        ome=True,
        metadata={"axes": "TZYX"},
    )
    with pytest.raises(InputError, match=r"h\.ome\.tif.*4-D data"):
        read_volume(tmp_path / "h.ome.tif")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(tmp_path, bad):
    a = np.zeros((2, 8, 8), np.float32)
    a[1, 2, 3] = bad
    a[0, 0, 0] = bad
    np.save(tmp_path / "n.npy", a)
    with pytest.raises(InputError, match=r"n\.npy.*2 NaN or infinite"):
        read_volume(tmp_path / "n.npy")
    tifffile.imwrite(tmp_path / "n.tif", a, photometric="minisblack")
    with pytest.raises(InputError, match=r"n\.tif.*NaN or infinite"):
        read_volume(tmp_path / "n.tif")


def test_complex_dtype_refused(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((4, 4), np.complex64))
    with pytest.raises(InputError, match="complex64"):
        read_volume(tmp_path / "c.npy")


def test_folder_with_odd_shape_names_the_odd_file(tmp_path):
    folder = tmp_path / "f"
    _write_scans(folder, ["s1.png", "s3.png"], shape=(8, 10))
    _write_scans(folder, ["s2.png"], shape=(8, 12))
    with pytest.raises(InputError, match=r"s2\.png: B-scan has shape \(8, 12\).*\(8, 10\)"):
        read_volume(folder)


def test_folder_first_file_odd_is_the_one_named(tmp_path):
    folder = tmp_path / "f"
    _write_scans(folder, ["s2.png", "s3.png"], shape=(8, 10))
    _write_scans(folder, ["s1.png"], shape=(9, 10))
    with pytest.raises(InputError, match=r"s1\.png: B-scan has shape \(9, 10\)"):
        read_volume(folder)


def test_folder_with_mixed_bit_depth(tmp_path):
    folder = tmp_path / "f"
    _write_scans(folder, ["a1.png", "a2.png"])
    Image.fromarray(np.zeros((8, 10), np.uint16)).save(folder / "a3.png")
    with pytest.raises(InputError, match=r"a3\.png: B-scan has dtype uint16"):
        read_volume(folder)


def test_folder_with_a_volume_file_inside(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    tifffile.imwrite(folder / "v.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match=r"v\.tif: holds 3 B-scans"):
        read_volume([folder / "v.tif", folder / "v.tif"])


def test_corrupt_file_inside_folder_is_named(tmp_path, rng):
    folder = tmp_path / "f"
    _write_scans(folder, ["a1.png"])
    (folder / "a2.png").write_bytes(rng.bytes(100))
    with pytest.raises(InputError, match=r"a2\.png"):
        read_volume(folder)


# ------------------------------------------------------------------------------ vendor


@pytest.mark.parametrize("suffix", VENDOR_SUFFIXES)
def test_vendor_without_extra_says_how_to_install(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(vendor_mod, "_installed", lambda module: False)
    (tmp_path / f"scan{suffix}").write_bytes(b"\x00" * 64)
    with pytest.raises(InputError) as err:
        read_volume(tmp_path / f"scan{suffix}")
    assert INSTALL_HINT in str(err.value)
    assert f"scan{suffix}" in str(err.value)
    assert vendor_mod.VENDOR_FORMATS[suffix] in str(err.value)


def test_vendor_extras_really_absent_here_or_skip():
    # The real eyepy / oct-converter paths are untested without the extra (see vendor.py).
    if vendor_mod._installed("eyepy") or vendor_mod._installed("oct_converter"):
        pytest.skip("vendor extra installed: the missing-extra message is tested by monkeypatch")
    assert not vendor_mod._installed("eyepy")


def test_vendor_adapter_with_fake_eyepy(tmp_path, monkeypatch):
    """Our adapter code only: a stand-in for eyepy's documented EyeVolume API."""
    data = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    ev = types.SimpleNamespace(data=data, scale=(0.12, 0.0039, 0.0115), scale_unit="mm")
    fake = types.ModuleType("eyepy")
    fake.import_heyex_vol = lambda path: ev
    monkeypatch.setitem(sys.modules, "eyepy", fake)
    monkeypatch.setattr(vendor_mod, "_installed", lambda module: module == "eyepy")
    (tmp_path / "h.vol").write_bytes(b"HSF-OCT-103")
    vol = read_volume(tmp_path / "h.vol")
    np.testing.assert_array_equal(vol.data, data)
    assert vol.spacing == pytest.approx((120.0, 3.9, 11.5))
    assert vol.metadata == {"format": "Heidelberg Heyex VOL", "reader": "eyepy"}
    assert vol.name == "h"


def test_vendor_adapter_with_fake_oct_converter(tmp_path, monkeypatch):
    """Our adapter code only: a stand-in for oct-converter's documented reader API."""
    scans = [np.full((4, 5), i, np.uint16) for i in range(3)]

    class FDS:
        def __init__(self, path):
            self.path = path

        def read_oct_volume(self):
            return types.SimpleNamespace(volume=scans, pixel_spacing=[0.0115, 0.0039, 0.12])

    readers = types.ModuleType("oct_converter.readers")
    readers.FDS = FDS
    monkeypatch.setitem(sys.modules, "oct_converter", types.ModuleType("oct_converter"))
    monkeypatch.setitem(sys.modules, "oct_converter.readers", readers)
    monkeypatch.setattr(vendor_mod, "_installed", lambda module: module == "oct_converter")
    (tmp_path / "t.fds").write_bytes(b"FOCT")
    vol = read_volume(tmp_path / "t.fds")
    assert vol.shape == (3, 4, 5)
    assert vol.data.dtype == np.uint16
    assert vol.spacing == pytest.approx((120.0, 3.9, 11.5))
    # the fallback does not read .vol: message names what is needed
    monkeypatch.setattr(vendor_mod, "_installed", lambda module: False)
    (tmp_path / "h.vol").write_bytes(b"HSF")
    with pytest.raises(InputError, match=r"needs eyepy, which is not installed"):
        read_volume(tmp_path / "h.vol")


def test_vendor_library_failure_becomes_input_error(tmp_path, monkeypatch):
    fake = types.ModuleType("eyepy")

    def broken(path):
        raise struct_error("unpack requires a buffer of 4 bytes")

    struct_error = type("error", (Exception,), {})
    fake.import_heyex_e2e = broken
    monkeypatch.setitem(sys.modules, "eyepy", fake)
    monkeypatch.setattr(vendor_mod, "_installed", lambda module: module == "eyepy")
    (tmp_path / "x.e2e").write_bytes(b"CMDb")
    with pytest.raises(InputError, match=r"x\.e2e: eyepy could not read this Heidelberg Heyex E2E"):
        read_volume(tmp_path / "x.e2e")


# -------------------------------------------------------------------------- is_supported


def test_is_supported(tmp_path):
    assert tuple(dict.fromkeys(SUPPORTED_SUFFIXES)) == SUPPORTED_SUFFIXES  # no duplicates
    for suffix in SUPPORTED_SUFFIXES:
        assert is_supported(f"x{suffix}")
        assert is_supported(f"X{suffix.upper()}")
    assert is_supported("a.ome.tif")
    assert not is_supported("a.txt")
    assert not is_supported(tmp_path / "missing.xyz")
    (tmp_path / "empty").mkdir()
    assert not is_supported(tmp_path / "empty")
    _write_scans(tmp_path / "scans", ["a.png"])
    assert is_supported(tmp_path / "scans")
    assert is_supported(["a.png", Path("b.tif")])
    assert not is_supported(["a.png", "b.txt"])
    assert not is_supported([])
    assert not is_supported(None)  # type: ignore[arg-type]
    assert not is_supported(3)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ writers


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_write_tiff_round_trip(tmp_path, rng, dtype):
    data = _bscan(rng, shape=(3, 24, 32), dtype=dtype)
    spacing = (120.0, 3.87, 11.43)
    out = write_tiff(tmp_path / "r_residual.tif", data, spacing=spacing)
    assert out == tmp_path / "r_residual.tif"
    vol = read_volume(out)
    assert vol.data.dtype == dtype
    np.testing.assert_array_equal(vol.data, data)
    assert vol.spacing == pytest.approx(spacing)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    assert [p.name for p in tmp_path.iterdir()] == ["r_residual.tif"]


def test_write_tiff_2d_and_partial_spacing(tmp_path, rng):
    img = _bscan(rng, shape=(5, 6), dtype=np.float32)
    write_tiff(tmp_path / "a.ome.tif", img, spacing=(None, 3.9, None))
    vol = read_volume(tmp_path / "a.ome.tif")
    assert vol.shape == (1, 5, 6)
    assert vol.spacing == (None, pytest.approx(3.9), None)
    write_tiff(tmp_path / "b.tif", img)
    assert read_volume(tmp_path / "b.tif").spacing == (None, None, None)


def test_write_tiff_small_width_is_not_mistaken_for_colour(tmp_path):
    data = np.arange(5 * 8 * 3, dtype=np.uint8).reshape(5, 8, 3)
    write_tiff(tmp_path / "thin.tif", data)
    np.testing.assert_array_equal(read_volume(tmp_path / "thin.tif").data, data)


def test_write_tiff_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_tiff(tmp_path / "x.tif", np.zeros(4))
    with pytest.raises(ValueError, match="spacing"):
        write_tiff(tmp_path / "x.tif", np.zeros((4, 4)), spacing=(1.0, 2.0))
    assert list(tmp_path.iterdir()) == []


def test_write_csv(tmp_path):
    rows = [
        {"slice": np.int64(0), "score": 0.1 + 0.2, "f32": np.float32(0.1), "note": None},
        {"slice": 1, "score": np.float64(1e-20), "f32": np.float32(2.5), "extra": "µm"},
    ]
    write_csv(tmp_path / "t.csv", rows)
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as fh:
        got = list(csv.reader(fh))
    assert got == [
        ["slice", "score", "f32", "note", "extra"],
        ["0", "0.30000000000000004", "0.1", "", ""],
        ["1", "1e-20", "2.5", "", "µm"],
    ]
    assert float(got[1][1]) == 0.1 + 0.2
    write_csv(tmp_path / "c.csv", rows, columns=["score", "slice"])
    text = (tmp_path / "c.csv").read_text(encoding="utf-8")
    assert text.splitlines() == ["score,slice", "0.30000000000000004,0", "1e-20,1"]
    write_csv(tmp_path / "h.csv", [], columns=["a", "b"])
    assert (tmp_path / "h.csv").read_text().splitlines() == ["a,b"]


def test_write_json(tmp_path):
    obj = {
        "auc": np.float32(0.75),
        "n": np.int32(3),
        "ok": np.bool_(True),
        "scores": np.array([[1, 2], [3, 4]], np.uint8),
        "path": Path("a/b.tif"),
        "unit": "µm",
        "nested": [{"x": np.float64(0.5)}],
    }
    write_json(tmp_path / "s.json", obj)
    text = (tmp_path / "s.json").read_text(encoding="utf-8")
    assert text.startswith('{\n  "auc": 0.75,')
    assert text.endswith("}\n")
    back = json.loads(text)
    assert back == {
        "auc": 0.75,
        "n": 3,
        "ok": True,
        "scores": [[1, 2], [3, 4]],
        "path": str(Path("a/b.tif")),
        "unit": "µm",
        "nested": [{"x": 0.5}],
    }


def test_write_json_unserialisable_leaves_nothing(tmp_path):
    with pytest.raises(TypeError, match="object"):
        write_json(tmp_path / "s.json", {"f": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "write",
    [
        lambda p: write_tiff(p, np.zeros((4, 4), np.uint8)),
        lambda p: write_csv(p, [{"a": 1}]),
        lambda p: write_json(p, {"a": 1}),
    ],
    ids=["tiff", "csv", "json"],
)
def test_writers_missing_folder_gives_output_error(tmp_path, write):
    target = tmp_path / "missing" / "out.x"
    with pytest.raises(OutputError, match="missing"):
        write(target)
    assert not (tmp_path / "missing").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(
    sys.platform == "win32" or (hasattr(os, "geteuid") and os.geteuid() == 0),
    reason="permissions are not enforced for root / on Windows",
)
@pytest.mark.parametrize(
    "write",
    [
        lambda p: write_tiff(p, np.zeros((4, 4), np.uint8)),
        lambda p: write_csv(p, [{"a": 1}]),
        lambda p: write_json(p, {"a": 1}),
    ],
    ids=["tiff", "csv", "json"],
)
def test_writers_unwritable_folder_gives_output_error(tmp_path, write):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="cannot write"):
            write(ro / "out.x")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_writer_failure_midway_leaves_no_file(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", boom)
    with pytest.raises(OutputError, match="No space left"):
        write_tiff(tmp_path / "x.tif", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- real OCT


@pytest.mark.skipif(not REAL_OCT.is_dir(), reason="no ../shared/data/real-oct in this checkout")
def test_real_bscans():
    kermany = sorted((REAL_OCT / "kermany2018").glob("*.jpeg"))
    assert kermany, "kermany2018 folder has no jpeg"
    for f in kermany:
        vol = read_volume(f)
        assert vol.shape[0] == 1
        assert vol.shape[1] == 496
        assert vol.shape[2] in (512, 768)
        assert vol.data.dtype == np.uint8
        assert vol.name == f.stem
        assert 0 < vol.data.mean() < 255
    # widths differ (768 and one 512): the odd file is named
    with pytest.raises(InputError, match=r"NORMAL-33637-1\.jpeg: B-scan has shape \(496, 512\)"):
        read_volume(REAL_OCT / "kermany2018")

    amd = REAL_OCT / "octdl-amd"
    vol = read_volume(amd)
    n_scans = len([p for p in amd.glob("*.png") if "mask" not in p.name])
    assert vol.shape == (n_scans, 512, 512)
    assert vol.data.dtype == np.uint8
    assert vol.name == "octdl-amd"
    assert not any("mask" in f for f in vol.metadata["files"])
    assert Path(vol.metadata["files"][0]).name == "AMD_0001.png"
    mask = read_volume(amd / "AMD_0001_drusen-mask.png")
    assert set(np.unique(mask.data)) <= {0, 1}


def test_writers_permission_denied_gives_output_error(tmp_path, monkeypatch):
    """Same as the chmod test, but also where it is skipped (root): mkstemp refuses."""
    import napari_anogan._atomic as atomic

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    for write in (
        lambda p: write_tiff(p, np.zeros((4, 4), np.uint8)),
        lambda p: write_csv(p, [{"a": 1}]),
        lambda p: write_json(p, {"a": 1}),
    ):
        with pytest.raises(OutputError, match="Permission denied"):
            write(tmp_path / "out.x")
    assert list(tmp_path.iterdir()) == []

"""Property-based fuzzing of the readers and the preprocessing (hypothesis).

Whatever the file or array, only :class:`napari_anogan.errors.AnoganError` subclasses may
come out: never another exception, and never a hang (each example has a deadline).
Every test counts the cases it ran and prints the count (``pytest -s`` shows it).
"""

from __future__ import annotations

import io as _io
import json
import warnings
from collections import Counter
from datetime import timedelta

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from napari_anogan.errors import AnoganError
from napari_anogan.io import SUPPORTED_SUFFIXES, Volume, read_volume
from napari_anogan.preprocess import PreprocessConfig, preprocess_volume

COUNTS: Counter = Counter()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FUZZ = settings(
    max_examples=120,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
    database=None,
)

DTYPES = st.sampled_from(
    [np.uint8, np.uint16, np.int8, np.int16, np.int32, np.float32, np.float64, np.bool_]
)


@st.composite
def arrays(draw, max_side: int = 24):
    """Random 1-D to 4-D arrays; floats may hold NaN/inf; sometimes constant."""
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.integers(0, max_side if i >= ndim - 2 else 4)) for i in range(ndim))
    dtype = np.dtype(draw(DTYPES))
    kind = draw(st.sampled_from(["random", "constant", "special"]))
    if kind == "constant":
        value = draw(hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False))
        return np.full(shape, value, dtype=dtype)
    elements = hnp.from_dtype(dtype, allow_nan=kind == "special", allow_infinity=kind == "special")
    return draw(hnp.arrays(dtype, shape, elements=elements))


def _outcome(func, *args):
    """Run ``func``; return 'ok' or the AnoganError class name; anything else fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            func(*args)
        except AnoganError as exc:
            return type(exc).__name__
    return "ok"


def _check_volume(vol: Volume) -> None:
    assert vol.data.ndim == 3
    assert 0 not in vol.data.shape
    if vol.data.dtype.kind == "f":
        assert np.isfinite(vol.data).all()


def _read_ok(path) -> None:
    _check_volume(read_volume(path))


def _read_lazy_ok(path) -> None:
    """Lazy read: errors may come when the B-scans are read; NaN when they are used."""
    from napari_anogan.preprocess.normalise import intensity_range_chunked

    vol = read_volume(path, lazy=True)
    data = np.asarray(vol.data)
    assert data.ndim == 3
    assert 0 not in data.shape
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        intensity_range_chunked(lambda: iter([data]), source=path)  # must raise InputError
        raise AssertionError("non-finite values were not reported")


def _encode(data: np.ndarray, suffix: str) -> bytes:
    """Bytes of ``data`` in the format of ``suffix`` (a valid file, when writable)."""
    buf = _io.BytesIO()
    if suffix in (".tif", ".tiff"):
        tifffile.imwrite(buf, data)
    elif suffix == ".npy":
        np.save(buf, data, allow_pickle=False)
    elif suffix in (".png", ".jpg", ".jpeg", ".bmp"):
        img = data if data.ndim == 2 else data.reshape(data.shape[-2:])
        img = np.ascontiguousarray(img.astype(np.uint8))
        fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}[suffix]
        Image.fromarray(img).save(buf, format=fmt)
    else:
        return b"\x00" * 64 + data.tobytes()[:256]
    return buf.getvalue()


@FUZZ
@given(
    data=arrays(),
    suffix=st.sampled_from([".tif", ".tiff", ".npy", ".ome.tif"]),
    lazy=st.booleans(),
)
def test_read_volume_of_random_arrays(tmp_path_factory, data, suffix, lazy):
    path = tmp_path_factory.mktemp("arr") / f"scan{suffix}"
    try:
        path.write_bytes(_encode(data, ".tif" if suffix == ".ome.tif" else suffix))
    except Exception:  # a writer refusing the array is not the reader's business
        COUNTS["arrays (unwritable)"] += 1
        return
    mode = "lazy" if lazy else "eager"
    COUNTS[f"arrays {mode}: {_outcome(_read_lazy_ok if lazy else _read_ok, path)}"] += 1


@settings(FUZZ, max_examples=200)
@given(
    suffix=st.sampled_from(sorted(set(SUPPORTED_SUFFIXES) | {".ome.tif", ".txt", ""})),
    base=hnp.arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40))),
    how=st.sampled_from(["truncate", "garbage", "flip", "empty"]),
    cut=st.floats(0, 1),
    noise=st.binary(min_size=1, max_size=512),
    lazy=st.booleans(),
)
def test_read_volume_of_broken_files(tmp_path_factory, suffix, base, how, cut, noise, lazy):
    enc_suffix = ".tif" if suffix == ".ome.tif" else suffix
    try:
        good = _encode(
            base if enc_suffix not in (".png", ".bmp", ".jpg", ".jpeg") else base[0], enc_suffix
        )
    except Exception:
        good = noise
    if how == "truncate":
        blob = good[: int(len(good) * cut)]
    elif how == "garbage":
        blob = noise
    elif how == "flip":
        arr = bytearray(good)
        for i, b in enumerate(noise[:32]):
            arr[(i * 7919 + int(cut * len(arr))) % len(arr)] ^= b or 0xFF
        blob = bytes(arr)
    else:
        blob = b""
    path = tmp_path_factory.mktemp("bad") / f"broken{suffix}"
    path.write_bytes(blob)
    mode = "lazy" if lazy else "eager"
    COUNTS[f"files {how} {mode}: {_outcome(_read_lazy_ok if lazy else _read_ok, path)}"] += 1


@settings(FUZZ, max_examples=150)
@given(
    data=hnp.arrays(
        st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int16]),
        st.tuples(st.integers(1, 2), st.integers(20, 140), st.integers(8, 140)),
        elements=st.one_of(st.integers(0, 255), st.sampled_from([0, 1, 200])),
    ),
    special=st.sampled_from(["none", "nan", "inf", "constant", "huge", "stripes"]),
    spacing=st.one_of(
        st.none(),
        st.tuples(
            st.none() | st.floats(-5, 200),
            st.none() | st.floats(-5, 20),
            st.none() | st.floats(-5, 50) | st.sampled_from([float("nan"), float("inf"), 0.0]),
        ),
    ),
    target_width=st.integers(1, 160),
)
def test_preprocess_volume_of_random_volumes(data, special, spacing, target_width):
    data = data.copy()
    if special == "constant":
        data[...] = data.flat[0]
    elif special == "huge" and data.dtype.kind == "f":
        data *= np.finfo(data.dtype).max / 256
    elif special == "stripes":
        data[..., ::2] = 0
    elif special in ("nan", "inf") and data.dtype.kind == "f":
        data.flat[0] = np.nan if special == "nan" else np.inf
    vol = Volume(data, spacing=spacing or (None, None, None))

    def run():
        pre = preprocess_volume(vol, PreprocessConfig(target_width=target_width))
        assert np.isfinite(pre.flat).all()

    COUNTS[f"preprocess: {_outcome(run)}"] += 1


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    total = sum(COUNTS.values())
    print(f"\nfuzz cases run: {total}")
    for key, n in sorted(COUNTS.items()):
        print(f"  {key}: {n}")


def _fuzz_script():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_inputs.py"
    spec = importlib.util.spec_from_file_location("fuzz_inputs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_mutated_real_files_and_random_arrays_end_clean_or_correct():
    """300 cases of scripts/fuzz_inputs.py (mutated TIFF/OME-XML, PNG, JPEG, .npy and
    checkpoints, random arrays) through the readers, the napari reader, preprocessing and
    load_checkpoint: each ends in an AnoganError or a correct result. The script runs
    10,000 and more, with scoring, outside the suite."""
    report = _fuzz_script().run(300, seed=24, score_every=0, isolate=False, timeout=30)
    COUNTS["scripts/fuzz_inputs.py cases"] += report["cases"]
    assert report["crashes"] == 0, json.dumps(report["crash_cases"], indent=1)
    reached = {t: c.get("ok", 0) + c.get("clean", 0) for t, c in report["by_target"].items()}
    assert sum(reached.values()) == 300
    assert set(reached) == {"tiff", "png", "jpeg", "npy", "checkpoint", "array file", "array"}

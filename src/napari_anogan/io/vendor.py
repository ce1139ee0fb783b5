"""Vendor OCT formats through the optional ``eyepy`` / ``oct-converter`` packages.

Neither package is a hard dependency: they are the ``vendor`` extra
(``pip install "napari-anogan[vendor]"``) and are imported only when a vendor file is
actually read. Without them, reading a vendor file raises :class:`InputError` with that
install hint.

.. note::
   This path is **untested in CI**: the extras are not installed there and no vendor
   sample file can be shipped (they contain patient data). The calls below follow the
   published APIs of eyepy 0.20 (``import_heyex_vol``, ``import_heyex_e2e``,
   ``import_topcon_fda``; ``EyeVolume.data`` is (n_bscans, height, width) and
   ``EyeVolume.scale`` is (z, y, x) in ``EyeVolume.scale_unit``) and of oct-converter
   (``E2E``, ``FDS``, ``FDA``, ``IMG``, ``Dicom`` readers with ``read_oct_volume()``;
   ``OCTVolumeWithMetaData.volume`` is a list of (height, width) B-scans and
   ``pixel_spacing`` is (x, y, z) in mm, x across the B-scan, y in depth, z between
   B-scans).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np

from napari_anogan.errors import InputError

logger = logging.getLogger(__name__)

#: Install hint shown whenever a vendor file cannot be read for lack of the extra.
VENDOR_INSTALL_HINT = 'install the vendor extra: pip install "napari-anogan[vendor]"'

#: Suffix -> eyepy import function (preferred reader).
EYEPY_IMPORTERS: dict[str, str] = {
    ".vol": "import_heyex_vol",
    ".e2e": "import_heyex_e2e",
    ".fda": "import_topcon_fda",
}

#: Suffix -> oct_converter.readers class (fallback reader).
OCT_CONVERTER_READERS: dict[str, str] = {
    ".e2e": "E2E",
    ".fds": "FDS",
    ".fda": "FDA",
    ".img": "IMG",
    ".dcm": "Dicom",
}

#: Human-readable format names, for messages and metadata.
VENDOR_FORMATS: dict[str, str] = {
    ".vol": "Heidelberg Heyex VOL",
    ".e2e": "Heidelberg Heyex E2E",
    ".fds": "Topcon FDS",
    ".fda": "Topcon FDA",
    ".img": "Zeiss Cirrus IMG",
    ".dcm": "DICOM OCT",
}

#: Every suffix this module can read (given the extra).
VENDOR_SUFFIXES: tuple[str, ...] = tuple(VENDOR_FORMATS)

_MM_TO_UM = 1000.0


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def read_vendor(
    path: Path,
) -> tuple[np.ndarray, tuple[float | None, float | None, float | None], dict[str, Any]]:
    """Read a vendor OCT file with eyepy (preferred) or oct-converter (fallback).

    Parameters
    ----------
    path : Path
        A ``.vol``, ``.e2e``, ``.fds``, ``.fda``, ``.img`` or ``.dcm`` file.

    Returns
    -------
    data : (S, H, W) ndarray
        B-scans, axes (slice, depth, width).
    spacing : tuple of (float or None)
        Micrometres along (slice, depth, width) where the file gives them.
    metadata : dict
        ``format`` and ``reader`` (which package read it).

    Raises
    ------
    InputError
        If neither package that reads this format is installed (message says how to
        install the extra), or the package fails on the file.
    """
    suffix = path.suffix.lower()
    fmt = VENDOR_FORMATS.get(suffix)
    if fmt is None:
        raise InputError(f"not a vendor OCT format ({suffix!r})", path)

    if suffix in EYEPY_IMPORTERS and _installed("eyepy"):
        return _read_with_eyepy(path, suffix, fmt)
    if suffix in OCT_CONVERTER_READERS and _installed("oct_converter"):
        return _read_with_oct_converter(path, suffix, fmt)

    needed = []
    if suffix in EYEPY_IMPORTERS:
        needed.append("eyepy")
    if suffix in OCT_CONVERTER_READERS:
        needed.append("oct-converter")
    raise InputError(
        f"reading {fmt} files needs {' or '.join(needed)}, which is not installed; "
        f"{VENDOR_INSTALL_HINT}",
        path,
    )


def _read_with_eyepy(
    path: Path, suffix: str, fmt: str
) -> tuple[np.ndarray, tuple[float | None, float | None, float | None], dict[str, Any]]:
    """Read with ``eyepy.import_*``; untested without the extra."""
    eyepy = importlib.import_module("eyepy")
    importer = getattr(eyepy, EYEPY_IMPORTERS[suffix])
    try:
        ev = importer(path)
        data = np.asarray(ev.data)
        scale = tuple(ev.scale)  # (z, y, x) = (slice, depth, width)
        unit = str(getattr(ev, "scale_unit", "mm"))
    except Exception as exc:
        raise InputError(f"eyepy could not read this {fmt} file ({exc})", path) from exc
    spacing = _spacing_from(scale, unit)
    logger.debug("read %s with eyepy: shape %s, spacing %s", path, data.shape, spacing)
    return data, spacing, {"format": fmt, "reader": "eyepy"}


def _read_with_oct_converter(
    path: Path, suffix: str, fmt: str
) -> tuple[np.ndarray, tuple[float | None, float | None, float | None], dict[str, Any]]:
    """Read with ``oct_converter.readers``; untested without the extra."""
    readers = importlib.import_module("oct_converter.readers")
    reader_cls = getattr(readers, OCT_CONVERTER_READERS[suffix])
    try:
        result = reader_cls(path).read_oct_volume()
        # E2E returns a list of volumes; some IMG versions return (volume, n_slices).
        if isinstance(result, list):
            if not result:
                raise ValueError("the file holds no OCT volume")
            if len(result) > 1:
                logger.info("%s holds %d OCT volumes; reading the first", path, len(result))
            result = result[0]
        elif isinstance(result, tuple):
            result = result[0]
        volume = result.volume
        data = np.stack(volume) if isinstance(volume, list | tuple) else np.asarray(volume)
        pixel_spacing = getattr(result, "pixel_spacing", None)
    except Exception as exc:
        raise InputError(f"oct-converter could not read this {fmt} file ({exc})", path) from exc
    spacing: tuple[float | None, float | None, float | None] = (None, None, None)
    if pixel_spacing is not None and len(pixel_spacing) == 3:
        x, y, z = pixel_spacing  # mm: across, depth, between B-scans
        spacing = _spacing_from((z, y, x), "mm")
    logger.debug("read %s with oct-converter: shape %s, spacing %s", path, data.shape, spacing)
    return data, spacing, {"format": fmt, "reader": "oct-converter"}


def _spacing_from(
    zyx: tuple[Any, ...], unit: str
) -> tuple[float | None, float | None, float | None]:
    """Convert a (slice, depth, width) scale in ``unit`` to micrometres."""
    factor = {"mm": _MM_TO_UM, "um": 1.0, "µm": 1.0, "μm": 1.0}.get(unit.lower())
    if factor is None:  # 'pixel' or unknown: no physical size
        return (None, None, None)
    out: list[float | None] = []
    for value in zyx:
        try:
            v = float(value) * factor
        except (TypeError, ValueError):
            v = float("nan")
        out.append(v if np.isfinite(v) and v > 0 else None)
    return (out[0], out[1], out[2])

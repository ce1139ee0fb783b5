"""Write outputs atomically: OME-TIFF images, CSV tables, JSON summaries.

Every writer goes through :func:`napari_anogan._atomic.atomic_path`, so a reader never
sees a half-written file and a failed write leaves nothing behind. A missing or
unwritable folder raises :class:`~napari_anogan.errors.OutputError`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from napari_anogan._atomic import atomic_path

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


def write_tiff(
    path: PathLike,
    data: np.ndarray,
    spacing: Sequence[float | None] | None = None,
) -> Path:
    """Write an image or volume as a zlib-compressed OME-TIFF.

    The file reads back through :func:`~napari_anogan.io.read_volume` with the same
    data, dtype and spacing.

    Parameters
    ----------
    path : str or PathLike
        Destination (``.tif`` / ``.ome.tif``); its folder must exist.
    data : (H, W) or (S, H, W) ndarray
        Grey values, axes (depth, width) or (slice, depth, width); any integer or
        float dtype tifffile can store (uint8, uint16, float32...).
    spacing : sequence of 3 (float or None), optional
        Micrometres along (slice, depth, width), written as OME ``PhysicalSizeZ/Y/X``
        in µm; None entries (or ``spacing=None``) are left out.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        If ``data`` is not 2-D or 3-D, or ``spacing`` does not have 3 entries.
    OutputError
        If the folder is missing or not writable, or writing fails.
    """
    import tifffile

    data = np.asarray(data)
    if data.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (S, H, W) data, got shape {data.shape}")
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    axes = "YX" if data.ndim == 2 else "ZYX"
    metadata: dict[str, Any] = {"axes": axes}
    if spacing is not None:
        if len(spacing) != 3:
            raise ValueError(f"spacing must be (slice, depth, width), got {spacing!r}")
        for axis, value in zip("ZYX", spacing, strict=True):
            if value is not None:
                metadata[f"PhysicalSize{axis}"] = float(value)
                metadata[f"PhysicalSize{axis}Unit"] = "µm"
    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            data,
            ome=True,
            photometric="minisblack",
            compression="zlib",
            metadata=metadata,
        )
    logger.debug("wrote %s: shape %s %s, spacing %s", path, data.shape, data.dtype, spacing)
    return path


def _csv_value(value: Any) -> Any:
    """Convert a cell: numpy scalars to Python, floats with shortest round-trip repr."""
    if value is None:
        return ""
    if isinstance(value, np.generic):
        if isinstance(value, np.floating):
            # numpy's str is the shortest repr that round-trips in the value's own dtype
            return str(value)
        return value.item()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, PurePath):
        return str(value)
    return value


def write_csv(
    path: PathLike,
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str] | None = None,
) -> Path:
    """Write a table as UTF-8 CSV with a header row.

    Parameters
    ----------
    path : str or PathLike
        Destination; its folder must exist.
    rows : sequence of mapping
        One mapping per row, column name -> value. Floats are written with ``repr``
        precision (they read back exactly), numpy scalars as Python values, None and
        missing keys as empty cells.
    columns : sequence of str, optional
        Column order. Keys not listed are left out. Default: keys in order of first
        appearance over all rows.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    OutputError
        If the folder is missing or not writable, or writing fails.
    """
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    columns = list(columns)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore", restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items() if k in columns})
    logger.debug("wrote %s: %d rows x %d columns", path, len(rows), len(columns))
    return path


def _json_default(obj: Any) -> Any:
    """Convert what :mod:`json` cannot encode natively."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (UTF-8, indent 2, trailing newline).

    Parameters
    ----------
    path : str or PathLike
        Destination; its folder must exist.
    obj : object
        JSON-compatible data; numpy arrays and scalars, paths, sets and dataclass
        instances are converted. Non-finite floats are written as ``NaN`` /
        ``Infinity`` (what Python's :mod:`json` reads back).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    TypeError
        If ``obj`` holds something that cannot be converted (no file is left behind).
    OutputError
        If the folder is missing or not writable, or writing fails.
    """
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    logger.debug("wrote %s", path)
    return path


__all__ = ["write_csv", "write_json", "write_tiff"]

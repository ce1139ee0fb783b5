"""napari writers: images/labels as OME-TIFF with physical pixel sizes, shapes/points as CSV.

napari calls a single-layer writer as ``writer(path, data, meta)`` and expects the list
of written paths back. Files are written atomically by :mod:`napari_anogan.io`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_anogan._widgets._common import SPACING_KEY

logger = logging.getLogger(__name__)


def spacing_from_meta(meta: Mapping[str, Any]) -> tuple[float | None, float | None, float | None]:
    """Physical spacing (slice, depth, width) in µm from a layer's meta dict.

    The spacing the reader stored in the metadata wins; otherwise a scale that is not all
    ones is taken as µm (napari has no unit of its own); otherwise unknown.
    """
    stored = (meta.get("metadata") or {}).get(SPACING_KEY)
    if stored is not None:
        return tuple(stored)  # type: ignore[return-value]
    scale = [float(s) for s in meta.get("scale", ())][-3:]
    if not scale or np.allclose(scale, 1.0):
        return (None, None, None)
    scale = [None] * (3 - len(scale)) + scale
    return (scale[0], scale[1], scale[2])


def _write_tiff(path: str, data: Any, meta: Mapping[str, Any]) -> list[str]:
    from napari_anogan.io import write_tiff

    array = np.asarray(data)
    if array.ndim == 2:
        array = array[np.newaxis]
    write_tiff(path, array, spacing=spacing_from_meta(meta))
    logger.info("wrote %s %s", path, array.shape)
    return [path]


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """Write an image layer as OME-TIFF with its physical pixel sizes.

    Parameters
    ----------
    path : str
        Destination (``.ome.tif`` recommended).
    data : (H, W) or (S, H, W) array
        Layer data; a 2-D B-scan is written as one slice.
    meta : dict
        Layer attributes (``scale``, ``metadata``...).

    Returns
    -------
    list of str
        The written path.
    """
    if meta.get("rgb"):
        from napari_anogan.errors import OutputError

        raise OutputError("RGB layers are not OCT data; save them with napari's own writer", path)
    return _write_tiff(path, data, meta)


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write a labels layer (e.g. a lesion mask) as an integer OME-TIFF.

    Parameters
    ----------
    path : str
        Destination.
    data : (H, W) or (S, H, W) int array
        Label image.
    meta : dict
        Layer attributes.

    Returns
    -------
    list of str
        The written path.
    """
    return _write_tiff(path, np.asarray(data), meta)


def _feature_columns(meta: Mapping[str, Any], n: int) -> dict[str, Sequence]:
    features = meta.get("features")
    if features is None:
        return {}
    if hasattr(features, "to_dict"):  # a pandas DataFrame
        features = {c: features[c].to_numpy() for c in features.columns}
    return {str(k): list(v) for k, v in features.items() if len(v) == n}


def _cell(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def shape_rows(data: Sequence[np.ndarray], meta: Mapping[str, Any]) -> list[dict]:
    """One CSV row per shape: type, bounding box per axis, vertices, then its features."""
    n = len(data)
    types = list(meta.get("shape_type") or ["polygon"] * n)
    if len(types) == 1 and n > 1:
        types = types * n
    features = _feature_columns(meta, n)
    rows = []
    for i, vertices in enumerate(data):
        vertices = np.asarray(vertices, dtype=float)
        row: dict[str, Any] = {"index": i, "shape_type": types[i] if i < len(types) else ""}
        for axis in range(vertices.shape[1]):
            row[f"axis-{axis}_min"] = float(vertices[:, axis].min())
            row[f"axis-{axis}_max"] = float(vertices[:, axis].max())
        row["vertices"] = ";".join(" ".join(f"{v:.6g}" for v in vert) for vert in vertices)
        for name, column in features.items():
            row[name] = _cell(column[i])
        rows.append(row)
    return rows


def point_rows(data: np.ndarray, meta: Mapping[str, Any]) -> list[dict]:
    """One CSV row per point: its coordinate per axis, then its features."""
    data = np.asarray(data, dtype=float).reshape(len(data), -1)
    features = _feature_columns(meta, len(data))
    rows = []
    for i, point in enumerate(data):
        row: dict[str, Any] = {"index": i}
        row.update({f"axis-{axis}": float(v) for axis, v in enumerate(point)})
        row.update({name: _cell(column[i]) for name, column in features.items()})
        rows.append(row)
    return rows


def _columns(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    return columns


def write_shapes(path: str, data: Any, meta: dict) -> list[str]:
    """Write a shapes layer and its features table as CSV (one row per shape).

    Parameters
    ----------
    path : str
        Destination ``.csv``.
    data : list of (K, D) arrays
        Shape vertices in data coordinates.
    meta : dict
        Layer attributes (``shape_type``, ``features``...).

    Returns
    -------
    list of str
        The written path.
    """
    from napari_anogan.io import write_csv

    rows = shape_rows(list(data), meta)
    write_csv(path, rows, columns=_columns(rows) or ["index", "shape_type", "vertices"])
    return [path]


def write_points(path: str, data: Any, meta: dict) -> list[str]:
    """Write a points layer and its features table as CSV (one row per point).

    Parameters
    ----------
    path : str
        Destination ``.csv``.
    data : (N, D) array
        Point coordinates in data coordinates.
    meta : dict
        Layer attributes (``features``...).

    Returns
    -------
    list of str
        The written path.
    """
    from napari_anogan.io import write_csv

    rows = point_rows(data, meta)
    write_csv(path, rows, columns=_columns(rows) or ["index"])
    return [path]

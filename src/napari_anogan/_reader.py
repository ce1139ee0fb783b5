"""napari reader: every format :mod:`napari_anogan.io` reads, as image (or labels) layers.

``get_reader`` only checks cheaply (``io.is_supported``) and returns None for anything
else, never raising: napari then offers the next plugin. The returned function reads the
file and gives one layer per path, scaled by the file's physical spacing. A file named
``*_mask.*`` (the project's convention for lesion masks) opens as a labels layer. A big
TIFF or ``.npy`` volume (:data:`napari_anogan.io.readers.LAZY_MIN_BYTES` or more) opens
as a dask array, so napari reads only the B-scans it shows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_anogan._widgets._common import SPACING_KEY, scale_from_spacing

logger = logging.getLogger(__name__)

# The io package's rule for masks beside their scans (``X_mask.ext``, ``X-mask.ome.tif``).
_MASK_NAME = re.compile(r"[_-]mask(\.ome)?\.[^.]+$", re.IGNORECASE)

LayerData = tuple[Any, dict, str]
ReaderFunction = Callable[[str | Sequence[str]], list[LayerData]]


def _paths(path: str | Sequence[str]) -> list[str]:
    return [str(path)] if isinstance(path, (str, Path)) else [str(p) for p in path]


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Return :func:`read_layers` if every path is an OCT format this plugin reads.

    Parameters
    ----------
    path : str or list of str
        A file, a folder of B-scans, or several of them.

    Returns
    -------
    callable or None
        None when any path is not supported (napari then tries other readers).
    """
    try:
        from napari_anogan.io import is_supported

        paths = _paths(path)
        if paths and all(is_supported(p) for p in paths):
            return read_layers
    except Exception:  # a reader check must never raise into napari
        logger.debug("get_reader(%r) failed", path, exc_info=True)
    return None


def is_mask_path(path: str | Path) -> bool:
    """Whether a file name marks a lesion mask (``scan_mask.tif``, ``scan-mask.ome.tif``)."""
    return bool(_MASK_NAME.search(Path(path).name))


def volume_layer(volume: Any, *, as_labels: bool = False) -> LayerData:
    """One layer data tuple for a core :class:`~napari_anogan.io.volume.Volume`.

    A single B-scan (S == 1) becomes a 2-D layer; spacing becomes ``scale`` and is kept in
    the metadata so writers and scoring see the physical pixel sizes again.
    """
    data = volume.data[0] if volume.data.shape[0] == 1 else volume.data
    meta: dict[str, Any] = {
        "name": volume.name,
        "scale": scale_from_spacing(volume.spacing, ndim=data.ndim),
        "axis_labels": ("slice", "depth", "width")[-data.ndim :],
        "metadata": {
            SPACING_KEY: tuple(volume.spacing),
            "source": volume.source,
            **{k: v for k, v in (volume.metadata or {}).items() if _plain(v)},
        },
    }
    if as_labels:
        return (np.asarray(data).astype(np.int32, copy=False), meta, "labels")
    return (data, meta, "image")


def _plain(value: Any) -> bool:
    """Whether a metadata value is small plain data (kept in the layer metadata)."""
    return isinstance(value, (str, int, float, bool, type(None), tuple, list, dict))


def check_output_set(path: str | Path) -> None:
    """Refuse a ``score`` output (``X_residual.tif``) whose set is incomplete or mixed.

    The set's ``X_summary.json`` lists the size and SHA-256 of every file of the set; a
    residual beside a summary it does not match (a run killed between writing the two,
    files from two runs) is not shown as if it were that run's result. A residual
    without any summary is opened, with a warning.

    Raises
    ------
    InputError
        Naming the file and what does not match.
    """
    from napari_anogan.errors import InputError
    from napari_anogan.pipeline.output_set import summary_of, verify_output_set

    summary = summary_of(path)
    if summary is None:
        return
    if not summary.exists():
        logger.warning("%s: no %s beside it: not a complete score output set", path, summary.name)
        return
    # only the files the summary lists (an Export writes other kinds than score)
    problems = verify_output_set(summary, required=())
    listed = _listed_names(summary)
    if not problems and listed is not None and Path(path).name not in listed:
        problems = [f"{summary.name} does not list {Path(path).name}"]
    if problems:
        raise InputError(
            "belongs to an incomplete or mixed score output set ("
            + "; ".join(problems)
            + "); score the volume again",
            path,
        )


def _listed_names(summary: Path) -> set[str] | None:
    import json

    try:
        files = json.loads(summary.read_text(encoding="utf-8")).get("files")
        return {str(entry["name"]) for entry in files.values()}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


def read_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Read each path into a layer data tuple.

    Parameters
    ----------
    path : str or list of str
        Paths accepted by :func:`get_reader`.

    Returns
    -------
    list of (data, meta, layer_type)
        ``image`` layers, or ``labels`` for ``*_mask`` files. A folder of B-scans is one
        layer when it holds the slices of one scan, else one layer per B-scan (a
        collection of independent scans: :func:`napari_anogan.io.inputs.expand_inputs`).

    Raises
    ------
    AnoganError
        If a file cannot be read (napari shows the message), does not fit in memory, or
        is a ``score`` output whose set is incomplete or mixed (:func:`check_output_set`).
    """
    from napari_anogan.errors import InputError
    from napari_anogan.io import read_volume
    from napari_anogan.io.inputs import expand_inputs

    layers = []
    scans, notes = expand_inputs(_paths(path))  # a folder: one volume, or a collection
    for note in notes:
        logger.info(note)
    for p in scans:
        check_output_set(p)
        mask = is_mask_path(p)
        # a big volume opens lazily (a dask array: napari reads the B-scans it shows)
        try:
            volume = read_volume(p, lazy=False if mask else None)
        except MemoryError as exc:
            raise InputError(f"does not fit in memory ({exc})", p) from exc
        layers.append(volume_layer(volume, as_labels=mask))
        logger.info("read %s: shape %s, spacing %s", p, volume.data.shape, volume.spacing)
    return layers

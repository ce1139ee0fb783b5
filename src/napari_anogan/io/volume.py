"""The in-memory OCT volume every reader returns."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_anogan import settings as defaults

logger = logging.getLogger(__name__)

_AXES = ("slice", "depth", "width")


def plausible_spacing(
    spacing: Sequence[float | None] | None, source: str | None = None
) -> tuple[float | None, float | None, float | None]:
    """Return ``spacing`` with the values no OCT device gives replaced by None (unknown).

    A pixel size outside :data:`~napari_anogan.settings.SPACING_RANGE_UM` (or not a
    positive finite number) comes from a unit error or a damaged header; used, it would
    scale every depth length of the boundary search or the resampled width absurdly.

    Parameters
    ----------
    spacing : sequence of 3 (float or None), or None
        Micrometres along (slice, depth, width).
    source : str, optional
        File named in the warning.

    Returns
    -------
    tuple of 3 (float or None)
    """
    values = list(spacing) if spacing is not None else [None, None, None]
    values = [*values, None, None, None][:3]
    out: list[float | None] = []
    for axis, value, (lo, hi) in zip(_AXES, values, defaults.SPACING_RANGE_UM, strict=True):
        try:
            v = None if value is None else float(value)
        except (TypeError, ValueError):
            v = float("nan")
        if v is not None and not (np.isfinite(v) and lo <= v <= hi):
            logger.warning(
                "%s: %s spacing %s um is not plausible for OCT (expected %g-%g um); "
                "treated as unknown",
                source or "volume",
                axis,
                value,
                lo,
                hi,
            )
            v = None
        out.append(v)
    return out[0], out[1], out[2]


@dataclass
class Volume:
    """An OCT volume as B-scans.

    Attributes
    ----------
    data : (S, H, W) ndarray or dask array
        Grey values, axes (slice, depth, width); a single B-scan has S == 1. The dtype is
        the file's (uint8, uint16, float32...); RGB input is already converted to grey.
        A dask array (``read_volume(..., lazy=True)``) reads B-scans only when used:
        index it by slices (``data[a:b]``) rather than converting all of it.
    spacing : tuple of (float or None)
        Physical pixel size in micrometres along (slice, depth, width); None where the
        file does not say.
    source : str
        Path of the file or folder it was read from ('' for in-memory data).
    name : str
        Short name (file stem) used for output files and layer names.
    metadata : dict
        Anything else the reader found (format, vendor fields...).
    """

    data: np.ndarray
    spacing: tuple[float | None, float | None, float | None] = (None, None, None)
    source: str = ""
    name: str = "volume"
    metadata: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, height, width)."""
        return tuple(self.data.shape)  # type: ignore[return-value]

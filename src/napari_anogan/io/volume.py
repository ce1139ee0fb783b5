"""The in-memory OCT volume every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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

"""Preprocessing settings: one dataclass, saved in checkpoints so scoring reuses it."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from napari_anogan import settings as defaults

logger = logging.getLogger(__name__)

#: Row spacing (um) the row-based settings refer to: a Spectralis B-scan, 496 rows over 1.9 mm.
REFERENCE_ROW_UM = 3.87


@dataclass
class PreprocessConfig:
    """Settings of the preprocessing pipeline (normalise, resample, boundaries, flatten, patches).

    The defaults follow Schlegl et al. (2017), section 3: grey values to [-1, 1], width
    resampled to about 22 um per column (about 256 columns for a 6 mm Spectralis scan),
    retina flattened on Bruch's membrane, 64 x 64 patches. Row-based lengths are in raw
    rows of a reference 3.87 um/row B-scan (depth is never resampled; when the volume's
    depth spacing is known they are scaled to its rows); column-based lengths are in
    resampled columns.

    Examples
    --------
    >>> cfg = PreprocessConfig(target_width=128)
    >>> PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    #: Columns after resampling when the column spacing of the input is unknown.
    target_width: int = defaults.TARGET_WIDTH
    #: Column spacing (um) to resample to when ``Volume.spacing[2]`` is known (paper: ~22 um).
    column_spacing_um: float = defaults.COLUMN_SPACING_UM
    #: Grey value percentile (whole volume) mapped to -1; darker values are clipped.
    low_percentile: float = defaults.LOW_PERCENTILE
    #: Grey value percentile (whole volume) mapped to +1; brighter values are clipped.
    high_percentile: float = defaults.HIGH_PERCENTILE
    #: Rows kept above the highest ILM in the flattened band.
    margin_above: int = defaults.MARGIN_ABOVE
    #: Rows kept below Bruch's membrane in the flattened band.
    margin_below: int = defaults.MARGIN_BELOW
    #: Fixed band height in rows; None = thickest retina of the volume + margins (>= patch_size).
    band_height: int | None = None
    #: Side of the square patches in pixels (paper: 64).
    patch_size: int = defaults.PATCH_SIZE
    #: Gaussian smoothing (rows) of the image before boundary detection, in pixels.
    smooth_rows: float = defaults.SMOOTH_ROWS
    #: Gaussian smoothing (columns) of the image before boundary detection, in resampled columns.
    smooth_cols: float = defaults.SMOOTH_COLS
    #: Largest change of a boundary row from one resampled column to the next (graph search).
    max_jump: int = defaults.MAX_JUMP
    #: Cost of a boundary path per row of jump between neighbouring columns (smoothness).
    jump_penalty: float = defaults.JUMP_PENALTY
    #: Thinnest retina (ILM to BM) searched for, in rows.
    min_thickness: int = defaults.MIN_THICKNESS
    #: Thickest retina (ILM to BM) searched for, in rows.
    max_thickness: int = defaults.MAX_THICKNESS
    #: Half height (rows) of the band around the neighbour-slice consensus in the second pass.
    slice_band: int = defaults.SLICE_BAND
    #: The RPE is searched at least this many rows under the ILM (never the nerve fibre layer).
    min_rpe_depth: int = defaults.MIN_RPE_DEPTH
    #: Gaussian smoothing of the final boundaries along columns (resampled columns).
    boundary_smooth_cols: float = defaults.BOUNDARY_SMOOTH_COLS
    #: Gaussian smoothing of the final boundaries across B-scans (slices); 0 = none.
    boundary_smooth_slices: float = defaults.BOUNDARY_SMOOTH_SLICES

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Build a config from :meth:`to_dict` output; unknown keys are ignored.

        Parameters
        ----------
        data : dict
            Field name to value. Missing fields keep their defaults, so a checkpoint
            written by an older version still loads.

        Returns
        -------
        PreprocessConfig
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("ignoring unknown preprocessing settings %s", unknown)
        values = {k: v for k, v in data.items() if k in known}
        if values.get("band_height") is not None:
            values["band_height"] = int(values["band_height"])
        return cls(**values)

    def detection_params(self, depth_spacing_um: float | None = None) -> dict[str, Any]:
        """Keyword arguments of :func:`detect_boundaries` taken from this config.

        Parameters
        ----------
        depth_spacing_um : float, optional
            Row spacing of the volume; when known, row lengths are scaled from the
            reference 3.87 um rows (``row_scale``).

        Returns
        -------
        dict
        """
        scale = 1.0
        if depth_spacing_um is not None and np.isfinite(depth_spacing_um) and depth_spacing_um > 0:
            scale = REFERENCE_ROW_UM / float(depth_spacing_um)
        return {
            "row_scale": scale,
            "smooth_rows": self.smooth_rows,
            "smooth_cols": self.smooth_cols,
            "max_jump": self.max_jump,
            "jump_penalty": self.jump_penalty,
            "min_thickness": self.min_thickness,
            "max_thickness": self.max_thickness,
            "slice_band": self.slice_band,
            "min_rpe_depth": self.min_rpe_depth,
            "boundary_smooth_cols": self.boundary_smooth_cols,
            "boundary_smooth_slices": self.boundary_smooth_slices,
        }

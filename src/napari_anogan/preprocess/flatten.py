"""The whole preprocessing of a volume: normalise, resample, boundaries, flatten, crop."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from napari_anogan.errors import InputError
from napari_anogan.io.volume import Volume
from napari_anogan.preprocess.boundaries import detect_boundaries
from napari_anogan.preprocess.config import PreprocessConfig
from napari_anogan.preprocess.geometry import Geometry
from napari_anogan.preprocess.normalise import (
    normalise_intensity,
    resample_width,
    resampled_width,
)

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class PreprocessedVolume:
    """A volume ready for patch extraction, with everything needed to map back.

    Attributes
    ----------
    flat : (S, Hb, Wr) ndarray of float32
        The flattened retina band, grey values in [-1, 1] (-1 where the band reaches
        outside the raw image).
    geometry : Geometry
        Raw grid <-> band mapping (resampling, per-column shifts, crop).
    ilm, bm : (S, W) ndarray of float32
        ILM and Bruch's membrane rows in the raw pixel grid of the input.
    ilm_flat : (S, Wr) ndarray of float32
        ILM rows inside the band.
    bm_flat : (S, Wr) ndarray of float32
        Bruch's membrane rows inside the band (all equal to ``geometry.bm_row``).
    retina_mask : (S, Hb, Wr) ndarray of bool
        True between the ILM and Bruch's membrane (inclusive) in the band.
    intensity_range : tuple of float
        Raw grey values mapped to -1 and +1.
    config : PreprocessConfig
        The settings used.
    """

    flat: np.ndarray
    geometry: Geometry
    ilm: np.ndarray
    bm: np.ndarray
    ilm_flat: np.ndarray
    bm_flat: np.ndarray
    retina_mask: np.ndarray
    intensity_range: tuple[float, float]
    config: PreprocessConfig


def _as_stack(volume: Volume) -> np.ndarray:
    data = np.asarray(volume.data)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise InputError(
            f"expected B-scans of shape (slices, height, width), got shape {data.shape}",
            volume.source or None,
        )
    return data


def plan_band(
    ilm: np.ndarray, bm: np.ndarray, config: PreprocessConfig
) -> tuple[np.ndarray, int, int]:
    """Per-column shifts that put Bruch's membrane on one row, and the band size.

    Parameters
    ----------
    ilm, bm : (S, Wr) ndarray
        Boundary rows at the band's column sampling.
    config : PreprocessConfig
        Margins, fixed band height and patch size.

    Returns
    -------
    offsets : (S, Wr) ndarray of int64
        ``raw_row = band_row + offsets``.
    band_height : int
        Rows of the band: ``margin_above`` + thickest retina + ``margin_below`` + 1, at
        least ``patch_size`` (extra rows split above and below); or ``config.band_height``
        with BM ``margin_below`` rows above the band's bottom.
    bm_row : int
        Band row of Bruch's membrane.
    """
    bm_int = np.rint(bm).astype(np.int64)
    thickness = int(np.ceil(np.max(bm_int - ilm))) if bm.size else 0
    thickness = max(thickness, 0)
    bm_row = config.margin_above + thickness
    height = bm_row + config.margin_below + 1
    if config.band_height is not None:
        # fixed layout: BM on the same band row for every volume, extra rows above
        height = int(config.band_height)
        bm_row = max(0, height - config.margin_below - 1)
        if bm_row < config.margin_above + thickness:
            logger.warning(
                "band_height %d is less than the thickest retina (%d rows) + margins; "
                "the top of the retina is cut",
                height,
                thickness,
            )
    elif height < config.patch_size:
        extra = config.patch_size - height
        bm_row += extra // 2
        height = config.patch_size
    return bm_int - bm_row, int(height), int(bm_row)


def preprocess_volume(volume: Volume, config: PreprocessConfig | None = None) -> PreprocessedVolume:
    """Normalise, resample, find the retina and flatten it into a band (paper, section 3).

    Steps: grey values to [-1, 1] by robust percentiles (:func:`normalise_intensity`);
    width resampled to ``round(W * spacing_x / column_spacing_um)`` columns when the
    column spacing is known, else ``target_width`` (depth is kept); ILM and Bruch's
    membrane found per column (:func:`detect_boundaries`); every column shifted by an
    integer number of rows so that Bruch's membrane is one straight row; a band cropped
    from ``margin_above`` rows above the highest ILM to ``margin_below`` rows below BM.

    Parameters
    ----------
    volume : Volume
        The scan; ``data`` of shape (S, H, W) (a 2-D B-scan is taken as S = 1).
    config : PreprocessConfig, optional
        Settings; the defaults follow the paper.

    Returns
    -------
    PreprocessedVolume

    Raises
    ------
    InputError
        If the data is not 2-D/3-D, is constant or contains NaN, or the B-scans are
        smaller than one patch (height or resampled width < ``patch_size``).

    Examples
    --------
    >>> from napari_anogan.synthetic import make_volume
    >>> syn = make_volume(2, 160, 192, seed=0)
    >>> pre = preprocess_volume(Volume(syn.data, spacing=syn.spacing))
    >>> pre.flat.shape[0], pre.flat.dtype
    (2, dtype('float32'))
    """
    config = config or PreprocessConfig()
    data = _as_stack(volume)
    s, h, w = data.shape
    source = volume.source or volume.name or None
    spacing_x = (
        volume.spacing[2] if volume.spacing is not None and len(volume.spacing) > 2 else None
    )
    wr = resampled_width(w, spacing_x, config.column_spacing_um, config.target_width)
    p = config.patch_size
    if h < p or wr < p:
        raise InputError(
            f"B-scans of {h} rows x {w} columns ({wr} columns after resampling to "
            f"{config.column_spacing_um:g} um) are smaller than one {p}x{p} patch",
            source,
        )
    norm, intensity_range = normalise_intensity(
        data, config.low_percentile, config.high_percentile, source=source
    )
    resampled = resample_width(norm, wr)
    del norm
    spacing_z = (
        volume.spacing[1] if volume.spacing is not None and len(volume.spacing) > 1 else None
    )
    ilm_r, bm_r = detect_boundaries(resampled, **config.detection_params(spacing_z))
    offsets, band_height, bm_row = plan_band(ilm_r, bm_r, config)
    geometry = Geometry((s, h, w), wr, band_height, offsets, bm_row)
    flat = geometry.band_from_resampled(resampled, fill=-1.0)

    ilm_flat = (ilm_r - offsets).astype(np.float32)
    bm_flat = np.full((s, wr), bm_row, np.float32)
    rows = np.arange(band_height)[None, :, None]
    retina = (rows >= ilm_flat[:, None, :]) & (rows <= bm_flat[:, None, :])

    # boundaries on the raw columns (depth is not resampled: only the columns move)
    u = np.clip(geometry.raw_col_to_flat(np.arange(w)), 0, wr - 1)
    grid = np.arange(wr)
    ilm = np.stack([np.interp(u, grid, ilm_r[i]) for i in range(s)]).astype(np.float32)
    bm = np.stack([np.interp(u, grid, bm_r[i]) for i in range(s)]).astype(np.float32)
    logger.info(
        "%s: %s -> band %s, retina %.0f-%.0f rows thick",
        volume.name,
        (s, h, w),
        flat.shape,
        float(np.min(bm_r - ilm_r)),
        float(np.max(bm_r - ilm_r)),
    )
    return PreprocessedVolume(
        flat=flat,
        geometry=geometry,
        ilm=ilm,
        bm=bm,
        ilm_flat=ilm_flat,
        bm_flat=bm_flat,
        retina_mask=retina,
        intensity_range=intensity_range,
        config=config,
    )

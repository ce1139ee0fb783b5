"""Grey value normalisation to [-1, 1] and width resampling."""

from __future__ import annotations

import logging
from os import PathLike

import numpy as np
from skimage.transform import resize

from napari_anogan.errors import InputError

logger = logging.getLogger(__name__)


def normalise_intensity(
    data: np.ndarray,
    low_percentile: float = 1.0,
    high_percentile: float = 99.9,
    *,
    source: str | PathLike | None = None,
) -> tuple[np.ndarray, tuple[float, float]]:
    """Map grey values to [-1, 1] by robust per-volume percentiles, clipping the tails.

    The grey value at ``low_percentile`` of the whole volume becomes -1, the one at
    ``high_percentile`` becomes +1, linearly in between, and values outside are clipped.
    Why percentiles and not min/max: OCT speckle produces isolated extremely bright
    pixels (and saturated specular reflexes), and devices, gains and export formats put
    the signal in very different grey ranges (8-bit JPEG, 16-bit raw, float dB); a
    min/max scaling would let a handful of outliers squeeze the retina into a small part
    of the range, whereas percentiles of the whole volume give every scan the same
    retina contrast. One range per volume (not per B-scan) keeps the B-scans of a
    volume comparable with each other.

    Parameters
    ----------
    data : (S, H, W) or any-shape ndarray
        Grey values of any real dtype.
    low_percentile, high_percentile : float
        Percentiles (0-100) mapped to -1 and +1; ``low_percentile < high_percentile``.
    source : str or PathLike, optional
        File the data came from, named in error messages.

    Returns
    -------
    normalised : ndarray of float32, same shape as ``data``
        Values in [-1, 1].
    intensity_range : tuple of float
        The raw grey values (lo, hi) mapped to -1 and +1; ``raw = lo + (x + 1) / 2 * (hi - lo)``
        maps back (inside the range).

    Raises
    ------
    InputError
        If the data is empty, contains NaN or infinity, or is constant.

    Examples
    --------
    >>> x, (lo, hi) = normalise_intensity(np.array([0, 50, 100]), 0, 100)
    >>> x.tolist(), (lo, hi)
    ([-1.0, 0.0, 1.0], (0.0, 100.0))
    """
    if not 0 <= low_percentile < high_percentile <= 100:
        raise ValueError(
            f"need 0 <= low_percentile < high_percentile <= 100, got "
            f"{low_percentile}, {high_percentile}"
        )
    arr = np.asarray(data)
    if arr.size == 0:
        raise InputError("image is empty", source)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"grey values must be real numbers, got dtype {arr.dtype}", source)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n_bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(f"image contains {n_bad} NaN or infinite values", source)
    lo, hi = (float(v) for v in np.percentile(arr, [low_percentile, high_percentile]))
    if hi <= lo:
        # Mostly-constant data (e.g. a B-scan that is largely zero padding): fall back to
        # the full range so that a small real signal is not lost.
        lo, hi = float(arr.min()), float(arr.max())
        if hi <= lo:
            raise InputError(f"image is constant (every value is {lo:g})", source)
        logger.warning(
            "percentiles %.3g/%.3g coincide; normalising by min/max instead",
            low_percentile,
            high_percentile,
        )
    out = (arr.astype(np.float64) - lo) * (2.0 / (hi - lo)) - 1.0
    np.clip(out, -1.0, 1.0, out=out)
    return out.astype(np.float32), (lo, hi)


def resampled_width(
    width: int, column_spacing: float | None, config_spacing: float, target: int
) -> int:
    """Return the number of columns after width resampling.

    Parameters
    ----------
    width : int
        Raw number of columns.
    column_spacing : float or None
        Raw column spacing in um, None if unknown.
    config_spacing : float
        Wanted column spacing in um (paper: 22).
    target : int
        Columns to use when ``column_spacing`` is unknown.

    Returns
    -------
    int
        ``round(width * column_spacing / config_spacing)`` (at least 1), else ``target``.
    """
    if column_spacing is None or not np.isfinite(column_spacing) or column_spacing <= 0:
        return int(target)
    return max(1, round(width * float(column_spacing) / float(config_spacing)))


def resample_width(data: np.ndarray, new_width: int) -> np.ndarray:
    """Resample the last axis to ``new_width`` columns, depth and slices unchanged.

    Linear interpolation with Gaussian anti-aliasing when shrinking
    (:func:`skimage.transform.resize`); pixel centres are aligned as in ``resize``, i.e.
    resampled column ``u`` sits at raw column ``(u + 0.5) * W / new_width - 0.5``.

    Parameters
    ----------
    data : (S, H, W) ndarray
        Float image.
    new_width : int
        Columns of the result.

    Returns
    -------
    (S, H, new_width) ndarray of float32
    """
    s, h, w = data.shape
    if new_width == w:
        return np.asarray(data, dtype=np.float32).copy()
    out = resize(
        np.asarray(data, dtype=np.float32),
        (s, h, new_width),
        order=1,
        mode="edge",
        anti_aliasing=new_width < w,
        preserve_range=True,
    )
    return out.astype(np.float32, copy=False)

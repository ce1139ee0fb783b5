"""Grey value normalisation to [-1, 1] and width resampling."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from os import PathLike

import numpy as np
from skimage.transform import resize

from napari_anogan.errors import InputError
from napari_anogan.preprocess._quantiles import chunked_percentiles

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
    _check_percentiles(low_percentile, high_percentile)
    arr = np.asarray(data)
    if arr.size == 0:
        raise InputError("image is empty", source)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    _check_dtype(arr.dtype, source)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n_bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(f"image contains {n_bad} NaN or infinite values", source)
    lo, hi = (float(v) for v in np.percentile(arr, [low_percentile, high_percentile]))
    lo, hi = _usable_range(
        lo, hi, float(arr.min()), float(arr.max()), low_percentile, high_percentile, source
    )
    return apply_intensity_range(arr, (lo, hi)), (lo, hi)


def _check_percentiles(low_percentile: float, high_percentile: float) -> None:
    if not 0 <= low_percentile < high_percentile <= 100:
        raise ValueError(
            f"need 0 <= low_percentile < high_percentile <= 100, got "
            f"{low_percentile}, {high_percentile}"
        )


def _check_dtype(dtype: np.dtype, source: str | PathLike | None) -> None:
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"grey values must be real numbers, got dtype {dtype}", source)


def _usable_range(
    lo: float,
    hi: float,
    vmin: float,
    vmax: float,
    low_percentile: float,
    high_percentile: float,
    source: str | PathLike | None,
) -> tuple[float, float]:
    if hi <= lo:
        # Mostly-constant data (e.g. a B-scan that is largely zero padding): fall back to
        # the full range so that a small real signal is not lost.
        lo, hi = vmin, vmax
        if hi <= lo:
            raise InputError(f"image is constant (every value is {lo:g})", source)
        logger.warning(
            "percentiles %.3g/%.3g coincide; normalising by min/max instead",
            low_percentile,
            high_percentile,
        )
    return lo, hi


def apply_intensity_range(data: np.ndarray, intensity_range: tuple[float, float]) -> np.ndarray:
    """Map grey values linearly so that ``intensity_range`` becomes [-1, 1], clipping.

    Element by element, so a chunk of a volume gives exactly that part of the whole.

    Parameters
    ----------
    data : ndarray
        Grey values of any real dtype.
    intensity_range : tuple of float
        Raw ``(lo, hi)``, ``lo < hi``, as returned by :func:`normalise_intensity`.

    Returns
    -------
    ndarray of float32, same shape as ``data``
    """
    lo, hi = intensity_range
    out = (np.asarray(data).astype(np.float64) - lo) * (2.0 / (hi - lo)) - 1.0
    np.clip(out, -1.0, 1.0, out=out)
    return out.astype(np.float32)


def intensity_range_chunked(
    chunks: Callable[[], Iterable[np.ndarray]],
    low_percentile: float = 1.0,
    high_percentile: float = 99.9,
    *,
    source: str | PathLike | None = None,
) -> tuple[float, float]:
    """Return the ``intensity_range`` of :func:`normalise_intensity` for chunked data.

    The percentiles are exact (``np.percentile`` of the whole volume, bit for bit, by
    radix selection), so normalising chunk by chunk with
    :func:`apply_intensity_range` equals :func:`normalise_intensity` of the whole volume.

    Parameters
    ----------
    chunks : callable returning an iterable of ndarray
        Called once per pass over the data (2-5 passes); must yield the same chunks.
    low_percentile, high_percentile : float
        As in :func:`normalise_intensity`.
    source : str or PathLike, optional
        File the data came from, named in error messages.

    Returns
    -------
    tuple of float

    Raises
    ------
    InputError
        Empty, NaN or infinite values, not real numbers, or constant.
    """
    _check_percentiles(low_percentile, high_percentile)
    n = 0
    n_bad = 0
    vmin, vmax = np.inf, -np.inf
    for chunk in chunks():
        arr = np.asarray(chunk)
        if arr.size == 0:
            continue
        _check_dtype(arr.dtype if arr.dtype != bool else np.dtype(np.uint8), source)
        n += arr.size
        if np.issubdtype(arr.dtype, np.floating):
            finite = np.isfinite(arr)
            if not finite.all():
                n_bad += arr.size - int(np.count_nonzero(finite))
                continue
        vmin = min(vmin, float(arr.min()))
        vmax = max(vmax, float(arr.max()))
    if n == 0:
        raise InputError("image is empty", source)
    if n_bad:
        raise InputError(f"image contains {n_bad} NaN or infinite values", source)

    def as_numbers() -> Iterator[np.ndarray]:
        for chunk in chunks():
            arr = np.asarray(chunk)
            yield arr.astype(np.uint8) if arr.dtype == bool else arr

    lo, hi = (
        float(v) for v in chunked_percentiles(as_numbers, [low_percentile, high_percentile], n=n)
    )
    return _usable_range(lo, hi, vmin, vmax, low_percentile, high_percentile, source)


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

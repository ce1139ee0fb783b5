"""Healthy percentiles: a score as a percentile of the model's held-out healthy patches.

The healthy reference is stored as quantiles (:func:`score_quantiles`, at
:data:`QUANTILE_LEVELS`); :func:`percentile_of` places new scores in it.
"""

from __future__ import annotations

import numpy as np

from napari_anogan.errors import InputError

QUANTILE_LEVELS = np.linspace(0.0, 100.0, 101)
"""Percent levels at which the healthy reference distribution is stored."""


def score_quantiles(
    scores: dict[str, np.ndarray], levels: np.ndarray = QUANTILE_LEVELS
) -> dict[str, np.ndarray]:
    """Quantiles of each score over a set of (healthy) patches.

    Parameters
    ----------
    scores : dict of str to (N,) ndarray
        Per-patch scores by name, N >= 1.
    levels : (Q,) ndarray
        Percent levels in [0, 100], increasing.

    Returns
    -------
    dict of str to (Q,) float64 ndarray
    """
    out = {}
    for name, values in scores.items():
        values = np.asarray(values, np.float64).ravel()
        if values.size == 0:
            raise InputError(f"no values to compute quantiles of {name!r}")
        out[name] = np.quantile(values, np.asarray(levels, np.float64) / 100.0)
    return out


def percentile_of(
    scores: np.ndarray | float,
    quantiles: np.ndarray,
    levels: np.ndarray | None = None,
) -> np.ndarray:
    """Percentile of healthy patches below each score, by interpolating stored quantiles.

    Parameters
    ----------
    scores : ndarray or float
        Scores of any shape.
    quantiles : (Q,) ndarray
        Non-decreasing quantiles of the healthy score distribution.
    levels : (Q,) ndarray, optional
        Their percent levels; default evenly spaced 0..100.

    Returns
    -------
    ndarray of float64, same shape as ``scores``
        In [0, 100]: 0 at or below the healthy minimum, 100 at or above the maximum.
        Where several quantiles are equal (a flat stretch of the distribution) a score
        equal to them gets the middle of their levels. NaN scores stay NaN.

    Examples
    --------
    >>> percentile_of([0.5, 1.5, 5.0], np.array([0.0, 1.0, 2.0]))
    array([ 25.,  75., 100.])
    """
    q = np.asarray(quantiles, np.float64).ravel()
    if q.size == 0:
        raise InputError("empty quantile table")
    lv = np.linspace(0.0, 100.0, q.size) if levels is None else np.asarray(levels, np.float64)
    if lv.shape != q.shape:
        raise InputError(f"levels {lv.shape} and quantiles {q.shape} differ in length")
    if np.any(np.diff(q) < 0):
        raise InputError("quantiles must be non-decreasing")
    # np.interp needs strictly increasing x: merge ties to the mean of their levels.
    uq, inverse = np.unique(q, return_inverse=True)
    ulv = np.bincount(inverse, weights=lv) / np.bincount(inverse)
    s = np.asarray(scores, np.float64)
    if uq.size == 1:
        out = np.where(s < uq[0], 0.0, np.where(s > uq[0], 100.0, ulv[0]))
    else:
        out = np.interp(s, uq, ulv, left=0.0, right=100.0)
    return np.where(np.isnan(s), np.nan, out)

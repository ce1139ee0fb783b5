"""Model fit: whether the model's healthy reference describes a scan at all.

A diseased scan has a few anomalous regions: most of its patches still sit among the
healthy reference patches. A scan of another device, protocol or anatomy is anomalous
everywhere: most of its patches are above the reference's highest percentiles, and its
candidates say nothing about disease. :func:`model_fit` measures where a scan's patches
sit against the reference and gives the verdict.
"""

from __future__ import annotations

import numpy as np

from napari_anogan import settings as defaults
from napari_anogan.scoring.percentiles import percentile_of

FITS = "fits"
DOES_NOT_FIT = "does_not_fit"
NO_REFERENCE = "no_reference"


def fit_rule(limit: float = defaults.FIT_MEDIAN_EXCESS) -> str:
    """Return the verdict's rule in words (stored with every verdict)."""
    return (
        f"does_not_fit when the scan's median patch score is more than {limit:g} x the "
        f"healthy reference's 99th percentile: the typical patch of the scan lies far "
        f"outside what the model saw as healthy (a diseased scan has anomalous regions, "
        f"but its typical patch stays near the healthy range)"
    )


def model_fit(
    scores: np.ndarray,
    quantiles: np.ndarray | None,
    levels: np.ndarray | None = None,
    *,
    limit: float = defaults.FIT_MEDIAN_EXCESS,
) -> dict:
    """Where a scan's patch scores sit against the model's healthy reference.

    Parameters
    ----------
    scores : (N,) array
        The scan's patch scores (the ranking score, higher = more anomalous).
    quantiles : (Q,) array or None
        The healthy reference's quantiles of that score (None: the model has none).
    levels : (Q,) array, optional
        Their percent levels (default evenly spaced 0..100).
    limit : float
        The verdict is ``does_not_fit`` when the scan's median patch score is more than
        ``limit`` times the reference's 99th percentile.

    Returns
    -------
    dict
        ``verdict`` (``fits``, ``does_not_fit``, or ``no_reference``),
        ``median_percentile`` (healthy percentile of the median patch),
        ``share_above_p99`` (fraction of patches above the reference's 99th percentile),
        ``median_excess`` (median patch score / the reference's 99th percentile),
        ``n_patches`` and ``rule``. Plain floats or None (JSON-safe).

    Examples
    --------
    >>> q = np.linspace(0.0, 1.0, 101)
    >>> model_fit(np.array([0.1, 0.5, 0.995]), q)["verdict"]
    'fits'
    >>> model_fit(np.array([3.0, 4.0, 0.2]), q)["verdict"]
    'does_not_fit'
    """
    x = np.asarray(scores, np.float64).ravel()
    x = x[np.isfinite(x)]
    if quantiles is None or x.size == 0:
        return {
            "verdict": NO_REFERENCE,
            "median_percentile": None,
            "share_above_p99": None,
            "median_excess": None,
            "n_patches": int(x.size),
            "rule": "the model has no healthy reference (or the scan no patch): fit unknown",
        }
    q = np.asarray(quantiles, np.float64)
    lv = np.linspace(0.0, 100.0, q.size) if levels is None else np.asarray(levels, np.float64)
    p99 = float(np.interp(99.0, lv, q))
    median = float(np.median(x))
    excess = median / p99 if p99 > 0 else float("inf")
    return {
        "verdict": DOES_NOT_FIT if excess > limit else FITS,
        "median_percentile": round(float(percentile_of(median, q, lv)), 2),
        "share_above_p99": round(float(np.mean(x > p99)), 4),
        "median_excess": round(excess, 4) if np.isfinite(excess) else None,
        "n_patches": int(x.size),
        "rule": fit_rule(limit),
    }


def fit_message(fit: dict, model: str, scan: str) -> str | None:
    """Return the line a user reads when a model does not fit a scan (else None).

    Parameters
    ----------
    fit : dict
        A :func:`model_fit` result.
    model, scan : str
        Names of the model file and of the scan, as the user knows them.

    Examples
    --------
    >>> fit_message({"verdict": "does_not_fit", "share_above_p99": 0.9}, "m.pt", "a.jpg")[:42]
    'model m.pt does not fit a.jpg: 90 % of its'
    """
    if fit.get("verdict") != DOES_NOT_FIT:
        return None
    return (
        f"model {model} does not fit {scan}: {100 * fit['share_above_p99']:.0f} % of its "
        f"patches are above the 99th healthy percentile; its candidates are not "
        f"meaningful. Train or adapt a healthy model on healthy scans from this device: "
        f"napari-anogan train --init {model} HEALTHY_SCANS... -o adapted.pt"
    )


def fit_summary(fit: dict) -> str:
    """Return the verdict with its numbers, for summary lines (CLI, demo, widgets).

    Examples
    --------
    >>> fit_summary({"verdict": "fits", "median_excess": 0.62, "share_above_p99": 0.04})
    'fits (typical patch 0.62 x the healthy 99th percentile; 4 % of patches above it)'
    """
    verdict = fit.get("verdict", "unknown")
    if fit.get("median_excess") is None:
        return verdict
    return (
        f"{verdict} (typical patch {fit['median_excess']:.2f} x the healthy 99th percentile; "
        f"{100 * fit['share_above_p99']:.0f} % of patches above it)"
    )

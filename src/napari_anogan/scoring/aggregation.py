"""Turning patch scores into B-scan and volume scores, and patches into heatmaps.

All functions are numpy in, numpy out; the scores themselves come from
:func:`napari_anogan.mapping.map_to_latent`.
"""

from __future__ import annotations

import logging

import numpy as np

from napari_anogan import settings as defaults
from napari_anogan.errors import InputError

logger = logging.getLogger(__name__)


AGGREGATION_RULES = ("top_mean", "max", "mean")


def aggregate_bscans(
    patch_slices: np.ndarray,
    patch_scores: np.ndarray,
    n_slices: int,
    rule: str = "top_mean",
    *,
    top_k: int = defaults.BSCAN_TOP_K,
) -> np.ndarray:
    """Score each B-scan from the scores of its patches.

    Rules
    -----
    ``top_mean`` (default)
        Mean of the ``top_k`` highest patch scores of the B-scan (all of them if fewer). A
        lesion typically covers several neighbouring patches, so averaging the top few
        rewards a consistent local anomaly, while the single maximum is noisy: one badly
        mapped patch (the mapping is a non-convex search) would flag a healthy B-scan.
    ``max``
        Highest patch score.
    ``mean``
        Mean of all patch scores (dilutes small lesions; for comparison).

    Parameters
    ----------
    patch_slices : (N,) int ndarray
        B-scan (slice) index of each patch, in ``[0, n_slices)``.
    patch_scores : (N,) ndarray
        Score of each patch (e.g. anomaly score A).
    n_slices : int
        Number of B-scans in the volume.
    rule : str
        One of ``AGGREGATION_RULES``.
    top_k : int
        Patches averaged by ``top_mean``.

    Returns
    -------
    (n_slices,) float64 ndarray
        B-scan scores; NaN for B-scans without patches. See :func:`volume_score`.

    Examples
    --------
    >>> aggregate_bscans(
    ...     np.array([0, 0, 0, 0, 2]), np.array([1.0, 5.0, 3.0, 4.0, 2.0]), 3, top_k=3
    ... )
    array([ 4., nan,  2.])
    """
    if rule not in AGGREGATION_RULES:
        raise InputError(f"unknown aggregation rule {rule!r}; choose one of {AGGREGATION_RULES}")
    slices = np.asarray(patch_slices).ravel()
    scores = np.asarray(patch_scores, np.float64).ravel()
    if slices.shape != scores.shape:
        raise InputError(f"{slices.size} patch slices but {scores.size} patch scores")
    if slices.size and (slices.min() < 0 or slices.max() >= n_slices):
        raise InputError(f"patch slice indices must be in [0, {n_slices})")
    slices = slices.astype(np.int64)
    out = np.full(n_slices, np.nan)
    if slices.size == 0:
        return out
    if rule == "max":
        out = np.full(n_slices, -np.inf)
        np.maximum.at(out, slices, scores)
    elif rule == "mean":
        sums = np.bincount(slices, weights=scores, minlength=n_slices)
        counts = np.bincount(slices, minlength=n_slices)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = sums / counts
    else:
        # Sort by (slice, score descending) and keep each slice's first top_k.
        order = np.lexsort((-scores, slices))
        s_sorted, v_sorted = slices[order], scores[order]
        starts = np.searchsorted(s_sorted, s_sorted, side="left")
        rank = np.arange(s_sorted.size) - starts
        keep = rank < int(top_k)
        sums = np.bincount(s_sorted[keep], weights=v_sorted[keep], minlength=n_slices)
        counts = np.bincount(s_sorted[keep], minlength=n_slices)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = sums / counts
    present = np.bincount(slices, minlength=n_slices) > 0
    return np.where(present, out, np.nan)


def volume_score(bscan_scores: np.ndarray) -> float:
    """Score a volume as the maximum of its B-scan scores.

    A volume is as anomalous as its most anomalous B-scan (a lesion is local; averaging
    over B-scans would dilute it). B-scans without patches (NaN) are ignored.

    Parameters
    ----------
    bscan_scores : (S,) ndarray
        From :func:`aggregate_bscans`.

    Returns
    -------
    float
        NaN if no B-scan has a score.

    Examples
    --------
    >>> volume_score(np.array([4.0, np.nan, 2.0]))
    4.0
    """
    values = np.asarray(bscan_scores, np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.max()) if finite.size else float("nan")


def assemble_heatmap(
    residuals: np.ndarray,
    coords: np.ndarray,
    shape: tuple[int, int, int],
    *,
    chunk: int = 4096,
) -> np.ndarray:
    """Paste patch images into a volume, averaging where patches overlap.

    Parameters
    ----------
    residuals : (N, 1, P, Q) or (N, P, Q) ndarray
        Patch images (e.g. residual images |x - G(z)|, or reconstructions).
    coords : (N, 3) int ndarray
        ``(slice, row, col)`` of each patch's top-left pixel in the target grid. Parts
        of a patch outside the grid are dropped.
    shape : (S, H, W) tuple of int
        Shape of the target volume (e.g. the flattened retina band).
    chunk : int
        Patches processed at a time (bounds the temporary index arrays).

    Returns
    -------
    (S, H, W) float32 ndarray
        Mean of the covering patch values per pixel; NaN where no patch covers.

    Examples
    --------
    >>> r = np.stack([np.full((1, 2, 2), 1.0), np.full((1, 2, 2), 3.0)])
    >>> assemble_heatmap(r, np.array([[0, 0, 0], [0, 0, 1]]), (1, 2, 4))[0]
    array([[ 1.,  2.,  3., nan],
           [ 1.,  2.,  3., nan]], dtype=float32)
    """
    arr = np.asarray(residuals)
    if arr.ndim == 4:
        if arr.shape[1] != 1:
            raise InputError(f"expected one channel per patch, got shape {arr.shape}")
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise InputError(f"patch images must be (N, 1, P, Q) or (N, P, Q), got {arr.shape}")
    coords = np.asarray(coords, np.int64).reshape(-1, 3)
    if coords.shape[0] != arr.shape[0]:
        raise InputError(f"{arr.shape[0]} patches but {coords.shape[0]} coordinates")
    s_n, h, w = (int(v) for v in shape)
    n_px = s_n * h * w
    total = np.zeros(n_px, np.float64)
    count = np.zeros(n_px, np.int64)
    ph, pw = arr.shape[1:]
    dr, dc = np.meshgrid(np.arange(ph), np.arange(pw), indexing="ij")
    dr, dc = dr.ravel(), dc.ravel()
    for lo in range(0, arr.shape[0], chunk):
        c = coords[lo : lo + chunk]
        rows = c[:, 1:2] + dr[None]
        cols = c[:, 2:3] + dc[None]
        sl = np.broadcast_to(c[:, 0:1], rows.shape)
        ok = (sl >= 0) & (sl < s_n) & (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        flat = (sl * h + rows) * w + cols
        vals = arr[lo : lo + chunk].reshape(len(c), -1).astype(np.float64)
        total += np.bincount(flat[ok], weights=vals[ok], minlength=n_px)
        count += np.bincount(flat[ok], minlength=n_px)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out.reshape(s_n, h, w).astype(np.float32)

"""Ground truth: patch and B-scan labels from lesion masks, or from the input's group."""

from __future__ import annotations

import logging

import numpy as np

from napari_anogan.errors import InputError

logger = logging.getLogger(__name__)


def patch_labels_from_mask(
    mask_flat: np.ndarray, coords: np.ndarray, patch_size: int
) -> np.ndarray:
    """Label patches positive if they contain at least one lesion pixel (the paper's rule).

    Parameters
    ----------
    mask_flat : (S, Hb, Wr) array
        Lesion mask in the same (flattened, resampled) geometry the patches were cut from;
        nonzero = lesion.
    coords : (N, 3) int array
        ``(slice, row, col)`` of each patch's top-left corner in ``mask_flat``.
    patch_size : int
        Side of the square patches.

    Returns
    -------
    (N,) bool array
        True where the patch window holds any lesion pixel. Parts of a window outside the
        mask count as background.

    Raises
    ------
    InputError
        If the mask is not 3-D, coords are not ``(N, 3)`` or a slice index is out of range.
    """
    mask = np.asarray(mask_flat)
    coords = np.asarray(coords)
    if mask.ndim != 3:
        raise InputError(f"lesion mask must be (slices, rows, cols), got shape {mask.shape}")
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise InputError(f"patch coords must be (N, 3) = (slice, row, col), got {coords.shape}")
    if patch_size < 1:
        raise InputError(f"patch_size must be >= 1, got {patch_size}")
    coords = coords.astype(np.int64)
    n_slices, height, width = mask.shape
    if coords.size and (coords[:, 0].min() < 0 or coords[:, 0].max() >= n_slices):
        raise InputError(f"patch slice index out of range for a mask with {n_slices} slices")
    lesion = mask != 0
    # A 2-D summed-area table per slice answers every window in O(1).
    table = np.zeros((n_slices, height + 1, width + 1), dtype=np.int64)
    table[:, 1:, 1:] = lesion.cumsum(axis=1).cumsum(axis=2)
    s = coords[:, 0]
    r0 = np.clip(coords[:, 1], 0, height)
    c0 = np.clip(coords[:, 2], 0, width)
    r1 = np.clip(coords[:, 1] + patch_size, 0, height)
    c1 = np.clip(coords[:, 2] + patch_size, 0, width)
    count = table[s, r1, c1] - table[s, r0, c1] - table[s, r1, c0] + table[s, r0, c0]
    return count > 0


def bscan_labels(mask: np.ndarray) -> np.ndarray:
    """Label B-scans positive if their mask has at least one lesion pixel.

    Parameters
    ----------
    mask : (S, H, W) array
        Lesion mask of a volume; nonzero = lesion.

    Returns
    -------
    (S,) bool array
    """
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[np.newaxis]
    if mask.ndim != 3:
        raise InputError(f"lesion mask must be (slices, rows, cols), got shape {mask.shape}")
    return (mask != 0).reshape(mask.shape[0], -1).any(axis=1)


def bscan_labels_without_mask(n_slices: int, is_anomalous_input: bool) -> np.ndarray:
    """Label B-scans when no mask is known: every B-scan of an anomalous input is positive.

    Parameters
    ----------
    n_slices : int
        Number of B-scans in the input.
    is_anomalous_input : bool
        Whether the input was given as anomalous (``--anomalous``) or normal.

    Returns
    -------
    (n_slices,) bool array
    """
    return np.full(int(n_slices), bool(is_anomalous_input), dtype=bool)

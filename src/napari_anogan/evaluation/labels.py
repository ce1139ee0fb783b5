"""Ground truth: patch and B-scan labels from lesion masks, or from the input's group."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from napari_anogan import settings as defaults
from napari_anogan.errors import InputError

logger = logging.getLogger(__name__)


def load_mask(
    mask_path: str | Path,
    scan_path: str | Path,
    scan_shape: tuple[int, ...],
    *,
    max_labels: int = defaults.MASK_MAX_LABELS,
) -> np.ndarray:
    """Read the lesion mask of a scan and check that it is one.

    A mask is a file other than the scan, of the scan's shape, holding non-negative
    integer values (floats allowed when integral): 0 for background, other values lesion
    labels (0/1, 0/255 or a few classes), at most ``max_labels`` distinct values.

    Parameters
    ----------
    mask_path, scan_path : str or Path
        The mask and the scan it was matched to.
    scan_shape : tuple of int
        (S, H, W) of the scan.
    max_labels : int
        Most distinct values (background included).

    Returns
    -------
    (S, H, W) ndarray of unsigned int
        The lesion labels (smallest unsigned type that holds them); nonzero = lesion.

    Raises
    ------
    InputError
        Naming the mask: the scan itself, another shape, non-integer, negative or too
        many distinct values (a grey image rather than a mask).
    """
    from napari_anogan.io import read_volume

    mask_path, scan_path = Path(mask_path), Path(scan_path)
    if mask_path.resolve() == scan_path.resolve():
        raise InputError("is the scan itself; expected a separate lesion mask file", mask_path)
    data = np.asarray(read_volume(mask_path).data)
    if data.shape != tuple(scan_shape):
        raise InputError(
            f"mask shape {data.shape} differs from its scan {tuple(scan_shape)} ({scan_path.name})",
            mask_path,
        )
    values = np.unique(data)
    if data.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        raise InputError(
            f"holds non-integer values (e.g. {values[values != np.round(values)][0]:g}); "
            f"expected a lesion mask of integer labels (0 = background) for {scan_path.name}",
            mask_path,
        )
    if values.size and values[0] < 0:
        raise InputError(
            f"holds negative values ({values[0]:g}); expected a lesion mask of labels >= 0 "
            f"(0 = background) for {scan_path.name}",
            mask_path,
        )
    if values.size > max_labels:
        raise InputError(
            f"holds {values.size} distinct values; expected a lesion mask of 0/1 or at most "
            f"{max_labels} labels for {scan_path.name} (a grey image, the scan, or a lossy "
            "JPEG mask?)",
            mask_path,
        )
    return data.astype(np.min_scalar_type(int(values.max()) if values.size else 0))


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

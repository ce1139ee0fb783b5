"""Patches of the flattened band: random (training) and on a grid (scoring)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_anogan import settings as defaults
from napari_anogan.preprocess.flatten import PreprocessedVolume


@dataclass(eq=False)
class Patches:
    """Square patches cut from the flattened band, with where they came from.

    Attributes
    ----------
    images : (N, 1, P, P) ndarray of float32
        Patch grey values in [-1, 1] (channel axis for the networks).
    coords : (N, 3) ndarray of int64
        ``slice, row, col`` of each patch's top-left corner in the band; map to raw
        pixels with ``PreprocessedVolume.geometry.box_to_raw``.
    """

    images: np.ndarray
    coords: np.ndarray

    def __len__(self) -> int:
        return len(self.coords)


def cut_patches(flat: np.ndarray, coords: np.ndarray, size: int) -> np.ndarray:
    """Gather ``size`` x ``size`` patches at ``coords`` (top-left) from ``flat``.

    Parameters
    ----------
    flat : (S, Hb, Wr) ndarray
        The band.
    coords : (N, 3) int ndarray
        ``slice, row, col`` of each patch's top-left corner in ``flat``.
    size : int
        Patch side.

    Returns
    -------
    (N, 1, size, size) ndarray of float32
    """
    if len(coords) == 0:
        return np.zeros((0, 1, size, size), np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(flat, (size, size), axis=(1, 2))
    out = windows[coords[:, 0], coords[:, 1], coords[:, 2]]
    return np.ascontiguousarray(out[:, None], dtype=np.float32)


def _check_fits(pre: PreprocessedVolume) -> int:
    size = pre.config.patch_size
    _, hb, wr = pre.flat.shape
    if hb < size or wr < size:
        raise ValueError(f"band {hb}x{wr} is smaller than one {size}x{size} patch")
    return size


def _box_sums(mask: np.ndarray, size: int) -> np.ndarray:
    """Count the True pixels in every ``size`` x ``size`` window, by top-left corner.

    A summed-area table (cumulative sums) so all windows cost O(1) each.
    """
    s, h, w = mask.shape
    sat = np.zeros((s, h + 1, w + 1), np.int64)
    sat[:, 1:, 1:] = mask.cumsum(1).cumsum(2)
    return (
        sat[:, size:, size:]
        - sat[:, :-size, size:]
        - sat[:, size:, :-size]
        + sat[:, :-size, :-size]
    )


def random_patches(
    pre: PreprocessedVolume,
    k_per_scan: int,
    seed: int | np.random.Generator = 0,
    slices: Sequence[int] | None = None,
) -> Patches:
    """Patches at random positions inside the retina, ``k_per_scan`` per B-scan.

    Each patch is centred on a pixel drawn uniformly from the retina (between ILM and
    Bruch's membrane) among those where the whole patch fits in the band, as the paper
    samples training patches at random positions of the flattened retina.

    Parameters
    ----------
    pre : PreprocessedVolume
        Output of :func:`preprocess_volume`.
    k_per_scan : int
        Patches per B-scan (drawn with replacement of positions).
    seed : int or numpy.random.Generator
        Random seed or generator; the same seed gives the same patches.
    slices : sequence of int, optional
        B-scans to draw from (default: all).

    Returns
    -------
    Patches
        ``k_per_scan`` patches per chosen B-scan, grouped by slice (none from a B-scan
        without retina).
    """
    size = _check_fits(pre)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    s, hb, wr = pre.flat.shape
    half = size // 2
    # centres whose patch fits: rows half .. hb - size + half (same for columns)
    centres = pre.retina_mask[:, half : hb - size + half + 1, half : wr - size + half + 1]
    coords = []
    for i in range(s) if slices is None else sorted(set(int(i) for i in slices)):
        rows, cols = np.nonzero(centres[i])
        if len(rows) == 0 or k_per_scan <= 0:
            continue
        pick = rng.integers(0, len(rows), size=k_per_scan)
        coords.append(np.stack([np.full(k_per_scan, i), rows[pick], cols[pick]], axis=1))
    coords_arr = np.concatenate(coords).astype(np.int64) if coords else np.zeros((0, 3), np.int64)
    return Patches(images=cut_patches(pre.flat, coords_arr, size), coords=coords_arr)


def _grid_starts(length: int, size: int, stride: int) -> np.ndarray:
    """Start positions every ``stride``, plus one flush with the end so all is covered."""
    starts = np.arange(0, length - size + 1, stride)
    if starts[-1] != length - size:
        starts = np.append(starts, length - size)
    return starts


def grid_patches(
    pre: PreprocessedVolume,
    stride: int = defaults.SCORE_STRIDE,
    slices: Sequence[int] | None = None,
) -> Patches:
    """Grid patches of the band centred in the retina, and the few more covering the rest.

    A grid patch is kept when its centre pixel lies in the retina (between ILM and
    Bruch's membrane), the rule :func:`random_patches` draws the training patches by. A
    patch centred in the vitreous or the choroid shows an arrangement the model never saw
    in training, and its score then says more about the band's height (set by the
    thickest retina of the volume, so by a lesion elsewhere in it) than about the tissue.
    Where a steep or thin retina leaves retina pixels outside every such patch (mostly at
    the band's side edges), the grid patches holding the most retina are added until
    every retina pixel is covered.

    Parameters
    ----------
    pre : PreprocessedVolume
        Output of :func:`preprocess_volume`.
    stride : int
        Grid step in band pixels (rows and columns); a last row/column of patches is
        added flush with the band's end.
    slices : sequence of int, optional
        B-scans to cut from (default: all).

    Returns
    -------
    Patches
        Ordered by slice, then row, then column.
    """
    size = _check_fits(pre)
    coords = grid_coords(pre.retina_mask, size, stride, slices)
    return Patches(images=cut_patches(pre.flat, coords, size), coords=coords)


def _cover_the_rest(retina: np.ndarray, keep: np.ndarray, count: np.ndarray, rows, cols, size):
    """Add to ``keep`` (in place) the grid windows needed to cover all of ``retina``.

    Greedy set cover, most retina pixels first: a window is added when it holds a retina
    pixel that no kept window covers yet. ``retina`` is one B-scan's mask, ``keep`` and
    ``count`` (retina pixels per window) are indexed by grid row and column.
    """
    covered = np.zeros(retina.shape, bool)
    for i, j in np.argwhere(keep):
        covered[rows[i] : rows[i] + size, cols[j] : cols[j] + size] = True
    if covered[retina].all():
        return
    free = ~keep & (count > 0)
    candidates = np.argwhere(free)
    order = np.argsort(-count[free], kind="stable")
    for i, j in candidates[order]:
        window = (slice(rows[i], rows[i] + size), slice(cols[j], cols[j] + size))
        if (retina[window] & ~covered[window]).any():
            keep[i, j] = True
            covered[window] = True


def grid_coords(
    retina_mask: np.ndarray,
    size: int,
    stride: int = defaults.SCORE_STRIDE,
    slices: Sequence[int] | None = None,
) -> np.ndarray:
    """Top-left corners of the grid patches of :func:`grid_patches`, from the mask alone.

    Parameters
    ----------
    retina_mask : (S, Hb, Wr) ndarray of bool
        Retina pixels of the band (``PreprocessedVolume.retina_mask``).
    size : int
        Patch side.
    stride, slices
        As in :func:`grid_patches`.

    Returns
    -------
    (N, 3) ndarray of int64
        ``slice, row, col``, ordered by slice, then row, then column. Each B-scan's
        patches depend on that B-scan alone, so the corners of a chunk of B-scans are
        those of the whole volume on these B-scans.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    s, hb, wr = retina_mask.shape
    if hb < size or wr < size:
        raise ValueError(f"band {hb}x{wr} is smaller than one {size}x{size} patch")
    chosen = np.arange(s) if slices is None else np.asarray(sorted(set(slices)), np.int64)
    if len(chosen) and (chosen.min() < 0 or chosen.max() >= s):
        raise ValueError(f"slices must be in [0, {s - 1}], got {list(slices or [])}")
    rows = _grid_starts(hb, size, stride)
    cols = _grid_starts(wr, size, stride)
    half = size // 2
    mask = retina_mask[chosen]
    # centred in the retina, with the centre convention of random_patches
    keep = mask[:, rows + half][:, :, cols + half].copy()
    counts = _box_sums(mask, size)[:, rows][:, :, cols]
    for k in range(len(chosen)):
        _cover_the_rest(mask[k], keep[k], counts[k], rows, cols, size)
    si, ri, ci = np.nonzero(keep)
    return np.stack([chosen[si], rows[ri], cols[ci]], axis=1).astype(np.int64).reshape(-1, 3)

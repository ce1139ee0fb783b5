"""Retina boundaries per column: ILM (top of the retina) and BM (bottom of the RPE)."""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

from napari_anogan.preprocess._graph import min_cost_rows

logger = logging.getLogger(__name__)
_DEBUG: dict = {}


def _window(img: np.ndarray, start: int, stop: int, reduce: str = "mean") -> np.ndarray:
    """Mean (or max) of ``img[:, r + start : r + stop, :]`` for every row ``r``.

    A centred scipy filter shifted by index (scipy's ``origin`` cannot move a window
    past its own centre); rows beyond the image are clamped to the edge.
    """
    size = stop - start
    filt = ndi.uniform_filter1d if reduce == "mean" else ndi.maximum_filter1d
    centred = filt(img, size=size, axis=1, mode="nearest")
    idx = np.clip(np.arange(img.shape[1]) + start + size // 2, 0, img.shape[1] - 1)
    return centred[:, idx, :]


def _levels(img: np.ndarray, lo_q: float, hi_q: float) -> tuple[np.ndarray, np.ndarray]:
    lo = np.percentile(img, lo_q, axis=(1, 2))[:, None, None]
    hi = np.percentile(img, hi_q, axis=(1, 2))[:, None, None]
    return lo, np.maximum(hi, lo + 1e-3)


def _unit(img: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def fill_padding(bscans: np.ndarray, min_fraction: float = 0.002) -> np.ndarray:
    """Replace constant padding regions (black or white borders) by the background level.

    Exported B-scans are often padded: zeros above/below a wide-field scan, a white
    wedge where the device rotated the image. Their straight, strong edges would attract
    the boundary search. A region counts as padding when it is made of the darkest or
    brightest value of the B-scan, is solid (survives a 5x5 opening, which speckle does
    not), touches the image border and covers at least ``min_fraction`` of the B-scan.

    Parameters
    ----------
    bscans : (S, H, W) ndarray
        Normalised B-scans.
    min_fraction : float
        Smallest padding region, as a fraction of the B-scan area.

    Returns
    -------
    (S, H, W) ndarray of float32
        Copy with padding replaced by the 10th percentile of the other pixels.
    """
    out = np.array(bscans, dtype=np.float32, copy=True)
    s, h, w = out.shape
    min_area = max(50, min_fraction * h * w)
    solid = np.ones((5, 5), bool)
    for i in range(s):
        img = out[i]
        lo, hi = float(img.min()), float(img.max())
        tol = 0.03 * (hi - lo)  # JPEG compression blurs the padding value a little
        pad = np.zeros((h, w), bool)
        for extreme in (img <= lo + tol, img >= hi - tol):
            seeds = ndi.binary_opening(extreme, structure=solid)
            if not seeds.any():
                continue
            labels, n = ndi.label(seeds)
            areas = np.bincount(labels.ravel(), minlength=n + 1)
            border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
            keep = np.zeros(n + 1, bool)
            keep[border] = True
            keep &= areas >= min_area
            keep[0] = False
            if keep.any():
                # grow back the thin parts (wedge tips, 1-2 px border columns) the
                # opening removed, but only through near-extreme pixels
                pad |= ndi.binary_propagation(keep[labels], mask=extreme)
        if pad.any() and not pad.all():
            img[pad] = np.percentile(img[~pad], 10)
    return out


def detect_boundaries(
    bscans: np.ndarray,
    *,
    smooth_rows: float = 2.0,
    smooth_cols: float = 1.5,
    max_jump: int = 4,
    jump_penalty: float = 0.05,
    min_thickness: int = 12,
    max_thickness: int = 300,
    slice_band: int = 12,
    boundary_smooth_cols: float = 1.0,
    boundary_smooth_slices: float = 0.7,
) -> tuple[np.ndarray, np.ndarray]:
    """Find the ILM and Bruch's membrane in every column of every B-scan.

    Parameters
    ----------
    bscans : (S, H, W) or (H, W) ndarray
        Normalised B-scans (e.g. from :func:`normalise_intensity`), depth down. Works at
        any width; the defaults are tuned for about 22 um per column (256 columns).
    smooth_rows, smooth_cols : float
        Gaussian smoothing (pixels) before taking intensities and vertical gradients.
    max_jump : int
        Largest row change of a boundary between neighbouring columns.
    jump_penalty : float
        Path cost per row of jump (smoothness of the graph search).
    min_thickness, max_thickness : int
        Range of retina thickness (ILM to BM, rows) searched for the ILM.
    slice_band : int
        Second pass: each B-scan's search is restricted to +- this many rows around the
        median of its neighbours' first-pass boundaries (consistency between B-scans).
    boundary_smooth_cols, boundary_smooth_slices : float
        Gaussian smoothing of the final boundaries along columns and across B-scans.

    Returns
    -------
    ilm, bm : (S, W) ndarray of float32
        Row (depth) of the ILM and of Bruch's membrane per B-scan and column.
    """
    x = np.asarray(bscans, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    x = fill_padding(x)
    x = ndi.median_filter(x, size=(1, 3, 3))
    sig = (0, smooth_rows, smooth_cols)
    inten = ndi.gaussian_filter(x, sig)
    gy = ndi.gaussian_filter(x, sig, order=(0, 1, 0))
    bg, tissue = _levels(inten, 20, 99)

    # -- RPE: the brightest deep layer, as a smooth path ---------------------------------
    bright_c = (ndi.gaussian_filter(x, (0, 2.0, 2.0)) - bg) / (tissue - bg)
    bright = np.clip(bright_c, 0, 1)
    deeper = _window(bright_c, 8, 60, "max")
    rpe_cost = np.clip(1.0 - bright_c, 0, None) + 1.5 * np.clip(deeper - bright_c, 0, None)
    rpe = min_cost_rows(rpe_cost, max_jump, jump_penalty)
    _DEBUG["rpe"] = rpe

    # -- BM: strongest bright-to-dark edge just under the RPE ----------------------------
    _, gscale = _levels(np.abs(gy), 0, 99.5)
    fall = np.clip(-gy / gscale, 0, 1)
    above_max = _window(bright, -8, 0, "max")
    bm = min_cost_rows(1.0 - fall * above_max, max_jump, jump_penalty, rpe - 4, rpe + 20)

    # -- ILM: first dark-to-bright edge above BM with bright retina below it ------------
    # The score wants an edge, bright tissue over the next rows (rejects a thin detached
    # vitreous membrane), darkness just above, and little tissue over a long stretch
    # above (so inner edges such as IS/OS or the floor of a cyst lose to the surface).
    rise = np.clip(gy / (0.5 * _levels(np.clip(gy, 0, None), 0, 99)[1]), 0, 1)
    below = _unit(_window(inten, 2, 14), bg, tissue)
    above = _unit(_window(inten, -14, -2), bg, tissue)
    above_long = _unit(_window(inten, -50, -3), bg, tissue)
    ilm_score = rise * below * (1.0 - above)
    ilm_cost = 1.0 - ilm_score + above_long
    _DEBUG.update(
        bright=bright,
        bm_score=fall * above_max,
        ilm_score=ilm_score,
        ilm_cost=ilm_cost,
        above_long=above_long,
    )
    ilm = min_cost_rows(ilm_cost, max_jump, jump_penalty, bm - max_thickness, bm - min_thickness)
    return ilm.astype(np.float32), bm.astype(np.float32)

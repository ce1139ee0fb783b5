"""Retina boundaries per column: ILM (top of the retina) and BM (bottom of the RPE)."""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi
from scipy.linalg import solveh_banded

from napari_anogan.preprocess._graph import min_cost_rows

logger = logging.getLogger(__name__)


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
    """Replace bright padding (a white wedge or band at the top or bottom) by background.

    Some exports pad a rotated B-scan with white: its straight, strong edge and its
    brightness would attract the boundary search (the RPE search wants bright). A
    region counts as padding when it is made of the brightest value of the B-scan
    (within 3 % of the range, as JPEG blurs it), is solid (survives a 5x5 opening,
    which speckle does not), touches the top or bottom row and covers at least
    ``min_fraction`` of the B-scan. A bright region touching only the left or right
    border is left alone: it may be a saturated RPE. Dark padding (zeros around a
    wide-field scan) needs no treatment: it is darker than the vitreous anyway.

    Parameters
    ----------
    bscans : (S, H, W) ndarray
        Normalised B-scans.
    min_fraction : float
        Smallest padding region, as a fraction of the B-scan area.

    Returns
    -------
    (S, H, W) ndarray of float32
        Copy with padding replaced by the 5th percentile (background) of the other pixels.
    """
    out = np.array(bscans, dtype=np.float32, copy=True)
    s, h, w = out.shape
    min_area = max(50, min_fraction * h * w)
    solid = np.ones((5, 5), bool)
    for i in range(s):
        img = out[i]
        lo, hi = float(img.min()), float(img.max())
        extreme = img >= hi - 0.03 * (hi - lo)
        if np.count_nonzero(extreme) < min_area:
            continue
        seeds = ndi.binary_opening(extreme, structure=solid)
        labels, n = ndi.label(seeds)
        if n == 0:
            continue
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        keep = np.zeros(n + 1, bool)
        keep[np.unique(np.concatenate([labels[0], labels[-1]]))] = True
        keep &= areas >= min_area
        keep[0] = False
        if keep.any():
            # grow back the thin parts (wedge tip, 1-2 px border columns) the opening
            # removed, only through near-extreme pixels
            pad = ndi.binary_propagation(keep[labels], mask=extreme)
            if not pad.all():
                img[pad] = np.percentile(img[~pad], 5)
    return out


def _subpixel(score: np.ndarray, rows: np.ndarray, reach: int = 2) -> np.ndarray:
    """Move each path row to the peak of ``score`` within +-``reach`` rows, sub-pixel.

    The graph search decides *which* edge; this places the boundary on its steepest
    point (parabola through the maximum and its two neighbours).
    """
    s, h, w = score.shape
    offs = np.arange(-reach, reach + 1)
    cand = np.clip(rows[:, None, :] + offs[None, :, None], 0, h - 1)  # (S, K, W)
    vals = np.take_along_axis(score, cand, axis=1)
    best = cand[np.arange(s)[:, None], np.argmax(vals, axis=1), np.arange(w)[None, :]]
    up = np.take_along_axis(score, np.clip(best - 1, 0, h - 1)[:, None], 1)[:, 0]
    mid = np.take_along_axis(score, best[:, None], 1)[:, 0]
    down = np.take_along_axis(score, np.clip(best + 1, 0, h - 1)[:, None], 1)[:, 0]
    denom = up - 2 * mid + down
    shift = np.where(denom < -1e-9, 0.5 * (up - down) / np.where(denom < -1e-9, denom, 1), 0)
    return best + np.clip(shift, -0.5, 0.5)


def _whittaker(y: np.ndarray, weights: np.ndarray, lam: float) -> np.ndarray:
    """Weighted Whittaker smoother: argmin_z sum w (y - z)^2 + lam sum (second diff z)^2.

    Solved as one symmetric banded system (:func:`scipy.linalg.solveh_banded`); columns
    with zero weight are bridged by the smoothest curve (a discrete cubic spline).
    """
    n = len(y)
    if n < 4:
        return np.full(n, np.average(y, weights=weights + 1e-12))
    # D'D for the second-difference operator D, in upper banded storage
    diag = np.full(n, 6.0)
    diag[[0, -1]] = 1.0
    diag[[1, -2]] = 5.0
    off1 = np.full(n - 1, -4.0)
    off1[[0, -1]] = -2.0
    off2 = np.ones(n - 2)
    ab = np.zeros((3, n))
    ab[0, 2:] = lam * off2
    ab[1, 1:] = lam * off1
    ab[2] = lam * diag + weights + 1e-9
    return solveh_banded(ab, weights * y)


def _lower_envelope(
    rows: np.ndarray, lam: float, tol: float, n_iter: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth curve under a boundary that bulges upwards in places (drusen, PED).

    Bruch's membrane is smooth; drusen and pigment-epithelium detachments lift the RPE
    above it. Asymmetric least squares (Eilers' baseline): a stiff Whittaker smoother
    is fitted, columns more than ``tol`` rows above the curve get (almost) no weight,
    and the fit is repeated until the set of lifted columns stops changing.

    Parameters
    ----------
    rows : (S, W) ndarray
        Boundary rows (depth grows downwards, so "lifted" = smaller row).
    lam : float
        Stiffness of the smoother (second-difference penalty).
    tol : float
        Rows above the curve from which a column counts as lifted.
    n_iter : int
        Most iterations.

    Returns
    -------
    base : (S, W) ndarray of float64
        The smooth lower curve.
    lifted : (S, W) ndarray of bool
        Columns lifted above it.
    """
    s, w = rows.shape
    # a running median first removes single-column outliers in both directions
    med = ndi.median_filter(rows.astype(np.float64), size=(1, 5), mode="nearest")
    base = np.empty((s, w))
    lifted = np.zeros((s, w), bool)
    for i in range(s):
        keep = np.ones(w, bool)
        for _ in range(n_iter):
            base[i] = _whittaker(med[i], np.where(keep, 1.0, 1e-3), lam)
            new_keep = med[i] >= base[i] - tol
            # a lift must come back down on both sides: a run touching the image edge
            # cannot be told from a tilted or curved RPE, so it is kept
            if not new_keep.all():
                first, last = np.flatnonzero(new_keep)[[0, -1]] if new_keep.any() else (w, -1)
                new_keep[:first] = True
                new_keep[last + 1 :] = True
            if np.array_equal(new_keep, keep):
                break
            keep = new_keep
        lifted[i] = ~keep
    return base, lifted


def _consensus(rows: np.ndarray, size: int = 3) -> np.ndarray:
    """Median of each B-scan's boundary with its neighbours (slice consistency)."""
    if rows.shape[0] < 3:
        return rows.astype(np.float64)
    return ndi.median_filter(rows.astype(np.float64), size=(size, 1), mode="nearest")


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
    min_rpe_depth: int = 20,
    boundary_smooth_cols: float = 1.0,
    boundary_smooth_slices: float = 0.0,
    row_scale: float = 1.0,
    debug: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Find the ILM and Bruch's membrane in every column of every B-scan.

    Method (graph search in the spirit of Garvin et al. 2009, one surface at a time;
    every search is a minimum-cost left-to-right path with at most ``max_jump`` rows
    between neighbouring columns, see :func:`min_cost_rows`):

    1. Bright padding is neutralised (:func:`fill_padding`), speckle reduced (3x3
       median, then Gaussian smoothing), vertical gradients taken.
    2. ILM: dark-to-bright edges with bright tissue over the next rows (a thin detached
       vitreous membrane has none), darkness just above, and little tissue over a long
       stretch above (so the IS/OS line or the floor of a cyst lose to the surface).
    3. RPE: the brightest layer at least ``min_rpe_depth`` rows under the ILM,
       penalising a bright layer when a brighter one lies below it (the RPE is the
       deepest bright layer).
    4. Bruch's membrane: the first strong bright-to-dark edge under the RPE. Where the
       RPE is lifted above its own stiff lower envelope (asymmetric Whittaker smoother:
       drusen, PED), BM is searched near the envelope instead, on the floor of the
       detachment or the bottom of a visible Bruch's membrane line.
    5. The ILM again, if needed, between ``max_thickness`` and ``min_thickness`` rows
       above BM.
    6. Consistency between B-scans: a B-scan whose boundaries disagree with the median
       of it and its two neighbours by more than ``slice_band`` rows (over > 5 % of the
       columns) is searched again within +-``slice_band`` rows of that median.
    7. Sub-pixel placement on the steepest point of the edge, light smoothing.

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
        Disagreement with the neighbours that triggers a second search, and half height
        of that search's band around the neighbours' median; 0 = no second pass.
    min_rpe_depth : int
        The RPE is searched at least this many rows under the ILM (not the nerve fibre
        layer, however bright).
    boundary_smooth_cols, boundary_smooth_slices : float
        Gaussian smoothing (sigma) of the final boundaries along columns and B-scans.
    row_scale : float
        Rows of these B-scans per row of a reference Spectralis B-scan (3.87 um per
        row), e.g. 0.5 for 7.7 um rows. Every length along the depth (the parameters
        above and the internal windows) is multiplied by it; the defaults are tuned
        for the reference.
    debug : dict, optional
        If given, filled with intermediate paths (``rpe``, ``bm_raw``, ``base``,
        ``lifted``; (S, W) arrays) for inspection.

    Returns
    -------
    ilm, bm : (S, W) ndarray of float32
        Row (depth, sub-pixel) of the ILM and of Bruch's membrane per B-scan and column.

    Examples
    --------
    >>> img = np.full((1, 80, 40), -0.8, np.float32)
    >>> img[:, 30:50] = 0.2   # retina
    >>> img[:, 44:50] = 0.9   # RPE
    >>> ilm, bm = detect_boundaries(img)
    >>> round(float(ilm.mean())), round(float(bm.mean()))
    (30, 50)
    """
    x = np.asarray(bscans, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected (S, H, W) B-scans, got shape {x.shape}")
    s, h, _ = x.shape
    x = fill_padding(x)
    x = ndi.median_filter(x, size=(1, 3, 3))

    def r(n: float) -> int:
        """Convert a length of ``n`` reference rows to rows of these B-scans."""
        return max(1, round(n * row_scale)) if n > 0 else min(-1, round(n * row_scale))

    max_jump = max(1, int(np.ceil(max_jump * row_scale)))
    jump_penalty = jump_penalty / row_scale
    min_thickness, max_thickness = r(min_thickness), r(max_thickness)
    min_rpe_depth, slice_band = r(min_rpe_depth), r(slice_band) if slice_band > 0 else 0
    sig = (0, max(0.7, smooth_rows * row_scale), smooth_cols)
    inten = ndi.gaussian_filter(x, sig)
    gy = ndi.gaussian_filter(x, sig, order=(0, 1, 0))
    bg, tissue = _levels(inten, 20, 99)

    # brightness in units of (tissue - background); the RPE cost penalises a bright
    # layer by how much brighter the brightest layer 8-60 rows below it is
    bright_c = (inten - bg) / (tissue - bg)
    deeper = _window(bright_c, r(8), r(60), "max")
    rpe_cost = np.clip(1.0 - bright_c, 0, None) + 1.5 * np.clip(deeper - bright_c, 0, None)
    gscale = _levels(np.abs(gy), 0, 99.5)[1]
    fall = np.clip(-gy / gscale, 0, 1)
    rise_bm = np.clip(gy / gscale, 0, 1)
    above_max = _window(np.clip(bright_c, 0, 1), r(-8), 0, "max")
    bm_edge_cost = 1.0 - fall * above_max

    # ILM score: edge x bright below x dark just above, cost + tissue far above
    rise = np.clip(gy / (0.5 * _levels(np.clip(gy, 0, None), 0, 99)[1]), 0, 1)
    below = _unit(_window(inten, r(2), r(14)), bg, tissue)
    above = _unit(_window(inten, r(-14), r(-2)), bg, tissue)
    above_long = _unit(_window(inten, r(-50), r(-3)), bg, tissue)
    ilm_cost = 1.0 - rise * below * (1.0 - above) + above_long

    rows_idx = np.arange(h, dtype=np.float32)[None, :, None]

    def search(idx, bm_band=None, ilm_band=None):
        """Run the chain of searches on the B-scans ``idx`` (optionally within bands)."""
        n = len(idx)
        ilm_cost_i, rpe_cost_i, bm_edge_i = ilm_cost[idx], rpe_cost[idx], bm_edge_cost[idx]
        # ILM first: the most reliable boundary (dark vitreous above, tissue below)
        ilm0 = min_cost_rows(
            ilm_cost_i,
            max_jump,
            jump_penalty,
            None if ilm_band is None else ilm_band[0],
            h - 1 - min_thickness if ilm_band is None else ilm_band[1],
        )
        # RPE: brightest deep layer at least `min_rpe_depth` under the ILM (so not the
        # nerve fibre layer)
        lo = ilm0 + min_rpe_depth
        hi = ilm0 + max_thickness
        if bm_band is not None:
            lo = np.maximum(lo, bm_band[0] - r(12))
            hi = np.minimum(hi, bm_band[1])
        rpe = min_cost_rows(rpe_cost_i, max_jump, jump_penalty, lo, hi)
        # drusen and PEDs lift the RPE above the smooth curve it follows elsewhere
        base, lifted = _lower_envelope(rpe, lam=2e4, tol=3.0 * row_scale)
        # bottom of the RPE: the first strong bright-to-dark edge under its centre
        below_rpe = rows_idx - rpe[:, None, :].astype(np.float32)
        bm_raw = min_cost_rows(
            bm_edge_i + (0.04 / row_scale) * np.abs(below_rpe),
            max_jump,
            jump_penalty,
            rpe - r(1),
            rpe + r(8),
        )
        # RPE centre to BM distance where the RPE is in place, per B-scan
        gap = np.array(
            [
                np.median((bm_raw[i] - rpe[i])[~lifted[i]])
                if (~lifted[i]).any()
                else 3.0 * row_scale
                for i in range(n)
            ]
        )
        floor = np.rint(base + gap[:, None]).astype(np.int64)
        # where the RPE is lifted, BM is near the envelope: the floor of the detachment
        # (dark-to-bright) or the bottom of a visible Bruch's membrane line (bright-to-dark)
        cost = np.where(lifted[:, None, :], 1.0 - np.maximum(rise_bm[idx], fall[idx]), bm_edge_i)
        bm_lo = np.where(lifted, floor - r(3), bm_raw - r(2))
        bm_hi = np.where(lifted, floor + r(4), bm_raw + r(2))
        bm = min_cost_rows(cost, max_jump, jump_penalty, bm_lo, bm_hi)
        # the ILM again, now within the allowed thickness above BM
        top = bm - max_thickness
        bottom = bm - min_thickness
        if ilm_band is not None:
            top = np.maximum(top, ilm_band[0])
            bottom = np.minimum(bottom, ilm_band[1])
        if np.any(ilm0 < top) or np.any(ilm0 > bottom):
            ilm0 = min_cost_rows(ilm_cost_i, max_jump, jump_penalty, top, bottom)
        if debug is not None and n == s:
            debug.update(rpe=rpe, bm_raw=bm_raw, base=base, lifted=lifted)
        return ilm0, bm, lifted

    ilm, bm, lifted = search(np.arange(s))
    if s >= 3 and slice_band > 0:
        # B-scans that disagree with their neighbours (median of three) over more than
        # 5 % of the columns are searched again, each surface restricted to
        # +- slice_band rows around that consensus
        c_bm = np.rint(_consensus(bm)).astype(np.int64)
        c_ilm = np.rint(_consensus(ilm)).astype(np.int64)
        off = (np.abs(bm - c_bm) > slice_band) | (np.abs(ilm - c_ilm) > slice_band)
        redo = np.flatnonzero(off.mean(axis=1) > 0.05)
        if redo.size:
            logger.debug("re-searching B-scans %s within their neighbours' band", redo.tolist())
            band_bm = (c_bm[redo] - slice_band, c_bm[redo] + slice_band)
            band_ilm = (c_ilm[redo] - slice_band, c_ilm[redo] + slice_band)
            ilm[redo], bm[redo], lifted[redo] = search(redo, band_bm, band_ilm)

    reach = r(2)
    ilm_f = _subpixel(gy, ilm, reach)
    bm_f = np.where(lifted, _subpixel(gy, bm, reach), _subpixel(-gy, bm, reach))
    if boundary_smooth_cols > 0:
        ilm_f = ndi.gaussian_filter1d(ilm_f, boundary_smooth_cols, axis=1, mode="nearest")
        bm_f = ndi.gaussian_filter1d(bm_f, boundary_smooth_cols, axis=1, mode="nearest")
    if s > 1 and boundary_smooth_slices > 0:
        ilm_f = ndi.gaussian_filter1d(ilm_f, boundary_smooth_slices, axis=0, mode="nearest")
        bm_f = ndi.gaussian_filter1d(bm_f, boundary_smooth_slices, axis=0, mode="nearest")
    ilm_f = np.clip(ilm_f, 0, h - 1)
    bm_f = np.clip(np.maximum(bm_f, ilm_f + 1), 0, h - 1)
    return ilm_f.astype(np.float32), bm_f.astype(np.float32)

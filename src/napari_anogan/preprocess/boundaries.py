"""Retina boundaries per column: ILM (top of the retina) and BM (bottom of the RPE).

Over 500 lines on purpose: the edge costs, the two-pass graph search with its
neighbour-slice consensus and the sub-pixel placement are steps of one detector that share
its private parameters (:class:`_Params`); split, each part would be meaningless alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.linalg import solveh_banded

from napari_anogan import settings as defaults
from napari_anogan.preprocess._graph import min_cost_rows

logger = logging.getLogger(__name__)


def _window(img: np.ndarray, start: int, stop: int, reduce: str = "mean") -> np.ndarray:
    """Mean (or max) of ``img[:, r + start : r + stop, :]`` for every row ``r``.

    A centred scipy filter shifted by index (scipy's ``origin`` cannot move a window
    past its own centre); rows beyond the image are clamped to the edge. A window is at
    least one row: very coarse rows (e.g. 120 um) round a short window down to none.
    """
    size = max(1, stop - start)
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


#: Bytes of one float32 chunk of B-scans processed at a time (about 20 arrays of this
#: size are alive at once), when no chunk size is given.
CHUNK_BYTES = 8 * 2**20


def default_chunk_slices(height: int, width: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """B-scans per chunk so that one float32 chunk of them is about ``chunk_bytes``."""
    return max(1, int(chunk_bytes // max(1, 4 * int(height) * int(width))))


@dataclass(frozen=True)
class _Params:
    """Detection settings with every depth length converted to rows of these B-scans."""

    height: int
    smooth_rows: float
    smooth_cols: float
    max_jump: int
    jump_penalty: float
    min_thickness: int
    max_thickness: int
    slice_band: int
    min_rpe_depth: int
    row_scale: float

    def r(self, n: float) -> int:
        """Convert a length of ``n`` reference rows to rows of these B-scans."""
        return _rows(n, self.row_scale)


def _rows(n: float, row_scale: float) -> int:
    return max(1, round(n * row_scale)) if n > 0 else min(-1, round(n * row_scale))


@dataclass
class _Features:
    """Per-pixel costs of the searches for some B-scans (each B-scan on its own)."""

    ilm_cost: np.ndarray
    rpe_cost: np.ndarray
    bm_edge_cost: np.ndarray
    rise_bm: np.ndarray
    fall: np.ndarray
    gy: np.ndarray


#: Fraction of a column's retina band that must lie strictly inside the grey range: a
#: mask or label image has only its two extreme values there (real B-scans: all of it).
_MIN_GREY_FRACTION = 0.5
#: Grey values within this distance of -1 or +1 count as the extremes of the range.
_EXTREME = 0.02


def retina_evidence(
    x: np.ndarray,
    ilm: np.ndarray,
    bm: np.ndarray,
    *,
    row_scale: float = 1.0,
    min_contrast: float = defaults.RETINA_MIN_CONTRAST,
) -> np.ndarray:
    """Fraction of the columns of each B-scan where the boundaries enclose a retina.

    A column counts when the band between the ILM and Bruch's membrane (2 rows in from
    each) is at least ``min_contrast`` brighter than the vitreous (the 40 rows above the
    ILM, from 3 rows up) and most of the band lies strictly inside the grey range: a
    blank or noise image has no contrast, and a binary mask or label image has only the
    extreme grey values. Measured on real B-scans (OCTDL, Kermany, Spectralis) and
    synthetic ones, see :data:`~napari_anogan.settings.RETINA_MIN_COLUMNS`.

    Parameters
    ----------
    x : (S, H, W) ndarray
        Normalised B-scans, grey values in [-1, 1].
    ilm, bm : (S, W) ndarray
        Boundary rows found in them.
    row_scale : float
        Rows of these B-scans per reference row (as in :func:`detect_boundaries`).
    min_contrast : float
        Smallest retina-minus-vitreous mean grey value of a column with retina.

    Returns
    -------
    (S,) ndarray of float64
        Fraction of each B-scan's columns with retina.

    Examples
    --------
    >>> img = np.full((1, 80, 40), -0.8, np.float32) + np.linspace(0, 0.01, 40)
    >>> img[:, 30:50] = 0.2
    >>> rows = np.full((1, 40), 30), np.full((1, 40), 50)
    >>> retina_evidence(img, *rows).tolist(), retina_evidence(np.sign(img), *rows).tolist()
    ([1.0], [0.0])
    """
    x = np.asarray(x, dtype=np.float32)
    s, h, w = x.shape
    zero = np.zeros((s, 1, w))
    grey = np.concatenate([zero, np.cumsum(x, axis=1, dtype=np.float64)], axis=1)
    inside = (x > -1 + _EXTREME) & (x < 1 - _EXTREME)
    mid = np.concatenate([zero, np.cumsum(inside, axis=1, dtype=np.float64)], axis=1)
    top = np.rint(np.asarray(ilm)).astype(np.int64)
    bottom = np.rint(np.asarray(bm)).astype(np.int64)

    def window(table: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = np.clip(a, 0, h), np.clip(b, 0, h)
        n = np.maximum(b - a, 0)
        total = (
            np.take_along_axis(table, b[:, None], 1)[:, 0]
            - np.take_along_axis(table, a[:, None], 1)[:, 0]
        )
        return np.where(n > 0, total, 0.0), n

    r = _rows
    band_sum, band_n = window(grey, top + r(2, row_scale), bottom - r(2, row_scale) + 1)
    band_mid, _ = window(mid, top + r(2, row_scale), bottom - r(2, row_scale) + 1)
    vit_sum, vit_n = window(grey, top - r(40, row_scale), top - r(3, row_scale) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        contrast = band_sum / band_n - vit_sum / vit_n
        grey_fraction = band_mid / band_n
    ok = (band_n > 0) & (vit_n > 0) & (contrast >= min_contrast)
    ok &= grey_fraction > _MIN_GREY_FRACTION
    return ok.mean(axis=1)


def _features(x: np.ndarray, p: _Params) -> _Features:
    """Costs of the boundary searches; every step works within one B-scan."""
    r = p.r
    x = fill_padding(x)
    x = ndi.median_filter(x, size=(1, 3, 3))
    sig = (0, max(0.7, p.smooth_rows * p.row_scale), p.smooth_cols)
    inten = ndi.gaussian_filter(x, sig)
    gy = ndi.gaussian_filter(x, sig, order=(0, 1, 0))
    del x
    bg, tissue = _levels(inten, 20, 99)

    # brightness in units of (tissue - background); the RPE cost penalises a bright
    # layer by how much brighter the brightest layer 8-60 rows below it is
    bright_c = (inten - bg) / (tissue - bg)
    deeper = _window(bright_c, r(8), r(60), "max")
    rpe_cost = np.clip(1.0 - bright_c, 0, None) + 1.5 * np.clip(deeper - bright_c, 0, None)
    del deeper
    gscale = _levels(np.abs(gy), 0, 99.5)[1]
    fall = np.clip(-gy / gscale, 0, 1)
    rise_bm = np.clip(gy / gscale, 0, 1)
    above_max = _window(np.clip(bright_c, 0, 1), r(-8), 0, "max")
    del bright_c
    bm_edge_cost = 1.0 - fall * above_max
    del above_max

    # ILM score: edge x bright below x dark just above, cost + tissue far above
    rise = np.clip(gy / (0.5 * _levels(np.clip(gy, 0, None), 0, 99)[1]), 0, 1)
    below = _unit(_window(inten, r(2), r(14)), bg, tissue)
    above = _unit(_window(inten, r(-14), r(-2)), bg, tissue)
    above_long = _unit(_window(inten, r(-50), r(-3)), bg, tissue)
    ilm_cost = 1.0 - rise * below * (1.0 - above) + above_long
    return _Features(ilm_cost, rpe_cost, bm_edge_cost, rise_bm, fall, gy)


def _search(
    f: _Features,
    p: _Params,
    bm_band: tuple[np.ndarray, np.ndarray] | None = None,
    ilm_band: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Run the chain of searches on every B-scan of ``f`` (optionally within bands).

    Every B-scan is searched independently of the others in ``f``, so the result of a
    B-scan does not depend on which chunk it was processed in.
    """
    r, h = p.r, p.height
    max_jump, jump_penalty = p.max_jump, p.jump_penalty
    rows_idx = np.arange(h, dtype=np.float32)[None, :, None]
    n = f.ilm_cost.shape[0]
    # ILM first: the most reliable boundary (dark vitreous above, tissue below)
    ilm0 = min_cost_rows(
        f.ilm_cost,
        max_jump,
        jump_penalty,
        None if ilm_band is None else ilm_band[0],
        h - 1 - p.min_thickness if ilm_band is None else ilm_band[1],
    )
    # RPE: brightest deep layer at least `min_rpe_depth` under the ILM (so not the
    # nerve fibre layer)
    lo = ilm0 + p.min_rpe_depth
    hi = ilm0 + p.max_thickness
    if bm_band is not None:
        lo = np.maximum(lo, bm_band[0] - r(12))
        hi = np.minimum(hi, bm_band[1])
    rpe = min_cost_rows(f.rpe_cost, max_jump, jump_penalty, lo, hi)
    # drusen and PEDs lift the RPE above the smooth curve it follows elsewhere
    base, lifted = _lower_envelope(rpe, lam=2e4, tol=3.0 * p.row_scale)
    # bottom of the RPE: the first strong bright-to-dark edge under its centre
    below_rpe = rows_idx - rpe[:, None, :].astype(np.float32)
    bm_raw = min_cost_rows(
        f.bm_edge_cost + (0.04 / p.row_scale) * np.abs(below_rpe),
        max_jump,
        jump_penalty,
        rpe - r(1),
        rpe + r(8),
    )
    del below_rpe
    # RPE centre to BM distance where the RPE is in place, per B-scan
    gap = np.array(
        [
            np.median((bm_raw[i] - rpe[i])[~lifted[i]]) if (~lifted[i]).any() else 3.0 * p.row_scale
            for i in range(n)
        ]
    )
    floor = np.rint(base + gap[:, None]).astype(np.int64)
    # where the RPE is lifted, BM is near the envelope: the floor of the detachment
    # (dark-to-bright) or the bottom of a visible Bruch's membrane line (bright-to-dark)
    cost = np.where(lifted[:, None, :], 1.0 - np.maximum(f.rise_bm, f.fall), f.bm_edge_cost)
    bm_lo = np.where(lifted, floor - r(3), bm_raw - r(2))
    bm_hi = np.where(lifted, floor + r(4), bm_raw + r(2))
    bm = min_cost_rows(cost, max_jump, jump_penalty, bm_lo, bm_hi)
    del cost
    # the ILM again, now within the allowed thickness above BM
    top = bm - p.max_thickness
    bottom = bm - p.min_thickness
    if ilm_band is not None:
        top = np.maximum(top, ilm_band[0])
        bottom = np.minimum(bottom, ilm_band[1])
    # per B-scan (the original searched the whole volume again if any B-scan needed
    # it; a B-scan already inside its band gets the same path either way)
    redo = np.flatnonzero(np.any(ilm0 < top, axis=1) | np.any(ilm0 > bottom, axis=1))
    if redo.size:
        ilm0[redo] = min_cost_rows(
            f.ilm_cost[redo], max_jump, jump_penalty, top[redo], bottom[redo]
        )
    debug = {"rpe": rpe, "bm_raw": bm_raw, "base": base, "lifted": lifted}
    return ilm0, bm, lifted, debug


def _place(
    f: _Features, ilm: np.ndarray, bm: np.ndarray, lifted: np.ndarray, reach: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel placement of the paths on their edges (per B-scan)."""
    ilm_f = _subpixel(f.gy, ilm, reach)
    bm_f = np.where(lifted, _subpixel(f.gy, bm, reach), _subpixel(-f.gy, bm, reach))
    return ilm_f, bm_f


def detect_boundaries(
    bscans: np.ndarray,
    *,
    smooth_rows: float = defaults.SMOOTH_ROWS,
    smooth_cols: float = defaults.SMOOTH_COLS,
    max_jump: int = defaults.MAX_JUMP,
    jump_penalty: float = defaults.JUMP_PENALTY,
    min_thickness: int = defaults.MIN_THICKNESS,
    max_thickness: int = defaults.MAX_THICKNESS,
    slice_band: int = defaults.SLICE_BAND,
    min_rpe_depth: int = defaults.MIN_RPE_DEPTH,
    boundary_smooth_cols: float = defaults.BOUNDARY_SMOOTH_COLS,
    boundary_smooth_slices: float = defaults.BOUNDARY_SMOOTH_SLICES,
    row_scale: float = 1.0,
    chunk_slices: int | None = None,
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
    chunk_slices : int, optional
        B-scans processed at a time (memory bound); the result does not depend on it.
        Default: about 8 MiB of float32 per chunk (:func:`default_chunk_slices`).
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
    shape = tuple(np.shape(bscans))
    if len(shape) == 2:
        bscans = np.asarray(bscans)[None]
        shape = (1, *shape)
    if len(shape) != 3:
        raise ValueError(f"expected (S, H, W) B-scans, got shape {shape}")

    def read(start: int, stop: int) -> np.ndarray:
        return np.asarray(bscans[start:stop], dtype=np.float32)

    return detect_boundaries_chunked(
        read,
        shape,
        smooth_rows=smooth_rows,
        smooth_cols=smooth_cols,
        max_jump=max_jump,
        jump_penalty=jump_penalty,
        min_thickness=min_thickness,
        max_thickness=max_thickness,
        slice_band=slice_band,
        min_rpe_depth=min_rpe_depth,
        boundary_smooth_cols=boundary_smooth_cols,
        boundary_smooth_slices=boundary_smooth_slices,
        row_scale=row_scale,
        chunk_slices=chunk_slices,
        debug=debug,
    )


def detect_boundaries_chunked(
    read: Callable[[int, int], np.ndarray],
    shape: tuple[int, int, int],
    *,
    smooth_rows: float = defaults.SMOOTH_ROWS,
    smooth_cols: float = defaults.SMOOTH_COLS,
    max_jump: int = defaults.MAX_JUMP,
    jump_penalty: float = defaults.JUMP_PENALTY,
    min_thickness: int = defaults.MIN_THICKNESS,
    max_thickness: int = defaults.MAX_THICKNESS,
    slice_band: int = defaults.SLICE_BAND,
    min_rpe_depth: int = defaults.MIN_RPE_DEPTH,
    boundary_smooth_cols: float = defaults.BOUNDARY_SMOOTH_COLS,
    boundary_smooth_slices: float = defaults.BOUNDARY_SMOOTH_SLICES,
    row_scale: float = 1.0,
    chunk_slices: int | None = None,
    debug: dict | None = None,
    evidence: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`detect_boundaries` on B-scans that are read a chunk at a time.

    Two passes over the data: every chunk is searched on its own (all steps but the
    consistency check work within one B-scan), then the B-scans that disagree with
    their neighbours are read again, one chunk of them at a time, and searched within
    the neighbours' band. Memory is that of one chunk plus (S, W) boundary arrays; the
    result does not depend on the chunk size.

    Parameters
    ----------
    read : callable
        ``read(start, stop)`` returns B-scans ``start:stop`` as a (stop - start, H, W)
        float32 array of normalised grey values.
    shape : tuple of int
        ``(S, H, W)`` of all the B-scans.
    chunk_slices : int, optional
        B-scans per chunk; default :func:`default_chunk_slices` (about 8 MiB of float32).
    smooth_rows, smooth_cols, max_jump, jump_penalty, min_thickness, max_thickness, slice_band, min_rpe_depth, boundary_smooth_cols, boundary_smooth_slices, row_scale, debug
        As in :func:`detect_boundaries`.
    evidence : (S,) ndarray, optional
        Filled with each B-scan's :func:`retina_evidence` (fraction of its columns where
        the boundaries found enclose a retina), measured on the same reads.

    Returns
    -------
    ilm, bm : (S, W) ndarray of float32
    """  # noqa: E501
    s, h, w = (int(v) for v in shape)
    chunk = int(chunk_slices) if chunk_slices else default_chunk_slices(h, w)
    if chunk < 1:
        raise ValueError(f"chunk_slices must be >= 1, got {chunk_slices}")
    p = _Params(
        height=h,
        smooth_rows=smooth_rows,
        smooth_cols=smooth_cols,
        max_jump=max(1, int(np.ceil(max_jump * row_scale))),
        jump_penalty=jump_penalty / row_scale,
        min_thickness=_rows(min_thickness, row_scale),
        max_thickness=_rows(max_thickness, row_scale),
        slice_band=_rows(slice_band, row_scale) if slice_band > 0 else 0,
        min_rpe_depth=_rows(min_rpe_depth, row_scale),
        row_scale=row_scale,
    )
    reach = p.r(2)
    ilm = np.empty((s, w), np.int64)
    bm = np.empty((s, w), np.int64)
    lifted = np.empty((s, w), bool)
    ilm_f = np.empty((s, w), np.float64)
    bm_f = np.empty((s, w), np.float64)
    found: dict[str, list[np.ndarray]] = {}

    def check(x: np.ndarray, start: int, stop: int) -> np.ndarray:
        if x.shape != (stop - start, h, w):
            raise ValueError(f"read({start}, {stop}) gave shape {x.shape}, expected {(h, w)}")
        return x

    for start in range(0, s, chunk):
        stop = min(s, start + chunk)
        x = check(read(start, stop), start, stop)
        f = _features(x, p)
        a, b, c, dbg = _search(f, p)
        if evidence is not None:
            evidence[start:stop] = retina_evidence(x, a, b, row_scale=row_scale)
        del x
        ilm[start:stop], bm[start:stop], lifted[start:stop] = a, b, c
        ilm_f[start:stop], bm_f[start:stop] = _place(f, a, b, c, reach)
        for k, v in dbg.items():
            found.setdefault(k, []).append(v)
        del f
    if debug is not None:
        debug.update({k: np.concatenate(v) for k, v in found.items()})

    if s >= 3 and p.slice_band > 0:
        # B-scans that disagree with their neighbours (median of three) over more than
        # 5 % of the columns are searched again, each surface restricted to
        # +- slice_band rows around that consensus
        band = p.slice_band
        c_bm = np.rint(_consensus(bm)).astype(np.int64)
        c_ilm = np.rint(_consensus(ilm)).astype(np.int64)
        off = (np.abs(bm - c_bm) > band) | (np.abs(ilm - c_ilm) > band)
        redo = np.flatnonzero(off.mean(axis=1) > 0.05)
        if redo.size:
            logger.debug("re-searching B-scans %s within their neighbours' band", redo.tolist())
            redone: dict[str, list[np.ndarray]] = {}
            for lo in range(0, redo.size, chunk):
                idx = redo[lo : lo + chunk]
                x = np.concatenate([check(read(i, i + 1), i, i + 1) for i in idx])
                f = _features(x, p)
                band_bm = (c_bm[idx] - band, c_bm[idx] + band)
                band_ilm = (c_ilm[idx] - band, c_ilm[idx] + band)
                a, b, c, dbg = _search(f, p, band_bm, band_ilm)
                if evidence is not None:
                    evidence[idx] = retina_evidence(x, a, b, row_scale=row_scale)
                del x
                ilm[idx], bm[idx], lifted[idx] = a, b, c
                ilm_f[idx], bm_f[idx] = _place(f, a, b, c, reach)
                for k, v in dbg.items():
                    redone.setdefault(k, []).append(v)
                del f
            if debug is not None and redo.size == s:
                debug.update({k: np.concatenate(v) for k, v in redone.items()})
    if debug is not None:
        debug["lifted"] = lifted  # the final one, after any second search

    if boundary_smooth_cols > 0:
        ilm_f = ndi.gaussian_filter1d(ilm_f, boundary_smooth_cols, axis=1, mode="nearest")
        bm_f = ndi.gaussian_filter1d(bm_f, boundary_smooth_cols, axis=1, mode="nearest")
    if s > 1 and boundary_smooth_slices > 0:
        ilm_f = ndi.gaussian_filter1d(ilm_f, boundary_smooth_slices, axis=0, mode="nearest")
        bm_f = ndi.gaussian_filter1d(bm_f, boundary_smooth_slices, axis=0, mode="nearest")
    ilm_f = np.clip(ilm_f, 0, h - 1)
    bm_f = np.clip(np.maximum(bm_f, ilm_f + 1), 0, h - 1)
    return ilm_f.astype(np.float32), bm_f.astype(np.float32)

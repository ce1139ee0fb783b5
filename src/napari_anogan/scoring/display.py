"""What the residual heatmap and the score bars show: one definition for every picture.

The napari layers (:mod:`napari_anogan._widgets._layers`) and the ``score`` overview
figure (:mod:`napari_anogan.pipeline.overview`) draw the same things from here: the
heatmap's threshold and colours, the geometry and colours of the Fig. 3-style score bars,
and the words of their legends. Numpy only; no napari, Qt or matplotlib.

The heatmap threshold
---------------------
The residual |x - G(z)| is never zero on healthy tissue: bright layers (ILM, RPE) and
speckle are reconstructed a little off everywhere, so a heatmap coloured from 0 glows
over the whole retina. The heatmap is therefore transparent up to a percentile (default
:data:`~napari_anogan.settings.HEATMAP_PERCENTILE`) of the *pixel* residual of healthy
tissue, read from the first of these that exists (:func:`pixel_reference`):

1. ``healthy reference``: the model's own quantiles of the pixel residual of its
   held-out healthy patches (``reference["pixel_residual"]``, stored by training since
   this threshold exists). The right comparison: the same patches that give the healthy
   percentiles of the patch scores.
2. ``healthy-looking patches``: a model trained before that stores only patch-score
   quantiles, and a patch score is a sum over 64 x 64 pixels whose pixel spread it does
   not record (on the bundled sample the mean-pixel level of the 99th-percentile healthy
   patch, R / 64², still coloured 31 % of the retina). So the pixels of this scan's
   patches whose residual score R is at or below the healthy median
   (:data:`~napari_anogan.settings.HEALTHY_LOOKING_PERCENTILE`) stand in for healthy
   tissue: the model itself judges their residual typical of its healthy reference, and
   they are reconstructed as well as this scan's healthy parts are. On the bundled
   sample their 99th percentile (0.55) leaves 97 % of the retina outside the planted
   lesions clear and colours the lesions five times as often (drusen, the PED and the
   SRF border); on the bundled OCTDL B-scan (DME) it leaves 95 % of the retina clear.
3. ``this scan``: without a healthy reference at all (or with fewer than
   :data:`~napari_anogan.settings.HEALTHY_LOOKING_MIN_PATCHES` healthy-looking patches),
   the scan's own residual: then the heatmap shows the scan's strongest residual, not
   what is unlike healthy tissue, and the layer's metadata and the legend say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_anogan import settings as defaults
from napari_anogan.preprocess.geometry import retina_rows
from napari_anogan.scoring.percentiles import QUANTILE_LEVELS, percentile_of

__all__ = [
    "BAR_LEGEND",
    "HEATMAP_COLORS",
    "PIXEL_SOURCES",
    "HeatmapThreshold",
    "PixelReference",
    "bar_colors",
    "heatmap_range",
    "heatmap_rgba",
    "heatmap_threshold",
    "pixel_reference",
    "ranking_note",
    "retina_rows",
    "score_bars",
    "stored_pixel_reference",
]

# --------------------------------------------------------------------------- colours

#: Heatmap colours from the threshold (first row) to the top of the range (last row):
#: the paper's hot residual overlay, as inferno from a visible purple up to pale yellow
#: (inferno's black end would vanish on the dark B-scan). Below the threshold: none.
HEATMAP_COLORS = np.array(
    [
        [0.342, 0.062, 0.429, 1.0],
        [0.541, 0.135, 0.415, 1.0],
        [0.736, 0.216, 0.330, 1.0],
        [0.894, 0.353, 0.194, 1.0],
        [0.978, 0.558, 0.035, 1.0],
        [0.975, 0.798, 0.206, 1.0],
        [0.988, 0.998, 0.645, 1.0],
    ]
)
#: Opacity of the coloured heatmap pixels over the B-scan.
HEATMAP_OPACITY = 0.8

RESIDUAL_COLOR = (0.95, 0.1, 0.1, 1.0)  # paper Fig. 3: red bar = residual score
DISCRIMINATION_COLOR = (1.0, 0.85, 0.0, 1.0)  # yellow bar = discrimination score
UNLIT_COLOR = (0.35, 0.35, 0.35, 0.55)

#: The score bars in words (the Candidate markers legend and the overview figure).
BAR_LEGEND = (
    ("residual", RESIDUAL_COLOR, "R", "upper bar: residual score R (|x − G(z)| summed)"),
    (
        "discrimination",
        DISCRIMINATION_COLOR,
        "D",
        "lower bar: discrimination score D (D's features)",
    ),
    ("unlit", UNLIT_COLOR, "", "grey: below the threshold"),
)
BAR_RULE = (
    "Two bars above the retina for every patch column (as in the paper's Fig. 3): a bar's "
    "length is the columns of its patches; it is lit (red R, yellow D) where that score "
    "of a patch reaches the healthy percentile threshold."
)


def ranking_note(column: str) -> str:
    """Say that candidates come from another score than the bars' R and D, if they do."""
    if column in ("anomaly_score", "residual_score", "discrimination_score"):
        return ""
    return f" (found by the {column.replace('_', ' ')}, which the bars do not show)"


def heatmap_colormap_stops() -> tuple[np.ndarray, np.ndarray]:
    """Colour stops (controls in [0, 1], RGBA rows) of the thresholded heatmap.

    The first stop, at 0 (the threshold), is fully transparent; from just above it the
    colours of :data:`HEATMAP_COLORS`. With the display range starting at the threshold,
    every pixel at or below it is transparent.

    Returns
    -------
    controls : (K,) ndarray
    colors : (K, 4) ndarray
    """
    n = len(HEATMAP_COLORS)
    controls = np.concatenate([[0.0], np.linspace(1e-3, 1.0, n)])
    colors = np.vstack([[0.0, 0.0, 0.0, 0.0], HEATMAP_COLORS])
    return controls, colors


def heatmap_rgba(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Colour a heatmap as napari shows the residual layer: RGBA floats in [0, 1].

    Values at or below ``low`` (the threshold) are fully transparent; above it the
    colours of :func:`heatmap_colormap_stops`, linearly interpolated, reaching the last
    at ``high``. NaN is transparent.

    Parameters
    ----------
    values : ndarray
        Residual values (any shape).
    low, high : float
        The display range (:func:`heatmap_range`).

    Returns
    -------
    ndarray of shape ``values.shape + (4,)``
    """
    controls, colors = heatmap_colormap_stops()
    v = np.asarray(values, dtype=np.float64)
    t = np.clip((v - low) / max(high - low, 1e-12), 0.0, 1.0)
    t = np.where(np.isfinite(t), t, 0.0)
    rgba = np.stack([np.interp(t, controls, colors[:, i]) for i in range(4)], axis=-1)
    rgba[v <= low] = 0.0
    rgba[~np.isfinite(v)] = 0.0
    return rgba


# ------------------------------------------------------------------ heatmap threshold

#: Heatmap ranges and a scan's own pixel quantiles are estimated from at most about this many
#: values (a regular subsample): enough for a display range or a percentile.
RANGE_SAMPLES = 1 << 18


PIXEL_SOURCES = {
    "healthy reference": "the pixel residual of the model's held-out healthy patches",
    "healthy-looking patches": (
        "the pixel residual of this scan's patches whose residual score is at or below the "
        "healthy median (the model stores no pixel reference)"
    ),
    "this scan": (
        "this scan's own pixel residual (the model stores no pixel reference and too few of "
        "the scan's patches look healthy): the heatmap shows the scan's strongest residual, "
        "not what is unlike healthy tissue"
    ),
}
"""Where a heatmap threshold comes from (:func:`pixel_reference`), in words."""


@dataclass(frozen=True)
class PixelReference:
    """Quantiles of a pixel-residual distribution that heatmap thresholds are read from.

    Attributes
    ----------
    levels : (Q,) ndarray
        Percent levels, increasing, 0 to 100.
    quantiles : (Q,) ndarray
        Pixel residual at each level (non-decreasing).
    source : str
        A key of :data:`PIXEL_SOURCES`.
    """

    levels: np.ndarray
    quantiles: np.ndarray
    source: str

    def value_at(self, percentile: float) -> float:
        """Pixel residual at ``percentile`` (interpolated between stored levels)."""
        return float(np.interp(float(percentile), self.levels, self.quantiles))

    def percentile_of(self, value: float | np.ndarray) -> np.ndarray:
        """Percentile of the reference pixels below ``value`` (0-100)."""
        return percentile_of(value, self.quantiles, self.levels)


@dataclass(frozen=True)
class HeatmapThreshold:
    """A heatmap threshold: the residual below which the heatmap is transparent.

    Attributes
    ----------
    value : float
        Residual value (the heatmap's units, |x - G(z)| in [-1, 1] units: 0 to 2).
    percentile : float
        The percentile of :attr:`reference` it was read at.
    reference : PixelReference
        Where it comes from.
    """

    value: float
    percentile: float
    reference: PixelReference

    @property
    def source(self) -> str:
        """Where the threshold comes from (a key of :data:`PIXEL_SOURCES`)."""
        return self.reference.source

    def at(self, percentile: float) -> HeatmapThreshold:
        """Return the threshold at another percentile of the same reference."""
        return HeatmapThreshold(
            self.reference.value_at(percentile), float(percentile), self.reference
        )

    def label(self) -> str:
        """Short words for legends, e.g. ``"residual above 0.53 (healthy p99)"``."""
        what = {"healthy reference": "healthy", "healthy-looking patches": "healthy-looking"}
        kind = what.get(self.source, "this scan's")
        return f"residual above {self.value:.3g} ({kind} p{self.percentile:g})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (layer metadata, the summary)."""
        return {
            "value": float(self.value),
            "percentile": float(self.percentile),
            "source": self.source,
            "meaning": PIXEL_SOURCES[self.source],
        }


def stored_pixel_reference(reference: Mapping[str, Any] | None) -> PixelReference | None:
    """Return the pixel reference a model's healthy reference stores, or None.

    Parameters
    ----------
    reference : mapping or None
        A model's healthy reference (``LoadedModel.reference``, or ``model["reference"]``
        of a result), with ``levels`` and ``pixel_residual`` quantiles (arrays or lists).
    """
    reference = reference or {}
    quantiles = reference.get("pixel_residual")
    levels = reference.get("levels")
    if quantiles is None or levels is None:
        return None
    q = np.asarray(quantiles, np.float64).ravel()
    lv = np.asarray(levels, np.float64).ravel()
    if q.size != lv.size or q.size < 2 or not np.isfinite(q).all():
        return None
    return PixelReference(lv, q, "healthy reference")


def _box_pixels(residual: Any, patches: Mapping[str, np.ndarray], index: np.ndarray) -> np.ndarray:
    """Residual pixels inside the raw boxes of patches ``index``, one B-scan read at a time."""
    slices = np.asarray(patches["slice"], dtype=int)[index]
    parts = []
    for s in np.unique(slices):
        bscan = np.asarray(residual[int(s)], dtype=np.float32)
        for i in index[slices == s]:
            r, c = int(patches["row"][i]), int(patches["col"][i])
            h, w = int(patches["height"][i]), int(patches["width"][i])
            parts.append(bscan[max(r, 0) : r + h, max(c, 0) : c + w].ravel())
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


#: Most B-scans of a residual read to estimate a scan's pixel quantiles (a residual
#: written to disk is read back one B-scan at a time).
MAX_SLICES_READ = 32


def _scan_pixels(residual: Any, max_slices: int = MAX_SLICES_READ) -> np.ndarray:
    """Covered (non-zero) residual pixels of up to ``max_slices`` evenly spaced B-scans."""
    shape = np.shape(residual)
    if len(shape) == 2:
        residual = np.asarray(residual)[None]
        shape = residual.shape
    picks = np.unique(np.linspace(0, shape[0] - 1, min(shape[0], max_slices)).round().astype(int))
    values = np.concatenate([np.asarray(residual[int(s)], np.float32).ravel() for s in picks])
    values = values[:: max(1, -(-values.size // RANGE_SAMPLES))]
    values = values[np.isfinite(values)]
    return values[values > 0]


def pixel_reference(result: Any) -> PixelReference:
    """Return the pixel-residual distribution a result's heatmap threshold is read from.

    See the module notes for the three sources, tried in order.

    Parameters
    ----------
    result : VolumeResult
        A scoring result (``model["reference"]``, ``patches`` and ``residual`` are read;
        a partial result with an empty patch table works too).

    Returns
    -------
    PixelReference
    """
    stored = stored_pixel_reference((getattr(result, "model", None) or {}).get("reference"))
    if stored is not None:
        return stored
    residual = result.residual
    patches = getattr(result, "patches", None) or {}
    # a patch's residual score R is its pixels' residual summed: its healthy percentile
    # says whether those pixels look healthy (else the ranking score's, for old tables)
    percent = np.asarray(patches.get("residual_percentile", []), dtype=float)
    if not np.isfinite(percent).any():
        percent = np.asarray(patches.get("healthy_percentile", []), dtype=float)
    levels = np.asarray(QUANTILE_LEVELS, np.float64)
    with np.errstate(invalid="ignore"):
        calm = np.flatnonzero(percent <= defaults.HEALTHY_LOOKING_PERCENTILE)
    if calm.size >= defaults.HEALTHY_LOOKING_MIN_PATCHES:
        rng = np.random.default_rng(defaults.SEED)
        slices = np.asarray(patches["slice"], dtype=int)[calm]
        if np.unique(slices).size > MAX_SLICES_READ:  # each B-scan read costs a disk read
            keep = rng.choice(np.unique(slices), MAX_SLICES_READ, replace=False)
            calm = calm[np.isin(slices, keep)]
        if calm.size > defaults.HEALTHY_LOOKING_MAX_PATCHES:
            calm = np.sort(rng.choice(calm, defaults.HEALTHY_LOOKING_MAX_PATCHES, replace=False))
        values = _box_pixels(residual, patches, calm)
        values = values[np.isfinite(values)]
        if values.size:
            return PixelReference(
                levels, np.quantile(values, levels / 100.0), "healthy-looking patches"
            )
    values = _scan_pixels(residual)
    if values.size == 0:
        values = np.zeros(1)
    return PixelReference(levels, np.quantile(values, levels / 100.0), "this scan")


def heatmap_threshold(
    result: Any,
    percentile: float = defaults.HEATMAP_PERCENTILE,
    reference: PixelReference | None = None,
) -> HeatmapThreshold:
    """Return the residual below which a result's heatmap is transparent.

    Parameters
    ----------
    result : VolumeResult
        A scoring result.
    percentile : float
        Percentile of the pixel reference (:func:`pixel_reference`) in [0, 100].
    reference : PixelReference, optional
        A reference already computed for this result.

    Returns
    -------
    HeatmapThreshold
    """
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    reference = reference or pixel_reference(result)
    return HeatmapThreshold(reference.value_at(percentile), float(percentile), reference)


def heatmap_range(residual: Any, threshold: float) -> tuple[float, float]:
    """Return the display range of a thresholded heatmap.

    From the threshold to the residual's 99.9th percentile (of a regular subsample),
    never empty.

    Parameters
    ----------
    residual : ndarray
        The heatmap (any shape; numpy).
    threshold : float
        The transparent-below level.

    Returns
    -------
    (low, high) : tuple of float
    """
    flat = np.asarray(residual).reshape(-1)
    step = max(1, -(-flat.size // RANGE_SAMPLES))
    sample = flat[::step]
    sample = sample[np.isfinite(sample)]
    high = float(np.percentile(sample, 99.9)) if sample.size else 1.0
    low = float(threshold)
    span = max(abs(low), 1e-6) * 0.25
    return low, max(high, low + span)


# ------------------------------------------------------------------------ score bars


def _bar_segments(cols: np.ndarray, widths: np.ndarray) -> list[tuple[float, float]]:
    """Split the columns covered by overlapping patches into one segment per patch.

    Each patch owns the columns nearer to its centre than to its neighbours' centres, so
    bars of a row of overlapping patches tile the B-scan without overlapping.
    """
    centres = cols + widths / 2.0
    lows = np.empty_like(centres)
    highs = np.empty_like(centres)
    lows[0] = cols[0]
    highs[-1] = cols[-1] + widths[-1]
    mids = (centres[:-1] + centres[1:]) / 2.0
    highs[:-1] = mids
    lows[1:] = mids
    return list(zip(lows.tolist(), highs.tolist(), strict=True))


def component_percentiles(patches: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Healthy percentiles of the residual and discrimination scores of every patch.

    Uses the table's ``residual_percentile`` / ``discrimination_percentile`` columns when
    the core provides them, else the percentile of the ranking score for both (so the
    bars still light up where the patch is anomalous).
    """
    fallback = np.asarray(patches.get("healthy_percentile", []), dtype=float)
    residual = np.asarray(patches.get("residual_percentile", fallback), dtype=float)
    discrimination = np.asarray(patches.get("discrimination_percentile", fallback), dtype=float)
    return residual, discrimination


def bar_height(image_height: int) -> float:
    """Thickness (rows) of one score bar on a B-scan of ``image_height`` rows."""
    return max(2.0, round(image_height * 0.015))


def score_bars(
    patches: Mapping[str, np.ndarray], ilm: np.ndarray, *, image_height: int
) -> dict[str, np.ndarray]:
    """Geometry and values of the Fig. 3-style score bars above the retina.

    For every B-scan and patch column (the maximum over patches stacked in depth), two
    thin bars above the ILM: the upper one for the residual score, the one below for the
    discrimination score.

    Parameters
    ----------
    patches : mapping of str to (N,) ndarray
        Patch table (raw boxes).
    ilm : (S, W) ndarray
        ILM row per slice and raw column (NaN where not found).
    image_height : int
        Rows of a B-scan; sets the bar thickness (:func:`bar_height`).

    Returns
    -------
    dict of str to (B,) ndarray
        ``slice``, ``row0``, ``row1`` (pixel edges, rows), ``col0``, ``col1`` (pixel
        edges, columns), ``component`` (``residual`` / ``discrimination``), ``score``
        and ``percentile`` (the highest of the column's patches).
    """
    bar_h = bar_height(image_height)
    gap = bar_h
    residual_pct, discrimination_pct = component_percentiles(patches)
    residual = np.asarray(patches.get("residual_score", []), dtype=float)
    discrimination = np.asarray(patches.get("discrimination_score", []), dtype=float)
    slices = np.asarray(patches.get("slice", []), dtype=int)
    cols = np.asarray(patches.get("col", []), dtype=float)
    widths = np.asarray(patches.get("width", []), dtype=float)
    tops = np.asarray(patches.get("row", []), dtype=float)
    ilm = np.asarray(ilm, dtype=float)
    names = ("slice", "row0", "row1", "col0", "col1", "component", "score", "percentile")
    out: dict[str, list] = {k: [] for k in names}
    for s in np.unique(slices):
        in_slice = np.flatnonzero(slices == s)
        keys = sorted({(cols[i], widths[i]) for i in in_slice})
        key_cols = np.array([k[0] for k in keys])
        key_widths = np.array([k[1] for k in keys])
        for (c, w), (lo, hi) in zip(keys, _bar_segments(key_cols, key_widths), strict=True):
            members = in_slice[(cols[in_slice] == c) & (widths[in_slice] == w)]
            c0, c1 = int(max(lo, 0)), int(np.ceil(hi))
            row_ilm = ilm[s, c0:c1] if ilm.ndim == 2 and s < ilm.shape[0] else np.array([])
            top = np.nanmin(row_ilm) if np.isfinite(row_ilm).any() else tops[members].min()
            y0 = max(top - gap - 2 * bar_h - 1, 0.0)
            for k, (component, score, pct) in enumerate(
                (
                    ("residual", residual, residual_pct),
                    ("discrimination", discrimination, discrimination_pct),
                )
            ):
                r0 = y0 + k * (bar_h + 1)
                out["slice"].append(int(s))
                out["row0"].append(float(r0))
                out["row1"].append(float(r0 + bar_h))
                out["col0"].append(float(lo))
                out["col1"].append(float(hi))
                out["component"].append(component)
                out["score"].append(float(np.nanmax(score[members])) if members.size else np.nan)
                out["percentile"].append(
                    float(np.nanmax(pct[members])) if np.isfinite(pct[members]).any() else np.nan
                )
    bars = {
        k: np.asarray(v, dtype=float) for k, v in out.items() if k not in ("slice", "component")
    }
    bars["slice"] = np.asarray(out["slice"], dtype=int)
    bars["component"] = np.asarray(out["component"], dtype=str)
    return bars


def bar_colors(features: Mapping[str, Any], threshold: float) -> np.ndarray:
    """Face colours (N, 4) of score bars: lit (red/yellow) where percentile >= threshold."""
    component = np.asarray(features["component"])
    with np.errstate(invalid="ignore"):
        lit = np.asarray(features["percentile"], dtype=float) >= threshold
    colours = np.tile(np.array(UNLIT_COLOR), (component.size, 1))
    colours[lit & (component == "residual")] = RESIDUAL_COLOR
    colours[lit & (component == "discrimination")] = DISCRIMINATION_COLOR
    return colours

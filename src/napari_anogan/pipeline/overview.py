"""The quick-look figure of a scored scan: ``<stem>_overview.png``.

What a retina expert would look at first, without opening napari: the highest-scoring
B-scans with the residual heatmap, the candidate regions and the paper's Fig. 3 score
bars above the retina, the en-face map of a volume, the volume score and, when the
scoring result has one, the model-fit verdict. It draws the same things as the napari
layers, from the same definitions (:mod:`napari_anogan.scoring.display`): the heatmap's
threshold and colours, the bars' geometry and colours, the legends' words.

Readable at 100 % zoom: every B-scan pixel is drawn as one (or, for B-scans narrower
than :data:`~napari_anogan.settings.FIGURE_MIN_WIDTH`, a whole number of) screen
pixels, and each B-scan is cropped to its retina, so the figure holds no empty bands of
vitreous or choroid. matplotlib's Agg canvas only (no pyplot state, no GUI backend).
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_anogan import settings as defaults
from napari_anogan._atomic import atomic_path
from napari_anogan.scoring.display import (
    BAR_LEGEND,
    HEATMAP_OPACITY,
    PIXEL_SOURCES,
    HeatmapThreshold,
    bar_colors,
    bar_height,
    heatmap_range,
    heatmap_rgba,
    heatmap_threshold,
    ranking_note,
    retina_rows,
    score_bars,
)

logger = logging.getLogger(__name__)

__all__ = ["overview_bscans", "write_overview"]

DPI = 100
"""Figure resolution: sizes below are in pixels of the PNG."""
MARGIN = 16
LINE = 21  # pixels per line of 10-point text
GAP = 12
CANDIDATE_COLOR = (1.0, 0.65, 0.0, 1.0)  # the napari candidate boxes' orange
DECISION_COLORS = {"keep": (0.2, 0.8, 0.3, 1.0), "reject": (0.55, 0.55, 0.55, 1.0)}
FITS_COLOR = "#1b7a35"
MISFIT_COLOR = "#c62828"


def _peak_slice(result: Any, candidate: dict) -> int:
    """B-scan of a candidate's highest-scoring patch (its middle B-scan without patches)."""
    members = np.asarray(candidate.get("patch_index") or [], dtype=int)
    column = (getattr(result, "settings", None) or {}).get("score_column", "anomaly_score")
    scores = np.asarray(result.patches.get(column, []), dtype=float)
    if members.size and scores.size and np.isfinite(scores[members]).any():
        best = members[np.nanargmax(scores[members])]
        return int(np.asarray(result.patches["slice"])[best])
    return (int(candidate["slice_start"]) + int(candidate["slice_end"])) // 2


def overview_bscans(result: Any, n: int = defaults.OVERVIEW_BSCANS) -> list[int]:
    """Return the B-scans an overview shows, most telling first.

    The B-scan where each of the best-ranked candidate regions peaks (so the figure shows
    different regions, not the neighbouring B-scans of one), then the highest-scoring
    B-scans, up to ``n``.

    Parameters
    ----------
    result : VolumeResult
        A scoring result.
    n : int
        How many.

    Returns
    -------
    list of int
        Slice indices (B-scans never scored come last, in order).
    """
    n = max(1, int(n))
    chosen: list[int] = []
    for cand in getattr(result, "candidates", None) or []:
        s = _peak_slice(result, cand)
        if s not in chosen:
            chosen.append(s)
        if len(chosen) == n:
            return chosen
    scores = np.asarray(result.bscan_scores, dtype=float)
    order = sorted(
        range(scores.size),
        key=lambda s: (not np.isfinite(scores[s]), -scores[s] if np.isfinite(scores[s]) else s),
    )
    chosen += [s for s in order if s not in chosen]
    return chosen[:n]


def _fit_line(fit: dict | None) -> tuple[str, str] | None:
    """Return the model-fit verdict as (text, colour), or None without one."""
    if not fit:
        return None
    verdict = str(fit.get("verdict", ""))
    excess = fit.get("median_excess")
    share = fit.get("share_above_p99")
    numbers = []
    if excess is not None:
        numbers.append(f"typical patch {float(excess):.2f} x the healthy 99th percentile")
    if share is not None:
        numbers.append(f"{100 * float(share):.0f} % of patches above it")
    detail = f" ({', '.join(numbers)})" if numbers else ""
    if verdict == "fits":
        return f"model fit: the model fits this scan{detail}", FITS_COLOR
    if verdict == "does_not_fit":
        return (
            f"model fit: the model does NOT fit this scan{detail}: its scores are not "
            "comparable to its healthy reference",
            MISFIT_COLOR,
        )
    if verdict == "no_reference":
        return "model fit: unknown (the model has no healthy reference to judge it)", "0.3"
    return f"model fit: {verdict.replace('_', ' ')}{detail}", "black"


def _rule_line(result: Any, s_count: int) -> str:
    """How the scores are made, in one sentence."""
    settings = getattr(result, "settings", None) or {}
    column = str(settings.get("score_column", "anomaly_score")).replace("_", " ")
    k = settings.get("bscan_top_k")
    bscan = f"the mean of its {k} highest patch {column}s" if k else f"from its patch {column}s"
    if s_count == 1:
        return f"B-scan score: {bscan}"
    return f"volume score: the highest B-scan score; a B-scan's score: {bscan}"


def _candidates_on(result: Any, s: int) -> list[dict]:
    return [
        c
        for c in (getattr(result, "candidates", None) or [])
        if int(c["slice_start"]) <= s <= int(c["slice_end"])
    ]


def _grey_range(crops: Sequence[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([np.asarray(c, np.float64).ravel() for c in crops])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.8]))
    return (low, high) if high > low else (low, low + 1.0)


def _slice_patches(patches: dict, s: int) -> dict:
    keep = np.asarray(patches.get("slice", []), dtype=int) == s
    return {k: np.asarray(v)[keep] for k, v in patches.items()}


def write_overview(
    result: Any,
    image: Any,
    path: str | Path,
    *,
    heatmap: HeatmapThreshold | None = None,
    n_bscans: int = defaults.OVERVIEW_BSCANS,
    bar_threshold: float | None = None,
) -> Path:
    """Write the quick-look PNG of a scored scan (atomically).

    Parameters
    ----------
    result : VolumeResult
        The scoring result, in memory or written (its residual may be a lazy view).
    image : (S, H, W) or (H, W) array-like
        The scored scan's grey values (may be lazy: only the B-scans shown are read).
    path : str or Path
        PNG to write.
    heatmap : HeatmapThreshold, optional
        The heatmap threshold (default: :func:`~napari_anogan.scoring.display.
        heatmap_threshold` of the result at :data:`~napari_anogan.settings.
        HEATMAP_PERCENTILE`, as in napari).
    n_bscans : int
        B-scans shown (:func:`overview_bscans`).
    bar_threshold : float, optional
        Healthy percentile that lights score bars (default: the result's setting).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OutputError
        If the file cannot be written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    settings = getattr(result, "settings", None) or {}
    if bar_threshold is None:
        bar_threshold = float(settings.get("percentile_threshold", defaults.PERCENTILE_THRESHOLD))
    heatmap = heatmap or heatmap_threshold(result)
    shape = tuple(int(v) for v in result.shape)
    s_count, height, width = shape[-3:] if len(shape) == 3 else (1, *shape[-2:])
    if len(np.shape(image)) == 2:
        image = np.asarray(image)[None]
    shown = overview_bscans(result, n_bscans)
    scale = max(1, round(defaults.FIGURE_MIN_WIDTH / max(width, 1)))
    panel_w = width * scale
    fig_w = panel_w + 2 * MARGIN
    text_w = fig_w - 2 * MARGIN

    # ---- what goes in: crops, texts
    ilm, bm = np.asarray(result.ilm, float), np.asarray(result.bm, float)
    bar_h = bar_height(height)
    crops = []
    for s in shown:
        top, bottom = retina_rows(ilm[s], bm[s], height, above=3 * bar_h + 8, below=12)
        for cand in _candidates_on(result, s):  # whole boxes, not just their sides
            top = max(0, min(top, int(cand["row"]) - 2))
            bottom = min(height, max(bottom, int(cand["row"]) + int(cand["height"]) + 2))
        crops.append((s, top, bottom))
    greys = [np.asarray(image[s][top:bottom], np.float64) for s, top, bottom in crops]
    grey_low, grey_high = _grey_range(greys)
    residuals = [np.asarray(result.residual[s][top:bottom], np.float64) for s, top, bottom in crops]
    low, high = heatmap_range(np.concatenate([r.ravel() for r in residuals]), heatmap.value)

    what = "B-scan" if s_count == 1 else "volume"
    n_cand = len(getattr(result, "candidates", None) or [])
    model_name = Path(str((getattr(result, "model", None) or {}).get("path") or "")).name
    header: list[tuple[str, str, float, str]] = [  # (text, colour, size, weight)
        (f"{_printable(result.name)}: {what} score {result.volume_score:.4g}", "black", 13, "bold"),
        (_rule_line(result, s_count), "black", 10, "normal"),
        (
            f"{s_count} B-scan{'s' if s_count != 1 else ''} of {height} x {width} px, "
            f"{len(result.patches.get('slice', []))} patches scored, {n_cand} candidate "
            f"region{'s' if n_cand != 1 else ''} (patches above the {bar_threshold:g}th "
            "healthy percentile)" + (f"; model {model_name}" if model_name else ""),
            "black",
            10,
            "normal",
        ),
    ]
    fit = _fit_line(getattr(result, "model_fit", None))
    if fit is not None:
        header.append((fit[0], fit[1], 10, "bold"))
    if heatmap.source != "healthy reference":
        header.append(
            (f"heatmap threshold from {PIXEL_SOURCES[heatmap.source]}", "0.3", 9, "normal")
        )
    lines = [(textwrap.wrap(t, _chars(text_w, size)), c, size, w) for t, c, size, w in header]
    header_h = MARGIN + sum(
        len(wrapped) * (LINE + (4 if size > 11 else 0)) for wrapped, _, size, _ in lines
    )

    scores = np.asarray(result.bscan_scores, dtype=float)
    ranked = sorted(np.flatnonzero(np.isfinite(scores)), key=lambda i: -scores[i])
    ranks = {int(s): i + 1 for i, s in enumerate(ranked)}
    captions = []
    for s, top, bottom in crops:
        caption = f"B-scan {s}" if s_count > 1 else "B-scan"
        if np.isfinite(scores[s]):
            caption += f": score {scores[s]:.4g}"
            if s_count > 1:
                caption += f" ({_ordinal(ranks[s])} highest of {s_count})"
        cands = _candidates_on(result, s)
        if cands:
            caption += f"; candidates {', '.join('#' + str(c['rank']) for c in cands)}"
        captions.append(
            textwrap.wrap(f"{caption} (rows {top}-{bottom - 1} shown)", _chars(text_w, 10.5))
        )
    en_face = getattr(result, "en_face", None)
    show_en_face = s_count > 1 and en_face is not None
    en_face_h = min(max(4 * s_count, 120), int(0.35 * panel_w)) if show_en_face else 0
    en_face_caption = textwrap.wrap(
        "en-face map: mean residual between ILM and BM, one row per B-scan (top: B-scan 0); "
        f"cyan lines: B-scans {', '.join(str(s) for s in shown)} shown above",
        _chars(text_w, 10.5),
    )
    heights = [(bottom - top) * scale for _, top, bottom in crops]
    column = str(settings.get("score_column", "anomaly_score"))
    legend = _legend_lines(heatmap, bar_threshold, column, text_w)
    fig_h = (
        header_h
        + sum(len(c) * LINE + 4 + h + GAP for c, h in zip(captions, heights, strict=True))
        + ((len(en_face_caption) * LINE + 4 + en_face_h + GAP) if show_en_face else 0)
        + _legend_height(legend)
    )

    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)

    def axes(x: float, y: float, w: float, h: float):
        ax = fig.add_axes((x / fig_w, 1.0 - (y + h) / fig_h, w / fig_w, h / fig_h))
        ax.set_xticks([])
        ax.set_yticks([])
        return ax

    def text(x: float, y: float, value: str, **kw: Any) -> None:
        fig.text(x / fig_w, 1.0 - y / fig_h, value, va="top", ha="left", **kw)

    y = MARGIN * 0.6
    for wrapped, colour, size, weight in lines:
        for line in wrapped:
            text(MARGIN, y, line, color=colour, fontsize=size, fontweight=weight)
            y += LINE + (4 if size > 11 else 0)
    y = header_h

    for (s, top, bottom), grey, residual, h, caption in zip(
        crops, greys, residuals, heights, captions, strict=True
    ):
        for line in caption:
            text(MARGIN, y + 4, line, fontsize=10, fontweight="bold")
            y += LINE
        y += 4
        _draw_bscan(
            axes(MARGIN, y, panel_w, h),
            grey,
            residual,
            (grey_low, grey_high),
            (low, high),
            top,
            bottom,
            width,
            bars=score_bars(_slice_patches(result.patches, s), ilm, image_height=height),
            bar_threshold=bar_threshold,
            candidates=_candidates_on(result, s),
        )
        y += h + GAP
    if show_en_face:
        for line in en_face_caption:
            text(MARGIN, y + 4, line, fontsize=10, fontweight="bold")
            y += LINE
        y += 4
        _draw_en_face(axes(MARGIN, y, panel_w, en_face_h), np.asarray(en_face, float), shown)
        y += en_face_h + GAP
    _draw_legend(fig, fig_w, fig_h, y, legend, (low, high))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, facecolor="white", format="png")
    logger.info("%s: wrote %s (%d x %d px)", result.name, path, fig_w, fig_h)
    return path


def _draw_bscan(
    ax: Any,
    grey: np.ndarray,
    residual: np.ndarray,
    grey_range: tuple[float, float],
    heat_range: tuple[float, float],
    top: int,
    bottom: int,
    width: int,
    *,
    bars: dict[str, np.ndarray],
    bar_threshold: float,
    candidates: Sequence[dict],
) -> None:
    """One B-scan crop: grey scan, thresholded heatmap, score bars, candidate boxes."""
    from matplotlib.patches import Rectangle

    extent = (-0.5, width - 0.5, bottom - 0.5, top - 0.5)
    ax.imshow(
        grey,
        cmap="gray",
        vmin=grey_range[0],
        vmax=grey_range[1],
        extent=extent,
        interpolation="nearest",
        aspect="auto",
    )
    rgba = heatmap_rgba(residual, *heat_range)
    rgba[..., 3] *= HEATMAP_OPACITY
    ax.imshow(rgba, extent=extent, interpolation="nearest", aspect="auto")
    colours = bar_colors(bars, bar_threshold) if len(bars["slice"]) else []
    for r0, r1, c0, c1, colour in zip(
        bars["row0"], bars["row1"], bars["col0"], bars["col1"], colours, strict=True
    ):
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, color=colour, lw=0))
    for cand in candidates:
        colour = DECISION_COLORS.get(str(cand.get("decision", "") or ""), CANDIDATE_COLOR)
        ax.add_patch(
            Rectangle(
                (cand["col"] - 0.5, cand["row"] - 0.5),
                cand["width"],
                cand["height"],
                fill=False,
                edgecolor=colour,
                lw=1.6,
            )
        )
        ax.text(
            max(cand["col"], 0) + 2,
            max(cand["row"], top) + 2,
            f"#{cand['rank']}",
            color=colour,
            fontsize=10,
            fontweight="bold",
            va="top",
            ha="left",
            clip_on=True,
            bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.0, "linewidth": 0},
        )
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])


def _draw_en_face(ax: Any, en_face: np.ndarray, shown: Sequence[int]) -> None:
    """Draw the en-face map (B-scans as rows) with the shown B-scans marked."""
    s_count, width = en_face.shape
    finite = en_face[np.isfinite(en_face)]
    high = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    low = float(finite.min()) if finite.size else 0.0
    ax.imshow(
        en_face,
        cmap="inferno",
        vmin=low,
        vmax=high if high > low else low + 1.0,
        extent=(-0.5, width - 0.5, s_count - 0.5, -0.5),
        interpolation="nearest",
        aspect="auto",
    )
    for s in shown:
        ax.axhline(s, color="cyan", lw=1.0)


def _legend_lines(
    heatmap: HeatmapThreshold, bar_threshold: float, column: str, text_w: float
) -> tuple[list[str], list[str]]:
    """Return the legend's two texts (heatmap; bars and boxes), wrapped to ``text_w`` px."""
    heat = (
        f"heatmap: residual |x − G(z)|, transparent up to {heatmap.value:.3g} "
        f"(p{heatmap.percentile:g} of the {_short_source(heatmap.source)})"
    )
    bars = (
        f"score bars (as in the paper's Fig. 3), lit at the {bar_threshold:g}th healthy "
        "percentile of a patch column's score; boxes: candidate regions" + ranking_note(column)
    )
    return textwrap.wrap(heat, _chars(text_w, 9)), textwrap.wrap(bars, _chars(text_w, 9))


def _legend_height(lines: tuple[list[str], list[str]]) -> int:
    return LEGEND_LINE * (len(lines[0]) + len(lines[1])) + 36 + 44 + MARGIN


LEGEND_LINE = 16


def _draw_legend(
    fig: Any,
    fig_w: float,
    fig_h: float,
    y: float,
    lines: tuple[list[str], list[str]],
    heat_range: tuple[float, float],
) -> None:
    """Colour bar of the heatmap and the key of the score bars and boxes, from ``y`` down."""
    from matplotlib.patches import Rectangle

    def frac(x: float, yy: float, w: float, h: float) -> tuple[float, float, float, float]:
        return (x / fig_w, 1.0 - (yy + h) / fig_h, w / fig_w, h / fig_h)

    def text(value: str) -> None:
        fig.text(MARGIN / fig_w, 1.0 - y / fig_h, value, fontsize=9, va="top")

    low, high = heat_range
    for line in lines[0]:
        text(line)
        y += LEGEND_LINE
    bar_w = min(320.0, fig_w - 2 * MARGIN)
    ax = fig.add_axes(frac(MARGIN, y + 4, bar_w, 12))
    ramp = np.linspace(low, high, 256)
    ax.imshow(
        heatmap_rgba(ramp[None, :] + 1e-12, low, high),
        extent=(low, high, 0, 1),
        aspect="auto",
        interpolation="nearest",
    )
    ax.set_yticks([])
    ticks = (low, (low + high) / 2, high)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{v:.3g}" for v in ticks], fontsize=8)
    y += 36
    for line in lines[1]:
        text(line)
        y += LEGEND_LINE
    y += 2
    key_w = fig_w - 2 * MARGIN
    key = fig.add_axes(frac(MARGIN, y, key_w, 40))
    key.set_axis_off()
    key.set_xlim(0, key_w)
    key.set_ylim(40, 0)
    entries = [(colour, label, False) for _, colour, _, label in BAR_LEGEND]
    entries.append((CANDIDATE_COLOR, "orange box #n: candidate region, by rank", True))
    col_w = key_w / 2
    for i, (colour, label, box) in enumerate(entries):
        cx, cy = (i % 2) * col_w, (i // 2) * 20
        key.add_patch(
            Rectangle(
                (cx, cy + 3),
                18,
                9,
                fill=not box,
                facecolor="none" if box else colour,
                edgecolor=colour if box else "none",
                lw=1.5,
            )
        )
        key.text(cx + 24, cy + 7.5, label, fontsize=8.5, va="center")


def _printable(text: str) -> str:
    """Return ``text`` with characters no font draws (controls) shown as ``?``."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def _ordinal(k: int) -> str:
    """Return ``1st``, ``2nd``, ``3rd``, ``4th``, ..."""
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _chars(width_px: float, size_pt: float) -> int:
    """Characters of text of ``size_pt`` points that fit in ``width_px`` pixels."""
    return max(30, int(width_px / (size_pt * 0.62 * DPI / 72)))


def _short_source(source: str) -> str:
    return {
        "healthy reference": "healthy pixel residual",
        "healthy-looking patches": "pixel residual of healthy-looking patches",
        "this scan": "scan's own residual",
    }.get(source, source)

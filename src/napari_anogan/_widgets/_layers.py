"""Turn a scoring result into napari layer data tuples (pure numpy, no viewer needed).

Every function returns plain ``(data, meta, layer_type)`` tuples so it can be tested
without Qt; the score widget adds them to the viewer in one go. Boxes in the result are
in raw pixels with integer corners; napari puts pixel centres on integers, so a box of
rows ``[row, row + height)`` spans ``row - 0.5 .. row + height - 0.5``.

Over 500 lines on purpose: every result layer (heatmaps, patch boxes, candidates,
boundaries, en-face map) is built here with the same naming, scaling and colour rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_anogan import settings as defaults
from napari_anogan.scoring.display import (
    DISCRIMINATION_COLOR,
    HEATMAP_OPACITY,
    RESIDUAL_COLOR,
    UNLIT_COLOR,
    HeatmapThreshold,
    PixelReference,
    bar_colors,
    component_percentiles,
    heatmap_colormap_stops,
    heatmap_range,
    heatmap_threshold,
    score_bars,
)

__all__ = [
    "DISCRIMINATION_COLOR",
    "LAYER_KINDS",
    "RESIDUAL_COLOR",
    "UNLIT_COLOR",
    "bar_colors",
    "component_percentiles",
    "image_layers",
    "layer_name",
    "result_layers",
]

LayerData = tuple[Any, dict, str]

#: Layer kinds added for one scored image, in the order they are added (bottom to top).
LAYER_KINDS = (
    "reconstruction",
    "residual (raw)",
    "residual",
    "boundaries",
    "score bars",
    "candidates",
    "en face",
    "en face slice",
    "patch scores",
)

ILM_COLOR = (0.25, 0.85, 1.0, 1.0)
BM_COLOR = (1.0, 0.45, 0.85, 1.0)
DECISION_COLORS = {
    "": (1.0, 0.65, 0.0, 1.0),  # undecided: orange
    "keep": (0.2, 1.0, 0.3, 1.0),
    "reject": (0.55, 0.55, 0.55, 0.7),
}


def layer_name(image: str, kind: str) -> str:
    """Name of a derived layer, e.g. ``layer_name("scan", "residual") == "scan residual"``."""
    return f"{image} {kind}"


def rectangle(slice_index: int, row: float, col: float, height: float, width: float) -> np.ndarray:
    """Corners (4, 3) of a pixel box as a napari rectangle on B-scan ``slice_index``."""
    r0, c0 = row - 0.5, col - 0.5
    r1, c1 = row + height - 0.5, col + width - 0.5
    return np.array(
        [
            [slice_index, r0, c0],
            [slice_index, r0, c1],
            [slice_index, r1, c1],
            [slice_index, r1, c0],
        ],
        dtype=float,
    )


def _trim(shapes: Sequence[np.ndarray], ndim: int) -> list[np.ndarray]:
    """Drop the slice coordinate when the image is a single 2-D B-scan."""
    return [np.asarray(s)[:, -ndim:] for s in shapes]


def patch_score_layer(
    patches: Mapping[str, np.ndarray], name: str, *, ndim: int = 3, **meta: Any
) -> LayerData:
    """Shapes layer: one rectangle per scored patch, features = the whole patch table."""
    n = len(patches.get("slice", ()))
    rects = [
        rectangle(
            int(patches["slice"][i]),
            float(patches["row"][i]),
            float(patches["col"][i]),
            float(patches["height"][i]),
            float(patches["width"][i]),
        )
        for i in range(n)
    ]
    features = {key: np.asarray(value) for key, value in patches.items()}
    colour_by = "healthy_percentile" if "healthy_percentile" in features else "anomaly_score"
    style: dict[str, Any] = {
        "name": name,
        "ndim": ndim,
        "shape_type": "rectangle",
        "features": features,
        "face_color": "transparent",
        "edge_width": 1.0,
        "opacity": 0.8,
        "visible": False,
    }
    if n:
        style.update(edge_color=colour_by, edge_colormap="inferno")
    style.update(meta)
    return (_trim(rects, ndim), style, "shapes")


def score_bar_layer(
    patches: Mapping[str, np.ndarray],
    ilm: np.ndarray,
    name: str,
    *,
    image_height: int,
    threshold: float = defaults.PERCENTILE_THRESHOLD,
    ndim: int = 3,
    **meta: Any,
) -> LayerData:
    """Shapes layer of the Fig. 3-style score bars above the retina.

    The bars of :func:`~napari_anogan.scoring.display.score_bars`: for every patch
    column, the upper bar for the residual score R (red when lit) and the one below for
    the discrimination score D (yellow when lit). A bar is lit where the component's
    healthy percentile reaches ``threshold``.

    Parameters
    ----------
    patches : mapping of str to (N,) ndarray
        Patch table (raw boxes).
    ilm : (S, W) ndarray
        ILM row per slice and raw column (NaN where not found).
    name : str
        Layer name.
    image_height : int
        Rows of a B-scan; sets the bar thickness.
    threshold : float
        Healthy percentile at which a bar lights up.
    ndim : int
        2 for a single B-scan, else 3.
    """
    bars = score_bars(patches, ilm, image_height=image_height)
    corners = zip(
        bars["slice"], bars["row0"], bars["row1"], bars["col0"], bars["col1"], strict=True
    )
    rects = [
        np.array([[s, r0, c0], [s, r0, c1], [s, r1, c1], [s, r1, c0]]) - np.array([0, 0.5, 0.5])
        for s, r0, r1, c0, c1 in corners
    ]
    features = {k: bars[k] for k in ("slice", "col0", "col1", "component", "score", "percentile")}
    style: dict[str, Any] = {
        "name": name,
        "ndim": ndim,
        "shape_type": "rectangle",
        "features": features,
        "face_color": bar_colors(features, threshold) if rects else "transparent",
        "edge_width": 0.0,
        "edge_color": "transparent",
        "opacity": 1.0,
    }
    style.update(meta)
    return (_trim(rects, ndim), style, "shapes")


def _paths(rows: np.ndarray, s: int, step: int) -> list[np.ndarray]:
    """Polyline pieces (K, 3) of one boundary in one slice, broken at NaN columns."""
    columns = np.arange(rows.size)
    keep = np.zeros(rows.size, dtype=bool)
    keep[::step] = True
    keep[-1] = True
    finite = np.isfinite(rows)
    pieces = []
    start = None
    for x in range(rows.size + 1):
        ok = x < rows.size and finite[x]
        if ok and start is None:
            start = x
        if not ok and start is not None:
            idx = np.arange(start, x)
            idx = idx[keep[idx] | (idx == start) | (idx == x - 1)]
            if idx.size >= 2:
                pieces.append(np.column_stack([np.full(idx.size, s), rows[idx], columns[idx]]))
            start = None
    return pieces


def boundary_layer(
    ilm: np.ndarray, bm: np.ndarray, name: str, *, ndim: int = 3, step: int = 4, **meta: Any
) -> LayerData:
    """Shapes layer of ILM (cyan) and BM (pink) paths, one pair per B-scan."""
    shapes: list[np.ndarray] = []
    which: list[str] = []
    slice_of: list[int] = []
    for label, rows in (("ILM", np.asarray(ilm, float)), ("BM", np.asarray(bm, float))):
        for s in range(rows.shape[0]):
            for piece in _paths(rows[s], s, step):
                shapes.append(piece)
                which.append(label)
                slice_of.append(s)
    colours = np.array([ILM_COLOR if w == "ILM" else BM_COLOR for w in which]).reshape(-1, 4)
    style: dict[str, Any] = {
        "name": name,
        "ndim": ndim,
        "shape_type": "path",
        "features": {"boundary": np.asarray(which, dtype=object), "slice": np.asarray(slice_of)},
        "edge_color": colours if shapes else "cyan",
        "edge_width": 1.5,
        "face_color": "transparent",
        "opacity": 0.9,
    }
    style.update(meta)
    return (_trim(shapes, ndim), style, "shapes")


def candidate_features(candidates: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Feature columns of the candidate layer: one row per (candidate, B-scan) rectangle."""
    from napari_anogan.scoring.candidates import CANDIDATE_COLUMNS

    # a candidate's columns (rank first) with the B-scan of each of its rectangles
    columns = ("rank", "slice", *CANDIDATE_COLUMNS[1:])
    feats: dict[str, list] = {c: [] for c in (*columns, "decision")}
    for cand in candidates:
        for s in range(int(cand["slice_start"]), int(cand["slice_end"]) + 1):
            for c in columns:
                feats[c].append(s if c == "slice" else cand.get(c, np.nan))
            feats["decision"].append(str(cand.get("decision", "") or ""))
    out = {c: np.asarray(v) for c, v in feats.items()}
    out["decision"] = np.asarray(feats["decision"], dtype=object)
    return out


def candidate_rectangles(
    candidates: Sequence[Mapping[str, Any]], ndim: int = 3
) -> list[np.ndarray]:
    """Rectangles of the candidates, one per B-scan each spans (same order as features)."""
    rects = []
    for cand in candidates:
        for s in range(int(cand["slice_start"]), int(cand["slice_end"]) + 1):
            rects.append(rectangle(s, cand["row"], cand["col"], cand["height"], cand["width"]))
    return _trim(rects, ndim)


def decision_colors(decisions: Sequence[str]) -> np.ndarray:
    """Edge colours (N, 4) of candidate rectangles from their keep/reject decision."""
    return np.array(
        [DECISION_COLORS.get(str(d or ""), DECISION_COLORS[""]) for d in decisions], dtype=float
    ).reshape(-1, 4)


def candidate_layer(
    candidates: Sequence[Mapping[str, Any]],
    name: str,
    *,
    ndim: int = 3,
    **meta: Any,
) -> LayerData:
    """Shapes layer of candidate regions (one rectangle per candidate and B-scan)."""
    features = candidate_features(candidates)
    style: dict[str, Any] = {
        "name": name,
        "ndim": ndim,
        "shape_type": "rectangle",
        "features": features,
        "edge_color": decision_colors(features["decision"]) if candidates else "orange",
        "edge_width": 2.0,
        "face_color": "transparent",
        "text": {"string": "#{rank}", "color": "orange", "size": 9, "anchor": "upper_left"},
    }
    style.update(meta)
    return (candidate_rectangles(candidates, ndim), style, "shapes")


def en_face_placement(
    scale: Sequence[float], image_shape: Sequence[int], origin: Sequence[float] = (0.0, 0.0)
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Scale and translate of the en-face map: a mini-map below the B-scan.

    A 2-D layer in a 3-D viewer is drawn on the displayed (depth, width) plane. The map
    goes just below the B-scan with the same column scale, so a column of the map lines
    up with the same column of the B-scan above it. Rows (one per B-scan) get the
    physical slice spacing, squeezed if needed so the map is at most 60 % of the B-scan's
    height.

    Parameters
    ----------
    scale : sequence of float
        The image layer's (slice, depth, width) scale.
    image_shape : sequence of int
        (S, H, W) of the scored volume.
    origin : sequence of float
        The image layer's (depth, width) translate.

    Returns
    -------
    scale, translate : tuple of (float, float)
        For the en-face layer (rows = slices, columns = raw columns).
    """
    n_slices, height, _ = (int(v) for v in image_shape[-3:])
    slice_um, depth_um, width_um = (float(v) for v in scale[-3:])
    bscan_height = height * depth_um
    row = min(slice_um, 0.6 * bscan_height / max(n_slices, 1))
    top = float(origin[0]) + bscan_height + 0.08 * bscan_height
    return (row, width_um), (top, float(origin[1]))


def en_face_layer(
    en_face: np.ndarray,
    name: str,
    *,
    scale: Sequence[float],
    image_shape: Sequence[int],
    origin: Sequence[float] = (0.0, 0.0),
    **meta: Any,
) -> LayerData:
    """Image layer of the en-face anomaly map (slice x column), below the B-scan.

    See :func:`en_face_placement` for where it goes.
    """
    layer_scale, translate = en_face_placement(scale, image_shape, origin)
    finite = np.asarray(en_face, dtype=float)
    finite = finite[np.isfinite(finite)]
    high = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    low = float(finite.min()) if finite.size else 0.0
    style: dict[str, Any] = {
        "name": name,
        "scale": layer_scale,
        "translate": translate,
        "colormap": "inferno",
        "contrast_limits": (low, high if high > low else low + 1.0),
    }
    style.update(meta)
    return (np.asarray(en_face, dtype=np.float32), style, "image")


def en_face_marker(slice_index: float, width: int) -> list[np.ndarray]:
    """Return a line across the en-face map at ``slice_index`` (the B-scan shown above)."""
    return [np.array([[slice_index, -0.5], [slice_index, width - 0.5]], dtype=float)]


def en_face_marker_layer(
    name: str,
    *,
    scale: Sequence[float],
    image_shape: Sequence[int],
    origin: Sequence[float] = (0.0, 0.0),
    slice_index: float = 0.0,
    **meta: Any,
) -> LayerData:
    """Shapes layer with one line marking the current B-scan on the en-face map."""
    layer_scale, translate = en_face_placement(scale, image_shape, origin)
    style: dict[str, Any] = {
        "name": name,
        "ndim": 2,
        "shape_type": "line",
        "scale": layer_scale,
        "translate": translate,
        "edge_color": "cyan",
        "edge_width": 0.4,
        "opacity": 0.9,
    }
    style.update(meta)
    return (en_face_marker(slice_index, int(image_shape[-1])), style, "shapes")


#: Contrast limits are estimated from at most about this many values (a regular
#: subsample): exact percentiles of a 16 x 496 x 512 volume take ~0.1 s, and a display
#: range needs no more than a few hundred thousand samples.
LIMIT_SAMPLES = 1 << 18


def _robust_limits(data: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> tuple:
    """Contrast limits from percentiles of the finite values (never equal).

    Large arrays are subsampled regularly to about :data:`LIMIT_SAMPLES` values first.
    """
    flat = np.asarray(data).reshape(-1)
    step = max(1, -(-flat.size // LIMIT_SAMPLES))
    sample = flat[::step]
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return (0.0, 1.0)
    low, high = (float(v) for v in np.percentile(finite, [low_pct, high_pct]))
    return (low, high) if high > low else (low, low + 1.0)


def _placement(
    scale: Sequence[float], translate: Sequence[float] | None, ndim: int, image_name: str
) -> dict[str, Any]:
    """``scale``, ``translate`` and ``metadata`` shared by every layer of one result."""
    scale = tuple(float(s) for s in scale)[-ndim:]
    translate = tuple(float(t) for t in (translate if translate is not None else (0.0,) * ndim))[
        -ndim:
    ]
    return {"scale": scale, "translate": translate, "metadata": {"anogan_image": image_name}}


#: Metadata key of the residual layer: its heatmap threshold
#: (:meth:`~napari_anogan.scoring.display.HeatmapThreshold.to_dict`: value, percentile,
#: source and what that source means).
HEATMAP_KEY = "heatmap_threshold"
#: Metadata key of the residual layer: the pixel reference its threshold is read from
#: (levels, quantiles, source), so the threshold can move without recomputing it.
PIXEL_REFERENCE_KEY = "heatmap_reference"


def heatmap_colormap() -> Any:
    """Return the napari colormap of the thresholded heatmap (transparent at its bottom)."""
    from napari.utils.colormaps import Colormap

    controls, colors = heatmap_colormap_stops()
    return Colormap(colors=colors, controls=controls, name="anogan residual")


def pixel_reference_from_metadata(metadata: Mapping[str, Any]) -> PixelReference | None:
    """Return the pixel reference a residual layer stored (:data:`PIXEL_REFERENCE_KEY`)."""
    stored = (metadata or {}).get(PIXEL_REFERENCE_KEY)
    if not stored:
        return None
    return PixelReference(
        np.asarray(stored["levels"], np.float64),
        np.asarray(stored["quantiles"], np.float64),
        str(stored["source"]),
    )


def heatmap_metadata(threshold: HeatmapThreshold) -> dict[str, Any]:
    """Metadata entries of a residual layer thresholded at ``threshold``."""
    reference = threshold.reference
    return {
        HEATMAP_KEY: threshold.to_dict(),
        PIXEL_REFERENCE_KEY: {
            "levels": [float(v) for v in reference.levels],
            "quantiles": [float(v) for v in reference.quantiles],
            "source": reference.source,
        },
    }


def residual_layer(
    result: Any,
    image_name: str,
    *,
    scale: Sequence[float],
    translate: Sequence[float] | None = None,
    ndim: int = 3,
    threshold: HeatmapThreshold | None = None,
) -> LayerData:
    """Build the residual heatmap layer, transparent at and below its threshold.

    Parameters
    ----------
    result : VolumeResult
        A (partial) scoring result.
    image_name : str
        The scored image layer's name.
    scale, translate, ndim
        As :func:`result_layers`.
    threshold : HeatmapThreshold, optional
        Default: :func:`~napari_anogan.scoring.display.heatmap_threshold` of the result
        at :data:`~napari_anogan.settings.HEATMAP_PERCENTILE`.

    Returns
    -------
    (data, meta, "image")
        The metadata holds the threshold (:data:`HEATMAP_KEY`) and its reference.
    """
    common = _placement(scale, translate, ndim, image_name)
    residual = _squeeze(result.residual, ndim)
    threshold = threshold or heatmap_threshold(result)
    return (
        residual,
        {
            "name": layer_name(image_name, "residual"),
            "colormap": heatmap_colormap(),
            "blending": "translucent",
            "opacity": HEATMAP_OPACITY,
            "contrast_limits": heatmap_range(residual, threshold.value),
            **common,
            "metadata": {**common["metadata"], **heatmap_metadata(threshold)},
        },
        "image",
    )


def _squeeze(volume: Any, ndim: int) -> np.ndarray:
    volume = np.asarray(volume, dtype=np.float32)
    return volume[0] if ndim == 2 and volume.ndim == 3 else volume


def image_layers(
    result: Any,
    image_name: str,
    *,
    scale: Sequence[float],
    translate: Sequence[float] | None = None,
    ndim: int = 3,
    threshold: HeatmapThreshold | None = None,
) -> list[LayerData]:
    """Build the reconstruction and residual image layers of a (partial) result.

    The first three of :func:`result_layers`: G(z) (hidden), the raw residual (hidden,
    coloured from 0 as the paper's overlay) and the thresholded residual heatmap
    (:func:`residual_layer`), both residual layers on the same array. Explicit contrast
    limits, so napari never scans the whole volume for them.
    """
    common = _placement(scale, translate, ndim, image_name)
    residual = _squeeze(result.residual, ndim)
    reconstruction = _squeeze(result.reconstruction, ndim)
    return [
        (
            reconstruction,
            {
                "name": layer_name(image_name, "reconstruction"),
                "colormap": "gray",
                "contrast_limits": _robust_limits(reconstruction),
                "visible": False,
                **common,
            },
            "image",
        ),
        (
            residual,
            {
                "name": layer_name(image_name, "residual (raw)"),
                "colormap": "inferno",
                "blending": "additive",
                "opacity": HEATMAP_OPACITY,
                "contrast_limits": (0.0, max(_robust_limits(residual, 0, 99.9)[1], 1e-6)),
                "visible": False,
                **common,
            },
            "image",
        ),
        residual_layer(
            result, image_name, scale=scale, translate=translate, ndim=ndim, threshold=threshold
        ),
    ]


def result_layers(
    result: Any,
    image_name: str,
    *,
    scale: Sequence[float],
    translate: Sequence[float] | None = None,
    ndim: int = 3,
    threshold: float | None = None,
    candidates: Sequence[Mapping[str, Any]] | None = None,
    heatmap: HeatmapThreshold | None = None,
) -> list[LayerData]:
    """All layers for one scored image, in :data:`LAYER_KINDS` order.

    Parameters
    ----------
    result : VolumeResult
        Output of :func:`napari_anogan.pipeline.score_volume` (raw pixel grid).
    image_name : str
        Name of the scored image layer; every layer name starts with it.
    scale, translate : sequence of float
        The image layer's scale and translate, so the layers overlay it exactly.
    ndim : int
        2 when the image layer is a single B-scan (H, W), else 3.
    threshold : float, optional
        Healthy percentile that lights score bars (default: the result's setting, 99).
    candidates : list of dict, optional
        Candidate regions (default: ``result.candidates``).
    heatmap : HeatmapThreshold, optional
        Threshold of the residual heatmap (default: at
        :data:`~napari_anogan.settings.HEATMAP_PERCENTILE` of the result's pixel reference).

    Returns
    -------
    list of (data, meta, layer_type)
    """
    settings = getattr(result, "settings", {}) or {}
    if threshold is None:
        threshold = float(settings.get("percentile_threshold", defaults.PERCENTILE_THRESHOLD))
    if candidates is None:
        candidates = list(getattr(result, "candidates", []) or [])
    common = _placement(scale, translate, ndim, image_name)
    scale, translate = common["scale"], common["translate"]
    height = int(result.shape[-2])
    layers: list[LayerData] = [
        *image_layers(
            result, image_name, scale=scale, translate=translate, ndim=ndim, threshold=heatmap
        ),
        boundary_layer(
            result.ilm, result.bm, layer_name(image_name, "boundaries"), ndim=ndim, **common
        ),
        score_bar_layer(
            result.patches,
            result.ilm,
            layer_name(image_name, "score bars"),
            image_height=height,
            threshold=threshold,
            ndim=ndim,
            **common,
        ),
        candidate_layer(
            candidates,
            layer_name(image_name, "candidates"),
            ndim=ndim,
            **{**common, "metadata": {**common["metadata"], "threshold": threshold}},
        ),
    ]
    en_face = getattr(result, "en_face", None)
    if ndim == 3 and en_face is not None and np.asarray(en_face).shape[0] > 1:
        layers.append(
            en_face_layer(
                en_face,
                layer_name(image_name, "en face"),
                scale=scale,
                image_shape=result.shape,
                origin=(translate[1], translate[2]),
                metadata=common["metadata"],
            )
        )
        layers.append(
            en_face_marker_layer(
                layer_name(image_name, "en face slice"),
                scale=scale,
                image_shape=result.shape,
                origin=(translate[1], translate[2]),
                metadata={**common["metadata"], "en_face_marker": True},
            )
        )
    # Last, because it carries the result: widgets that follow it find the rest in place.
    layers.append(
        patch_score_layer(
            result.patches,
            layer_name(image_name, "patch scores"),
            ndim=ndim,
            **{**common, "metadata": {**common["metadata"], "anogan_result": result}},
        )
    )
    return layers

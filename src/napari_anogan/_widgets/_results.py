"""Scoring results: the worker job, and turning its result into viewer layers.

Split from :mod:`.score` so the form stays small: :func:`score_job` runs in the worker
(scoring, then building the layers), :func:`add_result_layers` puts them in the viewer
all or none, :func:`boxes_from_shapes` turns user rectangles into raw-pixel boxes.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from napari_anogan._widgets._common import layer_by_name
from napari_anogan._widgets._layers import LAYER_KINDS, en_face_marker, layer_name, result_layers

logger = logging.getLogger(__name__)


def boxes_from_shapes(shapes: Any, image: Any) -> list[tuple[int, int, int, int, int]]:
    """Raw-pixel boxes (slice, row0, col0, row1, col1) of a Shapes layer's shapes.

    Vertices go through world coordinates, so a Shapes layer with another scale or
    translate than the image still selects the right pixels. Each shape's bounding box
    is used; a shape drawn on a 2-D image gets slice 0.
    """
    boxes = []
    shape = np.asarray(image.data.shape)
    for vertices in shapes.data:
        world = np.array([shapes.data_to_world(v) for v in np.asarray(vertices)])
        pixels = np.array([image.world_to_data(w) for w in world])[:, -image.ndim :]
        lo = np.floor(pixels.min(axis=0) + 0.5).astype(int)
        hi = np.ceil(pixels.max(axis=0) + 0.5).astype(int)
        lo = np.clip(lo, 0, shape)
        hi = np.clip(hi, 0, shape)
        s = (
            int(np.clip(round(float(pixels[:, 0].mean())), 0, shape[0] - 1))
            if image.ndim == 3
            else 0
        )
        r0, c0, r1, c1 = lo[-2], lo[-1], hi[-2], hi[-1]
        if r1 > r0 and c1 > c0:
            boxes.append((s, int(r0), int(c0), int(r1), int(c1)))
    return boxes


def score_job(
    volume: Any, model: Any, settings: Any, region: dict, geometry: dict
) -> Generator[Any, None, tuple[Any, list]]:
    """Score in the worker, then build the result layers there too.

    Building napari layer objects (features tables, shape meshes) takes about a second
    for a small volume; doing it in the worker leaves the GUI thread only the drawing.

    Parameters
    ----------
    volume, model, settings, region
        Arguments of :func:`napari_anogan.pipeline.score_volume` (``region`` holds
        ``slices`` or ``boxes``).
    geometry : dict
        ``image_name``, ``scale``, ``translate`` and ``ndim`` of the scored image layer.

    Returns
    -------
    tuple
        (VolumeResult, list of napari layers not yet in a viewer).
    """
    from napari.layers import Layer

    from napari_anogan import pipeline

    if isinstance(model, (str, Path)):
        from napari_anogan.checkpoint import load_checkpoint

        model = load_checkpoint(model)
    result = yield from pipeline.score_volume(volume, model, settings, **region)
    add_component_percentiles(result.patches, getattr(model, "reference", None))
    tuples = result_layers(
        result,
        geometry["image_name"],
        scale=geometry["scale"],
        translate=geometry["translate"],
        ndim=geometry["ndim"],
    )
    return result, [Layer.create(*data_tuple) for data_tuple in tuples]


def add_component_percentiles(patches: dict, reference: dict | None) -> None:
    """Add ``residual_percentile`` / ``discrimination_percentile`` columns to a patch table.

    Each score is ranked in the model's healthy reference distribution of that score
    (the score bars light up per component). Columns the core already provides, or that
    the reference cannot give, are left alone.
    """
    from napari_anogan.scoring import percentile_of

    if not reference or "levels" not in reference:
        return
    for score, column in (
        ("residual_score", "residual_percentile"),
        ("discrimination_score", "discrimination_percentile"),
    ):
        if column not in patches and score in reference and score in patches:
            patches[column] = percentile_of(
                np.asarray(patches[score], dtype=float), reference[score], reference["levels"]
            )


def add_result_layers(viewer: Any, tuples: list, image_name: str) -> list[Any]:
    """Replace the derived layers of ``image_name`` by ``tuples``, all or none.

    ``tuples`` may hold layer data tuples or ready napari layers.

    Layers of an earlier run are removed first; if adding fails half-way the new layers
    are removed again before the error propagates, so no half-made result remains.
    """
    from napari.layers import Layer

    for kind in LAYER_KINDS:
        name = layer_name(image_name, kind)
        if name in viewer.layers:
            viewer.layers.remove(name)
    added = []
    try:
        for item in tuples:
            new = item if isinstance(item, Layer) else Layer.create(*item)
            viewer.add_layer(new)
            added.append(new)
    except Exception:
        for layer in added:
            if layer in viewer.layers:
                viewer.layers.remove(layer)
        raise
    image = layer_by_name(viewer, image_name)
    if image is not None:
        viewer.layers.selection.active = image
    return added


def update_en_face_markers(viewer: Any) -> None:
    """Move every en-face slice marker to the B-scan now shown of its image."""
    for marker in list(viewer.layers):
        if not (marker.metadata or {}).get("en_face_marker"):
            continue
        image = layer_by_name(viewer, marker.metadata.get("anogan_image", ""))
        if image is None or image.ndim != 3:
            continue
        index = float(
            np.clip(
                round(float(image.world_to_data(viewer.dims.point)[0])), 0, image.data.shape[0] - 1
            )
        )
        marker.data = en_face_marker(index, int(image.data.shape[-1]))

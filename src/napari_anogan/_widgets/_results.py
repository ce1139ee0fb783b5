"""Scoring results: the worker job, and turning its result into viewer layers.

Split from :mod:`.score` so the form stays small: :func:`score_job` runs in the worker
(scoring, preparing partial heatmaps, then building the layers),
:func:`result_layer_steps` / :func:`partial_layer_steps` put them in the viewer one layer
per step (the widget runs the steps between event-loop turns, so the viewer stays
responsive), :func:`add_result_layers` does all steps at once, and
:func:`boxes_from_shapes` turns user rectangles into raw-pixel boxes.

Over 500 lines on purpose: the worker job, the partial-heatmap steps and the final layer
steps hand the same layers to each other and are tested together.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from napari_anogan._widgets._common import layer_by_name
from napari_anogan._widgets._layers import (
    HEATMAP_KEY,
    LAYER_KINDS,
    en_face_marker,
    layer_name,
    residual_layer,
    result_layers,
)
from napari_anogan.scoring.display import HeatmapThreshold, stored_pixel_reference
from napari_anogan.settings import HEATMAP_PERCENTILE

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


@dataclass
class PartialLayers:
    """Partial heatmaps made ready in the worker: what the GUI thread applies as is.

    Attributes
    ----------
    images : list of (data, meta, layer_type)
        Image layers of the patches mapped so far, with their contrast limits already
        computed (:func:`._layers.residual_layer`). Only the residual heatmap: the
        reconstruction layer is hidden until the user shows it, so it waits for the
        final result (each new napari layer costs the GUI thread ~0.1 s).
    """

    images: list

    @classmethod
    def blank(cls, shape: Sequence[int], geometry: dict) -> PartialLayers:
        """Make an all-zero residual heatmap over an image of ``shape`` (S, H, W).

        Shown as soon as scoring starts, before the worker maps anything: the heatmap
        layer goes in while the CPU is free, and each partial result then only updates
        its data in place, which costs the busy GUI thread far less than an insertion.
        """
        zeros = np.zeros(tuple(shape), dtype=np.float32)
        place = {k: geometry[k] for k in ("scale", "translate", "ndim")}
        blank = SimpleNamespace(residual=zeros, reconstruction=zeros)
        return cls([residual_layer(blank, geometry["image_name"], **place)])


def score_job(
    volume: Any,
    model: Any,
    settings: Any,
    region: dict,
    geometry: dict,
    gui_idle: threading.Event | None = None,
) -> Generator[Any, None, tuple[Any, list]]:
    """Score in the worker, then build the result layers there too.

    Everything heavy happens here, off the GUI thread: partial heatmaps are turned into
    layer data with contrast limits (:class:`PartialLayers` in ``event.partial``), and
    the final result into napari layer objects (features tables, shape meshes; about a
    second for the sample volume). The GUI thread only inserts them.

    Parameters
    ----------
    volume, model, settings, region
        Arguments of :func:`napari_anogan.pipeline.score_volume` (``region`` holds
        ``slices`` or ``boxes``).
    geometry : dict
        ``image_name``, ``scale``, ``translate`` and ``ndim`` of the scored image layer.
    gui_idle : threading.Event, optional
        Set while the GUI thread has no layer work queued (:attr:`._common.StepQueue.idle`).
        The job clears it when it sends partial heatmaps and, after each event, waits
        for it (at most :data:`GUI_WAIT_S`), so the GUI thread shows them without
        sharing the CPU and the GIL with the mapping. The GUI must set it again once
        it has handled the event (the step queue does when its work is done).

    Returns
    -------
    tuple
        (VolumeResult, list of napari layers not yet in a viewer).
    """
    from napari_anogan import pipeline

    if gui_idle is not None:
        gui_idle.wait(GUI_WAIT_S)  # let the GUI thread put in the blank heatmap first
    if isinstance(model, (str, Path)):
        from napari_anogan.checkpoint import load_checkpoint

        model = load_checkpoint(model)
    place = {k: geometry[k] for k in ("scale", "translate", "ndim")}
    # Partial heatmaps are thresholded at the model's pixel reference when it has one,
    # else at the pixels mapped so far; the final result brings the final threshold.
    stored = stored_pixel_reference(getattr(model, "reference", None))
    provisional = (
        None
        if stored is None
        else HeatmapThreshold(stored.value_at(HEATMAP_PERCENTILE), HEATMAP_PERCENTILE, stored)
    )
    with gui_torch_threads():
        job = pipeline.score_volume(volume, model, settings, partial_results=True, **region)
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                result = stop.value
                break
            partial = getattr(event, "partial", None)
            if partial is not None and not isinstance(partial, dict):
                residual = residual_layer(
                    partial, geometry["image_name"], threshold=provisional, **place
                )
                event.partial = PartialLayers([residual])
                if gui_idle is not None:
                    # The GUI will have layer work for this event: wait for it below
                    # even if it has not queued it yet (the event is on its way).
                    gui_idle.clear()
            yield event
            if gui_idle is not None and not gui_idle.wait(GUI_WAIT_S):
                logger.debug("GUI layer work still queued after %.1f s; mapping on", GUI_WAIT_S)
    tuples = result_layers(result, geometry["image_name"], **place)
    return result, [create_layer(data_tuple) for data_tuple in tuples]


#: Longest the scoring worker waits for the GUI thread's queued layer work, in seconds.
GUI_WAIT_S = 2.0

#: CPU cores left to the GUI thread while the score widget maps patches on a busy
#: machine (see :func:`torch_threads_for_gui`).
GUI_TORCH_THREADS_LEAVE = 1


def torch_threads_for_gui(threads: int, cpus: int, load: float) -> int:
    """Torch threads for a scoring job run beside the GUI thread.

    All of them on an idle machine (measured on 2 cores at load < 1: 16 s for the
    sample, the same event-loop gaps as with one thread, which took 27 s). When other
    processes already keep a core busy (1-minute load average >= ``cpus - 1``), torch's
    OpenMP team, the GUI thread and those processes oversubscribe the CPUs; then
    :data:`GUI_TORCH_THREADS_LEAVE` cores are left to the GUI (measured on 2 cores at
    load 4-5: a job took 284 s with two threads, ~35 s with one).

    Parameters
    ----------
    threads : int
        Torch's current intra-op thread count.
    cpus : int
        CPU cores of the machine.
    load : float
        1-minute load average before the job.

    Returns
    -------
    int
        At least 1, at most ``threads``.
    """
    if load < cpus - 1:
        return max(1, threads)
    return max(1, min(threads, cpus - GUI_TORCH_THREADS_LEAVE))


@contextmanager
def gui_torch_threads() -> Iterator[None]:
    """Use fewer torch threads while the worker maps patches on a busy machine.

    See :func:`torch_threads_for_gui`; the previous setting is restored afterwards.
    """
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        load = 0.0
    wanted = torch_threads_for_gui(before, os.cpu_count() or 1, load)
    changed = wanted != before
    if changed:
        torch.set_num_threads(wanted)
        logger.debug("torch threads %d -> %d while scoring (load %.1f)", before, wanted, load)
    try:
        yield
    finally:
        if changed:
            torch.set_num_threads(before)


#: Modules a first scoring job would import: the core stages and pandas (napari's
#: feature tables). Imported when the score widget opens, see :func:`warm_up`.
WARM_UP_MODULES = (
    "pandas",
    "napari_anogan.preprocess",
    "napari_anogan.mapping",
    "napari_anogan.scoring",
    "napari_anogan.scoring.candidates",
    "napari_anogan.checkpoint",
)


_warmed_up = False


def warm_up() -> None:
    """Import what a scoring job needs, then run one full garbage collection.

    A first job would otherwise import ~500 modules (~90k objects) itself, which makes
    Python's next full collection (~0.2-0.3 s with napari and torch loaded, the GIL
    held) fall due in the middle of it. Called when the score widget opens (about half
    a second, once per process), so the first job runs as smoothly as the next ones.
    """
    import gc
    import importlib

    global _warmed_up
    if _warmed_up:
        return
    _warmed_up = True
    start = time.perf_counter()
    for name in WARM_UP_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # an optional part missing: the job will say so
            logger.debug("warm-up: cannot import %s: %s", name, exc)
    gc.collect()
    logger.debug("scoring warm-up took %.2f s", time.perf_counter() - start)


def create_layer(item: tuple) -> Any:
    """Make a napari layer from a layer data tuple; a residual heatmap gets its colour bar.

    The colour bar (napari's canvas overlay, where this napari has one) shows the
    heatmap's colours from its threshold up, in residual units.
    """
    from napari.layers import Layer

    layer = Layer.create(*item)
    colorbar = getattr(layer, "colorbar", None)
    if colorbar is not None and HEATMAP_KEY in (layer.metadata or {}):
        colorbar.visible = True
    return layer


def add_result_layers(viewer: Any, tuples: list, image_name: str) -> list[Any]:
    """Replace the derived layers of ``image_name`` by ``tuples``, all or none, now.

    ``tuples`` may hold layer data tuples or ready napari layers. Runs every step of
    :func:`result_layer_steps` at once (the score widget spreads them over event-loop
    turns instead).

    Returns
    -------
    list of napari layers
        The result's layers now in the viewer.
    """
    steps = result_layer_steps(viewer, tuples, image_name)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def _updatable(old: Any, new: Any) -> bool:
    """Whether ``old`` can take ``new``'s data in place (same kind of image, same grid)."""
    from napari.layers import Image

    return (
        isinstance(old, Image)
        and isinstance(new, Image)
        and not old.multiscale
        and not new.multiscale
        and old.rgb == new.rgb
        and old.ndim == new.ndim
        and np.shape(old.data) == np.shape(new.data)
    )


def update_image_layer(old: Any, new: Any) -> None:
    """Give image layer ``old`` the data, contrast limits and placement of ``new``.

    Cheaper than removing ``old`` and adding ``new``: napari keeps the layer's visual,
    controls and shaders and only uploads the shown slice again.
    """
    if tuple(old.scale) != tuple(new.scale):
        old.scale = new.scale
    if tuple(old.translate) != tuple(new.translate):
        old.translate = new.translate
    old.metadata = dict(new.metadata)
    low, high = (float(v) for v in new.contrast_limits)
    # Widen the range first: napari clips limits to contrast_limits_range.
    range_low, range_high = (float(v) for v in old.contrast_limits_range)
    if low < range_low or high > range_high:
        old.contrast_limits_range = (min(low, range_low), max(high, range_high))
    old.data = new.data
    old.contrast_limits = (low, high)


def _insert_index(viewer: Any, name: str, image_name: str) -> int:
    """Where a derived layer goes so they stay in :data:`LAYER_KINDS` order.

    Just above the derived layers of kinds before it, else just below those of kinds
    after it, else on top.
    """
    kinds = [layer_name(image_name, kind) for kind in LAYER_KINDS]
    if name not in kinds:
        return len(viewer.layers)
    i = kinds.index(name)
    present = {layer.name: index for index, layer in enumerate(viewer.layers)}
    below = [present[k] for k in kinds[:i] if k in present]
    if below:
        return max(below) + 1
    above = [present[k] for k in kinds[i + 1 :] if k in present]
    return min(above) if above else len(viewer.layers)


def result_layer_steps(
    viewer: Any, items: list, image_name: str
) -> Generator[str, None, list[Any]]:
    """Put a result's layers in the viewer, one layer per step (a generator).

    Layers of an earlier run that the new result does not replace in place are removed
    first; an image layer already there with the same grid (e.g. the partial heatmaps
    of this run) gets the new data in place; the others are inserted in
    :data:`LAYER_KINDS` order. If a step fails, every layer this call added or updated
    is removed again before the error propagates, so no half-made result remains.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer.
    items : list
        Layer data tuples or ready napari layers, in :data:`LAYER_KINDS` order.
    image_name : str
        The scored image layer's name.

    Yields
    ------
    str
        What was done, after each removal, update or insertion (one event-loop slice
        of work).

    Returns
    -------
    list of napari layers
        The result's layers now in the viewer.
    """
    from napari.layers import Layer

    # Image layers are cheap to make here (their data is ready) and may be reused.
    items = [
        create_layer(item) if not isinstance(item, Layer) and item[2] == "image" else item
        for item in items
    ]
    names = [item.name if isinstance(item, Layer) else item[1].get("name") for item in items]
    reusable: dict[str, Any] = {}
    stale: list[Any] = []
    for kind in LAYER_KINDS:
        name = layer_name(image_name, kind)
        old = layer_by_name(viewer, name)
        if old is None:
            continue
        if name in names:
            item = items[names.index(name)]
            if isinstance(item, Layer) and _updatable(old, item):
                reusable[name] = old
                continue
        stale.append(old)
    if stale:
        remove_layers(viewer, stale)
        yield f"removed {len(stale)} layers of an earlier run"
    touched: list[Any] = []
    try:
        for item in items:
            new = item if isinstance(item, Layer) else create_layer(item)
            old = reusable.get(new.name)
            if old is not None:
                touched.append(old)
                update_image_layer(old, new)
                yield f"updated {new.name}"
            else:
                touched.append(new)
                yield from _insert_steps(viewer, new, image_name)
    except Exception:
        remove_layers(viewer, touched)
        raise
    return touched


def remove_layers(viewer: Any, layers: list[Any]) -> None:
    """Remove ``layers`` from the viewer in one batch.

    napari runs a full garbage collection after each removal (~0.2-0.3 s with napari
    and torch loaded); in a batch it runs one for all of them.
    """
    batch = getattr(viewer.layers, "batched_update", None)
    with batch() if batch is not None else contextlib.nullcontext():
        for layer in layers:
            if layer in viewer.layers:
                viewer.layers.remove(layer)


def _insert_steps(viewer: Any, layer: Any, image_name: str) -> Iterator[str]:
    """Insert a derived layer (see :func:`_insert`) hidden, and show it a step later.

    A new layer's first draw builds its shaders (~50 ms for an image, 0.1-0.2 s for a
    Shapes layer in software GL) and napari's insertion costs 40-100 ms more (vispy
    node, layer controls): split over two event-loop turns, they do not freeze the
    viewer together.
    """
    show = layer.visible
    if show:
        layer.visible = False
    _insert(viewer, layer, image_name)
    yield f"inserted {layer.name}"
    if show and layer in viewer.layers:
        layer.visible = True
        yield f"showed {layer.name}"


def _insert(viewer: Any, layer: Any, image_name: str) -> None:
    """Insert a derived layer in :data:`LAYER_KINDS` order; the scored image stays active.

    napari makes each inserted layer the only selected one, and the layer list, the
    layer controls and the viewer react (~20 ms in software GL); selecting the image
    again costs as much. When the image already is the one selected layer, both changes
    are made with the selection's events blocked: they cancel out, so no listener has
    anything to catch up on, and the insertion costs ~40 ms less.
    """
    index = _insert_index(viewer, layer.name, image_name)
    image = layer_by_name(viewer, image_name)
    selection = viewer.layers.selection
    if image is not None and selection.active is image and len(selection) == 1:
        with selection.events.blocker_all():
            viewer.layers.insert(index, layer)
            selection.active = image
        return
    viewer.layers.insert(index, layer)
    _reselect(viewer, image_name)


def _reselect(viewer: Any, image_name: str) -> None:
    """Make the scored image the active layer again (napari selects each new layer).

    Done right after each insertion, before the next paint: a selected Shapes layer
    draws its highlight too, and those visuals' shaders would be compiled for nothing.
    """
    image = layer_by_name(viewer, image_name)
    if image is not None and viewer.layers.selection.active is not image:
        viewer.layers.selection.active = image


def partial_layer_steps(
    viewer: Any, partial: PartialLayers, image_name: str, undo: list | None = None
) -> Generator[str, None, None]:
    """Show partial heatmaps: update the image layers in place or add them, one per step.

    Yields what was done after each step (as :func:`result_layer_steps`). ``undo``
    collects what :func:`undo_partial_layers` needs to take this back if the run is
    cancelled or fails: each layer inserted, and each earlier layer as it was before
    its first update.
    """
    for item in partial.images:
        new = create_layer(item)
        old = layer_by_name(viewer, new.name)
        if old is not None and _updatable(old, new):
            if undo is not None and all(layer is not old for layer, _ in undo):
                undo.append((old, (old.data, old.contrast_limits, old.contrast_limits_range)))
            update_image_layer(old, new)
            yield f"updated {new.name}"
            continue
        if old is not None:
            viewer.layers.remove(old)
            yield f"removed {new.name}"
        if undo is not None:
            undo.append((new, None))
        yield from _insert_steps(viewer, new, image_name)


def undo_partial_layers(viewer: Any, undo: list) -> None:
    """Take partial heatmaps out again (see :func:`partial_layer_steps`).

    Removes the layers they inserted and gives the layers they updated their earlier
    data and contrast limits.
    """
    remove_layers(viewer, [layer for layer, before in undo if before is None])
    for layer, before in undo:
        if before is not None and layer in viewer.layers:
            data, limits, limits_range = before
            layer.data = data
            layer.contrast_limits_range = limits_range
            layer.contrast_limits = limits


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

"""Helpers shared by the widgets, reader and sample data: geometry, devices, jobs.

Everything Qt-specific that more than one widget needs lives here so each widget module
stays a thin form around one core generator.

Over 500 lines on purpose: the job runner, the step queue that keeps the viewer
responsive and the layer pickers are what every widget shares; split by widget they
would be copied.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLineEdit, QPushButton, QWidget

from napari_anogan.errors import AnoganError

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

#: Key under which a layer's metadata keeps the physical spacing (slice, depth, width) in µm.
SPACING_KEY = "anogan_spacing"
#: Key under which the "patch scores" layer keeps the whole VolumeResult.
RESULT_KEY = "anogan_result"
#: Key under which derived layers name the image layer they belong to.
SOURCE_KEY = "anogan_image"


def scale_from_spacing(spacing: Sequence[float | None] | None, ndim: int = 3) -> tuple[float, ...]:
    """Turn a physical spacing into a napari ``scale``.

    Parameters
    ----------
    spacing : sequence of (float or None), or None
        Pixel size in µm along (slice, depth, width); None where unknown.
    ndim : int
        Dimensions of the layer (2 for a single B-scan, 3 for a volume).

    Returns
    -------
    tuple of float
        One value per layer axis. In-plane sizes are used only when both depth and width
        are known (mixing µm with pixels would distort the B-scan); an unknown slice
        spacing becomes the width spacing (or 1).
    """
    slice_um, depth_um, width_um = (list(spacing) + [None] * 3)[:3] if spacing else [None] * 3
    if depth_um and width_um and depth_um > 0 and width_um > 0:
        plane = (float(depth_um), float(width_um))
        first = float(slice_um) if slice_um and slice_um > 0 else float(width_um)
    else:
        plane = (1.0, 1.0)
        first = 1.0
    return (first, *plane)[-ndim:] if ndim <= 3 else (1.0,) * (ndim - 3) + (first, *plane)


def spacing_of_layer(layer: Any) -> tuple[float | None, float | None, float | None]:
    """Physical spacing (slice, depth, width) of a layer: metadata first, then its scale.

    A layer whose scale is all ones has no known spacing (None, None, None).
    """
    stored = (getattr(layer, "metadata", None) or {}).get(SPACING_KEY)
    if stored is not None:
        return tuple(stored)  # type: ignore[return-value]
    scale = [float(s) for s in getattr(layer, "scale", ())][-3:]
    if not scale or all(abs(s - 1.0) < 1e-12 for s in scale):
        return (None, None, None)
    scale = [1.0] * (3 - len(scale)) + scale
    return (scale[0], scale[1], scale[2])


def volume_from_layer(layer: Any):
    """Build a core :class:`~napari_anogan.io.volume.Volume` from a napari image layer.

    Parameters
    ----------
    layer : napari.layers.Image
        A 2-D (H, W) or 3-D (S, H, W) grey image layer.

    Raises
    ------
    AnoganError
        If the layer is RGB, multiscale or not 2-D/3-D.
    """
    from napari_anogan.errors import InputError
    from napari_anogan.io.volume import Volume

    if getattr(layer, "rgb", False):
        raise InputError(f"layer {layer.name!r} is RGB; OCT scans must be grey-scale")
    if getattr(layer, "multiscale", False):
        raise InputError(f"layer {layer.name!r} is multiscale; open the full-resolution data")
    data = np.asarray(layer.data)
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3:
        raise InputError(
            f"layer {layer.name!r} has {data.ndim} dimensions; expected a B-scan (H, W) "
            "or a volume (S, H, W)"
        )
    source = getattr(getattr(layer, "source", None), "path", None) or ""
    return Volume(
        data=data,
        spacing=spacing_of_layer(layer),
        source=str(source),
        name=layer.name,
        metadata={"layer": layer.name},
    )


def bundled_model_path() -> Path | None:
    """Path of the bundled small model, or None when this installation lacks it."""
    try:
        from napari_anogan.resources import BUNDLED_MODEL, sample_path

        return sample_path(BUNDLED_MODEL)
    except AnoganError:
        return None


def device_choices() -> list[tuple[str, str]]:
    """Devices the user can pick, as (label, value) pairs; ``auto`` first.

    The ``auto`` label names the GPU when one is present, so the user sees it is used.
    """
    try:
        import torch

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken CUDA setup must not break the widget
        logger.debug("CUDA query failed", exc_info=True)
        gpus = []
    auto = f"auto (GPU: {gpus[0]})" if gpus else "auto (CPU, no GPU found)"
    choices = [(auto, "auto"), ("cpu", "cpu")]
    choices += [(f"cuda:{i} ({name})", f"cuda:{i}") for i, name in enumerate(gpus)]
    return choices


def notify_error(exc: BaseException, what: str) -> str:
    """Show an error as a napari notification (and log it); return the message shown.

    A project error (:class:`AnoganError`) is the user's to fix: its message is shown as
    is. Anything else is a bug: logged with its traceback and shown with its type. The
    notification may be cut off; widgets show the returned message in full, in a label.
    """
    if isinstance(exc, AnoganError):
        logger.warning("%s failed: %s", what, exc)
        message = f"{what} failed: {exc}"
    else:
        logger.error("%s failed", what, exc_info=(type(exc), exc, exc.__traceback__))
        message = f"{what} failed ({type(exc).__name__}): {exc}"
    show_error(message)
    return message


def notify_info(message: str) -> None:
    """Show a short information notification."""
    logger.info(message)
    show_info(message)


class _WorkerRuntimeError(Exception):
    """A job's RuntimeError, carried out of the worker thread under another type.

    superqt takes a RuntimeError that ends a worker for a sign that its Qt object was
    deleted: it only warns, and emits neither ``errored`` nor ``finished``, so the widget
    would wait for its job for ever. :class:`Job` unwraps it again before reporting.
    """


class Job:
    """One long core job (a generator of progress events) run in a napari worker.

    Parameters
    ----------
    what : str
        Name of the job for messages ("Training", "Scoring").
    on_event : callable
        Called in the GUI thread with each yielded event.
    on_result : callable
        Called in the GUI thread with the generator's return value.
    on_finish : callable
        Called in the GUI thread when the job ends in any way (result, error, cancel),
        with the outcome: ``"done"``, ``"error"`` or ``"cancelled"``.

    Notes
    -----
    Cancel is ``worker.quit()``: the worker stops at the next ``yield`` of the core
    generator; the generator is then closed (``GeneratorExit`` at its ``yield``) so the
    core can clean up. superqt returns a ``RuntimeError`` raised by the job as a value
    instead of emitting ``errored``; that case is turned back into an error here.
    """

    def __init__(
        self,
        what: str,
        on_event: Callable[[Any], None],
        on_result: Callable[[Any], None],
        on_finish: Callable[[str], None],
    ) -> None:
        self.what = what
        self._on_event = on_event
        self._on_result = on_result
        self._on_finish = on_finish
        self.worker: Any = None
        self._gen: Generator | None = None
        self._outcome = "done"
        #: The message of the last job's error ("" if none), for the widget's label.
        self.error = ""

    @property
    def running(self) -> bool:
        """Whether a worker is active."""
        return self.worker is not None

    def start(self, job: Callable[..., Generator], *args: Any, **kwargs: Any) -> Any:
        """Start ``job(*args, **kwargs)`` (a generator function) in a worker thread."""
        from napari.qt.threading import create_worker

        if self.running:
            raise RuntimeError(f"{self.what} is already running")
        self._outcome = "done"
        self._gen = None
        self.error = ""

        def run() -> Generator:
            gen = job(*args, **kwargs)
            self._gen = gen
            try:
                result = yield from gen
            except RuntimeError as exc:  # torch's usual error type (out of memory, ...)
                raise _WorkerRuntimeError(str(exc)) from exc
            return result

        worker = create_worker(run, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._returned)
        worker.errored.connect(self._errored)
        worker.aborted.connect(self._aborted)
        worker.finished.connect(self._finished)
        self.worker = worker
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the worker to stop at the next yield."""
        if self.worker is not None:
            self.worker.quit()

    def _returned(self, value: Any) -> None:
        try:
            self._on_result(value)
        except Exception as exc:  # turning a result into layers failed: report, stay usable
            self._errored(exc)

    def _errored(self, exc: BaseException) -> None:
        self._outcome = "error"
        if isinstance(exc, _WorkerRuntimeError) and exc.__cause__ is not None:
            exc = exc.__cause__
        self.error = notify_error(exc, self.what)

    def _aborted(self) -> None:
        self._outcome = "cancelled"

    def _finished(self) -> None:
        gen, self._gen = self._gen, None
        if gen is not None:
            try:
                gen.close()  # the worker thread is done with it: let the core clean up
            except Exception as exc:
                logger.warning("closing the %s job failed: %s", self.what, exc)
        self.worker = None
        self._on_finish(self._outcome)


class StepQueue(QObject):
    """Run GUI-thread work in small steps between event-loop turns.

    Each task is a generator function whose every ``yield`` ends one step (adding one
    layer, updating one layer's data). Steps run from a timer, as many per turn as fit
    in ``budget_ms``, so the event loop (painting, input, other timers) runs between
    them and no single slice of layer work freezes the viewer for long.

    Parameters
    ----------
    budget_ms : float
        Steps run back to back in one turn until this much time has passed; a step
        longer than that gets a turn of its own (0: one step per turn).
    pause_ms : int
        Time between turns, left to the event loop (input, other timers, painting the
        previous step's change) so it is never starved by a chain of steps.
    parent : QObject, optional
        Owner; the queue's timer stops when it is deleted.

    Notes
    -----
    A task submitted with the ``key`` of a task that has not started yet replaces it
    (the newest partial heatmaps win; stale ones are never drawn). Tasks run in the
    order submitted; a task starts (its generator function is called) only when the
    one before it has ended, so it sees the layers as they are then.

    :attr:`idle` is a :class:`threading.Event` set while nothing is queued: a worker
    thread can wait on it between its own steps, so the GUI thread gets the CPU and
    the GIL for its layer work (one core and Python's GIL are shared with torch).
    """

    def __init__(
        self, budget_ms: float = 25.0, pause_ms: int = 0, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.budget_s = budget_ms / 1000.0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(pause_ms))
        self._timer.timeout.connect(self._turn)
        self._pending: list[tuple[str, Callable[[], Iterator[Any]], Callable, Callable]] = []
        self._current: tuple[str, Iterator[Any], Callable, Callable] | None = None
        self._idle_callbacks: list[Callable[[], None]] = []
        #: What the last step reported (the value its generator yielded), for logs.
        self.last_step: Any = None
        #: Set while no task is running or waiting (see the class notes).
        self.idle = threading.Event()
        self.idle.set()

    @property
    def current_key(self) -> str | None:
        """Key of the running task, else of the next waiting one, else None."""
        if self._current is not None:
            return self._current[0]
        return self._pending[0][0] if self._pending else None

    @property
    def busy(self) -> bool:
        """Whether a task is running or waiting."""
        return self._current is not None or bool(self._pending)

    def submit(
        self,
        key: str,
        task: Callable[[], Iterator[Any]],
        on_done: Callable[[], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Queue ``task`` (a generator function); replace a waiting task with ``key``.

        ``on_done`` is called when the task's generator ends, ``on_error`` with the
        exception when a step raises (the task is then dropped); without ``on_error``
        the exception is logged.
        """
        entry = (key, task, on_done or _nothing, on_error or _log_step_error)
        for i, (waiting, *_) in enumerate(self._pending):
            if waiting == key:
                self._pending[i] = entry
                break
        else:
            self._pending.append(entry)
        self.idle.clear()
        self._timer.start()

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once every queued task has ended (now, if none is queued)."""
        if self.busy:
            self._idle_callbacks.append(callback)
        else:
            callback()

    def run_all(self) -> None:
        """Run every queued task to its end now (tests, closing)."""
        while self.busy:
            self._step()
        self._timer.stop()
        self._notify_idle()

    def _turn(self) -> None:
        start = time.perf_counter()
        while self.busy:  # at least one step, more while the budget lasts
            self._step()
            if time.perf_counter() - start >= self.budget_s:
                break
        if self.busy:
            self._timer.start()
        else:
            self._notify_idle()

    def _step(self) -> None:
        if self._current is None:
            key, task, on_done, on_error = self._pending.pop(0)
            try:
                self._current = (key, iter(task()), on_done, on_error)
            except Exception as exc:
                on_error(exc)
                return
        _, steps, on_done, on_error = self._current
        try:
            self.last_step = next(steps)
        except StopIteration:
            self._current = None
            on_done()
        except Exception as exc:
            self._current = None
            on_error(exc)

    def _notify_idle(self) -> None:
        self.idle.set()
        callbacks, self._idle_callbacks = self._idle_callbacks, []
        for callback in callbacks:
            callback()


def _nothing() -> None:
    return None


def _log_step_error(exc: BaseException) -> None:
    logger.error("layer update failed", exc_info=(type(exc), exc, exc.__traceback__))


def show_progress(bar: Any, label: Any, progress: Any) -> None:
    """Show a :class:`~napari_anogan.progress.Progress` in a progress bar and its label.

    The bar shows the stage and its share done (a busy indicator while unknown); the
    label the whole line: stage, share, what is being done, estimated time left.
    """
    if progress.fraction is None:
        bar.setRange(0, 0)
    else:
        bar.setRange(0, 1000)
        bar.setValue(round(1000 * progress.fraction))
    bar.setFormat(f"{progress.stage}: %p%")
    label.setText(progress.text())


def layer_by_name(viewer: napari.Viewer, name: str) -> Any | None:
    """Return the layer called ``name`` in ``viewer``, or None."""
    return viewer.layers[name] if name in viewer.layers else None  # noqa: SIM401


class LayerCombo(QComboBox):
    """A combo box listing the viewer's layers of some types, kept up to date.

    Parameters
    ----------
    viewer : napari.Viewer
        Viewer whose layer list is followed.
    layer_types : tuple of type
        Layer classes to list (e.g. ``(napari.layers.Image,)``).
    accept : callable, optional
        Extra filter on a layer (e.g. only grey images, only result layers).
    allow_none : bool
        Add a first empty entry.
    """

    def __init__(
        self,
        viewer: napari.Viewer,
        layer_types: tuple[type, ...],
        accept: Callable[[Any], bool] | None = None,
        allow_none: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._types = layer_types
        self._accept = accept or (lambda layer: True)
        self._allow_none = allow_none
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _layers(self) -> list[Any]:
        return [
            layer
            for layer in self._viewer.layers
            if isinstance(layer, self._types) and self._accept(layer)
        ]

    def refresh(self, event: Any = None) -> None:
        """Re-list the layers, keeping the current choice when it still exists."""
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self.refresh)
        try:
            self._refill()
        except RuntimeError:  # the Qt widget was deleted while the viewer lives on
            logger.debug("layer combo gone", exc_info=True)

    def _refill(self) -> None:
        current = self.currentText()
        names = [layer.name for layer in self._layers()]
        self.blockSignals(True)
        self.clear()
        if self._allow_none:
            self.addItem("")
        self.addItems(names)
        index = self.findText(current)
        if index < 0 and names:
            # a new matching layer: select the most recently added one (top of the list)
            index = self.findText(names[-1])
        self.setCurrentIndex(max(index, 0))
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentTextChanged.emit(self.currentText())

    def layer(self) -> Any | None:
        """Return the selected layer, or None."""
        name = self.currentText()
        for layer in self._layers():
            if layer.name == name:
                return layer
        return None


def browse_row(edit: QLineEdit, button_text: str, on_click: Callable[[], None]) -> QWidget:
    """Build a line edit with a small browse button beside it, as one row widget."""
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(edit)
    button = QPushButton(button_text)
    button.setMaximumWidth(32)
    button.clicked.connect(on_click)
    layout.addWidget(button)
    return row


def is_result_layer(layer: Any) -> bool:
    """Whether a layer is the "patch scores" layer holding a scoring result."""
    return RESULT_KEY in (getattr(layer, "metadata", None) or {})


def camera_of(viewer: Any) -> Any:
    """Return the camera: ``viewer.scene.camera`` (napari >= 0.9) or ``viewer.camera``."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def canvas_size(viewer: Any) -> np.ndarray:
    """Canvas size (height, width) in screen pixels."""
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None)
    if size is None:  # napari < 0.9
        size = getattr(viewer, "_canvas_size", (600, 800))
    return np.asarray(size, dtype=float)


def zoom_to_box(viewer: Any, world_lo: Sequence[float], world_hi: Sequence[float]) -> None:
    """Centre the 2-D view on a world box and zoom so it fills about 60 % of the canvas."""
    lo = np.asarray(world_lo, dtype=float)[-2:]
    hi = np.asarray(world_hi, dtype=float)[-2:]
    camera = camera_of(viewer)
    camera.center = tuple((lo + hi) / 2.0)
    extent = np.abs(hi - lo) * 1.6
    size = canvas_size(viewer)
    if np.all(extent > 0) and np.all(size > 0):
        camera.zoom = float(np.min(size / extent))

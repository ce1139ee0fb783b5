"""Typed progress events yielded by long jobs (training, latent mapping).

Long jobs are Python generators: they ``yield`` small :class:`ProgressEvent` objects
and ``return`` their result. The CLI drains them with :func:`drain`; the napari widgets
wrap the same generator in ``thread_worker`` (``worker.quit()`` cancels at the next
``yield``). Nothing here imports napari or Qt.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import numpy as np

__all__ = ["EventKind", "ProgressEvent", "drain"]

R = TypeVar("R")


class EventKind(str, Enum):
    """What a :class:`ProgressEvent` reports."""

    EPOCH_START = "epoch_start"
    """A training epoch begins (``step`` = epoch index, 0-based; ``total`` = epochs)."""
    BATCH = "batch"
    """One training batch done (``step`` = batch in epoch, 1-based; ``losses`` set)."""
    EPOCH_END = "epoch_end"
    """A training epoch ended (``losses`` = means over the epoch)."""
    SAMPLES = "samples"
    """``samples`` holds a grid image of G(fixed z)."""
    CHECKPOINT = "checkpoint"
    """The checkpoint was written (``message`` = path)."""
    REFERENCE = "reference"
    """The healthy reference score distribution is being computed."""
    MAPPING_STEP = "mapping_step"
    """Latent mapping progress (``step`` of ``total`` optimisation steps, all batches)."""
    MAPPING_BATCH = "mapping_batch"
    """A mapping batch finished (``step`` = patches done of ``total``)."""
    STAGE = "stage"
    """A pipeline stage begins (``message`` names it, e.g. "preprocessing")."""
    DONE = "done"
    """The job finished; its result follows as the generator's return value."""


@dataclass
class ProgressEvent:
    """One progress report of a long job.

    Parameters
    ----------
    kind : EventKind
        What happened.
    step : int
        Progress counter, meaning depends on ``kind`` (see :class:`EventKind`).
    total : int
        Value of ``step`` when this phase is complete (0 if unknown).
    message : str
        Short human-readable text.
    epoch : int or None
        Training epoch (0-based) the event belongs to, if any.
    losses : dict of str to float
        Named scalar losses/metrics (e.g. ``d_loss``, ``g_loss``, ``d_real``).
    samples : ndarray or None
        Small float32 image (a grid of generated patches in [-1, 1]) for display.
    partial : object or None
        A partial result while a job runs (e.g. the patches mapped so far, or a
        :class:`~napari_anogan.pipeline.VolumeResult` with the heatmaps so far).
    """

    kind: EventKind
    step: int
    total: int
    message: str = ""
    epoch: int | None = None
    losses: dict[str, float] = field(default_factory=dict)
    samples: np.ndarray | None = None
    partial: Any = None

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] within this phase (0 if ``total`` is unknown)."""
        return float(self.step) / self.total if self.total > 0 else 0.0


def drain(
    gen: Generator[ProgressEvent, None, R],
    callback: Callable[[ProgressEvent], None] | None = None,
) -> R:
    """Run a progress-event generator to completion and return its result.

    Parameters
    ----------
    gen : generator of ProgressEvent
        A long job such as ``train_gan(...)`` or ``map_to_latent(...)``.
    callback : callable, optional
        Called with every event (e.g. to update a progress bar).

    Returns
    -------
    object
        The generator's return value (``StopIteration.value``).

    Examples
    --------
    >>> def job():
    ...     yield ProgressEvent(EventKind.DONE, 1, 1)
    ...     return 42
    >>> drain(job())
    42
    """
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)

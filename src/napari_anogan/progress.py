"""Progress as a person reads it: stage, a fraction that only moves forward, time left.

A long job yields :class:`~napari_anogan.events.ProgressEvent` objects whose ``step`` and
``total`` mean different things from one kind to the next (B-scans preprocessed,
patch-steps of the latent search, patches scored, batches of an epoch). Shown as they
come, a bar jumps back from 93 % to 0 % and reports rates of a million "steps" a second.
:class:`ProgressTracker` turns them into one :class:`Progress` per event: the stage the
job is in (``preprocess``, ``map``, ``write``, ``train GAN``, ``reference``, ...), the
fraction of that stage done (never lower than before within the stage), a detail line
("epoch 3/20, batch 12/45") and an estimate of the time the stage still needs, measured
from its first reports. The command line's bars and the widgets' progress bars all show
this, so every front end says the same thing. Nothing here imports napari or Qt.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from napari_anogan import settings as defaults
from napari_anogan.events import EventKind, ProgressEvent

__all__ = ["Progress", "ProgressTracker", "format_duration"]

#: Stage names of STAGE events, by the first words of their message.
STAGE_PREFIXES = (
    ("preprocessing", "preprocess"),
    ("writing", "write"),
    ("feature bank", "feature bank"),
    ("figures", "figures"),
)

#: Events that belong to whatever stage is running (they start none of their own).
_FOLLOWERS = frozenset({EventKind.SAMPLES, EventKind.CHECKPOINT, EventKind.DONE})
_TRAINING = frozenset({EventKind.EPOCH_START, EventKind.BATCH, EventKind.EPOCH_END})
_MAPPING = frozenset({EventKind.MAPPING_STEP, EventKind.MAPPING_BATCH})


def format_duration(seconds: float) -> str:
    """Return a duration as people say it: ``"45 s"``, ``"3 min 20 s"``, ``"2 h 05 min"``.

    Examples
    --------
    >>> format_duration(200)
    '3 min 20 s'
    """
    seconds = max(0, round(float(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass(frozen=True)
class Progress:
    """Where a job stands, for a progress bar.

    Attributes
    ----------
    stage : str
        The running stage, e.g. ``"map"`` or ``"train GAN"``.
    fraction : float or None
        Share of the stage done, in [0, 1], never lower than before in the same stage;
        None while unknown (a busy indicator).
    detail : str
        What is being done, e.g. ``"mapped 1200/4800 patches"`` or ``"epoch 3/20, batch
        12/45"``.
    eta_s : float or None
        Estimated seconds the stage still needs (None until it can be estimated).
    elapsed_s : float
        Seconds since the stage began.
    stage_number : int
        1 for the first stage of the job, 2 for the next one, ...
    new_stage : bool
        Whether this event began the stage.
    previous_s : float or None
        With ``new_stage``: how long the stage before took (None for the first).
    """

    stage: str
    fraction: float | None
    detail: str
    eta_s: float | None
    elapsed_s: float
    stage_number: int
    new_stage: bool
    previous_s: float | None = None

    @property
    def percent(self) -> int | None:
        """Whole percent of the stage done (None while unknown)."""
        return None if self.fraction is None else math.floor(100 * self.fraction)

    def eta_text(self) -> str:
        """Return ``"about 3 min 20 s left"``; ``""`` before an estimate, or under 1 s."""
        if self.eta_s is None or self.eta_s < 1.0:
            return ""
        return f"about {format_duration(self.eta_s)} left"

    def text(self) -> str:
        """One line: ``"map 43 % · mapped 1200/4800 patches · about 1 min 05 s left"``."""
        head = self.stage if self.percent is None else f"{self.stage} {self.percent} %"
        return " · ".join(part for part in (head, self.detail, self.eta_text()) if part)


class ProgressTracker:
    """Turn a job's progress events into :class:`Progress` (stage, fraction, time left).

    Parameters
    ----------
    clock : callable, optional
        Seconds of a monotonic clock (tests pass a fake one).
    eta_min_s : float
        A stage's time left is estimated once its progress has been timed this long.

    Notes
    -----
    Stages: a ``STAGE`` event names one by its message (``"preprocessing x"`` is
    ``preprocess``, ``"writing ..."`` is ``write``); training epochs are ``train GAN``
    or, when their message says so, ``train encoder``; the latent search is ``map``, or
    ``reference`` after a ``REFERENCE`` event; samples, checkpoints and ``DONE`` belong
    to the running stage.

    Fractions: epochs count whole epochs plus the batches of the running one; the latent
    search counts patch-steps (``MAPPING_STEP``) and scored patches (``MAPPING_BATCH``),
    whichever is further; a stage event counts its ``step`` of ``total``, else it is
    unknown. Within a stage the fraction never goes down.

    Time left: from the rate of progress since the stage's first report with some
    progress (so the first batch, which warms up, is not timed), once that has run
    ``eta_min_s`` seconds: (1 - fraction) / rate.

    Examples
    --------
    >>> clock = iter([0.0, 1.0, 5.0]).__next__
    >>> tracker = ProgressTracker(clock=clock, eta_min_s=1.0)
    >>> tracker.update(ProgressEvent(EventKind.MAPPING_BATCH, 10, 100)).text()
    'map 10 % · 10/100'
    >>> tracker.update(ProgressEvent(EventKind.MAPPING_BATCH, 20, 100)).fraction
    0.2
    >>> tracker.update(ProgressEvent(EventKind.MAPPING_BATCH, 60, 100)).eta_s
    4.0
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        eta_min_s: float = defaults.ETA_MIN_S,
    ) -> None:
        self._clock = clock
        self._eta_min_s = float(eta_min_s)
        self.stage = ""
        self.stage_number = 0
        self._fraction: float | None = None
        self._detail = ""
        self._stage_start = 0.0
        self._first: tuple[float, float] | None = None  # (time, fraction) of first progress
        self._epochs = 0
        self.last: Progress | None = None

    # ----------------------------------------------------------------- stages
    def _stage_of(self, event: ProgressEvent) -> str:
        kind = EventKind(event.kind)
        message = (getattr(event, "message", "") or "").strip()
        if kind == EventKind.STAGE:
            lower = message.lower()
            for prefix, name in STAGE_PREFIXES:
                if lower.startswith(prefix):
                    return name
            return message.split(" of ")[0] or "working"
        if kind in _TRAINING:
            return "train encoder" if message.lower().startswith("encoder") else "train GAN"
        if kind == EventKind.REFERENCE:
            return "reference"
        if kind in _MAPPING:
            return self.stage if self.stage == "reference" else "map"
        return self.stage or "working"

    def _begin(self, stage: str, now: float) -> None:
        self.stage = stage
        self.stage_number += 1
        self._fraction = None
        self._detail = ""
        self._stage_start = now
        self._first = None

    # ----------------------------------------------------------------- fractions
    def _fraction_of(self, event: ProgressEvent) -> float | None:
        kind = EventKind(event.kind)
        step, total = float(event.step), float(event.total)
        if kind == EventKind.EPOCH_START and total > 0:
            self._epochs = int(total)
            return step / total
        if kind == EventKind.EPOCH_END and total > 0:
            self._epochs = int(total)
            return step / total
        epoch = getattr(event, "epoch", None)
        if kind == EventKind.BATCH and total > 0 and self._epochs and epoch is not None:
            return (epoch + step / total) / self._epochs
        if kind in _MAPPING and total > 0:
            return step / total
        if kind == EventKind.STAGE and total > 0:
            return step / total
        if kind == EventKind.DONE:
            return 1.0
        return None

    def _detail_of(self, event: ProgressEvent) -> str:
        kind = EventKind(event.kind)
        epoch = getattr(event, "epoch", None)
        message = getattr(event, "message", "") or ""
        if kind == EventKind.BATCH and epoch is not None and self._epochs:
            return f"epoch {epoch + 1}/{self._epochs}, batch {event.step}/{event.total}"
        if kind == EventKind.MAPPING_STEP:
            # patches scored say more than the search's step count (chunk-relative)
            return self._detail or "searching the latent codes"
        if kind == EventKind.MAPPING_BATCH:
            return message or f"{event.step}/{event.total}"
        if kind in (EventKind.SAMPLES, EventKind.CHECKPOINT):
            return self._detail
        return message or self._detail

    # ----------------------------------------------------------------- update
    def update(self, event: ProgressEvent) -> Progress:
        """Take one event; return the progress to show.

        Parameters
        ----------
        event : ProgressEvent
            The job's latest event.

        Returns
        -------
        Progress
        """
        now = self._clock()
        kind = EventKind(event.kind)
        stage = self.stage if kind in _FOLLOWERS and self.stage else self._stage_of(event)
        new_stage = stage != self.stage or self.stage_number == 0
        previous = None
        if new_stage:
            previous = None if self.stage_number == 0 else now - self._stage_start
            self._begin(stage, now)
        fraction = self._fraction_of(event)
        if fraction is not None:
            fraction = min(max(fraction, 0.0), 1.0)
            if self._fraction is not None:
                fraction = max(fraction, self._fraction)
            self._fraction = fraction
            if self._first is None and fraction > 0 and kind != EventKind.DONE:
                self._first = (now, fraction)
        self._detail = self._detail_of(event)
        progress = Progress(
            stage=self.stage,
            fraction=self._fraction,
            detail=self._detail,
            eta_s=self._eta(now),
            elapsed_s=now - self._stage_start,
            stage_number=self.stage_number,
            new_stage=new_stage,
            previous_s=previous,
        )
        self.last = progress
        return progress

    def stage_seconds(self) -> float:
        """Return how long the running stage has taken so far."""
        return self._clock() - self._stage_start if self.stage_number else 0.0

    def _eta(self, now: float) -> float | None:
        if self._first is None or self._fraction is None:
            return None
        t0, f0 = self._first
        timed, done = now - t0, self._fraction - f0
        if self._fraction >= 1.0:
            return 0.0
        if timed < self._eta_min_s or done <= 0:
            return None
        return (1.0 - self._fraction) * timed / done

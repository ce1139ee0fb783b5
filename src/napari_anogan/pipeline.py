"""End-to-end jobs that the CLI and the widgets both call.

CONTRACT (being implemented): signatures below are stable; bodies land shortly.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PATCH_COLUMNS = (
    "slice",
    "row",
    "col",
    "height",
    "width",
    "residual_score",
    "discrimination_score",
    "anomaly_score",
    "reference_discrimination_score",
    "discriminator_output",
    "healthy_percentile",
)


@dataclass
class ScoreSettings:
    """How a volume is scored (mapping and patch grid)."""

    mode: str = "iterative"  # iterative | encoder | hybrid (fast modes: later issue)
    steps: int = 500  # mapping steps (paper: 500)
    lam: float = 0.1  # lambda of eq. (5)/(6)
    stride: int = 32  # patch grid stride in the flattened band
    batch_size: int = 256
    device: str = "auto"
    seed: int = 0
    percentile_threshold: float = 99.0  # candidates: patches above this healthy percentile


@dataclass
class VolumeResult:
    """Everything scoring produces for one volume, in the RAW pixel grid of the input."""

    name: str
    shape: tuple[int, int, int]
    reconstruction: np.ndarray  # (S,H,W) float32 G(z) in raw grey units, NaN where no patch
    residual: np.ndarray  # (S,H,W) float32 |x - G(z)| heatmap (normalised units), 0 where no patch
    patches: dict[str, np.ndarray]  # columns PATCH_COLUMNS (raw boxes) + flat_row, flat_col
    bscan_scores: np.ndarray  # (S,) NaN for slices not scored
    volume_score: float
    ilm: np.ndarray  # (S,W) raw rows
    bm: np.ndarray  # (S,W) raw rows
    en_face: np.ndarray  # (S,W) anomaly projected over depth
    candidates: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)


def score_volume(
    volume,
    model,
    settings: ScoreSettings | None = None,
    *,
    slices: Sequence[int] | None = None,
    boxes: Sequence[tuple[int, int, int, int, int]] | None = None,
) -> Generator:
    """Score a volume; generator of ProgressEvent returning a VolumeResult.

    ``model`` is a LoadedModel or a checkpoint path; ``slices`` restricts scoring to those
    B-scans; ``boxes`` (slice, row0, col0, row1, col1 in raw pixels) to those regions.
    """
    raise NotImplementedError


def train_from_paths(
    paths: Sequence[str | Path],
    output: str | Path,
    **options,
) -> Generator:
    """Train a healthy model from files/folders; generator of ProgressEvent returning TrainResult."""
    raise NotImplementedError

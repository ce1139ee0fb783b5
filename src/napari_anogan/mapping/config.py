"""Settings and result of the latent mapping (defaults from :mod:`napari_anogan.settings`)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from napari_anogan import settings as defaults
from napari_anogan.errors import AnoganError
from napari_anogan.scoring.scores import PATCH_SCORE_NAMES

logger = logging.getLogger(__name__)


MAPPING_MODES = ("iterative", "encoder", "hybrid")
"""Mapping modes: the paper's random-start search, the encoder alone, encoder + search."""


ENCODER_MODES = ("encoder", "hybrid")


DISCRIMINATION_LOSSES = ("feature", "reference")


ADAM_BETAS = (0.9, 0.999)


ADAM_EPS = 1e-8


@dataclass
class MappingConfig:
    """Settings of the latent mapping.

    Parameters
    ----------
    steps : int
        Optimisation steps Gamma of the ``iterative`` mode (paper: 500). 0 scores the
        random start.
    lam : float
        Weight lambda of the discrimination loss in eq. (5) and (6) (paper: 0.1).
    lr : float
        Adam learning rate for z (both searching modes; 0.05 also measured best for the
        hybrid mode's refinement, against 0.01, 0.02 and 0.1).
    discrimination : str
        ``"feature"``: feature-matching loss on D's last conv layer (eq. 4, AnoGAN);
        ``"reference"``: sigmoid cross-entropy of D(G(z)) with target 1 (Yeh et al.,
        the paper's GAN_R baseline).
    mode : str
        ``"iterative"`` (the paper), ``"encoder"`` (z = E(x)) or ``"hybrid"`` (E(x), then
        ``hybrid_steps`` steps). The encoder modes need an encoder; ``hybrid`` without
        one falls back to ``iterative`` with a warning.
    hybrid_steps : int
        Optimisation steps K after the encoder start in the ``hybrid`` mode.
    early_stop : bool
        Freeze a patch when its loss stops improving (see ``tolerance``, ``patience``).
    tolerance : float
        Relative improvement that counts: a step improves a patch if its loss drops below
        ``(1 - tolerance) * best loss so far``.
    patience : int or None
        Steps without such an improvement after which a patch is frozen. None (default):
        10 % of the mode's steps, at least 3 (iterative-500: 50, hybrid-10: 3). Measured
        on the synthetic test set: a random-start search has long plateaus, and 5 or 10
        steps froze patches far too early (patch AUC 0.60-0.62 against 0.69); 50 costs
        under 0.3 % in loss. The hybrid search starts close: 3 steps saved 35 % of its
        steps at unchanged AUC.
    keep_best : bool
        Return the iterate with the lowest loss (the last one included, compared in the
        search's precision) instead of the last iterate. The paper returns the last
        iterate z_Gamma (False); True never scores a patch worse than its best point,
        which matters with early stopping and an encoder start (hybrid is then never
        worse than the encoder in loss).
    batch_size : int
        Patches optimised together; bounds memory (activations of G and D for a pool).
    seed : int
        Seed of the random start z ~ U[-1, 1] (per patch, independent of batch size).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    amp : bool or None
        Mixed precision for the search (the final scores are always float32): bf16
        autocast (fp16 on GPUs without bf16). None: on CUDA, and on CPUs with AMX
        (Intel Sapphire Rapids and later), where bf16 measured 2.6-3x faster per step at
        unchanged patch AUC; off on other CPUs (on AVX2-only CPUs bf16 is ~20x slower).
    compile : bool
        ``torch.compile`` the search's forward pass (pays a compile time per run; only
        worth it for long runs, measure with ``benchmarks/bench_mapping.py --compile``).
    report_every : int
        Steps between events that carry mean losses (other steps yield a loss-less event,
        so cancelling is honoured after every step).
    keep_images : bool
        Return reconstructions and residual images (N x P x P each); False saves memory.
    """

    steps: int = defaults.MAPPING_STEPS
    lam: float = defaults.PAPER_LAM
    lr: float = defaults.MAPPING_LR
    discrimination: str = "feature"
    mode: str = "iterative"  # the paper's; scoring's default is defaults.MAPPING_MODE
    hybrid_steps: int = defaults.HYBRID_STEPS
    early_stop: bool = defaults.EARLY_STOP
    tolerance: float = defaults.TOLERANCE
    patience: int | None = None
    keep_best: bool = True
    batch_size: int = defaults.SCORE_BATCH_SIZE
    seed: int = defaults.SEED
    device: str = defaults.DEVICE
    amp: bool | None = None
    compile: bool = False
    report_every: int = 10
    keep_images: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in MAPPING_MODES:
            problems.append(f"mode must be one of {MAPPING_MODES}, got {self.mode!r}")
        if self.steps < 0 or self.hybrid_steps < 0:
            problems.append(
                f"steps and hybrid_steps must be >= 0, got {self.steps}, {self.hybrid_steps}"
            )
        if not 0.0 <= self.lam <= 1.0:
            problems.append(f"lam must be in [0, 1], got {self.lam}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.discrimination not in DISCRIMINATION_LOSSES:
            problems.append(
                f"discrimination must be one of {DISCRIMINATION_LOSSES}, "
                f"got {self.discrimination!r}"
            )
        if not 0.0 <= self.tolerance < 1.0:
            problems.append(f"tolerance must be in [0, 1), got {self.tolerance}")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience must be >= 1, got {self.patience}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.report_every < 1:
            problems.append(f"report_every must be >= 1, got {self.report_every}")
        if problems:
            raise AnoganError("invalid mapping config: " + "; ".join(problems))

    @property
    def n_steps(self) -> int:
        """Optimisation steps of the chosen mode (``encoder``: 0)."""
        return {"iterative": self.steps, "hybrid": self.hybrid_steps}.get(self.mode, 0)

    @property
    def patience_steps(self) -> int:
        """Early-stopping patience in steps (see ``patience``)."""
        if self.patience is not None:
            return self.patience
        return max(3, -(-self.n_steps // 10))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MappingConfig:
        """Build from :meth:`to_dict` output; unknown keys raise :class:`AnoganError`."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise AnoganError(f"unknown mapping config keys: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        """Return the config as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass
class MappingResult:
    """Latent codes, reconstructions and scores of mapped patches (N patches).

    Scores are float64 and come from one clean float32 forward pass at the returned z, so
    they are exactly the scores of ``z`` (eq. 6: ``A = (1 - lam) R + lam D``).

    Attributes
    ----------
    z : (N, z_dim) float32 ndarray
        The mapped codes, in the prior's range [-1, 1].
    reconstruction : (N, C, P, P) float32 ndarray or None
        G(z) (None if ``keep_images`` was False).
    residual_image : (N, C, P, P) float32 ndarray or None
        |x - G(z)|, the paper's x_R for locating anomalies.
    residual_score : (N,) ndarray
        R(x) = sum |x - G(z)| (eq. 3).
    discrimination_score : (N,) ndarray
        D(x) = sum |f(x) - f(G(z))| (eq. 4).
    reference_discrimination_score : (N,) ndarray
        D^(x) = sigmoid cross-entropy of D(G(z)) with target 1 (Yeh et al.).
    anomaly_score : (N,) ndarray
        A(x) = (1 - lam) R + lam D.
    reference_anomaly_score : (N,) ndarray
        A^(x) = (1 - lam) R + lam D^.
    discriminator_output : (N,) ndarray
        sigmoid(D(x)) of the query patch itself: D's probability that x is "real".
    lam : float
        The lambda used.
    config : MappingConfig
        Settings used (``mode`` is the mode actually run, after any fallback).
    steps_taken : (N,) int ndarray or None
        Optimisation steps each patch took (fewer than the mode's steps where early
        stopping froze it; 0 in the encoder mode).
    """

    z: np.ndarray
    reconstruction: np.ndarray | None
    residual_image: np.ndarray | None
    residual_score: np.ndarray
    discrimination_score: np.ndarray
    reference_discrimination_score: np.ndarray
    anomaly_score: np.ndarray
    reference_anomaly_score: np.ndarray
    discriminator_output: np.ndarray
    lam: float
    config: MappingConfig = field(default_factory=MappingConfig)
    steps_taken: np.ndarray | None = None

    SCORE_NAMES = PATCH_SCORE_NAMES

    @property
    def residual(self) -> np.ndarray | None:
        """Alias of :attr:`residual_image` (the residual heatmap input)."""
        return self.residual_image

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def scores(self) -> dict[str, np.ndarray]:
        """Return the per-patch score arrays by name (see ``SCORE_NAMES``)."""
        return {name: getattr(self, name) for name in self.SCORE_NAMES}

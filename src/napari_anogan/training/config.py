"""Settings of GAN and encoder training (defaults from :mod:`napari_anogan.settings`)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any

from napari_anogan import settings as defaults
from napari_anogan.errors import AnoganError
from napari_anogan.mapping import MappingConfig

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of adversarial training.

    Parameters
    ----------
    epochs : int
        Passes over the training patches (paper: 20).
    batch_size : int
        Patches per batch (DCGAN: 64).
    lr : float
        Adam learning rate for G and D (DCGAN: 2e-4).
    beta1 : float
        Adam beta1 (DCGAN: 0.5).
    seed : int
        Seed of initialisation, split, shuffling and z draws.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    sample_every : int
        Batches between SAMPLES events (a grid of G(fixed z)); 0: only at epoch ends.
    n_samples : int
        Patches in the sample grid (a square number looks best).
    holdout_fraction : float
        Fraction of the healthy patches kept out of training to build the reference
        score distribution.
    reference_steps : int
        Mapping steps used to score the held-out patches (match the scoring setting).
    reference_lam : float
        Lambda of the reference mapping.
    reference_max_patches : int
        At most this many held-out patches are mapped (mapping is expensive).
    reference_batch_size : int
        Mapping batch size for the reference.
    deterministic : bool or None
        Ask torch for deterministic algorithms during training. None (default) or
        False: no; on the CPU the kernels used here are deterministic for a fixed thread
        count anyway (a seed reproduces weights bitwise, tested), and torch's
        deterministic mode made a training step 3x slower there (0.86 s vs 0.28 s per
        batch of 64, small preset, 2 cores). True: on CPU and CUDA (slower cuDNN
        algorithms, best effort).
    amp : bool or None
        Mixed precision: the forward passes run under bf16 autocast with channels-last
        tensors (weights, optimiser and losses stay float32). None (default): where it
        pays, on CPUs with AMX tiles and on CUDA GPUs with bf16 (see :func:`training_amp`).
        Measured here (``benchmarks/bench_train.py``, 2 cores with AMX, batch of 64):
        small preset 0.117 -> 0.056 s per batch, paper preset 1.20 -> 0.53 s. Still
        seeded: the same seed gives the same weights on one machine.
    """

    epochs: int = defaults.TRAIN_EPOCHS
    batch_size: int = defaults.TRAIN_BATCH_SIZE
    lr: float = defaults.TRAIN_LR
    beta1: float = defaults.TRAIN_BETA1
    seed: int = defaults.SEED
    device: str = defaults.DEVICE
    sample_every: int = 200
    n_samples: int = 16
    holdout_fraction: float = defaults.HOLDOUT_FRACTION
    reference_steps: int = defaults.REFERENCE_STEPS
    reference_lam: float = defaults.SCORING_LAM
    reference_max_patches: int = defaults.REFERENCE_MAX_PATCHES
    reference_batch_size: int = defaults.REFERENCE_BATCH_SIZE
    deterministic: bool | None = None
    amp: bool | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 0:
            problems.append(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.beta1 < 1.0:
            problems.append(f"beta1 must be in [0, 1), got {self.beta1}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            problems.append(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.reference_steps < 0 or self.reference_max_patches < 0:
            problems.append("reference_steps and reference_max_patches must be >= 0")
        if self.n_samples < 1 or self.sample_every < 0:
            problems.append("n_samples must be >= 1 and sample_every >= 0")
        if problems:
            raise AnoganError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from :meth:`to_dict` output; unknown keys raise :class:`AnoganError`."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise AnoganError(f"unknown training config keys: {sorted(unknown)}")
        return cls(**data)

    def reference_mapping(
        self, device: str | None = None, mode: str = "iterative"
    ) -> MappingConfig:
        """Return the mapping settings used for the healthy reference distribution.

        ``mode`` is the mapping mode the model will be scored with by default:
        ``iterative`` for a GAN alone (``reference_steps`` steps), ``hybrid`` once it has
        an encoder (the mapping defaults' ``hybrid_steps``). Early stopping and the other
        search settings are the :class:`~napari_anogan.mapping.MappingConfig` defaults,
        the same as scoring's, so percentiles compare like with like.
        """
        return MappingConfig(
            mode=mode,
            steps=self.reference_steps,
            lam=self.reference_lam,
            batch_size=self.reference_batch_size,
            seed=self.seed,
            device=device or self.device,
            keep_images=False,
        )


@dataclass
class EncoderConfig:
    """Settings of the f-AnoGAN encoder training (izi_f, G and D frozen).

    Parameters
    ----------
    epochs : int
        Passes over the training patches (those not held out for the reference).
    batch_size : int
        Patches per step.
    lr : float
        Adam learning rate (betas 0.9, 0.999). 1e-4 reached a lower loss than 3e-4 and
        1e-3 after 30 epochs (small preset, 5.8k synthetic patches).
    kappa : float
        Weight of the discriminator-feature residual in the loss (f-AnoGAN: 1).
    seed : int
        Seed of E's initialisation and of the shuffling.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    amp : bool or None
        Mixed precision as in :attr:`TrainConfig.amp` (None: where it pays). Measured
        here: 0.078 -> 0.035 s per batch of 64 (small preset), 0.80 -> 0.30 s (paper).
    """

    epochs: int = defaults.ENCODER_EPOCHS
    batch_size: int = defaults.ENCODER_BATCH_SIZE
    lr: float = defaults.ENCODER_LR
    kappa: float = defaults.ENCODER_KAPPA
    seed: int = defaults.SEED
    device: str = defaults.DEVICE
    amp: bool | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1 or self.batch_size < 2:
            problems.append(
                f"epochs must be >= 1 and batch_size >= 2, got {self.epochs}, {self.batch_size}"
            )
        if self.lr <= 0 or self.kappa < 0:
            problems.append(f"lr must be > 0 and kappa >= 0, got {self.lr}, {self.kappa}")
        if problems:
            raise AnoganError("invalid encoder config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)

"""Adversarial training of the AnoGAN DCGAN on healthy patches (paper sec. 2.1).

:func:`train_gan` is a generator of :class:`~napari_anogan.events.ProgressEvent` that
returns a :class:`TrainResult`. D maximises eq. (1) (binary cross-entropy on logits:
real -> 1, generated -> 0); G maximises log D(G(z)) (the non-saturating form of eq. 2,
as in DCGAN). Adam with the DCGAN settings (lr 2e-4, beta1 0.5).

Reproducibility: model initialisation, the train/hold-out split, each epoch's shuffling
and each epoch's z draws are all derived from ``(seed, epoch)``, so the same seed gives
bitwise-identical weights on the CPU, and resuming after epoch k gives the same weights
as an uninterrupted run (G, D, their batch-norm statistics and both optimisers' states
are in the checkpoint).

After the last epoch the held-out healthy patches are mapped to the latent space and
the quantiles of their scores are stored: the healthy reference distribution used to
express a score as a percentile of healthy.

Encoder (f-AnoGAN izi_f): :func:`train_encoder` trains E for a finished G and D (both
frozen); :func:`add_encoder` does it for a checkpoint file, on the GAN's own training
split, stores E in the checkpoint and rebuilds the healthy reference with the ``hybrid``
mapping, the scoring default for a model with an encoder. ``napari-anogan train
--encoder`` runs both in one go; ``train --encoder --resume`` (same inputs and settings)
adds an encoder to an existing model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_anogan import ddp as _ddp
from napari_anogan import settings as defaults
from napari_anogan.checkpoint import (
    FORMAT_VERSION,
    feature_bank_to_checkpoint,
    read_checkpoint,
    reference_from_checkpoint,
    reference_to_checkpoint,
    save_checkpoint,
)
from napari_anogan.device import resolve_device
from napari_anogan.errors import AnoganError, InputError, ModelError
from napari_anogan.events import EventKind, ProgressEvent
from napari_anogan.mapping import MappingConfig, _amp_context, amp_by_default, map_to_latent
from napari_anogan.models import Discriminator, ModelConfig, sample_prior
from napari_anogan.models import Generator as GeneratorNet
from napari_anogan.models.feature_bank import (
    FeatureBank,
    build_feature_bank,
    feature_distance,
    patch_embeddings,
)
from napari_anogan.scoring import QUANTILE_LEVELS, score_quantiles

__all__ = [
    "EncoderConfig",
    "EncoderResult",
    "TrainConfig",
    "TrainResult",
    "add_encoder",
    "holdout_split",
    "train_encoder",
    "train_gan",
]

logger = logging.getLogger(__name__)

# Settings that must not change when resuming, or the resumed run would differ from an
# uninterrupted one.
RESUME_KEYS = ("batch_size", "lr", "beta1", "seed", "holdout_fraction")


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
class TrainResult:
    """Outcome of :func:`train_gan`.

    Attributes
    ----------
    generator, discriminator : nn.Module
        Trained models (on the training device, eval mode).
    epochs : int
        Epochs completed in total (including those before a resume).
    final_losses : dict of str to float
        Mean losses of the last epoch (``d_loss``, ``g_loss``, ``d_real``, ``d_fake``).
    history : list of dict
        Mean losses of every epoch.
    checkpoint_path : Path or None
    reference : dict
        Healthy reference distribution as in
        :attr:`napari_anogan.checkpoint.LoadedModel.reference` (empty if not computed).
    encoder : nn.Module or None
        The f-AnoGAN encoder, when :func:`add_encoder` trained one.
    feature_bank : FeatureBank or None
        The feature score's bank, when :func:`add_feature_bank` built one.
    """

    generator: nn.Module
    discriminator: nn.Module
    epochs: int
    final_losses: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint_path: Path | None = None
    reference: dict[str, Any] = field(default_factory=dict)
    encoder: nn.Module | None = None
    feature_bank: FeatureBank | None = None


def _derived_seed(*keys: int) -> int:
    """Derive a 63-bit seed from integers (independent streams per purpose/epoch)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split patch indices into training and held-out healthy patches.

    Parameters
    ----------
    n : int
        Number of patches.
    fraction : float
        Fraction held out (rounded; at most ``n - 1``, so one patch remains to train).
    seed : int

    Returns
    -------
    train_idx : (n - k,) int ndarray, sorted
    holdout_idx : (k,) int ndarray, in random order
    """
    perm = np.random.default_rng([int(seed), 1]).permutation(n)
    k = min(round(fraction * n), max(n - 1, 0))
    return np.sort(perm[k:]), perm[:k]


def _reference_split(
    patches: np.ndarray,
    reference_patches: np.ndarray | None,
    train_config: TrainConfig,
    model_config: ModelConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training indices, the reference patch set and its indices in random order.

    With ``reference_patches`` (grid patches of held-out B-scans) every training patch
    trains and the reference is drawn from those; otherwise ``holdout_fraction`` of the
    patches themselves is held out (the fallback for a single B-scan).
    """
    if reference_patches is None:
        train_idx, hold_idx = holdout_split(
            patches.shape[0], train_config.holdout_fraction, train_config.seed
        )
        return train_idx, patches, hold_idx
    _check_patches(reference_patches, model_config, what="reference patches", minimum=1)
    order = np.random.default_rng([int(train_config.seed), 1]).permutation(
        reference_patches.shape[0]
    )
    return np.arange(patches.shape[0]), reference_patches, order


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic = prev[2]
        torch.backends.cudnn.benchmark = prev[3]


def training_amp(device: torch.device, amp: bool | None) -> bool:
    """Whether training on ``device`` runs in mixed precision (``amp`` None: automatic).

    Automatic means bf16 where it pays: CPUs with AMX tiles and CUDA GPUs (the same rule
    as the mapping's, :func:`~napari_anogan.mapping.amp_by_default`), except GPUs without
    bf16, where fp16 would need loss scaling. Asked-for mixed precision on such a GPU is
    refused rather than run in fp16 without it.

    Parameters
    ----------
    device : torch.device
    amp : bool or None
        The setting (:attr:`TrainConfig.amp`, :attr:`EncoderConfig.amp`).

    Returns
    -------
    bool

    Raises
    ------
    AnoganError
        ``amp=True`` on a CUDA GPU without bf16.
    """
    bf16_gpu = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if amp is None:
        return bf16_gpu and amp_by_default(device)
    if amp and not bf16_gpu:
        raise AnoganError(f"mixed-precision training needs bf16, which {device} lacks")
    return bool(amp)


def _batch(patches: np.ndarray, idx: np.ndarray, device: torch.device, amp: bool) -> torch.Tensor:
    """Patches ``idx`` as a float32 tensor on ``device`` (channels-last under amp)."""
    x = torch.from_numpy(np.asarray(patches[idx], np.float32)).to(device)
    return x.contiguous(memory_format=torch.channels_last) if amp else x


def _check_patches(
    patches: np.ndarray, config: ModelConfig, what: str = "training patches", minimum: int = 2
) -> None:
    if not isinstance(patches, np.ndarray):
        raise InputError(f"{what} must be a numpy array, got {type(patches).__name__}")
    expected = (config.channels, config.patch_size, config.patch_size)
    if patches.ndim != 4 or tuple(patches.shape[1:]) != expected:
        raise InputError(
            f"{what} must have shape (N, {expected[0]}, {expected[1]}, "
            f"{expected[2]}) for this model, got {patches.shape}"
        )
    if not np.issubdtype(patches.dtype, np.floating):
        raise InputError(f"{what} must be floating point, got {patches.dtype}")
    if patches.shape[0] < minimum:
        raise InputError(f"need at least {minimum} {what}, got {patches.shape[0]}")
    for lo in range(0, patches.shape[0], 65536):  # chunked: no full-size temporary
        if not np.isfinite(patches[lo : lo + 65536]).all():
            raise InputError(f"{what} contain NaN or infinite values")


def _grid(images: np.ndarray) -> np.ndarray:
    """Tile (n, 1, P, P) images into one (rows*P, cols*P) float32 image."""
    n, _, p, q = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * p, cols * q), -1.0, np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * p : (r + 1) * p, c * q : (c + 1) * q] = images[i, 0]
    return grid


def _build_checkpoint(
    g: nn.Module,
    d: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    model_config: ModelConfig,
    train_config: TrainConfig,
    training: dict[str, Any],
    extra: dict[str, Any],
    reference: dict[str, Any],
    encoder: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "model_config": model_config.to_json(),
        "preprocess_config": json.dumps(extra.get("preprocess_config") or {}, sort_keys=True),
        "train_config": json.dumps(train_config.to_dict(), sort_keys=True),
        "generator": g.state_dict(),
        "discriminator": d.state_dict(),
        "encoder": encoder,
        "optimizers": {"generator": opt_g.state_dict(), "discriminator": opt_d.state_dict()},
        "training": json.dumps(training, sort_keys=True),
        "reference": reference,
    }


def _resume_state(
    path: Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    n_patches: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    data = read_checkpoint(path)
    saved_model = json.loads(data["model_config"])
    if saved_model != model_config.to_dict():
        diffs = [
            f"{k}: checkpoint {saved_model.get(k)!r}, requested {v!r}"
            for k, v in model_config.to_dict().items()
            if saved_model.get(k) != v
        ]
        raise ModelError("cannot resume: model config differs (" + "; ".join(diffs) + ")", path)
    saved_train = json.loads(data["train_config"])
    diffs = [
        f"{k}: checkpoint {saved_train.get(k)!r}, requested {getattr(train_config, k)!r}"
        for k in RESUME_KEYS
        if saved_train.get(k) != getattr(train_config, k)
    ]
    if diffs:
        raise ModelError("cannot resume: training settings differ (" + "; ".join(diffs) + ")", path)
    training = json.loads(data["training"])
    if training.get("n_patches") != n_patches:
        raise ModelError(
            f"cannot resume: checkpoint was trained on {training.get('n_patches')} patches, "
            f"now given {n_patches}",
            path,
        )
    extra = extra or {}
    saved_pre = json.loads(data.get("preprocess_config") or "{}")
    new_pre = json.loads(json.dumps(extra.get("preprocess_config") or {}, sort_keys=True))
    # settings both know (a newer version may add some, with defaults)
    diffs = [
        f"{k}: checkpoint {saved_pre[k]!r}, requested {new_pre[k]!r}"
        for k in sorted(set(saved_pre) & set(new_pre))
        if saved_pre[k] != new_pre[k]
    ]
    if diffs:
        raise ModelError("cannot resume: preprocessing differs (" + "; ".join(diffs) + ")", path)
    recorded, given = training.get("data_fingerprint"), extra.get("data_fingerprint")
    if recorded and given and recorded != given:
        raise ModelError(
            f"cannot resume: these are not the checkpoint's training patches (data "
            f"fingerprint {given}, checkpoint {recorded}): resume with the same inputs, seed "
            "and patches per scan",
            path,
        )
    if "optimizers" not in data and int(training.get("epochs_done", 0)) < train_config.epochs:
        # Only needed to train further; a finished model (e.g. a release copy without
        # optimiser states) can still be "resumed" to add an encoder.
        raise ModelError("cannot resume: checkpoint has no optimiser states", path)
    return data


def train_gan(
    patches: np.ndarray,
    model_config: ModelConfig,
    train_config: TrainConfig | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    extra: dict[str, Any] | None = None,
    build_reference: bool = True,
    reference_patches: np.ndarray | None = None,
) -> Generator[ProgressEvent, None, TrainResult]:
    """Train the DCGAN on healthy patches; checkpoint every epoch; build the reference.

    Parameters
    ----------
    patches : (N, C, P, P) float ndarray
        Healthy training patches in [-1, 1] (a memory-mapped array works: batches are
        copied as needed). Without ``reference_patches``, a ``holdout_fraction`` of them
        is kept out of training for the reference.
    model_config : ModelConfig
        Architecture.
    train_config : TrainConfig, optional
        Settings (defaults: the paper's 20 epochs with DCGAN's Adam).
    checkpoint_path : str or PathLike, optional
        Written atomically at the end of every epoch and once more with the reference
        distribution. None: nothing is written.
    resume : bool
        Continue from ``checkpoint_path`` (its epochs are counted towards
        ``train_config.epochs``). Model config, seed, batch size, optimiser settings,
        hold-out fraction and number of patches must match.
    extra : dict, optional
        JSON-serialisable caller data: ``extra["preprocess_config"]`` becomes the
        checkpoint's preprocessing config, ``extra["data_fingerprint"]`` is recorded in
        the training summary; everything else is kept under ``training["extra"]``.
    build_reference : bool
        Map the held-out patches (iterative mode) for the healthy reference after the last
        epoch. False when an encoder follows (:func:`add_encoder` then builds the
        reference with the encoder's mapping mode, so it is not computed twice).
    reference_patches : (M, C, P, P) float ndarray, optional
        Healthy patches never trained on (the grid patches of held-out B-scans, see
        :func:`~napari_anogan.pipeline.collect_training_patches`); the reference is then
        built from them (at most ``reference_max_patches``, a seeded random choice) and
        every patch of ``patches`` trains.

    Notes
    -----
    In a process group of several ranks (``torchrun``, :mod:`napari_anogan.ddp`), each
    rank trains on its shard of every global batch with G and D wrapped in
    DistributedDataParallel (per-rank BatchNorm statistics, running statistics averaged
    after every epoch); only rank 0 writes the checkpoint and builds the reference.

    Yields
    ------
    ProgressEvent
        EPOCH_START, BATCH (losses ``d_loss``, ``g_loss``, ``d_real`` = mean D(x),
        ``d_fake`` = mean D(G(z))), SAMPLES, EPOCH_END, CHECKPOINT, REFERENCE and the
        MAPPING_* events of the reference mapping, DONE.

    Returns
    -------
    TrainResult

    Raises
    ------
    InputError
        Patches of the wrong shape/dtype, NaN, fewer than 2.
    ModelError
        ``resume`` with a missing or incompatible checkpoint.
    AnoganError
        Device unavailable.

    Examples
    --------
    >>> from napari_anogan.events import drain
    >>> from napari_anogan.models import get_preset
    >>> x = np.random.default_rng(0).uniform(-1, 1, (40, 1, 32, 32)).astype(np.float32)
    >>> cfg = TrainConfig(epochs=1, batch_size=16, device="cpu", reference_steps=2)
    >>> result = drain(train_gan(x, get_preset("tiny", patch_size=32), cfg))
    >>> result.epochs, sorted(result.final_losses)
    (1, ['d_fake', 'd_loss', 'd_real', 'g_loss'])
    """
    train_config = train_config or TrainConfig()
    extra = dict(extra or {})
    _check_patches(patches, model_config)
    ckpt_path = None if checkpoint_path is None else Path(checkpoint_path)
    if resume and ckpt_path is None:
        raise ModelError("resume needs a checkpoint path")
    device = resolve_device(train_config.device)
    n = patches.shape[0]
    seed = train_config.seed
    train_idx, ref_set, ref_order = _reference_split(
        patches, reference_patches, train_config, model_config
    )
    bs = min(train_config.batch_size, train_idx.size)
    # Incomplete last batch dropped (as DCGAN): every step sees a full batch for batch norm.
    n_batches = train_idx.size // bs
    # DDP: this rank's contiguous share of every global batch (and of its z)
    dist_ctx = _ddp.current()
    part = slice(0, bs)
    if dist_ctx is not None:
        part = _ddp.shard_slice(bs, dist_ctx.world_size, dist_ctx.rank)
    main = dist_ctx is None or dist_ctx.is_main

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derived_seed(seed, 0))
        g = GeneratorNet(model_config)
        d = Discriminator(model_config)
    use_amp = training_amp(device, train_config.amp)
    autocast = _amp_context(device, use_amp)  # bf16: training_amp refuses GPUs without it
    layout = torch.channels_last if use_amp else torch.contiguous_format
    g.to(device, memory_format=layout)
    d.to(device, memory_format=layout)
    betas = (train_config.beta1, 0.999)
    opt_g = torch.optim.Adam(g.parameters(), lr=train_config.lr, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=train_config.lr, betas=betas)

    start_epoch = 0
    history: list[dict[str, float]] = []
    reference: dict[str, Any] = {}
    encoder_state: dict[str, torch.Tensor] | None = None
    encoder_summary: dict[str, Any] | None = None
    if resume:
        assert ckpt_path is not None
        data = _resume_state(ckpt_path, model_config, train_config, n, extra)
        g.load_state_dict(data["generator"])
        d.load_state_dict(data["discriminator"])
        if "optimizers" in data:
            opt_g.load_state_dict(data["optimizers"]["generator"])
            opt_d.load_state_dict(data["optimizers"]["discriminator"])
        saved = json.loads(data["training"])
        start_epoch = int(saved["epochs_done"])
        history = list(saved.get("history", []))
        if start_epoch >= train_config.epochs:
            # Nothing left to train: G and D stay as they are, and so do the reference
            # and any encoder trained for them (training further would make E stale).
            reference = data["reference"] or {}
            encoder_state = data.get("encoder")
            encoder_summary = saved.get("encoder")
        logger.info("resuming %s after epoch %d", ckpt_path, start_epoch)

    fixed_z = sample_prior(
        train_config.n_samples,
        model_config,
        torch.Generator().manual_seed(_derived_seed(seed, 4)),
        device,
    )
    preprocess = extra.pop("preprocess_config", None)
    training: dict[str, Any] = {
        "epochs_done": start_epoch,
        "epochs_planned": train_config.epochs,
        "seed": seed,
        "n_patches": int(n),
        "n_train": int(train_idx.size),
        "n_holdout": int(ref_order.size),
        "reference_holdout": "patches" if reference_patches is None else "bscans",
        "data_fingerprint": extra.get("data_fingerprint"),
        "final_losses": history[-1] if history else {},
        "history": history,
        "extra": extra,
        "device": str(device),
        "amp": use_amp,
        "torch_version": torch.__version__,
    }
    if encoder_summary is not None:
        training["encoder"] = encoder_summary
    ckpt_extra = {"preprocess_config": preprocess}

    g_run, d_run = g, d  # what the training steps call (DDP wrappers when distributed)
    if dist_ctx is not None:
        no_device = {k: v for k, v in train_config.to_dict().items() if k != "device"}
        _ddp.check_same(
            dist_ctx,
            n_patches=n,
            data_fingerprint=extra.get("data_fingerprint"),
            model_config=model_config.to_dict(),
            train_config=no_device,
            resumed_history=history,
        )
        g_run, d_run = _ddp.wrap(g, dist_ctx), _ddp.wrap(d, dist_ctx)
        training["distributed"] = dist_ctx.describe()

    def save(ref: dict[str, Any]) -> None:
        if ckpt_path is not None and main:
            save_checkpoint(
                ckpt_path,
                _build_checkpoint(
                    g,
                    d,
                    opt_g,
                    opt_d,
                    model_config,
                    train_config,
                    training,
                    ckpt_extra,
                    ref,
                    encoder_state,
                ),
            )

    def samples() -> np.ndarray:
        was = g.training
        g.eval()
        with torch.no_grad():
            out = g(fixed_z).float().cpu().numpy()
        g.train(was)
        return _grid(out)

    real_label = torch.ones(part.stop - part.start, device=device)
    fake_label = torch.zeros(part.stop - part.start, device=device)
    deterministic = bool(train_config.deterministic)
    with _deterministic(deterministic):
        for epoch in range(start_epoch, train_config.epochs):
            yield ProgressEvent(
                EventKind.EPOCH_START,
                epoch,
                train_config.epochs,
                message=f"epoch {epoch + 1}/{train_config.epochs}",
                epoch=epoch,
            )
            g.train()
            d.train()
            order = np.random.default_rng([seed, 2, epoch]).permutation(train_idx)
            z_gen = torch.Generator().manual_seed(_derived_seed(seed, 3, epoch))
            sums = dict.fromkeys(("d_loss", "g_loss", "d_real", "d_fake"), 0.0)
            for b in range(n_batches):
                idx = np.sort(order[b * bs : (b + 1) * bs])[part]
                x = _batch(patches, idx, device, use_amp)
                z = sample_prior(bs, model_config, z_gen, device)[part]

                # D step: maximise log D(x) + log(1 - D(G(z)))  (eq. 1). Under amp the
                # passes run in bf16 and the losses in float32.
                with autocast():
                    fake = g_run(z)
                    logit_real = d_run(x).float()
                    logit_fake = d_run(fake.detach()).float()
                d_loss = F.binary_cross_entropy_with_logits(
                    logit_real, real_label
                ) + F.binary_cross_entropy_with_logits(logit_fake, fake_label)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()

                # G step: maximise log D(G(z))  (eq. 2, non-saturating form). D's own
                # module: its gradients here are discarded, so DDP need not reduce them.
                with autocast():
                    logit_gen = d(fake).float()
                g_loss = F.binary_cross_entropy_with_logits(logit_gen, real_label)
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()

                # One device->host transfer for all four numbers.
                stacked = torch.stack(
                    [
                        d_loss.detach(),
                        g_loss.detach(),
                        torch.sigmoid(logit_real.detach()).mean(),
                        torch.sigmoid(logit_fake.detach()).mean(),
                    ]
                )
                if dist_ctx is not None:  # means over the global batch
                    stacked = _ddp.mean_over_ranks(stacked, dist_ctx)
                values = stacked.tolist()
                losses = dict(zip(("d_loss", "g_loss", "d_real", "d_fake"), values, strict=True))
                for k, v in losses.items():
                    sums[k] += v
                yield ProgressEvent(
                    EventKind.BATCH,
                    b + 1,
                    n_batches,
                    message=f"epoch {epoch + 1}, batch {b + 1}/{n_batches}",
                    epoch=epoch,
                    losses=losses,
                )
                if main and train_config.sample_every and (b + 1) % train_config.sample_every == 0:
                    yield ProgressEvent(
                        EventKind.SAMPLES, b + 1, n_batches, epoch=epoch, samples=samples()
                    )
            means = {k: v / n_batches for k, v in sums.items()}
            if not all(np.isfinite(list(means.values()))):
                logger.warning("epoch %d: non-finite losses %s", epoch + 1, means)
            history.append(means)
            training.update(epochs_done=epoch + 1, final_losses=means, history=history)
            if dist_ctx is not None:  # one model on every rank, BN statistics of all data
                _ddp.average_buffers(g, dist_ctx)
                _ddp.average_buffers(d, dist_ctx)
            yield ProgressEvent(
                EventKind.EPOCH_END,
                epoch + 1,
                train_config.epochs,
                message=(
                    f"epoch {epoch + 1}/{train_config.epochs}: d_loss {means['d_loss']:.3f}, "
                    f"g_loss {means['g_loss']:.3f}"
                ),
                epoch=epoch,
                losses=means,
            )
            if main:
                yield ProgressEvent(
                    EventKind.SAMPLES,
                    epoch + 1,
                    train_config.epochs,
                    epoch=epoch,
                    samples=samples(),
                )
            save({})
            if ckpt_path is not None:
                yield ProgressEvent(
                    EventKind.CHECKPOINT,
                    epoch + 1,
                    train_config.epochs,
                    message=str(ckpt_path),
                    epoch=epoch,
                )

    g.eval()
    d.eval()
    if not reference and build_reference and main:
        mcfg = train_config.reference_mapping(device=str(device))
        reference = yield from _healthy_reference(
            g, d, None, ref_set, ref_order, train_config, mcfg
        )
        if reference:
            save(reference)
            if ckpt_path is not None:
                yield ProgressEvent(
                    EventKind.CHECKPOINT,
                    train_config.epochs,
                    train_config.epochs,
                    message=str(ckpt_path),
                )
    final = training["final_losses"]
    yield ProgressEvent(
        EventKind.DONE,
        train_config.epochs,
        train_config.epochs,
        message=f"trained {training['epochs_done']} epochs",
        losses=dict(final),
    )
    return TrainResult(
        generator=g,
        discriminator=d,
        epochs=int(training["epochs_done"]),
        final_losses=dict(final),
        history=list(history),
        checkpoint_path=ckpt_path,
        reference=reference_from_checkpoint(reference),
    )


def _healthy_reference(
    g: nn.Module,
    d: nn.Module,
    encoder: nn.Module | None,
    patches: np.ndarray,
    hold_idx: np.ndarray,
    train_config: TrainConfig,
    mcfg: MappingConfig,
    bank: FeatureBank | None = None,
) -> Generator[ProgressEvent, None, dict[str, Any]]:
    """Map the held-out healthy patches with ``mcfg``; return the checkpoint's reference.

    With a feature ``bank``, the held-out patches' feature distances join the scores.
    """
    n_ref = min(hold_idx.size, train_config.reference_max_patches)
    if n_ref == 0:
        logger.warning("no held-out patches: the healthy reference distribution is empty")
        return {}
    yield ProgressEvent(
        EventKind.REFERENCE,
        0,
        n_ref,
        message=f"scoring {n_ref} held-out healthy patches for the reference ({mcfg.mode})",
    )
    sel = np.sort(hold_idx[:n_ref])
    held = np.asarray(patches[sel], np.float32)
    result = yield from map_to_latent(g, d, held, mcfg, encoder=encoder)
    scores = result.scores()
    if bank is not None:
        scores["feature_distance"] = feature_distance(
            bank, patch_embeddings(d, held, bank.projection, device="cpu")
        )
    quantiles = score_quantiles(scores, QUANTILE_LEVELS)
    return reference_to_checkpoint(
        QUANTILE_LEVELS, quantiles, result.config.to_dict(), n_patches=n_ref
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


@dataclass
class EncoderResult:
    """Outcome of :func:`train_encoder`.

    Attributes
    ----------
    encoder : Encoder
        Trained E, eval mode, on the training device.
    history : list of dict
        Mean losses (``loss``, ``image``, ``feature``) of every epoch.
    final_losses : dict of str to float
        Those of the last epoch.
    """

    encoder: nn.Module
    history: list[dict[str, float]]
    final_losses: dict[str, float]


def train_encoder(
    patches: np.ndarray,
    generator: nn.Module,
    discriminator: nn.Module,
    config: EncoderConfig | None = None,
    *,
    indices: np.ndarray | None = None,
) -> Generator[ProgressEvent, None, EncoderResult]:
    """Train an f-AnoGAN encoder E for a trained, frozen G and D (izi_f).

    Minimises ``mean (x - G(E(x)))**2 + kappa * mean (f(x) - f(G(E(x))))**2`` over the
    patches (:func:`napari_anogan.models.encoder.encoder_loss`) with Adam. G and D are in
    eval mode with frozen parameters throughout (restored afterwards); only E learns.
    Deterministic for a given seed on the CPU; the global torch RNG is left unchanged.

    Parameters
    ----------
    patches : (N, C, P, P) float ndarray
        Healthy patches in [-1, 1] (a memory-mapped array works).
    generator, discriminator : nn.Module
        The trained GAN.
    config : EncoderConfig, optional
        Settings.
    indices : (M,) int ndarray, optional
        Train on these patches only (e.g. those not held out for the reference).

    Yields
    ------
    ProgressEvent
        EPOCH_START, BATCH (losses ``loss``, ``image``, ``feature``), EPOCH_END and
        SAMPLES (inputs over their reconstructions G(E(x))).

    Returns
    -------
    EncoderResult

    Raises
    ------
    InputError
        Patches of the wrong shape, or fewer than 2 to train on.

    Examples
    --------
    >>> from napari_anogan.events import drain
    >>> from napari_anogan.models import Discriminator, get_preset
    >>> from napari_anogan.models import Generator as G
    >>> cfg = get_preset("tiny", patch_size=32)
    >>> x = np.random.default_rng(0).uniform(-1, 1, (8, 1, 32, 32)).astype(np.float32)
    >>> res = drain(train_encoder(x, G(cfg), Discriminator(cfg),
    ...                           EncoderConfig(epochs=1, batch_size=4, device="cpu")))
    >>> sorted(res.final_losses)
    ['feature', 'image', 'loss']
    """
    from napari_anogan.models.encoder import Encoder, encoder_loss

    config = config or EncoderConfig()
    model_config = generator.config
    _check_patches(patches, model_config)
    idx_all = np.arange(patches.shape[0]) if indices is None else np.sort(np.asarray(indices))
    if idx_all.size < 2:
        raise InputError(f"encoder training needs at least 2 patches, got {idx_all.size}")
    device = resolve_device(config.device)
    bs = min(config.batch_size, idx_all.size)
    n_batches = max(1, idx_all.size // bs)  # incomplete last batch dropped (batch norm)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derived_seed(config.seed, 5))
        encoder = Encoder(model_config)
    use_amp = training_amp(device, config.amp)
    autocast = _amp_context(device, use_amp)  # bf16: training_amp refuses GPUs without it
    layout = torch.channels_last if use_amp else torch.contiguous_format
    encoder.to(device, memory_format=layout).train()
    opt = torch.optim.Adam(encoder.parameters(), lr=config.lr)
    frozen = (generator, discriminator)
    saved = [
        (m.training, [p.requires_grad for p in m.parameters()], next(m.parameters()).device)
        for m in frozen
    ]
    history: list[dict[str, float]] = []
    logger.info(
        "training the encoder on %d patches: %d epochs, batch %d, lr %g, kappa %g, %s%s",
        idx_all.size,
        config.epochs,
        bs,
        config.lr,
        config.kappa,
        device,
        " (bf16 autocast)" if use_amp else "",
    )
    try:
        for m in frozen:
            m.eval().requires_grad_(False).to(device, memory_format=layout)
        for epoch in range(config.epochs):
            yield ProgressEvent(
                EventKind.EPOCH_START,
                epoch,
                config.epochs,
                message=f"encoder epoch {epoch + 1}/{config.epochs}",
                epoch=epoch,
            )
            order = np.random.default_rng([config.seed, 6, epoch]).permutation(idx_all)
            sums = dict.fromkeys(("loss", "image", "feature"), 0.0)
            for b in range(n_batches):
                batch = np.sort(order[b * bs : (b + 1) * bs])
                x = _batch(patches, batch, device, use_amp)
                with autocast():
                    loss, image, feature = encoder_loss(
                        x, generator, discriminator, encoder, config.kappa
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                values = torch.stack([loss.detach(), image.detach(), feature.detach()]).tolist()
                losses = dict(zip(("loss", "image", "feature"), values, strict=True))
                for k, v in losses.items():
                    sums[k] += v
                yield ProgressEvent(
                    EventKind.BATCH,
                    b + 1,
                    n_batches,
                    message=f"encoder epoch {epoch + 1}, batch {b + 1}/{n_batches}",
                    epoch=epoch,
                    losses=losses,
                )
            means = {k: v / n_batches for k, v in sums.items()}
            history.append(means)
            yield ProgressEvent(
                EventKind.EPOCH_END,
                epoch + 1,
                config.epochs,
                message=f"encoder epoch {epoch + 1}/{config.epochs}: loss {means['loss']:.4g}",
                epoch=epoch,
                losses=means,
            )
            encoder.eval()
            with torch.no_grad():
                shown = x[:8]
                pair = np.concatenate(
                    [shown.cpu().numpy(), generator(encoder(shown)).cpu().numpy()]
                )
            encoder.train()
            yield ProgressEvent(
                EventKind.SAMPLES,
                epoch + 1,
                config.epochs,
                message="inputs and their reconstructions G(E(x))",
                epoch=epoch,
                samples=_grid(pair),
            )
    finally:
        for m, (was_training, flags, dev) in zip(frozen, saved, strict=True):
            m.to(dev, memory_format=torch.contiguous_format)
            m.train(was_training)
            for p, flag in zip(m.parameters(), flags, strict=True):
                p.requires_grad_(flag)
    encoder.eval()
    return EncoderResult(encoder=encoder, history=history, final_losses=dict(history[-1]))


def _frozen_gan(data: dict[str, Any], model_config: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """G and D of a read checkpoint, in eval mode."""
    g = GeneratorNet(model_config)
    d = Discriminator(model_config)
    g.load_state_dict(data["generator"])
    d.load_state_dict(data["discriminator"])
    return g.eval(), d.eval()


def add_encoder(
    checkpoint_path: str | os.PathLike,
    patches: np.ndarray,
    config: EncoderConfig | None = None,
    *,
    data_fingerprint: str | None = None,
    reference_mode: str = "hybrid",
    reference_patches: np.ndarray | None = None,
) -> Generator[ProgressEvent, None, TrainResult]:
    """Train an f-AnoGAN encoder for a trained model and store it in its checkpoint.

    Works on any finished checkpoint (also one without optimiser states). E is trained
    on the same training split as the GAN (the checkpoint's seed and hold-out fraction),
    so the held-out healthy patches stay unseen; they are then mapped again with
    ``reference_mode`` and the checkpoint's healthy reference distribution is replaced by
    theirs, because the scoring default with an encoder is that mode (a percentile must
    compare scores of the same mapping). The previous reference (of the GAN alone) is
    dropped; its settings stay readable in ``training["encoder"]["replaced_reference"]``.
    The checkpoint is rewritten atomically, twice: with E, then with the new reference.

    Parameters
    ----------
    checkpoint_path : str or PathLike
        A checkpoint written by :func:`train_gan`.
    patches : (N, C, P, P) float ndarray
        The very patches the GAN was trained on (same N; checked against the recorded
        data fingerprint when ``data_fingerprint`` is given).
    config : EncoderConfig, optional
        Settings of the encoder training.
    data_fingerprint : str, optional
        Fingerprint of ``patches`` as recorded by the training pipeline.
    reference_mode : str
        Mapping mode of the new healthy reference (``hybrid`` or ``encoder``).
    reference_patches : (M, C, P, P) float ndarray, optional
        The GAN's reference patches (needed when it was trained with them, see
        :func:`train_gan`).

    Yields
    ------
    ProgressEvent
        The encoder training's events, CHECKPOINT, REFERENCE and the reference
        mapping's events, DONE.

    Returns
    -------
    TrainResult
        With ``encoder`` set and the new ``reference``.

    Raises
    ------
    ModelError
        Missing/unreadable checkpoint, or patches that are not the model's training data.
    """
    config = config or EncoderConfig()
    path = Path(checkpoint_path)
    data = read_checkpoint(path)
    model_config = ModelConfig.from_json(data["model_config"])
    train_config = TrainConfig.from_dict(json.loads(data["train_config"]))
    training = json.loads(data["training"])
    _check_patches(patches, model_config)
    n = patches.shape[0]
    if training.get("n_patches") not in (None, n):
        raise ModelError(
            f"the model was trained on {training.get('n_patches')} patches, got {n}: pass "
            "the model's own training patches (same inputs, seed and patches per scan)",
            path,
        )
    recorded = training.get("data_fingerprint")
    if data_fingerprint is not None and recorded and recorded != data_fingerprint:
        raise ModelError(
            "these patches are not the model's training data (data fingerprint "
            f"{data_fingerprint}, model {recorded})",
            path,
        )
    g, d = _frozen_gan(data, model_config)
    if (training.get("reference_holdout") == "bscans") != (reference_patches is not None):
        raise ModelError(
            "the model's healthy reference came from "
            + (
                "held-out B-scans: pass their patches (train from the same inputs)"
                if reference_patches is None
                else "held-out patches, but reference patches were given"
            ),
            path,
        )
    train_idx, ref_set, ref_order = _reference_split(
        patches, reference_patches, train_config, model_config
    )
    result = yield from train_encoder(patches, g, d, config, indices=train_idx)
    encoder = result.encoder
    old_settings = json.loads(data["reference"]["settings"]) if data["reference"] else None
    training["encoder"] = {
        "config": config.to_dict(),
        "n_train": int(train_idx.size),
        "final_losses": result.final_losses,
        "history": result.history,
        "replaced_reference": old_settings,
    }
    data["encoder"] = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    data["training"] = json.dumps(training, sort_keys=True)
    save_checkpoint(path, data)
    yield ProgressEvent(EventKind.CHECKPOINT, 1, 2, message=str(path))

    device = resolve_device(config.device)
    mcfg = train_config.reference_mapping(device=str(device), mode=reference_mode)
    bank = _stored_bank(data, model_config, path)
    reference = yield from _healthy_reference(
        g, d, encoder, ref_set, ref_order, train_config, mcfg, bank
    )
    data["reference"] = reference
    save_checkpoint(path, data)
    yield ProgressEvent(EventKind.CHECKPOINT, 2, 2, message=str(path))
    yield ProgressEvent(
        EventKind.DONE,
        config.epochs,
        config.epochs,
        message=f"encoder trained ({config.epochs} epochs) and stored in {path.name}",
        losses=dict(result.final_losses),
    )
    return TrainResult(
        generator=g,
        discriminator=d,
        epochs=int(training.get("epochs_done", 0)),
        final_losses=dict(training.get("final_losses", {})),
        history=list(training.get("history", [])),
        checkpoint_path=path,
        reference=reference_from_checkpoint(reference),
        encoder=encoder,
    )


def refresh_reference(
    checkpoint_path: str | os.PathLike,
    reference_patches: np.ndarray,
    device: str = "auto",
    lam: float | None = None,
) -> Generator[ProgressEvent, None, dict[str, Any]]:
    """Recompute a trained model's healthy reference from new reference patches.

    G, D and the encoder are kept; only the reference distribution is replaced, mapped in
    the stored reference's mode, with the patches in the order training would use. For a
    model whose reference came from held-out B-scans (the default) after the way grid
    patches are cut for scoring has changed: the reference must come from patches cut as
    the scored ones are, or percentiles and candidates drift.

    Parameters
    ----------
    checkpoint_path : path
        The model; rewritten atomically.
    reference_patches : (M, C, P, P) float ndarray
        Grid patches of the model's held-out B-scans
        (:func:`napari_anogan.pipeline.reference_patches_of`).
    device : str
        Device of the reference mapping.
    lam : float, optional
        λ of the reference mapping (and of the scores), stored as the model's
        ``reference_lam``; default: the model's own. Give the λ the model will be scored
        with, or percentiles compare unlike scores.

    Yields
    ------
    ProgressEvent
        The reference mapping's events, then CHECKPOINT.

    Returns
    -------
    dict
        The new reference (as :func:`~napari_anogan.checkpoint.reference_from_checkpoint`).

    Raises
    ------
    ModelError
        Unreadable checkpoint, or a model whose reference came from held-out training
        patches (their patches do not depend on the scoring grid).
    """
    from napari_anogan.models.encoder import Encoder

    path = Path(checkpoint_path)
    data = read_checkpoint(path)
    model_config = ModelConfig.from_json(data["model_config"])
    train_config = TrainConfig.from_dict(json.loads(data["train_config"]))
    if lam is not None:
        train_config = replace(train_config, reference_lam=float(lam))
        data["train_config"] = json.dumps(train_config.to_dict(), sort_keys=True)
    training = json.loads(data["training"])
    if training.get("reference_holdout") != "bscans":
        raise ModelError(
            "the model's healthy reference came from held-out training patches, not from "
            "grid patches of held-out B-scans: there is nothing to recompute",
            path,
        )
    g, d = _frozen_gan(data, model_config)
    encoder = None
    if data.get("encoder") is not None:
        encoder = Encoder(model_config)
        encoder.load_state_dict(data["encoder"])
        encoder.eval()
    old = json.loads(data["reference"]["settings"]) if data.get("reference") else {}
    mode = old.get("mode", "hybrid" if encoder is not None else "iterative")
    _, ref_set, ref_order = _reference_split(
        reference_patches, reference_patches, train_config, model_config
    )
    mcfg = train_config.reference_mapping(device=str(resolve_device(device)), mode=mode)
    bank = _stored_bank(data, model_config, path)
    reference = yield from _healthy_reference(
        g, d, encoder, ref_set, ref_order, train_config, mcfg, bank
    )
    data["reference"] = reference
    save_checkpoint(path, data)
    yield ProgressEvent(EventKind.CHECKPOINT, 1, 1, message=str(path))
    return reference_from_checkpoint(reference)


def _stored_bank(data: dict[str, Any], model_config: ModelConfig, path: Path) -> FeatureBank | None:
    from napari_anogan.checkpoint import _feature_bank

    return _feature_bank(data.get("feature_bank"), model_config, path)


def add_feature_bank(
    checkpoint_path: str | os.PathLike,
    bank_patches: np.ndarray,
    reference_patches: np.ndarray | None,
    *,
    dim: int = defaults.FEATURE_DIM,
    max_size: int = defaults.FEATURE_BANK_SIZE,
    device: str = defaults.DEVICE,
) -> Generator[ProgressEvent, None, tuple[FeatureBank, dict[str, Any]]]:
    """Store a feature bank of healthy patches in a trained model, and its reference.

    The bank holds the embeddings (:func:`~napari_anogan.models.feature_bank.patch_embeddings`)
    of ``bank_patches``, grid patches of the training B-scans cut as scoring cuts them;
    the held-out B-scans' patches (``reference_patches``) stay out of it, so their feature
    distances, mapped into the healthy reference with the other scores, are those of
    unseen healthy scans. The checkpoint is rewritten atomically.

    Parameters
    ----------
    checkpoint_path : path
        A trained model (with or without an encoder).
    bank_patches : (N, C, P, P) float32 ndarray
        Grid patches of the training B-scans.
    reference_patches : (M, C, P, P) float32 ndarray or None
        Grid patches of the held-out B-scans (None: the model's reference came from
        held-out training patches, which are then taken as the model's training split).
    dim, max_size : int
        Embedding dimensions and most embeddings kept (:mod:`napari_anogan.settings`).
    device : str
        Device of the reference mapping.

    Yields
    ------
    ProgressEvent
        STAGE, the reference mapping's events, CHECKPOINT.

    Returns
    -------
    bank : FeatureBank
    reference : dict
        The new healthy reference (as
        :func:`~napari_anogan.checkpoint.reference_from_checkpoint`).
    """
    from napari_anogan.models.encoder import Encoder

    path = Path(checkpoint_path)
    data = read_checkpoint(path)
    model_config = ModelConfig.from_json(data["model_config"])
    train_config = TrainConfig.from_dict(json.loads(data["train_config"]))
    training = json.loads(data["training"])
    _check_patches(bank_patches, model_config)
    g, d = _frozen_gan(data, model_config)
    if reference_patches is None:  # a single B-scan: hold out patches of the grid itself
        keep, ref_order = holdout_split(
            len(bank_patches), train_config.holdout_fraction, train_config.seed
        )
        ref_set, bank_patches = bank_patches, bank_patches[keep]
    else:
        _, ref_set, ref_order = _reference_split(
            bank_patches, reference_patches, train_config, model_config
        )
    yield ProgressEvent(
        EventKind.STAGE, 0, 1, message=f"feature bank of {len(bank_patches)} healthy patches"
    )
    bank = build_feature_bank(
        d, bank_patches, dim=dim, max_size=max_size, seed=int(training.get("seed", 0))
    )
    data["feature_bank"] = feature_bank_to_checkpoint(bank)
    encoder = None
    if data.get("encoder") is not None:
        encoder = Encoder(model_config)
        encoder.load_state_dict(data["encoder"])
        encoder.eval()
    old = json.loads(data["reference"]["settings"]) if data.get("reference") else {}
    mode = old.get("mode", "hybrid" if encoder is not None else "iterative")
    mcfg = train_config.reference_mapping(device=str(resolve_device(device)), mode=mode)
    data["reference"] = yield from _healthy_reference(
        g, d, encoder, ref_set, ref_order, train_config, mcfg, bank
    )
    training["feature_bank"] = {"n_patches": len(bank_patches), "size": len(bank.embeddings)}
    data["training"] = json.dumps(training, sort_keys=True)
    save_checkpoint(path, data)
    yield ProgressEvent(EventKind.CHECKPOINT, 1, 1, message=str(path))
    return bank, reference_from_checkpoint(data["reference"])

"""Helpers shared by GAN, encoder and reference training: seeds, splits, batches, precision."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_anogan.device import amp_by_default
from napari_anogan.errors import AnoganError, InputError
from napari_anogan.models import Discriminator, ModelConfig
from napari_anogan.models import Generator as GeneratorNet
from napari_anogan.training.config import TrainConfig

logger = logging.getLogger(__name__)


def derived_seed(*keys: int) -> int:
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


def reference_split(
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
    check_patches(reference_patches, model_config, what="reference patches", minimum=1)
    order = np.random.default_rng([int(train_config.seed), 1]).permutation(
        reference_patches.shape[0]
    )
    return np.arange(patches.shape[0]), reference_patches, order


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Run the block with torch's deterministic algorithms (warn only), when enabled."""
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


def patch_batch(
    patches: np.ndarray, idx: np.ndarray, device: torch.device, amp: bool
) -> torch.Tensor:
    """Patches ``idx`` as a float32 tensor on ``device`` (channels-last under amp)."""
    x = torch.from_numpy(np.asarray(patches[idx], np.float32)).to(device)
    return x.contiguous(memory_format=torch.channels_last) if amp else x


def check_patches(
    patches: np.ndarray, config: ModelConfig, what: str = "training patches", minimum: int = 2
) -> None:
    """Raise :class:`InputError` unless ``patches`` is (N >= minimum, C, P, P) finite float."""
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


def sample_grid(images: np.ndarray) -> np.ndarray:
    """Tile (n, 1, P, P) images into one (rows*P, cols*P) float32 image."""
    n, _, p, q = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * p, cols * q), -1.0, np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * p : (r + 1) * p, c * q : (c + 1) * q] = images[i, 0]
    return grid


def frozen_gan(data: dict[str, Any], model_config: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """G and D of a read checkpoint, in eval mode."""
    g = GeneratorNet(model_config)
    d = Discriminator(model_config)
    g.load_state_dict(data["generator"])
    d.load_state_dict(data["discriminator"])
    return g.eval(), d.eval()

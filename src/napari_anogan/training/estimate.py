"""How long a training run will take, measured before it starts.

:func:`estimate_training_seconds` times a few updates of the training loop itself on the
device (random patches: the cost of an update does not depend on its pixels) and
multiplies by the updates the run will make (an encoder update counted as one GAN
update). The Train widget shows it before the user starts; the live estimate during
training comes from the progress events.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from napari_anogan import settings as defaults
from napari_anogan.device import resolve_device
from napari_anogan.models import ModelConfig, sample_prior
from napari_anogan.training.common import patch_batch
from napari_anogan.training.config import TrainConfig

#: Timed updates after one warm-up update (a few: the estimate must itself be quick).
TIMED_STEPS = 3
#: The reference mapping and the feature bank, as a share of the GAN time (measured: the
#: OCTDL recipe spends about 5 % of its time after the encoder).
FINISHING_SHARE = 0.05


def _gan_step_seconds(config: ModelConfig, batch_size: int, device: torch.device) -> float:
    """Seconds of one update of the training loop itself (:class:`~.gan._GanRun`)."""
    from napari_anogan.training.gan import _GanRun

    run = _GanRun(config, TrainConfig(batch_size=batch_size), device, batch_size)
    gen = torch.Generator().manual_seed(0)
    patches = torch.rand(batch_size, config.channels, config.patch_size, config.patch_size)
    x = patch_batch((patches * 2 - 1).numpy(), np.arange(batch_size), device, run.use_amp)

    def step() -> None:
        run.step(x, sample_prior(batch_size, config, gen, device))

    step()  # warm-up: allocations, kernel selection
    t0 = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / TIMED_STEPS


def estimate_training_seconds(
    model_config: ModelConfig,
    n_patches: int,
    epochs: int,
    *,
    batch_size: int = defaults.TRAIN_BATCH_SIZE,
    encoder_epochs: int = defaults.ENCODER_EPOCHS,
    device: str = defaults.DEVICE,
) -> float:
    """Seconds a training run of ``epochs`` over ``n_patches`` patches should take here.

    Parameters
    ----------
    model_config : ModelConfig
        The architecture to train.
    n_patches : int
        Training patches (B-scans x patches per scan).
    epochs : int
        GAN epochs.
    batch_size : int
        Patches per update.
    encoder_epochs : int
        Encoder epochs after the GAN (0: none). An encoder update costs about one GAN
        update (E, G and D forward, E backward through G and D).
    device : str
        Where it will train.

    Returns
    -------
    float
        Estimated wall-clock seconds of the GAN, the encoder and the finishing steps.
    """
    bs = max(1, min(batch_size, n_patches))
    batches = max(1, n_patches // bs)
    with torch.random.fork_rng(devices=[]):
        seconds = _gan_step_seconds(model_config, bs, resolve_device(device))
    gan = seconds * batches * epochs
    return gan * (1.0 + FINISHING_SHARE) + seconds * batches * encoder_epochs

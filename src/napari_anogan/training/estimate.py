"""How long a training run will take, measured before it starts.

:func:`estimate_training_seconds` times a few real GAN and encoder updates of the model on
the device (random patches: the cost of an update does not depend on its pixels) and
multiplies by the updates the run will make. The Train widget shows it before the user
starts; the live estimate during training comes from the progress events.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from napari_anogan import settings as defaults
from napari_anogan.device import amp_context, resolve_device
from napari_anogan.models import Discriminator, Generator, ModelConfig, sample_prior
from napari_anogan.training.common import training_amp

#: Timed updates after one warm-up update (a few: the estimate must itself be quick).
TIMED_STEPS = 3
#: The reference mapping and the feature bank, as a share of the GAN time (measured: the
#: OCTDL recipe spends about 5 % of its time after the encoder).
FINISHING_SHARE = 0.05


def _gan_step_seconds(config: ModelConfig, batch_size: int, device: torch.device) -> float:
    use_amp = training_amp(device, None)  # the precision training will use (bf16 on AMX)
    autocast = amp_context(device, use_amp)
    layout = torch.channels_last if use_amp else torch.contiguous_format
    g = Generator(config).to(device, memory_format=layout)
    d = Discriminator(config).to(device, memory_format=layout)
    opt_g = torch.optim.Adam(g.parameters(), lr=defaults.TRAIN_LR)
    opt_d = torch.optim.Adam(d.parameters(), lr=defaults.TRAIN_LR)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, config.channels, config.patch_size, config.patch_size) * 2 - 1
    x = x.to(device)
    ones = torch.ones(batch_size, device=device)
    zeros = torch.zeros(batch_size, device=device)

    def step() -> None:
        z = sample_prior(batch_size, config, gen, device)
        with autocast():
            fake = g(z)
            real, faked = d(x).float(), d(fake.detach()).float()
        loss_d = F.binary_cross_entropy_with_logits(real, ones)
        loss_d = loss_d + F.binary_cross_entropy_with_logits(faked, zeros)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        with autocast():
            gen_logit = d(fake).float()
        loss_g = F.binary_cross_entropy_with_logits(gen_logit, ones)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()

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

"""Training the aCAE baseline on healthy patches, and its anomaly scores (eq. 6)."""

from __future__ import annotations

import logging
from collections.abc import Generator as GeneratorType

import numpy as np
import torch
import torch.nn.functional as F

from napari_anogan import settings as defaults
from napari_anogan.errors import InputError
from napari_anogan.evaluation.acae.model import ACAE, REC_LOSSES
from napari_anogan.events import EventKind, ProgressEvent
from napari_anogan.models.dcgan import as_patch_array
from napari_anogan.models.presets import ModelConfig
from napari_anogan.scoring.scores import anomaly_score

logger = logging.getLogger(__name__)


def _sample_grid(x: torch.Tensor, x_hat: torch.Tensor, k: int = 8) -> np.ndarray:
    """Two rows of patches (inputs over reconstructions), first channel, float32."""
    k = min(k, x.shape[0])
    top = torch.cat(list(x[:k, 0]), dim=1)
    bottom = torch.cat(list(x_hat[:k, 0]), dim=1)
    return torch.cat([top, bottom], dim=0).detach().cpu().numpy().astype(np.float32)


def _check_acae_args(
    n: int, epochs: int, batch_size: int, lr: float, adv_weight: float, rec_loss: str
) -> None:
    """Raise :class:`InputError` for settings :func:`train_acae` cannot train with."""
    if n < 2:
        raise InputError(f"aCAE training needs at least 2 patches, got {n}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise InputError(
            f"epochs, batch_size and lr must be positive (got {epochs}, {batch_size}, {lr})"
        )
    if not 0.0 <= adv_weight < 1.0:
        raise InputError(f"adv_weight must be in [0, 1), got {adv_weight}")
    if rec_loss not in REC_LOSSES:
        raise InputError(f"rec_loss must be one of {REC_LOSSES}, got {rec_loss!r}")


def _acae_step(model, x: torch.Tensor, opt_d, opt_ae, reconstruct, adv_weight: float):
    """One discriminator step and one autoencoder step; return the losses and x_hat."""
    ones = torch.ones(x.shape[0], device=x.device)
    zeros = torch.zeros(x.shape[0], device=x.device)

    x_hat = model(x)
    d_real = model.discriminator(x)
    d_fake = model.discriminator(x_hat.detach())
    d_loss_real = F.binary_cross_entropy_with_logits(d_real, ones)
    d_loss = d_loss_real + F.binary_cross_entropy_with_logits(d_fake, zeros)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    rec = reconstruct(x_hat, x)
    adv = F.binary_cross_entropy_with_logits(model.discriminator(x_hat), ones)
    ae_loss = (1.0 - adv_weight) * rec + adv_weight * adv
    opt_ae.zero_grad(set_to_none=True)
    ae_loss.backward()
    opt_ae.step()

    losses = {
        "d_loss": float(d_loss.item()),
        "ae_loss": float(ae_loss.item()),
        "rec_loss": float(rec.item()),
        "adv_loss": float(adv.item()),
    }
    return losses, x_hat


def train_acae(
    patches: np.ndarray | torch.Tensor,
    config: ModelConfig,
    epochs: int = defaults.ACAE_EPOCHS,
    batch_size: int = 64,
    lr: float = 2e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
    *,
    adv_weight: float = 0.001,
    rec_loss: str = "l1",
) -> GeneratorType[ProgressEvent, None, ACAE]:
    """Train an aCAE on healthy patches; a generator of progress events returning the model.

    Each batch: one discriminator step (real patches vs reconstructions, sigmoid
    cross-entropy), then one autoencoder step minimising
    ``(1 - adv_weight) * rec + adv_weight * adv`` where ``rec`` is the mean L1 (or L2)
    reconstruction error and ``adv`` the non-saturating generator loss of the
    reconstructions. Adam (``betas=(0.5, 0.999)``) for both. Deterministic for a given
    ``seed`` on the CPU; the global torch RNG state is left unchanged.

    Parameters
    ----------
    patches : (N, channels, P, P) float array or Tensor
        Healthy training patches in [-1, 1].
    config : ModelConfig
        Architecture (see :class:`ACAE`).
    epochs : int, optional
        Passes over the patches.
    batch_size : int, optional
        Patches per step (capped at N).
    lr : float, optional
        Adam learning rate.
    seed : int, optional
        Seed of weight initialisation and shuffling.
    device : str or torch.device, optional
        Where to train.
    adv_weight : float, optional
        Weight of the adversarial term, in [0, 1) (context encoder: 0.001).
    rec_loss : {"l1", "l2"}, optional
        Reconstruction loss.

    Yields
    ------
    ProgressEvent
        ``EPOCH_START``, ``BATCH`` (losses ``d_loss``, ``ae_loss``, ``rec_loss``,
        ``adv_loss``), ``EPOCH_END`` (epoch means), ``SAMPLES`` (inputs over
        reconstructions) and finally ``DONE``.

    Returns
    -------
    ACAE
        The trained model in eval mode, on ``device``; ``model.summary`` holds the settings
        and final losses.

    Raises
    ------
    InputError
        If the patches do not match the config, or a setting is out of range.
    """
    x_all = as_patch_array(patches, config)
    n = x_all.shape[0]
    _check_acae_args(n, epochs, batch_size, lr, adv_weight, rec_loss)
    device = torch.device(device)
    batch_size = min(batch_size, n)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ACAE(config)
    model.to(device).train()
    shuffle_rng = torch.Generator().manual_seed(seed)
    opt_ae = torch.optim.Adam(
        [*model.encoder.parameters(), *model.decoder.parameters()], lr=lr, betas=(0.5, 0.999)
    )
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
    data = torch.from_numpy(x_all)
    # A last batch of one patch would make batch norm statistics meaningless: merge it.
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < 2:
        starts.pop()
    bounds = [(lo, starts[i + 1] if i + 1 < len(starts) else n) for i, lo in enumerate(starts)]
    reconstruct = F.l1_loss if rec_loss == "l1" else F.mse_loss
    epoch_means: dict[str, float] = {}
    logger.info(
        "training aCAE on %d patches: %d epochs, batch %d, lr %g, seed %d, %s",
        n,
        epochs,
        batch_size,
        lr,
        seed,
        device,
    )

    for epoch in range(epochs):
        yield ProgressEvent(
            EventKind.EPOCH_START, epoch, epochs, message=f"epoch {epoch + 1}/{epochs}", epoch=epoch
        )
        order = torch.randperm(n, generator=shuffle_rng)
        sums = {"d_loss": 0.0, "ae_loss": 0.0, "rec_loss": 0.0, "adv_loss": 0.0}
        for b, (lo, hi) in enumerate(bounds):
            x = data[order[lo:hi]].to(device)
            losses, x_hat = _acae_step(model, x, opt_d, opt_ae, reconstruct, adv_weight)
            for key, value in losses.items():
                sums[key] += value
            yield ProgressEvent(
                EventKind.BATCH,
                b + 1,
                len(bounds),
                message=f"epoch {epoch + 1}/{epochs}, batch {b + 1}/{len(bounds)}",
                epoch=epoch,
                losses=losses,
            )
        epoch_means = {key: value / len(bounds) for key, value in sums.items()}
        logger.info("aCAE epoch %d/%d: %s", epoch + 1, epochs, epoch_means)
        yield ProgressEvent(
            EventKind.EPOCH_END,
            epoch + 1,
            epochs,
            message=f"epoch {epoch + 1}/{epochs} done",
            epoch=epoch,
            losses=dict(epoch_means),
        )
        yield ProgressEvent(
            EventKind.SAMPLES,
            epoch + 1,
            epochs,
            message="inputs (top) and reconstructions (bottom)",
            epoch=epoch,
            samples=_sample_grid(x, x_hat),
        )

    model.eval()
    model.summary = {
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "seed": int(seed),
        "adv_weight": float(adv_weight),
        "rec_loss": rec_loss,
        "n_patches": int(n),
        "final_losses": {k: float(v) for k, v in epoch_means.items()},
    }
    yield ProgressEvent(EventKind.DONE, epochs, epochs, message="aCAE training done")
    return model


def acae_scores(
    model: ACAE,
    patches: np.ndarray | torch.Tensor,
    lam: float = 0.1,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    keep_images: bool = True,
) -> dict[str, np.ndarray | None]:
    """Score patches with an aCAE, using AnoGAN's anomaly score definition (eq. 3, 4, 6).

    With ``x_hat = decoder(encoder(x))`` (direct mapping, no iterations) and ``f`` the
    aCAE discriminator's last conv features:
    ``R = sum |x - x_hat|``, ``D = sum |f(x) - f(x_hat)|``, ``A = (1 - lam) R + lam D``.

    Parameters
    ----------
    model : ACAE
        Trained model (used in eval mode; its mode is restored afterwards).
    patches : (N, channels, P, P) float array or Tensor
        Patches in [-1, 1].
    lam : float, optional
        Weight of the discrimination score (paper: 0.1).
    batch_size : int, optional
        Patches per forward pass.
    device : str or torch.device, optional
        Where to compute; default the model's device.
    keep_images : bool, optional
        Also return reconstructions and residual images.

    Returns
    -------
    dict
        ``residual_score``, ``discrimination_score``, ``anomaly_score``,
        ``discriminator_output`` (sigmoid of D on the query patch, probability of "real")
        as (N,) float64 arrays; ``z`` (N, z_dim) float32; ``reconstruction`` and
        ``residual_image`` (N, channels, P, P) float32, or None without ``keep_images``.
    """
    if not 0.0 <= lam <= 1.0:
        raise InputError(f"lam must be in [0, 1], got {lam}")
    x_all = as_patch_array(patches, model.config)
    n = x_all.shape[0]
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    was_training = model.training
    original_device = next(model.parameters()).device
    model.to(device).eval()
    shape = x_all.shape
    r_score = np.zeros(n, dtype=np.float64)
    d_score = np.zeros(n, dtype=np.float64)
    p_real = np.zeros(n, dtype=np.float64)
    z_out = np.zeros((n, model.config.z_dim), dtype=np.float32)
    recon = np.zeros(shape, dtype=np.float32) if keep_images else None
    resid = np.zeros(shape, dtype=np.float32) if keep_images else None
    try:
        with torch.no_grad():
            for lo in range(0, n, max(1, batch_size)):
                hi = min(n, lo + batch_size)
                x = torch.from_numpy(x_all[lo:hi]).to(device)
                z = model.encoder(x)
                x_hat = model.decoder(z)
                logits_x, fx = model.discriminator.forward_with_features(x)
                fxh = model.discriminator.features(x_hat)
                r_img = (x - x_hat).abs()
                r_score[lo:hi] = r_img.flatten(1).sum(1).double().cpu().numpy()
                d_score[lo:hi] = (fx - fxh).abs().flatten(1).sum(1).double().cpu().numpy()
                p_real[lo:hi] = torch.sigmoid(logits_x).double().cpu().numpy()
                z_out[lo:hi] = z.cpu().numpy()
                if recon is not None and resid is not None:
                    recon[lo:hi] = x_hat.cpu().numpy()
                    resid[lo:hi] = r_img.cpu().numpy()
    finally:
        model.to(original_device)
        model.train(was_training)
    return {
        "residual_score": r_score,
        "discrimination_score": d_score,
        "anomaly_score": anomaly_score(r_score, d_score, lam),
        "discriminator_output": p_real,
        "z": z_out,
        "reconstruction": recon,
        "residual_image": resid,
    }

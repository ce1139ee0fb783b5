"""Adversarial convolutional autoencoder (aCAE): the paper's baseline (sec. 3, Table 1).

The aCAE replaces the GAN's generator by an encoder-decoder pipeline and keeps a
discriminator (context-encoder style, Pathak et al. 2016): the encoder is the
discriminator's strided-conv stack (the mirror of the generator) followed by a linear
bottleneck of ``z_dim`` values in [-1, 1], the decoder is the DCGAN :class:`Generator`,
and the discriminator is a DCGAN :class:`Discriminator`. It is trained with a
reconstruction loss plus a small adversarial term (weight 0.001, as in the context
encoder). Scoring uses the *same* anomaly score as AnoGAN (eq. 6) with the aCAE's direct
mapping ``x_hat = decoder(encoder(x))`` in place of the iterative latent search:
``R = sum |x - x_hat|``, ``D = sum |f(x) - f(x_hat)|`` with the aCAE discriminator's
features, ``A = (1 - lam) R + lam D``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator as GeneratorType
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_anogan import settings as defaults
from napari_anogan._atomic import atomic_path
from napari_anogan.errors import InputError, ModelError
from napari_anogan.events import EventKind, ProgressEvent
from napari_anogan.models.dcgan import Discriminator, Generator, dcgan_init
from napari_anogan.models.presets import ModelConfig

__all__ = [
    "ACAE",
    "ACAE_FORMAT",
    "ACAE_FORMAT_VERSION",
    "Encoder",
    "acae_from_state",
    "acae_scores",
    "acae_state",
    "load_acae",
    "save_acae",
    "train_acae",
]

logger = logging.getLogger(__name__)

ACAE_FORMAT = "napari-anogan-acae"
ACAE_FORMAT_VERSION = 1
REC_LOSSES = ("l1", "l2")


class Encoder(nn.Module):
    """aCAE encoder E: image patch -> latent code in [-1, 1].

    The discriminator's conv stack (strided 5x5 convs through ``d_widths``, LeakyReLU,
    batch norm after the first), then a linear layer to ``z_dim`` values and tanh, so that
    codes live in the range of the GAN's uniform prior.

    Parameters
    ----------
    config : ModelConfig
        Architecture; weights are initialised with :func:`dcgan_init`.

    Examples
    --------
    >>> from napari_anogan.models import get_preset
    >>> e = Encoder(get_preset("tiny"))
    >>> e(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 16])
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # Same layers as the discriminator's trunk (already DCGAN-initialised).
        self.net = Discriminator(config).net
        s = config.feature_size
        self.head = nn.Linear(config.d_widths[-1] * s * s, config.z_dim)
        self.head.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode patches.

        Parameters
        ----------
        x : (N, channels, patch_size, patch_size) Tensor

        Returns
        -------
        (N, z_dim) Tensor in [-1, 1]
        """
        return torch.tanh(self.head(self.net(x).flatten(1)))


class ACAE(nn.Module):
    """Adversarial convolutional autoencoder: encoder, decoder and discriminator.

    Parameters
    ----------
    config : ModelConfig
        Architecture shared with the DCGAN (``g_widths`` for the decoder, ``d_widths`` for
        the encoder and the discriminator, ``z_dim`` for the bottleneck, ``patch_size``).

    Attributes
    ----------
    encoder : Encoder
    decoder : Generator
    discriminator : Discriminator
    summary : dict
        Training summary (epochs, seed, final losses...), saved with the weights.

    Examples
    --------
    >>> from napari_anogan.models import get_preset
    >>> model = ACAE(get_preset("tiny"))
    >>> model(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Generator(config)
        self.discriminator = Discriminator(config)
        self.summary: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct patches: ``decoder(encoder(x))``.

        Parameters
        ----------
        x : (N, channels, patch_size, patch_size) Tensor

        Returns
        -------
        (N, channels, patch_size, patch_size) Tensor in [-1, 1]
        """
        return self.decoder(self.encoder(x))


def _check_patches(patches: np.ndarray | torch.Tensor, config: ModelConfig) -> np.ndarray:
    if isinstance(patches, torch.Tensor):
        patches = patches.detach().cpu().numpy()
    arr = np.asarray(patches)
    expected = (config.channels, config.patch_size, config.patch_size)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != expected:
        raise InputError(
            f"patches must have shape (N, {expected[0]}, {expected[1]}, {expected[2]}) "
            f"for this model, got {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"patches must be floating point in [-1, 1], got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        raise InputError("patches contain NaN or infinite values")
    return arr


def _sample_grid(x: torch.Tensor, x_hat: torch.Tensor, k: int = 8) -> np.ndarray:
    """Two rows of patches (inputs over reconstructions), first channel, float32."""
    k = min(k, x.shape[0])
    top = torch.cat(list(x[:k, 0]), dim=1)
    bottom = torch.cat(list(x_hat[:k, 0]), dim=1)
    return torch.cat([top, bottom], dim=0).detach().cpu().numpy().astype(np.float32)


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
    x_all = _check_patches(patches, config)
    n = x_all.shape[0]
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
            ones = torch.ones(x.shape[0], device=device)
            zeros = torch.zeros(x.shape[0], device=device)

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
    x_all = _check_patches(patches, model.config)
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
        "anomaly_score": (1.0 - lam) * r_score + lam * d_score,
        "discriminator_output": p_real,
        "z": z_out,
        "reconstruction": recon,
        "residual_image": resid,
    }


def acae_state(model: ACAE) -> dict[str, Any]:
    """Plain dict of the model (tensors, str, numbers, lists): ``torch.load(weights_only=True)``.

    Parameters
    ----------
    model : ACAE

    Returns
    -------
    dict
        ``format``, ``format_version``, ``config`` (``ModelConfig.to_dict()``), ``encoder``,
        ``decoder``, ``discriminator`` (CPU state dicts) and ``summary``.
    """

    def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    return {
        "format": ACAE_FORMAT,
        "format_version": ACAE_FORMAT_VERSION,
        "config": model.config.to_dict(),
        "encoder": cpu_state(model.encoder),
        "decoder": cpu_state(model.decoder),
        "discriminator": cpu_state(model.discriminator),
        "summary": dict(model.summary),
    }


def acae_from_state(state: dict[str, Any], source: str | os.PathLike | None = None) -> ACAE:
    """Rebuild an :class:`ACAE` (eval mode, CPU) from :func:`acae_state` output.

    Parameters
    ----------
    state : dict
        As written by :func:`acae_state`.
    source : str or PathLike, optional
        File it came from, named in error messages.

    Returns
    -------
    ACAE

    Raises
    ------
    ModelError
        If the dict is not an aCAE state, has a newer format or does not fit its config.
    """
    if not isinstance(state, dict) or state.get("format") != ACAE_FORMAT:
        raise ModelError("not an aCAE model file (missing format tag)", source)
    version = state.get("format_version")
    if not isinstance(version, int) or version > ACAE_FORMAT_VERSION:
        raise ModelError(
            f"aCAE format version {version!r} is newer than supported ({ACAE_FORMAT_VERSION})",
            source,
        )
    try:
        config = ModelConfig.from_dict(dict(state["config"]))
        model = ACAE(config)
        model.encoder.load_state_dict(state["encoder"])
        model.decoder.load_state_dict(state["decoder"])
        model.discriminator.load_state_dict(state["discriminator"])
    except ModelError as exc:
        raise ModelError(exc.reason, source) from exc
    except (KeyError, RuntimeError, TypeError) as exc:
        raise ModelError(f"aCAE weights do not match their config: {exc}", source) from exc
    model.summary = dict(state.get("summary") or {})
    return model.eval()


def save_acae(model: ACAE, path: str | os.PathLike) -> None:
    """Write the model to ``path`` atomically (loadable with ``weights_only=True``).

    Parameters
    ----------
    model : ACAE
    path : str or PathLike
        Destination file (e.g. ``acae.pt``).
    """
    with atomic_path(path) as tmp:
        torch.save(acae_state(model), tmp)


def load_acae(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ACAE:
    """Load a model written by :func:`save_acae` without executing code.

    Parameters
    ----------
    path : str or PathLike
        File written by :func:`save_acae`.
    map_location : str or torch.device, optional
        Device for the loaded weights.

    Returns
    -------
    ACAE
        In eval mode, on ``map_location``.

    Raises
    ------
    ModelError
        If the file is missing, unreadable, needs pickle or is not an aCAE.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError("aCAE model file not found", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise ModelError(f"cannot read aCAE model ({type(exc).__name__}: {exc})", path) from exc
    return acae_from_state(state, path).to(map_location)

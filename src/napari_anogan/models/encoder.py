"""f-AnoGAN encoder E: a learnt inverse of the generator (Schlegl et al. 2019, "izi_f").

The paper's mapping (AnoGAN 2017, sec. 2.2) searches z for every query patch with 500
backpropagation steps. f-AnoGAN instead trains an encoder E after the GAN, with G and D
frozen, so that ``G(E(x))`` reconstructs ``x`` both in image space and in the
discriminator's feature space (the "izi_f" architecture)::

    L(E) = mean (x - G(E(x)))**2  +  kappa * mean (f(x) - f(G(E(x))))**2

with ``f`` the output of D's last conv layer (the same features as the AnoGAN
discrimination loss, eq. 4) and ``kappa = 1`` in f-AnoGAN. ``E(x)`` is one forward pass:
used alone it is the ``encoder`` mapping mode, and as the start of a few steps of the
paper's loss it is the ``hybrid`` mode (see :mod:`napari_anogan.mapping`).

The architecture: D's strided conv trunk, a linear layer to ``z_dim`` values and tanh, so
every code lies inside the generator's prior box U[-1, 1]. The aCAE baseline
(:mod:`napari_anogan.evaluation.acae`) uses the same encoder.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from napari_anogan.models.dcgan import Discriminator, dcgan_init
from napari_anogan.models.presets import ModelConfig

__all__ = ["Encoder", "encode", "encoder_loss"]


class Encoder(nn.Module):
    """f-AnoGAN encoder E: image patch -> latent code in (-1, 1).

    Strided 5x5 convs through ``d_widths`` (LeakyReLU, batch norm after the first), a
    linear layer to ``z_dim`` values, then tanh: codes stay in the range of the
    generator's uniform prior. Weights DCGAN-initialised.

    Parameters
    ----------
    config : ModelConfig
        The GAN's architecture (``d_widths``, ``kernel``, ``z_dim``, ``patch_size``).

    Examples
    --------
    >>> from napari_anogan.models import get_preset
    >>> e = Encoder(get_preset("tiny"))
    >>> z = e.eval()(torch.zeros(2, 1, 64, 64))
    >>> z.shape, bool(z.abs().max() < 1)
    (torch.Size([2, 16]), True)
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


def encoder_loss(
    x: torch.Tensor,
    generator: nn.Module,
    discriminator: nn.Module,
    encoder: nn.Module,
    kappa: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compute the izi_f training loss of f-AnoGAN for one batch.

    Parameters
    ----------
    x : (N, C, P, P) Tensor
        Healthy patches in [-1, 1].
    generator, discriminator : nn.Module
        The trained, frozen G and D (in eval mode; the caller freezes them).
    encoder : nn.Module
        E being trained.
    kappa : float
        Weight of the feature residual (f-AnoGAN: 1).

    Returns
    -------
    loss : scalar Tensor
        ``image + kappa * feature``.
    image : scalar Tensor
        Mean squared image residual ``mean (x - G(E(x)))**2``.
    feature : scalar Tensor
        Mean squared feature residual ``mean (f(x) - f(G(E(x))))**2``.
    """
    x_hat = generator(encoder(x))
    with torch.no_grad():
        fx = discriminator.features(x).float()
    f_hat = discriminator.features(x_hat).float()
    # float32 residuals also under autocast (where G and D run in bf16)
    image = torch.mean((x.float() - x_hat.float()) ** 2)
    feature = torch.mean((fx - f_hat) ** 2)
    return image + kappa * feature, image, feature


def encode(
    encoder: nn.Module,
    patches: np.ndarray,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Latent codes ``E(x)`` of patches, streamed in batches without autograd.

    Parameters
    ----------
    encoder : nn.Module
        Trained E; used in eval mode (its mode and device are restored afterwards).
    patches : (N, C, P, P) float32 ndarray
        Patches in [-1, 1].
    batch_size : int
        Patches per forward pass.
    device : str or torch.device
        Where to compute.

    Returns
    -------
    (N, z_dim) float32 ndarray
    """
    device = torch.device(device)
    was_training = encoder.training
    old_device = next(encoder.parameters()).device
    encoder.eval().to(device)
    z_dim = encoder.config.z_dim
    out = np.empty((patches.shape[0], z_dim), np.float32)
    try:
        with torch.inference_mode():
            for lo in range(0, patches.shape[0], max(1, batch_size)):
                x = torch.from_numpy(np.ascontiguousarray(patches[lo : lo + batch_size]))
                out[lo : lo + x.shape[0]] = encoder(x.to(device)).float().cpu().numpy()
    finally:
        encoder.to(old_device).train(was_training)
    return out

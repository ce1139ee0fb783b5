"""DCGAN generator and discriminator of AnoGAN (Schlegl et al. 2017, sec. 2.1 and 3).

Architecture after Radford et al. (DCGAN) as adapted by the paper: grey-scale 64x64
patches, 5x5 kernels, generator 512-256-128-64 and discriminator 64-128-256-512
channels (``paper`` preset). The discriminator exposes the output of its last conv
layer, ``f(x)``, which the mapping's discrimination loss (eq. 4) compares.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from napari_anogan.errors import InputError
from napari_anogan.models.presets import ModelConfig

__all__ = ["Discriminator", "Generator", "as_patch_array", "dcgan_init", "sample_prior"]


def dcgan_init(module: nn.Module) -> None:
    """Initialise one module as in DCGAN; use with ``model.apply(dcgan_init)``.

    Conv, transposed-conv and linear weights ~ N(0, 0.02), batch-norm scale ~ N(1, 0.02),
    all biases 0. ``Module.apply`` visits every sub-module, so every conv layer is reached
    (applying it only to the top module is a known pitfall).

    Parameters
    ----------
    module : nn.Module
        Any module; types other than the above are left unchanged.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def sample_prior(
    n: int,
    config: ModelConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw ``n`` latent vectors from the model's prior (U[-1, 1]).

    Sampling happens on the CPU with ``generator`` and is then moved to ``device``, so
    the same seed gives the same z on every device.

    Parameters
    ----------
    n : int
        Number of vectors.
    config : ModelConfig
        Supplies ``z_dim`` and ``z_prior``.
    generator : torch.Generator, optional
        CPU random generator (seeded by the caller for reproducibility).
    device : torch.device or str
        Where the result goes.

    Returns
    -------
    (n, z_dim) float32 Tensor
    """
    z = torch.rand(n, config.z_dim, generator=generator) * 2.0 - 1.0
    return z.to(device)


class Generator(nn.Module):
    """DCGAN generator G: latent z -> image patch in [-1, 1].

    z is linearly projected to a ``g_widths[0]`` x 4 x 4 map (batch norm + ReLU), then
    each entry of ``g_widths`` after the first, and finally the image channels, is
    reached by a fractionally-strided 5x5 conv (stride 2, x2 upsampling) with batch norm
    and ReLU in between and tanh at the output.

    Parameters
    ----------
    config : ModelConfig
        Architecture; weights are initialised with :func:`dcgan_init`.

    Examples
    --------
    >>> from napari_anogan.models import get_preset
    >>> g = Generator(get_preset("tiny"))
    >>> g(torch.zeros(2, 16)).shape
    torch.Size([2, 1, 64, 64])
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        w0 = config.g_widths[0]
        s = config.g_start_size
        k = config.kernel
        self.project = nn.Linear(config.z_dim, w0 * s * s, bias=False)
        self.project_bn = nn.BatchNorm2d(w0)
        layers: list[nn.Module] = []
        widths = [*config.g_widths, config.channels]
        for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
            last = i == len(widths) - 2
            layers.append(
                nn.ConvTranspose2d(
                    c_in, c_out, k, stride=2, padding=k // 2, output_padding=1, bias=last
                )
            )
            if last:
                layers.append(nn.Tanh())
            else:
                layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Generate patches.

        Parameters
        ----------
        z : (N, z_dim) Tensor

        Returns
        -------
        (N, channels, patch_size, patch_size) Tensor in [-1, 1]
        """
        s = self.config.g_start_size
        h = self.project(z).view(z.shape[0], self.config.g_widths[0], s, s)
        h = torch.relu(self.project_bn(h))
        return self.net(h)


class Discriminator(nn.Module):
    """DCGAN discriminator D: image patch -> one logit (real vs generated).

    Strided 5x5 convs (stride 2) through ``d_widths`` with LeakyReLU(0.2), batch norm on
    all but the first (as in DCGAN), then a linear layer to one scalar logit.
    ``D(x)`` in the paper is ``sigmoid(logit)``.

    Parameters
    ----------
    config : ModelConfig
        Architecture; weights are initialised with :func:`dcgan_init`.

    Examples
    --------
    >>> from napari_anogan.models import get_preset
    >>> d = Discriminator(get_preset("tiny"))
    >>> x = torch.zeros(2, 1, 64, 64)
    >>> d(x).shape, d.features(x).shape
    (torch.Size([2]), torch.Size([2, 32, 4, 4]))
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        k = config.kernel
        layers: list[nn.Module] = []
        widths = [config.channels, *config.d_widths]
        for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
            first = i == 0
            layers.append(nn.Conv2d(c_in, c_out, k, stride=2, padding=k // 2, bias=first))
            if not first:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.net = nn.Sequential(*layers)
        s = config.feature_size
        self.head = nn.Linear(config.d_widths[-1] * s * s, 1)
        self.apply(dcgan_init)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last conv layer (after its activation): f(x) of eq. (4).

        Parameters
        ----------
        x : (N, channels, patch_size, patch_size) Tensor

        Returns
        -------
        (N, d_widths[-1], feature_size, feature_size) Tensor
        """
        return self.net(x)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and features from one pass.

        Parameters
        ----------
        x : (N, channels, patch_size, patch_size) Tensor

        Returns
        -------
        logits : (N,) Tensor
        features : (N, d_widths[-1], feature_size, feature_size) Tensor
        """
        f = self.net(x)
        return self.head(f.flatten(1)).squeeze(1), f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (pre-sigmoid) of "real".

        Parameters
        ----------
        x : (N, channels, patch_size, patch_size) Tensor

        Returns
        -------
        (N,) Tensor
        """
        return self.forward_with_features(x)[0]


def as_patch_array(patches: np.ndarray | torch.Tensor, config: ModelConfig) -> np.ndarray:
    """Check patches against a model's config; return them as contiguous float32 numpy.

    Parameters
    ----------
    patches : (N, C, P, P) float ndarray or Tensor
        Patches in [-1, 1], ``C`` and ``P`` those of ``config``.
    config : ModelConfig

    Returns
    -------
    (N, C, P, P) ndarray of float32

    Raises
    ------
    InputError
        Wrong shape, not floating point, NaN or infinite values.
    """
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
    for lo in range(0, arr.shape[0], 65536):  # chunked: no full-size temporary
        if not np.isfinite(arr[lo : lo + 65536]).all():
            raise InputError("patches contain NaN or infinite values")
    return arr

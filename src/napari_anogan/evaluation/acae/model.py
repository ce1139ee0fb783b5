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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_anogan.errors import ModelError
from napari_anogan.models.dcgan import Discriminator, Generator
from napari_anogan.models.encoder import Encoder
from napari_anogan.models.presets import ModelConfig

logger = logging.getLogger(__name__)

ACAE_FORMAT = "napari-anogan-acae"
ACAE_FORMAT_VERSION = 1
REC_LOSSES = ("l1", "l2")


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
    from napari_anogan.checkpoint import write_torch

    write_torch(path, acae_state(model))


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

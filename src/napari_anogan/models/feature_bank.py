"""Feature-space anomaly score: distance of a patch's discriminator features to healthy ones.

AnoGAN's scores compare a patch with its reconstruction G(z). On real OCT the residual is
dominated by speckle and by anatomy the small generator cannot draw (the optic disc, a
steep fovea), so a healthy patch is often reconstructed worse than a diseased one. This
score does not reconstruct: it embeds a patch with the discriminator's feature layer f(x)
(eq. 4 of the paper), and measures how far that embedding lies from the nearest of a
memory bank of healthy training patches' embeddings, the nearest-neighbour idea of
PatchCore (Roth et al. 2022), here on the project's own networks since no pretrained
backbone can be downloaded. kNN search is a matrix product (``torch.cdist``); nothing
here needs an index library for banks of ~10^4 entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["FeatureBank", "build_feature_bank", "feature_distance", "patch_embeddings"]


@dataclass
class FeatureBank:
    """Healthy patch embeddings and the projection that made them.

    Attributes
    ----------
    embeddings : (M, d) ndarray of float16
        Unit-length embeddings of healthy training patches.
    projection : (F, d) ndarray of float32
        Random Gaussian projection from the discriminator's F feature values to d.
    """

    embeddings: np.ndarray
    projection: np.ndarray

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, np.float16)
        self.projection = np.asarray(self.projection, np.float32)
        if self.embeddings.ndim != 2 or self.projection.ndim != 2:
            raise ValueError("feature bank: embeddings and projection must be 2-D")
        if self.embeddings.shape[1] != self.projection.shape[1]:
            raise ValueError(
                f"feature bank: embeddings have {self.embeddings.shape[1]} dimensions, "
                f"the projection makes {self.projection.shape[1]}"
            )
        if len(self.embeddings) == 0:
            raise ValueError("feature bank: no embeddings")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)


def patch_embeddings(
    discriminator: nn.Module,
    patches: np.ndarray,
    projection: np.ndarray,
    *,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Unit-length projected discriminator features of patches.

    f(x) (the discriminator's last conv layer, flattened) is scaled to unit length,
    projected to ``d`` dimensions and scaled to unit length again, so that the
    Euclidean distance of two embeddings is a cosine distance.

    Parameters
    ----------
    discriminator : nn.Module
        D, with a ``features`` method (used in eval mode; its mode is restored).
    patches : (N, C, P, P) float32 ndarray
        Patches in [-1, 1].
    projection : (F, d) float32 ndarray
        F must equal the number of feature values of one patch.
    batch_size : int
        Patches per forward pass.
    device : str or torch.device
        Where to compute.

    Returns
    -------
    (N, d) ndarray of float32
    """
    device = torch.device(device)
    proj = torch.from_numpy(np.asarray(projection, np.float32)).to(device)
    was_training = discriminator.training
    discriminator.eval()
    out = np.empty((len(patches), proj.shape[1]), np.float32)
    try:
        with torch.inference_mode():
            for lo in range(0, len(patches), max(1, batch_size)):
                x = torch.from_numpy(np.ascontiguousarray(patches[lo : lo + batch_size]))
                f = discriminator.features(x.to(device)).flatten(1).float()
                if f.shape[1] != proj.shape[0]:
                    raise ValueError(
                        f"feature bank: the discriminator gives {f.shape[1]} feature values "
                        f"per patch, the bank's projection expects {proj.shape[0]}"
                    )
                out[lo : lo + len(x)] = _unit(_unit(f) @ proj).cpu().numpy()
    finally:
        discriminator.train(was_training)
    return out


def build_feature_bank(
    discriminator: nn.Module,
    patches: np.ndarray,
    *,
    dim: int,
    max_size: int,
    seed: int,
    device: str | torch.device = "cpu",
) -> FeatureBank:
    """Embed healthy patches into a :class:`FeatureBank`.

    Parameters
    ----------
    discriminator : nn.Module
        The trained D.
    patches : (N, C, P, P) float32 ndarray
        Healthy patches (grid patches of the training B-scans).
    dim : int
        Embedding dimensions after the random projection.
    max_size : int
        At most this many embeddings are kept (a seeded random choice).
    seed : int
        Seed of the projection and of the choice.
    device : str or torch.device
        Where to compute.

    Returns
    -------
    FeatureBank
    """
    if len(patches) == 0:
        raise ValueError("feature bank: no healthy patches")
    with torch.inference_mode():
        n_features = discriminator.features(torch.from_numpy(patches[:1]).to(device)).numel()
    gen = torch.Generator().manual_seed(int(seed))
    projection = (torch.randn(n_features, int(dim), generator=gen) / np.sqrt(dim)).numpy()
    rng = np.random.default_rng(int(seed))
    keep = np.sort(rng.choice(len(patches), size=min(int(max_size), len(patches)), replace=False))
    embeddings = patch_embeddings(discriminator, patches[keep], projection, device=device)
    return FeatureBank(embeddings=embeddings.astype(np.float16), projection=projection)


def feature_distance(
    bank: FeatureBank,
    embeddings: np.ndarray,
    *,
    batch_size: int = 2048,
) -> np.ndarray:
    """Distance of each embedding to its nearest healthy embedding in ``bank``.

    Parameters
    ----------
    bank : FeatureBank
    embeddings : (N, d) ndarray
        From :func:`patch_embeddings` with ``bank.projection``.
    batch_size : int
        Query rows per distance matrix (bounds memory: batch_size x M floats).

    Returns
    -------
    (N,) ndarray of float64
        Euclidean distance of unit vectors, in [0, 2].
    """
    ref = torch.from_numpy(bank.embeddings.astype(np.float32))
    q = torch.from_numpy(np.asarray(embeddings, np.float32))
    out = np.empty(len(q), np.float64)
    for lo in range(0, len(q), max(1, batch_size)):
        d = torch.cdist(q[lo : lo + batch_size], ref)
        out[lo : lo + batch_size] = d.min(dim=1).values.double().numpy()
    return out

"""AnoGAN networks: DCGAN generator and discriminator, configuration and presets."""

from napari_anogan.models.dcgan import Discriminator, Generator, dcgan_init, sample_prior
from napari_anogan.models.presets import PRESETS, ModelConfig, get_preset

__all__ = [
    "PRESETS",
    "Discriminator",
    "Generator",
    "ModelConfig",
    "dcgan_init",
    "get_preset",
    "sample_prior",
]

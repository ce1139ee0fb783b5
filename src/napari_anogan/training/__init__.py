"""Training on healthy patches.

The GAN (:mod:`.gan`), the f-AnoGAN encoder (:mod:`.encoder`), the healthy reference
(:mod:`.reference`), the feature bank (:mod:`.bank`), multi-process training
(:mod:`.ddp`), their settings (:mod:`.config`) and shared helpers (:mod:`.common`).
"""

from napari_anogan.training.bank import add_feature_bank
from napari_anogan.training.common import holdout_split, training_amp
from napari_anogan.training.config import EncoderConfig, TrainConfig
from napari_anogan.training.encoder import EncoderResult, add_encoder, train_encoder
from napari_anogan.training.gan import TrainResult, train_gan
from napari_anogan.training.reference import healthy_reference, refresh_reference

__all__ = [
    "EncoderConfig",
    "EncoderResult",
    "TrainConfig",
    "TrainResult",
    "add_encoder",
    "add_feature_bank",
    "healthy_reference",
    "holdout_split",
    "refresh_reference",
    "train_encoder",
    "train_gan",
    "training_amp",
]

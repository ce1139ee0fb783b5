"""The paper's baseline, the adversarial convolutional autoencoder (aCAE): model and training."""

from napari_anogan.evaluation.acae.model import (
    ACAE,
    acae_from_state,
    acae_state,
    load_acae,
    save_acae,
)
from napari_anogan.evaluation.acae.train import acae_scores, train_acae

__all__ = [
    "ACAE",
    "acae_from_state",
    "acae_scores",
    "acae_state",
    "load_acae",
    "save_acae",
    "train_acae",
]

"""The feature bank: healthy patches' discriminator embeddings, stored in a trained model.

Built after the GAN (and the encoder) from grid patches of the training B-scans; the
held-out B-scans stay out of it, so that the healthy reference of the feature distance is
that of unseen healthy scans (:mod:`napari_anogan.models.feature_bank`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_anogan import settings as defaults
from napari_anogan.checkpoint import (
    feature_bank_to_checkpoint,
    read_checkpoint,
    reference_from_checkpoint,
    save_checkpoint,
)
from napari_anogan.device import resolve_device
from napari_anogan.events import EventKind, ProgressEvent
from napari_anogan.models import ModelConfig
from napari_anogan.models.feature_bank import (
    FeatureBank,
    build_feature_bank,
    feature_distance,
    patch_embeddings,
)
from napari_anogan.training.common import check_patches, frozen_gan, holdout_split, reference_split
from napari_anogan.training.config import TrainConfig
from napari_anogan.training.reference import healthy_reference, stored_encoder_and_mode


def add_feature_bank(
    checkpoint_path: str | os.PathLike,
    bank_patches: np.ndarray,
    reference_patches: np.ndarray | None,
    *,
    dim: int = defaults.FEATURE_DIM,
    max_size: int = defaults.FEATURE_BANK_SIZE,
    device: str = defaults.DEVICE,
    bank_groups: np.ndarray | None = None,
) -> Generator[ProgressEvent, None, tuple[FeatureBank, dict[str, Any]]]:
    """Store a feature bank of healthy patches in a trained model, and its reference.

    The bank holds the embeddings
    (:func:`~napari_anogan.models.feature_bank.patch_embeddings`) of ``bank_patches``,
    grid patches of the training B-scans cut as scoring cuts them. The healthy reference
    is mapped again with the feature distance among its scores, from the held-out
    B-scans' patches (``reference_patches``), which stay out of the bank. The checkpoint
    is rewritten atomically.

    Parameters
    ----------
    checkpoint_path : path
        A trained model (with or without an encoder).
    bank_patches : (N, C, P, P) float32 ndarray
        Grid patches of the training B-scans.
    reference_patches : (M, C, P, P) float32 ndarray or None
        Grid patches of the held-out B-scans. None (too few B-scans to hold any out):
        with ``bank_groups`` of at least two B-scans, every patch joins the bank and the
        feature distance's reference is cross-fitted: each B-scan's patches are measured
        against the bank of the OTHER B-scans (as an unseen healthy scan would be); the
        other scores' reference comes from the hold-out fraction of the patches. A single
        B-scan: that fraction is held out of the bank for the whole reference.
    dim, max_size : int
        Embedding dimensions and most embeddings kept (:mod:`napari_anogan.settings`).
    device : str
        Device of the reference mapping.
    bank_groups : (N,) int ndarray, optional
        The B-scan each of ``bank_patches`` comes from (for the cross-fitted reference).

    Yields
    ------
    ProgressEvent
        STAGE, the reference mapping's events, CHECKPOINT.

    Returns
    -------
    bank : FeatureBank
    reference : dict
        The new healthy reference (as
        :func:`~napari_anogan.checkpoint.reference_from_checkpoint`).
    """
    path = Path(checkpoint_path)
    data = read_checkpoint(path)
    model_config = ModelConfig.from_json(data["model_config"])
    train_config = TrainConfig.from_dict(json.loads(data["train_config"]))
    training = json.loads(data["training"])
    check_patches(bank_patches, model_config)
    g, d = frozen_gan(data, model_config)
    cross_fit = (
        reference_patches is None and bank_groups is not None and len(np.unique(bank_groups)) >= 2
    )
    all_patches = bank_patches
    if cross_fit:  # few B-scans: all of them in the bank, the reference cross-fitted
        _, ref_order = holdout_split(
            len(bank_patches), train_config.holdout_fraction, train_config.seed
        )
        ref_set = bank_patches
    elif reference_patches is None:  # a single B-scan: hold out patches of the grid itself
        keep, ref_order = holdout_split(
            len(bank_patches), train_config.holdout_fraction, train_config.seed
        )
        ref_set, bank_patches = bank_patches, bank_patches[keep]
    else:
        _, ref_set, ref_order = reference_split(
            bank_patches, reference_patches, train_config, model_config
        )
    yield ProgressEvent(
        EventKind.STAGE, 0, 1, message=f"feature bank of {len(bank_patches)} healthy patches"
    )
    bank = build_feature_bank(
        d, bank_patches, dim=dim, max_size=max_size, seed=int(training.get("seed", 0))
    )
    data["feature_bank"] = feature_bank_to_checkpoint(bank)
    encoder, mode = stored_encoder_and_mode(data, model_config)
    mcfg = train_config.reference_mapping(device=str(resolve_device(device)), mode=mode)
    data["reference"] = yield from healthy_reference(
        g, d, encoder, ref_set, ref_order, train_config, mcfg, bank
    )
    if cross_fit and data["reference"]:
        distances = _cross_fitted_distances(d, all_patches, np.asarray(bank_groups), bank)
        levels = data["reference"]["levels"].numpy()
        data["reference"]["quantiles"]["feature_distance"] = torch.from_numpy(
            np.quantile(distances, levels / 100.0)
        )
    training["feature_bank"] = {
        "n_patches": len(bank_patches),
        "size": len(bank.embeddings),
        "reference": "cross-fitted over B-scans" if cross_fit else "held out",
    }
    data["training"] = json.dumps(training, sort_keys=True)
    save_checkpoint(path, data)
    yield ProgressEvent(EventKind.CHECKPOINT, 1, 1, message=str(path))
    return bank, reference_from_checkpoint(data["reference"])


def _cross_fitted_distances(
    d, patches: np.ndarray, groups: np.ndarray, bank: FeatureBank
) -> np.ndarray:
    """Each patch's feature distance to the healthy patches of the OTHER B-scans."""
    embeddings = patch_embeddings(d, patches, bank.projection)
    out = np.empty(len(patches), np.float64)
    for group in np.unique(groups):
        own = groups == group
        others = FeatureBank(embeddings=embeddings[~own], projection=bank.projection)
        out[own] = feature_distance(others, embeddings[own])
    return out

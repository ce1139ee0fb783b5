"""The healthy reference: held-out healthy patches mapped and their score quantiles stored.

A score is shown as a percentile of this distribution; it is built after training
(:func:`healthy_reference`) and can be rebuilt for new grid patches
(:func:`refresh_reference`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_anogan.checkpoint import (
    feature_bank_from_checkpoint,
    read_checkpoint,
    reference_from_checkpoint,
    reference_to_checkpoint,
    save_checkpoint,
)
from napari_anogan.device import resolve_device
from napari_anogan.errors import ModelError
from napari_anogan.events import EventKind, ProgressEvent
from napari_anogan.mapping import MappingConfig, map_to_latent
from napari_anogan.models import ModelConfig
from napari_anogan.models.encoder import Encoder
from napari_anogan.models.feature_bank import FeatureBank, feature_distance, patch_embeddings
from napari_anogan.scoring import QUANTILE_LEVELS, score_quantiles
from napari_anogan.training.common import (
    frozen_gan,
    reference_split,
)
from napari_anogan.training.config import TrainConfig

logger = logging.getLogger(__name__)


def stored_encoder_and_mode(
    data: dict[str, Any], model_config: ModelConfig
) -> tuple[nn.Module | None, str]:
    """Return a raw checkpoint's encoder (eval mode, or None) and its reference's mapping mode.

    The mode is the stored reference's, else ``hybrid`` with an encoder and ``iterative``
    without: a rebuilt reference is mapped as the old one was.
    """
    encoder = None
    if data.get("encoder") is not None:
        encoder = Encoder(model_config)
        encoder.load_state_dict(data["encoder"])
        encoder.eval()
    old = json.loads(data["reference"]["settings"]) if data.get("reference") else {}
    return encoder, old.get("mode", "hybrid" if encoder is not None else "iterative")


def stored_bank(data: dict[str, Any], model_config: ModelConfig, path: Path) -> FeatureBank | None:
    """Return the feature bank of a raw checkpoint dict, checked against its model (or None)."""
    return feature_bank_from_checkpoint(data.get("feature_bank"), model_config, path)


def healthy_reference(
    g: nn.Module,
    d: nn.Module,
    encoder: nn.Module | None,
    patches: np.ndarray,
    hold_idx: np.ndarray,
    train_config: TrainConfig,
    mcfg: MappingConfig,
    bank: FeatureBank | None = None,
) -> Generator[ProgressEvent, None, dict[str, Any]]:
    """Map the held-out healthy patches with ``mcfg``; return the checkpoint's reference.

    With a feature ``bank``, the held-out patches' feature distances join the scores.
    The quantiles of their pixel residual |x - G(z)| are stored too, as
    ``pixel_residual``: the residual heatmap is transparent below one of them
    (:mod:`napari_anogan.scoring.display`).
    """
    n_ref = min(hold_idx.size, train_config.reference_max_patches)
    if n_ref == 0:
        logger.warning("no held-out patches: the healthy reference distribution is empty")
        return {}
    yield ProgressEvent(
        EventKind.REFERENCE,
        0,
        n_ref,
        message=f"scoring {n_ref} held-out healthy patches for the reference ({mcfg.mode})",
    )
    sel = np.sort(hold_idx[:n_ref])
    held = np.asarray(patches[sel], np.float32)
    result = yield from map_to_latent(g, d, held, mcfg, encoder=encoder)
    scores = result.scores()
    if bank is not None:
        scores["feature_distance"] = feature_distance(
            bank, patch_embeddings(d, held, bank.projection)
        )
    scores["pixel_residual"] = pixel_residuals(g, held, result.z)
    quantiles = score_quantiles(scores, QUANTILE_LEVELS)
    return reference_to_checkpoint(
        QUANTILE_LEVELS, quantiles, result.config.to_dict(), n_patches=n_ref
    )


def pixel_residuals(
    g: nn.Module, patches: np.ndarray, z: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Every pixel's residual |x - G(z)| of mapped patches, flattened (float32).

    Parameters
    ----------
    g : nn.Module
        The generator (eval mode), on its device.
    patches : (N, C, P, P) ndarray
        The patches, in [-1, 1].
    z : (N, ...) ndarray
        Their latent codes, as the mapping returned them.
    batch_size : int
        Patches run through G at once.

    Returns
    -------
    (N * C * P * P,) ndarray of float32
    """
    device = next(g.parameters()).device
    parts = []
    with torch.no_grad():
        for a in range(0, len(patches), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(patches[a : a + batch_size], np.float32))
            codes = torch.from_numpy(np.ascontiguousarray(z[a : a + batch_size], np.float32))
            gz = g(codes.to(device)).float().cpu()
            parts.append((x - gz).abs().numpy().ravel())
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def refresh_reference(
    checkpoint_path: str | os.PathLike,
    reference_patches: np.ndarray,
    device: str = "auto",
    lam: float | None = None,
) -> Generator[ProgressEvent, None, dict[str, Any]]:
    """Recompute a trained model's healthy reference from new reference patches.

    G, D and the encoder are kept; only the reference distribution is replaced, mapped in
    the stored reference's mode, with the patches in the order training would use. For a
    model whose reference came from held-out B-scans (the default) after the way grid
    patches are cut for scoring has changed: the reference must come from patches cut as
    the scored ones are, or percentiles and candidates drift.

    Parameters
    ----------
    checkpoint_path : path
        The model; rewritten atomically.
    reference_patches : (M, C, P, P) float ndarray
        Grid patches of the model's held-out B-scans
        (:func:`napari_anogan.pipeline.reference_patches_of`).
    device : str
        Device of the reference mapping.
    lam : float, optional
        λ of the reference mapping (and of the scores), stored as the model's
        ``reference_lam``; default: the model's own. Give the λ the model will be scored
        with, or percentiles compare unlike scores.

    Yields
    ------
    ProgressEvent
        The reference mapping's events, then CHECKPOINT.

    Returns
    -------
    dict
        The new reference (as :func:`~napari_anogan.checkpoint.reference_from_checkpoint`).

    Raises
    ------
    ModelError
        Unreadable checkpoint, or a model whose reference came from held-out training
        patches (their patches do not depend on the scoring grid).
    """
    path = Path(checkpoint_path)
    data = read_checkpoint(path)
    model_config = ModelConfig.from_json(data["model_config"])
    train_config = TrainConfig.from_dict(json.loads(data["train_config"]))
    if lam is not None:
        train_config = replace(train_config, reference_lam=float(lam))
        data["train_config"] = json.dumps(train_config.to_dict(), sort_keys=True)
    training = json.loads(data["training"])
    if training.get("reference_holdout") != "bscans":
        raise ModelError(
            "the model's healthy reference came from held-out training patches, not from "
            "grid patches of held-out B-scans: there is nothing to recompute",
            path,
        )
    g, d = frozen_gan(data, model_config)
    encoder, mode = stored_encoder_and_mode(data, model_config)
    _, ref_set, ref_order = reference_split(
        reference_patches, reference_patches, train_config, model_config
    )
    mcfg = train_config.reference_mapping(device=str(resolve_device(device)), mode=mode)
    bank = stored_bank(data, model_config, path)
    reference = yield from healthy_reference(
        g, d, encoder, ref_set, ref_order, train_config, mcfg, bank
    )
    data["reference"] = reference
    save_checkpoint(path, data)
    yield ProgressEvent(EventKind.CHECKPOINT, 1, 1, message=str(path))
    return reference_from_checkpoint(reference)

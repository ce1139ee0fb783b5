"""The f-AnoGAN encoder (izi_f): trained for a finished, frozen G and D.

:func:`train_encoder` trains E on patches; :func:`add_encoder` does it for a checkpoint
file on the GAN's own training split, stores E and rebuilds the healthy reference with
the ``hybrid`` mapping, the scoring default for a model with an encoder.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_anogan.checkpoint import (
    read_checkpoint,
    reference_from_checkpoint,
    save_checkpoint,
)
from napari_anogan.device import amp_context, resolve_device
from napari_anogan.errors import InputError, ModelError
from napari_anogan.events import EventKind, ProgressEvent
from napari_anogan.models import ModelConfig
from napari_anogan.training.common import (
    check_patches,
    derived_seed,
    frozen_gan,
    patch_batch,
    reference_split,
    sample_grid,
    training_amp,
)
from napari_anogan.training.config import EncoderConfig, TrainConfig
from napari_anogan.training.gan import TrainResult
from napari_anogan.training.reference import healthy_reference, stored_bank

logger = logging.getLogger(__name__)


@dataclass
class EncoderResult:
    """Outcome of :func:`train_encoder`.

    Attributes
    ----------
    encoder : Encoder
        Trained E, eval mode, on the training device.
    history : list of dict
        Mean losses (``loss``, ``image``, ``feature``) of every epoch.
    final_losses : dict of str to float
        Those of the last epoch.
    """

    encoder: nn.Module
    history: list[dict[str, float]]
    final_losses: dict[str, float]


def train_encoder(
    patches: np.ndarray,
    generator: nn.Module,
    discriminator: nn.Module,
    config: EncoderConfig | None = None,
    *,
    indices: np.ndarray | None = None,
    init: dict[str, torch.Tensor] | None = None,
    deadline: float | None = None,
) -> Generator[ProgressEvent, None, EncoderResult]:
    """Train an f-AnoGAN encoder E for a trained, frozen G and D (izi_f).

    Minimises ``mean (x - G(E(x)))**2 + kappa * mean (f(x) - f(G(E(x))))**2`` over the
    patches (:func:`napari_anogan.models.encoder.encoder_loss`) with Adam. G and D are in
    eval mode with frozen parameters throughout (restored afterwards); only E learns.
    Deterministic for a given seed on the CPU; the global torch RNG is left unchanged.

    Parameters
    ----------
    patches : (N, C, P, P) float ndarray
        Healthy patches in [-1, 1] (a memory-mapped array works).
    generator, discriminator : nn.Module
        The trained GAN.
    config : EncoderConfig, optional
        Settings.
    indices : (M,) int ndarray, optional
        Train on these patches only (e.g. those not held out for the reference).
    init : dict, optional
        State dict of a trained encoder of the same architecture to start from
        (fine-tuning with ``train --init``).
    deadline : float, optional
        ``time.monotonic()`` value by which training must end: after an epoch, if the
        next one (as long as the last) would pass it, training stops there.

    Yields
    ------
    ProgressEvent
        EPOCH_START, BATCH (losses ``loss``, ``image``, ``feature``), EPOCH_END and
        SAMPLES (inputs over their reconstructions G(E(x))).

    Returns
    -------
    EncoderResult

    Raises
    ------
    InputError
        Patches of the wrong shape, or fewer than 2 to train on.

    Examples
    --------
    >>> from napari_anogan.events import drain
    >>> from napari_anogan.models import Discriminator, get_preset
    >>> from napari_anogan.models import Generator as G
    >>> cfg = get_preset("tiny", patch_size=32)
    >>> x = np.random.default_rng(0).uniform(-1, 1, (8, 1, 32, 32)).astype(np.float32)
    >>> res = drain(train_encoder(x, G(cfg), Discriminator(cfg),
    ...                           EncoderConfig(epochs=1, batch_size=4, device="cpu")))
    >>> sorted(res.final_losses)
    ['feature', 'image', 'loss']
    """
    from napari_anogan.models.encoder import Encoder, encoder_loss

    config = config or EncoderConfig()
    model_config = generator.config
    check_patches(patches, model_config)
    idx_all = np.arange(patches.shape[0]) if indices is None else np.sort(np.asarray(indices))
    if idx_all.size < 2:
        raise InputError(f"encoder training needs at least 2 patches, got {idx_all.size}")
    device = resolve_device(config.device)
    bs = min(config.batch_size, idx_all.size)
    n_batches = max(1, idx_all.size // bs)  # incomplete last batch dropped (batch norm)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(config.seed, 5))
        encoder = Encoder(model_config)
    if init is not None:
        try:
            encoder.load_state_dict(init)
        except (RuntimeError, KeyError, TypeError) as exc:
            raise ModelError(
                f"the initial model's encoder does not fit this architecture ({exc})"
            ) from exc
    use_amp = training_amp(device, config.amp)
    autocast = amp_context(device, use_amp)  # bf16: training_amp refuses GPUs without it
    layout = torch.channels_last if use_amp else torch.contiguous_format
    encoder.to(device, memory_format=layout).train()
    opt = torch.optim.Adam(encoder.parameters(), lr=config.lr)
    frozen = (generator, discriminator)
    saved = [
        (m.training, [p.requires_grad for p in m.parameters()], next(m.parameters()).device)
        for m in frozen
    ]
    history: list[dict[str, float]] = []
    logger.info(
        "training the encoder on %d patches: %d epochs, batch %d, lr %g, kappa %g, %s%s",
        idx_all.size,
        config.epochs,
        bs,
        config.lr,
        config.kappa,
        device,
        " (bf16 autocast)" if use_amp else "",
    )
    try:
        for m in frozen:
            m.eval().requires_grad_(False).to(device, memory_format=layout)
        for epoch in range(config.epochs):
            began = time.monotonic()
            yield ProgressEvent(
                EventKind.EPOCH_START,
                epoch,
                config.epochs,
                message=f"encoder epoch {epoch + 1}/{config.epochs}",
                epoch=epoch,
            )
            order = np.random.default_rng([config.seed, 6, epoch]).permutation(idx_all)
            sums = dict.fromkeys(("loss", "image", "feature"), 0.0)
            for b in range(n_batches):
                batch = np.sort(order[b * bs : (b + 1) * bs])
                x = patch_batch(patches, batch, device, use_amp)
                with autocast():
                    loss, image, feature = encoder_loss(
                        x, generator, discriminator, encoder, config.kappa
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                values = torch.stack([loss.detach(), image.detach(), feature.detach()]).tolist()
                losses = dict(zip(("loss", "image", "feature"), values, strict=True))
                for k, v in losses.items():
                    sums[k] += v
                yield ProgressEvent(
                    EventKind.BATCH,
                    b + 1,
                    n_batches,
                    message=f"encoder epoch {epoch + 1}, batch {b + 1}/{n_batches}",
                    epoch=epoch,
                    losses=losses,
                )
            means = {k: v / n_batches for k, v in sums.items()}
            history.append(means)
            yield ProgressEvent(
                EventKind.EPOCH_END,
                epoch + 1,
                config.epochs,
                message=f"encoder epoch {epoch + 1}/{config.epochs}: loss {means['loss']:.4g}",
                epoch=epoch,
                losses=means,
            )
            encoder.eval()
            with torch.no_grad():
                shown = x[:8]
                pair = np.concatenate(
                    [shown.cpu().numpy(), generator(encoder(shown)).cpu().numpy()]
                )
            encoder.train()
            yield ProgressEvent(
                EventKind.SAMPLES,
                epoch + 1,
                config.epochs,
                message="inputs and their reconstructions G(E(x))",
                epoch=epoch,
                samples=sample_grid(pair),
            )
            now = time.monotonic()
            if deadline is not None and epoch + 1 < config.epochs and 2 * now - began > deadline:
                logger.warning(
                    "time limit: encoder training stops after epoch %d of %d",
                    epoch + 1,
                    config.epochs,
                )
                break
    finally:
        for m, (was_training, flags, dev) in zip(frozen, saved, strict=True):
            m.to(dev, memory_format=torch.contiguous_format)
            m.train(was_training)
            for p, flag in zip(m.parameters(), flags, strict=True):
                p.requires_grad_(flag)
    encoder.eval()
    return EncoderResult(encoder=encoder, history=history, final_losses=dict(history[-1]))


def add_encoder(
    checkpoint_path: str | os.PathLike,
    patches: np.ndarray,
    config: EncoderConfig | None = None,
    *,
    data_fingerprint: str | None = None,
    reference_mode: str = "hybrid",
    reference_patches: np.ndarray | None = None,
    init: dict[str, torch.Tensor] | None = None,
    deadline: float | None = None,
    build_reference: bool = True,
) -> Generator[ProgressEvent, None, TrainResult]:
    """Train an f-AnoGAN encoder for a trained model and store it in its checkpoint.

    Works on any finished checkpoint (also one without optimiser states). E is trained
    on the same training split as the GAN (the checkpoint's seed and hold-out fraction),
    so the held-out healthy patches stay unseen; they are then mapped again with
    ``reference_mode`` and the checkpoint's healthy reference distribution is replaced by
    theirs, because the scoring default with an encoder is that mode (a percentile must
    compare scores of the same mapping). The previous reference (of the GAN alone) is
    dropped; its settings stay readable in ``training["encoder"]["replaced_reference"]``.
    The checkpoint is rewritten atomically, twice: with E, then with the new reference.

    Parameters
    ----------
    checkpoint_path : str or PathLike
        A checkpoint written by :func:`train_gan`.
    patches : (N, C, P, P) float ndarray
        The very patches the GAN was trained on (same N; checked against the recorded
        data fingerprint when ``data_fingerprint`` is given).
    config : EncoderConfig, optional
        Settings of the encoder training.
    data_fingerprint : str, optional
        Fingerprint of ``patches`` as recorded by the training pipeline.
    reference_mode : str
        Mapping mode of the new healthy reference (``hybrid`` or ``encoder``).
    reference_patches : (M, C, P, P) float ndarray, optional
        The GAN's reference patches (needed when it was trained with them, see
        :func:`train_gan`).
    init, deadline
        As in :func:`train_encoder`: an encoder to start from, a time to end by.
    build_reference : bool
        Map the reference patches again with the encoder (False when the caller builds
        the reference next anyway, as the feature bank does: no mapping twice).

    Yields
    ------
    ProgressEvent
        The encoder training's events, CHECKPOINT, REFERENCE and the reference
        mapping's events, DONE.

    Returns
    -------
    TrainResult
        With ``encoder`` set and the new ``reference``.

    Raises
    ------
    ModelError
        Missing/unreadable checkpoint, or patches that are not the model's training data.
    """
    config = config or EncoderConfig()
    path = Path(checkpoint_path)
    data = read_checkpoint(path)
    model_config = ModelConfig.from_json(data["model_config"])
    train_config = TrainConfig.from_dict(json.loads(data["train_config"]))
    training = json.loads(data["training"])
    check_patches(patches, model_config)
    n = patches.shape[0]
    if training.get("n_patches") not in (None, n):
        raise ModelError(
            f"the model was trained on {training.get('n_patches')} patches, got {n}: pass "
            "the model's own training patches (same inputs, seed and patches per scan)",
            path,
        )
    recorded = training.get("data_fingerprint")
    if data_fingerprint is not None and recorded and recorded != data_fingerprint:
        raise ModelError(
            "these patches are not the model's training data (data fingerprint "
            f"{data_fingerprint}, model {recorded})",
            path,
        )
    g, d = frozen_gan(data, model_config)
    if (training.get("reference_holdout") == "bscans") != (reference_patches is not None):
        raise ModelError(
            "the model's healthy reference came from "
            + (
                "held-out B-scans: pass their patches (train from the same inputs)"
                if reference_patches is None
                else "held-out patches, but reference patches were given"
            ),
            path,
        )
    train_idx, ref_set, ref_order = reference_split(
        patches, reference_patches, train_config, model_config
    )
    result = yield from train_encoder(
        patches, g, d, config, indices=train_idx, init=init, deadline=deadline
    )
    encoder = result.encoder
    old_settings = json.loads(data["reference"]["settings"]) if data["reference"] else None
    training["encoder"] = {
        "config": config.to_dict(),
        "n_train": int(train_idx.size),
        "final_losses": result.final_losses,
        "history": result.history,
        "replaced_reference": old_settings,
    }
    data["encoder"] = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    data["training"] = json.dumps(training, sort_keys=True)
    if not build_reference:
        # The GAN-only reference was mapped without E, the scoring default with an encoder
        # maps with it: the caller builds the new one next (the feature bank's).
        data["reference"] = {}
    save_checkpoint(path, data)
    yield ProgressEvent(EventKind.CHECKPOINT, 1, 2, message=str(path))

    reference = data["reference"]
    if build_reference:
        device = resolve_device(config.device)
        mcfg = train_config.reference_mapping(device=str(device), mode=reference_mode)
        bank = stored_bank(data, model_config, path)
        reference = yield from healthy_reference(
            g, d, encoder, ref_set, ref_order, train_config, mcfg, bank
        )
        data["reference"] = reference
        save_checkpoint(path, data)
        yield ProgressEvent(EventKind.CHECKPOINT, 2, 2, message=str(path))
    yield ProgressEvent(
        EventKind.DONE,
        config.epochs,
        config.epochs,
        message=f"encoder trained ({config.epochs} epochs) and stored in {path.name}",
        losses=dict(result.final_losses),
    )
    return TrainResult(
        generator=g,
        discriminator=d,
        epochs=int(training.get("epochs_done", 0)),
        final_losses=dict(training.get("final_losses", {})),
        history=list(training.get("history", [])),
        checkpoint_path=path,
        reference=reference_from_checkpoint(reference),
        encoder=encoder,
    )

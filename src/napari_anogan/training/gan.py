"""Adversarial training of the AnoGAN DCGAN on healthy patches (paper sec. 2.1).

:func:`train_gan` is a generator of :class:`~napari_anogan.events.ProgressEvent` that
returns a :class:`TrainResult`. D maximises eq. (1) (binary cross-entropy on logits:
real -> 1, generated -> 0); G maximises log D(G(z)) (the non-saturating form of eq. 2,
as in DCGAN). Adam with the DCGAN settings (lr 2e-4, beta1 0.5).

Reproducibility: model initialisation, the train/hold-out split, each epoch's shuffling
and each epoch's z draws are all derived from ``(seed, epoch)``, so the same seed gives
bitwise-identical weights on the CPU, and resuming after epoch k gives the same weights
as an uninterrupted run (G, D, their batch-norm statistics and both optimisers' states
are in the checkpoint).

After the last epoch the held-out healthy patches are mapped to the latent space and
the quantiles of their scores are stored: the healthy reference distribution used to
express a score as a percentile of healthy.

The encoder is trained afterwards (:mod:`napari_anogan.training.encoder`); the healthy
reference is built by :mod:`napari_anogan.training.reference`.

Over 500 lines on purpose: the GAN loop with its resume, DDP and checkpoint steps, which
share the run's state.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_anogan.checkpoint import (
    build_checkpoint,
    reference_from_checkpoint,
    resume_state,
    save_checkpoint,
)
from napari_anogan.device import amp_context, resolve_device
from napari_anogan.errors import ModelError
from napari_anogan.events import EventKind, ProgressEvent
from napari_anogan.models import Discriminator, ModelConfig, sample_prior
from napari_anogan.models import Generator as GeneratorNet
from napari_anogan.models.feature_bank import FeatureBank
from napari_anogan.training import ddp as _ddp
from napari_anogan.training.common import (
    check_patches,
    derived_seed,
    deterministic_algorithms,
    patch_batch,
    reference_split,
    sample_grid,
    training_amp,
)
from napari_anogan.training.config import TrainConfig
from napari_anogan.training.reference import healthy_reference

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Outcome of :func:`train_gan`.

    Attributes
    ----------
    generator, discriminator : nn.Module
        Trained models (on the training device, eval mode).
    epochs : int
        Epochs completed in total (including those before a resume).
    final_losses : dict of str to float
        Mean losses of the last epoch (``d_loss``, ``g_loss``, ``d_real``, ``d_fake``).
    history : list of dict
        Mean losses of every epoch.
    checkpoint_path : Path or None
    reference : dict
        Healthy reference distribution as in
        :attr:`napari_anogan.checkpoint.LoadedModel.reference` (empty if not computed).
    encoder : nn.Module or None
        The f-AnoGAN encoder, when :func:`add_encoder` trained one.
    feature_bank : FeatureBank or None
        The feature score's bank, when :func:`~napari_anogan.training.add_feature_bank`
        built one.
    """

    generator: nn.Module
    discriminator: nn.Module
    epochs: int
    final_losses: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint_path: Path | None = None
    reference: dict[str, Any] = field(default_factory=dict)
    encoder: nn.Module | None = None
    feature_bank: FeatureBank | None = None


def train_gan(
    patches: np.ndarray,
    model_config: ModelConfig,
    train_config: TrainConfig | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    extra: dict[str, Any] | None = None,
    build_reference: bool = True,
    reference_patches: np.ndarray | None = None,
    init: dict[str, Any] | None = None,
    deadline: float | None = None,
) -> Generator[ProgressEvent, None, TrainResult]:
    """Train the DCGAN on healthy patches; checkpoint every epoch; build the reference.

    Parameters
    ----------
    patches : (N, C, P, P) float ndarray
        Healthy training patches in [-1, 1] (a memory-mapped array works: batches are
        copied as needed). Without ``reference_patches``, a ``holdout_fraction`` of them
        is kept out of training for the reference.
    model_config : ModelConfig
        Architecture.
    train_config : TrainConfig, optional
        Settings (defaults: the paper's 20 epochs with DCGAN's Adam).
    checkpoint_path : str or PathLike, optional
        Written atomically at the end of every epoch and once more with the reference
        distribution. None: nothing is written.
    resume : bool
        Continue from ``checkpoint_path`` (its epochs are counted towards
        ``train_config.epochs``). Model config, seed, batch size, optimiser settings,
        hold-out fraction and number of patches must match.
    extra : dict, optional
        JSON-serialisable caller data: ``extra["preprocess_config"]`` becomes the
        checkpoint's preprocessing config, ``extra["data_fingerprint"]`` is recorded in
        the training summary; everything else is kept under ``training["extra"]``.
    build_reference : bool
        Map the held-out patches (iterative mode) for the healthy reference after the last
        epoch. False when an encoder follows (:func:`add_encoder` then builds the
        reference with the encoder's mapping mode, so it is not computed twice).
    reference_patches : (M, C, P, P) float ndarray, optional
        Healthy patches never trained on (the grid patches of held-out B-scans, see
        :func:`~napari_anogan.pipeline.collect_training_patches`); the reference is then
        built from them (at most ``reference_max_patches``, a seeded random choice) and
        every patch of ``patches`` trains.
    init : dict, optional
        ``{"generator": state_dict, "discriminator": state_dict}`` of a trained model of
        the same architecture: training starts from its weights (fine-tuning a model to
        new data, ``train --init``) instead of a random initialisation; the optimisers
        start afresh. Ignored when resuming.
    deadline : float, optional
        ``time.monotonic()`` value by which training must end: after an epoch, if the
        next one (as long as the last) would pass it, training stops there and the
        model is finished with the epochs done (``training["stopped"]`` says so).

    Notes
    -----
    In a process group of several ranks (``torchrun``, :mod:`napari_anogan.training.ddp`), each
    rank trains on its shard of every global batch with G and D wrapped in
    DistributedDataParallel (per-rank BatchNorm statistics, running statistics averaged
    after every epoch); only rank 0 writes the checkpoint and builds the reference.

    Yields
    ------
    ProgressEvent
        EPOCH_START, BATCH (losses ``d_loss``, ``g_loss``, ``d_real`` = mean D(x),
        ``d_fake`` = mean D(G(z))), SAMPLES, EPOCH_END, CHECKPOINT, REFERENCE and the
        MAPPING_* events of the reference mapping, DONE.

    Returns
    -------
    TrainResult

    Raises
    ------
    InputError
        Patches of the wrong shape/dtype, NaN, fewer than 2.
    ModelError
        ``resume`` with a missing or incompatible checkpoint.
    AnoganError
        Device unavailable.

    Examples
    --------
    >>> from napari_anogan.events import drain
    >>> from napari_anogan.models import get_preset
    >>> x = np.random.default_rng(0).uniform(-1, 1, (40, 1, 32, 32)).astype(np.float32)
    >>> cfg = TrainConfig(epochs=1, batch_size=16, device="cpu", reference_steps=2)
    >>> result = drain(train_gan(x, get_preset("tiny", patch_size=32), cfg))
    >>> result.epochs, sorted(result.final_losses)
    (1, ['d_fake', 'd_loss', 'd_real', 'g_loss'])
    """
    train_config = train_config or TrainConfig()
    extra = dict(extra or {})
    check_patches(patches, model_config)
    ckpt_path = None if checkpoint_path is None else Path(checkpoint_path)
    if resume and ckpt_path is None:
        raise ModelError("resume needs a checkpoint path")
    device = resolve_device(train_config.device)
    n = patches.shape[0]
    train_idx, ref_set, ref_order = reference_split(
        patches, reference_patches, train_config, model_config
    )
    run = _GanRun(model_config, train_config, device, min(train_config.batch_size, train_idx.size))
    history: list[dict[str, float]] = []
    reference: dict[str, Any] = {}
    start_epoch = 0
    if resume:
        assert ckpt_path is not None
        start_epoch, history, reference = run.resume(
            resume_state(ckpt_path, model_config, train_config, n, extra)
        )
        logger.info("resuming %s after epoch %d", ckpt_path, start_epoch)
    elif init is not None:
        run.start_from(init)
    if deadline is not None and run.dist_ctx is not None:
        logger.warning("a time limit is not supported under DDP: training all epochs")
        deadline = None  # ranks must agree on when to stop
    preprocess = extra.pop("preprocess_config", None)
    training: dict[str, Any] = {
        "epochs_done": start_epoch,
        "epochs_planned": train_config.epochs,
        "seed": train_config.seed,
        "n_patches": int(n),
        "n_train": int(train_idx.size),
        "n_holdout": int(ref_order.size),
        "reference_holdout": "patches" if reference_patches is None else "bscans",
        "data_fingerprint": extra.get("data_fingerprint"),
        "final_losses": history[-1] if history else {},
        "history": history,
        "extra": extra,
        "device": str(device),
        "amp": run.use_amp,
        "torch_version": torch.__version__,
    }
    if run.encoder_summary is not None:
        training["encoder"] = run.encoder_summary
    if run.dist_ctx is not None:
        run.distribute(n, extra, history)
        training["distributed"] = run.dist_ctx.describe()

    def save(ref: dict[str, Any]) -> None:
        if ckpt_path is not None and run.main:
            save_checkpoint(
                ckpt_path, run.checkpoint(training, {"preprocess_config": preprocess}, ref)
            )

    with deterministic_algorithms(bool(train_config.deterministic)):
        for epoch in range(start_epoch, train_config.epochs):
            began = time.monotonic()
            means = yield from run.epoch(patches, train_idx, epoch)
            history.append(means)
            training.update(epochs_done=epoch + 1, final_losses=means, history=history)
            yield from run.end_epoch(epoch, means)
            save({})
            if ckpt_path is not None:
                yield ProgressEvent(
                    EventKind.CHECKPOINT,
                    epoch + 1,
                    train_config.epochs,
                    message=str(ckpt_path),
                    epoch=epoch,
                )
            now = time.monotonic()
            last = epoch + 1 == train_config.epochs
            if deadline is not None and not last and now + (now - began) > deadline:
                # the next epoch would not fit in the time left
                training["stopped"] = f"time limit: {epoch + 1} of {train_config.epochs} epochs"
                logger.warning(
                    "time limit: GAN training stops after epoch %d of %d",
                    epoch + 1,
                    train_config.epochs,
                )
                save({})
                break

    g, d = run.g, run.d
    g.eval()
    d.eval()
    if not reference and build_reference and run.main:
        mcfg = train_config.reference_mapping(device=str(device))
        reference = yield from healthy_reference(g, d, None, ref_set, ref_order, train_config, mcfg)
        if reference:
            save(reference)
            if ckpt_path is not None:
                yield ProgressEvent(
                    EventKind.CHECKPOINT,
                    train_config.epochs,
                    train_config.epochs,
                    message=str(ckpt_path),
                )
    final = training["final_losses"]
    yield ProgressEvent(
        EventKind.DONE,
        train_config.epochs,
        train_config.epochs,
        message=f"trained {training['epochs_done']} epochs",
        losses=dict(final),
    )
    return TrainResult(
        generator=g,
        discriminator=d,
        epochs=int(training["epochs_done"]),
        final_losses=dict(final),
        history=list(history),
        checkpoint_path=ckpt_path,
        reference=reference_from_checkpoint(reference),
    )


LOSS_NAMES = ("d_loss", "g_loss", "d_real", "d_fake")
"""Per-batch numbers of a GAN step: both losses, mean D(x) and mean D(G(z))."""


class _GanRun:
    """G, D, their optimisers and precision for one :func:`train_gan` run.

    Models are built from ``(seed, 0)``; in a process group every rank takes its
    contiguous share (``part``) of every global batch and of its z.
    """

    def __init__(
        self, model_config: ModelConfig, train_config: TrainConfig, device: torch.device, bs: int
    ) -> None:
        self.model_config, self.train_config, self.device, self.bs = (
            model_config,
            train_config,
            device,
            bs,
        )
        seed = train_config.seed
        # DDP: this rank's contiguous share of every global batch (and of its z)
        self.dist_ctx = _ddp.current()
        self.part = slice(0, bs)
        if self.dist_ctx is not None:
            self.part = _ddp.shard_slice(bs, self.dist_ctx.world_size, self.dist_ctx.rank)
        self.main = self.dist_ctx is None or self.dist_ctx.is_main
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(seed, 0))
            self.g = GeneratorNet(model_config)
            self.d = Discriminator(model_config)
        self.use_amp = training_amp(device, train_config.amp)
        # bf16: training_amp refuses GPUs without it
        self.autocast = amp_context(device, self.use_amp)
        layout = torch.channels_last if self.use_amp else torch.contiguous_format
        self.g.to(device, memory_format=layout)
        self.d.to(device, memory_format=layout)
        betas = (train_config.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=train_config.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=train_config.lr, betas=betas)
        self.encoder_state: dict[str, torch.Tensor] | None = None
        self.encoder_summary: dict[str, Any] | None = None
        self.fixed_z = sample_prior(
            train_config.n_samples,
            model_config,
            torch.Generator().manual_seed(derived_seed(seed, 4)),
            device,
        )
        # what the training steps call (DDP wrappers when distributed)
        self.g_run, self.d_run = self.g, self.d
        n_part = self.part.stop - self.part.start
        self.real_label = torch.ones(n_part, device=device)
        self.fake_label = torch.zeros(n_part, device=device)

    def resume(self, data: dict[str, Any]) -> tuple[int, list[dict[str, float]], dict[str, Any]]:
        """Load a checkpoint's state; return epochs done, loss history and reference."""
        self.g.load_state_dict(data["generator"])
        self.d.load_state_dict(data["discriminator"])
        if "optimizers" in data:
            self.opt_g.load_state_dict(data["optimizers"]["generator"])
            self.opt_d.load_state_dict(data["optimizers"]["discriminator"])
        saved = json.loads(data["training"])
        start_epoch = int(saved["epochs_done"])
        reference: dict[str, Any] = {}
        if start_epoch >= self.train_config.epochs:
            # Nothing left to train: G and D stay as they are, and so do the reference
            # and any encoder trained for them (training further would make E stale).
            reference = data["reference"] or {}
            self.encoder_state = data.get("encoder")
            self.encoder_summary = saved.get("encoder")
        return start_epoch, list(saved.get("history", [])), reference

    def start_from(self, init: dict[str, Any]) -> None:
        """Start from a trained model's G and D (fine-tuning); optimisers stay fresh."""
        try:
            self.g.load_state_dict(init["generator"])
            self.d.load_state_dict(init["discriminator"])
        except (RuntimeError, KeyError, TypeError) as exc:
            raise ModelError(
                f"the initial model's weights do not fit this architecture ({exc})"
            ) from exc

    def distribute(self, n: int, extra: dict[str, Any], history: list) -> None:
        """Check every rank trains the same thing, then wrap G and D in DDP."""
        ctx = self.dist_ctx
        assert ctx is not None
        no_device = {k: v for k, v in self.train_config.to_dict().items() if k != "device"}
        _ddp.check_same(
            ctx,
            n_patches=n,
            data_fingerprint=extra.get("data_fingerprint"),
            model_config=self.model_config.to_dict(),
            train_config=no_device,
            resumed_history=history,
        )
        self.g_run, self.d_run = _ddp.wrap(self.g, ctx), _ddp.wrap(self.d, ctx)

    def checkpoint(
        self, training: dict[str, Any], extra: dict[str, Any], ref: dict[str, Any]
    ) -> dict[str, Any]:
        """Return the checkpoint dict of the current state."""
        return build_checkpoint(
            self.g,
            self.d,
            self.opt_g,
            self.opt_d,
            self.model_config,
            self.train_config,
            training,
            extra,
            ref,
            self.encoder_state,
        )

    def samples(self) -> np.ndarray:
        """Return a grid of G's images of the fixed z (eval mode)."""
        was = self.g.training
        self.g.eval()
        with torch.no_grad():
            out = self.g(self.fixed_z).float().cpu().numpy()
        self.g.train(was)
        return sample_grid(out)

    def step(self, x: torch.Tensor, z: torch.Tensor) -> list[float]:
        """One D step and one G step on a batch; return :data:`LOSS_NAMES` values."""
        g, d, autocast = self.g_run, self.d_run, self.autocast
        # D step: maximise log D(x) + log(1 - D(G(z)))  (eq. 1). Under amp the
        # passes run in bf16 and the losses in float32.
        with autocast():
            fake = g(z)
            logit_real = d(x).float()
            logit_fake = d(fake.detach()).float()
        d_loss = F.binary_cross_entropy_with_logits(
            logit_real, self.real_label
        ) + F.binary_cross_entropy_with_logits(logit_fake, self.fake_label)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()

        # G step: maximise log D(G(z))  (eq. 2, non-saturating form). D's own
        # module: its gradients here are discarded, so DDP need not reduce them.
        with autocast():
            logit_gen = self.d(fake).float()
        g_loss = F.binary_cross_entropy_with_logits(logit_gen, self.real_label)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()

        # One device->host transfer for all four numbers.
        stacked = torch.stack(
            [
                d_loss.detach(),
                g_loss.detach(),
                torch.sigmoid(logit_real.detach()).mean(),
                torch.sigmoid(logit_fake.detach()).mean(),
            ]
        )
        if self.dist_ctx is not None:  # means over the global batch
            stacked = _ddp.mean_over_ranks(stacked, self.dist_ctx)
        return stacked.tolist()

    def epoch(
        self, patches: np.ndarray, train_idx: np.ndarray, epoch: int
    ) -> Generator[ProgressEvent, None, dict[str, float]]:
        """Train one epoch; return its mean losses.

        Batches and z are drawn from ``(seed, epoch)``; the incomplete last batch is
        dropped (as DCGAN): every step sees a full batch for batch norm.
        """
        cfg, bs, part = self.train_config, self.bs, self.part
        n_batches = train_idx.size // bs
        yield ProgressEvent(
            EventKind.EPOCH_START,
            epoch,
            cfg.epochs,
            message=f"epoch {epoch + 1}/{cfg.epochs}",
            epoch=epoch,
        )
        self.g.train()
        self.d.train()
        order = np.random.default_rng([cfg.seed, 2, epoch]).permutation(train_idx)
        z_gen = torch.Generator().manual_seed(derived_seed(cfg.seed, 3, epoch))
        sums = dict.fromkeys(LOSS_NAMES, 0.0)
        for b in range(n_batches):
            idx = np.sort(order[b * bs : (b + 1) * bs])[part]
            x = patch_batch(patches, idx, self.device, self.use_amp)
            z = sample_prior(bs, self.model_config, z_gen, self.device)[part]
            losses = dict(zip(LOSS_NAMES, self.step(x, z), strict=True))
            for k, v in losses.items():
                sums[k] += v
            yield ProgressEvent(
                EventKind.BATCH,
                b + 1,
                n_batches,
                message=f"epoch {epoch + 1}, batch {b + 1}/{n_batches}",
                epoch=epoch,
                losses=losses,
            )
            if self.main and cfg.sample_every and (b + 1) % cfg.sample_every == 0:
                yield ProgressEvent(
                    EventKind.SAMPLES, b + 1, n_batches, epoch=epoch, samples=self.samples()
                )
        means = {k: v / n_batches for k, v in sums.items()}
        if not all(np.isfinite(list(means.values()))):
            logger.warning("epoch %d: non-finite losses %s", epoch + 1, means)
        return means

    def end_epoch(
        self, epoch: int, means: dict[str, float]
    ) -> Generator[ProgressEvent, None, None]:
        """Average BN statistics over ranks; report the epoch and its samples."""
        cfg = self.train_config
        if self.dist_ctx is not None:  # one model on every rank, BN statistics of all data
            _ddp.average_buffers(self.g, self.dist_ctx)
            _ddp.average_buffers(self.d, self.dist_ctx)
        yield ProgressEvent(
            EventKind.EPOCH_END,
            epoch + 1,
            cfg.epochs,
            message=(
                f"epoch {epoch + 1}/{cfg.epochs}: d_loss {means['d_loss']:.3f}, "
                f"g_loss {means['g_loss']:.3f}"
            ),
            epoch=epoch,
            losses=means,
        )
        if self.main:
            yield ProgressEvent(
                EventKind.SAMPLES, epoch + 1, cfg.epochs, epoch=epoch, samples=self.samples()
            )

"""The latent search: mapping image patches to the GAN's latent space (paper sec. 2.2).

Three mapping modes find a latent vector z for each query patch x:

``iterative`` (the paper)
    Random start z ~ U[-1, 1], then ``steps`` (paper: 500) Adam steps on the mapping loss
    (eq. 5)::

        L(z) = (1 - lam) * sum|x - G(z)|  +  lam * sum|f(x) - f(G(z))|

    with G and D frozen.
``encoder`` (f-AnoGAN, Schlegl et al. 2019)
    z = E(x): one forward pass of a trained encoder (:mod:`napari_anogan.models.encoder`),
    no optimisation and no autograd.
``hybrid``
    Start at z = E(x), then ``hybrid_steps`` Adam steps of the paper's loss: the encoder
    supplies a start close to the optimum, the paper's loss refines it.

After mapping, the residual score R, discrimination score D, anomaly score
A = (1 - lam) R + lam D (eq. 6), the reference scores of Yeh et al. and the residual image
|x - G(z)| are computed in one clean float32 pass at the returned z, so the scores are
exactly those of z whatever shortcuts the search took (G and D with their eval-mode batch
norms folded into the convolutions: the same functions up to float rounding, ~1e-7).

Early stopping (``early_stop``, iterative and hybrid modes): a patch whose loss has not
dropped below ``(1 - tolerance)`` times its best loss so far for ``patience``
consecutive steps is frozen; the search ends when every patch is frozen or has taken its
steps. With the defaults (``tolerance=1e-3``; ``patience`` 10 % of the steps, at least 3)
a patch of the paper's 500-step search stops once 50 steps in a row gained less than
0.1 % of its loss, and a patch of the 10-step hybrid search after 3 such steps.

Speed: patches are optimised together in a pool of ``batch_size`` latent vectors (one
tensor; no per-patch Python loop). Adam is implemented element-wise with a per-patch
step count, so every patch's z follows exactly the trajectory it would follow alone:
batching and early stopping of *other* patches change speed, not results (up to
floating-point reduction order). Finished patches leave the pool and new ones enter it,
so the pool stays full and device memory stays bounded by ``batch_size``. G and D's
batch norms are folded into their convolutions for the search (eval-mode batch norm is
an affine map; fewer kernels per step), G's last layer (one output channel) runs as a
sub-pixel convolution (2x faster there) and the search runs in channels-last layout. On
CUDA the search runs under autocast (bf16 where supported, else fp16) with pinned,
non-blocking transfers. On CPUs with AMX (bf16 matrix units) the search also runs under
bf16 autocast (measured 2.6-3x faster per step, same patch AUC); on other CPUs it stays
float32 (bf16 is ~20x slower on AVX2-only CPUs).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator, Iterator
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from napari_anogan.device import amp_by_default, amp_context, resolve_device
from napari_anogan.errors import AnoganError, InputError
from napari_anogan.events import ProgressEvent
from napari_anogan.mapping.config import (
    ENCODER_MODES,
    MAPPING_MODES,
    MappingConfig,
    MappingResult,
)
from napari_anogan.mapping.pool import PatchOutputs, PatchScorer, scored_event, search_pool
from napari_anogan.models.dcgan import as_patch_array
from napari_anogan.models.folding import fold_batch_norm
from napari_anogan.scoring.scores import anomaly_score

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _frozen(models: list[nn.Module], device: torch.device) -> Iterator[None]:
    """Eval mode, no parameter grads, on ``device``; everything restored afterwards."""
    saved = [
        (m.training, [p.requires_grad for p in m.parameters()], next(m.parameters()).device)
        for m in models
    ]
    try:
        for m in models:
            m.eval()
            m.requires_grad_(False)
            m.to(device)
        yield
    finally:
        for m, (was_training, flags, dev) in zip(models, saved, strict=True):
            m.to(dev)
            m.train(was_training)
            for p, flag in zip(m.parameters(), flags, strict=True):
                p.requires_grad_(flag)


def resolve_mode(config: MappingConfig, encoder: nn.Module | None) -> MappingConfig:
    """Return the mapping that will run: ``hybrid`` without an encoder becomes ``iterative``.

    Parameters
    ----------
    config : MappingConfig
        The requested mapping.
    encoder : nn.Module or None
        The model's encoder, if it has one.

    Returns
    -------
    MappingConfig
        ``config``, or a copy with ``mode="iterative"`` (logged as a warning).

    Raises
    ------
    AnoganError
        An unknown mode, or the ``encoder`` mode without an encoder.
    """
    if config.mode not in MAPPING_MODES:
        raise AnoganError(f"mapping mode {config.mode!r} is not available; use {MAPPING_MODES}")
    if config.mode in ENCODER_MODES and encoder is None:
        if config.mode == "encoder":
            raise AnoganError(
                "mapping mode 'encoder' needs a trained encoder and this model has none; "
                "add one with `napari-anogan train --encoder --resume ...` (same inputs and "
                "settings as the model's training) or use the iterative mode"
            )
        logger.warning(
            "mapping mode 'hybrid' needs an encoder and this model has none: falling back "
            "to the paper's iterative mapping (%d steps from a random start)",
            config.steps,
        )
        config = replace(config, mode="iterative")
    return config


def random_start(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """Seeded random start codes z ~ U[-1, 1) of the iterative mapping, shape (n, z_dim).

    All drawn at once from one seeded CPU generator: a patch's start does not depend on
    the batch size, the device or how a volume is cut into chunks.
    """
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand(n, z_dim, generator=gen) * 2.0 - 1.0


def map_to_latent(
    generator: nn.Module,
    discriminator: nn.Module,
    patches: np.ndarray | torch.Tensor,
    config: MappingConfig | None = None,
    *,
    z_init: np.ndarray | None = None,
    encoder: nn.Module | None = None,
) -> Generator[ProgressEvent, None, MappingResult]:
    """Find z for each patch (iterative, encoder or hybrid mapping) and score the patches.

    Only z is optimised: G, D (and E) are switched to ``eval()`` (batch norm uses its
    running statistics and never adapts to the query data) and their parameters are
    frozen with ``requires_grad_(False)``; everything is restored afterwards. Each step
    is followed by a projection ``z.clamp_(-1, 1)`` (projected gradient descent): the
    generator was only trained on z ~ U[-1, 1], so codes outside that box give images
    it never learnt to make, and an unconstrained z could reconstruct anomalies the
    model has never seen.

    Parameters
    ----------
    generator, discriminator : nn.Module
        Trained :class:`~napari_anogan.models.Generator` and
        :class:`~napari_anogan.models.Discriminator`. They are moved to the device for
        the run and moved back afterwards.
    patches : (N, C, P, P) float ndarray or Tensor
        Query patches in [-1, 1].
    config : MappingConfig, optional
        Settings (defaults: the paper's iterative mapping, 500 steps, lambda = 0.1).
    z_init : (N, z_dim) ndarray, optional
        Start codes instead of the seeded random start (``iterative`` mode only).
    encoder : nn.Module, optional
        Trained encoder E (:class:`~napari_anogan.models.encoder.Encoder`); needed by the
        ``encoder`` and ``hybrid`` modes.

    Yields
    ------
    ProgressEvent
        ``MAPPING_STEP`` after every step of the pool (``step`` counts patch-steps of
        ``total = N * steps``; a frozen patch counts all its remaining steps), with mean
        losses every ``report_every`` steps, and ``MAPPING_BATCH`` whenever a batch of
        patches has been scored (``step`` = patches done).

    Returns
    -------
    MappingResult

    Raises
    ------
    InputError
        Patches of the wrong shape or dtype, or with NaN; ``z_init`` of the wrong shape
        or with an encoder mode.
    AnoganError
        Invalid mode, ``encoder`` mode without an encoder, or device not available.

    Examples
    --------
    >>> from napari_anogan.events import drain
    >>> from napari_anogan.models import Discriminator, Generator, get_preset
    >>> cfg = get_preset("tiny", patch_size=32)
    >>> x = np.zeros((3, 1, 32, 32), np.float32)
    >>> res = drain(map_to_latent(Generator(cfg), Discriminator(cfg), x,
    ...                           MappingConfig(steps=2, device="cpu")))
    >>> res.z.shape, res.residual_image.shape, res.anomaly_score.shape
    ((3, 16), (3, 1, 32, 32), (3,))
    """
    config = resolve_mode(config or MappingConfig(), encoder)
    if z_init is not None and config.mode != "iterative":
        raise InputError(f"z_init is only used by the iterative mode, not {config.mode!r}")
    x_all = as_patch_array(patches, generator.config)
    n = x_all.shape[0]
    mcfg = generator.config
    device = resolve_device(config.device)
    lam = float(config.lam)
    n_steps = config.n_steps
    lr = config.lr

    z_start: torch.Tensor | None = None
    if config.mode == "iterative":
        if z_init is None:
            z_start = random_start(n, mcfg.z_dim, config.seed)
        else:
            z_start = torch.as_tensor(np.asarray(z_init, dtype=np.float32))
            if tuple(z_start.shape) != (n, mcfg.z_dim):
                raise InputError(
                    f"z_init must have shape ({n}, {mcfg.z_dim}), got {tuple(z_start.shape)}"
                )
            z_start = z_start.clamp(-1.0, 1.0)

    out = PatchOutputs(n, mcfg.z_dim, x_all.shape, config.keep_images)
    models = [generator, discriminator] + ([encoder] if encoder is not None else [])
    use_amp = amp_by_default(device) if config.amp is None else bool(config.amp)
    amp = amp_context(device, use_amp)
    pin = device.type == "cuda"

    def to_device(lo: int, hi: int) -> torch.Tensor:
        x = torch.from_numpy(x_all[lo:hi])
        if pin:
            x = x.pin_memory()
        return x.to(device, non_blocking=True)

    with _frozen(models, device):
        # BN-folded copies in channels-last layout (oneDNN's and cuDNN's preferred layout:
        # ~15-20 % faster per step on the CPU, measured) serve the search and, in
        # float32, the final scoring pass.
        g_fast = fold_batch_norm(generator).to(memory_format=torch.channels_last)
        d_fast = fold_batch_norm(discriminator).to(memory_format=torch.channels_last)
        scorer = PatchScorer(g_fast, d_fast, x_all, out, lam, device, pin)
        if n_steps == 0 or n == 0:
            # No search: score the start codes (random, z_init or E(x)) batch by batch.
            for lo in range(0, n, config.batch_size):
                hi = min(n, lo + config.batch_size)
                idx = np.arange(lo, hi)
                if z_start is not None:
                    z = z_start[lo:hi].to(device)
                else:
                    assert encoder is not None
                    with torch.inference_mode():
                        z = encoder(to_device(lo, hi)).float().clamp(-1.0, 1.0)
                scorer.score(idx, z)
                yield scored_event(out, lam, n, idx)
        else:
            yield from search_pool(
                g_fast,
                d_fast,
                encoder,
                z_start,
                to_device,
                scorer,
                out,
                n,
                n_steps,
                lr,
                lam,
                config,
                device,
                amp,
            )

    logger.debug(
        "mapped %d patches (%s, %d steps, lam=%g) on %s", n, config.mode, n_steps, lam, device
    )
    return MappingResult(
        z=out.z,
        reconstruction=out.recon,
        residual_image=out.resid,
        residual_score=out.r,
        discrimination_score=out.d,
        reference_discrimination_score=out.dref,
        anomaly_score=anomaly_score(out.r, out.d, lam),
        reference_anomaly_score=anomaly_score(out.r, out.dref, lam),
        discriminator_output=out.p_real,
        lam=lam,
        config=config,
        steps_taken=out.steps_taken,
    )

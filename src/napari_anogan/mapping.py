"""Mapping image patches to the GAN's latent space (paper sec. 2.2) and their scores (sec. 2.3).

For each query patch x, a latent vector z is found by gradient descent on the mapping
loss (eq. 5)::

    L(z) = (1 - lam) * sum|x - G(z)|  +  lam * sum|f(x) - f(G(z))|

with G and D frozen. After the last step the residual score R, discrimination score D,
anomaly score A = (1 - lam) R + lam D (eq. 6), the reference scores of Yeh et al. and
the residual image |x - G(z)| are returned.

Made fast by batching: all patches of a batch are optimised together in one tensor. The
loss is summed over the batch and Adam is element-wise, so every patch's z follows
exactly the trajectory it would follow alone: batching changes speed, not results
(up to floating-point reduction order).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_anogan.device import resolve_device
from napari_anogan.errors import AnoganError, InputError
from napari_anogan.events import EventKind, ProgressEvent

__all__ = ["MAPPING_MODES", "MappingConfig", "MappingResult", "map_to_latent"]

logger = logging.getLogger(__name__)

MAPPING_MODES = ("iterative",)
"""Implemented mapping modes; ``encoder`` and ``hybrid`` are planned."""
DISCRIMINATION_LOSSES = ("feature", "reference")


@dataclass
class MappingConfig:
    """Settings of the latent mapping.

    Parameters
    ----------
    steps : int
        Number of optimisation steps Gamma (paper: 500). 0 scores the random start.
    lam : float
        Weight lambda of the discrimination loss in eq. (5) and (6) (paper: 0.1).
    lr : float
        Adam learning rate for z.
    discrimination : str
        ``"feature"``: feature-matching loss on D's last conv layer (eq. 4, AnoGAN);
        ``"reference"``: sigmoid cross-entropy of D(G(z)) with target 1 (Yeh et al.,
        the paper's GAN_R baseline).
    mode : str
        ``"iterative"`` (the paper). Reserved: ``"encoder"``, ``"hybrid"``.
    batch_size : int
        Patches optimised together; bounds memory (activations of G and D for a batch).
    seed : int
        Seed of the random start z ~ U[-1, 1] (per patch, independent of batch size).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    report_every : int
        Steps between events that carry mean losses (other steps yield a loss-less event,
        so cancelling is honoured after every step).
    keep_images : bool
        Return reconstructions and residual images (N x P x P each); False saves memory.
    """

    steps: int = 500
    lam: float = 0.1
    lr: float = 0.05
    discrimination: str = "feature"
    mode: str = "iterative"
    batch_size: int = 256
    seed: int = 0
    device: str = "auto"
    report_every: int = 10
    keep_images: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.steps < 0:
            problems.append(f"steps must be >= 0, got {self.steps}")
        if not 0.0 <= self.lam <= 1.0:
            problems.append(f"lam must be in [0, 1], got {self.lam}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.discrimination not in DISCRIMINATION_LOSSES:
            problems.append(
                f"discrimination must be one of {DISCRIMINATION_LOSSES}, "
                f"got {self.discrimination!r}"
            )
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.report_every < 1:
            problems.append(f"report_every must be >= 1, got {self.report_every}")
        if problems:
            raise AnoganError("invalid mapping config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MappingConfig:
        """Build from :meth:`to_dict` output; unknown keys raise :class:`AnoganError`."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise AnoganError(f"unknown mapping config keys: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        """Return the config as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass
class MappingResult:
    """Latent codes, reconstructions and scores of mapped patches (N patches).

    Scores are float64 and come from one clean forward pass at the returned z, so they
    are exactly the scores of ``z`` (eq. 6: ``A = (1 - lam) R + lam D``).

    Attributes
    ----------
    z : (N, z_dim) float32 ndarray
        z_Gamma, in the prior's range [-1, 1].
    reconstruction : (N, C, P, P) float32 ndarray or None
        G(z_Gamma) (None if ``keep_images`` was False).
    residual_image : (N, C, P, P) float32 ndarray or None
        |x - G(z_Gamma)|, the paper's x_R for locating anomalies.
    residual_score : (N,) ndarray
        R(x) = sum |x - G(z_Gamma)| (eq. 3 at the last step).
    discrimination_score : (N,) ndarray
        D(x) = sum |f(x) - f(G(z_Gamma))| (eq. 4 at the last step).
    reference_discrimination_score : (N,) ndarray
        D^(x) = sigmoid cross-entropy of D(G(z_Gamma)) with target 1 (Yeh et al.).
    anomaly_score : (N,) ndarray
        A(x) = (1 - lam) R + lam D.
    reference_anomaly_score : (N,) ndarray
        A^(x) = (1 - lam) R + lam D^.
    discriminator_output : (N,) ndarray
        sigmoid(D(x)) of the query patch itself: D's probability that x is "real".
    lam : float
        The lambda used.
    config : MappingConfig
        Settings used.
    """

    z: np.ndarray
    reconstruction: np.ndarray | None
    residual_image: np.ndarray | None
    residual_score: np.ndarray
    discrimination_score: np.ndarray
    reference_discrimination_score: np.ndarray
    anomaly_score: np.ndarray
    reference_anomaly_score: np.ndarray
    discriminator_output: np.ndarray
    lam: float
    config: MappingConfig = field(default_factory=MappingConfig)

    SCORE_NAMES = (
        "anomaly_score",
        "residual_score",
        "discrimination_score",
        "reference_anomaly_score",
        "reference_discrimination_score",
        "discriminator_output",
    )

    @property
    def residual(self) -> np.ndarray | None:
        """Alias of :attr:`residual_image` (the residual heatmap input)."""
        return self.residual_image

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def scores(self) -> dict[str, np.ndarray]:
        """Return the per-patch score arrays by name (see ``SCORE_NAMES``)."""
        return {name: getattr(self, name) for name in self.SCORE_NAMES}


def _as_patch_array(patches: np.ndarray | torch.Tensor, generator: nn.Module) -> np.ndarray:
    """Validate the patch array against the generator's config; return float32 numpy."""
    if isinstance(patches, torch.Tensor):
        patches = patches.detach().cpu().numpy()
    arr = np.asarray(patches)
    cfg = generator.config
    expected = (cfg.channels, cfg.patch_size, cfg.patch_size)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != expected:
        raise InputError(
            f"patches must have shape (N, {expected[0]}, {expected[1]}, {expected[2]}) "
            f"for this model, got {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"patches must be floating point in [-1, 1], got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    for lo in range(0, arr.shape[0], 65536):  # chunked: no full-size temporary
        if not np.isfinite(arr[lo : lo + 65536]).all():
            raise InputError("patches contain NaN or infinite values")
    return arr


def _discrimination(
    fx: torch.Tensor, fgz: torch.Tensor, logits_gz: torch.Tensor, kind: str
) -> torch.Tensor:
    if kind == "feature":
        return (fx - fgz).abs().flatten(1).sum(1)
    # Sigmoid cross-entropy with target 1 == softplus(-logit), numerically stable.
    return F.softplus(-logits_gz)


def map_to_latent(
    generator: nn.Module,
    discriminator: nn.Module,
    patches: np.ndarray | torch.Tensor,
    config: MappingConfig | None = None,
    *,
    z_init: np.ndarray | None = None,
) -> Generator[ProgressEvent, None, MappingResult]:
    """Find z for each patch by iterative mapping (eq. 5) and score the patches (eq. 6).

    Only z is optimised: G and D are switched to ``eval()`` (batch norm uses its running
    statistics and never adapts to the query data) and their parameters are frozen with
    ``requires_grad_(False)``; both are restored afterwards. Each step is followed by a
    projection ``z.clamp_(-1, 1)`` (projected gradient descent): the generator was only
    trained on z ~ U[-1, 1], so codes outside that box give images it never learnt to
    make, and an unconstrained z could reconstruct anomalies the model has never seen.

    Parameters
    ----------
    generator, discriminator : nn.Module
        Trained :class:`~napari_anogan.models.Generator` and
        :class:`~napari_anogan.models.Discriminator`. They are moved to the device for
        the run and moved back afterwards.
    patches : (N, C, P, P) float ndarray or Tensor
        Query patches in [-1, 1].
    config : MappingConfig, optional
        Settings (defaults: the paper's 500 steps, lambda = 0.1).
    z_init : (N, z_dim) ndarray, optional
        Start codes instead of the seeded random start (for encoder-initialised modes).

    Yields
    ------
    ProgressEvent
        ``MAPPING_STEP`` after every step (with mean losses every ``report_every`` steps)
        and ``MAPPING_BATCH`` after each batch.

    Returns
    -------
    MappingResult

    Raises
    ------
    InputError
        Patches of the wrong shape or dtype, or with NaN.
    AnoganError
        Unknown mode, or device not available.

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
    config = config or MappingConfig()
    if config.mode not in MAPPING_MODES:
        raise AnoganError(
            f"mapping mode {config.mode!r} is not available; implemented: {MAPPING_MODES}"
        )
    x_all = _as_patch_array(patches, generator)
    n = x_all.shape[0]
    mcfg = generator.config
    device = resolve_device(config.device)
    lam = float(config.lam)

    if z_init is None:
        # All start codes drawn at once from one seeded CPU generator: a patch's start
        # does not depend on the batch size or the device.
        gen = torch.Generator().manual_seed(int(config.seed))
        z_start = torch.rand(n, mcfg.z_dim, generator=gen) * 2.0 - 1.0
    else:
        z_start = torch.as_tensor(np.asarray(z_init, dtype=np.float32))
        if tuple(z_start.shape) != (n, mcfg.z_dim):
            raise InputError(f"z_init must have shape ({n}, {mcfg.z_dim}), got {z_start.shape}")
        z_start = z_start.clamp(-1.0, 1.0)

    z_out = np.empty((n, mcfg.z_dim), np.float32)
    recon = np.empty_like(x_all) if config.keep_images else None
    resid_img = np.empty_like(x_all) if config.keep_images else None
    r_score = np.empty(n, np.float64)
    d_score = np.empty(n, np.float64)
    dref_score = np.empty(n, np.float64)
    p_real = np.empty(n, np.float64)

    n_batches = -(-n // config.batch_size)
    total_steps = n_batches * config.steps
    pin = device.type == "cuda"

    models = (generator, discriminator)
    saved_training = [m.training for m in models]
    saved_grad = [[p.requires_grad for p in m.parameters()] for m in models]
    saved_device = [next(m.parameters()).device for m in models]
    try:
        for m in models:
            m.eval()
            m.requires_grad_(False)
            m.to(device)
        for b in range(n_batches):
            lo, hi = b * config.batch_size, min(n, (b + 1) * config.batch_size)
            x_cpu = torch.from_numpy(x_all[lo:hi])
            if pin:
                x_cpu = x_cpu.pin_memory()
            x = x_cpu.to(device, non_blocking=True)
            with torch.no_grad():
                logits_x, fx = discriminator.forward_with_features(x)
            z = z_start[lo:hi].clone().to(device).requires_grad_(True)
            opt = torch.optim.Adam([z], lr=config.lr)
            for step in range(config.steps):
                opt.zero_grad(set_to_none=True)
                gz = generator(z)
                logits_gz, fgz = discriminator.forward_with_features(gz)
                res = (x - gz).abs().flatten(1).sum(1)
                disc = _discrimination(fx, fgz, logits_gz, config.discrimination)
                # Sum over the batch: each patch's z gets exactly its own gradient.
                loss = ((1.0 - lam) * res + lam * disc).sum()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    z.clamp_(-1.0, 1.0)
                done = b * config.steps + step + 1
                losses: dict[str, float] = {}
                if (step + 1) % config.report_every == 0 or step + 1 == config.steps:
                    k = hi - lo
                    losses = {
                        "loss": loss.item() / k,
                        "residual": res.detach().sum().item() / k,
                        "discrimination": disc.detach().sum().item() / k,
                    }
                yield ProgressEvent(
                    EventKind.MAPPING_STEP,
                    done,
                    total_steps,
                    message=f"batch {b + 1}/{n_batches}, step {step + 1}/{config.steps}",
                    losses=losses,
                )
            # One clean pass at z_Gamma: the scores are exactly those of the returned z.
            with torch.no_grad():
                z_final = z.detach()
                gz = generator(z_final)
                logits_gz, fgz = discriminator.forward_with_features(gz)
                r_img = (x - gz).abs()
                r = r_img.flatten(1).sum(1)
                d_feat = (fx - fgz).abs().flatten(1).sum(1)
                d_ref = F.softplus(-logits_gz)
                z_out[lo:hi] = z_final.cpu().numpy()
                r_score[lo:hi] = r.double().cpu().numpy()
                d_score[lo:hi] = d_feat.double().cpu().numpy()
                dref_score[lo:hi] = d_ref.double().cpu().numpy()
                p_real[lo:hi] = torch.sigmoid(logits_x).double().cpu().numpy()
                if recon is not None and resid_img is not None:
                    recon[lo:hi] = gz.cpu().numpy()
                    resid_img[lo:hi] = r_img.cpu().numpy()
            yield ProgressEvent(
                EventKind.MAPPING_BATCH,
                hi,
                n,
                message=f"mapped {hi}/{n} patches",
                losses={
                    "anomaly_score": float(((1 - lam) * r_score + lam * d_score)[lo:hi].mean())
                },
            )
    finally:
        for m, was_training, flags, dev in zip(
            models, saved_training, saved_grad, saved_device, strict=True
        ):
            m.to(dev)
            m.train(was_training)
            for p, flag in zip(m.parameters(), flags, strict=True):
                p.requires_grad_(flag)

    logger.debug("mapped %d patches (%d steps, lam=%g) on %s", n, config.steps, lam, device)
    return MappingResult(
        z=z_out,
        reconstruction=recon,
        residual_image=resid_img,
        residual_score=r_score,
        discrimination_score=d_score,
        reference_discrimination_score=dref_score,
        anomaly_score=(1.0 - lam) * r_score + lam * d_score,
        reference_anomaly_score=(1.0 - lam) * r_score + lam * dref_score,
        discriminator_output=p_real,
        lam=lam,
        config=config,
    )

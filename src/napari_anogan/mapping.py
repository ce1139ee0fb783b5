"""Mapping image patches to the GAN's latent space (paper sec. 2.2) and their scores (sec. 2.3).

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
import copy
import json
import logging
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_anogan import settings as defaults
from napari_anogan.device import resolve_device
from napari_anogan.errors import AnoganError, InputError
from napari_anogan.events import EventKind, ProgressEvent

__all__ = [
    "MAPPING_MODES",
    "MappingConfig",
    "MappingResult",
    "amp_by_default",
    "fold_batch_norm",
    "map_to_latent",
]

logger = logging.getLogger(__name__)

MAPPING_MODES = ("iterative", "encoder", "hybrid")
"""Mapping modes: the paper's random-start search, the encoder alone, encoder + search."""
ENCODER_MODES = ("encoder", "hybrid")
DISCRIMINATION_LOSSES = ("feature", "reference")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass
class MappingConfig:
    """Settings of the latent mapping.

    Parameters
    ----------
    steps : int
        Optimisation steps Gamma of the ``iterative`` mode (paper: 500). 0 scores the
        random start.
    lam : float
        Weight lambda of the discrimination loss in eq. (5) and (6) (paper: 0.1).
    lr : float
        Adam learning rate for z (both searching modes; 0.05 also measured best for the
        hybrid mode's refinement, against 0.01, 0.02 and 0.1).
    discrimination : str
        ``"feature"``: feature-matching loss on D's last conv layer (eq. 4, AnoGAN);
        ``"reference"``: sigmoid cross-entropy of D(G(z)) with target 1 (Yeh et al.,
        the paper's GAN_R baseline).
    mode : str
        ``"iterative"`` (the paper), ``"encoder"`` (z = E(x)) or ``"hybrid"`` (E(x), then
        ``hybrid_steps`` steps). The encoder modes need an encoder; ``hybrid`` without
        one falls back to ``iterative`` with a warning.
    hybrid_steps : int
        Optimisation steps K after the encoder start in the ``hybrid`` mode.
    early_stop : bool
        Freeze a patch when its loss stops improving (see ``tolerance``, ``patience``).
    tolerance : float
        Relative improvement that counts: a step improves a patch if its loss drops below
        ``(1 - tolerance) * best loss so far``.
    patience : int or None
        Steps without such an improvement after which a patch is frozen. None (default):
        10 % of the mode's steps, at least 3 (iterative-500: 50, hybrid-10: 3). Measured
        on the synthetic test set: a random-start search has long plateaus, and 5 or 10
        steps froze patches far too early (patch AUC 0.60-0.62 against 0.69); 50 costs
        under 0.3 % in loss. The hybrid search starts close: 3 steps saved 35 % of its
        steps at unchanged AUC.
    keep_best : bool
        Return the iterate with the lowest loss (the last one included, compared in the
        search's precision) instead of the last iterate. The paper returns the last
        iterate z_Gamma (False); True never scores a patch worse than its best point,
        which matters with early stopping and an encoder start (hybrid is then never
        worse than the encoder in loss).
    batch_size : int
        Patches optimised together; bounds memory (activations of G and D for a pool).
    seed : int
        Seed of the random start z ~ U[-1, 1] (per patch, independent of batch size).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    amp : bool or None
        Mixed precision for the search (the final scores are always float32): bf16
        autocast (fp16 on GPUs without bf16). None: on CUDA, and on CPUs with AMX
        (Intel Sapphire Rapids and later), where bf16 measured 2.6-3x faster per step at
        unchanged patch AUC; off on other CPUs (on AVX2-only CPUs bf16 is ~20x slower).
    compile : bool
        ``torch.compile`` the search's forward pass (pays a compile time per run; only
        worth it for long runs, measure with ``benchmarks/bench_mapping.py --compile``).
    report_every : int
        Steps between events that carry mean losses (other steps yield a loss-less event,
        so cancelling is honoured after every step).
    keep_images : bool
        Return reconstructions and residual images (N x P x P each); False saves memory.
    """

    steps: int = defaults.MAPPING_STEPS
    lam: float = defaults.PAPER_LAM
    lr: float = defaults.MAPPING_LR
    discrimination: str = "feature"
    mode: str = "iterative"  # the paper's; scoring's default is defaults.MAPPING_MODE
    hybrid_steps: int = defaults.HYBRID_STEPS
    early_stop: bool = defaults.EARLY_STOP
    tolerance: float = defaults.TOLERANCE
    patience: int | None = None
    keep_best: bool = True
    batch_size: int = defaults.SCORE_BATCH_SIZE
    seed: int = defaults.SEED
    device: str = defaults.DEVICE
    amp: bool | None = None
    compile: bool = False
    report_every: int = 10
    keep_images: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in MAPPING_MODES:
            problems.append(f"mode must be one of {MAPPING_MODES}, got {self.mode!r}")
        if self.steps < 0 or self.hybrid_steps < 0:
            problems.append(
                f"steps and hybrid_steps must be >= 0, got {self.steps}, {self.hybrid_steps}"
            )
        if not 0.0 <= self.lam <= 1.0:
            problems.append(f"lam must be in [0, 1], got {self.lam}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.discrimination not in DISCRIMINATION_LOSSES:
            problems.append(
                f"discrimination must be one of {DISCRIMINATION_LOSSES}, "
                f"got {self.discrimination!r}"
            )
        if not 0.0 <= self.tolerance < 1.0:
            problems.append(f"tolerance must be in [0, 1), got {self.tolerance}")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience must be >= 1, got {self.patience}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.report_every < 1:
            problems.append(f"report_every must be >= 1, got {self.report_every}")
        if problems:
            raise AnoganError("invalid mapping config: " + "; ".join(problems))

    @property
    def n_steps(self) -> int:
        """Optimisation steps of the chosen mode (``encoder``: 0)."""
        return {"iterative": self.steps, "hybrid": self.hybrid_steps}.get(self.mode, 0)

    @property
    def patience_steps(self) -> int:
        """Early-stopping patience in steps (see ``patience``)."""
        if self.patience is not None:
            return self.patience
        return max(3, -(-self.n_steps // 10))

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

    Scores are float64 and come from one clean float32 forward pass at the returned z, so
    they are exactly the scores of ``z`` (eq. 6: ``A = (1 - lam) R + lam D``).

    Attributes
    ----------
    z : (N, z_dim) float32 ndarray
        The mapped codes, in the prior's range [-1, 1].
    reconstruction : (N, C, P, P) float32 ndarray or None
        G(z) (None if ``keep_images`` was False).
    residual_image : (N, C, P, P) float32 ndarray or None
        |x - G(z)|, the paper's x_R for locating anomalies.
    residual_score : (N,) ndarray
        R(x) = sum |x - G(z)| (eq. 3).
    discrimination_score : (N,) ndarray
        D(x) = sum |f(x) - f(G(z))| (eq. 4).
    reference_discrimination_score : (N,) ndarray
        D^(x) = sigmoid cross-entropy of D(G(z)) with target 1 (Yeh et al.).
    anomaly_score : (N,) ndarray
        A(x) = (1 - lam) R + lam D.
    reference_anomaly_score : (N,) ndarray
        A^(x) = (1 - lam) R + lam D^.
    discriminator_output : (N,) ndarray
        sigmoid(D(x)) of the query patch itself: D's probability that x is "real".
    lam : float
        The lambda used.
    config : MappingConfig
        Settings used (``mode`` is the mode actually run, after any fallback).
    steps_taken : (N,) int ndarray or None
        Optimisation steps each patch took (fewer than the mode's steps where early
        stopping froze it; 0 in the encoder mode).
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
    steps_taken: np.ndarray | None = None

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
    fx: torch.Tensor, fgz: torch.Tensor, logits_gz: torch.Tensor | None, kind: str
) -> torch.Tensor:
    if kind == "feature":
        return (fx - fgz).abs().flatten(1).sum(1)
    # Sigmoid cross-entropy with target 1 == softplus(-logit), numerically stable.
    assert logits_gz is not None
    return F.softplus(-logits_gz)


def _fold(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    """Return a copy of ``conv`` with the eval-mode batch norm that follows it folded in."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    fused = copy.deepcopy(conv)
    # Conv2d weights are (out, in, k, k); ConvTranspose2d weights are (in, out, k, k).
    shape = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
    bias = shift if conv.bias is None else shift + conv.bias * scale
    fused.weight = nn.Parameter(conv.weight * scale.view(shape), requires_grad=False)
    fused.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return fused


class _SubPixelConvTranspose(nn.Module):
    """A stride-2 5x5 transposed convolution as one 3x3 convolution + pixel shuffle.

    Output pixel ``(2i + a, 2j + c)`` of ``ConvTranspose2d(k=5, s=2, p=2, output_padding=1)``
    only sees the input pixels ``i - 1 .. i + 1`` (and ``j - 1 .. j + 1``) through the taps
    of ``w`` whose parity matches ``(a, c)``: the four phases are four 3x3 kernels (some taps
    zero), stacked as ``4 * out_channels`` output channels, and ``pixel_shuffle(2)``
    interleaves them. The same function up to float rounding (~1e-6). Written here
    because torch has no such rewrite; used only for the generator's last layer (one
    output channel), where oneDNN's transposed convolution is slow: forward + backward of
    16 -> 1 channels on 256 patches take 26 ms as a transposed convolution and 13 ms
    this way (measured on this 2-core CPU; for 16+ output channels the transposed
    convolution is faster and is kept).
    """

    def __init__(self, conv: nn.ConvTranspose2d) -> None:
        super().__init__()
        w = conv.weight.detach()  # (in, out, 5, 5)
        c_in, c_out = w.shape[:2]
        phases = torch.zeros(c_out, 2, 2, c_in, 3, 3, dtype=w.dtype, device=w.device)
        for a in range(2):
            for ki in range(a, 5, 2):  # the taps of parity a feed output rows 2i + a
                di = (a + 2 - ki) // 2 + 1  # from input row i + di - 1
                for c in range(2):
                    for kj in range(c, 5, 2):
                        dj = (c + 2 - kj) // 2 + 1
                        phases[:, a, c, :, di, dj] = w[:, :, ki, kj].T
        # pixel_shuffle reads channel o * 4 + a * 2 + c as phase (a, c) of output o.
        self.conv = nn.Conv2d(c_in, 4 * c_out, 3, padding=1, device=w.device, dtype=w.dtype)
        self.conv.weight = nn.Parameter(phases.reshape(4 * c_out, c_in, 3, 3))
        bias = conv.bias.detach() if conv.bias is not None else w.new_zeros(c_out)
        self.conv.bias = nn.Parameter(bias.repeat_interleave(4).clone())

    @staticmethod
    def applies(m: nn.Module) -> bool:
        return (
            isinstance(m, nn.ConvTranspose2d)
            and m.out_channels == 1
            and m.kernel_size == (5, 5)
            and m.stride == (2, 2)
            and m.padding == (2, 2)
            and m.output_padding == (1, 1)
            and m.dilation == (1, 1)
            and m.groups == 1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


def _fold_sequential(seq: nn.Sequential) -> nn.Sequential:
    mods = list(seq)
    out: list[nn.Module] = []
    i = 0
    while i < len(mods):
        m = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(nxt, nn.BatchNorm2d):
            m = _fold(m, nxt)
            i += 2
        else:
            i += 1
        out.append(_SubPixelConvTranspose(m) if _SubPixelConvTranspose.applies(m) else m)
    return nn.Sequential(*out)


@torch.no_grad()
def fold_batch_norm(module: nn.Module) -> nn.Module:
    """Copy of a DCGAN :class:`Generator` or :class:`Discriminator` with its BN folded in.

    In eval mode a batch norm is a fixed per-channel affine map, so it can be merged into
    the convolution before it (and the generator's input projection): the copy computes
    the same function (up to float rounding) with fewer kernels per step. Frozen (no
    parameter requires grad), in eval mode; the original is untouched.

    Parameters
    ----------
    module : nn.Module
        A Generator or Discriminator (anything with ``net``, and optionally ``project``
        and ``project_bn``); other modules are returned as a frozen eval-mode copy.

    Returns
    -------
    nn.Module
    """
    fused = copy.deepcopy(module).eval()
    if isinstance(getattr(fused, "net", None), nn.Sequential):
        fused.net = _fold_sequential(fused.net)
    project = getattr(fused, "project", None)
    bn = getattr(fused, "project_bn", None)
    if isinstance(project, nn.Linear) and isinstance(bn, nn.BatchNorm2d):
        # project: z -> (C * s * s) reshaped to (C, s, s); BN scales each channel C.
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        per_row = scale.repeat_interleave(project.out_features // scale.numel())
        linear = nn.Linear(project.in_features, project.out_features).to(project.weight.device)
        linear.weight = nn.Parameter(project.weight * per_row[:, None])
        bias = shift.repeat_interleave(project.out_features // scale.numel())
        if project.bias is not None:
            bias = bias + project.bias * per_row
        linear.bias = nn.Parameter(bias.detach().clone())
        fused.project = linear
        fused.project_bn = nn.Identity()
    return fused.requires_grad_(False)


@dataclass
class _Pool:
    """Patches being optimised: one row per patch (all tensors on the device)."""

    idx: torch.Tensor  # (k,) int64 on the CPU: patch indices
    x: torch.Tensor
    fx: torch.Tensor  # float32 f(x), also used by the final scoring pass
    logits_x: torch.Tensor  # float32 D(x) logits, for the final scoring pass
    z: torch.Tensor
    m: torch.Tensor  # Adam first moment
    v: torch.Tensor  # Adam second moment
    t: torch.Tensor  # (k, 1) steps taken
    best_loss: torch.Tensor  # (k,) lowest loss seen
    best_z: torch.Tensor
    ref_loss: torch.Tensor  # (k,) loss at the last improvement by > tolerance
    stall: torch.Tensor  # (k,) steps since that improvement

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    def select(self, keep: torch.Tensor) -> _Pool:
        keep_cpu = keep.cpu()
        return _Pool(
            **{
                f.name: getattr(self, f.name)[keep_cpu if f.name == "idx" else keep]
                for f in fields(self)
            }
        )

    def extend(self, other: _Pool | None) -> _Pool:
        if other is None:
            return self
        return _Pool(
            **{
                f.name: torch.cat([getattr(self, f.name), getattr(other, f.name)])
                for f in fields(self)
            }
        )


def amp_by_default(device: torch.device) -> bool:
    """Whether the search uses mixed precision on ``device`` when ``amp`` is None.

    True on CUDA and on CPUs with AMX tiles (bf16 matrix units), where it pays.

    Parameters
    ----------
    device : torch.device

    Returns
    -------
    bool
    """
    if device.type == "cuda":
        return True
    is_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(is_amx()) if is_amx is not None else False
    except RuntimeError:  # pragma: no cover - old or unusual builds
        return False


def _amp_context(device: torch.device, enabled: bool) -> Callable[[], Any]:
    if not enabled:
        return contextlib.nullcontext
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return lambda: torch.autocast(device_type="cuda", dtype=dtype)
    return lambda: torch.autocast(device_type="cpu", dtype=torch.bfloat16)


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
    x_all = _as_patch_array(patches, generator)
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

    out = _Outputs(n, mcfg.z_dim, x_all.shape, config.keep_images)
    models = [generator, discriminator] + ([encoder] if encoder is not None else [])
    use_amp = amp_by_default(device) if config.amp is None else bool(config.amp)
    amp = _amp_context(device, use_amp)
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
        scorer = _Scorer(g_fast, d_fast, x_all, out, lam, device, pin)
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
                yield _scored_event(out, lam, n, idx)
        else:
            yield from _search(
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
        anomaly_score=(1.0 - lam) * out.r + lam * out.d,
        reference_anomaly_score=(1.0 - lam) * out.r + lam * out.dref,
        discriminator_output=out.p_real,
        lam=lam,
        config=config,
        steps_taken=out.steps_taken,
    )


class _Outputs:
    """Result arrays, filled as patches are scored."""

    def __init__(self, n: int, z_dim: int, shape: tuple[int, ...], keep_images: bool) -> None:
        self.z = np.empty((n, z_dim), np.float32)
        self.recon = np.empty(shape, np.float32) if keep_images else None
        self.resid = np.empty(shape, np.float32) if keep_images else None
        self.r = np.empty(n, np.float64)
        self.d = np.empty(n, np.float64)
        self.dref = np.empty(n, np.float64)
        self.p_real = np.empty(n, np.float64)
        self.steps_taken = np.zeros(n, np.int64)
        self.n_scored = 0


class _Scorer:
    """The final float32 pass at the chosen z (G and D BN-folded: the same functions)."""

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        x_all: np.ndarray,
        out: _Outputs,
        lam: float,
        device: torch.device,
        pin: bool,
    ) -> None:
        self.g, self.d, self.x_all, self.out = generator, discriminator, x_all, out
        self.lam, self.device, self.pin = lam, device, pin

    @torch.inference_mode()
    def score(
        self,
        idx: np.ndarray,
        z: torch.Tensor,
        *,
        x: torch.Tensor | None = None,
        fx: torch.Tensor | None = None,
        logits_x: torch.Tensor | None = None,
    ) -> None:
        """Score patches ``idx`` at their final codes ``z`` (float32, no autocast).

        ``x`` and its float32 ``fx``, ``logits_x`` are reused when the search has them.
        """
        if x is None or fx is None or logits_x is None:
            x_cpu = torch.from_numpy(self.x_all[idx])
            if self.pin:
                x_cpu = x_cpu.pin_memory()
            x = x_cpu.to(self.device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            logits_x, fx = self.d.forward_with_features(x)
        z = z.to(self.device, torch.float32)
        gz = self.g(z)
        logits_gz, fgz = self.d.forward_with_features(gz)
        r_img = (x - gz).abs()
        out = self.out
        out.z[idx] = z.cpu().numpy()
        out.r[idx] = r_img.flatten(1).sum(1).double().cpu().numpy()
        out.d[idx] = (fx - fgz).abs().flatten(1).sum(1).double().cpu().numpy()
        out.dref[idx] = F.softplus(-logits_gz).double().cpu().numpy()
        out.p_real[idx] = torch.sigmoid(logits_x).double().cpu().numpy()
        if out.recon is not None and out.resid is not None:
            out.recon[idx] = gz.cpu().numpy()
            out.resid[idx] = r_img.cpu().numpy()
        out.n_scored += len(idx)


def _scored_event(out: _Outputs, lam: float, n: int, idx: np.ndarray) -> ProgressEvent:
    """MAPPING_BATCH event after scoring patches ``idx`` (mean anomaly score of them)."""
    a = (1.0 - lam) * out.r[idx] + lam * out.d[idx]
    return ProgressEvent(
        EventKind.MAPPING_BATCH,
        out.n_scored,
        n,
        message=f"mapped {out.n_scored}/{n} patches",
        losses={"anomaly_score": float(a.mean())} if len(idx) else {},
        # The patches just scored, so callers can show results as batches finish.
        partial=None
        if out.resid is None
        else {"index": idx, "residual_image": out.resid[idx], "reconstruction": out.recon[idx]},
    )


def _search(
    generator: nn.Module,
    discriminator: nn.Module,
    encoder: nn.Module | None,
    z_start: torch.Tensor | None,
    to_device: Callable[[int, int], torch.Tensor],
    scorer: _Scorer,
    out: _Outputs,
    n: int,
    n_steps: int,
    lr: float,
    lam: float,
    config: MappingConfig,
    device: torch.device,
    amp: Callable[[], Any],
) -> Generator[ProgressEvent, None, None]:
    """Pool-based batched Adam on eq. (5) with per-patch early stopping (G, D BN-folded)."""
    cl = torch.channels_last
    g_loop, d_loop = generator, discriminator
    reference = config.discrimination == "reference"

    def forward(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        gz = g_loop(z)
        if reference:
            logits, fgz = d_loop.forward_with_features(gz)
            return gz, logits, fgz
        return gz, None, d_loop.features(gz)

    if config.compile:
        forward = torch.compile(forward, dynamic=True)

    b1, b2 = ADAM_BETAS
    patience = config.patience_steps
    bs = config.batch_size
    refill_at = max(1, bs // 4)  # refill when a quarter of the pool is free (amortised)
    total = n * n_steps
    credited = 0
    iteration = 0
    queue = 0
    pool: _Pool | None = None
    pending: list[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    n_pending = 0
    n_finished = 0

    def enter(lo: int, hi: int) -> _Pool:
        x = to_device(lo, hi).contiguous(memory_format=cl)
        with torch.no_grad():
            # float32 (no autocast): these are also the final scores' D(x) and f(x).
            logits_x, fx = d_loop.forward_with_features(x)
        with torch.no_grad(), amp():
            if z_start is not None:
                z = z_start[lo:hi].to(device, non_blocking=True)
            else:
                assert encoder is not None
                z = encoder(x).float()
        z = z.float().clamp(-1.0, 1.0)
        k = hi - lo
        inf = torch.full((k,), float("inf"), device=device)
        return _Pool(
            idx=torch.arange(lo, hi),
            x=x,
            fx=fx,
            logits_x=logits_x,
            z=z,
            m=torch.zeros_like(z),
            v=torch.zeros_like(z),
            t=torch.zeros((k, 1), device=device),
            best_loss=inf,
            best_z=z.clone(),
            ref_loss=inf.clone(),
            stall=torch.zeros(k, dtype=torch.int64, device=device),
        )

    def flush(force: bool) -> Iterator[ProgressEvent]:
        nonlocal pending, n_pending
        while pending and (force or n_pending >= bs):
            parts: list[tuple] = []
            count = 0
            while pending and count < bs:
                entry = pending.pop(0)
                take = min(len(entry[0]), bs - count)
                if take < len(entry[0]):
                    pending.insert(0, tuple(a[take:] for a in entry))
                parts.append(tuple(a[:take] for a in entry))
                count += take
            n_pending -= count
            idx = np.concatenate([p[0] for p in parts])
            z, x, fx, logits_x = (torch.cat([p[i] for p in parts]) for i in range(1, 5))
            scorer.score(idx, z, x=x, fx=fx, logits_x=logits_x)
            yield _scored_event(out, lam, n, idx)

    def losses_at(
        z: torch.Tensor, x: torch.Tensor, fx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with amp():
            gz, logits, fgz = forward(z)
        res = (x - gz.float()).abs().flatten(1).sum(1)
        disc = _discrimination(fx, fgz.float(), logits, config.discrimination)
        return (1.0 - lam) * res + lam * disc, res, disc

    while queue < n or (pool is not None and len(pool)):
        free = bs - (len(pool) if pool is not None else 0)
        if queue < n and (pool is None or len(pool) == 0 or free >= min(refill_at, n - queue)):
            hi = min(n, queue + free)
            new = enter(queue, hi)
            pool = new if pool is None or len(pool) == 0 else pool.extend(new)
            queue = hi
        assert pool is not None

        z = pool.z.detach().requires_grad_(True)
        loss, res, disc = losses_at(z, pool.x, pool.fx)
        # Summed over the pool: each patch's z gets exactly its own gradient.
        (grad,) = torch.autograd.grad(loss.sum(), z)
        with torch.no_grad():
            loss = loss.detach()
            if config.keep_best:
                better = loss < pool.best_loss
                pool.best_loss = torch.where(better, loss, pool.best_loss)
                pool.best_z = torch.where(better[:, None], pool.z, pool.best_z)
            # Adam (torch.optim.Adam's update) with a per-patch step count.
            pool.t += 1.0
            pool.m.mul_(b1).add_(grad, alpha=1.0 - b1)
            pool.v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
            bc1 = 1.0 - torch.pow(b1, pool.t)
            bc2_sqrt = torch.sqrt(1.0 - torch.pow(b2, pool.t))
            denom = (pool.v.sqrt() / bc2_sqrt).add_(ADAM_EPS)
            pool.z = (pool.z - (lr / bc1) * pool.m / denom).clamp_(-1.0, 1.0)
            done = pool.t[:, 0] >= n_steps
            if config.early_stop:
                improved = loss < pool.ref_loss * (1.0 - config.tolerance)
                pool.ref_loss = torch.where(improved, loss, pool.ref_loss)
                pool.stall = torch.where(improved, torch.zeros_like(pool.stall), pool.stall + 1)
                done |= pool.stall >= patience
        iteration += 1
        credited += len(pool)
        losses: dict[str, float] = {}
        if iteration % config.report_every == 0:
            k = len(pool)
            values = torch.stack([loss.sum(), res.detach().sum(), disc.detach().sum()]).tolist()
            losses = {
                "loss": values[0] / k,
                "residual": values[1] / k,
                "discrimination": values[2] / k,
            }
        if bool(done.any()):
            fin = pool.select(done)
            steps = fin.t[:, 0].to(torch.int64).cpu().numpy()
            idx = fin.idx.numpy()
            out.steps_taken[idx] = steps
            credited += int((n_steps - steps).sum())  # early-stopped steps count as done
            z_final = fin.z
            if config.keep_best:
                # The last iterate has not been evaluated yet: one forward pass (in the
                # search's precision) decides between it and the best one seen.
                with torch.no_grad():
                    last_loss = losses_at(fin.z, fin.x, fin.fx)[0]
                z_final = torch.where((last_loss <= fin.best_loss)[:, None], fin.z, fin.best_z)
            pending.append((idx, z_final, fin.x, fin.fx, fin.logits_x))
            n_pending += len(idx)
            n_finished += len(idx)
            pool = pool.select(~done)
        yield ProgressEvent(
            EventKind.MAPPING_STEP,
            min(credited, total),
            total,
            message=(f"step {iteration}: {len(pool)} patches in the search, {n_finished}/{n} done"),
            losses=losses,
        )
        yield from flush(force=queue >= n and len(pool) == 0)
    yield from flush(force=True)

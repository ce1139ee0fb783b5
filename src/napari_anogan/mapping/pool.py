"""The batched search behind :func:`~napari_anogan.mapping.map_to_latent`.

A pool of up to ``batch_size`` patches is optimised together (element-wise Adam with a
per-patch step count, so every patch follows the trajectory it would follow alone);
finished patches leave the pool, are scored in one float32 pass (:class:`PatchScorer`)
and new ones enter it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_anogan.events import EventKind, ProgressEvent
from napari_anogan.mapping.config import (
    ADAM_BETAS,
    ADAM_EPS,
    MappingConfig,
)

logger = logging.getLogger(__name__)


def _discrimination(
    fx: torch.Tensor, fgz: torch.Tensor, logits_gz: torch.Tensor | None, kind: str
) -> torch.Tensor:
    if kind == "feature":
        return (fx - fgz).abs().flatten(1).sum(1)
    # Sigmoid cross-entropy with target 1 == softplus(-logit), numerically stable.
    assert logits_gz is not None
    return F.softplus(-logits_gz)


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


class PatchOutputs:
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


class PatchScorer:
    """The final float32 pass at the chosen z (G and D BN-folded: the same functions)."""

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        x_all: np.ndarray,
        out: PatchOutputs,
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


def scored_event(out: PatchOutputs, lam: float, n: int, idx: np.ndarray) -> ProgressEvent:
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


def _enter_pool(
    lo: int,
    hi: int,
    to_device: Callable[[int, int], torch.Tensor],
    discriminator: nn.Module,
    encoder: nn.Module | None,
    z_start: torch.Tensor | None,
    device: torch.device,
    amp: Callable[[], Any],
) -> _Pool:
    """Start the search of patches ``lo:hi``: their D(x), f(x) and start codes."""
    x = to_device(lo, hi).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        # float32 (no autocast): these are also the final scores' D(x) and f(x).
        logits_x, fx = discriminator.forward_with_features(x)
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


def search_pool(
    generator: nn.Module,
    discriminator: nn.Module,
    encoder: nn.Module | None,
    z_start: torch.Tensor | None,
    to_device: Callable[[int, int], torch.Tensor],
    scorer: PatchScorer,
    out: PatchOutputs,
    n: int,
    n_steps: int,
    lr: float,
    lam: float,
    config: MappingConfig,
    device: torch.device,
    amp: Callable[[], Any],
) -> Generator[ProgressEvent, None, None]:
    """Pool-based batched Adam on eq. (5) with per-patch early stopping (G, D BN-folded)."""
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

    patience = config.patience_steps
    bs = config.batch_size
    refill_at = max(1, bs // 4)  # refill when a quarter of the pool is free (amortised)
    total = n * n_steps
    credited = 0
    iteration = 0
    queue = 0
    pool: _Pool | None = None
    pending = _Finished(scorer, out, lam, n, bs)
    n_finished = 0

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
            new = _enter_pool(queue, hi, to_device, d_loop, encoder, z_start, device, amp)
            pool = new if pool is None or len(pool) == 0 else pool.extend(new)
            queue = hi
        assert pool is not None

        z = pool.z.detach().requires_grad_(True)
        loss, res, disc = losses_at(z, pool.x, pool.fx)
        # Summed over the pool: each patch's z gets exactly its own gradient.
        (grad,) = torch.autograd.grad(loss.sum(), z)
        loss = loss.detach()
        done = _adam_update(pool, grad, loss, lr, n_steps, patience, config)
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
            pending.add(idx, z_final, fin.x, fin.fx, fin.logits_x)
            n_finished += len(idx)
            pool = pool.select(~done)
        yield ProgressEvent(
            EventKind.MAPPING_STEP,
            min(credited, total),
            total,
            message=(f"step {iteration}: {len(pool)} patches in the search, {n_finished}/{n} done"),
            losses=losses,
        )
        yield from pending.flush(force=queue >= n and len(pool) == 0)
    yield from pending.flush(force=True)


class _Finished:
    """Patches whose search has ended, scored (float32) in batches of ``bs`` as they gather."""

    def __init__(self, scorer: PatchScorer, out: PatchOutputs, lam: float, n: int, bs: int) -> None:
        self.scorer, self.out, self.lam, self.n, self.bs = scorer, out, lam, n, bs
        self.entries: list[tuple] = []
        self.count = 0

    def add(self, idx: np.ndarray, *tensors: torch.Tensor) -> None:
        """Queue patches ``idx`` with their final z, x, f(x) and D(x) logits."""
        self.entries.append((idx, *tensors))
        self.count += len(idx)

    def flush(self, force: bool) -> Iterator[ProgressEvent]:
        """Score full batches (every queued patch with ``force``), one event per batch."""
        bs = self.bs
        while self.entries and (force or self.count >= bs):
            parts: list[tuple] = []
            count = 0
            while self.entries and count < bs:
                entry = self.entries.pop(0)
                take = min(len(entry[0]), bs - count)
                if take < len(entry[0]):
                    self.entries.insert(0, tuple(a[take:] for a in entry))
                parts.append(tuple(a[:take] for a in entry))
                count += take
            self.count -= count
            idx = np.concatenate([p[0] for p in parts])
            z, x, fx, logits_x = (torch.cat([p[i] for p in parts]) for i in range(1, 5))
            self.scorer.score(idx, z, x=x, fx=fx, logits_x=logits_x)
            yield scored_event(self.out, self.lam, self.n, idx)


@torch.no_grad()
def _adam_update(
    pool: _Pool,
    grad: torch.Tensor,
    loss: torch.Tensor,
    lr: float,
    n_steps: int,
    patience: int,
    config: MappingConfig,
) -> torch.Tensor:
    """One Adam step on the pool's z (per-patch step counts); return which patches are done.

    Keeps each patch's best iterate (``keep_best``) and its early-stopping count.
    """
    b1, b2 = ADAM_BETAS
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
    return done

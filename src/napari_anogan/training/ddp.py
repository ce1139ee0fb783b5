"""GAN training on several processes (GPUs or nodes) with DistributedDataParallel.

Launch the normal ``train`` command with ``torchrun``; the torchrun environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) is detected,
or asked for with ``--ddp``::

    torchrun --nproc-per-node 4 -m napari_anogan.cli train HEALTHY... -o model.pt --ddp

and on each of two nodes (one command line)::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400
    -m napari_anogan.cli train HEALTHY... -o /shared/model.pt

How a step is split (:func:`napari_anogan.training.train_gan` with an active process group):

* every process reads the same inputs and draws the same patches, split, epoch
  permutation and z from the seed; each global batch of ``batch_size`` patches is cut
  into ``world_size`` equal contiguous shards (:func:`shard`), one per rank, so the
  ranks' shards of an epoch are disjoint and together are exactly the batches a single
  process would use; ``batch_size`` must be a multiple of ``world_size``;
* G and D are wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (gloo on
  CPU, nccl on CUDA, one GPU per process: ``cuda:LOCAL_RANK``): the loss is the mean over
  the rank's shard and DDP averages the gradients, i.e. the gradient of the mean over the
  global batch; the optimiser steps per epoch and Adam's settings are those of one
  process;
* **BatchNorm**: batch statistics are per rank (those of the rank's shard of
  ``batch_size / world_size`` patches; no SyncBatchNorm, on CPU and CUDA alike, so the
  run is the same computation on every backend, and a GAN's D already normalises real
  and fake batches separately). The running statistics (used at scoring time) are
  averaged over the ranks after every epoch, before the checkpoint, so every rank holds
  the same model and the checkpoint describes all the data;
* only rank 0 writes the checkpoint (atomically, every epoch), builds the healthy
  reference, shows progress and logs below ERROR; ``--resume`` reads the checkpoint on
  every rank (put it on a file system all nodes see).

What is equal to a single-process run with the same seed and ``batch_size``: the
initial weights, every step's patches (the union of the shards) and z, the number of
steps. What is not: BatchNorm statistics come from shards, and the gradient is an
average of per-rank means (float summation order), so weights differ after the first
step. Without BatchNorm the two runs agree to float32 rounding (tested). A DDP run is
reproducible bit for bit from its seed for a given world size and device, and resuming
it equals an uninterrupted run (tested on CPU with gloo).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_anogan.errors import AnoganError, InputError

__all__ = [
    "TORCHRUN_VARIABLES",
    "DDPContext",
    "average_buffers",
    "check_same",
    "current",
    "distributed_training",
    "epoch_shards",
    "init_distributed",
    "launched_by_torchrun",
    "mean_over_ranks",
    "shard",
    "shard_slice",
    "shutdown",
    "wrap",
]

logger = logging.getLogger(__name__)

#: Environment variables torchrun sets for every process.
TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

LAUNCH_HINT = (
    "launch with torchrun, e.g. `torchrun --nproc-per-node 2 -m napari_anogan.cli train "
    "HEALTHY... -o MODEL.pt --ddp`"
)


@dataclass(frozen=True)
class DDPContext:
    """The process group this process trains in.

    Attributes
    ----------
    world_size : int
        Number of processes.
    rank : int
        This process, 0 .. world_size - 1 (rank 0 writes and reports).
    local_rank : int
        This process on its node (its GPU index on CUDA).
    backend : str
        ``gloo`` or ``nccl``.
    device : torch.device or None
        The device this process trains on (None: the training config decides).
    """

    world_size: int
    rank: int
    local_rank: int
    backend: str
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that writes files and reports progress)."""
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """JSON summary for the checkpoint's training record."""
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "batch_norm": "per-rank batch statistics; running statistics averaged over "
            "ranks after every epoch",
        }


_CONTEXT: DDPContext | None = None


def _env_int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except (KeyError, ValueError) as exc:
        raise AnoganError(
            f"torchrun environment variable {name} is missing or not an integer "
            f"({environ.get(name)!r}); {LAUNCH_HINT}"
        ) from exc


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1).

    Examples
    --------
    >>> launched_by_torchrun({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    True
    >>> launched_by_torchrun({})
    False
    """
    environ = os.environ if environ is None else environ
    try:
        return int(environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def current() -> DDPContext | None:
    """Return the active multi-process group, or None when training in one process.

    Set by :func:`init_distributed`; a process group initialised by the caller
    (``torch.distributed.init_process_group``) is picked up too (device then None).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    if _CONTEXT is not None and _CONTEXT.rank == dist.get_rank():
        return _CONTEXT
    rank = dist.get_rank()
    local = int(os.environ.get("LOCAL_RANK", rank))
    return DDPContext(dist.get_world_size(), rank, local, str(dist.get_backend()))


def _device_for(device: str, local_rank: int, world_size: int) -> torch.device:
    """Return this process's device: ``cuda:LOCAL_RANK`` on CUDA, else the CPU."""
    choice = str(device).strip().lower()
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise AnoganError("--device cuda with --ddp, but CUDA is not available here")
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise AnoganError(
                f"process LOCAL_RANK {local_rank} has no GPU: this node has {n}; start at "
                f"most {n} processes per node (--nproc-per-node)"
            )
        return torch.device("cuda", local_rank)
    if choice.startswith("cuda:"):
        raise AnoganError(
            f"--device {device} cannot be used with DDP: each of the {world_size} processes "
            "uses the GPU of its LOCAL_RANK; pass --device cuda (or auto)"
        )
    raise AnoganError(f"device {device!r} is not available for DDP; use auto, cpu or cuda")


def init_distributed(
    device: str = "auto",
    *,
    backend: str | None = None,
    init_method: str = "env://",
    world_size: int | None = None,
    rank: int | None = None,
    local_rank: int | None = None,
    timeout_s: float = 1800.0,
    environ: Mapping[str, str] | None = None,
) -> DDPContext:
    """Join the process group (gloo on CPU, nccl on CUDA) and pick this process's device.

    Parameters
    ----------
    device : str
        ``auto`` (CUDA if available), ``cpu`` or ``cuda`` (``cuda:LOCAL_RANK``).
    backend : str, optional
        ``gloo`` or ``nccl``; default: nccl on CUDA, gloo on CPU.
    init_method : str
        ``env://`` (torchrun) or e.g. ``file:///tmp/x`` (tests, with ``world_size``
        and ``rank``).
    world_size, rank, local_rank : int, optional
        Default: from the torchrun environment.
    timeout_s : float
        Collective timeout.
    environ : mapping, optional
        Environment to read instead of ``os.environ``.

    Returns
    -------
    DDPContext

    Raises
    ------
    AnoganError
        Not launched by torchrun (no ``WORLD_SIZE``...), an explicit ``cuda:N``, more
        processes on a node than GPUs, nccl on the CPU, or distributed not available.
    """
    global _CONTEXT
    import torch.distributed as dist

    if not dist.is_available():
        raise AnoganError("this torch build has no torch.distributed; DDP is not available")
    environ = os.environ if environ is None else environ
    if world_size is None or rank is None:
        if "WORLD_SIZE" not in environ or "RANK" not in environ:
            raise AnoganError(
                "--ddp needs the torchrun environment (WORLD_SIZE, RANK, LOCAL_RANK, "
                f"MASTER_ADDR, MASTER_PORT), which is not set; {LAUNCH_HINT}"
            )
        world_size = _env_int(environ, "WORLD_SIZE")
        rank = _env_int(environ, "RANK")
    if local_rank is None:
        local_rank = _env_int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else rank
    if not 0 <= rank < world_size:
        raise AnoganError(f"RANK {rank} is not in [0, WORLD_SIZE={world_size})")
    dev = _device_for(device, local_rank, world_size)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if backend == "nccl" and dev.type != "cuda":
        raise AnoganError("the nccl backend needs CUDA devices; use gloo on the CPU")
    if backend not in ("gloo", "nccl"):
        raise AnoganError(f"DDP backend {backend!r} is not supported; use gloo or nccl")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend,
                init_method=init_method,
                world_size=world_size,
                rank=rank,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        except (RuntimeError, ValueError) as exc:  # DistNetworkError, bad init_method...
            raise AnoganError(
                f"rank {rank} could not join the DDP process group ({backend}, "
                f"{init_method}): {exc}"
            ) from exc
    _CONTEXT = DDPContext(world_size, rank, local_rank, backend, dev)
    if rank == 0:
        logger.info("DDP: %d processes, backend %s, rank 0 on %s", world_size, backend, dev)
    return _CONTEXT


def shutdown() -> None:
    """Leave the process group (no collective: ranks may finish at different times)."""
    global _CONTEXT
    import torch.distributed as dist

    _CONTEXT = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_training(device: str = "auto", **kwargs: Any) -> Iterator[DDPContext]:
    """:func:`init_distributed` for a ``with`` block; the group is left however it ends.

    A block that ends normally waits for every rank before leaving the group (rank 0
    finishes the model alone: feature bank, reference, model card); a rank that left
    while another still used the group was seen to abort in gloo's teardown. A block
    that raises leaves at once (torchrun then stops the other ranks).
    """
    import torch.distributed as dist

    ctx = init_distributed(device, **kwargs)
    try:
        yield ctx
    except BaseException:
        shutdown()
        raise
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    shutdown()


# ---------------------------------------------------------------------------- sharding


def shard_slice(batch_size: int, world_size: int, rank: int) -> slice:
    """Positions of rank ``rank``'s shard in a global batch of ``batch_size``.

    Raises
    ------
    InputError
        If ``batch_size`` is not a multiple of ``world_size``.

    Examples
    --------
    >>> shard_slice(8, 2, 1)
    slice(4, 8, None)
    """
    if batch_size < world_size or batch_size % world_size:
        raise InputError(
            f"the batch of {batch_size} patches cannot be split evenly over {world_size} "
            f"processes: use a --batch-size that is a multiple of {world_size} (each "
            "process then takes batch_size / processes patches per step)"
        )
    k = batch_size // world_size
    return slice(rank * k, (rank + 1) * k)


def shard(batch: np.ndarray, world_size: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s contiguous share of a global batch (equal shares, disjoint).

    Examples
    --------
    >>> shard(np.arange(6), 3, 2)
    array([4, 5])
    """
    return batch[shard_slice(len(batch), world_size, rank)]


def epoch_shards(
    order: np.ndarray, batch_size: int, n_batches: int, world_size: int, rank: int
) -> np.ndarray:
    """Patch indices rank ``rank`` uses in each batch of an epoch.

    Parameters
    ----------
    order : (M,) int ndarray
        The epoch's permutation of the training patches (the same on every rank).
    batch_size : int
        Global batch size.
    n_batches : int
        Batches per epoch (incomplete last batch dropped).
    world_size, rank : int

    Returns
    -------
    (n_batches, batch_size // world_size) int ndarray
        Row ``b``: this rank's share of global batch ``b`` (sorted, as training reads
        it). Over all ranks the rows are disjoint and cover ``order[: n_batches *
        batch_size]``.
    """
    part = shard_slice(batch_size, world_size, rank)
    rows = [np.sort(order[b * batch_size : (b + 1) * batch_size])[part] for b in range(n_batches)]
    return np.asarray(rows, dtype=np.int64).reshape(n_batches, part.stop - part.start)


# ------------------------------------------------------------------------ collectives


def wrap(module: nn.Module, ctx: DDPContext) -> nn.Module:
    """Wrap a module in DistributedDataParallel (buffers are not broadcast: per-rank BN)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    dev = next(module.parameters()).device
    # No buffer sync in forward passes (per-rank BN statistics; they are averaged after
    # every epoch instead). torch >= 2.13 names it forward_sync_buffers.
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in params
        else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(
        module, device_ids=[dev.index] if dev.type == "cuda" else None, **no_sync
    )


def mean_over_ranks(tensor: torch.Tensor, ctx: DDPContext) -> torch.Tensor:
    """Mean of ``tensor`` over the ranks (every rank gets it)."""
    import torch.distributed as dist

    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


@torch.no_grad()
def average_buffers(module: nn.Module, ctx: DDPContext) -> None:
    """Average the floating-point buffers (BN running mean/var) over the ranks, in place."""
    import torch.distributed as dist

    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(ctx.world_size)


def check_same(ctx: DDPContext, **values: Any) -> None:
    """Raise on every rank if the ranks do not all have the same ``values``.

    The values are hashed (JSON, SHA-256) and the hashes compared with one all-gather
    of integers: nothing is pickled.

    Raises
    ------
    InputError
        Naming the values that differ between ranks (e.g. different inputs per node).
    """
    import torch.distributed as dist

    names = sorted(values)
    digests = [
        int.from_bytes(
            hashlib.sha256(json.dumps(values[k], sort_keys=True, default=str).encode()).digest()[
                :7
            ],
            "big",
        )
        for k in names
    ]
    device = ctx.device if ctx.device is not None and ctx.backend == "nccl" else None
    mine = torch.tensor(digests, dtype=torch.int64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, mine)
    table = torch.stack(gathered).cpu()
    differ = [k for i, k in enumerate(names) if bool((table[:, i] != table[0, i]).any())]
    if differ:
        raise InputError(
            "the DDP processes disagree on " + ", ".join(differ) + ": every process must get "
            "the same inputs, settings and seed (and, with --resume, the same checkpoint)"
        )

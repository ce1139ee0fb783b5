"""The torch device and its mixed precision.

The device comes from a user setting (``auto``, ``cpu``, ``cuda``, ``cuda:1``); mixed
precision is used where it pays, through one autocast context.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from napari_anogan.errors import AnoganError

__all__ = ["amp_by_default", "amp_context", "resolve_device"]

logger = logging.getLogger(__name__)


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn a device setting into a :class:`torch.device`, checking it exists.

    Parameters
    ----------
    spec : str or torch.device
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns
    -------
    torch.device

    Raises
    ------
    AnoganError
        If the setting is not understood, or CUDA (or that CUDA index) is not available.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    text = str(spec) if isinstance(spec, torch.device) else str(spec).strip().lower()
    if text in ("", "auto"):
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        logger.debug("device auto -> %s", device)
        return device
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise AnoganError(
            f"unknown device {spec!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from exc
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise AnoganError(
            f"unsupported device {spec!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        )
    if not torch.cuda.is_available():
        raise AnoganError(
            f"device {spec!r} requested but CUDA is not available "
            "(no NVIDIA GPU, or a CPU-only torch build); use --device cpu or auto"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise AnoganError(f"device {spec!r} requested but only {count} CUDA device(s) present")
    return device


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


def amp_context(device: torch.device, enabled: bool) -> Callable[[], Any]:
    """Return a factory of the autocast context for ``device`` (a no-op one when disabled).

    bf16 on the CPU and on GPUs that support it, fp16 on other GPUs.
    """
    if not enabled:
        return contextlib.nullcontext
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return lambda: torch.autocast(device_type="cuda", dtype=dtype)
    return lambda: torch.autocast(device_type="cpu", dtype=torch.bfloat16)

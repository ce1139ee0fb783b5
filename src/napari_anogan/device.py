"""Choosing the torch device from a user setting (``auto``, ``cpu``, ``cuda``, ``cuda:1``)."""

from __future__ import annotations

import logging

import torch

from napari_anogan.errors import AnoganError

__all__ = ["resolve_device"]

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

"""The model card: what a healthy model is, in a few lines a user can check.

A checkpoint stores its card under the optional ``model_card`` key (a JSON object, see
:mod:`napari_anogan.checkpoint`), written at the end of training: what the training
scans were (real or synthetic, how many, pixel size), how the model was trained (preset,
epochs, the model it was adapted from) and how large its healthy reference and feature
bank are. :func:`model_card` completes a stored card with what the checkpoint itself
records, so that models trained before cards existed describe themselves too;
``napari-anogan info MODEL`` and the Score widget show :func:`card_lines`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any

from napari_anogan.checkpoint import read_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["card_lines", "card_text", "model_card", "new_card", "write_card"]

#: Kinds of training data a card names.
DATA_KINDS = ("real", "synthetic")

#: The card's description of the bundled synthetic model.
SYNTHETIC_DEMO = (
    "synthetic eyes only: for demonstration; train on your own healthy scans for real data"
)


def new_card(
    *,
    kind: str,
    description: str,
    data: dict[str, Any],
    init_from: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the card training stores: what the data was, what it started from.

    Parameters
    ----------
    kind : {"real", "synthetic"}
        What the healthy training scans are.
    description : str
        Free text (device, protocol, cohort); empty for none.
    data : dict
        The training data summary of
        :func:`~napari_anogan.pipeline.collect_training_patches` (``inputs``,
        ``n_bscans``, ``pixel_size_um``, ``holdout_bscans``).
    init_from : dict, optional
        For a model adapted from another: that model's file name and card.

    Returns
    -------
    dict
    """
    if kind not in DATA_KINDS:
        raise ValueError(f"kind must be one of {DATA_KINDS}, not {kind!r}")
    card: dict[str, Any] = {
        "data_kind": kind,
        "description": description,
        "training_inputs": len(data.get("inputs", [])),
        "training_bscans": int(data.get("n_bscans", 0)),
        "held_out_bscans": len(data.get("holdout_bscans", [])),
        "pixel_size_um": data.get("pixel_size_um"),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
    }
    if init_from:
        card["adapted_from"] = init_from
    return card


def write_card(path: str | os.PathLike, card: dict[str, Any]) -> None:
    """Store ``card`` in the checkpoint at ``path`` (rewritten atomically)."""
    data = read_checkpoint(path)
    data["model_card"] = json.dumps(card, sort_keys=True)
    save_checkpoint(path, data)


def model_card(model) -> dict[str, Any]:
    """Return the model's card, completed with what its checkpoint records.

    Parameters
    ----------
    model : LoadedModel

    Returns
    -------
    dict
        The stored card (``data_kind`` ``unknown`` when none was stored) plus
        ``file``, ``preset``, ``patch_size``, ``epochs``, ``encoder``,
        ``reference_patches``, ``feature_bank`` and ``column_spacing_um`` (the grid
        scans are resampled to before scoring).
    """
    training = model.training or {}
    data = (training.get("extra") or {}).get("data") or {}
    card: dict[str, Any] = {
        "data_kind": "unknown",
        "description": "",
        "training_inputs": len(data.get("inputs", [])) or None,
        "training_bscans": data.get("n_bscans"),
        **(model.card or {}),
    }
    card.update(
        file=Path(model.path).name if getattr(model, "path", None) else None,
        preset=model.model_config.preset,
        patch_size=model.model_config.patch_size,
        epochs=training.get("epochs_done"),
        encoder=model.encoder is not None,
        reference_patches=(model.reference or {}).get("n_patches", 0),
        feature_bank=(0 if model.feature_bank is None else len(model.feature_bank.embeddings)),
        column_spacing_um=(model.preprocess_config or {}).get("column_spacing_um"),
    )
    return card


def _pixel_size(size: Any) -> str:
    if not size or all(v is None for v in size):
        return "unknown (the files state none)"
    parts = [f"{v:g}" if v else "?" for v in size]
    return " x ".join(parts) + " um (slice x depth x width)"


def card_lines(card: dict[str, Any]) -> list[str]:
    """Return the card as short ``label: value`` lines (``info``, the Score widget).

    Examples
    --------
    >>> card_lines({"data_kind": "synthetic", "description": SYNTHETIC_DEMO})[0]
    'trained on: synthetic scans'
    """
    kind = card.get("data_kind", "unknown")
    lines = [f"trained on: {kind} scans"]
    if card.get("description"):
        lines.append(f"description: {card['description']}")
    if card.get("training_inputs") is not None:
        lines.append(
            f"training data: {card.get('training_inputs')} files, "
            f"{card.get('training_bscans')} B-scans"
            + (
                f" ({card['held_out_bscans']} held out for the healthy reference)"
                if card.get("held_out_bscans")
                else ""
            )
        )
    if "pixel_size_um" in card:
        lines.append(f"pixel size of the training scans: {_pixel_size(card['pixel_size_um'])}")
    if card.get("adapted_from"):
        parent = card["adapted_from"]
        lines.append(
            f"adapted from: {parent.get('file')} ({parent.get('data_kind', 'unknown')} scans)"
        )
    if "preset" in card:
        lines.append(
            f"model: {card['preset']} preset, {card.get('patch_size')} px patches, "
            f"{card.get('epochs')} epochs, encoder {'yes' if card.get('encoder') else 'no'}"
        )
        lines.append(
            f"healthy reference: {card.get('reference_patches')} patches; feature bank: "
            f"{card.get('feature_bank')} patches"
        )
    if card.get("date"):
        lines.append(f"trained: {card['date']}")
    return lines


def card_text(path: str | os.PathLike) -> str:
    """Return the card of the model file at ``path`` as lines of text (the Score widget).

    An unreadable file gives its error in one line instead (a widget shows it as is);
    the card only informs, so nothing about it may stop a widget.
    """
    from napari_anogan.checkpoint import load_checkpoint
    from napari_anogan.errors import AnoganError

    try:
        return "\n".join(card_lines(model_card(load_checkpoint(path))))
    except AnoganError as exc:
        return str(exc)
    except Exception as exc:  # informational only: say it, never raise into the GUI
        logger.debug("no model card for %s", path, exc_info=True)
        return f"model card unavailable ({type(exc).__name__}: {exc})"

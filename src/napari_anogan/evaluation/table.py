"""The evaluation's report: metrics as JSON and the paper's Table 1 as Markdown."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_anogan._atomic import atomic_path

logger = logging.getLogger(__name__)


TABLE1_ROWS = (
    ("aCAE", "acae"),
    ("P_D", "discriminator_output"),
    ("GAN_R", "reference_anomaly_score"),
    ("AnoGAN", "anomaly_score"),
    ("AnoGAN F", "feature_distance"),
)
"""Rows of the paper's Table 1 (row label, score name), and the feature distance of models
with a feature bank (:mod:`napari_anogan.models.feature_bank`)."""


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def save_metrics(metrics: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a metrics dict as JSON, atomically (non-finite floats become null).

    Parameters
    ----------
    metrics : dict
        Result of :func:`evaluate_scores` (or any JSON-like dict with numpy values).
    path : str or PathLike
        Destination ``.json`` file.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_json_ready(metrics), indent=2) + "\n", encoding="utf-8")


def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{float(value):.{digits}f}"


def table1(metrics: Mapping[str, Any], *, rows: Sequence[tuple[str, str]] = TABLE1_ROWS) -> str:
    """Markdown table in the format of the paper's Table 1.

    Statistics are those of the Youden point (``metrics[name]["youden"]``); ``AUC`` is the
    patch-level AUC and ``B-scan AUC`` the B-scan-level one. Rows: aCAE (``acae``), P_D
    (``discriminator_output``, scored as ``1 - P_D`` so that higher is more anomalous),
    GAN_R (``reference_anomaly_score``), AnoGAN (``anomaly_score``) and AnoGAN F (the
    feature distance ``feature_distance``). A score missing
    from ``metrics`` shows as ``–``. Where the metrics hold bootstrap intervals (see
    :func:`evaluate_scores`), an ``AUC 95 % CI`` column follows ``AUC``.

    Parameters
    ----------
    metrics : dict
        Result of :func:`evaluate_scores`.
    rows : sequence of (label, score name), optional
        Rows to show.

    Returns
    -------
    str
        A Markdown table (header, separator and one line per row), newline-terminated.
    """
    with_ci = any((metrics.get(name) or {}).get("patch_auc_ci") for _, name in rows)
    header = ["", "Precision", "Recall", "Sensitivity", "Specificity", "AUC"]
    header += ["AUC 95 % CI", "B-scan AUC"] if with_ci else ["B-scan AUC"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for label, name in rows:
        entry = metrics.get(name) or {}
        youden = entry.get("youden") or {}
        cells = [
            label,
            _fmt(youden.get("precision"), 4),
            _fmt(youden.get("recall"), 4),
            _fmt(youden.get("sensitivity"), 4),
            _fmt(youden.get("specificity"), 4),
            _fmt(entry.get("patch_auc"), 3),
        ]
        if with_ci:
            low, high = entry.get("patch_auc_ci") or (None, None)
            cells.append(f"{_fmt(low, 3)}-{_fmt(high, 3)}")
        cells.append(_fmt(entry.get("bscan_auc"), 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

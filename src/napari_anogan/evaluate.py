"""Evaluation: labels, ROC/AUC, Youden operating point, Table 1 and Fig. 4 plots.

Everything here takes plain numpy arrays and returns numpy arrays, dicts or strings, so it
works on scores from any source (AnoGAN mapping, the aCAE baseline, a CSV written earlier).

Sign convention
---------------
Every score is oriented so that **higher means more anomalous** before a ROC curve is
computed. All AnoGAN scores (``anomaly_score``, ``residual_score``, ``discrimination_score``,
``reference_anomaly_score``, ``reference_discrimination_score``) and the aCAE score already
are. The discriminator output ``P_D = D(x)`` is the probability that ``x`` is a real
(healthy) patch, so higher means *more normal*; it is scored as ``1 - P_D``
(see :func:`orient_scores`). Youden thresholds are reported on that oriented scale.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_anogan._atomic import atomic_path
from napari_anogan.errors import AnoganError, InputError

logger = logging.getLogger(__name__)

SCORE_NAMES = (
    "anomaly_score",
    "residual_score",
    "discrimination_score",
    "reference_anomaly_score",
    "reference_discrimination_score",
    "discriminator_output",
    "acae",
)
"""Score names known to the evaluation (columns of the patch table plus the aCAE)."""

HIGHER_IS_NORMAL = frozenset({"discriminator_output"})
"""Scores where a high value means *normal*; they are evaluated as ``1 - score``."""

DISPLAY_NAMES = {
    "acae": "aCAE",
    "discriminator_output": "$P_D$",
    "reference_anomaly_score": "$GAN_R$",
    "anomaly_score": "AnoGAN",
    "residual_score": "$R(\\mathbf{x})$",
    "discrimination_score": "$D(\\mathbf{x})$",
    "reference_discrimination_score": "$\\hat{D}(\\mathbf{x})$",
}
"""Names used in the paper's Fig. 4 legends (matplotlib mathtext)."""

CURVE_COLORS = {
    # Fig. 4a
    "acae": "tab:blue",
    "reference_anomaly_score": "tab:red",
    "anomaly_score": "black",
    "discriminator_output": "tab:green",
    # Fig. 4b
    "residual_score": "tab:green",
    "discrimination_score": "black",
    "reference_discrimination_score": "tab:red",
}
"""Curve colours of the paper's Fig. 4."""

FIG4A_SCORES = ("acae", "reference_anomaly_score", "anomaly_score", "discriminator_output")
"""Scores compared in Fig. 4a (models)."""

FIG4B_SCORES = ("residual_score", "discrimination_score", "reference_discrimination_score")
"""Scores compared in Fig. 4b (anomaly score components)."""

TABLE1_ROWS = (
    ("aCAE", "acae"),
    ("P_D", "discriminator_output"),
    ("GAN_R", "reference_anomaly_score"),
    ("AnoGAN", "anomaly_score"),
    ("AnoGAN F", "feature_distance"),
)
"""Rows of the paper's Table 1: (row label, score name)."""

GROUP_COLORS = {
    "training healthy": "tab:blue",
    "test healthy": "tab:green",
    "diseased": "tab:red",
}
"""Group colours of the paper's Fig. 4c,d."""

DEFAULT_MAX_PIXELS = 2_000_000


# --------------------------------------------------------------------------- labels


def patch_labels_from_mask(
    mask_flat: np.ndarray, coords: np.ndarray, patch_size: int
) -> np.ndarray:
    """Label patches positive if they contain at least one lesion pixel (the paper's rule).

    Parameters
    ----------
    mask_flat : (S, Hb, Wr) array
        Lesion mask in the same (flattened, resampled) geometry the patches were cut from;
        nonzero = lesion.
    coords : (N, 3) int array
        ``(slice, row, col)`` of each patch's top-left corner in ``mask_flat``.
    patch_size : int
        Side of the square patches.

    Returns
    -------
    (N,) bool array
        True where the patch window holds any lesion pixel. Parts of a window outside the
        mask count as background.

    Raises
    ------
    InputError
        If the mask is not 3-D, coords are not ``(N, 3)`` or a slice index is out of range.
    """
    mask = np.asarray(mask_flat)
    coords = np.asarray(coords)
    if mask.ndim != 3:
        raise InputError(f"lesion mask must be (slices, rows, cols), got shape {mask.shape}")
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise InputError(f"patch coords must be (N, 3) = (slice, row, col), got {coords.shape}")
    if patch_size < 1:
        raise InputError(f"patch_size must be >= 1, got {patch_size}")
    coords = coords.astype(np.int64)
    n_slices, height, width = mask.shape
    if coords.size and (coords[:, 0].min() < 0 or coords[:, 0].max() >= n_slices):
        raise InputError(f"patch slice index out of range for a mask with {n_slices} slices")
    lesion = mask != 0
    # A 2-D summed-area table per slice answers every window in O(1).
    table = np.zeros((n_slices, height + 1, width + 1), dtype=np.int64)
    table[:, 1:, 1:] = lesion.cumsum(axis=1).cumsum(axis=2)
    s = coords[:, 0]
    r0 = np.clip(coords[:, 1], 0, height)
    c0 = np.clip(coords[:, 2], 0, width)
    r1 = np.clip(coords[:, 1] + patch_size, 0, height)
    c1 = np.clip(coords[:, 2] + patch_size, 0, width)
    count = table[s, r1, c1] - table[s, r0, c1] - table[s, r1, c0] + table[s, r0, c0]
    return count > 0


def bscan_labels(mask: np.ndarray) -> np.ndarray:
    """Label B-scans positive if their mask has at least one lesion pixel.

    Parameters
    ----------
    mask : (S, H, W) array
        Lesion mask of a volume; nonzero = lesion.

    Returns
    -------
    (S,) bool array
    """
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[np.newaxis]
    if mask.ndim != 3:
        raise InputError(f"lesion mask must be (slices, rows, cols), got shape {mask.shape}")
    return (mask != 0).reshape(mask.shape[0], -1).any(axis=1)


def bscan_labels_without_mask(n_slices: int, is_anomalous_input: bool) -> np.ndarray:
    """Label B-scans when no mask is known: every B-scan of an anomalous input is positive.

    Parameters
    ----------
    n_slices : int
        Number of B-scans in the input.
    is_anomalous_input : bool
        Whether the input was given as anomalous (``--anomalous``) or normal.

    Returns
    -------
    (n_slices,) bool array
    """
    return np.full(int(n_slices), bool(is_anomalous_input), dtype=bool)


# --------------------------------------------------------------------------- ROC


def orient_scores(name: str, scores: np.ndarray) -> np.ndarray:
    """Return ``scores`` oriented so that higher means more anomalous.

    Parameters
    ----------
    name : str
        Score name; names in :data:`HIGHER_IS_NORMAL` (the discriminator output ``P_D``)
        are turned into ``1 - P_D``, every other score is returned unchanged.
    scores : array
        Raw scores.

    Returns
    -------
    float64 array
    """
    scores = np.asarray(scores, dtype=np.float64)
    return 1.0 - scores if name in HIGHER_IS_NORMAL else scores


def _check_binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise AnoganError(
            f"labels and scores differ in length ({labels.size} labels, {scores.size} scores)"
        )
    if not np.all(np.isfinite(scores)):
        raise AnoganError("scores contain NaN or infinite values; drop unscored items first")
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        kind = "positive (anomalous)" if n_pos else "negative (normal)"
        raise AnoganError(
            f"ROC needs both normal and anomalous examples, but all {labels.size} labels are "
            f"{kind}; give normal and anomalous inputs (or masks with lesion pixels)"
        )
    return labels, scores


def roc(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Receiver operating characteristic of a score (higher = more anomalous).

    Parameters
    ----------
    labels : (N,) bool array
        True for anomalous (positive) items.
    scores : (N,) float array
        Score per item, higher meaning more anomalous (see :func:`orient_scores`).

    Returns
    -------
    dict
        ``fpr``, ``tpr``, ``thresholds`` (arrays from :func:`sklearn.metrics.roc_curve`,
        thresholds decreasing, the first one ``inf``) and ``auc`` (float).

    Raises
    ------
    AnoganError
        If labels hold a single class, lengths differ or scores are not finite.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    labels, scores = _check_binary(labels, scores)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    return {
        "fpr": fpr,
        "tpr": tpr,
        "thresholds": thresholds,
        "auc": float(roc_auc_score(labels, scores)),
    }


def operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Clinical statistics when items with ``score >= threshold`` are called anomalous.

    Parameters
    ----------
    labels : (N,) bool array
        True for anomalous items.
    scores : (N,) float array
        Scores, higher = more anomalous.
    threshold : float
        Decision threshold.

    Returns
    -------
    dict
        ``threshold``, ``sensitivity`` (= ``recall``) = TP / (TP + FN), ``specificity`` =
        TN / (TN + FP), ``precision`` = TP / (TP + FP) (0.0 when nothing is called
        anomalous), ``recall``.
    """
    labels, scores = _check_binary(labels, scores)
    predicted = scores >= threshold
    tp = int(np.sum(predicted & labels))
    fp = int(np.sum(predicted & ~labels))
    fn = int(np.sum(~predicted & labels))
    tn = int(np.sum(~predicted & ~labels))
    sensitivity = tp / (tp + fn)
    return {
        "threshold": float(threshold),
        "sensitivity": sensitivity,
        "specificity": tn / (tn + fp),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": sensitivity,
    }


def youden_point(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Operating point maximising Youden's J = sensitivity + specificity - 1 (Table 1).

    Parameters
    ----------
    labels : (N,) bool array
        True for anomalous items.
    scores : (N,) float array
        Scores, higher = more anomalous.

    Returns
    -------
    dict
        ``threshold`` (an observed score; items with ``score >= threshold`` are anomalous),
        ``sensitivity``, ``specificity``, ``precision``, ``recall`` (see
        :func:`operating_point`). Ties in J go to the highest threshold.

    Raises
    ------
    AnoganError
        If labels hold a single class, lengths differ or scores are not finite.
    """
    curve = roc(labels, scores)
    j = curve["tpr"] - curve["fpr"]
    # roc_curve's first threshold is +inf (nothing called anomalous, J = 0); skip it so the
    # reported threshold is always a real score.
    best = 1 + int(np.argmax(j[1:]))
    return operating_point(labels, scores, float(curve["thresholds"][best]))


# --------------------------------------------------------------------------- pixels


def pixel_auroc(
    residual_maps: np.ndarray,
    masks: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    seed: int = 0,
) -> float:
    """Pixel-level AUROC of residual maps against lesion masks.

    Parameters
    ----------
    residual_maps : array
        Residual ``|x - G(z)|`` per pixel, any shape.
    masks : array
        Lesion masks, same shape; nonzero = lesion.
    valid : bool array, optional
        Same shape; True where a pixel was scored (inside a patch). Default: all pixels.
    max_pixels : int, optional
        Above this many valid pixels, a fixed random subset of this size is used
        (deterministic given ``seed``) to bound memory and time.
    seed : int, optional
        Seed of that subset.

    Returns
    -------
    float

    Raises
    ------
    AnoganError
        If shapes differ, no pixel is valid or the valid pixels hold a single class.
    """
    from sklearn.metrics import roc_auc_score

    residual = np.asarray(residual_maps)
    masks = np.asarray(masks)
    if residual.shape != masks.shape:
        raise AnoganError(f"residual maps {residual.shape} and masks {masks.shape} differ in shape")
    if valid is None:
        valid_flat = np.ones(residual.size, dtype=bool)
    else:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != residual.shape:
            raise AnoganError(f"valid mask {valid.shape} and residual maps {residual.shape} differ")
        valid_flat = valid.ravel()
    residual_flat = residual.ravel()
    valid_flat = valid_flat & np.isfinite(residual_flat)
    index = np.flatnonzero(valid_flat)
    if index.size == 0:
        raise AnoganError("no scored pixel to compute a pixel-level AUROC")
    if index.size > max_pixels:
        rng = np.random.default_rng(seed)
        index = np.sort(rng.choice(index, size=max_pixels, replace=False))
        logger.info("pixel AUROC on a fixed random subset of %d pixels", max_pixels)
    labels = masks.ravel()[index] != 0
    scores = residual_flat[index].astype(np.float64)
    labels, scores = _check_binary(labels, scores)
    return float(roc_auc_score(labels, scores))


# --------------------------------------------------------------------------- metrics


def _finite_pairs(name: str, level: str, labels: np.ndarray, scores: np.ndarray):
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise AnoganError(
            f"{level} score {name!r} has {scores.size} values but there are {labels.size} labels"
        )
    keep = np.isfinite(scores)
    if not keep.all():
        logger.warning(
            "%s score %r: %d of %d values are not finite (not scored) and are left out",
            level,
            name,
            int((~keep).sum()),
            keep.size,
        )
    return labels[keep], scores[keep]


def roc_curves(scores: Mapping[str, np.ndarray], labels: np.ndarray) -> dict[str, dict[str, Any]]:
    """ROC curve of every score (oriented, non-finite values left out).

    Parameters
    ----------
    scores : dict of str to (N,) array
        Raw scores by name.
    labels : (N,) bool array
        True for anomalous items.

    Returns
    -------
    dict of str to dict
        :func:`roc` result per score name, ready for :func:`plot_rocs`.
    """
    curves = {}
    for name, values in scores.items():
        lab, val = _finite_pairs(name, "", labels, values)
        curves[name] = roc(lab, orient_scores(name, val))
    return curves


def _weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    drawn = weights > 0
    if labels[drawn].all() or not labels[drawn].any():
        return math.nan
    return float(roc_auc_score(labels[drawn], scores[drawn], sample_weight=weights[drawn]))


def bootstrap_aucs(
    labels: np.ndarray,
    scores: Mapping[str, np.ndarray],
    groups: np.ndarray,
    *,
    reference: str | None = "anomaly_score",
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Confidence intervals of AUCs by resampling whole groups (eyes, volumes).

    Patches of one eye are not independent, so the items are resampled by group: a
    stratified cluster bootstrap that draws, with replacement, as many groups with a
    positive item as there are and as many without, keeping all items of each group
    drawn. The interval is the percentile interval of the resampled AUCs. For every other
    score, the interval of its AUC minus the ``reference`` score's AUC on the same
    resamples (paired) says whether the two are told apart.

    Parameters
    ----------
    labels : (N,) bool array
        True for anomalous items.
    scores : dict of str to (N,) array
        Raw scores by name (oriented with :func:`orient_scores`); non-finite values are
        left out of that score's AUC.
    groups : (N,) array
        Group of each item (for example the index of its input volume).
    reference : str or None
        Score to compare the others with; None or absent: no differences.
    n_resamples : int
        Number of bootstrap resamples.
    seed : int
        Seed of the resampling.
    level : float
        Coverage of the intervals.

    Returns
    -------
    dict of str to dict
        Per score: ``auc_ci`` [low, high]; for scores other than the reference also
        ``auc_minus_reference_ci`` [low, high] and ``reference``. Bounds are None where
        no resample had both classes.

    Raises
    ------
    AnoganError
        If lengths differ or no group holds a positive or a negative item.
    """
    labels = np.asarray(labels).ravel().astype(bool)
    groups = np.asarray(groups).ravel()
    if groups.shape != labels.shape:
        raise AnoganError(f"{groups.size} group ids given for {labels.size} labels")
    ids, index = np.unique(groups, return_inverse=True)
    has_pos = np.bincount(index, weights=labels, minlength=ids.size) > 0
    has_neg = np.bincount(index, weights=~labels, minlength=ids.size) > 0
    if not has_pos.any() or not has_neg.any():
        raise AnoganError("the bootstrap needs groups with positive and with negative items")
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_resamples, ids.size))
    for stratum in (np.flatnonzero(has_pos), np.flatnonzero(~has_pos)):
        if stratum.size:
            draws = rng.choice(stratum, size=(n_resamples, stratum.size), replace=True)
            np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1.0)
    weights = counts[:, index]
    aucs = {}
    for name, values in scores.items():
        values = orient_scores(name, values).ravel()
        if values.shape != labels.shape:
            raise AnoganError(f"score {name!r} has {values.size} values for {labels.size} labels")
        keep = np.isfinite(values)
        lab, val = labels[keep], values[keep]
        aucs[name] = np.array([_weighted_auc(lab, val, w[keep]) for w in weights])
    tail = 100 * (1 - level) / 2

    def interval(values: np.ndarray) -> list[float | None]:
        values = values[np.isfinite(values)]
        if not values.size:
            return [None, None]
        low, high = np.percentile(values, [tail, 100 - tail])
        return [float(low), float(high)]

    out: dict[str, dict[str, Any]] = {}
    for name, values in aucs.items():
        out[name] = {"auc_ci": interval(values)}
        if reference in aucs and name != reference:
            out[name]["auc_minus_reference_ci"] = interval(values - aucs[reference])
            out[name]["reference"] = reference
    return out


def evaluate_scores(
    patch_scores: Mapping[str, np.ndarray] | None,
    patch_labels: np.ndarray | None,
    bscan_scores: Mapping[str, np.ndarray] | None = None,
    bscan_labels: np.ndarray | None = None,
    pixel: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
    *,
    patch_groups: np.ndarray | None = None,
    bscan_groups: np.ndarray | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute the ``metrics.json`` structure.

    Parameters
    ----------
    patch_scores : dict of str to (N,) array, optional
        Raw patch scores by name (see :data:`SCORE_NAMES`); oriented with
        :func:`orient_scores`. NaN values (unscored) are left out with a warning.
    patch_labels : (N,) bool array, optional
        True for patches holding a lesion pixel.
    bscan_scores : dict of str to (M,) array, optional
        Raw B-scan scores by name.
    bscan_labels : (M,) bool array, optional
        True for anomalous B-scans.
    pixel : tuple (residual, mask, valid), optional
        Arguments of :func:`pixel_auroc`; ``valid`` may be None.
    patch_groups, bscan_groups : (N,) and (M,) arrays, optional
        Input volume (eye) of each patch and B-scan. When given, AUCs get 95 % intervals
        from :func:`bootstrap_aucs` (resampling whole inputs, compared with AnoGAN's
        ``anomaly_score``).
    n_resamples, seed : int
        Bootstrap resamples and their seed.

    Returns
    -------
    dict
        ``{name: {"patch_auc", "bscan_auc", "youden": {threshold, sensitivity,
        specificity, precision, recall}, "bscan_youden", "orientation", "n_patches",
        "n_patches_positive", "n_bscans", "n_bscans_positive"}, ..., "pixel_auroc"}``.
        Levels not given are None. ``youden`` is at patch level when patch scores are given
        (the paper's Table 1), else at B-scan level. ``orientation`` is ``"1 - score"`` for
        scores where high means normal, else ``"score"``. With groups, each entry also
        holds ``patch_auc_ci`` / ``bscan_auc_ci`` ([low, high]) and, except for
        ``anomaly_score``, ``patch_auc_minus_anogan_ci`` / ``bscan_auc_minus_anogan_ci``
        (an interval excluding 0 tells the score apart from AnoGAN's), and
        ``metrics["bootstrap"]`` records how the intervals were drawn.

    Raises
    ------
    AnoganError
        If a level's labels hold a single class or lengths do not match.
    """
    patch_scores = dict(patch_scores or {})
    bscan_scores = dict(bscan_scores or {})
    if patch_scores and patch_labels is None:
        raise AnoganError("patch scores given without patch labels")
    if bscan_scores and bscan_labels is None:
        raise AnoganError("B-scan scores given without B-scan labels")
    if not patch_scores and not bscan_scores and pixel is None:
        raise AnoganError("nothing to evaluate: no patch scores, B-scan scores or pixel maps")
    metrics: dict[str, Any] = {}
    for name in [*patch_scores, *(n for n in bscan_scores if n not in patch_scores)]:
        entry: dict[str, Any] = {
            "patch_auc": None,
            "bscan_auc": None,
            "youden": None,
            "bscan_youden": None,
            "orientation": "1 - score" if name in HIGHER_IS_NORMAL else "score",
            "n_patches": 0,
            "n_patches_positive": 0,
            "n_bscans": 0,
            "n_bscans_positive": 0,
        }
        if name in patch_scores:
            lab, val = _finite_pairs(name, "patch", patch_labels, patch_scores[name])
            val = orient_scores(name, val)
            entry["patch_auc"] = roc(lab, val)["auc"]
            entry["youden"] = youden_point(lab, val)
            entry["n_patches"] = int(lab.size)
            entry["n_patches_positive"] = int(lab.sum())
        if name in bscan_scores:
            lab, val = _finite_pairs(name, "B-scan", bscan_labels, bscan_scores[name])
            val = orient_scores(name, val)
            entry["bscan_auc"] = roc(lab, val)["auc"]
            entry["bscan_youden"] = youden_point(lab, val)
            entry["n_bscans"] = int(lab.size)
            entry["n_bscans_positive"] = int(lab.sum())
            if entry["youden"] is None:
                entry["youden"] = entry["bscan_youden"]
        metrics[name] = entry
    levels = {
        "patch": (patch_scores, patch_labels, patch_groups),
        "bscan": (bscan_scores, bscan_labels, bscan_groups),
    }
    for level, (level_scores, level_labels, level_groups) in levels.items():
        if level_groups is None or not level_scores:
            continue
        intervals = bootstrap_aucs(
            level_labels, level_scores, level_groups, n_resamples=n_resamples, seed=seed
        )
        for name, ci in intervals.items():
            metrics[name][f"{level}_auc_ci"] = ci["auc_ci"]
            if "auc_minus_reference_ci" in ci:
                metrics[name][f"{level}_auc_minus_anogan_ci"] = ci["auc_minus_reference_ci"]
        metrics.setdefault(
            "bootstrap",
            {
                "unit": "input volume",
                "stratified": "inputs with and without a positive item",
                "n_groups": int(np.unique(level_groups).size),
                "n_resamples": n_resamples,
                "level": 0.95,
                "seed": seed,
                "interval": "percentile",
            },
        )
    metrics["pixel_auroc"] = None if pixel is None else pixel_auroc(*pixel)
    return metrics


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


# --------------------------------------------------------------------------- Table 1


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
    feature distance ``feature_distance`` of models with a feature bank). A score missing
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


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int) -> None:
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_rocs(
    curves: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    title: str | None = None,
    *,
    dpi: int = 150,
) -> None:
    """Plot ROC curves with their AUC in the legend (the paper's Fig. 4a,b).

    Parameters
    ----------
    curves : dict of str to roc dict
        :func:`roc` results by score name (:func:`roc_curves`). Known score names get the
        paper's legend name and colour (4a: aCAE blue, GAN_R red, AnoGAN black, P_D green;
        4b: R green, D black, D̂ red); other keys are used as given.
    path : str or PathLike
        Image file to write (format from the suffix, e.g. ``.png``, ``.pdf``).
    title : str, optional
        Axes title.
    dpi : int, optional
        Resolution of raster formats.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="0.75", linestyle="--", linewidth=0.8)
    for i, (name, curve) in enumerate(curves.items()):
        ax.plot(
            curve["fpr"],
            curve["tpr"],
            color=CURVE_COLORS.get(name, f"C{i}"),
            linewidth=1.6,
            label=f"{DISPLAY_NAMES.get(name, name)} ({float(curve['auc']):.2f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(loc="lower right", title="AUC in parentheses", fontsize=8, title_fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path, dpi)


def plot_score_distributions(
    scores_by_group: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    score_label: str,
    *,
    bins: int = 50,
    dpi: int = 150,
) -> None:
    """Plot score histograms per group (the paper's Fig. 4c,d).

    Parameters
    ----------
    scores_by_group : dict of str to (N,) array
        Scores per group, e.g. ``"training healthy"`` (blue), ``"test healthy"`` (green),
        ``"diseased"`` (red); other group names get the default colour cycle. Non-finite
        values are left out.
    path : str or PathLike
        Image file to write.
    score_label : str
        X-axis label, e.g. ``"residual score"``.
    bins : int, optional
        Number of bins, shared by all groups.
    dpi : int, optional
        Resolution of raster formats.
    """
    plt = _pyplot()
    groups = {}
    for name, values in scores_by_group.items():
        values = np.asarray(values, dtype=np.float64).ravel()
        groups[name] = values[np.isfinite(values)]
    everything = np.concatenate([v for v in groups.values()] or [np.zeros(0)])
    if everything.size:
        lo, hi = float(everything.min()), float(everything.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
    else:
        edges = np.linspace(0.0, 1.0, bins + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for i, (name, values) in enumerate(groups.items()):
        if values.size == 0:
            continue
        color = GROUP_COLORS.get(name, f"C{i}")
        ax.hist(values, bins=edges, density=True, alpha=0.35, color=color)
        ax.hist(
            values,
            bins=edges,
            density=True,
            histtype="step",
            linewidth=1.4,
            color=color,
            label=f"{name} (n={values.size})",
        )
    ax.set_xlabel(score_label)
    ax.set_ylabel("density")
    if any(v.size for v in groups.values()):
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path, dpi)

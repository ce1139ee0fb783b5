"""Evaluation metrics: ROC/AUC, Youden operating point, pixel AUROC, bootstrap intervals.

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

Over 500 lines on purpose: ROC, Youden points, pixel AUROC and the bootstrap share the score
orientation and label checks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from napari_anogan.errors import AnoganError
from napari_anogan.scoring.scores import HIGHER_IS_NORMAL, PATCH_SCORE_NAMES

logger = logging.getLogger(__name__)

SCORE_NAMES = (*PATCH_SCORE_NAMES, "acae")
"""Score names known to the evaluation (the patch scores plus the aCAE)."""


DEFAULT_MAX_PIXELS = 2_000_000


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


def _level_metrics(name: str, level: str, labels, scores) -> tuple:
    """AUC, Youden point, count and positives of one score at one level (patch, B-scan)."""
    lab, val = _finite_pairs(name, level, labels, scores)
    val = orient_scores(name, val)
    return roc(lab, val)["auc"], youden_point(lab, val), int(lab.size), int(lab.sum())


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
            (
                entry["patch_auc"],
                entry["youden"],
                entry["n_patches"],
                entry["n_patches_positive"],
            ) = _level_metrics(name, "patch", patch_labels, patch_scores[name])
        if name in bscan_scores:
            (
                entry["bscan_auc"],
                entry["bscan_youden"],
                entry["n_bscans"],
                entry["n_bscans_positive"],
            ) = _level_metrics(name, "B-scan", bscan_labels, bscan_scores[name])
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


# --------------------------------------------------------------------------- Table 1


# --------------------------------------------------------------------------- plots

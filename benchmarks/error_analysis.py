"""Where a score's patch-level errors lie, from an ``evaluate`` run's ``patch_scores.csv``.

Prints ONE JSON object for one score column (default ``anomaly_score``):

- ``patch_auc``: over all patches (the paper's rule: positive if any lesion pixel);
- ``by_lesion``: AUC of the positives whose dominant lesion is each type against all
  negatives;
- ``sliver`` / ``larger``: positives with under / at least ``--sliver`` lesion fraction;
- ``within_diseased_eyes``: positives against the negatives of the same (diseased) eyes;
  ``against_healthy_eyes``: positives against the healthy eyes' patches;
- ``diseased_eye_negatives_next_to_a_lesion``: the share of the diseased eyes' negatives
  that lie next to a positive patch of the same B-scan (their centres at most half a patch
  apart in width), among all of them and among their top 5 % scores;
- ``central``: macula-centred scans have the fovea near the middle, so for the patches of
  the healthy eyes whose centre lies in the middle 30 % of B-scans and 37.5 % of the
  flattened width: their share of those patches, of the healthy eyes' top 5 % scores, and
  the patch AUC without the central negatives.

    .venv/bin/python benchmarks/error_analysis.py results/t10/patch_scores.csv
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from napari_anogan.datasets.synthetic import LESION_LABELS
from napari_anogan.evaluation.metrics import roc

HEALTHY_GROUP = "test healthy"


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """AUC, or None where one class is missing."""
    if labels.all() or not labels.any():
        return None
    return round(roc(labels, scores)["auc"], 4)


def analyse(path: Path, score: str, sliver: float, patch_size: int = 64) -> dict:
    """Error analysis of one score column of a ``patch_scores.csv`` (see module docstring)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or score not in rows[0]:
        raise SystemExit(f"{path}: no rows, or no column {score!r}")
    s = np.array([float(r[score]) for r in rows])
    y = np.array([r["label"] == "1" for r in rows])
    frac = np.array([float(r["lesion_fraction"]) for r in rows])
    lesion = np.array([int(r["lesion_label"]) for r in rows])
    healthy = np.array([r["group"] == HEALTHY_GROUP for r in rows])
    eye = np.array([r["input"] for r in rows])
    sl = np.array([int(r["slice"]) for r in rows])
    col = np.array([int(r["flat_col"]) for r in rows]) + patch_size / 2
    neg = ~y

    central = np.zeros(len(rows), bool)
    for name in np.unique(eye):
        m = eye == name
        n_sl, width = sl[m].max() + 1, col[m].max() + patch_size / 2
        central[m] = (np.abs(sl[m] - (n_sl - 1) / 2) <= 0.15 * n_sl) & (
            np.abs(col[m] - width / 2) <= 0.1875 * width
        )
    hn = neg & healthy
    dn = neg & ~healthy
    # negatives of a diseased eye within one patch (32 px of the flat band) of a
    # positive patch of the same B-scan: where a lesion deforms the retina beyond its mask
    near = np.zeros(len(rows), bool)
    for i in np.flatnonzero(dn):
        same = y & (eye == eye[i]) & (sl == sl[i])
        near[i] = bool(same.any() and np.abs(col[same] - col[i]).min() <= patch_size / 2)
    dtop = dn & (s >= np.percentile(s[dn], 95))
    top = hn & (s >= np.percentile(s[hn], 95))
    keep = ~(central & neg)

    def subset(pos: np.ndarray, negs: np.ndarray = neg) -> float | None:
        m = pos | negs
        return _auc(y[m], s[m])

    return {
        "file": str(path),
        "score": score,
        "n_patches": len(rows),
        "n_positive": int(y.sum()),
        "patch_auc": _auc(y, s),
        "by_lesion": {
            name: {"n": int((y & (lesion == k)).sum()), "auc": subset(y & (lesion == k))}
            for name, k in LESION_LABELS.items()
        },
        "sliver": {
            "max_fraction": sliver,
            "n": int((y & (frac < sliver)).sum()),
            "auc": subset(y & (frac < sliver)),
        },
        "larger": {"n": int((y & (frac >= sliver)).sum()), "auc": subset(y & (frac >= sliver))},
        "within_diseased_eyes": subset(y, dn),
        "diseased_eye_negatives_next_to_a_lesion": {
            "share": round(float(near[dn].mean()), 4),
            "share_of_top5pct": round(float(near[dtop].mean()), 4),
        },
        "against_healthy_eyes": subset(y, hn),
        "central": {
            "share_of_healthy_eye_patches": round(float(central[hn].mean()), 4),
            "share_of_top5pct_healthy_eye_scores": round(float(central[top].mean()), 4),
            "median_score_central_vs_other": [
                round(float(np.median(s[hn & central])), 1),
                round(float(np.median(s[hn & ~central])), 1),
            ],
            "patch_auc_without_central_negatives": _auc(y[keep], s[keep]),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", type=Path, help="patch_scores.csv of napari-anogan evaluate")
    parser.add_argument("--score", default="anomaly_score")
    parser.add_argument("--sliver", type=float, default=0.02, help="lesion fraction")
    args = parser.parse_args()
    print(json.dumps(analyse(args.csv, args.score, args.sliver)))


if __name__ == "__main__":
    main()

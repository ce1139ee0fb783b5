"""Detection on real OCT: a healthy model judged on the OCTDL validation split.

Trains (``--train``) the default recipe on ``DATA/train/NO`` and/or evaluates a model on
``DATA/<split>``: every B-scan of the healthy class ``NO`` against every diseased class,
through ``napari-anogan evaluate``'s own path (:func:`run_evaluation`). From the
B-scan table it writes (``bscan_scores.csv``) it adds what OCTDL needs: the B-scan AUC of
each score for healthy against all diseased B-scans and against each class, with 95 %
intervals from a bootstrap that resamples patients (file names ``class_patient_n``).
Prints ONE JSON object and writes ``octdl_table.md`` beside evaluate's outputs.

    .venv/bin/python benchmarks/real_octdl.py --data ../shared/data/real-oct/octdl \\
        --train results/octdl/model.pt -o results/octdl/val
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

CLASSES = ("AMD", "DME", "ERM", "RVO", "VID", "RAO")
HEALTHY = "NO"
PATIENT = re.compile(r"^[^_]+_([^_]+)_")
MIN_CLASS = 10  # classes with fewer B-scans get no AUC of their own (val: RAO has 1)


#: Training stages, by the first words of the first progress message of each.
STAGES = (
    ("preprocess", "preprocessing"),
    ("gan", "epoch 1/"),
    ("encoder", "encoder epoch 1/"),
    ("feature_bank", "feature bank"),
)


def _drain(job, marks: dict[str, float] | None = None):
    """Run a progress generator; with ``marks``, note when each of :data:`STAGES` began."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            if marks is not None:
                marks["end"] = time.perf_counter()
            return stop.value
        if marks is not None:
            message = getattr(event, "message", "") or ""
            for stage, prefix in STAGES:
                if stage not in marks and message.startswith(prefix):
                    marks[stage] = time.perf_counter()


def _stage_seconds(marks: dict[str, float]) -> dict[str, float]:
    names = [n for n, _ in STAGES if n in marks] + ["end"]
    return {f"{a}_s": round(marks[b] - marks[a], 1) for a, b in itertools.pairwise(names)}


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.glob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".tif"}
    )


def bscan_table(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Columns of evaluate's ``bscan_scores.csv`` and the names of its score columns."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    fixed = ("input", "group", "slice", "label")
    names = [c for c in rows[0] if c not in fixed]
    table = {c: np.array([r[c] for r in rows]) for c in fixed}
    for c in names:
        table[c] = np.array([float(r[c]) if r[c] not in ("", "nan") else np.nan for r in rows])
    return table, names


def class_aucs(
    scores: np.ndarray,
    classes: np.ndarray,
    patients: np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, dict]:
    """B-scan AUC of healthy against all diseased and against each class, with intervals.

    The bootstrap draws patients with replacement within the healthy and within the
    diseased patients (stratified), so B-scans of one patient stay together.
    """
    rng = np.random.default_rng(seed)
    out = {}
    groups = {"all": classes != HEALTHY}
    for c in CLASSES:
        if np.sum(classes == c) >= MIN_CLASS:
            groups[c] = classes == c
    for name, positive in groups.items():
        keep = positive | (classes == HEALTHY)
        y, s, pat = positive[keep], scores[keep], patients[keep]
        auc = roc_auc_score(y, s)
        strata = [np.unique(pat[y]), np.unique(pat[~y])]
        index = {p: np.flatnonzero(pat == p) for p in np.unique(pat)}
        boot = []
        for _ in range(n_boot):
            pick = np.concatenate([index[p] for st in strata for p in rng.choice(st, size=len(st))])
            boot.append(roc_auc_score(y[pick], s[pick]))
        lo, hi = np.percentile(boot, [2.5, 97.5])
        out[name] = {
            "auc": round(float(auc), 3),
            "ci": [round(float(lo), 3), round(float(hi), 3)],
            "n": [int(y.sum()), int((~y).sum())],
        }
    return out


def errors(scores: np.ndarray, classes: np.ndarray, stems: list[str], n: int = 5) -> dict:
    """Where a score errs: the highest-scoring healthy B-scans, and per diseased class the
    B-scans scored below the healthy 90th percentile (missed at 10 % false alarms)."""
    healthy = classes == HEALTHY
    order = np.argsort(-scores)
    top = [(stems[i], round(float(scores[i]), 4)) for i in order if healthy[i]][:n]
    cut = float(np.percentile(scores[healthy], 90))
    missed = {
        c: sorted(stems[i] for i in np.flatnonzero((classes == c) & (scores < cut)))
        for c in CLASSES
        if np.any(classes == c)
    }
    share = {c: round(len(v) / int(np.sum(classes == c)), 3) for c, v in missed.items()}
    return {
        "top_healthy": top,
        "healthy_p90": round(cut, 4),
        "missed": missed,
        "missed_share": share,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="OCTDL folder with train/ and val/")
    parser.add_argument("--split", default="val")
    parser.add_argument("-m", "--model", help="model to evaluate (default: the --train one)")
    parser.add_argument("--train", help="train the default recipe on DATA/train/NO to this file")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--acae-epochs", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # every diseased B-scan counts as anomalous (no masks): evaluate would say so for each
    logging.getLogger("napari_anogan.evaluation.experiment").setLevel(logging.ERROR)

    from napari_anogan.evaluation.experiment import run_evaluation
    from napari_anogan.pipeline import ScoreSettings, train_from_paths

    data = Path(args.data)
    timings = {}
    model = args.model or args.train
    if args.train:
        t0 = time.perf_counter()
        marks: dict[str, float] = {}
        _drain(train_from_paths(_images(data / "train" / HEALTHY), args.train), marks)
        timings["train_s"] = round(time.perf_counter() - t0, 1)
        timings["train_stages"] = _stage_seconds(marks)
    split = data / args.split
    normal = _images(split / HEALTHY)
    anomalous = [p for c in CLASSES for p in _images(split / c)]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {} if args.acae_epochs is None else {"acae_epochs": args.acae_epochs}
    t0 = time.perf_counter()
    _drain(
        run_evaluation(
            model,
            normal=normal,
            anomalous=anomalous,
            outdir=out,
            settings=ScoreSettings(),
            **kwargs,
        )
    )
    timings["evaluate_s"] = round(time.perf_counter() - t0, 1)
    table, names = bscan_table(out / "bscan_scores.csv")
    stems = [Path(p).stem for p in table["input"]]
    classes = np.array([s.split("_")[0].upper() for s in stems])
    patients = np.array([(PATIENT.match(s) or re.match(r"(.*)", s)).group(1) for s in stems])
    result = {"model": str(model), "split": args.split, "timings": timings, "scores": {}}
    for name in names:
        if np.isfinite(table[name]).all():
            result["scores"][name] = class_aucs(table[name], classes, patients)
    default = next(n for n in ("feature_distance", "anomaly_score") if n in result["scores"])
    result["errors"] = {default: errors(table[default], classes, stems)}
    groups = list(next(iter(result["scores"].values())))
    lines = ["| B-scan AUC (95 % CI) | " + " | ".join(groups) + " |"]
    lines.append("|---" * (len(groups) + 1) + "|")
    for name, row in result["scores"].items():
        cells = [f"{v['auc']:.3f} ({v['ci'][0]:.2f}-{v['ci'][1]:.2f})" for v in row.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (out / "octdl_table.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

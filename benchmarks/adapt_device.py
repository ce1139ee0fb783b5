"""Adapting a healthy model to another device with a few healthy scans.

The healthy scans (``--healthy``, file names ``CLASS-patient-n``) are split by patient
into two folds: the patient ids sorted as text, the first ``--train-patients`` patients
train (the few healthy scans a user has) and the others are held out, and the other way
round. Per fold, four models are compared on the held-out healthy scans against the
diseased scans (``--diseased``):

* ``as_is``: the base model (``--base``, another device) unchanged;
* ``scratch``: a model trained from scratch on ``train/`` (``napari-anogan train``);
* ``adapted``: the base model adapted on ``train/`` (``train --init BASE``);
* ``adapted_synthetic``: the synthetic demo model (``--synthetic``) adapted likewise.

Each model's B-scan AUC (healthy vs diseased, the volume score of each B-scan), a 95 %
interval from a bootstrap that resamples patients (file names ``CLASS-patient-n``), the
``model_fit`` verdicts of the held-out healthy scans and the training wall time. Every
scan goes through the one scoring path and is resampled to the model's pixel grid (256
columns whatever its width), so image width cannot tell the classes apart. Prints ONE
JSON object.

    K=../shared/data/real-oct
    .venv/bin/python benchmarks/adapt_device.py --base sample_data/anogan_octdl.pt \\
        --synthetic sample_data/anogan_small.pt --healthy $K/kermany2018*/NORMAL-* \\
        --diseased $(ls $K/kermany2018*/*.jpeg | grep -v NORMAL) -o results/adapt
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from napari_anogan.checkpoint import load_checkpoint
from napari_anogan.events import drain
from napari_anogan.io import read_volume
from napari_anogan.pipeline import ScoreSettings, score_volume, train_from_paths
from napari_anogan.scoring import percentile_of

PATIENT = re.compile(r"^[A-Za-z]+-(\d+)-")
BOOTSTRAP = 2000


def _patient(path: Path) -> str:
    match = PATIENT.match(path.name)
    return match.group(1) if match else path.stem


def _score(model, files: list[Path]) -> list[dict]:
    settings = ScoreSettings()
    rows = []
    for f in files:
        result = drain(score_volume(read_volume(f), model, settings))
        column = result.settings["score_column"]
        ref = model.reference or {}
        pct = (
            float(percentile_of(result.volume_score, ref[column], ref["levels"]))
            if ref.get(column) is not None
            else float("nan")
        )
        rows.append(
            {
                "file": f.name,
                "patient": _patient(f),
                "score": float(result.volume_score),
                "percentile": pct,
                "fit": result.model_fit["verdict"],
            }
        )
    return rows


def _auc(healthy: list[dict], diseased: list[dict], key: str, seed: int = 0) -> dict:
    rows = [(r, 0) for r in healthy] + [(r, 1) for r in diseased]
    y = np.array([label for _, label in rows])
    s = np.array([r[key] for r, _ in rows])
    patients = np.array([f"{label}:{r['patient']}" for r, label in rows])
    auc = float(roc_auc_score(y, s))
    rng = np.random.default_rng(seed)
    groups = {p: np.flatnonzero(patients == p) for p in np.unique(patients)}
    h = [p for p in groups if p.startswith("0:")]
    d = [p for p in groups if p.startswith("1:")]
    boots = []
    for _ in range(BOOTSTRAP):
        idx = np.concatenate(
            [groups[p] for p in rng.choice(h, len(h))] + [groups[p] for p in rng.choice(d, len(d))]
        )
        boots.append(roc_auc_score(y[idx], s[idx]))
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"auc": round(auc, 3), "ci95": [round(float(low), 3), round(float(high), 3)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--synthetic", type=Path, required=True)
    parser.add_argument("--healthy", type=Path, nargs="+", required=True)
    parser.add_argument("--diseased", type=Path, nargs="+", required=True)
    parser.add_argument("--train-patients", type=int, default=5)
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument(
        "--configs", nargs="+", default=["as_is", "scratch", "adapted", "adapted_synthetic"]
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    diseased = sorted(args.diseased)
    patients = sorted({_patient(p) for p in args.healthy})
    first = set(patients[: args.train_patients])
    folds = {
        "A": [p for p in args.healthy if _patient(p) in first],
        "B": [p for p in args.healthy if _patient(p) not in first],
    }
    report: dict = {"diseased_scans": len(diseased), "folds": {}}
    pooled: dict[str, dict[str, list]] = {}
    for name, train in folds.items():
        train = sorted(train)
        healthy = sorted(p for p in args.healthy if p not in train)
        entry: dict = {
            "train": [p.name for p in train],
            "test_healthy": [p.name for p in healthy],
        }
        for config in args.configs:
            t0 = time.perf_counter()
            if config == "as_is":
                path = args.base
            else:
                path = args.out / f"fold{name}_{config}.pt"
                init = {"scratch": None, "adapted": args.base, "adapted_synthetic": args.synthetic}
                drain(train_from_paths(train, path, init=init[config]))
            train_s = time.perf_counter() - t0
            model = load_checkpoint(path)
            h, d = _score(model, healthy), _score(model, diseased)
            entry[config] = {
                "train_seconds": round(train_s, 1),
                "epochs": model.training.get("epochs_done"),
                "bscan": _auc(h, d, "score"),
                "healthy_fits": sum(r["fit"] == "fits" for r in h),
                "diseased_fits": sum(r["fit"] == "fits" for r in d),
                "healthy": h,
            }
            pool = pooled.setdefault(config, {"h": [], "d": []})
            pool["h"] += [{**r, "patient": f"{name}/{r['patient']}"} for r in h]
            pool["d"] += [{**r, "patient": f"{name}/{r['patient']}"} for r in d]
        report["folds"][name] = entry
    report["pooled_percentile_auc"] = {
        c: _auc(p["h"], p["d"], "percentile") for c, p in pooled.items()
    }
    text = json.dumps(report, indent=1)
    (args.out / "adapt_device.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

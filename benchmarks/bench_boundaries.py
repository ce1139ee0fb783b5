"""Accuracy of the retina boundaries on synthetic volumes with known ILM and BM.

Prints ONE JSON object: per case (healthy, diseased, vitreous membrane, low signal) the
mean absolute error (raw pixels) of the ILM and of Bruch's membrane found by
``preprocess_volume`` against the generator's ground truth, with the 95th percentile and
the worst column, and whether the targets (<= 2 px healthy, <= 4 px diseased) are met.

    .venv/bin/python benchmarks/bench_boundaries.py [--slices 13] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from napari_anogan.datasets.synthetic import make_volume
from napari_anogan.io.volume import Volume
from napari_anogan.preprocess import preprocess_volume

CASES = {
    "healthy": ({}, 2.0),
    "diseased": ({"lesions": ["irf", "srf", "ped", "hrf", "drusen"]}, 4.0),
    "vitreous_membrane": ({"vitreous_membrane": True}, 2.0),
    "low_signal": ({"signal": 0.5}, 2.0),
    "diseased_low_signal": ({"lesions": ["irf", "srf", "ped", "drusen"], "signal": 0.5}, 4.0),
}


def _errors(found: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    err = np.abs(found.astype(np.float64) - truth.astype(np.float64))
    return {
        "mae": round(float(err.mean()), 3),
        "p95": round(float(np.percentile(err, 95)), 3),
        "max": round(float(err.max()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=13)
    parser.add_argument("--height", type=int, default=496)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    result: dict = {
        "shape": [args.slices, args.height, args.width],
        "seeds": list(range(args.seeds)),
        "cases": {},
    }
    start = time.perf_counter()
    all_ok = True
    for name, (kwargs, target) in CASES.items():
        ilm_f, ilm_t, bm_f, bm_t = [], [], [], []
        for seed in range(args.seeds):
            syn = make_volume(args.slices, args.height, args.width, seed=seed, **kwargs)
            pre = preprocess_volume(Volume(syn.data, spacing=syn.spacing, name=name))
            ilm_f.append(pre.ilm)
            ilm_t.append(syn.ilm)
            bm_f.append(pre.bm)
            bm_t.append(syn.bm)
        ilm = _errors(np.concatenate(ilm_f), np.concatenate(ilm_t))
        bm = _errors(np.concatenate(bm_f), np.concatenate(bm_t))
        ok = ilm["mae"] <= target and bm["mae"] <= target
        all_ok &= ok
        result["cases"][name] = {"target_mae_px": target, "ilm": ilm, "bm": bm, "ok": ok}
    result["all_targets_met"] = bool(all_ok)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

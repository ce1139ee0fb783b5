"""Which B-scans the retina check keeps: real and synthetic scans, masks, blank images.

Preprocessing refuses a scan where the boundary search finds no retina
(``settings.RETINA_MIN_COLUMNS`` of the columns must show a grey band at least
``settings.RETINA_MIN_CONTRAST`` brighter than the vitreous above it). This measures, per
group, the fraction of columns with retina of every B-scan (lowest, 5th percentile,
median) and how many B-scans the rule keeps: every real and synthetic scan should be
kept, every mask, blank and noise image refused. Prints ONE JSON object.

    .venv/bin/python benchmarks/bench_retina_check.py [--real ../shared/data/real-oct]
        [--max-per-group 0]

Real scans are read from the folder of ``--real`` (skipped when absent): OCTDL
(``octdl/*/*/*.jpg``), Kermany (``kermany2018*/*.jpeg``), the wide-field OCTDL AMD scans
and their drusen masks (``octdl-amd/``).
"""

from __future__ import annotations

import argparse
import glob
import json
import time
import warnings
from pathlib import Path

import numpy as np

from napari_anogan import settings
from napari_anogan.datasets.synthetic import make_volume
from napari_anogan.io import Volume, read_volume
from napari_anogan.preprocess import PreprocessConfig
from napari_anogan.preprocess.boundaries import detect_boundaries_chunked
from napari_anogan.preprocess.normalise import (
    apply_intensity_range,
    intensity_range_chunked,
    resample_width,
    resampled_width,
)


def evidence_of(volume: Volume) -> np.ndarray:
    """Fraction of the columns with retina of every B-scan, as preprocessing measures it."""
    config = PreprocessConfig()
    data = np.asarray(volume.data)
    rng = intensity_range_chunked(
        lambda: iter([data]), config.low_percentile, config.high_percentile
    )
    spacing = volume.spacing or (None, None, None)
    width = resampled_width(
        data.shape[2], spacing[2], config.column_spacing_um, config.target_width
    )
    x = resample_width(apply_intensity_range(data, rng), width)
    spacing_z = spacing[1]
    evidence = np.zeros(len(x))
    detect_boundaries_chunked(
        lambda a, b: x[a:b],
        x.shape,
        evidence=evidence,
        **config.detection_params(spacing_z),
    )
    return evidence


def _groups(real: Path, limit: int) -> dict[str, list]:
    rng = np.random.default_rng(0)
    groups: dict[str, list] = {"synthetic": [], "synthetic masks": [], "blank and noise": []}
    for seed in range(8):
        lesions = [[], ["irf", "srf"], ["ped"], ["drusen", "hrf"]][seed % 4]
        syn = make_volume(3, 200 + 48 * (seed % 3), 256, lesions=lesions, seed=seed)
        groups["synthetic"].append((f"seed {seed}", Volume(syn.data, spacing=syn.spacing)))
        if syn.mask.any():
            groups["synthetic masks"].append((f"mask {seed}", Volume(syn.mask)))
    noise = {
        "black + noise": (rng.random((2, 496, 512)) * 3).astype(np.uint8),
        "uniform noise": rng.integers(0, 256, (2, 496, 512)).astype(np.uint8),
        "gaussian noise": rng.normal(100, 20, (2, 300, 300)).astype(np.float32),
        "binary blob": np.pad(np.ones((1, 20, 200), np.uint8), ((0, 0), (200, 276), (100, 212))),
    }
    groups["blank and noise"] = [(k, Volume(v)) for k, v in noise.items()]
    patterns = {
        "OCTDL": "octdl/*/*/*.jpg",
        "Kermany": "kermany2018*/*.jpeg",
        "OCTDL AMD wide field": "octdl-amd/AMD_[0-9][0-9][0-9][0-9].png",
        "OCTDL AMD drusen masks": "octdl-amd/*-mask.png",
    }
    for name, pattern in patterns.items():
        files = sorted(glob.glob(str(real / pattern)))
        if limit:
            files = files[:limit]
        groups[name] = [(f, f) for f in files]
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--real", default="../shared/data/real-oct")
    parser.add_argument("--max-per-group", type=int, default=0, help="0: every file")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    report: dict = {
        "rule": {
            "min_contrast": settings.RETINA_MIN_CONTRAST,
            "min_columns": settings.RETINA_MIN_COLUMNS,
        },
        "groups": {},
    }
    for group, items in _groups(Path(args.real), args.max_per_group).items():
        values, lowest = [], None
        for label, item in items:
            volume = read_volume(item) if isinstance(item, str) else item
            ev = evidence_of(volume)
            values.extend(ev.tolist())
            if lowest is None or ev.min() < lowest[1]:
                lowest = (Path(label).name, float(ev.min()))
        if not values:
            continue
        v = np.array(values)
        report["groups"][group] = {
            "bscans": len(v),
            "kept": int(np.sum(v >= settings.RETINA_MIN_COLUMNS)),
            "min": round(float(v.min()), 3),
            "p5": round(float(np.percentile(v, 5)), 3),
            "median": round(float(np.median(v)), 3),
            "max": round(float(v.max()), 3),
            "lowest": lowest[0],
        }
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

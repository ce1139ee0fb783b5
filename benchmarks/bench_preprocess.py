"""Wall time of preprocessing one Spectralis-sized volume (49 x 496 x 512).

Prints ONE JSON object: seconds for the whole ``preprocess_volume`` (best of ``--repeat``
runs), for its stages run separately, and for cutting patches (random for training, grid
for scoring), with the machine's CPU count.

    .venv/bin/python benchmarks/bench_preprocess.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from napari_anogan.datasets.synthetic import make_volume
from napari_anogan.io.volume import Volume
from napari_anogan.preprocess import (
    PreprocessConfig,
    detect_boundaries,
    grid_patches,
    normalise_intensity,
    preprocess_volume,
    random_patches,
    resample_width,
)


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(49, 496, 512))
    args = parser.parse_args()
    s, h, w = args.shape
    syn = make_volume(s, h, w, lesions=["irf", "srf", "ped", "drusen"], seed=0)
    vol = Volume(syn.data, spacing=syn.spacing, name="bench")
    cfg = PreprocessConfig()

    total, pre = _best(lambda: preprocess_volume(vol, cfg), args.repeat)
    t_norm, (norm, _) = _best(lambda: normalise_intensity(vol.data), args.repeat)
    wr = pre.geometry.resampled_width
    t_res, resampled = _best(lambda: resample_width(norm, wr), args.repeat)
    params = cfg.detection_params(vol.spacing[1])
    t_bnd, _ = _best(lambda: detect_boundaries(resampled, **params), 1)
    t_rand, rand = _best(lambda: random_patches(pre, 100, seed=0), args.repeat)
    t_grid, grid = _best(lambda: grid_patches(pre, stride=32), args.repeat)
    print(
        json.dumps(
            {
                "shape": [s, h, w],
                "band_shape": list(pre.flat.shape),
                "cpus": os.cpu_count(),
                "machine": platform.processor() or platform.machine(),
                "preprocess_volume_s": round(total, 2),
                "per_bscan_ms": round(1000 * total / s, 1),
                "stages_s": {
                    "normalise": round(t_norm, 2),
                    "resample_width": round(t_res, 2),
                    "detect_boundaries": round(t_bnd, 2),
                },
                "random_patches_100_per_bscan_s": round(t_rand, 3),
                "random_patches_n": len(rand),
                "grid_patches_stride32_s": round(t_grid, 3),
                "grid_patches_n": len(grid),
                "flat_mb": round(pre.flat.nbytes / 2**20, 1),
                "ilm_mae_px": round(float(np.abs(pre.ilm - syn.ilm).mean()), 3),
                "bm_mae_px": round(float(np.abs(pre.bm - syn.bm).mean()), 3),
            }
        )
    )


if __name__ == "__main__":
    main()

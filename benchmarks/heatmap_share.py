"""How much of the retina the thresholded heatmap colours, healthy against diseased scans.

Scores every scan with one model (the one scoring path), thresholds its residual as napari
and the overview do (:func:`~napari_anogan.scoring.display.heatmap_threshold`) and reports,
per group, the share of retina pixels (ILM to BM) left coloured. A readable heatmap leaves
healthy retina nearly clear and colours more of a diseased one. Prints ONE JSON object.

    .venv/bin/python benchmarks/heatmap_share.py -m sample_data/anogan_octdl.pt \\
        --group healthy ../shared/data/real-oct/octdl/val/NO/* \\
        --group diseased $(ls -d ../shared/data/real-oct/octdl/val/*/* | grep -v /NO/)
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from napari_anogan.checkpoint import load_checkpoint
from napari_anogan.events import drain
from napari_anogan.io import read_volume
from napari_anogan.pipeline import ScoreSettings, score_volume
from napari_anogan.scoring.display import heatmap_threshold


def coloured_share(path: Path, model) -> float:
    """Share of the scan's retina pixels above its heatmap threshold."""
    result = drain(score_volume(read_volume(path), model, ScoreSettings()))
    residual = np.asarray(result.residual, np.float32)
    rows = np.arange(residual.shape[1])[None, :, None]
    retina = (rows >= np.floor(result.ilm)[:, None, :]) & (rows <= np.ceil(result.bm)[:, None, :])
    return float(np.mean(residual[retina] > heatmap_threshold(result).value))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--model", type=Path, required=True)
    parser.add_argument("--group", nargs="+", action="append", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")  # colour JPEGs converted to grey: known
    model = load_checkpoint(args.model)
    report = {"model": str(args.model), "groups": {}}
    for name, *files in args.group:
        shares = np.array([coloured_share(Path(f), model) for f in files])
        report["groups"][name] = {
            "n": len(shares),
            "coloured_share_quantiles_5_25_50_75_95": np.percentile(shares, [5, 25, 50, 75, 95])
            .round(4)
            .tolist(),
            "mean": round(float(shares.mean()), 4),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

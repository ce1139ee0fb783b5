"""Model fit: where scans' patches sit against a model's healthy reference.

Scores every scan of each group with one model (the one scoring path,
:func:`~napari_anogan.pipeline.score_volume`) and reports, per scan, the median healthy
percentile of its patches and the share above the reference's 99th percentile, the
``model_fit`` verdict, and per group how often each verdict was given. This is the data
on which :data:`~napari_anogan.settings.FIT_MEDIAN_PERCENTILE` was chosen. Each file is
one scan (a B-scan image or a volume). Prints ONE JSON object.

    .venv/bin/python benchmarks/model_fit.py -m sample_data/anogan_small.pt \\
        --group real ../shared/data/real-oct/kermany2018/*.jpeg -o fit_real.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np

from napari_anogan.checkpoint import load_checkpoint
from napari_anogan.events import drain
from napari_anogan.io import read_volume
from napari_anogan.pipeline import ScoreSettings, score_volume

logger = logging.getLogger("model_fit")

#: Quantiles of a scan's patch percentiles reported per scan (the rule's candidates).
LEVELS = (5, 10, 25, 50)


def scan_fit(path: Path, model, settings: ScoreSettings) -> dict:
    """Score one scan; return its fit statistics (or its error)."""
    try:
        result = drain(score_volume(read_volume(path), model, settings))
    except Exception as exc:  # a scan the tool refuses is reported, not fatal
        return {"file": str(path), "error": f"{type(exc).__name__}: {exc}"}
    percentiles = result.patches["healthy_percentile"]
    fit = result.model_fit
    levels = np.nanpercentile(percentiles, LEVELS).round(2).tolist() if fit["n_patches"] else []
    return {
        "file": str(path),
        **{k: v for k, v in fit.items() if k != "rule"},
        "percentile_quantiles": dict(zip(map(str, LEVELS), levels, strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--model", type=Path, required=True)
    parser.add_argument(
        "--group",
        nargs="+",
        action="append",
        metavar=("NAME", "FILE"),
        required=True,
        help="a group name and its scans (repeat for several groups)",
    )
    parser.add_argument("-o", "--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")  # colour JPEGs converted to grey etc.: known, not news
    model = load_checkpoint(args.model)
    settings = ScoreSettings()
    report: dict = {"model": str(args.model), "groups": {}}
    for name, *files in args.group:
        t0 = time.perf_counter()
        scans = [scan_fit(Path(f), model, settings) for f in files]
        ok = [s for s in scans if "verdict" in s]
        medians = np.array([s["median_excess"] for s in ok], dtype=float)
        report["groups"][name] = {
            "n": len(scans),
            "errors": len(scans) - len(ok),
            "does_not_fit": sum(s["verdict"] == "does_not_fit" for s in ok),
            "median_excess_quantiles": (
                np.percentile(medians, [0, 5, 25, 50, 75, 95, 100]).round(2).tolist()
                if len(ok)
                else []
            ),
            "seconds": round(time.perf_counter() - t0, 1),
            "scans": scans,
        }
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

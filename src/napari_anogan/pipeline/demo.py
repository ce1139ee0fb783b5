"""The demo: score the bundled sample with the bundled model and summarise the result."""

from __future__ import annotations

import logging
from collections.abc import Generator
from pathlib import Path

import numpy as np

from napari_anogan.events import ProgressEvent
from napari_anogan.io import read_volume
from napari_anogan.pipeline.score import ScoreSettings, score_volume

logger = logging.getLogger(__name__)


DEMO_SETTINGS = ScoreSettings()
"""The demo's settings: the scoring defaults, i.e. the hybrid mapping (encoder start, then
10 steps of the paper's loss) instead of the paper's 500 iterative steps."""


def _mode_text(settings: ScoreSettings) -> str:
    if settings.mode == "iterative":
        return f"iterative mapping, {settings.steps} steps"
    if settings.mode == "hybrid":
        return f"hybrid mapping: encoder start + {settings.hybrid_steps} steps"
    return "encoder mapping: one pass"


def run_demo(
    outdir: str | Path, settings: ScoreSettings | None = None, *, real: bool = False
) -> Generator[ProgressEvent, None, str]:
    """Score the bundled sample volume with the bundled model and summarise the result.

    Writes the ``score`` outputs to ``outdir`` and returns a short text report that also
    says which candidates overlap the sample's planted lesions (its mask is known). With
    ``real``: the bundled real B-scan (OCTDL, DME) with the bundled real model instead.
    """
    from napari_anogan.resources import BUNDLED_MODEL, SAMPLE_MASK, SAMPLE_VOLUME, sample_path

    settings = settings or DEMO_SETTINGS
    if real:
        return (yield from _run_real_demo(outdir, settings))
    volume = read_volume(sample_path(SAMPLE_VOLUME))
    mask = read_volume(sample_path(SAMPLE_MASK)).data
    result = yield from score_volume(volume, sample_path(BUNDLED_MODEL), settings, outdir=outdir)
    paths = result.outputs
    lines = [
        f"napari-anogan demo: bundled sample {volume.name} {volume.shape} scored with the "
        f"bundled small model ({_mode_text(settings)}; the paper maps with 500 steps "
        "from a random start).",
        f"volume score {result.volume_score:.4g}; {len(result.patches['slice'])} patches; "
        f"{len(result.candidates)} candidate regions above the "
        f"{settings.percentile_threshold:g}th healthy percentile.",
    ]
    for cand in result.candidates[:5]:
        region = mask[
            cand["slice_start"] : cand["slice_end"] + 1,
            cand["row"] : cand["row"] + cand["height"],
            cand["col"] : cand["col"] + cand["width"],
        ]
        hit = np.unique(region[region > 0])
        lines.append(
            f"  #{cand['rank']}: slices {cand['slice_start']}-{cand['slice_end']}, "
            f"rows {cand['row']}-{cand['row'] + cand['height']}, cols {cand['col']}-"
            f"{cand['col'] + cand['width']}, max score {cand['max_score']:.4g}, "
            f"planted lesion labels inside: {hit.tolist() or 'none'}"
        )
    lines.append(_fit_line(result, BUNDLED_MODEL, volume.name))
    lines.append("outputs: " + ", ".join(str(p) for p in paths.values()))
    return "\n".join(lines)


def _fit_line(result, model: str, scan: str) -> str:
    from napari_anogan.scoring.fit import fit_message, fit_summary

    fit = result.model_fit or {}
    return fit_message(fit, model, scan) or f"model fit: {fit_summary(fit)}"


def _run_real_demo(outdir: str | Path, settings: ScoreSettings) -> Generator:
    from napari_anogan.resources import BUNDLED_REAL_MODEL, REAL_SAMPLE, sample_path

    volume = read_volume(sample_path(REAL_SAMPLE))
    model = sample_path(BUNDLED_REAL_MODEL)
    result = yield from score_volume(volume, model, settings, outdir=outdir)
    percent = result.patches["healthy_percentile"]
    lines = [
        f"napari-anogan demo --real: OCTDL B-scan {volume.name} (diabetic macular edema, "
        f"not seen in training) scored with the bundled model trained on healthy OCTDL "
        f"B-scans ({_mode_text(settings)}; ranked by {result.settings['score_column']}).",
        f"B-scan score {result.volume_score:.4g}; {len(percent)} patches, "
        f"{int(np.sum(percent >= settings.percentile_threshold))} above the "
        f"{settings.percentile_threshold:g}th healthy percentile; "
        f"{len(result.candidates)} candidate regions.",
    ]
    for cand in result.candidates[:5]:
        lines.append(
            f"  #{cand['rank']}: rows {cand['row']}-{cand['row'] + cand['height']}, cols "
            f"{cand['col']}-{cand['col'] + cand['width']}, max score {cand['max_score']:.4g}"
        )
    lines.append(_fit_line(result, BUNDLED_REAL_MODEL, volume.name))
    lines.append("outputs: " + ", ".join(str(p) for p in result.outputs.values()))
    return "\n".join(lines)

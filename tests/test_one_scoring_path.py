"""Every caller scores through ``pipeline.score_volume``: CLI, Dask, demo/GUI, evaluate.

For the same inputs, model, settings and seed, the files the CLI writes, those a Dask
worker writes, those the demo writes, the in-memory (GUI) result written by the Export
writers, and the patch scores ``evaluate`` uses are the same numbers, bit for bit: on
the bundled sample with the bundled model (hybrid mapping) and on a synthetic volume
with a model without an encoder (hybrid falls back to the seeded iterative search).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_anogan.cli import main
from napari_anogan.datasets.synthetic import make_volume
from napari_anogan.events import drain
from napari_anogan.io import read_volume, write_tiff
from napari_anogan.pipeline import (
    PATCH_COLUMNS,
    ScoreSettings,
    run_demo,
    score_volume,
    write_score_outputs,
)
from napari_anogan.resources import BUNDLED_MODEL, SAMPLE_VOLUME, sample_path

pytestmark = pytest.mark.slow


def _table(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in PATCH_COLUMNS}


def _summary(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("fingerprint", None)  # Dask adds the re-run fingerprint
    # the manifest names the same files; their bytes differ where the residual TIFF was
    # written in one piece (GUI export) rather than chunk by chunk
    data["files"] = sorted((k, v["name"]) for k, v in data["files"].items())
    return data


def _same_files(a: dict[str, Path], b: dict[str, Path]) -> None:
    assert [p.name for p in a.values()] == [p.name for p in b.values()]
    np.testing.assert_array_equal(tifffile.imread(a["residual"]), tifffile.imread(b["residual"]))
    assert a["scores"].read_bytes() == b["scores"].read_bytes()
    assert _summary(a["summary"]) == _summary(b["summary"])


def _all_callers(volume_path: Path, model_path: Path, settings: ScoreSettings, tmp: Path):
    """Score with every caller; return the CLI's files and each other caller's."""
    from napari_anogan.checkpoint import load_checkpoint
    from napari_anogan.evaluation.experiment import _score_input, _Scored
    from napari_anogan.pipeline.cluster import score_fingerprint, score_one

    stem = read_volume(volume_path).name
    names = ("residual", "scores", "overview", "summary")
    kinds = ("_residual.tif", "_scores.csv", "_overview.png", "_summary.json")

    def files(folder: Path) -> dict[str, Path]:
        return {k: folder / f"{stem}{suffix}" for k, suffix in zip(names, kinds, strict=True)}

    options = [
        "--mapping", settings.mode, "--steps", str(settings.steps),
        "--hybrid-steps", str(settings.hybrid_steps), "--lam", str(settings.lam),
        "--stride", str(settings.stride), "--batch-size", str(settings.batch_size),
        "--device", settings.device, "--seed", str(settings.seed),
    ]  # fmt: skip
    cli = tmp / "cli"
    assert (
        main(["-q", "score", str(volume_path), "-m", str(model_path), "-o", str(cli), *options])
        == 0
    )
    others = {}
    dask_out = tmp / "dask"
    dask_out.mkdir()
    fingerprint = score_fingerprint(model_path, settings)
    status = score_one(str(volume_path), str(model_path), settings, str(dask_out), fingerprint)
    assert status.status == "scored"
    others["dask"] = files(dask_out)
    gui = drain(score_volume(read_volume(volume_path), model_path, settings, partial_results=True))
    (tmp / "gui").mkdir()
    others["gui"] = write_score_outputs(
        gui, tmp / "gui", include=names, image=read_volume(volume_path).data
    )
    scored = _Scored()
    drain(
        _score_input(volume_path, True, load_checkpoint(model_path), settings, None, None, scored)
    )
    return files(cli), others, scored


def _check(cli_files, others, scored) -> None:
    for paths in others.values():
        _same_files(cli_files, paths)
    table = _table(cli_files["scores"])
    for name in ("residual_score", "discrimination_score", "anomaly_score"):
        np.testing.assert_array_equal(scored.scores[name][0], table[name])


def test_every_caller_scores_the_bundled_sample_alike(tmp_path):
    settings = ScoreSettings(hybrid_steps=2, device="cpu")
    sample = sample_path(SAMPLE_VOLUME)
    model = sample_path(BUNDLED_MODEL)
    cli_files, others, scored = _all_callers(sample, model, settings, tmp_path)
    demo_out = tmp_path / "demo"
    demo_out.mkdir()
    drain(run_demo(demo_out, settings))
    others["demo"] = {k: demo_out / p.name for k, p in cli_files.items()}
    _check(cli_files, others, scored)


def test_every_caller_scores_a_synthetic_volume_alike(tiny_model_path, tmp_path):
    syn = make_volume(n_slices=5, height=200, width=256, lesions=["irf"], seed=21)
    path = tmp_path / "eye.ome.tif"
    write_tiff(path, syn.data, spacing=syn.spacing)
    # The tiny model has no encoder: hybrid runs the seeded iterative search.
    settings = ScoreSettings(steps=2, batch_size=32, device="cpu", seed=3)
    _check(*_all_callers(path, tiny_model_path, settings, tmp_path))

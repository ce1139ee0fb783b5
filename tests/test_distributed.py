"""Scoring several volumes as Dask tasks on a real LocalCluster (2 worker processes, loopback)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cloudpickle
import dask
import pytest

from napari_anogan.cli import main
from napari_anogan.errors import InputError
from napari_anogan.pipeline import ScoreSettings
from napari_anogan.pipeline.cluster import score_fingerprint, score_one, score_paths

pytestmark = pytest.mark.slow

pytest.importorskip("distributed")

FAST = ["--mapping", "iterative", "--steps", "2", "--device", "cpu", "--batch-size", "64"]
SETTINGS = ScoreSettings(mode="iterative", steps=2, device="cpu", batch_size=64)

# Workers unpickle the crashing task below by value (they cannot import this test module).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_cli_workers_scores_each_volume_then_rerun_skips(
    synthetic_dir, tiny_model_path, tmp_path, capsys
):
    inputs = [str(synthetic_dir / n) for n in ("normal.ome.tif", "diseased.ome.tif")]
    args = ["score", *inputs, "-m", str(tiny_model_path), "-o", str(tmp_path), *FAST]
    assert main(["-q", *args, "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "[2/2]" in out
    assert out.count("scored") == 2
    fp = score_fingerprint(tiny_model_path, SETTINGS)
    for name in ("normal", "diseased"):
        summary = json.loads((tmp_path / f"{name}_summary.json").read_text())
        assert summary["fingerprint"] == fp
        assert (tmp_path / f"{name}_residual.tif").is_file()
        assert (tmp_path / f"{name}_scores.csv").is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}

    # Re-run: same model and settings -> nothing is recomputed (no cluster even starts).
    assert main(["-q", *args, "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped") == 2
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps

    # Other settings or another model file -> another fingerprint.
    other = ScoreSettings(mode="iterative", steps=3, device="cpu", batch_size=64)
    assert score_fingerprint(tiny_model_path, other) != fp
    assert (
        score_fingerprint(
            tiny_model_path, ScoreSettings(**{**SETTINGS.to_dict(), "device": "cuda"})
        )
        == fp
    )


def _crashy(path, model_path, settings, outdir, fingerprint):
    """Kill the worker process: always for 'diseased', on the first attempt for 'normal'."""
    name = Path(path).name
    if name.startswith("diseased"):
        os._exit(13)
    if name.startswith("normal"):
        marker = Path(outdir) / ".crashed-once"
        if not marker.exists():
            marker.write_text("x")
            os._exit(13)
    return score_one(path, model_path, settings, outdir, fingerprint)


def test_worker_death_retries_or_fails_one_volume_others_complete(
    synthetic_dir, tiny_model_path, tmp_path
):
    inputs = [
        synthetic_dir / "normal.ome.tif",
        synthetic_dir / "diseased.ome.tif",
        synthetic_dir / "healthy_0.ome.tif",
    ]
    seen = []
    with dask.config.set({"distributed.scheduler.allowed-failures": 2}):
        statuses = score_paths(
            inputs,
            tiny_model_path,
            SETTINGS,
            tmp_path,
            workers=2,
            task=_crashy,
            on_result=lambda s, done, total: seen.append((s.name, s.status, done, total)),
        )
    by_name = {s.name: s for s in statuses}
    assert by_name["normal"].status == "scored"  # its worker died once: retried elsewhere
    assert by_name["healthy_0"].status == "scored"
    assert by_name["diseased"].status == "failed"
    assert "KilledWorker" in by_name["diseased"].error
    assert not (tmp_path / "diseased_summary.json").exists()
    assert sorted(d for _, _, d, _ in seen) == [1, 2, 3]
    assert (tmp_path / "healthy_0_summary.json").is_file()


def test_bad_arguments_are_clear_errors(synthetic_dir, tiny_model_path, tmp_path):
    with pytest.raises(InputError, match="workers"):
        score_paths(
            [synthetic_dir / "normal.ome.tif"], tiny_model_path, SETTINGS, tmp_path, workers=0
        )
    with pytest.raises(InputError, match="same outputs"):
        score_paths(
            [synthetic_dir / "normal.ome.tif", synthetic_dir / "normal.ome.tif"],
            tiny_model_path,
            SETTINGS,
            tmp_path,
            workers=1,
        )

"""Real scans in practice: model fit, model cards, B-scan collections, adapting a model.

The bundled real B-scans (an OCTDL DME scan and a Kermany/Spectralis normal scan) and the
two bundled models check the model-fit verdict in both directions without ``../shared``;
training tests use the tiny preset on small synthetic eyes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_anogan import settings
from napari_anogan.checkpoint import load_checkpoint
from napari_anogan.cli import main
from napari_anogan.events import drain
from napari_anogan.io import read_volume
from napari_anogan.io.inputs import expand_inputs, looks_like_volume
from napari_anogan.model_card import card_lines, model_card
from napari_anogan.pipeline import ScoreSettings, score_volume, train_from_paths
from napari_anogan.pipeline.train import auto_epochs
from napari_anogan.scoring.fit import DOES_NOT_FIT, FITS, fit_message, model_fit

pytestmark = pytest.mark.filterwarnings("ignore:.*colour image converted:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_data"
SYNTHETIC_MODEL = SAMPLES / "anogan_small.pt"
OCTDL_MODEL = SAMPLES / "anogan_octdl.pt"
KERMANY_SCAN = SAMPLES / "kermany2018_NORMAL-1384-1.jpeg"
OCTDL_SCAN = SAMPLES / "octdl_DME_1188282_1.jpg"


# ------------------------------------------------------------------------- model fit


def test_model_fit_rule_in_both_directions():
    quantiles = np.linspace(0.0, 1.0, 101)  # reference 99th percentile: 0.99
    lesions = np.r_[np.full(60, 0.4), np.full(40, 5.0)]  # 40 % far out, typical patch healthy
    fit = model_fit(lesions, quantiles)
    assert fit["verdict"] == FITS
    assert fit["share_above_p99"] == pytest.approx(0.4)
    assert fit["median_percentile"] == pytest.approx(40.0)
    foreign = np.full(100, 0.99 * settings.FIT_MEDIAN_EXCESS * 1.01)
    assert model_fit(foreign, quantiles)["verdict"] == DOES_NOT_FIT
    edge = np.full(100, 0.99 * settings.FIT_MEDIAN_EXCESS * 0.99)
    assert model_fit(edge, quantiles)["verdict"] == FITS
    json.dumps(fit, allow_nan=False)  # plain floats, valid JSON


def test_model_fit_without_reference_is_unknown_not_a_verdict():
    fit = model_fit(np.ones(5), None)
    assert fit["verdict"] == "no_reference"
    assert fit["median_excess"] is None
    assert fit_message(fit, "m.pt", "scan.tif") is None


def test_fit_message_names_model_scan_share_and_the_remedy():
    fit = {"verdict": DOES_NOT_FIT, "share_above_p99": 0.874}
    line = fit_message(fit, "anogan_small.pt", "scan.jpg")
    assert line.startswith("model anogan_small.pt does not fit scan.jpg: 87 % of its patches")
    assert "train --init anogan_small.pt" in line
    assert fit_message({"verdict": FITS, "share_above_p99": 0.1}, "m", "s") is None


def _fit(model, scan, slices=None) -> dict:
    job = score_volume(read_volume(scan), load_checkpoint(model), ScoreSettings(), slices=slices)
    return drain(job).model_fit


def test_synthetic_model_does_not_fit_real_scans():
    assert _fit(SYNTHETIC_MODEL, KERMANY_SCAN)["verdict"] == DOES_NOT_FIT
    assert _fit(SYNTHETIC_MODEL, OCTDL_SCAN)["verdict"] == DOES_NOT_FIT


def test_models_fit_scans_of_their_own_domain():
    # B-scans of the diseased synthetic sample (through a PED, drusen, subretinal fluid)
    # and a diseased real OCTDL scan (DME)
    fit = _fit(SYNTHETIC_MODEL, SAMPLES / "sample_volume.ome.tif", slices=[3, 4, 8, 14])
    assert fit["verdict"] == FITS
    assert fit["median_excess"] < 1.0
    assert _fit(OCTDL_MODEL, OCTDL_SCAN)["verdict"] == FITS


def test_score_cli_says_when_the_model_does_not_fit(tmp_path, capsys):
    code = main(["-q", "score", str(KERMANY_SCAN), "-m", str(SYNTHETIC_MODEL), "-o", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "model fit: does_not_fit" in out
    assert f"model {SYNTHETIC_MODEL} does not fit {KERMANY_SCAN}" in out
    assert "candidates are not meaningful" in out
    summary = json.loads((tmp_path / f"{KERMANY_SCAN.stem}_summary.json").read_text())
    fit = summary["model_fit"]
    assert fit["verdict"] == DOES_NOT_FIT
    assert fit["share_above_p99"] > 0.5
    assert "99th percentile" in fit["rule"]
    assert summary["model"]["card"]["data_kind"] == "synthetic"


# ------------------------------------------------------------------------- model card


def test_bundled_cards_say_what_the_models_are(capsys):
    assert main(["info", str(SYNTHETIC_MODEL)]) == 0
    out = capsys.readouterr().out
    assert "trained on: synthetic scans" in out
    assert "for demonstration; train on your own healthy scans for real data" in out
    assert "healthy reference: 512 patches" in out
    card = model_card(load_checkpoint(OCTDL_MODEL))
    assert (card["data_kind"], card["training_inputs"], card["epochs"]) == ("real", 205, 60)
    assert any("Optovue" in line for line in card_lines(card))


def test_card_of_a_model_without_one_is_derived_from_the_checkpoint(tiny_model_path):
    card = model_card(load_checkpoint(tiny_model_path))
    assert card["preset"] == "tiny"
    assert card["epochs"] == 10
    lines = card_lines(card)
    assert lines[0] == "trained on: real scans"  # train's default --data-kind
    assert any(line.startswith("training data: 2 files, 6 B-scans") for line in lines)


# ------------------------------------------------------------------- collections


def _png(path: Path, shape=(40, 60), value=0) -> Path:
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


def test_numbered_same_size_images_are_one_volume(tmp_path):
    files = [_png(tmp_path / f"scan_{i:03d}.png") for i in range(4)]
    assert looks_like_volume(files)
    scans, notes = expand_inputs([tmp_path])
    assert scans == [tmp_path]
    assert "read as ONE volume" in notes[0]
    assert "--folders collection" in notes[0]


@pytest.mark.parametrize(
    ("names", "shapes"),
    [
        (["NORMAL-4872585-1.png", "NORMAL-5156112-1.png"], [(40, 60), (40, 60)]),  # 2 numbers
        (["scan_1.png", "scan_2.png"], [(40, 60), (40, 90)]),  # sizes differ
        (["eye_a.png", "eye_b.png"], [(40, 60), (40, 60)]),  # no number
    ],
)
def test_other_folders_are_collections(tmp_path, names, shapes):
    files = [_png(tmp_path / n, s) for n, s in zip(names, shapes, strict=True)]
    scans, notes = expand_inputs([tmp_path])
    assert scans == sorted(files)
    assert "collection" in notes[0]
    assert "--folders volume" in notes[0]


def test_explicit_folder_modes_override_the_guess(tmp_path):
    files = [_png(tmp_path / f"scan_{i}.png") for i in range(3)]
    assert expand_inputs([tmp_path], "collection") == (files, [])
    assert expand_inputs([tmp_path], "volume") == ([tmp_path], [])
    with pytest.raises(Exception, match="folders must be one of"):
        expand_inputs([tmp_path], "stack")


def test_score_a_collection_writes_outputs_per_scan(tmp_path, capsys):
    folder = tmp_path / "archive"
    folder.mkdir()
    for src in (KERMANY_SCAN, OCTDL_SCAN):
        (folder / src.name).write_bytes(src.read_bytes())
    out = tmp_path / "out"
    assert main(["score", str(folder), "-m", str(OCTDL_MODEL), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "2 B-scan images read as a collection" in captured.err
    for src in (KERMANY_SCAN, OCTDL_SCAN):
        summary = json.loads((out / f"{src.stem}_summary.json").read_text())
        assert summary["shape"][0] == 1  # one B-scan each, not a stack of unrelated eyes
    assert not (out / "archive_summary.json").exists()


# --------------------------------------------------------- adapting and time limits


def test_auto_epochs_aims_at_the_recipe_updates():
    assert auto_epochs(195 * 64, 64) == 60  # the OCTDL recipe: 205 B-scans, 10 held out
    assert auto_epochs(768 * 64, 64) == settings.TRAIN_MIN_EPOCHS  # large: at least 20
    assert auto_epochs(5 * 64, 64) == settings.TRAIN_MAX_EPOCHS  # 5 B-scans: capped
    assert auto_epochs(5 * 64, 64, adapt=True) == settings.ADAPT_UPDATES // 5


def test_adapting_starts_from_the_model_and_keeps_its_architecture(
    synthetic_dir, tiny_model_path, tmp_path
):
    out = tmp_path / "adapted.pt"
    drain(
        train_from_paths(
            [synthetic_dir / "normal.ome.tif"],
            out,
            preset="small",  # ignored: the initial model's architecture is kept
            epochs=1,
            patches_per_scan=8,
            batch_size=8,
            train_overrides={"lr": 1e-9, "reference_steps": 2, "reference_max_patches": 8},
            encoder=False,
            init=tiny_model_path,
            description="one healthy eye",
        )
    )
    parent, child = load_checkpoint(tiny_model_path), load_checkpoint(out)
    assert child.model_config == parent.model_config
    assert child.preprocess_config == parent.preprocess_config
    # lr ~0: the weights are the initial model's, not a fresh initialisation
    for (name, a), b in zip(
        parent.generator.state_dict().items(), child.generator.state_dict().values(), strict=True
    ):
        if a.is_floating_point() and "running" not in name:
            assert np.allclose(a.numpy(), b.numpy(), atol=1e-5), name
    card = model_card(child)
    assert card["adapted_from"] == {"file": "tiny.pt", "data_kind": "real"}
    assert card["description"] == "one healthy eye"
    assert child.reference  # a healthy reference of the new scans


def test_time_limit_stops_at_an_epoch_and_still_finishes_the_model(synthetic_dir, tmp_path):
    out = tmp_path / "limited.pt"
    result = drain(
        train_from_paths(
            sorted(synthetic_dir.glob("healthy_*.ome.tif")),
            out,
            preset="tiny",
            epochs=50,
            patches_per_scan=8,
            batch_size=8,
            train_overrides={"reference_steps": 2, "reference_max_patches": 8},
            encoder=True,
            encoder_epochs=50,
            time_limit=1e-4,  # minutes: every deadline has passed after the first epoch
        )
    )
    model = load_checkpoint(out)
    assert model.training["epochs_done"] == 1 == result.epochs
    assert model.training["stopped"] == "time limit: 1 of 50 epochs"
    assert len(model.training["encoder"]["history"]) == 1
    assert model.encoder is not None
    assert model.reference
    assert model.feature_bank is not None


@pytest.mark.slow  # evaluate's bootstrap intervals take about a minute
def test_evaluate_records_which_inputs_the_model_does_not_fit(tmp_path):
    from napari_anogan.datasets.synthetic import make_volume
    from napari_anogan.evaluation.experiment import run_evaluation
    from napari_anogan.io import write_tiff

    # an unseen healthy eye in the bundled model's own format (496 x 512 Spectralis-like)
    eye = make_volume(2, 496, 512, seed=3001)
    write_tiff(tmp_path / "normal.ome.tif", eye.data, spacing=eye.spacing)
    out = tmp_path / "eval"
    out.mkdir()
    metrics = drain(
        run_evaluation(
            SYNTHETIC_MODEL,
            normal=[tmp_path / "normal.ome.tif"],
            anomalous=[KERMANY_SCAN],
            outdir=out,
            acae_epochs=0,
            figures=False,
        )
    )
    fit = metrics["model_fit"]
    assert fit["verdicts"] == {"normal.ome.tif": FITS, KERMANY_SCAN.name: DOES_NOT_FIT}
    assert fit["does_not_fit"] == [KERMANY_SCAN.name]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["model_fit"]["does_not_fit"] == [KERMANY_SCAN.name]


SHARED = ROOT.parent / "shared" / "data" / "real-oct"


@pytest.mark.skipif(not (SHARED / "kermany2018-val").is_dir(), reason="needs ../shared data")
def test_kermany_archive_folder_is_a_collection_of_its_32_bscans():
    # 8 NORMAL (512 wide) and 24 diseased B-scans (8 of them 768 wide) of 28 patients
    scans, notes = expand_inputs([SHARED / "kermany2018-val"])
    assert len(scans) == 32
    assert all(p.suffix == ".jpeg" for p in scans)
    assert "32 B-scan images read as a collection" in notes[0]
    normal = [p for p in scans if p.name.startswith("NORMAL")]
    assert not looks_like_volume(normal)  # one size, but patient and scan numbers vary


@pytest.mark.slow  # starts a local Dask cluster
def test_dask_scoring_says_when_the_model_does_not_fit(tmp_path, capsys):
    args = ["-q", "score", str(KERMANY_SCAN), "-m", str(SYNTHETIC_MODEL), "-o", str(tmp_path)]
    assert main([*args, "--workers", "1", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "[1/1] kermany2018_NORMAL-1384-1: scored" in out
    assert f"model {SYNTHETIC_MODEL} does not fit {KERMANY_SCAN}" in out
    # a re-run skips the scored volume and still says it
    assert main([*args, "--workers", "1", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out
    assert "does not fit" in out

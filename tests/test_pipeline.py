import numpy as np
import pytest

from napari_anogan.checkpoint import load_checkpoint
from napari_anogan.errors import InputError
from napari_anogan.events import drain
from napari_anogan.io import read_volume
from napari_anogan.pipeline import (
    PATCH_COLUMNS,
    ScoreSettings,
    en_face_projection,
    score_volume,
    summary_dict,
    train_from_paths,
)
from napari_anogan.scoring import SCORING_LAM, percentile_of

FAST = ScoreSettings(steps=3, batch_size=64)


@pytest.fixture(scope="module")
def scored(synthetic_dir, tiny_model_path):
    volume = read_volume(synthetic_dir / "diseased.ome.tif")
    return volume, drain(score_volume(volume, tiny_model_path, FAST))


def test_score_volume_outputs_are_in_the_raw_grid(scored):
    volume, result = scored
    assert result.residual.shape == volume.shape
    assert result.reconstruction.shape == volume.shape
    assert result.residual.dtype == np.float32
    assert np.all(result.residual >= 0)
    assert np.all(result.residual <= 2.0)
    assert result.ilm.shape == result.bm.shape == (volume.shape[0], volume.shape[2])
    assert np.all(result.ilm < result.bm)
    assert result.en_face.shape == (volume.shape[0], volume.shape[2])
    table = result.patches
    assert set(PATCH_COLUMNS) <= set(table)
    n = len(table["slice"])
    assert n > 0
    assert all(len(v) == n for v in table.values())
    assert np.all(table["row"] >= 0)
    assert np.all(table["col"] >= 0)
    assert np.all(table["row"] + table["height"] <= volume.shape[1])
    assert np.all(table["col"] + table["width"] <= volume.shape[2])
    ref = result.model["reference"]
    # the tiny model has a feature bank: the feature distance ranks
    assert result.settings["score_column"] == "feature_distance"
    assert np.all((table["feature_distance"] >= 0) & (table["feature_distance"] <= 2))
    for column, score in (
        ("healthy_percentile", "feature_distance"),
        ("residual_percentile", "residual_score"),
        ("discrimination_percentile", "discrimination_score"),
    ):
        # Each score ranked in the healthy reference of the same score.
        expected = percentile_of(table[score], np.asarray(ref[score]), np.asarray(ref["levels"]))
        np.testing.assert_array_equal(table[column], expected, err_msg=column)
        assert np.all((table[column] >= 0) & (table[column] <= 100)), column
    assert len(np.unique(table["healthy_percentile"])) > 1
    assert len(result.model["reference"]["levels"]) == len(
        result.model["reference"]["anomaly_score"]
    )
    np.testing.assert_allclose(
        table["anomaly_score"],
        (1 - FAST.lam) * table["residual_score"] + FAST.lam * table["discrimination_score"],
        rtol=1e-9,
    )
    assert result.bscan_scores.shape == (volume.shape[0],)
    assert result.volume_score == pytest.approx(np.nanmax(result.bscan_scores))


def test_scored_pixels_lie_inside_the_patch_boxes(scored):
    volume, result = scored
    covered = np.zeros(volume.shape, dtype=bool)
    t = result.patches
    for s, r, c, h, w in zip(t["slice"], t["row"], t["col"], t["height"], t["width"], strict=True):
        covered[s, r : r + h, c : c + w] = True
    assert not np.any((result.residual > 0) & ~covered)


def test_same_seed_same_scores(synthetic_dir, tiny_model_path, scored):
    volume, first = scored
    again = drain(score_volume(volume, load_checkpoint(tiny_model_path), FAST))
    np.testing.assert_array_equal(first.patches["anomaly_score"], again.patches["anomaly_score"])


def test_slices_and_boxes_restrict_scoring(synthetic_dir, tiny_model_path, scored):
    volume, full = scored
    one = drain(score_volume(volume, tiny_model_path, FAST, slices=[1]))
    assert set(one.patches["slice"].tolist()) == {1}
    assert np.all(one.residual[0] == 0)
    assert np.all(one.residual[2] == 0)
    box = (1, 0, 0, volume.shape[1], 100)
    boxed = drain(score_volume(volume, tiny_model_path, FAST, boxes=[box]))
    assert 0 < len(boxed.patches["slice"]) < len(full.patches["slice"])
    assert set(boxed.patches["slice"].tolist()) == {1}
    assert np.all(boxed.patches["col"] < 100)


def test_region_without_retina_is_an_input_error(synthetic_dir, tiny_model_path):
    volume = read_volume(synthetic_dir / "diseased.ome.tif")
    with pytest.raises(InputError, match="no patch"):
        drain(score_volume(volume, tiny_model_path, FAST, boxes=[(0, 0, 0, 2, 2)]))


def test_summary_is_json_ready(scored):
    import json

    _, result = scored
    text = json.dumps(summary_dict(result))
    back = json.loads(text)
    assert back["volume_score"] == pytest.approx(result.volume_score)
    assert len(back["bscan_scores"]) == result.shape[0]


def test_en_face_projection_means_the_band():
    residual = np.zeros((1, 4, 2), dtype=np.float32)
    residual[0, :, 0] = [9, 1, 3, 9]
    residual[0, :, 1] = [2, 2, 2, 2]
    ilm = np.array([[1.0, 0.0]])
    bm = np.array([[2.0, 3.0]])
    np.testing.assert_allclose(en_face_projection(residual, ilm, bm), [[2.0, 2.0]])


def test_partial_heatmaps_arrive_as_batches_finish(synthetic_dir, tiny_model_path):
    from napari_anogan.events import EventKind
    from napari_anogan.pipeline import VolumeResult

    volume = read_volume(synthetic_dir / "diseased.ome.tif")
    settings = ScoreSettings(steps=2, batch_size=16, mode="iterative")
    job = score_volume(volume, tiny_model_path, settings, partial_results=True)
    partials = []
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            final = stop.value
            break
        if event.kind == EventKind.MAPPING_BATCH and event.partial is not None:
            partials.append(event.partial)
    assert len(partials) >= 1
    assert all(isinstance(p, VolumeResult) for p in partials)
    covered = [int((p.residual > 0).sum()) for p in partials]
    assert covered == sorted(covered)  # coverage only grows
    np.testing.assert_allclose(partials[-1].residual, final.residual, atol=1e-5)


def test_held_out_bscans_give_the_reference_grid_patches(synthetic_dir):
    from napari_anogan.pipeline import collect_training_patches
    from napari_anogan.preprocess import PreprocessConfig, grid_patches, preprocess_volume

    cfg = PreprocessConfig()
    paths = sorted(synthetic_dir.glob("healthy_*.ome.tif"))  # 2 eyes x 3 B-scans
    patches, reference, info, bank = drain(
        collect_training_patches(paths, cfg, 5, seed=3, holdout_fraction=0.5)
    )
    held = info["holdout_bscans"]
    assert len(held) == 3  # round(0.5 * 6)
    assert len(patches) == 5 * (6 - 3)  # only the other B-scans train
    expected, expected_bank = [], []
    for i, path in enumerate(paths):
        slices = [s for j, s in held if j == i]
        pre = preprocess_volume(read_volume(path), cfg)
        if slices:
            expected.append(grid_patches(pre, stride=16, slices=slices).images)
        others = [s for s in range(3) if s not in slices]
        expected_bank.append(grid_patches(pre, stride=16, slices=others).images)
    np.testing.assert_array_equal(reference, np.concatenate(expected))
    # the feature bank's patches: the grid of the training B-scans, none held out
    np.testing.assert_array_equal(bank, np.concatenate(expected_bank))
    assert info["n_reference_patches"] == len(reference)
    # the training patches are the random patches of the other B-scans only
    from napari_anogan.preprocess import random_patches

    rng = np.random.default_rng(3)
    drawn = []
    for i, path in enumerate(paths):
        pre = preprocess_volume(read_volume(path), cfg)
        keep = [s for s in range(3) if [i, s] not in held]
        drawn.append(random_patches(pre, 5, seed=rng, slices=keep).images)
    np.testing.assert_array_equal(patches, np.concatenate(drawn))
    train_only, none, _, _ = drain(collect_training_patches(paths, cfg, 5, seed=3))
    assert len(train_only) == 5 * 6
    assert none.shape == (0, 1, 64, 64)


@pytest.mark.slow
def test_training_keeps_held_out_bscans_for_the_reference(synthetic_dir, tmp_path):
    import torch

    from napari_anogan.errors import ModelError
    from napari_anogan.pipeline import collect_training_patches, train_from_paths
    from napari_anogan.preprocess import PreprocessConfig
    from napari_anogan.training import EncoderConfig, add_encoder

    paths = sorted(synthetic_dir.glob("healthy_*.ome.tif"))
    out = tmp_path / "m.pt"
    overrides = {"reference_steps": 2, "reference_max_patches": 7, "holdout_fraction": 0.5}
    kw = {"preset": "tiny", "epochs": 1, "patches_per_scan": 8, "batch_size": 8, "encoder": False}
    drain(train_from_paths(paths, out, train_overrides=overrides, **kw))
    model = load_checkpoint(out)
    assert model.training["reference_holdout"] == "bscans"
    assert model.training["n_train"] == 8 * 3  # every training patch trains
    assert model.training["n_holdout"] == model.training["extra"]["data"]["n_reference_patches"]
    assert model.reference["n_patches"] == 7
    # the encoder step needs the same reference patches
    patches, reference, _, _ = drain(
        collect_training_patches(paths, PreprocessConfig(), 8, seed=0, holdout_fraction=0.5)
    )
    with pytest.raises(ModelError, match="held-out B-scans"):
        drain(add_encoder(out, patches, EncoderConfig(epochs=1, device="cpu")))
    torch.manual_seed(0)
    drain(
        add_encoder(
            out, patches, EncoderConfig(epochs=1, device="cpu"), reference_patches=reference
        )
    )
    assert load_checkpoint(out).reference["settings"]["mode"] == "hybrid"


@pytest.mark.slow
def test_refresh_reference_recomputes_only_the_healthy_reference(
    synthetic_dir, tiny_model_path, tmp_path
):
    """reference_patches_of rebuilds a model's reference patches from its checkpoint, and
    refresh_reference maps them again: the same patches give the same reference, other
    patches another one, and G and D are untouched."""
    import torch

    from napari_anogan.checkpoint import read_checkpoint
    from napari_anogan.errors import ModelError
    from napari_anogan.pipeline import collect_training_patches, reference_patches_of
    from napari_anogan.preprocess import PreprocessConfig
    from napari_anogan.training import refresh_reference

    paths = sorted(synthetic_dir.glob("healthy_*.ome.tif"))
    path = tmp_path / "held_bscans.pt"
    overrides = {"reference_steps": 5, "reference_max_patches": 16, "holdout_fraction": 0.5}
    drain(
        train_from_paths(
            paths,
            path,
            preset="tiny",
            epochs=1,
            patches_per_scan=8,
            batch_size=8,
            train_overrides=overrides,
            encoder=False,
        )
    )
    model = load_checkpoint(path)
    assert model.training["reference_holdout"] == "bscans"
    ref = drain(reference_patches_of(model))
    _, expected, _, _ = drain(
        collect_training_patches(paths, PreprocessConfig(), 8, seed=0, holdout_fraction=0.5)
    )
    np.testing.assert_array_equal(ref, expected)

    before = read_checkpoint(path)
    new = drain(refresh_reference(path, ref, device="cpu"))
    for name in ("anomaly_score", "residual_score", "discrimination_score"):
        np.testing.assert_allclose(new[name], model.reference[name], rtol=1e-6)
    assert new["n_patches"] == model.reference["n_patches"] == 16
    other = drain(refresh_reference(path, ref[::-1][:10].copy(), device="cpu"))
    assert other["n_patches"] == 10
    assert not np.allclose(other["residual_score"], model.reference["residual_score"])
    after = read_checkpoint(path)
    for key in ("generator", "discriminator"):
        for k, v in before[key].items():
            assert torch.equal(v, after[key][k]), k
    assert load_checkpoint(path).reference["n_patches"] == 10
    # another lambda: stored in the reference's settings and as the model's reference_lam,
    # and the reference's A changes with it
    assert model.reference["settings"]["lam"] == SCORING_LAM
    relam = drain(refresh_reference(path, ref, device="cpu", lam=0.2))
    reloaded = load_checkpoint(path)
    assert reloaded.reference["settings"]["lam"] == 0.2
    assert reloaded.train_config["reference_lam"] == 0.2
    assert not np.allclose(relam["anomaly_score"], new["anomaly_score"])

    # the session's tiny model held out patches (6 B-scans x 5 % rounds to none)
    with pytest.raises(ModelError, match="held-out training patches"):
        drain(refresh_reference(tiny_model_path, ref, device="cpu"))
    with pytest.raises(ModelError, match="no held-out B-scans"):
        drain(reference_patches_of(tiny_model_path))


def test_scoring_with_another_lambda_than_the_reference_warns_once(
    synthetic_dir, tiny_model_path, caplog
):
    """Percentiles compare A = (1 - λ) R + λ D with the reference's A: another λ is
    another score, said once per model and λ."""
    from dataclasses import replace

    volume = read_volume(synthetic_dir / "normal.ome.tif")
    model = load_checkpoint(tiny_model_path)
    ref_lam = model.reference["settings"]["lam"]
    assert ref_lam == SCORING_LAM
    with caplog.at_level("WARNING", logger="napari_anogan.pipeline"):
        drain(score_volume(volume, model, replace(FAST, lam=ref_lam), slices=[0]))
        assert "reference was mapped with lambda" not in caplog.text
        for _ in range(2):
            drain(score_volume(volume, model, replace(FAST, lam=0.35), slices=[0]))
    message = f"scored with lambda 0.35 but its healthy reference was mapped with lambda {ref_lam}"
    assert caplog.text.count(message) == 1

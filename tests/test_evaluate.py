import json

import numpy as np
import pytest

from napari_anogan.errors import AnoganError, InputError
from napari_anogan.evaluation import figures as fg
from napari_anogan.evaluation import labels as lb
from napari_anogan.evaluation import metrics as ev
from napari_anogan.evaluation import table as tb
from napari_anogan.events import drain

LABELS4 = np.array([0, 0, 1, 1], dtype=bool)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([0.1, 0.2, 0.8, 0.9], 1.0),
        ([0.9, 0.8, 0.2, 0.1], 0.0),
        ([0.1, 0.4, 0.35, 0.8], 0.75),
        ([0.5, 0.5, 0.5, 0.5], 0.5),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_roc_auc_exact(scores, expected, dtype):
    scores = np.asarray(scores)
    if np.issubdtype(dtype, np.integer):
        scores = scores * 100
    result = ev.roc(LABELS4, scores.astype(dtype))
    assert result["auc"] == pytest.approx(expected)
    assert set(result) == {"fpr", "tpr", "thresholds", "auc"}
    assert result["fpr"][0] == 0
    assert result["tpr"][-1] == 1
    assert np.isinf(result["thresholds"][0])


def test_youden_exact():
    labels = np.array([0, 0, 0, 1, 1, 1, 1], dtype=bool)
    scores = np.array([0.1, 0.2, 0.75, 0.4, 0.7, 0.8, 0.9])
    point = ev.youden_point(labels, scores)
    assert point["threshold"] == pytest.approx(0.4)
    assert point["sensitivity"] == pytest.approx(1.0)
    assert point["recall"] == pytest.approx(1.0)
    assert point["specificity"] == pytest.approx(2 / 3)
    assert point["precision"] == pytest.approx(4 / 5)


def test_youden_tie_takes_highest_threshold():
    point = ev.youden_point(LABELS4, np.array([0.1, 0.4, 0.35, 0.8]))
    assert point["threshold"] == pytest.approx(0.8)
    assert point["sensitivity"] == pytest.approx(0.5)
    assert point["specificity"] == pytest.approx(1.0)
    assert point["precision"] == pytest.approx(1.0)


def test_operating_point_precision_recall_exact():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.6, 0.2, 0.7, 0.65, 0.1, 0.3, 0.0])
    # >= 0.5 called anomalous: TP=2 FN=1 FP=2 TN=3
    point = ev.operating_point(labels, scores, 0.5)
    assert point["precision"] == pytest.approx(2 / 4)
    assert point["recall"] == pytest.approx(2 / 3)
    assert point["sensitivity"] == pytest.approx(2 / 3)
    assert point["specificity"] == pytest.approx(3 / 5)
    assert ev.operating_point(labels, scores, 2.0)["precision"] == 0.0


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0]])
def test_degenerate_labels_raise(labels):
    with pytest.raises(AnoganError, match="both normal and anomalous"):
        ev.roc(np.array(labels), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(AnoganError, match="both normal and anomalous"):
        ev.youden_point(np.array(labels), np.array([0.1, 0.2, 0.3]))


def test_bad_inputs_raise():
    with pytest.raises(AnoganError, match="differ in length"):
        ev.roc(LABELS4, np.zeros(3))
    with pytest.raises(AnoganError, match="NaN"):
        ev.roc(LABELS4, np.array([0.1, np.nan, 0.2, 0.3]))


def test_orientation_of_discriminator_output():
    p_d = np.array([0.9, 0.8, 0.2, 0.1])  # real-probability: high = normal
    assert ev.roc(LABELS4, ev.orient_scores("discriminator_output", p_d))["auc"] == 1.0
    np.testing.assert_allclose(ev.orient_scores("anomaly_score", p_d), p_d)


def test_patch_labels_from_mask():
    mask = np.zeros((2, 8, 10), dtype=np.uint8)
    mask[0, 5, 6] = 1
    mask[1, 0, 0] = 255
    coords = np.array(
        [
            [0, 0, 0],  # rows 0-3, cols 0-3 of slice 0: no lesion
            [0, 4, 4],  # rows 4-7, cols 4-7: holds (5, 6)
            [0, 2, 6],  # rows 2-5, cols 6-9: holds (5, 6) on its last row
            [0, 2, 7],  # cols 7-10: misses col 6
            [1, 0, 0],  # slice 1 corner
            [1, 4, 8],  # partly outside the mask: background
        ]
    )
    labels = lb.patch_labels_from_mask(mask, coords, 4)
    assert labels.dtype == bool
    np.testing.assert_array_equal(labels, [False, True, True, False, True, False])


def test_patch_labels_from_mask_errors():
    with pytest.raises(InputError):
        lb.patch_labels_from_mask(np.zeros((4, 4)), np.zeros((1, 3), int), 2)
    with pytest.raises(InputError):
        lb.patch_labels_from_mask(np.zeros((1, 4, 4)), np.zeros((1, 2), int), 2)
    with pytest.raises(InputError, match="out of range"):
        lb.patch_labels_from_mask(np.zeros((1, 4, 4)), np.array([[1, 0, 0]]), 2)


def test_bscan_labels():
    mask = np.zeros((3, 4, 5), dtype=np.uint8)
    mask[1, 3, 4] = 1
    np.testing.assert_array_equal(lb.bscan_labels(mask), [False, True, False])
    np.testing.assert_array_equal(lb.bscan_labels_without_mask(3, True), [True] * 3)
    np.testing.assert_array_equal(lb.bscan_labels_without_mask(2, False), [False] * 2)


def test_pixel_auroc_exact():
    residual = np.array([[[0.1, 0.9], [0.5, 0.3]]])
    mask = np.array([[[0, 1], [0, 1]]])
    assert ev.pixel_auroc(residual, mask) == pytest.approx(0.75)
    valid = np.array([[[True, True], [False, True]]])
    assert ev.pixel_auroc(residual, mask, valid) == pytest.approx(1.0)
    with pytest.raises(AnoganError):
        ev.pixel_auroc(residual, np.zeros_like(mask))


def test_pixel_auroc_subsample_deterministic():
    rng = np.random.default_rng(1)
    mask = rng.random((4, 50, 50)) < 0.2
    residual = mask * 0.5 + rng.random(mask.shape)
    full = ev.pixel_auroc(residual, mask)
    a = ev.pixel_auroc(residual, mask, max_pixels=2000)
    b = ev.pixel_auroc(residual, mask, max_pixels=2000)
    assert a == b
    assert a != full  # 2,000 of the 10,000 pixels were drawn, not all of them
    assert abs(a - full) < 0.05
    assert ev.pixel_auroc(residual, mask, max_pixels=2000, seed=1) != a


def _fake_scores(n, rng, labels):
    shift = labels.astype(float)
    out = {name: rng.random(n) + shift for name in ev.SCORE_NAMES}
    out["discriminator_output"] = 1 - 0.5 * (rng.random(n) + shift)
    return out


def test_evaluate_scores_keys_and_table(tmp_path):
    rng = np.random.default_rng(0)
    patch_labels = np.arange(40) % 3 == 0
    bscan_labels = np.arange(10) >= 5
    patch_scores = _fake_scores(40, rng, patch_labels)
    bscan_scores = _fake_scores(10, rng, bscan_labels)
    bscan_scores["anomaly_score"][0] = np.nan  # unscored B-scan: left out
    residual = rng.random((2, 8, 8))
    mask = residual > 0.7
    metrics = ev.evaluate_scores(
        patch_scores, patch_labels, bscan_scores, bscan_labels, pixel=(residual, mask, None)
    )
    for name in ev.SCORE_NAMES:
        entry = metrics[name]
        assert {"patch_auc", "bscan_auc", "youden"} <= set(entry)
        assert set(entry["youden"]) == {
            "threshold",
            "sensitivity",
            "specificity",
            "precision",
            "recall",
        }
        # _fake_scores separates the classes perfectly, D(x) the other way round: every
        # score, in its anomalous orientation, ranks them perfectly.
        assert entry["patch_auc"] == 1.0
        assert entry["bscan_auc"] == 1.0
    assert metrics["discriminator_output"]["orientation"] == "1 - score"
    assert metrics["anomaly_score"]["n_bscans"] == 9
    assert metrics["pixel_auroc"] == pytest.approx(1.0)

    path = tmp_path / "metrics.json"
    tb.save_metrics(metrics, path)
    loaded = json.loads(path.read_text())
    assert loaded["anomaly_score"]["youden"]["threshold"] == pytest.approx(
        metrics["anomaly_score"]["youden"]["threshold"]
    )

    table = tb.table1(metrics)
    for row in ("aCAE", "P_D", "GAN_R", "AnoGAN", "AnoGAN F"):
        assert f"| {row} |" in table
    for col in ("Precision", "Recall", "Sensitivity", "Specificity", "AUC", "B-scan AUC"):
        assert col in table
    assert len(table.strip().splitlines()) == 7
    # no feature distances among these scores: its row shows dashes
    assert table.strip().splitlines()[-1].startswith("| AnoGAN F | – |")


def test_evaluate_scores_partial_levels_and_missing_rows():
    labels = np.array([0, 0, 1, 1], dtype=bool)
    metrics = ev.evaluate_scores(None, None, {"anomaly_score": [0.1, 0.2, 0.3, 0.4]}, labels)
    assert metrics["anomaly_score"]["patch_auc"] is None
    assert metrics["anomaly_score"]["bscan_auc"] == 1.0
    assert metrics["anomaly_score"]["youden"] == metrics["anomaly_score"]["bscan_youden"]
    assert metrics["pixel_auroc"] is None
    table = tb.table1(metrics)
    assert "| aCAE | – |" in table
    with pytest.raises(AnoganError, match="nothing to evaluate"):
        ev.evaluate_scores(None, None)
    with pytest.raises(AnoganError, match="both normal and anomalous"):
        ev.evaluate_scores({"anomaly_score": [0.1, 0.2]}, np.array([True, True]))


@pytest.mark.slow  # thousands of bootstrap resamples
def test_bootstrap_aucs_resamples_whole_groups():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(8), 50)
    labels = (groups >= 4) & (rng.random(400) < 0.4)  # eyes 4-7 diseased
    # Eye 4's lesions score like healthy patches, the other eyes' are well separated.
    noisy = labels * np.where(groups == 4, 0.0, 3.0) + rng.normal(size=400)
    scores = {"anomaly_score": noisy, "residual_score": noisy.copy(), "acae": rng.random(400)}
    out = ev.bootstrap_aucs(labels, scores, groups, n_resamples=300, seed=1)
    point = ev.roc(labels, noisy)["auc"]
    low, high = out["anomaly_score"]["auc_ci"]
    assert low < point < high
    assert high - low > 0.02  # one of four diseased eyes missing or doubled moves the AUC
    assert out["residual_score"]["auc_minus_reference_ci"] == [0.0, 0.0]  # paired, same score
    assert out["acae"]["auc_minus_reference_ci"][1] < 0  # random score: clearly behind
    assert "auc_minus_reference_ci" not in out["anomaly_score"]
    assert ev.bootstrap_aucs(labels, scores, groups, n_resamples=300, seed=1) == out
    assert ev.bootstrap_aucs(labels, scores, groups, n_resamples=300, seed=2) != out
    # Patches are not independent: resampling items as if they were gives a narrower interval.
    naive = ev.bootstrap_aucs(labels, scores, np.arange(400), n_resamples=300, seed=1)
    assert np.diff(naive["anomaly_score"]["auc_ci"])[0] < high - low
    # Perfectly separated: every resample has both classes (stratified), AUC 1 throughout.
    perfect = ev.bootstrap_aucs(labels, {"anomaly_score": labels * 5.0}, groups, n_resamples=50)
    assert perfect["anomaly_score"]["auc_ci"] == [1.0, 1.0]
    with pytest.raises(AnoganError, match="group ids"):
        ev.bootstrap_aucs(labels, scores, groups[:10])
    with pytest.raises(AnoganError, match="positive and with negative"):
        ev.bootstrap_aucs(np.ones(400, bool), scores, groups)


def test_evaluate_scores_with_groups_adds_intervals_and_table_column():
    labels = np.array([0, 0, 0, 1, 0, 1, 0, 0, 1, 1], dtype=bool)
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])  # eye 0 healthy, eyes 1 and 2 not
    scores = {"anomaly_score": np.arange(10.0), "acae": np.arange(10.0)[::-1]}
    metrics = ev.evaluate_scores(scores, labels, patch_groups=groups, n_resamples=200)
    assert metrics["bootstrap"]["n_groups"] == 3
    low, high = metrics["anomaly_score"]["patch_auc_ci"]
    assert low <= metrics["anomaly_score"]["patch_auc"] <= high
    assert "patch_auc_minus_anogan_ci" in metrics["acae"]
    assert "bscan_auc_ci" not in metrics["anomaly_score"]
    table = tb.table1(metrics)
    assert "| AUC | AUC 95 % CI | B-scan AUC |" in table
    ci = f"{low:.3f}-{high:.3f}"
    assert f"| {metrics['anomaly_score']['patch_auc']:.3f} | {ci} |" in table
    assert "AUC 95 % CI" not in tb.table1(ev.evaluate_scores(scores, labels))


def test_patch_windows_keep_labels_and_dominant_label():
    from napari_anogan.evaluation.experiment import dominant_labels, patch_masks

    labels = np.zeros((1, 6, 6), dtype=np.uint8)
    labels[0, 0, 0] = 3
    labels[0, 1, :3] = 5
    labels[0, 5, 5] = 2
    coords = np.array([[0, 0, 0], [0, 3, 3], [0, 4, 0]])
    windows = patch_masks(labels, coords, 4)
    assert windows.dtype == np.uint8
    assert windows[0].tolist()[:2] == [[3, 0, 0, 0], [5, 5, 5, 0]]
    assert windows[1].sum() == 2  # the window reaching past the edge is padded with 0
    assert dominant_labels(windows).tolist() == [5, 2, 0]
    assert patch_masks(labels > 0, coords, 4).dtype == bool


def test_plots_write_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 2 == 0
    scores = _fake_scores(60, rng, labels)
    curves = ev.roc_curves({k: scores[k] for k in fg.FIG4A_SCORES}, labels)
    roc_path = tmp_path / "roc.png"
    fg.plot_rocs(curves, roc_path, title="Fig. 4a")
    assert roc_path.stat().st_size > 10_000
    dist_path = tmp_path / "dist.png"
    fg.plot_score_distributions(
        {
            "training healthy": rng.normal(0, 1, 100),
            "test healthy": rng.normal(0.2, 1, 80),
            "diseased": rng.normal(2, 1, 50),
        },
        dist_path,
        "residual score",
    )
    assert dist_path.stat().st_size > 10_000
    assert not list(tmp_path.glob(".tmp-*"))


def _training_patches(model_path, n_max: int, seed: int = 0):
    from napari_anogan.evaluation.experiment import _training_scores
    from napari_anogan.pipeline import ScoreSettings, load_model

    settings = ScoreSettings(mode="iterative", steps=1, stride=32)
    return drain(_training_scores(load_model(model_path), settings, n_max=n_max, seed=seed))


def test_fig4_training_patches_come_from_a_seeded_subset_of_training_scans(
    tiny_model_path, monkeypatch
):
    """Fig. 4c,d's training-healthy patches: n_max grid patches, the same for a seed,
    from only as many training scans as needed (at least TRAINING_SCANS_FOR_FIGURES)."""
    from napari_anogan import preprocess
    from napari_anogan.evaluation import experiment

    calls: list[int] = []
    real = preprocess.preprocess_volume

    def counted(volume, config):
        calls.append(1)
        return real(volume, config)

    monkeypatch.setattr(preprocess, "preprocess_volume", counted)
    patches, mapped = _training_patches(tiny_model_path, n_max=4)
    assert len(calls) == 2  # both training eyes: fewer than TRAINING_SCANS_FOR_FIGURES
    assert patches.shape == (4, 1, 64, 64)
    assert mapped.residual_score.shape == (4,)
    again, _ = _training_patches(tiny_model_path, n_max=4)
    np.testing.assert_array_equal(again, patches)

    calls.clear()
    monkeypatch.setattr(experiment, "TRAINING_SCANS_FOR_FIGURES", 1)
    few, _ = _training_patches(tiny_model_path, n_max=1)
    assert len(calls) == 1  # one scan has the 8 patches needed to pick 1
    assert few.shape == (1, 1, 64, 64)


def test_tiny_model_generator_depends_on_z(tiny_model_path):
    """The tests' tiny model maps at all: G(z) varies with z and has a gradient in z."""
    import torch

    from napari_anogan.pipeline import load_model

    model = load_model(tiny_model_path)
    z = torch.linspace(-1, 1, 8 * model.model_config.z_dim).reshape(8, -1).requires_grad_()
    out = model.generator.eval()(z)
    out.sum().backward()
    assert out.std(0).mean() > 0.01
    assert z.grad.abs().mean() > 0.1


@pytest.mark.slow
def test_gan_r_scores_come_from_a_mapping_with_the_reference_loss(synthetic_dir, tiny_model_path):
    """GAN_R (Table 1): the paper maps with the reference loss itself, so evaluation's
    reference scores are those of a second mapping with ``discrimination="reference"``,
    while AnoGAN's scores keep the feature-matching mapping."""
    from dataclasses import replace

    from napari_anogan.evaluation.experiment import _score_input, _Scored
    from napari_anogan.io import read_volume
    from napari_anogan.mapping import map_to_latent
    from napari_anogan.pipeline import ScoreSettings, load_model, mapping_config, score_volume

    model = load_model(tiny_model_path)
    settings = ScoreSettings(mode="iterative", steps=3, stride=32)
    path = synthetic_dir / "diseased.ome.tif"
    out = _Scored()
    drain(_score_input(path, True, model, settings, None, None, out))
    patches = drain(score_volume(read_volume(path), model, settings, keep_patches=True)).mapped
    feature = patches.mapping
    config = replace(mapping_config(settings), discrimination="reference", keep_images=False)
    reference = drain(map_to_latent(model.generator, model.discriminator, patches.images, config))

    for name in ("reference_anomaly_score", "reference_discrimination_score"):
        np.testing.assert_array_equal(out.scores[name][0], getattr(reference, name))
        assert not np.array_equal(out.scores[name][0], getattr(feature, name))
    for name in ("anomaly_score", "residual_score", "discrimination_score"):
        np.testing.assert_array_equal(out.scores[name][0], getattr(feature, name))

    # A mapping that takes no step (here the random start; the encoder mode alike) has the
    # same z whatever its loss: the GAN_R scores are the AnoGAN mapping's, mapped once.
    events = []
    still = _Scored()
    no_steps = ScoreSettings(mode="iterative", steps=0, stride=32)
    drain(_score_input(path, True, model, no_steps, None, None, still), events.append)
    assert not any("GAN_R" in (e.message or "") for e in events)
    start = drain(
        score_volume(read_volume(path), model, no_steps, keep_patches=True)
    ).mapped.mapping
    np.testing.assert_array_equal(
        still.scores["reference_anomaly_score"][0], start.reference_anomaly_score
    )

    # Hybrid with K = 0 on a model without an encoder falls back to the 3-step iterative
    # search: GAN_R follows the mapping that ran, not the requested K = 0.
    fallback = _Scored()
    hybrid0 = ScoreSettings(mode="hybrid", hybrid_steps=0, steps=3, stride=32)
    drain(_score_input(path, True, model, hybrid0, None, None, fallback))
    np.testing.assert_array_equal(
        fallback.scores["reference_anomaly_score"][0], reference.reference_anomaly_score
    )


def test_find_mask_takes_common_suffixes_and_never_the_scan_itself(tmp_path):
    from napari_anogan.evaluation.experiment import find_mask

    scans = tmp_path / "scans"
    masks = tmp_path / "masks"
    scans.mkdir()
    masks.mkdir()
    for name in ("A.png", "A_drusen-mask.png", "B.tif", "B-mask.tif", "C.ome.tif", "D.png"):
        (scans / name).touch()
    (masks / "C_labels.ome.tif").touch()
    (masks / "E.png").touch()
    (scans / "E.png").touch()
    assert find_mask(scans / "A.png") == scans / "A_drusen-mask.png"
    assert find_mask(scans / "B.tif") == scans / "B-mask.tif"
    assert find_mask(scans / "C.ome.tif", masks) == masks / "C_labels.ome.tif"
    # a scan with no mask is not its own mask, also when the masks folder is its folder
    assert find_mask(scans / "D.png", scans) is None
    assert find_mask(scans / "D.png") is None
    # a file of the same name in another (masks) folder is the mask
    assert find_mask(scans / "E.png", masks) == masks / "E.png"
    # "AB.png" is not a mask of "A"
    (scans / "AB_mask.png").touch()
    assert find_mask(scans / "A.png") == scans / "A_drusen-mask.png"


def _png(path, image):
    from PIL import Image

    Image.fromarray(np.asarray(image)).save(path)
    return path


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (np.zeros((40, 30), np.uint8), None),  # all background: a valid mask
        ((np.arange(1200).reshape(40, 30) % 2).astype(np.uint8), None),  # 0/1
        ((np.arange(1200).reshape(40, 30) % 2 * 255).astype(np.uint8), None),  # 0/255
        ((np.arange(1200).reshape(40, 30) % 6).astype(np.float32), None),  # labels as floats
        ((np.arange(1200).reshape(40, 30) % 200).astype(np.uint8), "200 distinct values"),
        (np.full((40, 30), 0.5, np.float32), "non-integer values"),
        (np.full((40, 30), -1, np.int16), "negative values"),
        (np.zeros((40, 31), np.uint8), r"mask shape \(1, 40, 31\) differs from its scan"),
    ],
)
def test_a_mask_must_be_few_integer_labels_of_the_scans_shape(tmp_path, mask, expected):
    import tifffile

    scan = tmp_path / "scan.png"
    _png(scan, np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8))
    path = tmp_path / "scan_mask.tif"
    tifffile.imwrite(path, mask)
    if expected is None:
        labels = lb.load_mask(path, scan, (1, 40, 30))
        np.testing.assert_array_equal(labels[0], mask)
        assert labels.dtype.kind == "u"
    else:
        with pytest.raises(InputError, match=expected) as info:
            lb.load_mask(path, scan, (1, 40, 30))
        assert "scan_mask.tif" in str(info.value)
    with pytest.raises(InputError, match="is the scan itself"):
        lb.load_mask(scan, scan, (1, 40, 30))


def test_evaluate_refuses_the_scan_as_its_mask_and_says_which_mask_labelled_which_scan(
    tmp_path, capsys, monkeypatch
):
    """Scans and masks in one folder; a copy of a scan in --masks is refused, not taken
    as its own mask (every patch positive, lesion labels = grey values)."""
    import functools
    import shutil

    from napari_anogan.cli import main
    from napari_anogan.datasets.synthetic import make_volume
    from napari_anogan.evaluation.experiment import run_evaluation
    from napari_anogan.pipeline import ScoreSettings
    from napari_anogan.resources import BUNDLED_MODEL, sample_path

    data = tmp_path / "data"
    data.mkdir()
    healthy = make_volume(1, 200, 256, seed=3)
    sick = make_volume(1, 200, 256, lesions=["srf"], seed=4)
    _png(data / "healthy.png", healthy.data[0])
    _png(data / "sick.png", sick.data[0])
    _png(data / "sick_mask.png", (sick.mask[0] > 0).astype(np.uint8))
    settings = ScoreSettings(mode="encoder", device="cpu", stride=32)
    model = sample_path(BUNDLED_MODEL)
    # a few bootstrap resamples: the intervals are not what this test is about
    monkeypatch.setattr(
        ev, "evaluate_scores", functools.partial(ev.evaluate_scores, n_resamples=20)
    )
    (tmp_path / "out").mkdir()
    metrics = drain(
        run_evaluation(
            model,
            normal=[data / "healthy.png"],
            anomalous=[data / "sick.png"],
            outdir=tmp_path / "out",
            settings=settings,
            masks=data,
            acae_epochs=0,
            figures=False,
        )
    )
    assert metrics["masks"] == {"healthy.png": None, "sick.png": str(data / "sick_mask.png")}
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["masks"] == metrics["masks"]

    masks = tmp_path / "masks"
    masks.mkdir()
    shutil.copy(data / "sick.png", masks / "sick.png")  # the scan itself, in --masks
    (data / "sick_mask.png").unlink()
    args = ["-q", "evaluate", "-m", str(model), "--normal", str(data / "healthy.png")]
    args += ["--anomalous", str(data / "sick.png"), "--masks", str(masks)]
    args += ["-o", str(tmp_path / "out2"), "--acae-epochs", "0", "--mapping", "encoder"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert f"{masks / 'sick.png'}: holds" in err
    assert "distinct values; expected a lesion mask" in err
    assert err.count("\n") == 0

"""The paper's evaluation as one job: Table 1, Fig. 2b, Fig. 3 and Fig. 4 from one command.

:func:`run_evaluation` scores healthy and diseased test inputs with a trained model, labels
patches and B-scans from lesion masks (the paper's rule: a patch is positive if it holds a
lesion pixel), maps every patch twice (AnoGAN's loss of eq. 5, and the GAN_R baseline's
with the reference discrimination loss), trains the aCAE baseline on the model's own
training inputs, and writes ``metrics.json`` (AUCs with eye-level bootstrap intervals),
``table1.md``, ``bscan_scores.csv`` (every test B-scan: label and B-scan scores, each
oriented so that higher is more anomalous), ``patch_scores.csv`` (every test patch: box,
label, lesion fraction, scores) and the figures. The metric and plotting functions live in
:mod:`napari_anogan.evaluation.metrics` and :mod:`napari_anogan.evaluation.figures`; this
module only gathers the numbers they take.

Over 500 lines on purpose: one job gathers every number of the evaluation (patch and B-scan
tables, masks, the baselines) from the one scoring path; metrics and plots live elsewhere.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from napari_anogan import settings as defaults
from napari_anogan.errors import InputError
from napari_anogan.events import EventKind, ProgressEvent
from napari_anogan.io import read_volume, write_csv
from napari_anogan.scoring.scores import GAN_R_SCORE_NAMES, HIGHER_IS_NORMAL, PATCH_SCORE_NAMES

logger = logging.getLogger(__name__)


def _mask_name(stem: str) -> re.Pattern:
    """Return the pattern of the file names of a mask of ``stem``.

    ``stem`` + ``_mask``, ``-mask``, ``_label(s)``, ``_seg`` or ``_<anything>-mask`` /
    ``_<anything>_mask`` (OCTDL's ``X_drusen-mask``), then a dot.
    """
    return re.compile(
        rf"^{re.escape(stem)}(?:[_-](?:mask|labels?|seg)|_[^.]*[-_]mask)\.", re.IGNORECASE
    )


def find_mask(path: str | Path, masks_dir: str | Path | None = None) -> Path | None:
    """Find the lesion mask of an input.

    For ``X.ext`` (``X.ome.tif`` too): a file beside it or in ``masks_dir`` named ``X``
    plus a mask suffix (``_mask``, ``-mask``, ``_label``, ``_labels``, ``_seg``, or
    ``_<anything>-mask`` such as ``X_drusen-mask.png``), else a file ``X.*`` in
    ``masks_dir`` that is not the input itself. Returns None when there is none; the
    match is logged.
    """
    path = Path(path)
    name = path.name
    stem = name[: -len(".ome.tif")] if name.lower().endswith(".ome.tif") else path.stem
    pattern = _mask_name(stem)
    folders = [path.parent]
    if masks_dir is not None:
        folder = Path(masks_dir)
        if not folder.is_dir():
            raise InputError("masks folder does not exist", folder)
        folders.append(folder)
    found = None
    for folder in folders:
        found = next((c for c in sorted(folder.iterdir()) if pattern.match(c.name)), None)
        if found is not None:
            break
    if found is None and masks_dir is not None:
        same = [
            c
            for c in sorted(Path(masks_dir).iterdir())
            if c.name.lower().startswith(stem.lower() + ".") and c.resolve() != path.resolve()
        ]
        found = same[0] if same else None
    if found is not None:
        logger.info("%s: mask %s", path, found)
    return found


@dataclass
class _Scored:
    """Patch-level numbers gathered over the test inputs."""

    scores: dict[str, list[np.ndarray]] = field(default_factory=dict)
    labels: list[np.ndarray] = field(default_factory=list)
    bscan_scores: dict[str, list[np.ndarray]] = field(default_factory=dict)
    bscan_labels: list[np.ndarray] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    recons: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    groups: list[np.ndarray] = field(default_factory=list)
    pixel_residual: list[np.ndarray] = field(default_factory=list)
    pixel_mask: list[np.ndarray] = field(default_factory=list)
    pixel_valid: list[np.ndarray] = field(default_factory=list)
    patch_inputs: list[np.ndarray] = field(default_factory=list)
    bscan_inputs: list[np.ndarray] = field(default_factory=list)
    tables: list[dict[str, np.ndarray]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    fits: dict[str, dict] = field(default_factory=dict)
    mask_files: list[str | None] = field(default_factory=list)

    def cat(self, name: str) -> np.ndarray:
        return np.concatenate(self.scores[name]) if self.scores.get(name) else np.array([])


def _bscan_aggregate(
    name: str, slices: np.ndarray, values: np.ndarray, n: int, top_k: int
) -> np.ndarray:
    from napari_anogan.scoring import aggregate_bscans

    if name in HIGHER_IS_NORMAL:
        # Aggregate on the anomalous orientation, then turn back (evaluate flips it again).
        return 1.0 - aggregate_bscans(slices, 1.0 - values, n, top_k=top_k)
    return aggregate_bscans(slices, values, n, top_k=top_k)


def _score_input(
    path: Path,
    anomalous: bool,
    model,
    settings,
    masks_dir,
    acae,
    out: _Scored,
) -> Generator[ProgressEvent, None, None]:
    from napari_anogan.evaluation.acae import acae_scores
    from napari_anogan.evaluation.labels import load_mask, patch_labels_from_mask
    from napari_anogan.mapping import map_to_latent
    from napari_anogan.pipeline import score_volume
    from napari_anogan.scoring import assemble_heatmap

    volume = read_volume(path)
    mask_path = find_mask(path, masks_dir)
    out.mask_files.append(None if mask_path is None else str(mask_path))
    mask = None
    if mask_path is not None:
        lesion_labels = load_mask(mask_path, path, volume.shape)
        mask = lesion_labels > 0
    scored = yield from score_volume(volume, model, settings, keep_patches=True)
    geometry, patches, mapped = scored.geometry, scored.mapped, scored.mapped.mapping
    size = patches.images.shape[-1]
    n = len(patches.coords)
    if mask is not None:
        labels_flat = geometry.raw_to_flat_image(lesion_labels)
        mask_flat = labels_flat > 0
        labels = patch_labels_from_mask(mask_flat, patches.coords, size)
        bscan_lab = mask.reshape(mask.shape[0], -1).any(axis=1)
    else:
        if anomalous:
            logger.warning("%s: no mask; every patch and B-scan counts as anomalous", path)
        labels = np.full(n, anomalous)
        bscan_lab = np.full(volume.shape[0], anomalous)
    # The mapping as it ran (a hybrid request without an encoder ran iterative), with the
    # reference loss. With no step (encoder mode) z = E(x) whatever the loss: reuse it.
    gan_r_config = replace(mapped.config, discrimination="reference", keep_images=False)
    gan_r = mapped
    if gan_r_config.n_steps > 0:
        yield ProgressEvent(EventKind.STAGE, 0, 0, message=f"GAN_R mapping of {path.name}")
        gan_r = yield from map_to_latent(
            model.generator,
            model.discriminator,
            patches.images,
            gan_r_config,
            encoder=getattr(model, "encoder", None),
        )
    slices = patches.coords[:, 0]
    # The GAN_R scores come from a second mapping of the same patches whose loss uses the
    # reference discrimination loss (the paper: "the corresponding losses were used for the
    # mapping"), in the same mode and from the same start as AnoGAN's, not from the AnoGAN
    # mapping's z (the ``encoder`` mode takes no step: both share z = E(x)).
    values_of = {
        name: getattr(gan_r if name in GAN_R_SCORE_NAMES else mapped, name)
        for name in PATCH_SCORE_NAMES
    }
    if getattr(model, "feature_bank", None) is not None:
        values_of["feature_distance"] = scored.patches["feature_distance"]
    if acae is not None:
        a = acae_scores(acae, patches.images, lam=settings.lam, keep_images=False)
        values_of["acae"] = a["anomaly_score"]
    for name, values in values_of.items():
        values = np.asarray(values, dtype=np.float64)
        out.scores.setdefault(name, []).append(values)
        out.bscan_scores.setdefault(name, []).append(
            _bscan_aggregate(name, slices, values, volume.shape[0], settings.bscan_top_k)
        )
    index = len(out.labels)
    out.names.append(path.name)
    out.fits[path.name] = scored.model_fit
    out.patch_inputs.append(np.full(n, index))
    out.bscan_inputs.append(np.full(volume.shape[0], index))
    group = np.full(n, "diseased" if anomalous else "test healthy")
    table = {
        "input": np.full(n, path.name),
        "group": group,
        "slice": slices.astype(np.int64),
        "row": scored.patches["row"],
        "col": scored.patches["col"],
        "height": scored.patches["height"],
        "width": scored.patches["width"],
        "flat_row": patches.coords[:, 1].astype(np.int64),
        "flat_col": patches.coords[:, 2].astype(np.int64),
        "label": np.asarray(labels, bool).astype(np.int64),
    }
    out.labels.append(np.asarray(labels, bool))
    out.bscan_labels.append(np.asarray(bscan_lab, bool))
    out.images.append(patches.images[:, 0])
    out.recons.append(mapped.reconstruction[:, 0])
    out.groups.append(group)
    if mask is not None:
        windows = patch_masks(labels_flat, patches.coords, size)
        out.masks.append(windows > 0)
        table["lesion_fraction"] = out.masks[-1].mean(axis=(1, 2))
        table["lesion_label"] = dominant_labels(windows)
        residual_flat = assemble_heatmap(mapped.residual_image, patches.coords, geometry.band_shape)
        residual_raw = geometry.flat_to_raw_image(residual_flat)
        out.pixel_residual.append(np.nan_to_num(residual_raw, nan=0.0))
        out.pixel_mask.append(mask)
        out.pixel_valid.append(np.isfinite(residual_raw))
    else:
        out.masks.append(np.zeros((n, size, size), dtype=bool))
        # Without a mask a healthy input has no lesion; a diseased one's are unknown.
        table["lesion_fraction"] = np.full(n, np.nan if anomalous else 0.0)
        table["lesion_label"] = np.full(n, -1 if anomalous else 0)
    for name, values in out.scores.items():
        table[name] = values[-1]
    out.tables.append(table)


def _write_bscan_table(scored: _Scored, path: Path) -> None:
    """One row per test B-scan: its input, group, label and every B-scan score."""
    from napari_anogan.evaluation.metrics import orient_scores

    names = list(scored.bscan_scores)

    def rows():
        for i, name in enumerate(scored.names):
            labels = scored.bscan_labels[i]
            oriented = {k: orient_scores(k, scored.bscan_scores[k][i]) for k in names}
            for s in range(len(labels)):
                yield {
                    "input": name,
                    "group": str(scored.groups[i][0]),
                    "slice": s,
                    "label": int(labels[s]),
                    **{k: float(oriented[k][s]) for k in names},
                }

    write_csv(path, rows(), columns=["input", "group", "slice", "label", *names])


def _write_patch_table(tables: list[dict[str, np.ndarray]], path: Path) -> None:
    """One row per test patch: where it is, its label and every score."""
    columns = list(tables[0]) if tables else ["input"]

    def rows():
        for table in tables:
            for i in range(len(table["input"])):
                yield {name: table[name][i] for name in columns}

    write_csv(path, rows(), columns=columns)


def patch_masks(mask_flat: np.ndarray, coords: np.ndarray, size: int) -> np.ndarray:
    """Cut the (S, Hb, Wr) flat mask (bool or labels) into the (N, P, P) patch windows."""
    s, r, c = (coords[:, i][:, None, None] for i in range(3))
    rr = np.arange(size)[None, :, None]
    cc = np.arange(size)[None, None, :]
    rows = np.clip(r + rr, 0, mask_flat.shape[1] - 1)
    cols = np.clip(c + cc, 0, mask_flat.shape[2] - 1)
    inside = (r + rr < mask_flat.shape[1]) & (c + cc < mask_flat.shape[2])
    return np.where(inside, mask_flat[s, rows, cols], 0).astype(mask_flat.dtype)


def dominant_labels(windows: np.ndarray) -> np.ndarray:
    """Most frequent non-zero label in each (P, P) window of a label mask; 0 where none."""
    values = np.unique(windows[windows != 0])
    if not values.size:
        return np.zeros(len(windows), dtype=np.int64)
    counts = np.stack([(windows == v).sum(axis=(1, 2)) for v in values], axis=1)
    return np.where(counts.max(axis=1) > 0, values[counts.argmax(axis=1)], 0).astype(np.int64)


#: Training scans preprocessed at least for Fig. 4c,d's 'training healthy' patches.
TRAINING_SCANS_FOR_FIGURES = 8


def _training_scores(model, settings, n_max: int, seed: int) -> Generator:
    """Map grid patches of the model's training B-scans (Fig. 4c,d 'training healthy').

    Grid patches, cut as the test patches are (``settings.stride``), so the three
    distributions of Fig. 4c,d differ only in where the B-scans come from; ``n_max`` of
    them, a seeded random choice. The training scans are taken in a seeded random
    order until there are ``8 * n_max`` patches to choose from, from at least
    :data:`TRAINING_SCANS_FOR_FIGURES` scans: not all of them are preprocessed again
    (the aCAE baseline has just done that) for a few hundred patches.
    """
    from napari_anogan.mapping import map_to_latent
    from napari_anogan.pipeline import mapping_config, model_preprocess_config
    from napari_anogan.preprocess import grid_patches, preprocess_volume

    inputs = _training_inputs(model)
    if not inputs:
        return None, None
    held = {
        tuple(p)
        for p in (model.training or {}).get("extra", {}).get("data", {}).get("holdout_bscans", [])
    }
    cfg = model_preprocess_config(model)
    rng = np.random.default_rng(seed)
    chunks, n_patches = [], 0
    order = rng.permutation(len(inputs))
    for done, i in enumerate(order):
        if done >= TRAINING_SCANS_FOR_FIGURES and n_patches >= 8 * n_max:
            break
        path = inputs[i]
        message = f"training scan {path.name}"
        expected = max(done + 1, min(len(inputs), TRAINING_SCANS_FOR_FIGURES))
        yield ProgressEvent(EventKind.STAGE, done, expected, message=message)
        pre = preprocess_volume(read_volume(path), cfg)
        trained = [s for s in range(pre.flat.shape[0]) if (int(i), s) not in held]
        if trained:
            chunks.append(grid_patches(pre, stride=settings.stride, slices=trained).images)
            n_patches += len(chunks[-1])
    patches = np.concatenate(chunks).astype(np.float32)
    take = np.sort(rng.choice(len(patches), size=min(n_max, len(patches)), replace=False))
    mapped = yield from map_to_latent(
        model.generator,
        model.discriminator,
        patches[take],
        mapping_config(settings),
        encoder=getattr(model, "encoder", None),
    )
    return patches[take], mapped


def _training_inputs(model) -> list[Path]:
    data = (model.training or {}).get("extra", {}).get("data", {})
    inputs = [Path(p) for p in data.get("inputs", [])]
    missing = [p for p in inputs if not p.exists()]
    if missing:
        logger.warning("training inputs no longer found: %s", ", ".join(map(str, missing)))
        return []
    return inputs


def run_evaluation(
    model,
    *,
    normal: Sequence[str | Path],
    anomalous: Sequence[str | Path],
    outdir: str | Path,
    settings=None,
    masks: str | Path | None = None,
    acae_epochs: int = defaults.ACAE_EPOCHS,
    acae_train: Sequence[str | Path] | None = None,
    patches_per_scan: int = defaults.PATCHES_PER_SCAN,
    figures: bool = True,
) -> Generator[ProgressEvent, None, dict]:
    """Evaluate a model on labelled test data, as in the paper's section 3.

    Parameters
    ----------
    model : LoadedModel or path
        The healthy model.
    normal, anomalous : sequence of path
        Healthy and diseased test inputs (cases not used for training).
    outdir : path
        Folder for ``metrics.json``, ``table1.md``, ``patch_scores.csv`` and the figures.
    settings : ScoreSettings, optional
        Mapping settings (default: the scoring defaults: hybrid mapping, λ = ``SCORING_LAM``).
    masks : path, optional
        Folder of lesion masks named like their inputs (``X_mask.ext`` beside an input is
        found without it).
    acae_epochs : int
        Epochs of the aCAE baseline; 0 skips it.
    acae_train : sequence of path, optional
        Healthy inputs to train the aCAE on; default: the model's own training inputs.
    patches_per_scan : int
        Random patches per B-scan for the aCAE training set.
    figures : bool
        Also draw Fig. 2b, 3 and 4.

    Returns
    -------
    dict
        The ``metrics.json`` content (see :func:`napari_anogan.evaluation.metrics.evaluate_scores`).
    """
    from napari_anogan.evaluation.acae import train_acae
    from napari_anogan.evaluation.metrics import evaluate_scores
    from napari_anogan.evaluation.table import save_metrics, table1
    from napari_anogan.pipeline import (
        ScoreSettings,
        collect_training_patches,
        load_model,
        model_preprocess_config,
    )

    settings = settings or ScoreSettings()
    model = load_model(model)
    outdir = Path(outdir)
    acae = None
    train_inputs = [Path(p) for p in acae_train] if acae_train else _training_inputs(model)
    if acae_epochs > 0 and train_inputs:
        patches, _, _, _ = yield from collect_training_patches(
            train_inputs, model_preprocess_config(model), patches_per_scan, seed=settings.seed
        )
        yield ProgressEvent(EventKind.STAGE, 0, 0, message="training aCAE baseline")
        acae = yield from train_acae(
            patches,
            model.model_config,
            epochs=acae_epochs,
            seed=settings.seed,
            device=settings.device if settings.device != "auto" else "cpu",
        )
    elif acae_epochs > 0:
        logger.warning("no training inputs for the aCAE baseline: its row stays empty")

    scored = _Scored()
    inputs = [(Path(p), False) for p in normal] + [(Path(p), True) for p in anomalous]
    for i, (path, is_anomalous) in enumerate(inputs):
        yield ProgressEvent(EventKind.STAGE, i, len(inputs), message=f"scoring {path.name}")
        yield from _score_input(path, is_anomalous, model, settings, masks, acae, scored)

    labels = np.concatenate(scored.labels)
    patch_scores = {name: scored.cat(name) for name in scored.scores}
    bscan_scores = {k: np.concatenate(v) for k, v in scored.bscan_scores.items()}
    pixel = None
    if scored.pixel_residual:
        pixel = (
            np.concatenate(scored.pixel_residual),
            np.concatenate(scored.pixel_mask),
            np.concatenate(scored.pixel_valid),
        )
    metrics = evaluate_scores(
        patch_scores,
        labels,
        bscan_scores,
        np.concatenate(scored.bscan_labels),
        pixel,
        patch_groups=np.concatenate(scored.patch_inputs),
        bscan_groups=np.concatenate(scored.bscan_inputs),
        seed=settings.seed,
    )
    metrics["settings"] = settings.to_dict()
    metrics["model_fit"] = _fit_summary(scored.fits, getattr(model, "path", None))
    # which mask labelled which input (None: labelled by its group)
    metrics["masks"] = dict(zip(scored.names, scored.mask_files, strict=True))
    save_metrics(metrics, outdir / "metrics.json")
    _write_patch_table(scored.tables, outdir / "patch_scores.csv")
    _write_bscan_table(scored, outdir / "bscan_scores.csv")
    (outdir / "table1.md").write_text(table1(metrics) + "\n")
    if figures:
        yield ProgressEvent(EventKind.STAGE, 0, 0, message="figures")
        train_patches, train_mapped = yield from _training_scores(
            model, settings, n_max=256, seed=settings.seed
        )
        _draw_figures(model, scored, labels, patch_scores, train_patches, train_mapped, outdir)
    yield ProgressEvent(EventKind.DONE, 1, 1, message=f"metrics in {outdir}")
    return metrics


def _fit_summary(fits: dict[str, dict], model_path) -> dict:
    """Model-fit verdicts of the test inputs; each input the model does not fit is logged."""
    from napari_anogan.scoring.fit import fit_message

    for name, fit in fits.items():
        message = fit_message(fit, Path(model_path or "model").name, name)
        if message:
            logger.warning(message)
    rules = {fit.get("rule") for fit in fits.values()}
    return {
        "verdicts": {name: fit.get("verdict") for name, fit in fits.items()},
        "does_not_fit": [n for n, f in fits.items() if f.get("verdict") == "does_not_fit"],
        "rule": rules.pop() if len(rules) == 1 else None,
    }


def _draw_figures(model, scored, labels, patch_scores, train_patches, train_mapped, outdir):
    import torch

    from napari_anogan.evaluation.figures import (
        FIG4A_SCORES,
        FIG4B_SCORES,
        fig2b_tsne,
        fig3_panel,
        plot_rocs,
        plot_score_distributions,
    )
    from napari_anogan.evaluation.metrics import roc_curves

    curves = roc_curves(patch_scores, labels)
    plot_rocs({k: curves[k] for k in FIG4A_SCORES if k in curves}, outdir / "fig4a_roc_models.png")
    plot_rocs({k: curves[k] for k in FIG4B_SCORES if k in curves}, outdir / "fig4b_roc_scores.png")
    groups = np.concatenate(scored.groups)
    for name, fname in (("residual_score", "fig4c"), ("discrimination_score", "fig4d")):
        by_group = {}
        if train_mapped is not None:
            by_group["training healthy"] = np.asarray(getattr(train_mapped, name))
        by_group["test healthy"] = patch_scores[name][groups == "test healthy"]
        by_group["diseased"] = patch_scores[name][labels]
        plot_score_distributions(by_group, outdir / f"{fname}_{name}.png", name)

    images = np.concatenate(scored.images)
    recons = np.concatenate(scored.recons)
    masks = np.concatenate(scored.masks)
    r, d = patch_scores["residual_score"], patch_scores["discrimination_score"]
    healthy = np.flatnonzero(~labels)
    # Operating thresholds of the bars: the 95th percentile of the healthy test patches.
    thresholds = (float(np.percentile(r[healthy], 95)), float(np.percentile(d[healthy], 95)))
    rng = np.random.default_rng(0)
    pick_h = rng.choice(healthy, size=min(4, healthy.size), replace=False)
    positive = np.flatnonzero(labels)
    pick_a = positive[np.argsort(patch_scores["anomaly_score"][positive])[::-1][:4]]
    cols_q, cols_r, cols_m, cols_rs, cols_ds, cols_g = [], [], [], [], [], []
    if train_mapped is not None:
        # Evenly spaced over the grid patches (neighbours along a B-scan look alike).
        pick_t = np.linspace(0, len(train_patches) - 1, min(4, len(train_patches))).astype(int)
        k = len(pick_t)
        cols_q.append(train_patches[pick_t, 0])
        cols_r.append(train_mapped.reconstruction[pick_t, 0])
        cols_m.extend([None] * k)
        cols_rs.append(train_mapped.residual_score[pick_t])
        cols_ds.append(train_mapped.discrimination_score[pick_t])
        cols_g.extend(["train healthy"] * k)
    for pick, group in ((pick_h, "test healthy"), (pick_a, "diseased")):
        cols_q.append(images[pick])
        cols_r.append(recons[pick])
        cols_m.extend(list(masks[pick]))
        cols_rs.append(r[pick])
        cols_ds.append(d[pick])
        cols_g.extend([group] * len(pick))
    fig3_panel(
        np.concatenate(cols_q),
        np.concatenate(cols_r),
        np.concatenate(cols_rs),
        np.concatenate(cols_ds),
        thresholds,
        cols_m,
        cols_g,
        outdir / "fig3_patches.png",
    )
    # Fig. 2b: discriminator features (last conv layer) of normal vs anomalous patches.
    take = np.concatenate([healthy[:300], positive[:300]])
    with torch.no_grad():
        x = torch.from_numpy(images[take][:, None].astype(np.float32))
        features = model.discriminator.features(x).reshape(len(take), -1).numpy()
    if len(take) >= 3 and labels[take].any() and (~labels[take]).any():
        fig2b_tsne(features, labels[take], outdir / "fig2b_tsne.png", max_iter=500)

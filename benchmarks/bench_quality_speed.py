"""Quality against speed of the mapping modes: patch and B-scan AUC with wall time.

On a labelled synthetic test set (``data/synthetic``: unseen healthy eyes in
``test_normal/``, diseased eyes in ``test_anomalous/`` with lesion masks in ``masks/``,
written by ``scripts/make_synthetic_dataset.py``) and a model trained on the healthy
training eyes (with an encoder: ``napari-anogan train --encoder``), the grid patches of
every ``--slice-step``-th B-scan are mapped with:

* ``iterative-500 (paper)``: random start, 500 steps, no early stopping, last iterate,
  the paper's λ = 0.1;
* ``iterative-500``: the same with early stopping and best iterate (the library default
  for the iterative mode) and ``--lam``;
* ``hybrid K``: encoder start, then K steps (early stopping, best iterate) for each K of
  ``--hybrid-steps``;
* ``encoder``: z = E(x) only.

Every mode but the paper's maps and scores with ``--lam`` (default: scoring's, 0.7).

A patch is positive if it holds a lesion pixel (the paper's rule), a B-scan if its mask
does; a B-scan's score is the mean of its top-3 patch anomaly scores. Prints ONE JSON
object: a ``rows`` list (method, patch_auc, bscan_auc, seconds, patches_per_s,
mean_steps) and the set-up; ``--volume`` adds ``default_volume_seconds``: the wall time of
``score_volume`` with the default :class:`~napari_anogan.pipeline.ScoreSettings` on a
synthetic 49 x 496 x 512 volume (preprocessing included).

    .venv/bin/python benchmarks/bench_quality_speed.py --volume
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from napari_anogan.checkpoint import load_checkpoint
from napari_anogan.device import amp_by_default
from napari_anogan.evaluation.experiment import find_mask
from napari_anogan.evaluation.labels import patch_labels_from_mask
from napari_anogan.evaluation.metrics import roc
from napari_anogan.events import drain
from napari_anogan.io import read_volume
from napari_anogan.mapping import MappingConfig, map_to_latent
from napari_anogan.preprocess import PreprocessConfig, grid_patches, preprocess_volume
from napari_anogan.scoring import SCORING_LAM, aggregate_bscans


def test_set(model, data: Path, slice_step: int, stride: int):
    """Patches, patch labels and B-scan ids/labels of the selected B-scans."""
    cfg = PreprocessConfig.from_dict(model.preprocess_config)
    images, labels, bscan_of_patch, bscan_labels = [], [], [], []
    files = sorted((data / "test_normal").glob("*.ome.tif"))
    files += sorted((data / "test_anomalous").glob("*.ome.tif"))
    for path in files:
        volume = read_volume(path)
        slices = list(range(0, volume.shape[0], slice_step))
        pre = preprocess_volume(volume, cfg)
        patches = grid_patches(pre, stride=stride, slices=slices)
        mask_path = find_mask(path, data / "masks")
        if mask_path is not None:
            mask = read_volume(mask_path).data > 0
            flat = pre.geometry.raw_to_flat_image(mask.astype(np.uint8)) > 0
            lab = patch_labels_from_mask(flat, patches.coords, cfg.patch_size)
            bl = mask.reshape(mask.shape[0], -1).any(axis=1)[slices]
        else:
            lab = np.zeros(len(patches.coords), bool)
            bl = np.zeros(len(slices), bool)
        base = len(bscan_labels)
        local = {s: i for i, s in enumerate(slices)}
        images.append(patches.images)
        labels.append(lab)
        bscan_of_patch.append(base + np.array([local[int(s)] for s in patches.coords[:, 0]]))
        bscan_labels.extend(bl.tolist())
    return (
        np.concatenate(images).astype(np.float32),
        np.concatenate(labels),
        np.concatenate(bscan_of_patch),
        np.asarray(bscan_labels, bool),
        [p.name for p in files],
    )


def evaluate(model, x, labels, bscan_id, bscan_labels, name: str, cfg: MappingConfig) -> dict:
    start = time.perf_counter()
    res = drain(map_to_latent(model.generator, model.discriminator, x, cfg, encoder=model.encoder))
    seconds = time.perf_counter() - start
    bscan_scores = aggregate_bscans(bscan_id, res.anomaly_score, len(bscan_labels))
    ok = np.isfinite(bscan_scores)
    return {
        "method": name,
        "mode": res.config.mode,
        "patch_auc": roc(labels, res.anomaly_score)["auc"],
        "bscan_auc": roc(bscan_labels[ok], bscan_scores[ok])["auc"],
        "patch_auc_residual": roc(labels, res.residual_score)["auc"],
        "seconds": seconds,
        "patches_per_s": len(x) / seconds,
        "mean_steps": float(res.steps_taken.mean()),
        "mean_anomaly_score": float(res.anomaly_score.mean()),
        "load_1min": os.getloadavg()[0],
    }


def default_volume_seconds(model) -> dict:
    """Wall time of scoring a 49 x 496 x 512 volume with the default settings."""
    from napari_anogan.datasets.synthetic import make_volume
    from napari_anogan.io.volume import Volume
    from napari_anogan.pipeline import ScoreSettings, score_volume

    syn = make_volume(49, 496, 512, lesions=["irf", "srf", "drusen"], seed=4242)
    volume = Volume(syn.data, spacing=syn.spacing, name="bench49")
    settings = ScoreSettings()
    start = time.perf_counter()
    result = drain(score_volume(volume, model, settings))
    return {
        "default_volume_seconds": time.perf_counter() - start,
        "default_volume_patches": len(result.patches["slice"]),
        "default_settings": settings.to_dict(),
        "default_volume_load_1min": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="sample_data/anogan_small.pt")
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--slice-step", type=int, default=4, help="use every n-th B-scan")
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--hybrid-steps", type=int, nargs="*", default=[5, 10, 20, 50])
    parser.add_argument("--lr", type=float, default=None, help="hybrid Adam lr")
    parser.add_argument("--lam", type=float, default=SCORING_LAM, help="λ of eq. (5)/(6)")
    parser.add_argument("--skip-paper", action="store_true", help="skip iterative-500 (slow)")
    parser.add_argument("--volume", action="store_true", help="also time a 49-B-scan volume")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--amp", choices=("auto", "on", "off"), default="auto", help="mixed-precision search"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    model = load_checkpoint(args.model)
    if model.encoder is None:
        raise SystemExit(f"{args.model} has no encoder: add one with `train --encoder --resume`")
    x, labels, bscan_id, bscan_labels, files = test_set(
        model, args.data, args.slice_step, args.stride
    )
    amp = {"auto": None, "on": True, "off": False}[args.amp]
    base = {"batch_size": args.batch_size, "device": "cpu", "keep_images": False, "amp": amp}
    paper = {**base, "lam": 0.1}
    base["lam"] = args.lam
    hyb = {} if args.lr is None else {"lr": args.lr}
    methods = []
    if not args.skip_paper:
        methods.append(
            (
                "iterative-500 (paper)",
                MappingConfig(mode="iterative", early_stop=False, keep_best=False, **paper),
            )
        )
        methods.append(("iterative-500", MappingConfig(mode="iterative", **base)))
    for k in args.hybrid_steps:
        methods.append((f"hybrid {k}", MappingConfig(mode="hybrid", hybrid_steps=k, **hyb, **base)))
    methods.append(("encoder", MappingConfig(mode="encoder", **base)))
    rows = [evaluate(model, x, labels, bscan_id, bscan_labels, n, c) for n, c in methods]
    out = {
        "rows": rows,
        "model": str(args.model),
        "preset": model.model_config.preset,
        "test_files": files,
        "slice_step": args.slice_step,
        "lam": args.lam,
        "n_patches": len(x),
        "n_positive_patches": int(labels.sum()),
        "n_bscans": len(bscan_labels),
        "n_positive_bscans": int(bscan_labels.sum()),
        "threads": torch.get_num_threads(),
        "amp": amp_by_default(torch.device("cpu")) if amp is None else amp,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "load_1min_before": load_before,
    }
    if args.volume:
        out.update(default_volume_seconds(model))
    out["load_1min_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

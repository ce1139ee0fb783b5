"""Rebuild the bundled healthy model ``sample_data/anogan_small.pt``.

1. writes the synthetic data set (``scripts/make_synthetic_dataset.py``) if missing;
2. trains the ``small`` preset on its healthy training eyes, then its f-AnoGAN encoder
   (``napari-anogan train --encoder``);
3. copies the checkpoint without optimiser states (they are only needed to resume
   training) into ``sample_data/``, so the bundled file stays a few MB.

Usage::

    python scripts/train_bundled_model.py            # ~25 min on 2 CPU cores with AMX
    python scripts/train_bundled_model.py --reference-only

``--reference-only`` keeps the bundled networks and recomputes only their healthy
reference (grid patches of the held-out training B-scans, cut as scoring cuts them now,
mapped with the scoring default λ), for when the scoring grid or λ has changed. On a CPU
without AMX a full rebuild trains in float32 and gives another model than the bundled one.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from napari_anogan.checkpoint import read_checkpoint, save_checkpoint
from napari_anogan.model_card import SYNTHETIC_DEMO

logger = logging.getLogger("train_bundled_model")

ROOT = Path(__file__).resolve().parents[1]


def release_copy(src: Path, dst: Path) -> None:
    """Copy a checkpoint without its optimiser states (loads and scores the same)."""
    ckpt = read_checkpoint(src)
    ckpt.pop("optimizers", None)
    save_checkpoint(dst, ckpt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Paths relative to the repository root, which is also the working directory of the
    # training run: the checkpoint records its training inputs, portably.
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--work", type=Path, default=Path("results/anogan_small_full.pt"))
    parser.add_argument("--out", type=Path, default=Path("sample_data/anogan_small.pt"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patches-per-scan", type=int, default=64)
    parser.add_argument("--encoder-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--reference-only",
        action="store_true",
        help="recompute the healthy reference of --out, keeping its networks",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    os.chdir(ROOT)
    if args.reference_only:
        from napari_anogan.events import drain
        from napari_anogan.pipeline import reference_patches_of
        from napari_anogan.scoring import SCORING_LAM
        from napari_anogan.training import refresh_reference

        patches = drain(reference_patches_of(args.out))
        reference = drain(refresh_reference(args.out, patches, lam=SCORING_LAM))
        logger.info("healthy reference of %s: %d patches", args.out, reference["n_patches"])
        return
    if not (args.data / "train").is_dir():
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "make_synthetic_dataset.py"),
                "-o",
                str(args.data),
            ],
            check=True,
        )
    args.work.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "napari_anogan.cli",
        "train",
        *sorted(str(p) for p in (args.data / "train").glob("*.ome.tif")),
        "-o",
        str(args.work),
        "--preset",
        "small",
        "--epochs",
        str(args.epochs),
        "--patches-per-scan",
        str(args.patches_per_scan),
        "--seed",
        str(args.seed),
        "--data-kind",
        "synthetic",
        "--description",
        SYNTHETIC_DEMO,
        "--encoder",  # f-AnoGAN encoder for the fast hybrid/encoder scoring
        "--encoder-epochs",
        str(args.encoder_epochs),
    ]
    if args.resume:
        command.append("--resume")
    logger.info("running: %s", " ".join(command))
    subprocess.run(command, check=True)
    release_copy(args.work, args.out)
    logger.info("bundled model written to %s (%.1f MB)", args.out, args.out.stat().st_size / 1e6)


if __name__ == "__main__":
    main()

"""Write a synthetic OCT data set: healthy training eyes and a disjoint labelled test set.

Every eye is a different seed of :func:`napari_anogan.datasets.synthetic.make_volume`; training,
test and validation eyes never share a seed (each group has 1,000 seeds of its own, and
none uses the bundled sample's seed 2017). Layout::

    OUT/train/healthy_XXX.ome.tif           healthy eyes for training
    OUT/test_normal/normal_XXX.ome.tif      unseen healthy eyes
    OUT/test_anomalous/diseased_XXX.ome.tif unseen eyes with planted lesions
    OUT/masks/diseased_XXX.ome.tif          their lesion masks (label values, 0 = healthy)

With ``--validation N``, N healthy and N diseased eyes of their own seeds are added
under ``OUT/validation/`` in the same layout (``test_normal``, ``test_anomalous``,
``masks``): a labelled set disjoint from both training and test, on which scoring
settings are chosen so that the test set is only ever used to report.

Example (the data behind the bundled model and the README's Table 1)::

    python scripts/make_synthetic_dataset.py -o data/synthetic
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from napari_anogan.datasets.synthetic import LESION_LABELS, make_volume
from napari_anogan.io import write_tiff

logger = logging.getLogger("make_synthetic_dataset")

TRAIN_SEED0 = 1000
NORMAL_SEED0 = 3000
DISEASED_SEED0 = 5000
VALIDATION_NORMAL_SEED0 = 4000
VALIDATION_DISEASED_SEED0 = 6000
SEEDS_PER_GROUP = 1000


def make_dataset(
    out: Path,
    *,
    n_train: int,
    n_normal: int,
    n_diseased: int,
    slices: int,
    height: int,
    width: int,
    n_validation: int = 0,
) -> None:
    """Write the data set to ``out`` (see the module docstring)."""
    if max(n_train, n_normal, n_diseased, n_validation) > SEEDS_PER_GROUP:
        raise SystemExit(f"at most {SEEDS_PER_GROUP} eyes per group (their seeds would overlap)")
    shape = {"n_slices": slices, "height": height, "width": width}
    (out / "train").mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        vol = make_volume(**shape, seed=TRAIN_SEED0 + i, vitreous_membrane=i % 4 == 3)
        write_tiff(out / "train" / f"healthy_{i:03d}.ome.tif", vol.data, spacing=vol.spacing)
    _labelled_set(out, shape, n_normal, n_diseased, NORMAL_SEED0, DISEASED_SEED0)
    if n_validation:
        _labelled_set(
            out / "validation",
            shape,
            n_validation,
            n_validation,
            VALIDATION_NORMAL_SEED0,
            VALIDATION_DISEASED_SEED0,
        )


def _labelled_set(
    out: Path, shape: dict, n_normal: int, n_diseased: int, normal_seed0: int, diseased_seed0: int
) -> None:
    """Write healthy and diseased eyes with their masks under ``out``."""
    for sub in ("test_normal", "test_anomalous", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_normal):
        vol = make_volume(**shape, seed=normal_seed0 + i, vitreous_membrane=i % 4 == 3)
        write_tiff(out / "test_normal" / f"normal_{i:03d}.ome.tif", vol.data, spacing=vol.spacing)
    kinds = list(LESION_LABELS)
    for i in range(n_diseased):
        rng = np.random.default_rng(diseased_seed0 + i)
        lesions = list(rng.choice(kinds, size=2, replace=False))
        vol = make_volume(**shape, lesions=lesions, seed=diseased_seed0 + i)
        name = f"diseased_{i:03d}.ome.tif"
        write_tiff(out / "test_anomalous" / name, vol.data, spacing=vol.spacing)
        write_tiff(out / "masks" / name, vol.mask)
        logger.info("%s: lesions %s", name, ", ".join(lesions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--train", type=int, default=48, help="healthy training eyes")
    parser.add_argument("--normal", type=int, default=4, help="healthy test eyes")
    parser.add_argument("--diseased", type=int, default=4, help="diseased test eyes")
    parser.add_argument(
        "--validation", type=int, default=0, help="healthy and diseased validation eyes each"
    )
    parser.add_argument("--slices", type=int, default=16, help="B-scans per eye")
    parser.add_argument("--height", type=int, default=496)
    parser.add_argument("--width", type=int, default=512)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_dataset(
        args.out,
        n_train=args.train,
        n_normal=args.normal,
        n_diseased=args.diseased,
        slices=args.slices,
        height=args.height,
        width=args.width,
        n_validation=args.validation,
    )
    logger.info("data set written to %s", args.out)


if __name__ == "__main__":
    main()

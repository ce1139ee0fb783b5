"""Generate the bundled synthetic sample volume, its lesion mask and true boundaries.

Writes into ``sample_data/`` (or ``--out-dir``):

- ``sample_volume.ome.tif``: (S, H, W) uint8 B-scans, zlib-compressed OME-TIFF with
  physical pixel sizes in micrometres;
- ``sample_volume_mask.ome.tif``: same shape, 0 = healthy, else the lesion label
  (``napari_anogan.datasets.synthetic.LESION_LABELS``);
- ``sample_volume_boundaries.csv``: true ILM and Bruch's membrane rows per B-scan column;
- ``README.md``: how it was made (command, seed, lesions) and its licence.

With ``--figure PATH`` it also draws the example panel of the documentation
(``docs/synthetic_examples.png``): a healthy B-scan, one with a vitreous membrane, a
low-signal one, and one per lesion type with the mask outlined.

Usage::

    python scripts/make_sample_data.py
    python scripts/make_sample_data.py --figure docs/synthetic_examples.png
"""

from __future__ import annotations

import argparse
import csv
import logging
import shlex
import sys
from pathlib import Path

import numpy as np
import tifffile

from napari_anogan.datasets.synthetic import LESION_LABELS, SyntheticVolume, make_volume

logger = logging.getLogger("make_sample_data")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SEED = 2017
DEFAULT_LESIONS = list(LESION_LABELS)
LESION_NAMES = {
    "irf": "intraretinal cystoid fluid",
    "srf": "subretinal fluid",
    "ped": "pigment-epithelium detachment",
    "hrf": "hyperreflective foci",
    "drusen": "drusen",
}
# (seed, kwargs) of each panel of the documentation figure, picked to show the feature well
FIGURE_PANELS = [
    ("healthy", 3, {}),
    ("healthy, detached vitreous membrane", 7, {"vitreous_membrane": True}),
    ("healthy, low signal (signal=0.5)", 4, {"signal": 0.5}),
    ("IRF: intraretinal cysts", 5, {"lesions": ["irf"]}),
    ("SRF: subretinal fluid", 1, {"lesions": ["srf"]}),
    ("PED: RPE detachment", 2, {"lesions": ["ped"]}),
    ("HRF: hyperreflective foci", 1, {"lesions": ["hrf"]}),
    ("drusen", 6, {"lesions": ["drusen"]}),
]
OUTLINE_COLOURS = {1: "#ff4040", 2: "#40a0ff", 3: "#ffc800", 4: "#00ff78", 5: "#ff40ff"}


def write_ome_tiff(path: Path, data: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """Write an (S, H, W) uint8 array as zlib-compressed OME-TIFF with pixel sizes in um."""
    tifffile.imwrite(
        path,
        data,
        ome=True,
        compression="zlib",
        photometric="minisblack",
        metadata={
            "axes": "ZYX",
            "PhysicalSizeZ": spacing[0],
            "PhysicalSizeZUnit": "µm",
            "PhysicalSizeY": spacing[1],
            "PhysicalSizeYUnit": "µm",
            "PhysicalSizeX": spacing[2],
            "PhysicalSizeXUnit": "µm",
        },
    )


def write_boundaries(path: Path, vol: SyntheticVolume) -> None:
    """Write the true ILM and BM rows as CSV: slice,column,ilm_row,bm_row."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slice", "column", "ilm_row", "bm_row"])
        n_slices, width = vol.ilm.shape
        for s in range(n_slices):
            for c in range(width):
                writer.writerow([s, c, f"{vol.ilm[s, c]:.2f}", f"{vol.bm[s, c]:.2f}"])


def write_readme(path: Path, vol: SyntheticVolume, args: argparse.Namespace, command: str) -> None:
    """Write the README of the sample data: provenance, content, lesions, licence."""
    s, h, w = vol.data.shape
    lesion_rows = "\n".join(
        f"| {i + 1} | {r['type']} ({LESION_NAMES[r['type']]}) | {LESION_LABELS[r['type']]} "
        f"| {r['slices'][0]}-{r['slices'][1]} | {r['slice']} | {r['row']} | {r['col']} "
        f"| {r['height']} x {r['width']} |"
        for i, r in enumerate(vol.lesions)
    )
    labels = ", ".join(f"{v} = {k}" for k, v in LESION_LABELS.items())
    counts = ", ".join(
        f"{k}: {int((vol.mask == v).sum())}"
        for k, v in LESION_LABELS.items()
        if (vol.mask == v).any()
    )
    size = " x ".join(f"{v:g}" for v in vol.spacing)
    rows_volume = (
        f"| `sample_volume.ome.tif` | {s} B-scans of {h} x {w} pixels, uint8, axes ZYX "
        f"(slice, depth, width), zlib-compressed OME-TIFF; pixel size {size} µm "
        "(slice, depth, width) |"
    )
    rows_mask = (
        "| `sample_volume_mask.ome.tif` | lesion labels, same shape and metadata: "
        f"0 = healthy, {labels} |"
    )
    rows_csv = (
        "| `sample_volume_boundaries.csv` | true retina boundaries: "
        "`slice,column,ilm_row,bm_row` (ILM = top of the retina, BM = Bruch's membrane; "
        "rows as floats, pixel `r` covers `[r - 0.5, r + 0.5)`) |"
    )
    text = f"""# Bundled sample data

## Synthetic OCT volume (`sample_volume*`)

A small synthetic Spectralis-like macular OCT volume with lesions of mixed types, made by
`napari_anogan.datasets.synthetic.make_volume`. It is **generated data, not a patient scan**. The
napari sample, the `napari-anogan demo` command and the tests use it.

| file | content |
|---|---|
{rows_volume}
{rows_mask}
{rows_csv}

### How it was made

```
{command}
```

which calls

```python
make_volume({s}, {h}, {w}, lesions={args.lesions!r}, n_lesions={args.n_lesions}, seed={args.seed})
```

Regenerating with the same command and library version gives identical files.

### Planted lesions

Bounding boxes in pixels over all the B-scans a lesion touches; "largest on" is the
B-scan where it has the most pixels.

| # | type | label | B-scans | largest on | row | col | height x width |
|---|---|---|---|---|---|---|---|
{lesion_rows}

Lesion pixels per label: {counts}.

### Licence

Generated data, dedicated to the public domain under
[CC0 1.0](https://creativecommons.org/publicdomain/zero/1.0/).

## Other files

Other files in this folder (a real B-scan, the bundled model) are described, with their
credits and licences, in `CREDITS.md` where present.
"""
    path.write_text(text, encoding="utf-8")


def make_figure(path: Path) -> None:
    """Draw the documentation panel: healthy variants and one B-scan per lesion type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 6.4), dpi=100)
    for ax, (title, seed, kwargs) in zip(axes.ravel(), FIGURE_PANELS, strict=True):
        n_lesions = 1 if kwargs.get("lesions") else None
        vol = make_volume(9, 496, 512, seed=seed, n_lesions=n_lesions, **kwargs)
        s = vol.lesions[0]["slice"] if vol.lesions else 4
        top = int(max(0, np.nanmin(vol.ilm[s]) - 70))
        if vol.membrane is not None:
            top = int(max(0, min(top, np.nanmin(vol.membrane[s]) - 15)))
        bottom = min(vol.data.shape[1], top + 300)
        ax.imshow(vol.data[s, top:bottom], cmap="gray", vmin=0, vmax=255, aspect="auto")
        mask = vol.mask[s, top:bottom]
        for label, colour in OUTLINE_COLOURS.items():
            if (mask == label).any():
                ax.contour(mask == label, levels=[0.5], colors=[colour], linewidths=0.9)
        ax.set_title(f"{title} (seed {seed})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "napari_anogan.datasets.synthetic: synthetic B-scans (496 x 512, cropped in depth); "
        "coloured outlines = ground-truth lesion masks",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    logger.info("wrote %s", path)


def main(argv: list[str] | None = None) -> int:
    """Run the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "sample_data")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--height", type=int, default=496)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument(
        "--lesions", nargs="+", default=DEFAULT_LESIONS, choices=list(LESION_LABELS)
    )
    parser.add_argument("--n-lesions", type=int, default=6)
    parser.add_argument("--figure", type=Path, help="also draw the docs example panel here")
    parser.add_argument("--no-data", action="store_true", help="only draw --figure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if not args.no_data:
        vol = make_volume(
            args.slices,
            args.height,
            args.width,
            lesions=args.lesions,
            n_lesions=args.n_lesions,
            seed=args.seed,
        )
        out = args.out_dir
        out.mkdir(parents=True, exist_ok=True)
        write_ome_tiff(out / "sample_volume.ome.tif", vol.data, vol.spacing)
        write_ome_tiff(out / "sample_volume_mask.ome.tif", vol.mask, vol.spacing)
        write_boundaries(out / "sample_volume_boundaries.csv", vol)
        shown = ["python", "scripts/make_sample_data.py"] + (
            sys.argv[1:] if argv is None else list(argv)
        )
        write_readme(out / "README.md", vol, args, shlex.join(shown))
        for rec in vol.lesions:
            logger.info("lesion %s", rec)
        logger.info("wrote %s (shape %s, spacing %s um)", out, vol.data.shape, vol.spacing)
    if args.figure is not None:
        make_figure(args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())

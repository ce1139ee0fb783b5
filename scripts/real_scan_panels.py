"""Draw the detected retina boundaries on every real B-scan in ../shared/data/real-oct.

Writes ``docs/boundaries_kermany2018.png`` (6 Spectralis B-scans) and
``docs/boundaries_octdl_amd.png`` (13 wide-field AMD B-scans, cropped around the retina,
with the drusen annotation outlined in red). ILM in yellow, Bruch's membrane in cyan.

    .venv/bin/python scripts/real_scan_panels.py [--data DIR] [--out docs]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from napari_anogan.io import read_volume
from napari_anogan.preprocess import preprocess_volume

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "real-oct"
logger = logging.getLogger("real_scan_panels")


def _scans(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".tif", ".tiff"} and "mask" not in p.stem
    )


def _panel(files: list[Path], out: Path, *, ncols: int, crop: bool, title: str) -> None:
    nrows = int(np.ceil(len(files) / ncols))
    width_in = 6.5 * ncols
    fig = Figure(
        figsize=(width_in, (3.2 if crop else 4.4) * nrows + 0.4), dpi=90, layout="constrained"
    )
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, path in zip(axes, files, strict=False):
        vol = read_volume(path)
        pre = preprocess_volume(vol)
        img = vol.data[0]
        ilm, bm = pre.ilm[0], pre.bm[0]
        ax.imshow(img, cmap="gray", aspect="auto", interpolation="nearest")
        cols = np.arange(img.shape[1])
        ax.plot(cols, ilm, color="yellow", lw=0.7)
        ax.plot(cols, bm, color="cyan", lw=0.7)
        mask_path = path.with_name(f"{path.stem}_drusen-mask{path.suffix}")
        if mask_path.exists():
            mask = read_volume(mask_path).data[0] > 0
            if mask.any():
                ax.contour(mask, levels=[0.5], colors="red", linewidths=0.5)
        if crop:
            top = max(0, float(ilm.min()) - 30)
            bottom = min(img.shape[0], float(bm.max()) + 40)
            ax.set_ylim(bottom, top)
        ax.set_title(path.name, fontsize=9)
        ax.set_axis_off()
        logger.info(
            "%s: ILM %.0f-%.0f, BM %.0f-%.0f", path.name, ilm.min(), ilm.max(), bm.min(), bm.max()
        )
    for ax in axes[len(files) :]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    logger.info("wrote %s", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.data.is_dir():
        raise SystemExit(f"no real scans at {args.data}")
    legend = "ILM yellow, Bruch's membrane cyan"
    _panel(
        _scans(args.data / "kermany2018"),
        args.out / "boundaries_kermany2018.png",
        ncols=2,
        crop=False,
        title=f"kermany2018 (Spectralis B-scans): {legend}",
    )
    _panel(
        _scans(args.data / "octdl-amd"),
        args.out / "boundaries_octdl_amd.png",
        ncols=2,
        crop=True,
        title=f"octdl-amd (wide field, cropped to the retina): {legend}, drusen mask red",
    )


if __name__ == "__main__":
    main()

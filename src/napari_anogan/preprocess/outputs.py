"""Files of the ``preprocess`` command: flattened band, boundary table, overview image."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from napari_anogan._atomic import atomic_path
from napari_anogan.io.volume import Volume
from napari_anogan.io.writers import safe_stem
from napari_anogan.preprocess.flatten import PreprocessedVolume
from napari_anogan.preprocess.geometry import retina_rows

logger = logging.getLogger(__name__)


def _stem(volume: Volume) -> str:
    # one safe file name component: outputs never land outside the output folder
    return safe_stem(volume.name or (Path(volume.source).stem if volume.source else "volume"))


def draw_boundaries(
    path: Path, bscans: np.ndarray, ilm: np.ndarray, bm: np.ndarray, n_show: int = 4
) -> None:
    """Save a PNG with ILM (yellow) and BM (cyan) drawn on a few evenly spaced B-scans.

    Drawn pixel for pixel (B-scans narrower than
    :data:`~napari_anogan.settings.FIGURE_MIN_WIDTH` enlarged by a whole factor), each
    cropped to its retina and a margin, so the boundaries can be checked at 100 % zoom.

    Parameters
    ----------
    path : Path
        Output PNG (written as is; wrap in :func:`atomic_path` for atomicity).
    bscans : (S, H, W) array-like
        Grey values (any range); numpy or dask (only the drawn B-scans are read).
    ilm, bm : (S, W) ndarray
        Boundary rows in the same grid.
    n_show : int
        Most B-scans drawn.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # Agg canvas; no pyplot state, no GUI backend

    from napari_anogan.settings import FIGURE_MIN_WIDTH

    s = bscans.shape[0]
    picks = np.unique(np.linspace(0, s - 1, min(n_show, s)).round().astype(int))
    h, w = bscans.shape[1:]
    scale = max(1, round(FIGURE_MIN_WIDTH / max(w, 1)))
    margin, caption, gap, dpi = 12, 22, 8, 100
    crops = [(i, *retina_rows(ilm[i], bm[i], h, above=24, below=36)) for i in picks]
    fig_w = w * scale + 2 * margin
    fig_h = margin + sum(caption + (b - t) * scale + gap for _, t, b in crops)
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    cols = np.arange(w)
    y = margin / 2
    for i, top, bottom in crops:
        fig.text(
            margin / fig_w,
            1 - (y + 3) / fig_h,
            f"B-scan {i} (rows {top}-{bottom - 1}): ILM yellow, BM cyan",
            va="top",
            fontsize=10,
        )
        y += caption
        panel_h = (bottom - top) * scale
        ax = fig.add_axes(
            (margin / fig_w, 1 - (y + panel_h) / fig_h, w * scale / fig_w, panel_h / fig_h)
        )
        grey = np.asarray(bscans[i], dtype=np.float64)[top:bottom]
        finite = grey[np.isfinite(grey)]
        low, high = np.percentile(finite, [0.5, 99.8]) if finite.size else (0.0, 1.0)
        ax.imshow(
            grey,
            cmap="gray",
            vmin=low,
            vmax=high if high > low else low + 1,
            extent=(-0.5, w - 0.5, bottom - 0.5, top - 0.5),
            aspect="auto",
            interpolation="nearest",
        )
        ax.plot(cols, ilm[i], color="yellow", lw=1.0, label="ILM")
        ax.plot(cols, bm[i], color="cyan", lw=1.0, label="BM")
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(bottom - 0.5, top - 0.5)
        ax.set_axis_off()
        y += panel_h + gap
    fig.savefig(path, format="png", dpi=dpi, facecolor="white")


def write_preprocess_outputs(
    volume: Volume, pre: PreprocessedVolume, outdir: str | Path
) -> dict[str, Path]:
    """Write the flattened band, the boundaries and an overview image, each atomically.

    Parameters
    ----------
    volume : Volume
        The input (its ``name`` is the file stem; its data is drawn in the overview).
    pre : PreprocessedVolume
        Its preprocessing.
    outdir : str or Path
        Existing folder.

    Returns
    -------
    dict of str to Path
        ``flat``: ``<stem>_flat.tif`` (float32 band, (S, Hb, Wr));
        ``boundaries``: ``<stem>_boundaries.csv`` (``slice,column,ilm_row,bm_row`` in raw
        pixel coordinates, one line per raw column of every B-scan);
        ``overview``: ``<stem>_boundaries.png``.

    Raises
    ------
    OutputError
        If the folder is missing or not writable.
    """
    import tifffile

    outdir = Path(outdir)
    stem = _stem(volume)
    paths = {
        "flat": outdir / f"{stem}_flat.tif",
        "boundaries": outdir / f"{stem}_boundaries.csv",
        "overview": outdir / f"{stem}_boundaries.png",
    }
    with atomic_path(paths["flat"]) as tmp:
        tifffile.imwrite(
            tmp, pre.flat.astype(np.float32), photometric="minisblack", metadata={"axes": "ZYX"}
        )
    s, w = pre.ilm.shape
    with atomic_path(paths["boundaries"]) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slice", "column", "ilm_row", "bm_row"])
        for i in range(s):
            for c in range(w):
                writer.writerow([i, c, f"{pre.ilm[i, c]:.2f}", f"{pre.bm[i, c]:.2f}"])
    data = volume.data
    if len(data.shape) == 2:
        data = np.asarray(data)[None]
    with atomic_path(paths["overview"]) as tmp:
        draw_boundaries(tmp, data, pre.ilm, pre.bm)
    logger.info("%s: wrote %s", stem, ", ".join(str(p) for p in paths.values()))
    return paths

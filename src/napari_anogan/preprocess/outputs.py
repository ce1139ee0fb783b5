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

logger = logging.getLogger(__name__)


def _stem(volume: Volume) -> str:
    # one safe file name component: outputs never land outside the output folder
    return safe_stem(volume.name or (Path(volume.source).stem if volume.source else "volume"))


def draw_boundaries(
    path: Path, bscans: np.ndarray, ilm: np.ndarray, bm: np.ndarray, n_show: int = 4
) -> None:
    """Save a PNG with ILM (yellow) and BM (cyan) drawn on a few evenly spaced B-scans.

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
    from matplotlib.figure import Figure  # Agg canvas; no pyplot state, no GUI backend

    s = bscans.shape[0]
    picks = np.unique(np.linspace(0, s - 1, min(n_show, s)).round().astype(int))
    h, w = bscans.shape[1:]
    fig = Figure(figsize=(6, 6 * h / w * len(picks) * 0.55 + 0.4), dpi=100)
    axes = fig.subplots(len(picks), 1, squeeze=False)[:, 0]
    cols = np.arange(w)
    for ax, i in zip(axes, picks, strict=True):
        ax.imshow(np.asarray(bscans[i]), cmap="gray", aspect="auto", interpolation="nearest")
        ax.plot(cols, ilm[i], color="yellow", lw=0.8, label="ILM")
        ax.plot(cols, bm[i], color="cyan", lw=0.8, label="BM")
        ax.set_title(f"B-scan {i}", fontsize=8)
        ax.set_axis_off()
    axes[0].legend(loc="lower right", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, format="png")


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

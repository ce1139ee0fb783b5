"""Candidate marker regions: anomalous patches joined across neighbouring B-scans.

A patch is *anomalous* when its healthy percentile (its patch score ranked in the
model's held-out healthy distribution) reaches a threshold, e.g. 99: fewer than 1 % of
healthy patches score that high. Anomalous patches that overlap in one B-scan, or sit at
the same grid position in adjacent B-scans, form one candidate region (3-D connected
components on the patch grid, :func:`scipy.ndimage.label`). Regions are ranked by
their highest patch score (the feature distance or the anomaly score, whichever ranks).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from napari_anogan import settings as defaults

CANDIDATE_COLUMNS = (
    "rank",
    "slice_start",
    "slice_end",
    "row",
    "col",
    "height",
    "width",
    "n_patches",
    "max_score",
    "mean_score",
    "healthy_percentile",
)


def find_candidates(
    patches: Mapping[str, np.ndarray],
    *,
    stride: int,
    threshold: float = defaults.PERCENTILE_THRESHOLD,
    by: str = "healthy_percentile",
    score: str = "anomaly_score",
) -> list[dict]:
    """Join anomalous patches into ranked candidate regions.

    Parameters
    ----------
    patches : mapping of str to (N,) ndarray
        Patch table with at least ``slice``, ``flat_row``, ``flat_col`` (top-left corner on
        the stride grid of the flattened band), raw boxes ``row``, ``col``, ``height``,
        ``width``, and the columns named by ``by`` and ``score``.
    stride : int
        Grid stride the patches were taken with (neighbours are one stride apart).
    threshold : float
        A patch is anomalous when ``patches[by] >= threshold``.
    by : str
        Column compared with ``threshold`` (``healthy_percentile`` or a raw score).
    score : str
        Patch score that ranks the regions (``anomaly_score`` or ``feature_distance``).

    Returns
    -------
    list of dict
        One dict per region with keys :data:`CANDIDATE_COLUMNS` plus ``patch_index``
        (indices into the patch table), best first. Boxes are in raw pixels; ``slice_end``
        is inclusive.
    """
    n = len(patches["slice"])
    if n == 0:
        return []
    hot = np.asarray(patches[by], dtype=float) >= threshold
    if not hot.any():
        return []
    slices = np.asarray(patches["slice"], dtype=np.int64)
    grid_r = np.asarray(patches["flat_row"], dtype=np.int64) // stride
    grid_c = np.asarray(patches["flat_col"], dtype=np.int64) // stride
    s0, r0, c0 = slices.min(), grid_r.min(), grid_c.min()
    grid = np.zeros(
        (slices.max() - s0 + 1, grid_r.max() - r0 + 1, grid_c.max() - c0 + 1), dtype=bool
    )
    index = (slices - s0, grid_r - r0, grid_c - c0)
    grid[tuple(i[hot] for i in index)] = True
    # In a B-scan, patches one stride apart (also diagonally) overlap when stride < patch
    # size; across B-scans only the same grid position is joined (the same structure in 3-D).
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    structure[0, 1, 1] = structure[2, 1, 1] = True
    labels, _ = ndimage.label(grid, structure=structure)
    region_of_patch = np.where(hot, labels[index], 0)

    scores = np.asarray(patches[score], dtype=float)
    percent = np.asarray(patches.get("healthy_percentile", np.full(n, np.nan)), dtype=float)
    row0 = np.asarray(patches["row"])
    col0 = np.asarray(patches["col"])
    row1 = row0 + np.asarray(patches["height"])
    col1 = col0 + np.asarray(patches["width"])
    regions = []
    for region in range(1, int(labels.max()) + 1):
        members = np.flatnonzero(region_of_patch == region)
        top, left = int(row0[members].min()), int(col0[members].min())
        regions.append(
            {
                "slice_start": int(slices[members].min()),
                "slice_end": int(slices[members].max()),
                "row": top,
                "col": left,
                "height": int(row1[members].max()) - top,
                "width": int(col1[members].max()) - left,
                "n_patches": int(members.size),
                "max_score": float(scores[members].max()),
                "mean_score": float(scores[members].mean()),
                "healthy_percentile": float(np.nanmax(percent[members]))
                if np.isfinite(percent[members]).any()
                else float("nan"),
                "patch_index": members.tolist(),
            }
        )
    regions.sort(key=lambda r: r["max_score"], reverse=True)
    for rank, region in enumerate(regions, start=1):
        region["rank"] = rank
    return regions

"""Figures in the style of the paper: Fig. 3 (patch panel) and Fig. 2b (t-SNE).

Numpy in, an image file out (matplotlib, Agg backend, atomic write). Fig. 4 (ROC curves
and score distributions) lives in :mod:`napari_anogan.evaluate`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from napari_anogan._atomic import atomic_path
from napari_anogan.errors import AnoganError

logger = logging.getLogger(__name__)

__all__ = ["fig2b_tsne", "fig3_panel", "tsne_embedding"]

RESIDUAL_BAR_COLOR = "#e41a1c"
DISCRIMINATION_BAR_COLOR = "#ffd700"
UNLIT_BAR_COLOR = "#e6e6e6"
NORMAL_COLOR = "tab:blue"
ANOMALOUS_COLOR = "tab:red"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int) -> None:
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", facecolor="white")
    finally:
        plt.close(fig)


def _as_stack(name: str, images: np.ndarray, k: int | None = None) -> np.ndarray:
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise AnoganError(f"{name} must be (K, P, P) patches, got shape {arr.shape}")
    if k is not None and arr.shape[0] != k:
        raise AnoganError(f"{name} has {arr.shape[0]} patches, expected {k}")
    return arr


def _blocks(groups: Sequence[str]) -> list[tuple[str, int, int]]:
    """Consecutive runs of equal group labels: (label, first index, end index)."""
    runs: list[tuple[str, int, int]] = []
    for i, group in enumerate(groups):
        if runs and runs[-1][0] == group:
            runs[-1] = (group, runs[-1][1], i + 1)
        else:
            runs.append((group, i, i + 1))
    return runs


def fig3_panel(
    queries: np.ndarray,
    reconstructions: np.ndarray,
    residual_scores: np.ndarray,
    discrimination_scores: np.ndarray,
    thresholds: tuple[float, float],
    masks: np.ndarray | Sequence[np.ndarray | None] | None,
    groups: Sequence[str],
    path: str | os.PathLike,
    *,
    residual_vmax: float | None = None,
    dpi: int = 150,
) -> None:
    """Draw a panel of patches in the style of the paper's Fig. 3.

    One column per patch. Rows: the query patch, its reconstruction ``G(z)``, the residual
    ``|x - G(z)|`` overlaid in a hot colour map on the query, a red bar lit where the
    residual score exceeds its threshold, a yellow bar lit where the discrimination score
    exceeds its threshold, and (when masks are given) the lesion annotation. Consecutive
    columns with the same group label form a block, labelled above and separated by a gap.

    Parameters
    ----------
    queries : (K, P, P) array
        Query patches in [-1, 1] (``(K, 1, P, P)`` is accepted).
    reconstructions : (K, P, P) array
        ``G(z)`` of each query, same range.
    residual_scores : (K,) array
        ``R(x)`` per patch.
    discrimination_scores : (K,) array
        ``D(x)`` per patch.
    thresholds : (float, float)
        ``(r_thr, d_thr)``: a bar is lit where the score is strictly above it.
    masks : (K, P, P) array or sequence of (P, P) array or None, optional
        Lesion annotations (nonzero = lesion); None, or a None entry, when not known
        (that cell reads "n/a"). Without any mask the annotation row is omitted.
    groups : sequence of str
        Group label per column, e.g. ``"train healthy"``, ``"test healthy"``,
        ``"diseased"``.
    path : str or PathLike
        Image file to write.
    residual_vmax : float, optional
        Residual value shown at full colour (default: the largest residual shown, so
        columns are comparable).
    dpi : int, optional
        Resolution of raster formats.

    Raises
    ------
    AnoganError
        If the arrays do not agree in number or shape of patches.
    """
    plt = _pyplot()
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    q = _as_stack("queries", queries)
    k, p = q.shape[0], q.shape[1]
    if k == 0:
        raise AnoganError("fig3_panel needs at least one patch")
    rec = _as_stack("reconstructions", reconstructions, k)
    if rec.shape != q.shape:
        raise AnoganError(f"reconstructions {rec.shape} and queries {q.shape} differ in shape")
    r_scores = np.asarray(residual_scores, dtype=np.float64).ravel()
    d_scores = np.asarray(discrimination_scores, dtype=np.float64).ravel()
    if r_scores.size != k or d_scores.size != k:
        raise AnoganError(
            f"need one residual and one discrimination score per patch ({k}), got "
            f"{r_scores.size} and {d_scores.size}"
        )
    groups = [str(g) for g in groups]
    if len(groups) != k:
        raise AnoganError(f"need one group label per patch ({k}), got {len(groups)}")
    mask_list: list[np.ndarray | None]
    if masks is None:
        mask_list = [None] * k
    else:
        mask_list = [None if m is None else np.asarray(m) for m in masks]
        if len(mask_list) != k:
            raise AnoganError(f"need one mask per patch ({k}), got {len(mask_list)}")
        for m in mask_list:
            if m is not None and m.squeeze().shape != (p, p):
                raise AnoganError(f"masks must be ({p}, {p}) per patch, got {m.shape}")
    show_masks = any(m is not None for m in mask_list)
    r_thr, d_thr = (float(t) for t in thresholds)

    residual = np.abs(q - rec)
    vmax = float(residual_vmax) if residual_vmax else float(residual.max())
    vmax = vmax if vmax > 0 else 1.0
    strength = np.clip(residual / vmax, 0.0, 1.0)
    overlay = colormaps["hot"](0.35 + 0.65 * strength)  # skip hot's black end
    overlay[..., 3] = np.clip(1.6 * strength, 0.0, 0.95)

    blocks = _blocks(groups)
    rows = ["query", "recon", "residual", "rbar", "dbar"] + (["mask"] if show_masks else [])
    # Explicit layout in inches so image cells stay square and bars match their width.
    cell, gap, block_gap, bar_h = 1.0, 0.06, 0.3, 0.14
    left, right, top, bottom = 1.1, 0.1, 0.35, 0.3
    x_of = []
    x = left
    for b, (_, start, end) in enumerate(blocks):
        if b:
            x += block_gap - gap
        for _ in range(start, end):
            x_of.append(x)
            x += cell + gap
    fig_w = x - gap + right
    y_of, h_of = [], []
    y = top
    for row in rows:
        h = bar_h if row in ("rbar", "dbar") else cell
        y_of.append(y)
        h_of.append(h)
        y += h + (0.04 if row == "rbar" else gap)
    fig_h = y - gap + bottom
    fig = plt.figure(figsize=(fig_w, fig_h))
    row_titles = {
        "query": "query x",
        "recon": "G(z)",
        "residual": "residual",
        "rbar": "R(x) > thr",
        "dbar": "D(x) > thr",
        "mask": "annotation",
    }
    for i in range(k):
        for r, row in enumerate(rows):
            ax = fig.add_axes(
                (
                    x_of[i] / fig_w,
                    1.0 - (y_of[r] + h_of[r]) / fig_h,
                    cell / fig_w,
                    h_of[r] / fig_h,
                )
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == "query":
                ax.imshow(q[i], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            elif row == "recon":
                ax.imshow(rec[i], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            elif row == "residual":
                ax.imshow(q[i], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
                ax.imshow(overlay[i], interpolation="nearest")
            elif row in ("rbar", "dbar"):
                lit = r_scores[i] > r_thr if row == "rbar" else d_scores[i] > d_thr
                color = RESIDUAL_BAR_COLOR if row == "rbar" else DISCRIMINATION_BAR_COLOR
                ax.add_patch(Rectangle((0, 0), 1, 1, color=color if lit else UNLIT_BAR_COLOR, lw=0))
                ax.set_xlim(0, 1)
                ax.set_ylim(0, 1)
            else:
                m = mask_list[i]
                if m is None:
                    ax.set_facecolor("0.85")
                    ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=7, color="0.3")
                else:
                    ax.imshow(
                        m.squeeze() != 0, cmap="gray", vmin=0, vmax=1, interpolation="nearest"
                    )
            for spine in ax.spines.values():
                spine.set_linewidth(0.4)
            if i == 0:
                ax.set_ylabel(row_titles[row], rotation=0, ha="right", va="center", fontsize=8)
    # Block labels above the first row.
    for label, start, end in blocks:
        first = fig.axes[start * len(rows)].get_position()
        last = fig.axes[(end - 1) * len(rows)].get_position()
        fig.text((first.x0 + last.x1) / 2, first.y1 + 0.06 / fig_h, label, ha="center", va="bottom")
    fig.text(
        1.0 - right / fig_w,
        0.05 / fig_h,
        f"thresholds: R > {r_thr:.4g} (red), D > {d_thr:.4g} (yellow)",
        ha="right",
        va="bottom",
        fontsize=6,
        color="0.35",
    )
    _save(fig, path, dpi)


def tsne_embedding(features: np.ndarray, *, seed: int = 0, max_iter: int = 1000) -> np.ndarray:
    """Embed feature vectors in 2-D with t-SNE (after PCA to at most 50 dimensions).

    Parameters
    ----------
    features : (N, F) or (N, ...) array
        One feature vector per item (trailing dimensions are flattened), N >= 3.
    seed : int, optional
        ``random_state`` of PCA and t-SNE: the same input gives the same embedding.
    max_iter : int, optional
        t-SNE optimisation iterations (at least 250).

    Returns
    -------
    (N, 2) float array

    Raises
    ------
    AnoganError
        With fewer than 3 items or non-finite features.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(x.shape[0], -1) if x.ndim else x.reshape(0, 0)
    n = x.shape[0]
    if n < 3:
        raise AnoganError(f"t-SNE needs at least 3 feature vectors, got {n}")
    if not np.isfinite(x).all():
        raise AnoganError("features contain NaN or infinite values")
    dims = min(50, n, x.shape[1])
    if x.shape[1] > dims:
        x = PCA(n_components=dims, random_state=seed).fit_transform(x)
    # Perplexity must stay below N; ~N/3 for small sets, the usual 30 otherwise.
    perplexity = float(max(1.0, min(30.0, (n - 1) / 3.0)))
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        random_state=seed,
        max_iter=max(250, int(max_iter)),
    )
    logger.debug("t-SNE of %d vectors (%d dims, perplexity %.1f)", n, x.shape[1], perplexity)
    return tsne.fit_transform(x)


def fig2b_tsne(
    features: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    seed: int = 0,
    *,
    title: str | None = None,
    max_iter: int = 1000,
    dpi: int = 150,
) -> np.ndarray:
    """Plot a t-SNE embedding of discriminator features (the paper's Fig. 2b).

    Parameters
    ----------
    features : (N, F) or (N, C, h, w) array
        Discriminator features ``f(x)`` (last conv layer), one per patch.
    labels : (N,) bool array
        True for anomalous patches (red), False for normal ones (blue).
    path : str or PathLike
        Image file to write.
    seed : int, optional
        ``random_state`` of the embedding.
    title : str, optional
        Axes title.
    max_iter : int, optional
        t-SNE optimisation iterations (at least 250).
    dpi : int, optional
        Resolution of raster formats.

    Returns
    -------
    (N, 2) array
        The embedding that was drawn.
    """
    plt = _pyplot()
    labels = np.asarray(labels).ravel().astype(bool)
    n = np.asarray(features).shape[0]
    if labels.size != n:
        raise AnoganError(f"need one label per feature vector ({n}), got {labels.size}")
    emb = tsne_embedding(features, seed=seed, max_iter=max_iter)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for value, color, name in (
        (False, NORMAL_COLOR, "normal"),
        (True, ANOMALOUS_COLOR, "anomalous"),
    ):
        sel = labels == value
        if sel.any():
            ax.scatter(
                emb[sel, 0],
                emb[sel, 1],
                s=8,
                c=color,
                alpha=0.7,
                linewidths=0,
                label=f"{name} (n={int(sel.sum())})",
            )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, markerscale=2)
    _save(fig, path, dpi)
    return emb

"""Figures in the style of the paper: Fig. 3 (patch panel), Fig. 2b (t-SNE), Fig. 4 (ROCs).

Numpy in, an image file out (matplotlib, Agg backend, atomic write).

Over 500 lines on purpose: the paper's figures (2b, 3, 4) share one plotting setup.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

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


def _fig3_inputs(queries, reconstructions, residual_scores, discrimination_scores, masks, groups):
    """Check and normalise :func:`fig3_panel`'s inputs (one of each per patch)."""
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
    return q, rec, r_scores, d_scores, groups, mask_list


def _draw_fig3_cell(
    ax, row: str, query: np.ndarray, recon: np.ndarray, overlay: np.ndarray, lit: bool, mask
) -> None:
    """Draw one cell of Fig. 3: a patch, its G(z), the residual overlay, a bar or the mask."""
    from matplotlib.patches import Rectangle

    if row == "query":
        ax.imshow(query, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    elif row == "recon":
        ax.imshow(recon, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    elif row == "residual":
        ax.imshow(query, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        ax.imshow(overlay, interpolation="nearest")
    elif row in ("rbar", "dbar"):
        color = RESIDUAL_BAR_COLOR if row == "rbar" else DISCRIMINATION_BAR_COLOR
        ax.add_patch(Rectangle((0, 0), 1, 1, color=color if lit else UNLIT_BAR_COLOR, lw=0))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    else:
        m = mask
        if m is None:
            ax.set_facecolor("0.85")
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=7, color="0.3")
        else:
            ax.imshow(m.squeeze() != 0, cmap="gray", vmin=0, vmax=1, interpolation="nearest")


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

    q, rec, r_scores, d_scores, groups, mask_list = _fig3_inputs(
        queries, reconstructions, residual_scores, discrimination_scores, masks, groups
    )
    k = q.shape[0]
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
            lit = r_scores[i] > r_thr if row == "rbar" else d_scores[i] > d_thr
            _draw_fig3_cell(ax, row, q[i], rec[i], overlay[i], lit, mask_list[i])
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


DISPLAY_NAMES = {
    "acae": "aCAE",
    "discriminator_output": "$P_D$",
    "reference_anomaly_score": "$GAN_R$",
    "anomaly_score": "AnoGAN",
    "residual_score": "$R(\\mathbf{x})$",
    "discrimination_score": "$D(\\mathbf{x})$",
    "reference_discrimination_score": "$\\hat{D}(\\mathbf{x})$",
}
"""Names used in the paper's Fig. 4 legends (matplotlib mathtext)."""


CURVE_COLORS = {
    # Fig. 4a
    "acae": "tab:blue",
    "reference_anomaly_score": "tab:red",
    "anomaly_score": "black",
    "discriminator_output": "tab:green",
    # Fig. 4b
    "residual_score": "tab:green",
    "discrimination_score": "black",
    "reference_discrimination_score": "tab:red",
}
"""Curve colours of the paper's Fig. 4."""


FIG4A_SCORES = ("acae", "reference_anomaly_score", "anomaly_score", "discriminator_output")
"""Scores compared in Fig. 4a (models)."""


FIG4B_SCORES = ("residual_score", "discrimination_score", "reference_discrimination_score")
"""Scores compared in Fig. 4b (anomaly score components)."""


GROUP_COLORS = {
    "training healthy": "tab:blue",
    "test healthy": "tab:green",
    "diseased": "tab:red",
}
"""Group colours of the paper's Fig. 4c,d."""


def plot_rocs(
    curves: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    title: str | None = None,
    *,
    dpi: int = 150,
) -> None:
    """Plot ROC curves with their AUC in the legend (the paper's Fig. 4a,b).

    Parameters
    ----------
    curves : dict of str to roc dict
        :func:`roc` results by score name (:func:`roc_curves`). Known score names get the
        paper's legend name and colour (4a: aCAE blue, GAN_R red, AnoGAN black, P_D green;
        4b: R green, D black, D̂ red); other keys are used as given.
    path : str or PathLike
        Image file to write (format from the suffix, e.g. ``.png``, ``.pdf``).
    title : str, optional
        Axes title.
    dpi : int, optional
        Resolution of raster formats.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="0.75", linestyle="--", linewidth=0.8)
    for i, (name, curve) in enumerate(curves.items()):
        ax.plot(
            curve["fpr"],
            curve["tpr"],
            color=CURVE_COLORS.get(name, f"C{i}"),
            linewidth=1.6,
            label=f"{DISPLAY_NAMES.get(name, name)} ({float(curve['auc']):.2f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(loc="lower right", title="AUC in parentheses", fontsize=8, title_fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path, dpi)


def plot_score_distributions(
    scores_by_group: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    score_label: str,
    *,
    bins: int = 50,
    dpi: int = 150,
) -> None:
    """Plot score histograms per group (the paper's Fig. 4c,d).

    Parameters
    ----------
    scores_by_group : dict of str to (N,) array
        Scores per group, e.g. ``"training healthy"`` (blue), ``"test healthy"`` (green),
        ``"diseased"`` (red); other group names get the default colour cycle. Non-finite
        values are left out.
    path : str or PathLike
        Image file to write.
    score_label : str
        X-axis label, e.g. ``"residual score"``.
    bins : int, optional
        Number of bins, shared by all groups.
    dpi : int, optional
        Resolution of raster formats.
    """
    plt = _pyplot()
    groups = {}
    for name, values in scores_by_group.items():
        values = np.asarray(values, dtype=np.float64).ravel()
        groups[name] = values[np.isfinite(values)]
    everything = np.concatenate([v for v in groups.values()] or [np.zeros(0)])
    if everything.size:
        lo, hi = float(everything.min()), float(everything.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
    else:
        edges = np.linspace(0.0, 1.0, bins + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for i, (name, values) in enumerate(groups.items()):
        if values.size == 0:
            continue
        color = GROUP_COLORS.get(name, f"C{i}")
        ax.hist(values, bins=edges, density=True, alpha=0.35, color=color)
        ax.hist(
            values,
            bins=edges,
            density=True,
            histtype="step",
            linewidth=1.4,
            color=color,
            label=f"{name} (n={values.size})",
        )
    ax.set_xlabel(score_label)
    ax.set_ylabel("density")
    if any(v.size for v in groups.values()):
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path, dpi)

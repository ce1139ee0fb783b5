"""What scoring a volume produces and how it is written.

:class:`VolumeResult` (heatmaps, the patch table with :data:`PATCH_COLUMNS`, B-scan and
volume scores, candidates), built from mapped patches by :func:`volume_result`; the
``score`` outputs ``<stem>_residual.tif``, ``<stem>_scores.csv``, the quick-look figure
``<stem>_overview.png`` (:mod:`napari_anogan.pipeline.overview`) and
``<stem>_summary.json``, written last (:func:`output_paths`, :func:`write_score_outputs`),
which the CLI, Dask, the demo and the Export widget all write, as one set
(:mod:`napari_anogan.pipeline.output_set`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_anogan._atomic import remove_stale_temporaries
from napari_anogan.io import Volume, safe_stem, write_csv, write_tiff
from napari_anogan.pipeline.output_set import (
    REQUIRED_IN_SET,
    OutputSet,
    describe_file,
    summary_of,
    verify_output_set,
)
from napari_anogan.scoring.candidates import CANDIDATE_COLUMNS, find_candidates
from napari_anogan.scoring.display import heatmap_threshold

if TYPE_CHECKING:
    from napari_anogan.pipeline.score import ScoreSettings

logger = logging.getLogger(__name__)

__all__ = [
    "PATCH_COLUMNS",
    "REQUIRED_IN_SET",
    "SCORE_COLUMNS",
    "SCORE_OUTPUTS",
    "MappedPatches",
    "OutputSet",
    "VolumeResult",
    "describe_file",
    "en_face_projection",
    "output_paths",
    "raw_boxes",
    "summary_dict",
    "summary_of",
    "verify_output_set",
    "volume_result",
    "write_patch_table",
    "write_score_outputs",
]


PATCH_COLUMNS = (
    "slice",
    "row",
    "col",
    "height",
    "width",
    "residual_score",
    "discrimination_score",
    "anomaly_score",
    "reference_discrimination_score",
    "discriminator_output",
    "feature_distance",
    "healthy_percentile",
)

#: Patch table column of each ``ScoreSettings.score``.
SCORE_COLUMNS = {"feature": "feature_distance", "anomaly": "anomaly_score"}


@dataclass
class VolumeResult:
    """Everything scoring produces for one volume, in the RAW pixel grid of the input.

    Attributes
    ----------
    name : str
        Volume name (file stem).
    shape : tuple of int
        Raw shape (S, H, W).
    reconstruction : (S, H, W) ndarray of float32 or None
        G(z) back-projected, in the raw grey units of the input; NaN where no patch.
        None when scored to files (``outdir``: not an output, not kept).
    residual : (S, H, W) ndarray of float32 (or dask array)
        Residual heatmap |x - G(z)| (in normalised [-1, 1] units, so 0..2); 0 where no patch.
        Scored to files (``outdir``): a lazy (dask) view of the written TIFF.
    patches : dict of str to (N,) ndarray
        Patch table: :data:`PATCH_COLUMNS` (raw boxes) plus ``flat_row``, ``flat_col``,
        ``residual_percentile`` and ``discrimination_percentile`` (each component ranked
        in the model's healthy reference; NaN without one).
    bscan_scores : (S,) ndarray
        B-scan anomaly score (mean of its top-3 patch anomaly scores); NaN if not scored.
    volume_score : float
        Highest B-scan score.
    ilm, bm : (S, W) ndarray
        Retina boundaries, raw rows.
    en_face : (S, W) ndarray
        Residual projected over depth (mean over the retina band): where in the macula.
    candidates : list of dict
        Ranked candidate regions (:func:`~napari_anogan.scoring.candidates.find_candidates`).
    settings, model : dict
        Settings and model description (with the healthy reference quantiles under
        ``model["reference"]``), for the summary.
    outputs : dict of str to Path
        Files written (``residual``, ``scores``, ``summary``); empty when kept in memory.
    geometry : Geometry or None
        The preprocessing geometry (band <-> raw grid) of the volume.
    mapped : MappedPatches or None
        Patch images and mapping result, when asked for (``keep_patches``).
    model_fit : dict
        Whether the model's healthy reference describes this scan at all
        (:func:`~napari_anogan.scoring.fit.model_fit`: ``verdict`` ``fits`` /
        ``does_not_fit``, the statistics and the rule).
    no_retina : list of int
        B-scans where preprocessing found no retina: not scored (B-scan score NaN).
    """

    name: str
    shape: tuple[int, int, int]
    reconstruction: np.ndarray
    residual: np.ndarray
    patches: dict[str, np.ndarray]
    bscan_scores: np.ndarray
    volume_score: float
    ilm: np.ndarray
    bm: np.ndarray
    en_face: np.ndarray
    candidates: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    geometry: Any = None
    mapped: MappedPatches | None = None
    model_fit: dict = field(default_factory=dict)
    no_retina: list[int] = field(default_factory=list)


@dataclass
class MappedPatches:
    """The grid patches of a volume and their latent mapping (kept for evaluation).

    Attributes
    ----------
    coords : (N, 3) ndarray of int
        (slice, band row, band column) of each patch's top-left corner.
    images : (N, 1, P, P) ndarray of float32
        The patches, in [-1, 1].
    mapping : MappingResult
        What :func:`~napari_anogan.mapping.map_to_latent` returned for them (its
        ``config`` is the mapping as it ran, after any fallback).
    """

    coords: np.ndarray
    images: np.ndarray
    mapping: Any


def output_paths(name: str, outdir: str | Path, *, figures: bool = False) -> dict[str, Path]:
    """Output files of a volume, checked to stay inside ``outdir``.

    Parameters
    ----------
    name : str
        The volume's name (made a safe file stem).
    outdir : str or Path
        The output folder.
    figures : bool
        Include the quick-look figure ``overview`` (``<stem>_overview.png``).

    Returns
    -------
    dict of str to Path
        ``residual``, ``scores``, (``overview``,) ``summary``, in the order written.
    """
    outdir = Path(outdir)
    stem = safe_stem(name)
    paths = {
        "residual": outdir / f"{stem}_residual.tif",
        "scores": outdir / f"{stem}_scores.csv",
    }
    if figures:
        paths["overview"] = outdir / f"{stem}_overview.png"
    paths["summary"] = outdir / f"{stem}_summary.json"
    return paths


SCORE_OUTPUTS = ("residual", "scores", "summary")
"""The ``score`` outputs of a volume, by kind (see :func:`output_paths`)."""
FIGURE_OUTPUTS = ("overview",)
"""The figures ``score`` writes too unless asked not to (``--no-figures``)."""


def write_score_outputs(
    result: VolumeResult,
    outdir: str | Path,
    *,
    include: Sequence[str] = SCORE_OUTPUTS,
    spacing: tuple[float, float, float] | None = None,
    summary: dict | None = None,
    image: Any = None,
    heatmap: Any = None,
) -> dict[str, Path]:
    """Write a result's ``score`` outputs: residual, scores, overview, summary (last).

    ``<stem>_residual.tif``, ``<stem>_scores.csv``, ``<stem>_overview.png`` and
    ``<stem>_summary.json``: the writers and file names of ``napari-anogan score``, for a
    result kept in memory (the Export widget, scripts). The stem is the volume name made
    safe as a file name (:func:`safe_stem`), so outputs stay inside ``outdir``. With the
    summary, the files form one :class:`OutputSet` (the summary written last, with their
    manifest); without it each file is written atomically on its own.

    Parameters
    ----------
    result : VolumeResult
    outdir : str or Path
        Existing folder.
    include : sequence of str
        Which of :data:`SCORE_OUTPUTS` and :data:`FIGURE_OUTPUTS` to write.
    spacing : (float, float, float), optional
        Physical pixel size (slice, row, column) stored in the residual TIFF.
    summary : dict, optional
        The summary to write instead of :func:`summary_dict` (a caller adding to it); a
        ``files`` mapping in it (kind -> name of a file already in ``outdir``) adds those
        files to the manifest.
    image : (S, H, W) array-like, optional
        The scored scan's grey values: the overview needs them (without, no overview).
    heatmap : HeatmapThreshold, optional
        The overview's heatmap threshold (default: as napari shows it first).

    Returns
    -------
    dict of str to Path
        The written files by kind.
    """
    paths = output_paths(result.name, outdir, figures=True)
    remove_stale_temporaries(outdir)
    written = {}
    with OutputSet(result.name, outdir) as files:

        def target(kind: str) -> Path:
            return files.stage(kind, paths[kind]) if "summary" in include else paths[kind]

        if "residual" in include:
            residual = np.asarray(result.residual, dtype=np.float32)
            write_tiff(target("residual"), residual, spacing=spacing)
            written["residual"] = paths["residual"]
        if "scores" in include:
            write_patch_table(result, target("scores"))
            written["scores"] = paths["scores"]
        if "overview" in include and image is not None:
            write_overview(result, image, target("overview"), heatmap=heatmap)
            written["overview"] = paths["overview"]
        if "summary" in include:
            written["summary"] = files.commit(summary or summary_dict(result))
    return written


def write_overview(result: VolumeResult, image: Any, path: Path, **kw: Any) -> Path:
    """Write the quick-look PNG (:func:`napari_anogan.pipeline.overview.write_overview`)."""
    from napari_anogan.pipeline.overview import write_overview as draw

    return draw(result, image, path, **kw)


def write_patch_table(result: VolumeResult, path: Path, *, atomic: bool = True) -> Path:
    """Write the patch table: one row per patch, :data:`PATCH_COLUMNS`.

    ``atomic=False`` writes ``path`` itself (a staged file of an :class:`OutputSet`).
    """
    columns = [c for c in PATCH_COLUMNS if c in result.patches]
    rows = (  # row by row: the table is never built as Python objects
        {k: result.patches[k][i].item() for k in columns}
        for i in range(len(result.patches["slice"]))
    )
    return write_csv(path, rows, columns=columns, atomic=atomic)


def summary_dict(result: VolumeResult) -> dict:
    """JSON summary: per-B-scan and volume scores, candidates, model and settings."""
    return {
        "name": result.name,
        "shape": list(result.shape),
        "volume_score": result.volume_score,
        "bscan_rule": (
            f"mean of the {result.settings.get('bscan_top_k')} highest patch "
            f"{result.settings.get('score_column')} values of the B-scan"
        ),
        "volume_rule": "highest B-scan score",
        "bscan_scores": [None if not np.isfinite(v) else float(v) for v in result.bscan_scores],
        "bscans_without_retina": [int(i) for i in result.no_retina],
        "n_patches": len(result.patches["slice"]),
        "candidates": [{k: c[k] for k in CANDIDATE_COLUMNS} for c in result.candidates],
        "model_fit": result.model_fit,
        "heatmap_threshold": heatmap_threshold(result).to_dict(),
        "settings": result.settings,
        "model": result.model,
    }


def raw_boxes(geometry, coords: np.ndarray, size: int) -> np.ndarray:
    """(N, 4) raw-grid boxes (row0, col0, row1, col1) of the band patches at ``coords``.

    Parameters
    ----------
    geometry : Geometry
        The volume's preprocessing geometry.
    coords : (N, 3) int array
        (slice, band row, band column) of each patch's top-left corner.
    size : int
        Patch side in band pixels.

    Returns
    -------
    (N, 4) int64 array
    """
    return np.array(
        [geometry.box_to_raw(int(s), int(r), int(c), size, size) for s, r, c in coords],
        dtype=np.int64,
    ).reshape(-1, 4)


_WARNED_MISMATCH: set[tuple] = set()


def _warn_reference_mismatch(path, ref_settings: dict | None, settings: ScoreSettings) -> None:
    """Warn once per model and λ when the healthy reference was mapped with another λ.

    A percentile compares a patch's A = (1 - λ) R + λ D with the held-out healthy
    patches' A: under another λ the two are not the same score, and the candidates,
    chosen by percentile, shift.
    """
    ref_lam = (ref_settings or {}).get("lam")
    key = (str(path), settings.lam)
    if ref_lam is None or ref_lam == settings.lam or key in _WARNED_MISMATCH:
        return
    _WARNED_MISMATCH.add(key)
    logger.warning(
        "%s: scored with lambda %g but its healthy reference was mapped with lambda %g: "
        "healthy percentiles and candidates compare unlike scores",
        path or "model",
        settings.lam,
        ref_lam,
    )


def volume_result(
    volume: Volume,
    model,
    settings: ScoreSettings,
    coords: np.ndarray,
    scores: dict[str, np.ndarray],
    geometry,
    size: int,
    *,
    residual,
    reconstruction,
    ilm: np.ndarray,
    bm: np.ndarray,
    en_face: np.ndarray,
) -> VolumeResult:
    """Patch table, B-scan and volume scores and candidates of mapped grid patches."""
    from napari_anogan.scoring import aggregate_bscans, percentile_of, volume_score
    from napari_anogan.scoring.fit import model_fit

    s_count = volume.shape[0]
    boxes_raw = raw_boxes(geometry, coords, size)
    ref = model.reference or {}
    _warn_reference_mismatch(getattr(model, "path", None), ref.get("settings"), settings)
    ranking = ranking_score(settings, scores, getattr(model, "path", None))
    scores.setdefault("feature_distance", np.full(len(coords), np.nan))
    reference = ref.get(ranking)

    def healthy_percentile(name: str) -> np.ndarray:
        if ref.get(name) is None:
            return np.full(len(coords), np.nan)
        return percentile_of(scores[name], ref[name], ref["levels"])

    percentile = healthy_percentile(ranking)
    table = {
        "slice": coords[:, 0].astype(np.int64),
        "row": boxes_raw[:, 0],
        "col": boxes_raw[:, 1],
        "height": boxes_raw[:, 2] - boxes_raw[:, 0],
        "width": boxes_raw[:, 3] - boxes_raw[:, 1],
        "residual_score": np.asarray(scores["residual_score"], dtype=np.float64),
        "discrimination_score": np.asarray(scores["discrimination_score"], dtype=np.float64),
        "anomaly_score": np.asarray(scores["anomaly_score"], dtype=np.float64),
        "reference_discrimination_score": np.asarray(
            scores["reference_discrimination_score"], dtype=np.float64
        ),
        "discriminator_output": np.asarray(scores["discriminator_output"], dtype=np.float64),
        "feature_distance": np.asarray(scores["feature_distance"], dtype=np.float64),
        "healthy_percentile": np.asarray(percentile, dtype=np.float64),
        "residual_percentile": healthy_percentile("residual_score"),
        "discrimination_percentile": healthy_percentile("discrimination_score"),
        "flat_row": coords[:, 1].astype(np.int64),
        "flat_col": coords[:, 2].astype(np.int64),
    }
    bscan_scores = aggregate_bscans(
        table["slice"], table[ranking], s_count, top_k=settings.bscan_top_k
    )
    candidates = find_candidates(
        table,
        stride=settings.stride,
        threshold=settings.percentile_threshold,
        by="healthy_percentile" if reference is not None else ranking,
        score=ranking,
    )
    return VolumeResult(
        name=volume.name,
        shape=tuple(volume.shape),
        reconstruction=reconstruction,
        residual=residual,
        patches=table,
        bscan_scores=bscan_scores,
        volume_score=volume_score(bscan_scores),
        ilm=ilm,
        bm=bm,
        en_face=en_face,
        candidates=candidates,
        settings={**settings.to_dict(), "score_column": ranking},
        model=_model_description(model),
        model_fit=model_fit(table[ranking], reference, ref.get("levels")),
    )


_NOTED_NO_BANK: set[str] = set()


def ranking_score(settings: ScoreSettings, scores: dict[str, np.ndarray], path=None) -> str:
    """Return the patch-table column that ranks patches, B-scans and candidates.

    ``settings.score`` ``"feature"`` needs the feature distances of a model with a feature
    bank; without them (a model trained before feature banks) the paper's anomaly score A
    ranks, said once per model in the log.
    """
    column = SCORE_COLUMNS[settings.score]
    if column == "feature_distance" and "feature_distance" not in scores:
        if str(path) not in _NOTED_NO_BANK:
            _NOTED_NO_BANK.add(str(path))
            logger.info(
                "%s has no feature bank (trained before it existed): ranking by the anomaly "
                "score A; retrain it for the feature score",
                path or "the model",
            )
        return "anomaly_score"
    return column


def en_face_projection(residual: np.ndarray, ilm: np.ndarray, bm: np.ndarray) -> np.ndarray:
    """Mean residual between ILM and BM for every (slice, column): an en-face anomaly map.

    Parameters
    ----------
    residual : (S, H, W) ndarray
        Residual heatmap in the raw grid.
    ilm, bm : (S, W) ndarray
        Boundary rows in the raw grid.

    Returns
    -------
    (S, W) ndarray of float32
    """
    rows = np.arange(residual.shape[1])[None, :, None]
    inside = (rows >= np.floor(ilm)[:, None, :]) & (rows <= np.ceil(bm)[:, None, :])
    counts = inside.sum(axis=1)
    total = np.where(inside, residual, 0.0).sum(axis=1)
    return np.divide(total, counts, out=np.zeros(total.shape), where=counts > 0).astype(np.float32)


def _model_description(model) -> dict:
    from napari_anogan.model_card import model_card

    reference = {
        k: (v.tolist() if isinstance(v, np.ndarray) else v)
        for k, v in (model.reference or {}).items()
    }
    return {
        "path": str(getattr(model, "path", "") or ""),
        "model_config": model.model_config.to_dict(),
        "preprocess_config": model.preprocess_config,
        "training": getattr(model, "training", {}) or {},
        "has_encoder": getattr(model, "encoder", None) is not None,
        "reference": reference,
        "card": model_card(model),
    }

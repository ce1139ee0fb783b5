"""End-to-end jobs that the CLI and the widgets both call.

Each job is a generator of :class:`~napari_anogan.events.ProgressEvent` whose return
value is the result: the CLI drains it with a progress bar, the GUI runs it in a
``thread_worker`` (Cancel is honoured at the next yield). Nothing here imports Qt.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_anogan import settings as defaults
from napari_anogan.candidates import CANDIDATE_COLUMNS, find_candidates
from napari_anogan.errors import InputError, ModelError
from napari_anogan.events import EventKind, ProgressEvent
from napari_anogan.io import Volume, read_volume, safe_stem, write_csv, write_json, write_tiff

logger = logging.getLogger(__name__)

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
class ScoreSettings:
    """How a volume is scored (latent mapping and patch grid).

    Attributes
    ----------
    mode : str
        Latent mapping: ``hybrid`` (default: start at the encoder's E(x), then
        ``hybrid_steps`` steps of eq. (5)), ``encoder`` (z = E(x) alone) or ``iterative``
        (the paper: random start, ``steps`` steps). On a model without an encoder
        ``hybrid`` falls back to ``iterative`` (with a warning) and ``encoder`` fails.
    steps : int
        Mapping steps Γ of the ``iterative`` mode (paper: 500).
    lam : float
        λ of eq. (5) and (6): default 0.7, chosen on a validation set
        (:data:`~napari_anogan.settings.SCORING_LAM`); the paper's is 0.1.
    stride : int
        Patch grid stride in the flattened band, in pixels.
    batch_size : int
        Patches mapped at once (bounds memory).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    seed : int
        Seed of the random latent start.
    percentile_threshold : float
        Candidates: a patch is anomalous above this healthy percentile.
    hybrid_steps : int
        Mapping steps K of the ``hybrid`` mode, after the encoder start.
    early_stop : bool
        Freeze a patch's search once its loss stops improving (iterative and hybrid).
    tolerance : float
        Early stopping: a step counts as an improvement if it lowers the patch's best
        loss by more than this fraction.
    patience : int or None
        Early stopping: steps without improvement after which a patch is frozen; None:
        10 % of the mode's steps, at least 3 (iterative-500: 50, hybrid-10: 3).
    score : str
        Patch score that ranks patches, B-scans and candidates: ``feature`` (the feature
        distance F, :mod:`napari_anogan.models.feature_bank`; falls back to ``anomaly``
        with a note on a model without a feature bank) or ``anomaly`` (the paper's A).
    bscan_top_k : int
        A B-scan's score is the mean of its ``bscan_top_k`` highest patch scores.
    """

    mode: str = defaults.MAPPING_MODE
    steps: int = defaults.MAPPING_STEPS
    lam: float = defaults.SCORING_LAM
    stride: int = defaults.SCORE_STRIDE
    batch_size: int = defaults.SCORE_BATCH_SIZE
    device: str = defaults.DEVICE
    seed: int = defaults.SEED
    percentile_threshold: float = defaults.PERCENTILE_THRESHOLD
    hybrid_steps: int = defaults.HYBRID_STEPS
    early_stop: bool = defaults.EARLY_STOP
    tolerance: float = defaults.TOLERANCE
    patience: int | None = None
    score: str = defaults.SCORE
    bscan_top_k: int = defaults.BSCAN_TOP_K

    def __post_init__(self) -> None:
        if self.score not in SCORE_COLUMNS:
            raise ValueError(f"score must be one of {sorted(SCORE_COLUMNS)}, got {self.score!r}")
        if int(self.bscan_top_k) < 1:
            raise ValueError(f"bscan_top_k must be >= 1, got {self.bscan_top_k}")

    def to_dict(self) -> dict:
        """Return the settings as a JSON-ready dict."""
        return asdict(self)


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
        Ranked candidate regions (:func:`~napari_anogan.candidates.find_candidates`).
    settings, model : dict
        Settings and model description (with the healthy reference quantiles under
        ``model["reference"]``), for the summary.
    outputs : dict of str to Path
        Files written (``residual``, ``scores``, ``summary``); empty when kept in memory.
    geometry : Geometry or None
        The preprocessing geometry (band <-> raw grid) of the volume.
    mapped : MappedPatches or None
        Patch images and mapping result, when asked for (``keep_patches``).
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


def _load_model(model):
    from napari_anogan.checkpoint import load_checkpoint

    return load_checkpoint(model) if isinstance(model, (str, Path)) else model


def _preprocess_config(model):
    from napari_anogan.preprocess import PreprocessConfig

    return PreprocessConfig.from_dict(model.preprocess_config)


def _mapping_config(settings: ScoreSettings):
    from napari_anogan.mapping import MappingConfig

    return MappingConfig(
        mode=settings.mode,
        steps=settings.steps,
        hybrid_steps=settings.hybrid_steps,
        early_stop=settings.early_stop,
        tolerance=settings.tolerance,
        patience=settings.patience,
        lam=settings.lam,
        batch_size=settings.batch_size,
        seed=settings.seed,
        device=settings.device,
    )


def _check_model_fits(model, pre_config) -> None:
    """Refuse a model whose patches cannot be those of its own preprocessing.

    Scoring reuses the model's preprocessing, so only the checkpoint itself can disagree
    (patch size of the model vs of its preprocessing; channels: the preprocessing makes
    grey, one-channel patches). The message names the model file and what differs.
    """
    from napari_anogan.checkpoint import check_compatible
    from napari_anogan.errors import ModelError

    check_compatible(model, pre_config.patch_size, None)
    channels = model.model_config.channels
    if channels != 1:
        raise ModelError(
            f"model does not match the input: channels: model {channels}, input 1 (the "
            "preprocessing makes grey, one-channel patches)",
            getattr(model, "path", None),
        )


def _select_patches(coords, size, geometry, boxes):
    """Keep the grid patches whose raw box overlaps one of ``boxes`` on the same slice."""
    keep = np.zeros(len(coords), dtype=bool)
    for i, (s, r, c) in enumerate(coords):
        r0, c0, r1, c1 = geometry.box_to_raw(int(s), int(r), int(c), size, size)
        for bs, br0, bc0, br1, bc1 in boxes:
            if bs == s and r0 < br1 and br0 < r1 and c0 < bc1 and bc0 < c1:
                keep[i] = True
                break
    return keep


def _grid(plan, chunks, size: int, stride: int, slices, boxes) -> np.ndarray:
    """(N, 3) band coordinates of the grid patches to score, chunk by chunk, in order."""
    from napari_anogan.preprocess import grid_coords

    s_count = plan.n_slices
    wanted = None if slices is None else {int(i) for i in slices}
    if wanted is not None and any(not 0 <= i < s_count for i in wanted):
        raise ValueError(f"slices must be in [0, {s_count - 1}], got {sorted(wanted)}")
    parts = []
    for a, b in chunks:
        local = None if wanted is None else [i - a for i in sorted(wanted) if a <= i < b]
        c = grid_coords(plan.retina_mask(a, b), size, stride, slices=local)
        c[:, 0] += a
        parts.append(c)
    coords = np.concatenate(parts)
    if boxes:
        coords = coords[_select_patches(coords, size, plan.geometry, boxes)]
    return coords


PARTIAL_EVERY_S = 1.0
"""Partial heatmaps are rebuilt at most this often while a volume is being mapped."""


class _PartialHeatmaps:
    """The heatmaps of the patches mapped so far, for a viewer to show as batches finish.

    :meth:`attach` puts a :class:`VolumeResult` (residual and reconstruction of the
    patches mapped so far, empty patch table) in ``event.partial`` of ``MAPPING_BATCH``
    events, at most every :data:`PARTIAL_EVERY_S` seconds and at the last batch.
    """

    def __init__(self, volume: Volume, plan, coords: np.ndarray, size: int) -> None:
        shape = plan.geometry.band_shape
        self.volume, self.plan, self.coords, self.size = volume, plan, coords, size
        self.total = np.zeros(shape, np.float64)
        self.recon = np.zeros(shape, np.float64)
        self.count = np.zeros(shape, np.int32)
        self.last = 0.0

    def attach(self, event: ProgressEvent, offset: int) -> None:
        """Add a chunk's scored batch (patch ``offset`` onwards) and maybe attach heatmaps."""
        part = event.partial
        if event.kind != EventKind.MAPPING_BATCH or not isinstance(part, dict):
            return
        size = self.size
        for i, k in enumerate(part["index"]):
            s, r, c = self.coords[offset + k]
            window = (s, slice(r, r + size), slice(c, c + size))
            self.total[window] += part["residual_image"][i, 0]
            self.recon[window] += part["reconstruction"][i, 0]
            self.count[window] += 1
        now = time.monotonic()
        if now - self.last < PARTIAL_EVERY_S and event.step < event.total:
            event.partial = None
            return
        self.last = now
        plan, volume = self.plan, self.volume
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.count > 0, self.total / self.count, np.nan)
            mean_recon = np.where(self.count > 0, self.recon / self.count, np.nan)
        residual = np.nan_to_num(plan.geometry.flat_to_raw_image(mean), nan=0.0)
        lo, hi = plan.intensity_range
        reconstruction = lo + (plan.geometry.flat_to_raw_image(mean_recon) + 1) * 0.5 * (hi - lo)
        empty = {name: np.zeros(0) for name in (*PATCH_COLUMNS, "flat_row", "flat_col")}
        event.partial = VolumeResult(
            name=volume.name,
            shape=tuple(volume.shape),
            reconstruction=reconstruction.astype(np.float32),
            residual=residual.astype(np.float32),
            patches=empty,
            bscan_scores=np.full(volume.shape[0], np.nan),
            volume_score=float("nan"),
            ilm=plan.ilm,
            bm=plan.bm,
            en_face=en_face_projection(residual, plan.ilm, plan.bm),
        )


def _rebase(event: ProgressEvent, done: int, n_chunk: int, n_total: int) -> ProgressEvent:
    """Turn a chunk's mapping event into progress of the whole volume."""
    if event.kind == EventKind.MAPPING_BATCH:
        step, total = done + event.step, n_total
    elif event.kind == EventKind.MAPPING_STEP and n_chunk and event.total:
        per_patch = event.total / n_chunk
        step, total = round(done * per_patch + event.step), round(n_total * per_patch)
    else:
        return event
    event.step, event.total = int(step), int(total)
    if event.kind == EventKind.MAPPING_BATCH:
        event.message = f"mapped {step}/{n_total} patches"
    return event


def _volume_progress(job, done: int, n_chunk: int, n_total: int, partial, offset: int):
    """Pass a chunk's mapping events on as progress of the whole volume; return its result."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        event = _rebase(event, done, n_chunk, n_total)
        if partial is not None:
            partial.attach(event, offset)
        else:
            event.partial = None
        yield event


def score_volume(
    volume: Volume,
    model,
    settings: ScoreSettings | None = None,
    *,
    outdir: str | Path | None = None,
    chunk_slices: int | None = None,
    slices: Sequence[int] | None = None,
    boxes: Sequence[tuple[int, int, int, int, int]] | None = None,
    partial_results: bool = False,
    keep_patches: bool = False,
) -> Generator[ProgressEvent, None, VolumeResult]:
    """Score a volume with a healthy model: the one scoring path of every caller.

    The volume is processed ``chunk_slices`` B-scans at a time: the preprocessing is
    planned in a few passes over the data
    (:func:`~napari_anogan.preprocess.plan_preprocessing`), then every chunk is read,
    flattened, cut into grid patches, mapped to z, back-projected to the raw grid and
    either kept (``outdir=None``: the GUI, ``evaluate``) or appended to
    ``<stem>_residual.tif`` (``outdir``: the CLI, Dask, ``demo``) before the next one;
    only per-patch scores and (S, W) arrays are kept for the whole volume. The random
    latent starts are drawn for all patches at once, so a patch's start does not depend
    on the chunks. With one chunk (``chunk_slices=None``, the default) every number is
    the same whatever the output; with smaller chunks each chunk's patches are mapped in
    their own batches, so scores equal the one-chunk ones up to float32 rounding of
    batched convolutions.

    Parameters
    ----------
    volume : Volume
        The scan, as read by :func:`napari_anogan.io.read_volume` (``data`` may be lazy).
    model : LoadedModel or path
        A model from :func:`napari_anogan.checkpoint.load_checkpoint`, or its file.
    settings : ScoreSettings, optional
        Mapping and grid settings; defaults to :class:`ScoreSettings`'s.
    outdir : str or Path, optional
        Existing folder: write ``<stem>_residual.tif`` chunk by chunk, then
        ``<stem>_scores.csv`` and ``<stem>_summary.json`` (:func:`output_paths`), each to a
        temporary name renamed when complete. The result's ``residual`` is then a lazy
        (dask) view of the TIFF and its ``reconstruction`` is None (not an output).
    chunk_slices : int or None
        B-scans per chunk; None or 0: the whole volume in one chunk.
    slices : sequence of int, optional
        Score only these B-scans.
    boxes : sequence of (slice, row0, col0, row1, col1), optional
        Score only patches overlapping these raw-pixel rectangles (end-exclusive).
    partial_results : bool
        Attach the heatmaps so far to ``MAPPING_BATCH`` events (``event.partial``, a
        :class:`VolumeResult` with an empty patch table), at most every
        :data:`PARTIAL_EVERY_S` seconds, so a viewer can show results as batches finish.
    keep_patches : bool
        Keep the patch images and the mapping result in ``result.mapped``
        (:class:`MappedPatches`; evaluation); needs one chunk.

    Yields
    ------
    ProgressEvent
        STAGE, then the mapping's events as progress of the whole volume, DONE.

    Returns
    -------
    VolumeResult
        Heatmaps, patch table, B-scan and volume scores, candidates (raw pixel grid);
        ``outputs`` holds the written files by kind.

    Raises
    ------
    InputError
        If no patch of the requested region overlaps the retina, or the input is bad.
    ModelError
        If the model's patch size or preprocessing does not fit.
    OutputError
        If an output cannot be written.
    """
    from napari_anogan.io import TiffSliceWriter
    from napari_anogan.mapping import map_to_latent, random_start, resolve_mode
    from napari_anogan.models.feature_bank import feature_distance, patch_embeddings
    from napari_anogan.preprocess import cut_patches, plan_preprocessing
    from napari_anogan.scoring import assemble_heatmap

    settings = settings or ScoreSettings()
    model = _load_model(model)
    pre_config = _preprocess_config(model)
    _check_model_fits(model, pre_config)
    paths = output_paths(volume.name, outdir) if outdir is not None else {}
    yield ProgressEvent(EventKind.STAGE, 0, 0, message=f"preprocessing {volume.name}")
    s_count = volume.shape[0]
    step = int(chunk_slices) if chunk_slices else s_count
    plan = plan_preprocessing(volume, pre_config, max_chunk_slices=step)
    size = pre_config.patch_size
    chunks = _slice_chunks(s_count, step)
    coords = _grid(plan, chunks, size, settings.stride, slices, boxes)
    n = len(coords)
    if n == 0:
        raise InputError("no patch of the requested region overlaps the retina", volume.source)
    if keep_patches and len(chunks) > 1:
        raise ValueError("keep_patches needs the whole volume in one chunk (chunk_slices=None)")
    encoder = getattr(model, "encoder", None)
    bank = getattr(model, "feature_bank", None)
    mcfg = resolve_mode(_mapping_config(settings), encoder)
    z_start = None
    if mcfg.mode == "iterative":
        z_start = random_start(n, model.model_config.z_dim, mcfg.seed).numpy()
    logger.info("%s: mapping %d patches in %d chunks", volume.name, n, len(chunks))
    in_memory = outdir is None
    residual_all = np.empty(volume.shape, np.float32) if in_memory else None
    recon_all = np.empty(volume.shape, np.float32) if in_memory else None
    partial = _PartialHeatmaps(volume, plan, coords, size) if partial_results else None
    en_face = np.zeros((s_count, volume.shape[2]), np.float32)
    score_parts: dict[str, list[np.ndarray]] = {}
    kept = None
    chunk_of = np.searchsorted(coords[:, 0], [a for a, _ in chunks] + [s_count])
    done = 0
    writer = (
        contextlib.nullcontext()
        if in_memory
        else TiffSliceWriter(paths["residual"], volume.shape, np.float32)
    )
    with writer:
        for k, (a, b) in enumerate(chunks):
            lo, hi = int(chunk_of[k]), int(chunk_of[k + 1])
            sub = plan.geometry.sub(a, b)
            residual_flat = np.full(sub.band_shape, np.nan, np.float32)
            recon_flat = residual_flat
            if hi > lo:
                local = coords[lo:hi] - np.array([a, 0, 0])
                images = cut_patches(plan.band(a, b), local, size)
                job = map_to_latent(
                    model.generator,
                    model.discriminator,
                    images,
                    mcfg,
                    z_init=None if z_start is None else z_start[lo:hi],
                    encoder=encoder,
                )
                mapped = yield from _volume_progress(job, done, hi - lo, n, partial, lo)
                residual_flat = assemble_heatmap(mapped.residual_image, local, sub.band_shape)
                if in_memory:
                    recon_flat = assemble_heatmap(mapped.reconstruction, local, sub.band_shape)
                for name, values in mapped.scores().items():
                    score_parts.setdefault(name, []).append(np.asarray(values))
                if bank is not None:
                    emb = patch_embeddings(model.discriminator, images, bank.projection)
                    score_parts.setdefault("feature_distance", []).append(
                        feature_distance(bank, emb)
                    )
                if keep_patches:
                    kept = MappedPatches(coords=coords, images=images, mapping=mapped)
                del images, mapped
                done += hi - lo
            if in_memory:
                residual = _back_project(sub, residual_flat, fill_nan=0.0, out=residual_all[a:b])
                _back_project(
                    sub, recon_flat, intensity_range=plan.intensity_range, out=recon_all[a:b]
                )
            else:
                residual = _back_project(sub, residual_flat, fill_nan=0.0)
                writer.write(residual)
            for c0, c1 in _slice_chunks(b - a, BACK_PROJECT_SLICES):
                en_face[a + c0 : a + c1] = en_face_projection(
                    residual[c0:c1], plan.ilm[a + c0 : a + c1], plan.bm[a + c0 : a + c1]
                )
            del residual, residual_flat, recon_flat
    scores = {name: np.concatenate(parts) for name, parts in score_parts.items()}
    result = _volume_result(
        volume,
        model,
        settings,
        coords,
        scores,
        plan.geometry,
        size,
        residual=residual_all if in_memory else read_volume(paths["residual"], lazy=True).data,
        reconstruction=recon_all,
        ilm=plan.ilm,
        bm=plan.bm,
        en_face=en_face,
    )
    result.geometry, result.mapped = plan.geometry, kept
    if not in_memory:
        _write_tables(result, paths)
        result.outputs = paths
    yield ProgressEvent(EventKind.DONE, 1, 1, message=f"{volume.name} scored")
    return result


BACK_PROJECT_SLICES = 8
"""B-scans back-projected to the raw grid at a time (bounds the temporaries)."""


def _slice_chunks(n: int, size: int) -> list[tuple[int, int]]:
    size = max(1, int(size))
    return [(a, min(n, a + size)) for a in range(0, n, size)]


def _back_project(
    geometry,
    flat: np.ndarray,
    *,
    fill_nan: float | None = None,
    intensity_range: tuple[float, float] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``geometry.flat_to_raw_image(flat)`` a few B-scans at a time, as float32.

    Slice by slice the same as the whole-volume call (each B-scan maps on its own), with
    temporaries of a few B-scans instead of about ten float arrays of the whole raw
    volume. ``fill_nan`` replaces uncovered pixels; ``intensity_range`` maps [-1, 1]
    back to raw grey values.
    """
    s = geometry.raw_shape[0]
    out = np.empty(geometry.raw_shape, np.float32) if out is None else out
    for a, b in _slice_chunks(s, BACK_PROJECT_SLICES):
        raw = geometry.sub(a, b).flat_to_raw_image(flat[a:b])
        if fill_nan is not None:
            raw = np.nan_to_num(raw, nan=fill_nan)
        if intensity_range is not None:
            lo, hi = intensity_range
            raw = lo + (raw + 1.0) * 0.5 * (hi - lo)
        out[a:b] = raw
    return out


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


def _volume_result(
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
    }


def output_paths(name: str, outdir: str | Path) -> dict[str, Path]:
    """Output files of a volume, checked to stay inside ``outdir``."""
    outdir = Path(outdir)
    stem = safe_stem(name)
    return {
        "residual": outdir / f"{stem}_residual.tif",
        "scores": outdir / f"{stem}_scores.csv",
        "summary": outdir / f"{stem}_summary.json",
    }


def write_score_outputs(result: VolumeResult, outdir: str | Path) -> dict[str, Path]:
    """Write ``<stem>_residual.tif``, ``<stem>_scores.csv`` and ``<stem>_summary.json``.

    Every file is written atomically; returns their paths by kind. The stem is the
    volume name made safe as a file name (:func:`safe_stem`), so outputs stay inside
    ``outdir``.
    """
    paths = output_paths(result.name, outdir)
    write_tiff(paths["residual"], np.asarray(result.residual, dtype=np.float32))
    _write_tables(result, paths)
    return paths


def _write_tables(result: VolumeResult, paths: dict[str, Path]) -> None:
    rows = (  # row by row: the table is never built as Python objects
        {k: result.patches[k][i].item() for k in PATCH_COLUMNS}
        for i in range(len(result.patches["slice"]))
    )
    write_csv(paths["scores"], rows, columns=PATCH_COLUMNS)
    write_json(paths["summary"], summary_dict(result))


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
        "n_patches": len(result.patches["slice"]),
        "candidates": [{k: c[k] for k in CANDIDATE_COLUMNS} for c in result.candidates],
        "settings": result.settings,
        "model": result.model,
    }


def _expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    return [Path(p) for p in paths]


def _fingerprint(arrays: Iterable[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def collect_training_patches(
    paths: Sequence[str | Path],
    preprocess_config,
    patches_per_scan: int,
    seed: int = 0,
    *,
    holdout_fraction: float = 0.0,
    reference_stride: int = defaults.SCORE_STRIDE,
) -> Generator[ProgressEvent, None, tuple[np.ndarray, np.ndarray, dict, np.ndarray]]:
    """Read healthy scans, preprocess them and draw random training patches.

    With ``holdout_fraction``, that fraction of all B-scans (whole B-scans, spread over
    the inputs) is held out of training; their grid patches, cut as scoring cuts them,
    are returned as the reference set for the healthy score distribution. Grid patches
    rather than random ones, and whole B-scans rather than single patches: random
    patches are centred in the retina and score lower than the grid's edge patches, and
    patches of a B-scan that was trained on score lower than those of unseen B-scans
    (measured: both made the healthy 99th percentile far too low for unseen eyes).

    Parameters
    ----------
    paths : sequence of path
        Healthy volumes, B-scans or folders of B-scans.
    preprocess_config : PreprocessConfig
        Preprocessing of the model.
    patches_per_scan : int
        Random training patches per training B-scan.
    seed : int
        Seed of the held-out choice and of the patch positions.
    holdout_fraction : float
        Fraction of the B-scans held out (rounded over the inputs seen so far, so a
        single 2-D B-scan holds none out).
    reference_stride : int
        Grid stride of the reference patches (the scoring default).

    Returns
    -------
    patches : (N, 1, P, P) ndarray of float32
        Training patches.
    reference : (M, 1, P, P) ndarray of float32
        Grid patches of the held-out B-scans (M = 0 without any).
    info : dict
        ``inputs`` (paths), ``n_bscans``, ``n_patches``, ``data_fingerprint``,
        ``holdout_bscans`` (``[input index, slice]`` pairs) and ``n_reference_patches``.
    bank : (K, 1, P, P) ndarray of float32
        Grid patches of the training (not held-out) B-scans, cut as scoring cuts them:
        the healthy patches of the model's feature bank.
    """
    from napari_anogan.preprocess import grid_patches, preprocess_volume, random_patches

    inputs = _expand_inputs(paths)
    if not inputs:
        raise InputError("no healthy training inputs given")
    rng = np.random.default_rng(seed)
    pick_rng = np.random.default_rng([seed, 7])
    chunks, ref_chunks, bank_chunks, held_out = [], [], [], []
    n_bscans = 0
    for i, path in enumerate(inputs):
        yield ProgressEvent(EventKind.STAGE, i, len(inputs), message=f"preprocessing {path.name}")
        volume = read_volume(path)
        pre = preprocess_volume(volume, preprocess_config)
        n_slices = volume.shape[0]
        # Hold out round(f * B-scans so far) in total: the same fraction of every input
        # on average, exactly the fraction overall.
        k = round(holdout_fraction * (n_bscans + n_slices)) - len(held_out)
        held = np.sort(pick_rng.choice(n_slices, size=min(max(k, 0), n_slices), replace=False))
        train_slices = np.setdiff1d(np.arange(n_slices), held)
        chunks.append(random_patches(pre, patches_per_scan, seed=rng, slices=train_slices).images)
        if train_slices.size:
            grid = grid_patches(pre, stride=reference_stride, slices=train_slices)
            bank_chunks.append(grid.images)
        if held.size:
            ref_chunks.append(grid_patches(pre, stride=reference_stride, slices=held).images)
            held_out += [[i, int(s)] for s in held]
        n_bscans += n_slices
    patches = np.concatenate(chunks).astype(np.float32)
    size = preprocess_config.patch_size
    empty = np.zeros((0, 1, size, size), np.float32)
    reference = np.concatenate(ref_chunks).astype(np.float32) if ref_chunks else empty
    bank = np.concatenate(bank_chunks).astype(np.float32) if bank_chunks else empty
    info = {
        "inputs": [str(p) for p in inputs],
        "n_bscans": n_bscans,
        "n_patches": len(patches),
        "data_fingerprint": _fingerprint([patches]),
        "holdout_bscans": held_out,
        "n_reference_patches": len(reference),
    }
    return patches, reference, info, bank


def reference_patches_of(model) -> Generator[ProgressEvent, None, np.ndarray]:
    """Grid patches of a model's held-out training B-scans, cut as scoring cuts them.

    The patches :func:`collect_training_patches` gave its healthy reference, from the
    inputs and held-out B-scans the checkpoint records, with today's grid.

    Parameters
    ----------
    model : LoadedModel or path

    Returns
    -------
    (M, 1, P, P) ndarray of float32

    Raises
    ------
    ModelError
        If the checkpoint records no held-out B-scans, or its training inputs are gone.
    """
    from napari_anogan.preprocess import grid_patches, preprocess_volume

    model = _load_model(model)
    data = (model.training or {}).get("extra", {}).get("data", {})
    inputs = [Path(p) for p in data.get("inputs", [])]
    held: dict[int, list[int]] = {}
    for i, s in data.get("holdout_bscans", []):
        held.setdefault(int(i), []).append(int(s))
    if not held:
        raise ModelError("the model records no held-out B-scans", model.path)
    missing = [str(inputs[i]) for i in held if i >= len(inputs) or not inputs[i].exists()]
    if missing:
        raise ModelError(f"training inputs not found: {', '.join(missing)}", model.path)
    cfg = _preprocess_config(model)
    chunks = []
    for k, (i, slices) in enumerate(sorted(held.items())):
        yield ProgressEvent(
            EventKind.STAGE, k, len(held), message=f"preprocessing {inputs[i].name}"
        )
        pre = preprocess_volume(read_volume(inputs[i]), cfg)
        chunks.append(grid_patches(pre, stride=ScoreSettings().stride, slices=slices).images)
    return np.concatenate(chunks).astype(np.float32)


def train_from_paths(
    paths: Sequence[str | Path],
    output: str | Path,
    *,
    preset: str = defaults.TRAIN_PRESET,
    epochs: int = defaults.TRAIN_EPOCHS,
    patches_per_scan: int = defaults.PATCHES_PER_SCAN,
    batch_size: int = defaults.TRAIN_BATCH_SIZE,
    seed: int = defaults.SEED,
    device: str = defaults.DEVICE,
    resume: bool = False,
    preprocess_config=None,
    model_overrides: dict | None = None,
    train_overrides: dict | None = None,
    encoder: bool = defaults.TRAIN_ENCODER,
    encoder_epochs: int | None = None,
) -> Generator[ProgressEvent, None, object]:
    """Train a healthy model from files or folders of healthy scans.

    Parameters
    ----------
    paths : sequence of path
        Healthy volumes, B-scans or folders of B-scans.
    output : path
        Checkpoint file to write (atomically, after every epoch).
    preset : str
        Model preset (``paper``, ``small`` or ``tiny``).
    epochs, patches_per_scan, batch_size, seed, device
        Training settings (paper: 20 epochs).
    resume : bool
        Continue an interrupted run from ``output``.
    preprocess_config : PreprocessConfig, optional
        Preprocessing; stored in the checkpoint and reused by scoring.
    model_overrides : dict, optional
        Custom widths etc. passed to the preset.
    train_overrides : dict, optional
        Other :class:`~napari_anogan.train.TrainConfig` fields (e.g. ``reference_steps``).
    encoder : bool
        After the GAN, train the f-AnoGAN encoder (:func:`napari_anogan.train.add_encoder`)
        and store it in the checkpoint; the healthy reference is then computed with the
        ``hybrid`` mapping (the scoring default). With ``resume`` on a finished model
        (same inputs and settings) this adds an encoder to it.
    encoder_epochs : int, optional
        Encoder training epochs (default: :class:`~napari_anogan.train.EncoderConfig`'s).

    Last, the feature bank of the feature score is built from grid patches of the training
    B-scans (:func:`napari_anogan.train.add_feature_bank`) and the healthy reference is
    recomputed with it.

    Returns
    -------
    TrainResult
    """
    from napari_anogan.models import get_preset
    from napari_anogan.preprocess import PreprocessConfig
    from napari_anogan.train import TrainConfig, train_gan

    preprocess_config = preprocess_config or PreprocessConfig()
    model_config = get_preset(preset, **(model_overrides or {}))
    if model_config.patch_size != preprocess_config.patch_size:
        preprocess_config = type(preprocess_config)(
            **{**preprocess_config.to_dict(), "patch_size": model_config.patch_size}
        )
    train_config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=device,
        **(train_overrides or {}),
    )
    patches, reference, info, bank_patches = yield from collect_training_patches(
        paths,
        preprocess_config,
        patches_per_scan,
        seed=seed,
        holdout_fraction=train_config.holdout_fraction,
        reference_stride=ScoreSettings().stride,
    )
    # Held-out B-scans give the reference; only without any (a single B-scan) does
    # train_gan hold out single patches instead.
    reference_patches = reference if len(reference) else None
    extra = {
        "preprocess_config": preprocess_config.to_dict(),
        "data_fingerprint": info["data_fingerprint"],
        "data": info,
    }
    result = yield from train_gan(
        patches,
        model_config,
        train_config,
        Path(output),
        resume=resume,
        extra=extra,
        build_reference=not encoder,
        reference_patches=reference_patches,
    )
    if encoder:
        from napari_anogan.train import EncoderConfig, add_encoder

        encoder_config = EncoderConfig(
            seed=seed, device=device, **({"epochs": encoder_epochs} if encoder_epochs else {})
        )
        result = yield from add_encoder(
            Path(output),
            patches,
            encoder_config,
            data_fingerprint=info["data_fingerprint"],
            reference_patches=reference_patches,
        )
    from napari_anogan import ddp
    from napari_anogan.train import add_feature_bank

    ctx = ddp.current()
    if len(bank_patches) and (ctx is None or ctx.is_main):  # rank 0 writes the model
        result.feature_bank, result.reference = yield from add_feature_bank(
            Path(output), bank_patches, reference_patches, device=device
        )
    return result


DEMO_SETTINGS = ScoreSettings()
"""The demo's settings: the scoring defaults, i.e. the hybrid mapping (encoder start, then
10 steps of the paper's loss) instead of the paper's 500 iterative steps."""


def _mode_text(settings: ScoreSettings) -> str:
    if settings.mode == "iterative":
        return f"iterative mapping, {settings.steps} steps"
    if settings.mode == "hybrid":
        return f"hybrid mapping: encoder start + {settings.hybrid_steps} steps"
    return "encoder mapping: one pass"


def run_demo(
    outdir: str | Path, settings: ScoreSettings | None = None, *, real: bool = False
) -> Generator[ProgressEvent, None, str]:
    """Score the bundled sample volume with the bundled model and summarise the result.

    Writes the ``score`` outputs to ``outdir`` and returns a short text report that also
    says which candidates overlap the sample's planted lesions (its mask is known). With
    ``real``: the bundled real B-scan (OCTDL, DME) with the bundled real model instead.
    """
    from napari_anogan.resources import BUNDLED_MODEL, SAMPLE_MASK, SAMPLE_VOLUME, sample_path

    settings = settings or DEMO_SETTINGS
    if real:
        return (yield from _run_real_demo(outdir, settings))
    volume = read_volume(sample_path(SAMPLE_VOLUME))
    mask = read_volume(sample_path(SAMPLE_MASK)).data
    result = yield from score_volume(volume, sample_path(BUNDLED_MODEL), settings, outdir=outdir)
    paths = result.outputs
    lines = [
        f"napari-anogan demo: bundled sample {volume.name} {volume.shape} scored with the "
        f"bundled small model ({_mode_text(settings)}; the paper maps with 500 steps "
        "from a random start).",
        f"volume score {result.volume_score:.4g}; {len(result.patches['slice'])} patches; "
        f"{len(result.candidates)} candidate regions above the "
        f"{settings.percentile_threshold:g}th healthy percentile.",
    ]
    for cand in result.candidates[:5]:
        region = mask[
            cand["slice_start"] : cand["slice_end"] + 1,
            cand["row"] : cand["row"] + cand["height"],
            cand["col"] : cand["col"] + cand["width"],
        ]
        hit = np.unique(region[region > 0])
        lines.append(
            f"  #{cand['rank']}: slices {cand['slice_start']}-{cand['slice_end']}, "
            f"rows {cand['row']}-{cand['row'] + cand['height']}, cols {cand['col']}-"
            f"{cand['col'] + cand['width']}, max score {cand['max_score']:.4g}, "
            f"planted lesion labels inside: {hit.tolist() or 'none'}"
        )
    lines.append("outputs: " + ", ".join(str(p) for p in paths.values()))
    return "\n".join(lines)


def _run_real_demo(outdir: str | Path, settings: ScoreSettings) -> Generator:
    from napari_anogan.resources import BUNDLED_REAL_MODEL, REAL_SAMPLE, sample_path

    volume = read_volume(sample_path(REAL_SAMPLE))
    model = sample_path(BUNDLED_REAL_MODEL)
    result = yield from score_volume(volume, model, settings, outdir=outdir)
    percent = result.patches["healthy_percentile"]
    lines = [
        f"napari-anogan demo --real: OCTDL B-scan {volume.name} (diabetic macular edema, "
        f"not seen in training) scored with the bundled model trained on 205 healthy OCTDL "
        f"B-scans ({_mode_text(settings)}; ranked by {result.settings['score_column']}).",
        f"B-scan score {result.volume_score:.4g}; {len(percent)} patches, "
        f"{int(np.sum(percent >= settings.percentile_threshold))} above the "
        f"{settings.percentile_threshold:g}th healthy percentile; "
        f"{len(result.candidates)} candidate regions.",
    ]
    for cand in result.candidates[:5]:
        lines.append(
            f"  #{cand['rank']}: rows {cand['row']}-{cand['row'] + cand['height']}, cols "
            f"{cand['col']}-{cand['col'] + cand['width']}, max score {cand['max_score']:.4g}"
        )
    lines.append("outputs: " + ", ".join(str(p) for p in result.outputs.values()))
    return "\n".join(lines)

"""The one scoring path: :func:`score_volume` maps and scores a volume for every caller.

The GUI and ``evaluate`` keep the result in memory; the CLI, Dask and the demo have it
written chunk by chunk (:mod:`napari_anogan.pipeline.outputs`). Like every job here it
is a generator of :class:`~napari_anogan.events.ProgressEvent` whose return value is the
result: the CLI drains it with a progress bar, the GUI runs it in a ``thread_worker``
(Cancel is honoured at the next yield).

torch, the checkpoint reader and the preprocessing are imported inside the functions
that use them, so that importing the package (napari's plugin discovery, the widgets'
forms, ``napari-anogan --help``) stays light.

Over 500 lines on purpose: the one scoring path (chunks, partial heatmaps, back-projection,
feature distances) stays in one module, so every caller runs exactly the same code.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from napari_anogan import settings as defaults
from napari_anogan._atomic import remove_stale_temporaries
from napari_anogan.errors import InputError
from napari_anogan.events import EventKind, ProgressEvent
from napari_anogan.io import Volume, read_volume
from napari_anogan.pipeline.outputs import (
    PATCH_COLUMNS,
    SCORE_COLUMNS,
    MappedPatches,
    OutputSet,
    VolumeResult,
    en_face_projection,
    output_paths,
    summary_dict,
    volume_result,
    write_overview,
    write_patch_table,
)

logger = logging.getLogger(__name__)


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


def load_model(model):
    """Return ``model``, loading it first if it is a checkpoint path."""
    from napari_anogan.checkpoint import load_checkpoint

    return load_checkpoint(model) if isinstance(model, (str, Path)) else model


def model_preprocess_config(model):
    """Return the :class:`~napari_anogan.preprocess.PreprocessConfig` a model was trained with."""
    from napari_anogan.preprocess import PreprocessConfig

    return PreprocessConfig.from_dict(model.preprocess_config)


def mapping_config(settings: ScoreSettings):
    """Return the :class:`~napari_anogan.mapping.MappingConfig` of scoring ``settings``."""
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
    summary_extra: dict | None = None,
    figures: bool = defaults.WRITE_FIGURES,
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
        ``<stem>_scores.csv``, ``<stem>_overview.png`` (``figures``), then
        ``<stem>_summary.json`` with the manifest of the others
        (:class:`~napari_anogan.pipeline.outputs.OutputSet`: temporary names, renamed
        together, the summary last). Temporary files a killed run left in the
        folder are removed first. The result's ``residual`` is then a lazy (dask) view of
        the TIFF and its ``reconstruction`` is None (not an output).
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
    summary_extra : dict, optional
        Keys added to the written summary (the re-run fingerprint of Dask batches).
    figures : bool
        With ``outdir``: also write the quick-look figure ``<stem>_overview.png``
        (:mod:`napari_anogan.pipeline.overview`) into the set, before the summary.

    Yields
    ------
    ProgressEvent
        STAGE (preprocessing), the mapping's events as progress of the whole volume,
        STAGE (writing, with ``outdir``), DONE.

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
    model = load_model(model)
    pre_config = model_preprocess_config(model)
    _check_model_fits(model, pre_config)
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
    mcfg = resolve_mode(mapping_config(settings), encoder)
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
    if in_memory:
        files, writer = contextlib.nullcontext(), contextlib.nullcontext()
    else:
        remove_stale_temporaries(outdir)
        files = OutputSet(volume.name, outdir)
        staged_residual = files.stage("residual")
        writer = TiffSliceWriter(staged_residual, volume.shape, np.float32, atomic=False)
    with files:
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
                    residual = _back_project(
                        sub, residual_flat, fill_nan=0.0, out=residual_all[a:b]
                    )
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
        result = volume_result(
            volume,
            model,
            settings,
            coords,
            scores,
            plan.geometry,
            size,
            residual=residual_all,
            reconstruction=recon_all,
            ilm=plan.ilm,
            bm=plan.bm,
            en_face=en_face,
        )
        result.geometry, result.mapped = plan.geometry, kept
        if plan.retina_found is not None:
            result.no_retina = np.flatnonzero(~plan.retina_found).tolist()
        if not in_memory:
            yield ProgressEvent(
                EventKind.STAGE, 0, 0, message=f"writing the outputs of {volume.name}"
            )
            # the heatmap threshold and the overview read the residual just written
            result.residual = read_volume(staged_residual, lazy=True).data
            write_patch_table(result, files.stage("scores"), atomic=False)
            outputs = output_paths(volume.name, outdir, figures=figures)
            if figures:
                overview = files.stage("overview", outputs["overview"])
                write_overview(result, volume.data, overview)
            files.commit({**summary_dict(result), **(summary_extra or {})})
            result.outputs = outputs
            result.residual = read_volume(files.paths["residual"], lazy=True).data
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

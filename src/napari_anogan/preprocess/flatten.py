"""The whole preprocessing of a volume: normalise, resample, boundaries, flatten, crop."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_anogan import settings as defaults
from napari_anogan.errors import InputError
from napari_anogan.io.volume import Volume, plausible_spacing
from napari_anogan.preprocess.boundaries import default_chunk_slices, detect_boundaries_chunked
from napari_anogan.preprocess.config import PreprocessConfig
from napari_anogan.preprocess.geometry import Geometry
from napari_anogan.preprocess.normalise import (
    apply_intensity_range,
    intensity_range_chunked,
    resample_width,
    resampled_width,
)

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class PreprocessedVolume:
    """A volume ready for patch extraction, with everything needed to map back.

    Attributes
    ----------
    flat : (S, Hb, Wr) ndarray of float32
        The flattened retina band, grey values in [-1, 1] (-1 where the band reaches
        outside the raw image).
    geometry : Geometry
        Raw grid <-> band mapping (resampling, per-column shifts, crop).
    ilm, bm : (S, W) ndarray of float32
        ILM and Bruch's membrane rows in the raw pixel grid of the input.
    ilm_flat : (S, Wr) ndarray of float32
        ILM rows inside the band.
    bm_flat : (S, Wr) ndarray of float32
        Bruch's membrane rows inside the band (all equal to ``geometry.bm_row``).
    retina_mask : (S, Hb, Wr) ndarray of bool
        True between the ILM and Bruch's membrane (inclusive) in the band.
    intensity_range : tuple of float
        Raw grey values mapped to -1 and +1.
    config : PreprocessConfig
        The settings used.
    """

    flat: np.ndarray
    geometry: Geometry
    ilm: np.ndarray
    bm: np.ndarray
    ilm_flat: np.ndarray
    bm_flat: np.ndarray
    retina_mask: np.ndarray
    intensity_range: tuple[float, float]
    config: PreprocessConfig


def _as_stack(volume: Volume) -> Any:
    """Return the data as (S, H, W) without reading it (numpy, memmap or dask)."""
    data = volume.data
    if not hasattr(data, "shape") or not hasattr(data, "__getitem__"):
        data = np.asarray(data)
    if len(data.shape) == 2:
        data = data[None]
    if len(data.shape) != 3:
        raise InputError(
            f"expected B-scans of shape (slices, height, width), got shape {data.shape}",
            volume.source or None,
        )
    return data


def plan_band(
    ilm: np.ndarray, bm: np.ndarray, config: PreprocessConfig
) -> tuple[np.ndarray, int, int]:
    """Per-column shifts that put Bruch's membrane on one row, and the band size.

    Parameters
    ----------
    ilm, bm : (S, Wr) ndarray
        Boundary rows at the band's column sampling.
    config : PreprocessConfig
        Margins, fixed band height and patch size.

    Returns
    -------
    offsets : (S, Wr) ndarray of int64
        ``raw_row = band_row + offsets``.
    band_height : int
        Rows of the band: ``margin_above`` + thickest retina + ``margin_below`` + 1, at
        least ``patch_size`` (extra rows split above and below); or ``config.band_height``
        with BM ``margin_below`` rows above the band's bottom.
    bm_row : int
        Band row of Bruch's membrane.
    """
    bm_int = np.rint(bm).astype(np.int64)
    thickness = int(np.ceil(np.max(bm_int - ilm))) if bm.size else 0
    thickness = max(thickness, 0)
    bm_row = config.margin_above + thickness
    height = bm_row + config.margin_below + 1
    if config.band_height is not None:
        # fixed layout: BM on the same band row for every volume, extra rows above
        height = int(config.band_height)
        bm_row = max(0, height - config.margin_below - 1)
        if bm_row < config.margin_above + thickness:
            logger.warning(
                "band_height %d is less than the thickest retina (%d rows) + margins; "
                "the top of the retina is cut",
                height,
                thickness,
            )
    elif height < config.patch_size:
        extra = config.patch_size - height
        bm_row += extra // 2
        height = config.patch_size
    return bm_int - bm_row, int(height), int(bm_row)


@dataclass(eq=False)
class PreprocessPlan:
    """Everything preprocessing decides about a volume, without its band images.

    Made by :func:`plan_preprocessing` from a few passes over the data, one chunk of
    B-scans at a time; :meth:`band` then makes the flattened band of any B-scans
    (reading just those), so a volume can be processed chunk by chunk in bounded
    memory. :func:`preprocess_volume` is :meth:`preprocessed` of a plan.

    Attributes
    ----------
    data : (S, H, W) array-like
        The raw grey values (numpy, memory-mapped or dask); read by slices only.
    geometry : Geometry
    ilm, bm : (S, W) ndarray of float32
        Boundary rows in the raw grid.
    ilm_flat : (S, Wr) ndarray of float32
        ILM rows in the band.
    intensity_range : tuple of float
    config : PreprocessConfig
    chunk_slices : int
        B-scans read and processed at a time.
    name, source : str
        Of the volume (log and error messages).
    retina_found : (S,) ndarray of bool or None
        B-scans where the boundary search found a retina
        (:func:`~napari_anogan.preprocess.boundaries.retina_evidence`); the others have
        an empty retina mask (no patch is cut from them) and the median boundaries of the
        rest. None: all.
    """

    data: Any
    geometry: Geometry
    ilm: np.ndarray
    bm: np.ndarray
    ilm_flat: np.ndarray
    intensity_range: tuple[float, float]
    config: PreprocessConfig
    chunk_slices: int
    name: str = ""
    source: str = ""
    retina_found: np.ndarray | None = None

    @property
    def n_slices(self) -> int:
        """Number of B-scans."""
        return int(self.geometry.raw_shape[0])

    def chunks(self, size: int | None = None) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of consecutive chunks of ``size`` (default: ``chunk_slices``)."""
        size = int(size or self.chunk_slices)
        for start in range(0, self.n_slices, size):
            yield start, min(self.n_slices, start + size)

    def resampled(self, start: int, stop: int) -> np.ndarray:
        """Normalised, width-resampled B-scans ``start:stop``, (n, H, Wr) float32."""
        raw = np.asarray(self.data[start:stop])
        norm = apply_intensity_range(raw, self.intensity_range)
        del raw
        return resample_width(norm, self.geometry.resampled_width)

    def band(self, start: int, stop: int) -> np.ndarray:
        """Return the flattened band of B-scans ``start:stop``, (n, Hb, Wr) float32."""
        geometry = self.geometry
        out = np.empty((stop - start, geometry.band_height, geometry.resampled_width), np.float32)
        for a, b in _ranges(start, stop, self.chunk_slices):
            out[a - start : b - start] = geometry.sub(a, b).band_from_resampled(
                self.resampled(a, b), fill=-1.0
            )
        return out

    def retina_mask(self, start: int, stop: int) -> np.ndarray:
        """(n, Hb, Wr) bool: True between the ILM and Bruch's membrane in the band."""
        rows = np.arange(self.geometry.band_height)[None, :, None]
        mask = (rows >= self.ilm_flat[start:stop, None, :]) & (rows <= self.geometry.bm_row)
        if self.retina_found is not None:
            mask &= self.retina_found[start:stop, None, None]
        return mask

    def preprocessed(self, start: int = 0, stop: int | None = None) -> PreprocessedVolume:
        """Return the :class:`PreprocessedVolume` of B-scans ``start:stop`` (default: all).

        For a chunk, ``geometry`` is :meth:`Geometry.sub` (its slice 0 is ``start``).
        """
        stop = self.n_slices if stop is None else int(stop)
        geometry = self.geometry if (start, stop) == (0, self.n_slices) else None
        geometry = geometry or self.geometry.sub(start, stop)
        ilm_flat = self.ilm_flat[start:stop]
        return PreprocessedVolume(
            flat=self.band(start, stop),
            geometry=geometry,
            ilm=self.ilm[start:stop],
            bm=self.bm[start:stop],
            ilm_flat=ilm_flat,
            bm_flat=np.full(ilm_flat.shape, self.geometry.bm_row, np.float32),
            retina_mask=self.retina_mask(start, stop),
            intensity_range=self.intensity_range,
            config=self.config,
        )


def _ranges(start: int, stop: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(start, stop, size):
        yield a, min(stop, a + size)


def plan_preprocessing(
    volume: Volume,
    config: PreprocessConfig | None = None,
    *,
    chunk_slices: int | None = None,
    max_chunk_slices: int | None = None,
) -> PreprocessPlan:
    """Decide the preprocessing of a volume (intensity range, boundaries, geometry).

    Reads the data a chunk of B-scans at a time (2-5 passes for the exact intensity
    percentiles, one for the boundaries, one more for B-scans whose boundaries are
    searched again), never holding more than one chunk of float images, so memory does
    not grow with the number of B-scans beyond (S, W) boundary arrays. The results are
    the same for every chunk size.

    Parameters
    ----------
    volume : Volume
        The scan; ``data`` (S, H, W) (2-D: S = 1) as numpy, memory-mapped or dask array.
    config : PreprocessConfig, optional
        Settings; the defaults follow the paper.
    chunk_slices : int, optional
        B-scans per chunk; default about 8 MiB of float32 per chunk.
    max_chunk_slices : int, optional
        Upper bound of the default chunk.

    Returns
    -------
    PreprocessPlan

    Raises
    ------
    InputError
        As :func:`preprocess_volume`.
    """
    config = config or PreprocessConfig()
    data = _as_stack(volume)
    s, h, w = (int(v) for v in data.shape)
    source = volume.source or volume.name or None
    spacing = plausible_spacing(volume.spacing, source)
    spacing_x = spacing[2]
    wr = resampled_width(w, spacing_x, config.column_spacing_um, config.target_width)
    p = config.patch_size
    if h < p or wr < p:
        raise InputError(
            f"B-scans of {h} rows x {w} columns ({wr} columns after resampling to "
            f"{config.column_spacing_um:g} um) are smaller than one {p}x{p} patch",
            source,
        )
    chunk = int(chunk_slices) if chunk_slices else default_chunk_slices(h, max(w, wr))
    if max_chunk_slices and not chunk_slices:
        chunk = min(chunk, int(max_chunk_slices))
    if chunk < 1:
        raise ValueError(f"chunk_slices must be >= 1, got {chunk_slices}")

    def raw_chunks() -> Iterator[np.ndarray]:
        for a, b in _ranges(0, s, chunk):
            yield np.asarray(data[a:b])

    intensity_range = intensity_range_chunked(
        raw_chunks, config.low_percentile, config.high_percentile, source=source
    )

    def resampled(a: int, b: int) -> np.ndarray:
        norm = apply_intensity_range(np.asarray(data[a:b]), intensity_range)
        return resample_width(norm, wr)

    spacing_z = spacing[1]
    evidence = np.zeros(s)
    ilm_r, bm_r = detect_boundaries_chunked(
        resampled,
        (s, h, wr),
        chunk_slices=chunk,
        evidence=evidence,
        **config.detection_params(spacing_z),
    )
    retina_found = _check_retina(evidence, source or volume.name)
    if not retina_found.all():
        # the band is laid out by the retina found; the others take its median boundaries
        ilm_r[~retina_found] = np.median(ilm_r[retina_found], axis=0)
        bm_r[~retina_found] = np.median(bm_r[retina_found], axis=0)
    offsets, band_height, bm_row = plan_band(ilm_r, bm_r, config)
    geometry = Geometry((s, h, w), wr, band_height, offsets, bm_row)

    # boundaries on the raw columns (depth is not resampled: only the columns move)
    u = np.clip(geometry.raw_col_to_flat(np.arange(w)), 0, wr - 1)
    grid = np.arange(wr)
    ilm = np.stack([np.interp(u, grid, ilm_r[i]) for i in range(s)]).astype(np.float32)
    bm = np.stack([np.interp(u, grid, bm_r[i]) for i in range(s)]).astype(np.float32)
    logger.info(
        "%s: %s -> band %s, retina %.0f-%.0f rows thick",
        volume.name,
        (s, h, w),
        geometry.band_shape,
        float(np.min(bm_r - ilm_r)),
        float(np.max(bm_r - ilm_r)),
    )
    return PreprocessPlan(
        data=data,
        geometry=geometry,
        ilm=ilm,
        bm=bm,
        ilm_flat=(ilm_r - offsets).astype(np.float32),
        intensity_range=intensity_range,
        config=config,
        chunk_slices=chunk,
        name=volume.name,
        source=volume.source,
        retina_found=None if retina_found.all() else retina_found,
    )


def _check_retina(evidence: np.ndarray, source: str | None) -> np.ndarray:
    """B-scans with a retina; refuse a scan without any (blank, a mask, not an OCT scan)."""
    found = evidence >= defaults.RETINA_MIN_COLUMNS
    n = len(found)
    if not found.any():
        best = float(np.max(evidence)) if n else 0.0
        raise InputError(
            f"no retina found in {'its B-scan' if n == 1 else f'any of its {n} B-scans'} "
            f"(at best {best:.0%} of the columns show retina, a grey band brighter than the "
            f"vitreous above it; {defaults.RETINA_MIN_COLUMNS:.0%} needed): expected an OCT scan "
            "of the retina, not a blank image or a lesion mask",
            source,
        )
    if not found.all():
        missing = np.flatnonzero(~found)
        shown = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        logger.warning(
            "%s: no retina found in %d of %d B-scans (%s); they are not scored",
            source,
            len(missing),
            n,
            shown,
        )
    return found


def preprocess_volume(
    volume: Volume, config: PreprocessConfig | None = None, *, chunk_slices: int | None = None
) -> PreprocessedVolume:
    """Normalise, resample, find the retina and flatten it into a band (paper, section 3).

    Steps: grey values to [-1, 1] by robust percentiles (:func:`normalise_intensity`);
    width resampled to ``round(W * spacing_x / column_spacing_um)`` columns when the
    column spacing is known, else ``target_width`` (depth is kept); ILM and Bruch's
    membrane found per column (:func:`detect_boundaries`); every column shifted by an
    integer number of rows so that Bruch's membrane is one straight row; a band cropped
    from ``margin_above`` rows above the highest ILM to ``margin_below`` rows below BM.

    The volume is processed a chunk of B-scans at a time (:func:`plan_preprocessing`,
    then :meth:`PreprocessPlan.band` per chunk): memory holds the band and one chunk of
    float images, never a float copy of the whole raw volume, and the result is the
    same for every chunk size.

    Parameters
    ----------
    volume : Volume
        The scan; ``data`` of shape (S, H, W) (a 2-D B-scan is taken as S = 1), numpy,
        memory-mapped or dask.
    config : PreprocessConfig, optional
        Settings; the defaults follow the paper.
    chunk_slices : int, optional
        B-scans per chunk (memory bound); default about 8 MiB of float32 per chunk.

    Returns
    -------
    PreprocessedVolume

    Raises
    ------
    InputError
        If the data is not 2-D/3-D, is constant or contains NaN, or the B-scans are
        smaller than one patch (height or resampled width < ``patch_size``).

    Examples
    --------
    >>> from napari_anogan.datasets.synthetic import make_volume
    >>> syn = make_volume(2, 160, 192, seed=0)
    >>> pre = preprocess_volume(Volume(syn.data, spacing=syn.spacing))
    >>> pre.flat.shape[0], pre.flat.dtype
    (2, dtype('float32'))
    """
    return plan_preprocessing(volume, config, chunk_slices=chunk_slices).preprocessed()

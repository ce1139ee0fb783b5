"""The geometry of one preprocessed volume: raw grid <-> flattened retina band.

Every geometric step of preprocessing is recorded here, so that any patch, point or
heatmap pixel of the flattened band maps back to the raw pixel grid of the input:

1. width resampling: ``W`` raw columns -> ``Wr`` band columns, pixel centres aligned as in
   :func:`skimage.transform.resize` (band column ``u`` sits at raw column
   ``(u + 0.5) * W / Wr - 0.5``); depth is never resampled;
2. flattening + cropping: in band column ``u`` of B-scan ``s`` the band row ``rf`` is the raw
   row ``rf + offsets[s, u]`` (an integer shift per slice and column, so that Bruch's
   membrane lies on band row ``bm_row``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_anogan.preprocess.normalise import resample_width


@dataclass(eq=False)
class Geometry:
    """Mapping between the raw volume grid and the flattened retina band.

    Parameters
    ----------
    raw_shape : tuple of int
        ``(S, H, W)`` of the input volume.
    resampled_width : int
        ``Wr``, columns of the band.
    band_height : int
        ``Hb``, rows of the band.
    offsets : (S, Wr) ndarray of int
        Raw row of band row 0, per slice and band column: ``raw_row = band_row + offsets``.
    bm_row : int
        Band row on which Bruch's membrane lies after flattening.

    Examples
    --------
    >>> g = Geometry((1, 10, 8), 4, 5, np.array([[2, 2, 3, 3]]), 3)
    >>> g.flat_to_raw_points(np.array([[0.0, 1.0, 0.0]])).tolist()
    [[0.0, 3.0, 0.5]]
    >>> g.box_to_raw(0, 0, 0, 2, 4)
    (2, 0, 5, 8)
    """

    raw_shape: tuple[int, int, int]
    resampled_width: int
    band_height: int
    offsets: np.ndarray
    bm_row: int

    def __post_init__(self) -> None:
        self.raw_shape = tuple(int(v) for v in self.raw_shape)  # type: ignore[assignment]
        self.resampled_width = int(self.resampled_width)
        self.band_height = int(self.band_height)
        self.bm_row = int(self.bm_row)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        expected = (self.raw_shape[0], self.resampled_width)
        if self.offsets.shape != expected:
            raise ValueError(f"offsets must have shape {expected}, got {self.offsets.shape}")

    # -- comparison and serialisation ---------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return (
            self.raw_shape == other.raw_shape
            and self.resampled_width == other.resampled_width
            and self.band_height == other.band_height
            and self.bm_row == other.bm_row
            and np.array_equal(self.offsets, other.offsets)
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (offsets as nested lists)."""
        return {
            "raw_shape": list(self.raw_shape),
            "resampled_width": self.resampled_width,
            "band_height": self.band_height,
            "offsets": self.offsets.tolist(),
            "bm_row": self.bm_row,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        """Rebuild a geometry from :meth:`to_dict` output."""
        return cls(
            raw_shape=tuple(data["raw_shape"]),  # type: ignore[arg-type]
            resampled_width=data["resampled_width"],
            band_height=data["band_height"],
            offsets=np.asarray(data["offsets"], dtype=np.int64).reshape(
                data["raw_shape"][0], data["resampled_width"]
            ),
            bm_row=data["bm_row"],
        )

    def sub(self, start: int, stop: int) -> Geometry:
        """Geometry of B-scans ``start:stop`` alone (a chunk of a volume is a volume).

        Parameters
        ----------
        start, stop : int
            Slice range, ``0 <= start < stop <= S``.

        Returns
        -------
        Geometry
            Same resampling and band, ``raw_shape[0] == stop - start``; its slice 0 is
            slice ``start`` of this one. Every image method works slice by slice, so
            results on a chunk equal the same slices of the whole.
        """
        s = self.raw_shape[0]
        if not 0 <= start < stop <= s:
            raise ValueError(f"need 0 <= start < stop <= {s}, got {start}, {stop}")
        return Geometry(
            (stop - start, *self.raw_shape[1:]),
            self.resampled_width,
            self.band_height,
            self.offsets[start:stop],
            self.bm_row,
        )

    # -- shapes and column mapping ------------------------------------------------------
    @property
    def band_shape(self) -> tuple[int, int, int]:
        """``(S, Hb, Wr)``, the shape of the flattened band."""
        return (self.raw_shape[0], self.band_height, self.resampled_width)

    @property
    def _scale(self) -> float:
        """Raw columns per band column."""
        return self.raw_shape[2] / self.resampled_width

    def flat_col_to_raw(self, u: np.ndarray | float) -> np.ndarray:
        """Raw column (float) of band column ``u`` (pixel centres aligned)."""
        return (np.asarray(u, dtype=np.float64) + 0.5) * self._scale - 0.5

    def raw_col_to_flat(self, x: np.ndarray | float) -> np.ndarray:
        """Band column (float) of raw column ``x``."""
        return (np.asarray(x, dtype=np.float64) + 0.5) / self._scale - 0.5

    def _nearest_band_col(self, u: np.ndarray) -> np.ndarray:
        # round half up, with a margin far above float error, so that a column computed
        # from x = f(u) rounds like u itself (round trips stay exact at half columns)
        return np.clip(np.floor(u + 0.5 + 1e-7), 0, self.resampled_width - 1).astype(np.int64)

    def valid_mask(self) -> np.ndarray:
        """Band pixels that come from inside the raw image.

        Returns
        -------
        (S, Hb, Wr) ndarray of bool
            False where the band reaches above row 0 or below row H-1 of the raw image
            (there the band holds the fill value).
        """
        raw_rows = np.arange(self.band_height)[None, :, None] + self.offsets[:, None, :]
        return (raw_rows >= 0) & (raw_rows < self.raw_shape[1])

    # -- points and boxes ---------------------------------------------------------------
    def flat_to_raw_points(self, points: np.ndarray) -> np.ndarray:
        """Map points of the band to the raw grid.

        Parameters
        ----------
        points : (N, 3) array_like
            ``slice, row, col`` in band coordinates (float allowed).

        Returns
        -------
        (N, 3) ndarray of float64
            ``slice, row, col`` in raw coordinates. The row shift is the one of the
            nearest band column, so integer band pixels map to raw pixel centres.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        s = np.clip(np.rint(pts[:, 0]), 0, self.raw_shape[0] - 1).astype(np.int64)
        u = pts[:, 2]
        shift = self.offsets[s, self._nearest_band_col(u)]
        return np.stack([pts[:, 0], pts[:, 1] + shift, self.flat_col_to_raw(u)], axis=1)

    def raw_to_flat_points(self, points: np.ndarray) -> np.ndarray:
        """Map raw points into the band (inverse of :meth:`flat_to_raw_points`).

        Parameters
        ----------
        points : (N, 3) array_like
            ``slice, row, col`` in raw coordinates.

        Returns
        -------
        (N, 3) ndarray of float64
            ``slice, row, col`` in band coordinates; rows may fall outside ``[0, Hb)``
            for points outside the band.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        s = np.clip(np.rint(pts[:, 0]), 0, self.raw_shape[0] - 1).astype(np.int64)
        u = self.raw_col_to_flat(pts[:, 2])
        shift = self.offsets[s, self._nearest_band_col(u)]
        return np.stack([pts[:, 0], pts[:, 1] - shift, u], axis=1)

    def box_to_raw(
        self, slice_: int, row: int, col: int, height: int, width: int
    ) -> tuple[int, int, int, int]:
        """Raw bounding box of a box (e.g. a patch) of the band.

        Parameters
        ----------
        slice_ : int
            B-scan index.
        row, col : int
            Top-left corner of the box in the band.
        height, width : int
            Size of the box in band pixels.

        Returns
        -------
        tuple of int
            ``(row0, col0, row1, col1)`` in raw pixels, end-exclusive, clipped to the raw
            image: the smallest raw rectangle holding every raw pixel the box came from
            (rows follow the per-column shifts, columns the resampling footprint).
        """
        _, h, w = self.raw_shape
        c0 = max(0, int(col))
        c1 = min(self.resampled_width, int(col) + int(width))
        if c1 <= c0:
            c0 = c1 = int(np.clip(col, 0, self.resampled_width - 1))
            c1 = c0 + 1
        shifts = self.offsets[int(slice_), c0:c1]
        row0 = int(row) + int(shifts.min())
        row1 = int(row) + int(height) + int(shifts.max())
        col0 = int(np.floor(int(col) * self._scale + 1e-9))
        col1 = int(np.ceil((int(col) + int(width)) * self._scale - 1e-9))
        return (
            int(np.clip(row0, 0, h)),
            int(np.clip(col0, 0, w)),
            int(np.clip(row1, 0, h)),
            int(np.clip(col1, 0, w)),
        )

    # -- images -------------------------------------------------------------------------
    def band_from_resampled(self, resampled: np.ndarray, fill: float = 0) -> np.ndarray:
        """Cut the flattened band out of a width-resampled volume.

        Parameters
        ----------
        resampled : (S, H, Wr) ndarray
            Volume already resampled to the band width.
        fill : float
            Value where the band reaches outside the raw image.

        Returns
        -------
        (S, Hb, Wr) ndarray, dtype of ``resampled``
        """
        s, h, wr = self.raw_shape[0], self.raw_shape[1], self.resampled_width
        if resampled.shape != (s, h, wr):
            raise ValueError(f"expected shape {(s, h, wr)}, got {resampled.shape}")
        raw_rows = np.arange(self.band_height)[None, :, None] + self.offsets[:, None, :]
        valid = (raw_rows >= 0) & (raw_rows < h)
        out = np.take_along_axis(resampled, np.clip(raw_rows, 0, h - 1), axis=1)
        out[~valid] = fill
        return out

    def raw_to_flat_image(self, raw: np.ndarray, fill: float = 0) -> np.ndarray:
        """Bring a raw-grid image (e.g. a lesion mask) into the flattened band.

        Parameters
        ----------
        raw : (S, H, W) ndarray
            Image on the raw grid.
        fill : float
            Value where the band reaches outside the raw image.

        Returns
        -------
        (S, Hb, Wr) ndarray
            Float input: float32, width resampled exactly as the preprocessing does
            (linear, anti-aliased), so ``raw_to_flat_image(normalised)`` equals the band.
            Integer or bool input: same dtype, nearest neighbour in depth and, when the
            width shrinks, the maximum over the raw columns that fall into each band
            column, so that a one-pixel-wide lesion is not lost by the downsampling.
        """
        raw = np.asarray(raw)
        if raw.shape != self.raw_shape:
            raise ValueError(f"expected shape {self.raw_shape}, got {raw.shape}")
        w, wr = self.raw_shape[2], self.resampled_width
        if np.issubdtype(raw.dtype, np.floating):
            resampled = resample_width(raw, wr)
        elif wr >= w:
            cols = np.clip(np.rint(self.flat_col_to_raw(np.arange(wr))), 0, w - 1).astype(int)
            resampled = raw[:, :, cols]
        else:
            # Each raw column belongs to exactly one band column (the one whose footprint
            # holds its left edge); the band column keeps the largest label it covers.
            starts = np.floor(np.arange(wr) * self._scale + 1e-9).astype(np.intp)
            resampled = np.maximum.reduceat(raw, starts, axis=2)
        return self.band_from_resampled(resampled, fill=fill)

    def flat_to_raw_image(self, flat: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """Map a band image (e.g. a residual heatmap) back to the raw grid.

        Linear interpolation along the columns between the two nearest band columns, each
        read at its own shifted row (so a flattened layer maps back onto the curved layer);
        NaN or out-of-band neighbours are left out of the interpolation; a raw pixel with
        neither neighbour gets ``fill``.

        Parameters
        ----------
        flat : (S, Hb, Wr) ndarray
            Image in band coordinates.
        fill : float
            Value of raw pixels the band does not cover.

        Returns
        -------
        (S, H, W) ndarray of float32
        """
        flat = np.asarray(flat, dtype=np.float32)
        if flat.shape != self.band_shape:
            raise ValueError(f"expected shape {self.band_shape}, got {flat.shape}")
        s, h, w = self.raw_shape
        wr, hb = self.resampled_width, self.band_height
        u = np.clip(self.raw_col_to_flat(np.arange(w)), 0, wr - 1)
        u0 = np.clip(np.floor(u).astype(np.int64), 0, max(wr - 2, 0))
        u1 = np.minimum(u0 + 1, wr - 1)
        frac = (u - u0).astype(np.float32)
        rows = np.arange(h)[None, :, None]
        total = np.zeros((s, h, w), np.float32)
        weight = np.zeros((s, h, w), np.float32)
        for cols, wgt in ((u0, 1.0 - frac), (u1, frac)):
            band_rows = rows - self.offsets[:, None, cols]
            inside = (band_rows >= 0) & (band_rows < hb)
            vals = np.take_along_axis(flat[:, :, cols], np.clip(band_rows, 0, hb - 1), axis=1)
            ok = inside & np.isfinite(vals)
            wgt_b = np.where(ok, wgt[None, None, :], 0).astype(np.float32)
            total += np.where(ok, vals, 0) * wgt_b
            weight += wgt_b
        covered = weight > 1e-6
        out = np.full((s, h, w), fill, np.float32)
        out[covered] = total[covered] / weight[covered]
        return out


def retina_rows(
    ilm: np.ndarray, bm: np.ndarray, height: int, *, above: float = 0.0, below: float = 0.0
) -> tuple[int, int]:
    """Rows [top, bottom) of a B-scan (or several) that hold the retina and some margin.

    Parameters
    ----------
    ilm, bm : ndarray
        Boundary rows (any shape; NaN where not found).
    height : int
        Rows of the B-scan.
    above, below : float
        Rows kept above the highest ILM and below the lowest BM.

    Returns
    -------
    (top, bottom) : tuple of int
        The whole B-scan when no boundary was found.
    """
    top_rows = np.asarray(ilm, dtype=float)
    bottom_rows = np.asarray(bm, dtype=float)
    if not (np.isfinite(top_rows).any() and np.isfinite(bottom_rows).any()):
        return 0, int(height)
    top = int(np.floor(np.nanmin(top_rows) - above))
    bottom = int(np.ceil(np.nanmax(bottom_rows) + below)) + 1
    top, bottom = max(top, 0), min(bottom, int(height))
    return (top, bottom) if bottom > top else (0, int(height))

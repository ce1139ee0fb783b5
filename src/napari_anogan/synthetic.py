"""Synthetic retinal OCT volumes with known anatomy and lesions.

The generator draws one "eye" per seed (layer thicknesses, foveal pit, nerve fibre
layer thickening towards the optic disc, curvature, tilt, depth in the image, retinal
vessels, choroidal texture) and renders B-scans that look like Spectralis exports:
dark vitreous, the retinal layers in their usual order and relative brightness, a very
bright RPE / Bruch's membrane complex, a textured choroid fading with depth, vessel
shadows and granular multiplicative speckle. Geometry is a smooth function of the
physical position (x across the B-scan, y across B-scans), so neighbouring B-scans
are consistent.

Lesions (intraretinal cysts, subretinal fluid, pigment-epithelium detachments,
hyperreflective foci, drusen) are planted as 3-D objects that deform the layers
around them, and every lesion pixel is labelled in a ground-truth mask. The true
ILM and Bruch's membrane rows are returned too, for testing boundary detection.

Examples
--------
>>> from napari_anogan.synthetic import make_volume
>>> vol = make_volume(5, 160, 192, lesions=["irf", "hrf"], seed=1)
>>> vol.data.shape, str(vol.data.dtype), bool(vol.mask.any())
((5, 160, 192), 'uint8', True)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

LESION_LABELS: dict[str, int] = {"irf": 1, "srf": 2, "ped": 3, "hrf": 4, "drusen": 5}
"""Mask value of each lesion type (0 = healthy)."""

# Field of view of a Spectralis macular volume: 496 rows of 3.87 um, 512 columns of 11.5 um.
_REF_HEIGHT = 496
_DEPTH_RANGE_UM = 3.87 * 496
_WIDTH_RANGE_UM = 11.5 * 512
# 49 B-scans 120 um apart; fewer B-scans are spread wider, but never more than 240 um apart
# so that lesions still span neighbouring B-scans.
_SLICE_RANGE_UM = 120.0 * 48
_MAX_SLICE_SPACING_UM = 240.0
_MIN_SLICE_SPACING_UM = 30.0

# Retinal layers from top (ILM) to bottom (Bruch's membrane). "srf" and "sub_rpe" have zero
# thickness in a healthy eye; lesions open them.
_LAYERS: tuple[str, ...] = (
    "nfl",
    "gcl",
    "ipl",
    "inl",
    "opl",
    "onl",
    "elm",
    "myoid",
    "ez",
    "os",
    "iz",
    "srf",
    "rpe",
    "sub_rpe",
    "bm",
)
# Display brightness (0..1, before speckle) in a Spectralis-like grey scale.
_INTENSITY: dict[str, float] = {
    "nfl": 0.60,
    "gcl": 0.37,
    "ipl": 0.43,
    "inl": 0.26,
    "opl": 0.42,
    "onl": 0.2,
    "elm": 0.40,
    "myoid": 0.24,
    "ez": 0.80,
    "os": 0.34,
    "iz": 0.58,
    "srf": 0.04,
    "rpe": 0.92,
    "sub_rpe": 0.05,
    "bm": 0.85,
}
_FLUID = 0.035
_CHOROID = 0.44


@dataclass
class SyntheticVolume:
    """A synthetic OCT volume with its ground truth.

    Attributes
    ----------
    data : (S, H, W) ndarray of uint8
        B-scans, axes (slice, depth, width) like a Spectralis export.
    mask : (S, H, W) ndarray of uint8
        0 = healthy, otherwise the :data:`LESION_LABELS` value of the lesion.
    ilm : (S, W) ndarray of float32
        True inner limiting membrane row per column (top of the retina), in pixel
        coordinates where row ``r`` covers ``[r - 0.5, r + 0.5)``.
    bm : (S, W) ndarray of float32
        True Bruch's membrane row per column (bottom of the RPE/BM complex). Under a
        pigment-epithelium detachment it stays at Bruch's membrane, below the lifted RPE.
    spacing : tuple of float
        Pixel size in micrometres along (slice, depth, width).
    lesions : list of dict
        One per planted lesion: ``type`` (key of :data:`LESION_LABELS`), ``slice`` (the
        B-scan where it is largest), ``row``, ``col`` (centre of its bounding box),
        ``height``, ``width`` (bounding box over all its B-scans, in pixels) and ``slices``
        (first and last B-scan it touches, inclusive).
    membrane : (S, W) ndarray of float32 or None
        Row of the detached posterior vitreous membrane (NaN where it leaves the image);
        None when the volume has none.
    layers : dict of str to (S, W) ndarray of float32
        Top row of every layer from the ILM down: ``nfl`` (= ``ilm``), ``gcl``, ``ipl``,
        ``inl``, ``opl``, ``onl``, ``elm``, ``myoid``, ``ez`` (ellipsoid zone), ``os``
        (outer segments), ``iz`` (interdigitation zone), ``srf`` (subretinal fluid, empty
        when healthy), ``rpe``, ``sub_rpe`` (PED / drusen content, empty when healthy),
        ``bm`` (Bruch's membrane line) and ``choroid`` (= ``bm`` attribute).
    """

    data: np.ndarray
    mask: np.ndarray
    ilm: np.ndarray
    bm: np.ndarray
    spacing: tuple[float, float, float]
    lesions: list[dict]
    membrane: np.ndarray | None = None
    layers: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Grid:
    """Sampling of the volume: sizes, spacings and physical coordinates."""

    n_slices: int
    height: int
    width: int
    dy: float  # um between B-scans
    dz: float  # um per row
    dx: float  # um per column
    x: np.ndarray  # (1, W) mm, 0 at the image centre
    y: np.ndarray  # (S, 1) mm, 0 at the central B-scan

    @property
    def kz(self) -> float:
        """Rows per row of a 496-row Spectralis B-scan."""
        return self.height / _REF_HEIGHT

    def col_of(self, x_mm: float) -> float:
        """Column (float) of a lateral position in mm."""
        return x_mm * 1000.0 / self.dx + (self.width - 1) / 2.0

    def slice_of(self, y_mm: float) -> float:
        """B-scan index (float) of a position across B-scans in mm."""
        return y_mm * 1000.0 / self.dy + (self.n_slices - 1) / 2.0


@dataclass
class _Eye:
    """Per-eye anatomy drawn from the seed."""

    fovea_x: float
    fovea_y: float
    pit_sigma: float
    side: float  # +1: optic disc to the right of the fovea, -1: to the left
    thickness_um: dict[str, np.ndarray]  # layer -> (S, W)
    bm_row: np.ndarray  # (S, W) rows, Bruch's membrane before fitting into the image
    intensity: dict[str, float]
    choroid: float
    speckle_gamma: float
    noise_floor: float
    rolloff: float


# ----------------------------------------------------------------------------------------
# random fields


def _smooth_field(
    rng: np.random.Generator,
    grid: _Grid,
    wavelength_mm: tuple[float, float] = (1.0, 4.0),
    n_waves: int = 6,
) -> np.ndarray:
    """Smooth random field of (about) unit standard deviation over the scan area.

    A sum of plane waves in physical coordinates, so it does not depend on the sampling
    and is consistent across neighbouring B-scans.

    Returns
    -------
    (S, W) ndarray of float32
    """
    wl = rng.uniform(*wavelength_mm, size=n_waves)
    theta = rng.uniform(0.0, 2.0 * math.pi, size=n_waves)
    phase = rng.uniform(0.0, 2.0 * math.pi, size=n_waves)
    out = np.zeros((grid.n_slices, grid.width), np.float32)
    amp = math.sqrt(2.0 / n_waves)
    for k in range(n_waves):
        kx = 2.0 * math.pi / wl[k] * math.cos(theta[k])
        ky = 2.0 * math.pi / wl[k] * math.sin(theta[k])
        out += (amp * np.cos(kx * grid.x + ky * grid.y + phase[k])).astype(np.float32)
    return out


def _grid_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]
) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation.

    Returns
    -------
    ndarray of float32, shape ``shape``
    """
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma, mode="wrap")
    # Variance of smoothed unit white noise = product over axes of sum(kernel ** 2).
    var = 1.0
    for s in sigma:
        if s > 0:
            radius = int(4 * s + 1)
            t = np.arange(-radius, radius + 1)
            k = np.exp(-0.5 * (t / s) ** 2)
            k /= k.sum()
            var *= float((k**2).sum())
    return noise / np.float32(math.sqrt(var))


# ----------------------------------------------------------------------------------------
# anatomy


def _make_grid(n_slices: int, height: int, width: int) -> _Grid:
    dz = _DEPTH_RANGE_UM / height
    dx = _WIDTH_RANGE_UM / width
    if n_slices > 1:
        dy = float(
            np.clip(_SLICE_RANGE_UM / (n_slices - 1), _MIN_SLICE_SPACING_UM, _MAX_SLICE_SPACING_UM)
        )
    else:
        dy = 120.0
    x = ((np.arange(width) - (width - 1) / 2.0) * dx / 1000.0)[None, :]
    y = ((np.arange(n_slices) - (n_slices - 1) / 2.0) * dy / 1000.0)[:, None]
    return _Grid(n_slices, height, width, dy, dz, dx, x.astype(np.float64), y.astype(np.float64))


def _draw_eye(rng: np.random.Generator, grid: _Grid, signal: float) -> _Eye:
    """Draw the healthy anatomy of one eye (thickness of each layer, BM surface, look)."""
    fx = rng.uniform(-0.35, 0.35)
    fy = rng.uniform(-0.25, 0.25) if grid.n_slices > 1 else rng.uniform(-0.9, 0.9)
    side = 1.0 if rng.random() < 0.5 else -1.0
    pit_sigma = rng.uniform(0.45, 0.7)
    pit_power = rng.uniform(1.8, 2.6)
    dxf = grid.x - fx
    dyf = grid.y - fy
    rho = np.sqrt(dxf**2 + (dyf / 0.92) ** 2)  # mm from the foveal centre
    pit = np.exp(-((rho / pit_sigma) ** pit_power))
    wide_pit = np.exp(-((rho / (1.5 * pit_sigma)) ** 2))
    ring = np.exp(-(((rho - 1.1) / 0.75) ** 2))  # parafoveal ring where GCL/INL are thickest

    scale = rng.uniform(0.88, 1.12)

    def vary(um: float, spread: float = 0.08) -> float:
        return um * scale * rng.uniform(1.0 - spread, 1.0 + spread)

    nfl_temporal = vary(14.0, 0.2)
    nfl_nasal = vary(rng.uniform(40.0, 62.0), 0.1)
    towards_disc = 1.0 / (1.0 + np.exp(-(side * dxf - 0.4) / 0.7))
    arcuate = np.clip(dyf**2 / 4.0, 0.0, 1.0) * vary(18.0, 0.3)
    t: dict[str, np.ndarray] = {}
    t["nfl"] = (nfl_temporal + (nfl_nasal - nfl_temporal) * towards_disc + arcuate) * (
        1.0 - 0.97 * wide_pit
    )
    t["gcl"] = vary(34.0) * (1.0 + 0.55 * ring) * (1.0 - rng.uniform(0.93, 1.0) * pit)
    t["ipl"] = vary(34.0) * (1.0 + 0.15 * ring) * (1.0 - rng.uniform(0.9, 1.0) * pit)
    t["inl"] = vary(34.0) * (1.0 + 0.2 * ring) * (1.0 - rng.uniform(0.88, 0.98) * pit)
    t["opl"] = vary(26.0) * (1.0 + 0.15 * ring) * (1.0 - 0.7 * pit)
    t["onl"] = vary(62.0) * (1.0 + rng.uniform(0.55, 0.9) * wide_pit)
    t["elm"] = vary(4.0, 0.05) + 0.0 * rho
    t["myoid"] = vary(20.0) + 0.0 * rho
    t["ez"] = vary(13.0) + 0.0 * rho
    t["os"] = vary(19.0) + 12.0 * pit  # longer outer segments at the fovea
    t["iz"] = vary(8.0) + 0.0 * rho
    t["srf"] = 0.0 * rho
    t["rpe"] = vary(22.0, 0.1) + 0.0 * rho
    t["sub_rpe"] = 0.0 * rho
    t["bm"] = vary(6.0, 0.1) + 0.0 * rho
    # Slow thickness changes over the macula, and fine waviness of every boundary (a few
    # columns long, independent between B-scans).
    fine_sigma = (0.0, 10.0 * 11.5 / grid.dx)
    for name in ("nfl", "gcl", "ipl", "inl", "opl", "onl", "os", "rpe"):
        slow = 0.06 * _smooth_field(rng, grid, (0.8, 3.0))
        fine = 0.03 * _grid_noise(rng, (grid.n_slices, grid.width), fine_sigma)
        t[name] = t[name] * (1.0 + slow + fine)
    thickness = {k: np.clip(v, 0.0, None).astype(np.float32) for k, v in t.items()}

    # Bruch's membrane: curvature (mostly a bowl, edges higher), tilt and gentle undulation.
    kz = grid.kz
    curvature = rng.uniform(-1.5, 7.0) * kz  # rows per mm^2
    tilt_x = rng.normal(0.0, 8.0) * kz  # rows per mm
    tilt_y = rng.normal(0.0, 5.0) * kz
    undulation = rng.uniform(1.0, 4.0) * kz * _smooth_field(rng, grid, (1.5, 5.0), 5)
    surface = -curvature * (dxf**2 + dyf**2) + tilt_x * grid.x + tilt_y * grid.y + undulation
    total_px = sum(thickness.values()) / grid.dz
    ilm_centre = rng.uniform(0.24, 0.55) * grid.height
    bm_row = surface - surface.mean() + ilm_centre + float(np.median(total_px))

    intensity = {k: v * rng.uniform(0.92, 1.08) for k, v in _INTENSITY.items()}
    gamma = rng.uniform(0.2, 0.28) * (1.0 + 0.8 * (1.0 - min(signal, 1.0)))
    return _Eye(
        fovea_x=fx,
        fovea_y=fy,
        pit_sigma=pit_sigma,
        side=side,
        thickness_um=thickness,
        bm_row=bm_row.astype(np.float32),
        intensity=intensity,
        choroid=_CHOROID * rng.uniform(0.85, 1.1),
        speckle_gamma=gamma,
        noise_floor=rng.uniform(0.07, 0.1),
        rolloff=rng.uniform(0.1, 0.3),
    )


def _boundaries(thickness_px: dict[str, np.ndarray], bm_row: np.ndarray) -> dict[str, np.ndarray]:
    """Top row of every layer, plus "bottom" (Bruch's membrane), from the bottom up.

    Returns
    -------
    dict of (S, W) ndarrays of float32
    """
    tops: dict[str, np.ndarray] = {"bottom": bm_row.astype(np.float32)}
    below = tops["bottom"]
    for name in reversed(_LAYERS):
        below = below - thickness_px[name]
        tops[name] = below
    return tops


# ----------------------------------------------------------------------------------------
# lesion planning


@dataclass
class _Lesion:
    """A planned lesion: type, centre (mm, slice) and its parts."""

    kind: str
    x: float
    y: float
    parts: list[dict]


def _dome(grid: _Grid, x0: float, y0: float, ax_mm: float, ay_mm: float, power: float):
    """Dome profile ``(1 - rho^2)^power`` inside an ellipse, 0 outside.

    Returns
    -------
    (S, W) ndarray of float32
    """
    rho2 = ((grid.x - x0) / ax_mm) ** 2 + ((grid.y - y0) / ay_mm) ** 2
    return (np.clip(1.0 - rho2, 0.0, None) ** power).astype(np.float32)


def _plan_lesions(
    rng: np.random.Generator, grid: _Grid, eye: _Eye, kinds: list[str]
) -> list[_Lesion]:
    """Choose the shape of each lesion, then a place for it away from the others."""
    min_ay = 1.1 * grid.dy / 1000.0 if grid.n_slices > 1 else 0.05
    half_w = grid.width * grid.dx / 2000.0
    dy_mm = grid.dy / 1000.0
    planned: list[_Lesion] = []
    extents: list[tuple[float, float]] = []  # half extent (x, y) in mm of each lesion
    for kind in kinds:
        parts = _lesion_parts(rng, grid, kind, 0.0, 0.0, min_ay)
        rx = max(abs(p["x"]) + p.get("ax", 0.03) for p in parts)
        ry = max(
            abs(p.get("y", p.get("slice_offset", 0) * dy_mm)) + p.get("ay", 0.3 * dy_mm)
            for p in parts
        )
        if kind == "irf":
            rx = max(1.8 * rx, rx + 0.3)  # the swelling reaches beyond the cysts
        best = None
        for _attempt in range(40):
            if grid.n_slices >= 3:
                s = int(rng.integers(1, grid.n_slices - 1))
            else:
                s = int(rng.integers(0, grid.n_slices))
            y = float(grid.y[s, 0])
            if kind == "srf" and rng.random() < 0.6:
                x = float(np.clip(eye.fovea_x + rng.normal(0, 0.4), -0.6 * half_w, 0.6 * half_w))
            else:
                x = float(rng.uniform(-0.72 * half_w, 0.72 * half_w))
            # clearance > 0 when the bounding boxes (in mm) do not overlap
            clearance = min(
                (
                    max(abs(x - o.x) - (rx + ex), abs(y - o.y) - (ry + ey))
                    for o, (ex, ey) in zip(planned, extents, strict=True)
                ),
                default=np.inf,
            )
            if best is None or clearance > best[0]:
                best = (clearance, x, y)
            if clearance > 0.1:
                break
        assert best is not None
        _, x, y = best
        for p in parts:
            p["x"] += x
            if "y" in p:
                p["y"] += y
        planned.append(_Lesion(kind, x, y, parts))
        extents.append((rx, ry))
    return planned


def _lesion_parts(
    rng: np.random.Generator, grid: _Grid, kind: str, x: float, y: float, min_ay: float
) -> list[dict]:
    """Shape parameters of the parts of one lesion (cysts of a cluster, drusen, dots...)."""
    dy_mm = grid.dy / 1000.0
    parts: list[dict] = []
    if kind == "irf":
        az = rng.uniform(25.0, 95.0)  # um, vertical half-height of the main cyst
        ax = rng.uniform(0.07, 0.28) * (0.6 + az / 95.0)
        ay = max(ax * rng.uniform(0.7, 1.3), min_ay)
        parts.append({"x": x, "y": y, "az": az, "ax": ax, "ay": ay, "host": "onl"})
        for _ in range(int(rng.integers(0, 7))):
            f = rng.uniform(0.3, 0.75)
            parts.append(
                {
                    "x": x + rng.uniform(-1.6, 1.6) * ax,
                    "y": y + rng.uniform(-1.0, 1.0) * ay,
                    "az": az * f,
                    "ax": ax * f * rng.uniform(0.8, 1.2),
                    "ay": max(ay * f, 0.6 * dy_mm),
                    "host": "inl" if rng.random() < 0.5 else "onl",
                }
            )
        for p in parts:
            p["frac"] = rng.uniform(0.4, 0.6)
    elif kind in ("srf", "ped"):
        if kind == "srf":
            h, ax, power = rng.uniform(40.0, 170.0), rng.uniform(0.4, 1.1), rng.uniform(0.6, 1.0)
        else:
            h, ax, power = rng.uniform(60.0, 200.0), rng.uniform(0.25, 0.7), rng.uniform(0.4, 0.7)
        ay = max(ax * rng.uniform(0.6, 1.2), min_ay)
        content = _FLUID if (kind == "srf" or rng.random() < 0.5) else rng.uniform(0.22, 0.38)
        parts.append(
            {"x": x, "y": y, "h": h, "ax": ax, "ay": ay, "power": power, "content": content}
        )
    elif kind == "drusen":
        spread_x = rng.uniform(0.25, 0.7)
        n_slices = max(1, round(rng.uniform(0.25, 0.45) / dy_mm))
        content = rng.uniform(0.3, 0.45)
        n = int(rng.integers(4, 11))
        for i in range(n):
            # the first two drusen sit on neighbouring B-scans so the cluster spans > 1
            ys = y + (i if i < 2 else int(rng.integers(-n_slices, n_slices + 1))) * dy_mm
            ax = rng.uniform(0.05, 0.18)
            parts.append(
                {
                    "x": x + rng.uniform(-spread_x, spread_x),
                    "y": ys,
                    "h": rng.uniform(20.0, 70.0) * (0.5 + ax / 0.18 / 2),
                    "ax": ax,
                    "ay": max(ax * rng.uniform(0.7, 1.3), 0.35 * dy_mm),
                    "power": rng.uniform(0.6, 0.85),
                    "content": content * rng.uniform(0.9, 1.1),
                }
            )
    elif kind == "hrf":
        spread_x = rng.uniform(0.15, 0.5)
        n_slices = max(1, round(rng.uniform(0.2, 0.4) / dy_mm))
        n = int(rng.integers(4, 13))
        for i in range(n):
            ds = i if i < 2 else int(rng.integers(-n_slices, n_slices + 1))
            parts.append(
                {
                    "x": x + rng.uniform(-spread_x, spread_x),
                    "slice_offset": ds,
                    "radius": rng.uniform(1.2, 2.6),
                    "frac": rng.uniform(0.05, 0.9),
                    "bright": rng.uniform(1.0, 1.2),
                }
            )
    return parts


# ----------------------------------------------------------------------------------------
# rendering helpers


def _add_step(
    img: np.ndarray, boundary: np.ndarray, step: np.ndarray | float, rows: np.ndarray
) -> None:
    """Add ``step`` to every pixel below ``boundary``, with partial coverage at the edge.

    Parameters
    ----------
    img : (S, H, W) ndarray of float32
        Modified in place.
    boundary : (S, W) ndarray
        Row where the step happens (pixel ``r`` covers ``[r - 0.5, r + 0.5)``).
    step : float or (S, W) ndarray
        Size of the step.
    rows : (H,) ndarray of float32
        Row indices.
    """
    height = img.shape[1]
    lo = int(np.clip(np.floor(boundary.min() - 0.5), 0, height))
    hi = int(np.clip(np.ceil(boundary.max() + 0.5) + 1, 0, height))
    step_arr = np.asarray(step, np.float32)
    if step_arr.ndim == 2:
        step_arr = step_arr[:, None, :]
    if hi < height:
        img[:, hi:, :] += step_arr
    if hi > lo:
        cov = np.clip(rows[None, lo:hi, None] - boundary[:, None, :] + 0.5, 0.0, 1.0)
        img[:, lo:hi, :] += step_arr * cov


def _rows_between(
    top: np.ndarray, bottom: np.ndarray, columns: np.ndarray, height: int
) -> tuple[np.ndarray, int]:
    """Pixels whose centre lies in ``[top, bottom)`` on the selected columns.

    Returns
    -------
    mask : (S, R, W) ndarray of bool
        Over the row window starting at the returned first row.
    first_row : int
    """
    if not columns.any():
        return np.zeros((top.shape[0], 0, top.shape[1]), bool), 0
    lo = int(np.clip(np.floor(top[columns].min()), 0, height))
    hi = int(np.clip(np.ceil(bottom[columns].max()) + 1, 0, height))
    r = np.arange(lo, hi, dtype=np.float32)[None, :, None]
    inside = (r >= top[:, None, :]) & (r < bottom[:, None, :]) & columns[:, None, :]
    return inside, lo


def _sample(field: np.ndarray, s: int, col: float) -> float:
    """Value of an (S, W) field at a B-scan and (rounded, clipped) column."""
    c = int(np.clip(round(col), 0, field.shape[1] - 1))
    return float(field[s, c])


# ----------------------------------------------------------------------------------------
# main entry points


def make_volume(
    n_slices: int = 49,
    height: int = 496,
    width: int = 512,
    *,
    lesions: Sequence[str] | None = None,
    n_lesions: int | None = None,
    seed: int | np.random.Generator = 0,
    vitreous_membrane: bool = False,
    signal: float = 1.0,
) -> SyntheticVolume:
    """Generate a synthetic Spectralis-like macular OCT volume with ground truth.

    Parameters
    ----------
    n_slices, height, width : int
        Volume shape (B-scans, rows, columns). The field of view is always that of a
        496 x 512 Spectralis scan (1.92 mm deep, 5.9 mm wide); B-scans are 120 um apart
        for 49 slices (5.76 mm), spread over 5.76 mm but at most 240 um apart otherwise.
    lesions : sequence of str, optional
        Lesion types to plant, keys of :data:`LESION_LABELS` (``"irf"``, ``"srf"``,
        ``"ped"``, ``"hrf"``, ``"drusen"``). None or empty: a healthy volume.
    n_lesions : int, optional
        Total number of lesions. Default: two of each requested type. Every requested
        type is planted at least once when ``n_lesions >= len(lesions)``.
    seed : int or numpy.random.Generator
        Seed of everything random. The same seed gives the same eye (anatomy, vessels,
        speckle) whatever the lesions, so healthy/diseased pairs can be compared.
    vitreous_membrane : bool
        Add a detached posterior vitreous membrane, a thin faint line 20-80 rows (at 496
        rows) above the ILM.
    signal : float
        Signal strength; below 1 gives a low-contrast, noisier scan.

    Returns
    -------
    SyntheticVolume
        ``data`` and ``mask`` of shape (n_slices, height, width), uint8; ``ilm`` and
        ``bm`` of shape (n_slices, width), float32.

    Raises
    ------
    ValueError
        On an unknown lesion type, a shape too small to hold a retina, or a
        non-positive signal.
    """
    if isinstance(lesions, str):
        lesions = [lesions]
    kinds = [str(k).lower() for k in (lesions or [])]
    unknown = sorted(set(kinds) - set(LESION_LABELS))
    if unknown:
        raise ValueError(
            f"unknown lesion type(s) {unknown}; expected some of {list(LESION_LABELS)}"
        )
    if n_slices < 1 or height < 64 or width < 32:
        raise ValueError(
            f"volume shape ({n_slices}, {height}, {width}) too small: need >= 1 slice, "
            ">= 64 rows and >= 32 columns"
        )
    if not signal > 0:
        raise ValueError(f"signal must be > 0, got {signal}")
    if n_lesions is not None and n_lesions < 0:
        raise ValueError(f"n_lesions must be >= 0, got {n_lesions}")
    if n_lesions and not kinds:
        raise ValueError("n_lesions > 0 needs lesion types in `lesions`")

    if isinstance(seed, np.random.Generator):
        seq = np.random.SeedSequence(int(seed.integers(0, 2**63)))
    else:
        seq = np.random.SeedSequence(int(seed))
    rng_eye, rng_vessel, rng_lesion, rng_texture, rng_speckle, rng_membrane = (
        np.random.default_rng(s) for s in seq.spawn(6)
    )

    grid = _make_grid(n_slices, height, width)
    eye = _draw_eye(rng_eye, grid, signal)

    # Which lesions: every requested type once, then random picks.
    if kinds:
        n_total = 2 * len(kinds) if n_lesions is None else n_lesions
        order = list(rng_lesion.permutation(kinds))
        extra = list(rng_lesion.choice(kinds, size=max(0, n_total - len(order))))
        chosen = [str(k) for k in (order + extra)[:n_total]]
    else:
        chosen = []
    planned = _plan_lesions(rng_lesion, grid, eye, chosen)

    thickness_px = {k: v / np.float32(grid.dz) for k, v in eye.thickness_um.items()}
    layer_int: dict[str, np.ndarray | float] = dict(eye.intensity)
    _deform_for_lesions(grid, planned, thickness_px, layer_int)

    bm_row = _fit_into_image(grid, eye, thickness_px, vitreous_membrane)
    tops = _boundaries(thickness_px, bm_row)

    img = _render_layers(grid, eye, tops, layer_int, rng_texture)
    mask = np.zeros(img.shape, np.uint8)
    records = _paint_lesions(grid, planned, tops, thickness_px, img, mask)
    _add_vessels(rng_vessel, grid, eye, tops, img)
    membrane = None
    if vitreous_membrane:
        membrane = _add_membrane(rng_membrane, grid, tops, img)
    data = _finish(rng_speckle, grid, eye, img, signal)

    return SyntheticVolume(
        data=data,
        mask=mask,
        ilm=tops["nfl"].astype(np.float32),
        bm=tops["bottom"].astype(np.float32),
        spacing=(float(grid.dy), float(grid.dz), float(grid.dx)),
        lesions=records,
        membrane=membrane,
        layers={("choroid" if k == "bottom" else k): v.astype(np.float32) for k, v in tops.items()},
    )


def make_bscan(height: int = 496, width: int = 512, **kwargs) -> SyntheticVolume:
    """Generate one synthetic B-scan (a 1-slice volume).

    Parameters
    ----------
    height, width : int
        B-scan shape.
    **kwargs
        Keyword arguments of :func:`make_volume` (``lesions``, ``n_lesions``, ``seed``,
        ``vitreous_membrane``, ``signal``). The B-scan passes at a random distance (up to
        0.9 mm) from the foveal centre, so the pit is deep, shallow or absent.

    Returns
    -------
    SyntheticVolume
        Arrays with a leading axis of length 1.
    """
    return make_volume(1, height, width, **kwargs)


# ----------------------------------------------------------------------------------------
# pipeline stages


def _deform_for_lesions(
    grid: _Grid,
    planned: list[_Lesion],
    thickness_px: dict[str, np.ndarray],
    layer_int: dict[str, np.ndarray | float],
) -> None:
    """Thicken and lift layers for the lesions, fill the new spaces (in place)."""
    shape = (grid.n_slices, grid.width)
    srf = np.zeros(shape, np.float32)
    sub = np.zeros(shape, np.float32)
    sub_content = np.full(shape, _FLUID, np.float32)
    drusen = np.zeros(shape, np.float32)
    irf_extra = {"inl": np.zeros(shape, np.float32), "onl": np.zeros(shape, np.float32)}
    for lesion in planned:
        for p in lesion.parts:
            if lesion.kind == "irf":
                az = p["az"] / grid.dz
                p["half_height"] = az * _dome(grid, p["x"], p["y"], p["ax"], p["ay"], 0.5)
                # the host layer swells by most of the cyst's height, smoothly and over a
                # wider area than the cyst itself
                sx, sy = max(1.8 * p["ax"], 0.3), max(1.8 * p["ay"], 0.3)
                swell = 1.6 * az * _dome(grid, p["x"], p["y"], sx, sy, 1.5)
                np.maximum(irf_extra[p["host"]], swell, out=irf_extra[p["host"]])
            elif lesion.kind in ("srf", "ped", "drusen"):
                h = p["h"] / grid.dz * _dome(grid, p["x"], p["y"], p["ax"], p["ay"], p["power"])
                p["gap"] = h
                if lesion.kind == "srf":
                    np.maximum(srf, h, out=srf)
                else:
                    if lesion.kind == "drusen":
                        np.maximum(drusen, h, out=drusen)
                    wins = h > sub
                    sub_content[wins] = p["content"]
                    np.maximum(sub, h, out=sub)
    # One smooth swelling over a cluster of cysts rather than a bump per cyst.
    sigma = (120.0 / grid.dy if grid.n_slices > 1 else 0.0, 120.0 / grid.dx)
    for host, extra in irf_extra.items():
        if extra.any():
            extra = ndimage.gaussian_filter(extra, sigma, mode="nearest")
        thickness_px[host] = thickness_px[host] + extra
    thickness_px["srf"] = thickness_px["srf"] + srf
    thickness_px["sub_rpe"] = thickness_px["sub_rpe"] + sub
    # The outer nuclear layer thins over drusen: the retinal surface hardly moves.
    onl = thickness_px["onl"]
    thickness_px["onl"] = onl - np.minimum(0.85 * drusen, 0.6 * onl)
    layer_int["sub_rpe"] = sub_content
    # Bruch's membrane is a faint line where the RPE has lifted off it.
    lifted = np.clip(sub / 2.0, 0.0, 1.0)
    bm_int = float(layer_int["bm"])  # type: ignore[arg-type]
    layer_int["bm"] = (bm_int * (1.0 - 0.35 * lifted)).astype(np.float32)


def _fit_into_image(
    grid: _Grid, eye: _Eye, thickness_px: dict[str, np.ndarray], membrane: bool
) -> np.ndarray:
    """Shift (and if needed flatten) the BM surface so the retina lies inside the image.

    Returns
    -------
    (S, W) ndarray of float32
        Bruch's membrane rows.
    """
    h = grid.height
    total = sum(thickness_px.values())
    top_margin = (0.05 + (0.1 if membrane else 0.0)) * h
    bottom_margin = 0.16 * h
    bm = eye.bm_row.astype(np.float32)
    mean = float(bm.mean())
    for flatten in (1.0, 0.75, 0.5, 0.25, 0.0):
        cand = mean + (bm - mean) * flatten
        span = float(cand.max() - (cand - total).min())
        if span <= h - top_margin - bottom_margin or flatten == 0.0:
            bm = cand
            break
    low = top_margin - float((bm - total).min())  # smallest shift keeping the ILM in
    high = h - bottom_margin - float(bm.max())  # largest shift keeping the choroid in
    shift = float(np.clip(0.0, low, high)) if low <= high else (low + high) / 2.0
    return (bm + shift).astype(np.float32)


def _render_layers(
    grid: _Grid,
    eye: _Eye,
    tops: dict[str, np.ndarray],
    layer_int: dict[str, np.ndarray | float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Noise-free layered retina and choroid.

    Returns
    -------
    (S, H, W) ndarray of float32
        Display brightness, 0 = vitreous, about 1 = RPE.
    """
    S, H, W = grid.n_slices, grid.height, grid.width
    kz = grid.kz
    rows = np.arange(H, dtype=np.float32)
    img = np.zeros((S, H, W), np.float32)
    previous: np.ndarray | float = 0.0
    for name in _LAYERS:
        value = layer_int[name]
        _add_step(img, tops[name], np.asarray(value, np.float32) - previous, rows)
        previous = value

    # Bright inner limiting membrane / NFL surface reflex.
    ilm = tops["nfl"]
    lo = int(np.clip(np.floor(ilm.min()), 0, H))
    hi = int(np.clip(np.ceil(ilm.max() + 6 * kz + 2), 0, H))
    depth = rows[None, lo:hi, None] - ilm[:, None, :]
    img[:, lo:hi, :] += (
        0.22 * np.exp(-np.clip(depth, 0, None) / (2.0 * kz)) * np.clip(depth + 0.5, 0, 1)
    )

    # Choroid: stroma with dark vessel lumens, fading with depth, sclera below.
    bm = tops["bottom"]
    lo = int(np.clip(np.floor(bm.min()), 0, H))
    n_depth = H - lo + 2
    s_sigma = max(0.0, 150.0 / grid.dy) if S > 1 else 0.0
    lumen_noise = _grid_noise(rng, (S, n_depth, W), (s_sigma, 3.0 * kz, 5.0 / (grid.dx / 11.5)))
    d = np.arange(n_depth, dtype=np.float32)[None, :, None]
    thick_c = rng.uniform(55.0, 85.0) * kz
    # lumens grow with depth (Sattler -> Haller layer)
    threshold = -0.5 + 0.6 * np.clip(d / thick_c, 0, 1)
    lumen = 1.0 / (1.0 + np.exp(-(threshold - lumen_noise) / 0.25))
    fade = np.exp(-d / (rng.uniform(70.0, 100.0) * kz))
    fade *= 1.0 - 0.35 / (1.0 + np.exp(-(d - thick_c) / (4.0 * kz)))  # darker sclera
    tex = eye.choroid * fade * (1.0 - 0.4 * lumen)
    tex = tex.astype(np.float32)
    below_bm = rows[None, lo:, None] - bm[:, None, :]
    depth_idx = np.clip(np.round(below_bm).astype(np.int64), 0, n_depth - 1)
    chor = np.take_along_axis(tex, depth_idx, axis=1)
    cov = np.clip(below_bm + 0.5, 0.0, 1.0)
    bm_int = np.asarray(layer_int["bm"], np.float32)
    if bm_int.ndim == 2:
        bm_int = bm_int[:, None, :]
    img[:, lo:, :] += (chor - bm_int) * cov
    return img


def _paint_lesions(
    grid: _Grid,
    planned: list[_Lesion],
    tops: dict[str, np.ndarray],
    thickness_px: dict[str, np.ndarray],
    img: np.ndarray,
    mask: np.ndarray,
) -> list[dict]:
    """Draw cysts and foci into ``img``, label all lesion pixels in ``mask`` (in place).

    Returns
    -------
    list of dict
        The lesion records of :class:`SyntheticVolume`.
    """
    S, H, _ = img.shape
    # (priority, index, slice offset, row offset, col offset, bool mask); later priorities win
    pieces: list[tuple[int, int, int, int, int, np.ndarray]] = []
    priority = {"drusen": 0, "ped": 1, "srf": 2, "irf": 3, "hrf": 4}
    for idx, lesion in enumerate(planned):
        label_priority = priority[lesion.kind]
        if lesion.kind in ("srf", "ped", "drusen"):
            top = tops["srf"] if lesion.kind == "srf" else tops["sub_rpe"]
            bottom = tops["rpe"] if lesion.kind == "srf" else tops["bm"]
            for p in lesion.parts:
                cols = p["gap"] > 0.5
                if lesion.kind != "srf":
                    # the content of a column belongs to the tallest deposit there
                    cols &= p["gap"] >= thickness_px["sub_rpe"] - 1e-3
                inside, r0 = _rows_between(top, bottom, cols, H)
                pieces.append((label_priority, idx, 0, r0, 0, inside))
        elif lesion.kind == "irf":
            for p in lesion.parts:
                piece = _paint_cyst(grid, p, tops, img)
                if piece is not None:
                    pieces.append((label_priority, idx, *piece))
        elif lesion.kind == "hrf":
            s0 = round(grid.slice_of(lesion.y))
            for p in lesion.parts:
                s = s0 + p["slice_offset"]
                if not 0 <= s < S:
                    continue
                piece = _paint_focus(grid, s, grid.col_of(p["x"]), p, tops, img)
                if piece is not None:
                    pieces.append((label_priority, idx, *piece))

    label_of = [LESION_LABELS[lesion.kind] for lesion in planned]
    # per lesion: first/last slice, row and column of its pixels, and its area per slice
    lo = np.full((len(planned), 3), np.iinfo(np.int64).max, np.int64)
    hi = np.full((len(planned), 3), -1, np.int64)
    areas = np.zeros((len(planned), S), np.int64)
    for _, idx, s0, r0, c0, piece in sorted(pieces, key=lambda t: t[0]):
        ns, nr, nc = piece.shape
        # only pixels inside the retina (ILM .. Bruch's membrane) are lesion pixels
        r = np.arange(r0, r0 + nr, dtype=np.float32)[None, :, None]
        ilm = tops["nfl"][s0 : s0 + ns, None, c0 : c0 + nc]
        bm = tops["bottom"][s0 : s0 + ns, None, c0 : c0 + nc]
        piece = piece & (r >= ilm) & (r <= bm)
        if not piece.any():
            continue
        mask[s0 : s0 + ns, r0 : r0 + nr, c0 : c0 + nc][piece] = label_of[idx]
        where = np.nonzero(piece)
        for axis, offset in enumerate((s0, r0, c0)):
            lo[idx, axis] = min(lo[idx, axis], int(where[axis].min()) + offset)
            hi[idx, axis] = max(hi[idx, axis], int(where[axis].max()) + offset)
        areas[idx, s0 : s0 + ns] += piece.sum(axis=(1, 2))

    records: list[dict] = []
    for idx, lesion in enumerate(planned):
        if hi[idx, 0] < 0:
            logger.debug("lesion %d (%s) left no pixel in the volume", idx, lesion.kind)
            continue
        records.append(
            {
                "type": lesion.kind,
                "slice": int(np.argmax(areas[idx])),
                "row": int((lo[idx, 1] + hi[idx, 1]) // 2),
                "col": int((lo[idx, 2] + hi[idx, 2]) // 2),
                "height": int(hi[idx, 1] - lo[idx, 1] + 1),
                "width": int(hi[idx, 2] - lo[idx, 2] + 1),
                "slices": (int(lo[idx, 0]), int(hi[idx, 0])),
            }
        )
    return records


def _paint_cyst(
    grid: _Grid, p: dict, tops: dict[str, np.ndarray], img: np.ndarray
) -> tuple[int, int, int, np.ndarray] | None:
    """Draw one dark intraretinal cyst; return (slice, row, col offsets, its mask)."""
    half = p["half_height"]
    cols = half > 0.3
    if not cols.any():
        return None
    s_idx = np.nonzero(cols.any(axis=1))[0]
    c_idx = np.nonzero(cols.any(axis=0))[0]
    s0, s1 = int(s_idx[0]), int(s_idx[-1]) + 1
    c0, c1 = int(c_idx[0]), int(c_idx[-1]) + 1
    sub = (slice(s0, s1), slice(c0, c1))
    host_top = tops[p["host"]][sub]
    host_bottom = tops["opl"][sub] if p["host"] == "inl" else tops["elm"][sub]
    ilm = tops["nfl"][sub]
    elm = tops["elm"][sub]
    h = np.minimum(half[sub], np.clip((elm - ilm - 3.0) / 2.0, 0.0, None))
    centre = host_top + p["frac"] * (host_bottom - host_top)
    # Move the whole cyst (not column by column, which would flatten it) to keep it
    # between the ILM and the ELM; clip only what still sticks out.
    used = h > 0.3
    too_low = float(np.max(np.where(used, centre + h - (elm - 1.0), 0.0)))
    too_high = float(np.max(np.where(used, ilm + h + 1.5 - centre, 0.0)))
    centre = centre + (too_high if too_high > 0 else -max(too_low, 0.0))
    centre = np.clip(centre, ilm + h + 1.5, elm - h - 1.0)
    lo = int(np.clip(np.floor((centre - h)[h > 0.3].min()) - 1, 0, grid.height))
    hi = int(np.clip(np.ceil((centre + h)[h > 0.3].max()) + 2, 0, grid.height))
    r = np.arange(lo, hi, dtype=np.float32)[None, :, None]
    dist = np.abs(r - centre[:, None, :])
    hh = h[:, None, :]
    cov = np.clip(hh - dist + 0.5, 0.0, 1.0) * (hh > 0.3)
    region = img[s0:s1, lo:hi, c0:c1]
    region *= 1.0 - cov
    region += cov * _FLUID
    return s0, lo, c0, (dist <= hh) & (hh > 0.3)


def _paint_focus(
    grid: _Grid, s: int, col: float, p: dict, tops: dict[str, np.ndarray], img: np.ndarray
) -> tuple[int, int, int, np.ndarray] | None:
    """Draw one hyperreflective focus (2-5 px dot) in the INL/ONL, with a faint shadow."""
    H, W = grid.height, grid.width
    c = int(np.clip(round(col), 0, W - 1))
    top = _sample(tops["inl"], s, c)
    bottom = _sample(tops["elm"], s, c)
    rad = p["radius"]
    row = round(top + rad + p["frac"] * max(bottom - top - 2 * rad, 0.0))
    k = math.ceil(rad) + 1
    r0, r1 = max(0, row - k), min(H, row + k + 1)
    q0, q1 = max(0, c - k), min(W, c + k + 1)
    rr = np.arange(r0, r1)[:, None] - row
    cc = np.arange(q0, q1)[None, :] - c
    dist = np.sqrt(rr**2 + cc**2)
    cov = np.clip(rad - dist + 0.5, 0.0, 1.0).astype(np.float32)
    region = img[s, r0:r1, q0:q1]
    region *= 1.0 - cov
    region += cov * p["bright"]
    # faint shadow below the focus
    prof = np.exp(-(((np.arange(q0, q1) - c) / max(rad, 1.0)) ** 2)).astype(np.float32)
    img[s, min(H, row + k + 1) :, q0:q1] *= 1.0 - 0.25 * prof
    inside = (dist <= rad)[None]
    return s, r0, q0, inside


def _add_vessels(
    rng: np.random.Generator,
    grid: _Grid,
    eye: _Eye,
    tops: dict[str, np.ndarray],
    img: np.ndarray,
) -> None:
    """Retinal vessel cross-sections in the inner retina and their shadows (in place)."""
    S, H, W = img.shape
    n = int(rng.integers(5, 12))
    half_w = grid.width * grid.dx / 2000.0
    for _ in range(n):
        x0 = rng.uniform(-half_w - 0.3, half_w + 0.3)
        slope = rng.normal(0.0, 0.35)
        bend = rng.normal(0.0, 0.06)
        r_um = rng.uniform(18.0, 50.0)
        depth_frac = rng.uniform(0.35, 0.85)
        bright = rng.uniform(0.55, 0.78)
        shadow = rng.uniform(0.35, 0.7) * (0.5 + 0.5 * r_um / 50.0)
        for s in range(S):
            dy = float(grid.y[s, 0]) - eye.fovea_y
            xv = x0 + slope * dy + bend * dy**2
            rho = math.hypot(xv - eye.fovea_x, dy)
            if rho < 0.4:
                continue  # foveal avascular zone
            size = r_um * (0.55 + 0.45 * min(rho / 2.0, 1.0))
            rz = max(size / grid.dz, 0.8)
            rw = max(size / grid.dx, 0.7)
            col = grid.col_of(xv)
            if not -rw <= col <= W - 1 + rw:
                continue
            ilm = _sample(tops["nfl"], s, col)
            inner = _sample(tops["ipl"], s, col) - ilm  # NFL + GCL thickness
            row = ilm + max(rz + 1.0, depth_frac * inner)
            r0, r1 = max(0, int(row - rz - 2)), min(H, int(row + rz + 3))
            q0, q1 = max(0, int(col - rw - 2)), min(W, int(col + rw + 3))
            if r1 <= r0 or q1 <= q0:
                continue
            rr = (np.arange(r0, r1, dtype=np.float32)[:, None] - row) / rz
            cc = (np.arange(q0, q1, dtype=np.float32)[None, :] - col) / rw
            dist = np.sqrt(rr**2 + cc**2)
            cov = np.clip((1.0 - dist) * min(rz, rw) + 0.5, 0.0, 1.0)
            region = img[s, r0:r1, q0:q1]
            region *= 1.0 - cov
            region += cov * bright * (1.0 + 0.15 * np.clip(-rr, 0, 1))
            # shadow: everything below the vessel loses signal
            w0, w1 = max(0, int(col - 3 * rw - 2)), min(W, int(col + 3 * rw + 3))
            prof = np.exp(-(((np.arange(w0, w1) - col) / (0.9 * rw + 0.5)) ** 2))
            start = min(H, int(row + 0.6 * rz) + 1)
            img[s, start:, w0:w1] *= (1.0 - shadow * prof).astype(np.float32)


def _add_membrane(
    rng: np.random.Generator, grid: _Grid, tops: dict[str, np.ndarray], img: np.ndarray
) -> np.ndarray:
    """Detached posterior vitreous membrane: thin faint line 20-80 rows above the ILM.

    Returns
    -------
    (S, W) ndarray of float32
        Membrane row per column, NaN where it is outside the image.
    """
    S, H, _ = img.shape
    kz = grid.kz
    # The hyaloid follows the overall retinal curvature, not the foveal pit.
    smooth_ilm = ndimage.gaussian_filter(
        tops["nfl"], (150.0 / grid.dy if S > 1 else 0.0, 900.0 / grid.dx), mode="nearest"
    )
    base_gap = rng.uniform(30.0, 65.0)
    gap = base_gap + 12.0 * _smooth_field(rng, grid, (3.0, 9.0), 4)
    row = smooth_ilm - np.clip(gap, 20.0, 80.0) * kz
    # keep it 20-80 rows (at 496 rows) above the real ILM, foveal pit included
    ilm = tops["nfl"]
    row = np.clip(row, ilm - 80.0 * kz, ilm - 20.0 * kz).astype(np.float32)
    strength = rng.uniform(0.28, 0.42) * np.clip(
        0.75 + 0.6 * _smooth_field(rng, grid, (0.6, 2.0), 5), 0.15, 1.0
    )
    width = rng.uniform(1.1, 1.6) * max(kz, 0.6)
    lo = int(np.clip(np.floor(row.min() - 4 * width), 0, H))
    hi = int(np.clip(np.ceil(row.max() + 4 * width) + 1, 0, H))
    if hi > lo:
        r = np.arange(lo, hi, dtype=np.float32)[None, :, None]
        ridge = np.exp(-(((r - row[:, None, :]) / width) ** 2))
        img[:, lo:hi, :] += (strength[:, None, :] * ridge).astype(np.float32)
    row[(row < 0) | (row > H - 1)] = np.nan
    return row


def _speckle_intensity(
    rng: np.random.Generator, shape: tuple[int, int], grain: tuple[float, float]
) -> np.ndarray:
    """Fully developed speckle: intensity of a smoothed complex Gaussian field, mean 1.

    Returns
    -------
    ndarray of float32, shape ``shape``
        Exponentially distributed values correlated over about ``grain`` pixels.
    """
    re = _grid_noise(rng, shape, grain)
    im = _grid_noise(rng, shape, grain)
    return 0.5 * (re * re + im * im)


def _finish(
    rng: np.random.Generator, grid: _Grid, eye: _Eye, img: np.ndarray, signal: float
) -> np.ndarray:
    """Optical blur, roll-off, A-scan gain, speckle and noise floor; to uint8.

    Speckle is multiplicative and granular: the intensity of a smoothed complex
    Gaussian field (exponentially distributed, correlated over 1-2 pixels), compressed
    like an averaged Spectralis frame. To stay fast, a small bank of independent speckle
    frames is drawn and every B-scan reads a randomly placed window of one of them.

    Returns
    -------
    (S, H, W) ndarray of uint8
    """
    S, H, W = img.shape
    kz = grid.kz
    kx = 11.5 / grid.dx
    img = ndimage.gaussian_filter1d(img, 0.6 * max(kz, 0.5), axis=1)
    img = ndimage.gaussian_filter1d(img, 0.8 * max(kx, 0.5), axis=2)
    rows = np.arange(H, dtype=np.float32)[None, :, None]
    gain = 1.0 - eye.rolloff * rows / H
    # A-scan to A-scan brightness changes and dimmer edges of the field.
    a_scan = 1.0 + 0.05 * _grid_noise(rng, (S, W), (0.0, 2.0))
    edge = 1.0 - 0.12 * (np.linspace(-1.0, 1.0, W, dtype=np.float32) ** 2)
    gain = gain * (a_scan * edge)[:, None, :]
    img *= gain * np.float32(signal)

    pad = 48
    n_bank = min(S, 6)
    looks = 4  # Spectralis averages frames: speckle intensity ~ Gamma(looks)
    gamma = eye.speckle_gamma
    speckle = np.empty((n_bank, H + pad, W + pad), np.float32)
    noise = np.empty((n_bank, H + pad, W + pad), np.float32)
    grain = (1.0 * max(kz, 0.5), 1.5 * max(kx, 0.5))
    for k in range(n_bank):
        acc = np.zeros((H + pad, W + pad), np.float32)
        for _ in range(looks):
            acc += _speckle_intensity(rng, (H + pad, W + pad), grain)
        acc /= looks
        norm = math.gamma(looks + gamma) / (math.gamma(looks) * looks**gamma)
        speckle[k] = np.power(acc, gamma) / np.float32(norm)
        # the noise floor is hardly averaged away: grainy, Rayleigh-like
        acc = _speckle_intensity(rng, (H + pad, W + pad), (0.7, 0.9))
        noise[k] = np.power(acc, 0.6) / np.float32(math.gamma(1.6))
    floor = eye.noise_floor
    out = np.empty((S, H, W), np.uint8)
    picks = rng.integers(0, n_bank, size=S)
    offsets = rng.integers(0, pad + 1, size=(S, 2))
    flips = rng.random((S, 2)) < 0.5
    for s in range(S):
        m = speckle[picks[s], offsets[s, 0] : offsets[s, 0] + H, offsets[s, 1] : offsets[s, 1] + W]
        nz = noise[(picks[s] + 1) % n_bank, offsets[s, 1] : offsets[s, 1] + H]
        nz = nz[:, offsets[s, 0] : offsets[s, 0] + W]
        if flips[s, 0]:
            m = m[:, ::-1]
        if flips[s, 1]:
            nz = nz[::-1]
        tissue = img[s] * m
        value = np.sqrt(tissue * tissue + (floor * nz) ** 2)
        out[s] = np.clip(value * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out

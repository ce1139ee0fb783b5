"""The healthy eye of the synthetic generator: anatomy, layers, vessels, speckle.

Layer thicknesses, foveal pit, curvature and tilt are smooth functions of the physical
position; :func:`render_layers` paints the layers in their Spectralis-like brightness and
:func:`finish_image` adds blur, roll-off, speckle and noise.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)


# Field of view of a Spectralis macular volume: 496 rows of 3.87 um, 512 columns of 11.5 um.
REF_HEIGHT = 496


DEPTH_RANGE_UM = 3.87 * 496


WIDTH_RANGE_UM = 11.5 * 512


# 49 B-scans 120 um apart; fewer B-scans are spread wider, but never more than 240 um apart
# so that lesions still span neighbouring B-scans.
SLICE_RANGE_UM = 120.0 * 48


MAX_SLICE_SPACING_UM = 240.0


MIN_SLICE_SPACING_UM = 30.0


# Retinal layers from top (ILM) to bottom (Bruch's membrane). "srf" and "sub_rpe" have zero
# thickness in a healthy eye; lesions open them.
LAYERS: tuple[str, ...] = (
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
INTENSITY: dict[str, float] = {
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


FLUID = 0.035


CHOROID = 0.44


@dataclass
class Grid:
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
        return self.height / REF_HEIGHT

    def col_of(self, x_mm: float) -> float:
        """Column (float) of a lateral position in mm."""
        return x_mm * 1000.0 / self.dx + (self.width - 1) / 2.0

    def slice_of(self, y_mm: float) -> float:
        """B-scan index (float) of a position across B-scans in mm."""
        return y_mm * 1000.0 / self.dy + (self.n_slices - 1) / 2.0


@dataclass
class Eye:
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


def smooth_field(
    rng: np.random.Generator,
    grid: Grid,
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


def grid_noise(
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


def make_grid(n_slices: int, height: int, width: int) -> Grid:
    dz = DEPTH_RANGE_UM / height
    dx = WIDTH_RANGE_UM / width
    if n_slices > 1:
        dy = float(
            np.clip(SLICE_RANGE_UM / (n_slices - 1), MIN_SLICE_SPACING_UM, MAX_SLICE_SPACING_UM)
        )
    else:
        dy = 120.0
    x = ((np.arange(width) - (width - 1) / 2.0) * dx / 1000.0)[None, :]
    y = ((np.arange(n_slices) - (n_slices - 1) / 2.0) * dy / 1000.0)[:, None]
    return Grid(n_slices, height, width, dy, dz, dx, x.astype(np.float64), y.astype(np.float64))


def draw_eye(rng: np.random.Generator, grid: Grid, signal: float) -> Eye:
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
        slow = 0.06 * smooth_field(rng, grid, (0.8, 3.0))
        fine = 0.03 * grid_noise(rng, (grid.n_slices, grid.width), fine_sigma)
        t[name] = t[name] * (1.0 + slow + fine)
    thickness = {k: np.clip(v, 0.0, None).astype(np.float32) for k, v in t.items()}

    # Bruch's membrane: curvature (mostly a bowl, edges higher), tilt and gentle undulation.
    kz = grid.kz
    curvature = rng.uniform(-1.5, 7.0) * kz  # rows per mm^2
    tilt_x = rng.normal(0.0, 8.0) * kz  # rows per mm
    tilt_y = rng.normal(0.0, 5.0) * kz
    undulation = rng.uniform(1.0, 4.0) * kz * smooth_field(rng, grid, (1.5, 5.0), 5)
    surface = -curvature * (dxf**2 + dyf**2) + tilt_x * grid.x + tilt_y * grid.y + undulation
    total_px = sum(thickness.values()) / grid.dz
    ilm_centre = rng.uniform(0.24, 0.55) * grid.height
    bm_row = surface - surface.mean() + ilm_centre + float(np.median(total_px))

    intensity = {k: v * rng.uniform(0.92, 1.08) for k, v in INTENSITY.items()}
    gamma = rng.uniform(0.2, 0.28) * (1.0 + 0.8 * (1.0 - min(signal, 1.0)))
    return Eye(
        fovea_x=fx,
        fovea_y=fy,
        pit_sigma=pit_sigma,
        side=side,
        thickness_um=thickness,
        bm_row=bm_row.astype(np.float32),
        intensity=intensity,
        choroid=CHOROID * rng.uniform(0.85, 1.1),
        speckle_gamma=gamma,
        noise_floor=rng.uniform(0.07, 0.1),
        rolloff=rng.uniform(0.1, 0.3),
    )


def layer_boundaries(
    thickness_px: dict[str, np.ndarray], bm_row: np.ndarray
) -> dict[str, np.ndarray]:
    """Top row of every layer, plus "bottom" (Bruch's membrane), from the bottom up.

    Returns
    -------
    dict of (S, W) ndarrays of float32
    """
    tops: dict[str, np.ndarray] = {"bottom": bm_row.astype(np.float32)}
    below = tops["bottom"]
    for name in reversed(LAYERS):
        below = below - thickness_px[name]
        tops[name] = below
    return tops


def fit_into_image(
    grid: Grid, eye: Eye, thickness_px: dict[str, np.ndarray], membrane: bool
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


def add_step(
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


def rows_between(
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


def sample_at(field: np.ndarray, s: int, col: float) -> float:
    """Value of an (S, W) field at a B-scan and (rounded, clipped) column."""
    c = int(np.clip(round(col), 0, field.shape[1] - 1))
    return float(field[s, c])

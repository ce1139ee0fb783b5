"""Image formation of the synthetic generator: layer brightness, vessels, membrane, speckle.

:func:`render_layers` paints the retinal layers in a Spectralis-like grey scale;
:func:`finish_image` adds optical blur, roll-off, A-scan gain, speckle and the noise floor.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage

from napari_anogan.datasets._anatomy import (
    LAYERS,
    Eye,
    Grid,
    add_step,
    grid_noise,
    sample_at,
    smooth_field,
)

logger = logging.getLogger(__name__)


def render_layers(
    grid: Grid,
    eye: Eye,
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
    for name in LAYERS:
        value = layer_int[name]
        add_step(img, tops[name], np.asarray(value, np.float32) - previous, rows)
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
    lumen_noise = grid_noise(rng, (S, n_depth, W), (s_sigma, 3.0 * kz, 5.0 / (grid.dx / 11.5)))
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


def add_vessels(
    rng: np.random.Generator,
    grid: Grid,
    eye: Eye,
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
            ilm = sample_at(tops["nfl"], s, col)
            inner = sample_at(tops["ipl"], s, col) - ilm  # NFL + GCL thickness
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


def add_membrane(
    rng: np.random.Generator, grid: Grid, tops: dict[str, np.ndarray], img: np.ndarray
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
    gap = base_gap + 12.0 * smooth_field(rng, grid, (3.0, 9.0), 4)
    row = smooth_ilm - np.clip(gap, 20.0, 80.0) * kz
    # keep it 20-80 rows (at 496 rows) above the real ILM, foveal pit included
    ilm = tops["nfl"]
    row = np.clip(row, ilm - 80.0 * kz, ilm - 20.0 * kz).astype(np.float32)
    strength = rng.uniform(0.28, 0.42) * np.clip(
        0.75 + 0.6 * smooth_field(rng, grid, (0.6, 2.0), 5), 0.15, 1.0
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


def speckle_intensity(
    rng: np.random.Generator, shape: tuple[int, int], grain: tuple[float, float]
) -> np.ndarray:
    """Fully developed speckle: intensity of a smoothed complex Gaussian field, mean 1.

    Returns
    -------
    ndarray of float32, shape ``shape``
        Exponentially distributed values correlated over about ``grain`` pixels.
    """
    re = grid_noise(rng, shape, grain)
    im = grid_noise(rng, shape, grain)
    return 0.5 * (re * re + im * im)


def finish_image(
    rng: np.random.Generator, grid: Grid, eye: Eye, img: np.ndarray, signal: float
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
    a_scan = 1.0 + 0.05 * grid_noise(rng, (S, W), (0.0, 2.0))
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
            acc += speckle_intensity(rng, (H + pad, W + pad), grain)
        acc /= looks
        norm = math.gamma(looks + gamma) / (math.gamma(looks) * looks**gamma)
        speckle[k] = np.power(acc, gamma) / np.float32(norm)
        # the noise floor is hardly averaged away: grainy, Rayleigh-like
        acc = speckle_intensity(rng, (H + pad, W + pad), (0.7, 0.9))
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

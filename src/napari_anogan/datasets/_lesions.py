"""Lesions of the synthetic generator: planned as 3-D objects, painted and labelled.

Intraretinal cysts, subretinal fluid, pigment-epithelium detachments, hyperreflective
foci and drusen deform the layers around them (:func:`deform_for_lesions`) and are
painted with every lesion pixel labelled (:func:`paint_lesions`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_anogan.datasets._anatomy import (
    FLUID,
    Eye,
    Grid,
    rows_between,
    sample_at,
)

logger = logging.getLogger(__name__)


LESION_LABELS: dict[str, int] = {"irf": 1, "srf": 2, "ped": 3, "hrf": 4, "drusen": 5}
"""Mask value of each lesion type (0 = healthy)."""


@dataclass
class PlannedLesion:
    """A planned lesion: type, centre (mm, slice) and its parts."""

    kind: str
    x: float
    y: float
    parts: list[dict]


def dome(grid: Grid, x0: float, y0: float, ax_mm: float, ay_mm: float, power: float):
    """Dome profile ``(1 - rho^2)^power`` inside an ellipse, 0 outside.

    Returns
    -------
    (S, W) ndarray of float32
    """
    rho2 = ((grid.x - x0) / ax_mm) ** 2 + ((grid.y - y0) / ay_mm) ** 2
    return (np.clip(1.0 - rho2, 0.0, None) ** power).astype(np.float32)


def plan_lesions(
    rng: np.random.Generator, grid: Grid, eye: Eye, kinds: list[str]
) -> list[PlannedLesion]:
    """Choose the shape of each lesion, then a place for it away from the others."""
    min_ay = 1.1 * grid.dy / 1000.0 if grid.n_slices > 1 else 0.05
    half_w = grid.width * grid.dx / 2000.0
    dy_mm = grid.dy / 1000.0
    planned: list[PlannedLesion] = []
    extents: list[tuple[float, float]] = []  # half extent (x, y) in mm of each lesion
    for kind in kinds:
        parts = lesion_parts(rng, grid, kind, 0.0, 0.0, min_ay)
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
        planned.append(PlannedLesion(kind, x, y, parts))
        extents.append((rx, ry))
    return planned


def lesion_parts(
    rng: np.random.Generator, grid: Grid, kind: str, x: float, y: float, min_ay: float
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
        content = FLUID if (kind == "srf" or rng.random() < 0.5) else rng.uniform(0.22, 0.38)
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


def deform_for_lesions(
    grid: Grid,
    planned: list[PlannedLesion],
    thickness_px: dict[str, np.ndarray],
    layer_int: dict[str, np.ndarray | float],
) -> None:
    """Thicken and lift layers for the lesions, fill the new spaces (in place)."""
    shape = (grid.n_slices, grid.width)
    srf = np.zeros(shape, np.float32)
    sub = np.zeros(shape, np.float32)
    sub_content = np.full(shape, FLUID, np.float32)
    drusen = np.zeros(shape, np.float32)
    irf_extra = {"inl": np.zeros(shape, np.float32), "onl": np.zeros(shape, np.float32)}
    for lesion in planned:
        for p in lesion.parts:
            if lesion.kind == "irf":
                az = p["az"] / grid.dz
                p["half_height"] = az * dome(grid, p["x"], p["y"], p["ax"], p["ay"], 0.5)
                # the host layer swells by most of the cyst's height, smoothly and over a
                # wider area than the cyst itself
                sx, sy = max(1.8 * p["ax"], 0.3), max(1.8 * p["ay"], 0.3)
                swell = 1.6 * az * dome(grid, p["x"], p["y"], sx, sy, 1.5)
                np.maximum(irf_extra[p["host"]], swell, out=irf_extra[p["host"]])
            elif lesion.kind in ("srf", "ped", "drusen"):
                h = p["h"] / grid.dz * dome(grid, p["x"], p["y"], p["ax"], p["ay"], p["power"])
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


def paint_lesions(
    grid: Grid,
    planned: list[PlannedLesion],
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
                inside, r0 = rows_between(top, bottom, cols, H)
                pieces.append((label_priority, idx, 0, r0, 0, inside))
        elif lesion.kind == "irf":
            for p in lesion.parts:
                piece = paint_cyst(grid, p, tops, img)
                if piece is not None:
                    pieces.append((label_priority, idx, *piece))
        elif lesion.kind == "hrf":
            s0 = round(grid.slice_of(lesion.y))
            for p in lesion.parts:
                s = s0 + p["slice_offset"]
                if not 0 <= s < S:
                    continue
                piece = paint_focus(grid, s, grid.col_of(p["x"]), p, tops, img)
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


def paint_cyst(
    grid: Grid, p: dict, tops: dict[str, np.ndarray], img: np.ndarray
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
    region += cov * FLUID
    return s0, lo, c0, (dist <= hh) & (hh > 0.3)


def paint_focus(
    grid: Grid, s: int, col: float, p: dict, tops: dict[str, np.ndarray], img: np.ndarray
) -> tuple[int, int, int, np.ndarray] | None:
    """Draw one hyperreflective focus (2-5 px dot) in the INL/ONL, with a faint shadow."""
    H, W = grid.height, grid.width
    c = int(np.clip(round(col), 0, W - 1))
    top = sample_at(tops["inl"], s, c)
    bottom = sample_at(tops["elm"], s, c)
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

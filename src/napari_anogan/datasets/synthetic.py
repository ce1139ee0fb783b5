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
>>> from napari_anogan.datasets.synthetic import make_volume
>>> vol = make_volume(5, 160, 192, lesions=["irf", "hrf"], seed=1)
>>> vol.data.shape, str(vol.data.dtype), bool(vol.mask.any())
((5, 160, 192), 'uint8', True)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_anogan.datasets._anatomy import (
    draw_eye,
    fit_into_image,
    layer_boundaries,
    make_grid,
)
from napari_anogan.datasets._imaging import (
    add_membrane,
    add_vessels,
    finish_image,
    render_layers,
)
from napari_anogan.datasets._lesions import (
    LESION_LABELS,
    deform_for_lesions,
    paint_lesions,
    plan_lesions,
)

logger = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------------------------
# random fields


# ----------------------------------------------------------------------------------------
# anatomy


# ----------------------------------------------------------------------------------------
# lesion planning


# ----------------------------------------------------------------------------------------
# rendering helpers


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

    grid = make_grid(n_slices, height, width)
    eye = draw_eye(rng_eye, grid, signal)

    # Which lesions: every requested type once, then random picks.
    if kinds:
        n_total = 2 * len(kinds) if n_lesions is None else n_lesions
        order = list(rng_lesion.permutation(kinds))
        extra = list(rng_lesion.choice(kinds, size=max(0, n_total - len(order))))
        chosen = [str(k) for k in (order + extra)[:n_total]]
    else:
        chosen = []
    planned = plan_lesions(rng_lesion, grid, eye, chosen)

    thickness_px = {k: v / np.float32(grid.dz) for k, v in eye.thickness_um.items()}
    layer_int: dict[str, np.ndarray | float] = dict(eye.intensity)
    deform_for_lesions(grid, planned, thickness_px, layer_int)

    bm_row = fit_into_image(grid, eye, thickness_px, vitreous_membrane)
    tops = layer_boundaries(thickness_px, bm_row)

    img = render_layers(grid, eye, tops, layer_int, rng_texture)
    mask = np.zeros(img.shape, np.uint8)
    records = paint_lesions(grid, planned, tops, thickness_px, img, mask)
    add_vessels(rng_vessel, grid, eye, tops, img)
    membrane = None
    if vitreous_membrane:
        membrane = add_membrane(rng_membrane, grid, tops, img)
    data = finish_image(rng_speckle, grid, eye, img, signal)

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

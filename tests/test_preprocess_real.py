"""Retina boundaries on real B-scans (../shared/data/real-oct); skipped where absent.

Reference rows were read off the images by eye (see docs/boundaries_*.png).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_anogan.io import read_volume
from napari_anogan.preprocess import grid_patches, preprocess_volume

REAL_OCT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-oct"
pytestmark = pytest.mark.skipif(
    not REAL_OCT.is_dir(), reason="no ../shared/data/real-oct in this checkout"
)


def _pre(relative: str):
    vol = read_volume(REAL_OCT / relative)
    return vol, preprocess_volume(vol)


def test_ilm_is_the_retina_not_the_detached_vitreous_membrane():
    # NORMAL-1384-1: a posterior vitreous membrane runs 30-140 rows above the retina
    _, pre = _pre("kermany2018/NORMAL-1384-1.jpeg")
    ilm, bm = pre.ilm[0], pre.bm[0]
    hand_ilm = {50: 276, 300: 247, 378: 275, 650: 208}  # 378: foveal pit
    hand_bm = {50: 351, 300: 332, 650: 286}
    membrane = {50: 138, 300: 127, 650: 170}
    for col, row in hand_ilm.items():
        assert abs(ilm[col] - row) <= 5, (col, ilm[col])
    for col, row in hand_bm.items():
        assert abs(bm[col] - row) <= 6, (col, bm[col])
    for col, row in membrane.items():
        assert ilm[col] > row + 25


def test_normal_scan_with_white_padding_wedge():
    _, pre = _pre("kermany2018/NORMAL-33637-1.jpeg")
    ilm, bm = pre.ilm[0], pre.bm[0]
    for col, row in {50: 126, 256: 144, 450: 116}.items():  # 256: foveal pit
        assert abs(ilm[col] - row) <= 5, (col, ilm[col])
    thickness = bm - ilm
    assert thickness.min() > 45
    assert thickness.max() < 100


@pytest.mark.parametrize(
    "name",
    [
        "CNV-13823-1.jpeg",
        "CNV-732516-2.jpeg",
        "DME-4298019-1.jpeg",
        "DRUSEN-364469-3.jpeg",
        "NORMAL-1384-1.jpeg",
        "NORMAL-33637-1.jpeg",
    ],
)
def test_kermany_scans_preprocess_to_a_band(name):
    vol, pre = _pre(f"kermany2018/{name}")
    assert pre.ilm.shape == (1, vol.shape[2])
    assert np.all(pre.bm > pre.ilm)
    # the middle 80 % of the scan (the edges of CNV-13823-1 curve out of reach)
    mid = slice(vol.shape[2] // 10, -vol.shape[2] // 10)
    thickness = (pre.bm - pre.ilm)[0, mid]
    assert 40 < np.median(thickness) < 160
    assert pre.flat.shape[1] >= 64
    assert len(grid_patches(pre)) > 0


def test_octdl_drusen_lie_between_ilm_and_bm():
    for i in range(1, 14):
        vol, pre = _pre(f"octdl-amd/AMD_{i:04d}.png")
        mask = read_volume(REAL_OCT / f"octdl-amd/AMD_{i:04d}_drusen-mask.png").data[0] > 0
        ilm, bm = pre.ilm[0], pre.bm[0]
        # wide field: the retina sits in the upper half, 30-70 rows thick
        assert bm.max() < 0.55 * vol.shape[1]
        assert (bm - ilm).min() > 25
        assert (bm - ilm).max() < 80
        cols = np.flatnonzero(mask.any(axis=0))
        if cols.size:
            deepest = np.array([np.flatnonzero(mask[:, c]).max() for c in cols])
            highest = np.array([np.flatnonzero(mask[:, c]).min() for c in cols])
            # drusen sit on Bruch's membrane: BM is not pulled up into them
            assert np.mean(deepest <= bm[cols] + 3) >= 0.9, i
            assert np.all(highest >= ilm[cols])

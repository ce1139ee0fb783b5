"""Tests of the synthetic OCT generator (anatomy, determinism, lesions and their masks)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_anogan.datasets.synthetic import LESION_LABELS, SyntheticVolume, make_bscan, make_volume

SMALL = (5, 160, 192)


def _band_mean(vol: SyntheticVolume, top: np.ndarray, bottom: np.ndarray, margin: float = 1.0):
    """Mean grey value of the pixels at least ``margin`` rows inside [top, bottom]."""
    rows = np.arange(vol.data.shape[1])[None, :, None]
    inside = (rows >= top[:, None, :] + margin) & (rows <= bottom[:, None, :] - margin)
    assert inside.sum() > 100, "band too thin to measure"
    return float(vol.data[inside].mean())


def _retina(vol: SyntheticVolume) -> np.ndarray:
    rows = np.arange(vol.data.shape[1])[None, :, None]
    return (rows >= vol.ilm[:, None, :]) & (rows <= vol.bm[:, None, :])


@pytest.fixture(scope="module")
def healthy_bscan() -> SyntheticVolume:
    return make_bscan(seed=11)


# ---------------------------------------------------------------------------------------
# shape, dtype, determinism


def test_shapes_and_dtypes():
    vol = make_volume(*SMALL, seed=0)
    s, h, w = SMALL
    assert vol.data.shape == (s, h, w)
    assert vol.data.dtype == np.uint8
    assert vol.mask.shape == (s, h, w)
    assert vol.mask.dtype == np.uint8
    assert vol.ilm.shape == (s, w)
    assert vol.ilm.dtype == np.float32
    assert vol.bm.shape == (s, w)
    assert vol.bm.dtype == np.float32
    assert len(vol.spacing) == 3
    assert all(v > 0 for v in vol.spacing)
    assert vol.membrane is None
    assert set(vol.layers) >= {"nfl", "inl", "onl", "ez", "rpe", "bm", "choroid"}


def test_spectralis_spacing():
    vol = make_volume(3, 496, 512, seed=0)
    assert vol.spacing[1:] == pytest.approx((3.87, 11.5))
    assert vol.spacing[0] == pytest.approx(240.0)  # few B-scans: at most 240 um apart


def test_make_bscan_is_one_slice():
    vol = make_bscan(160, 192, seed=3, lesions=["irf"])
    assert vol.data.shape == (1, 160, 192)
    assert vol.mask.max() == LESION_LABELS["irf"]


def test_same_seed_same_volume():
    a = make_volume(*SMALL, lesions=["irf", "hrf"], seed=5, vitreous_membrane=True)
    b = make_volume(*SMALL, lesions=["irf", "hrf"], seed=5, vitreous_membrane=True)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.ilm, b.ilm)
    np.testing.assert_array_equal(a.bm, b.bm)
    assert a.lesions == b.lesions


def test_different_seed_different_volume():
    a = make_volume(*SMALL, seed=1)
    b = make_volume(*SMALL, seed=2)
    assert not np.array_equal(a.data, b.data)
    assert not np.allclose(a.ilm, b.ilm)


def test_generator_seed():
    a = make_volume(*SMALL, seed=np.random.default_rng(4))
    b = make_volume(*SMALL, seed=np.random.default_rng(4))
    np.testing.assert_array_equal(a.data, b.data)


def test_lesions_keep_the_same_eye():
    """Foci do not deform the layers: same seed, same anatomy and boundaries."""
    healthy = make_volume(*SMALL, seed=8)
    with_foci = make_volume(*SMALL, seed=8, lesions=["hrf"])
    np.testing.assert_array_equal(healthy.ilm, with_foci.ilm)
    np.testing.assert_array_equal(healthy.bm, with_foci.bm)
    unchanged = np.abs(healthy.data.astype(int) - with_foci.data.astype(int)) == 0
    assert unchanged.mean() > 0.95


# ---------------------------------------------------------------------------------------
# anatomy


@pytest.mark.parametrize("seed", range(6))
def test_boundaries_ordered_and_inside(seed):
    vol = make_volume(*SMALL, seed=seed, lesions=["ped", "irf"])
    h = vol.data.shape[1]
    assert np.all(vol.ilm < vol.bm)
    assert vol.ilm.min() >= 0
    assert vol.bm.max() <= h - 1
    thickness_um = (vol.bm - vol.ilm) * vol.spacing[1]
    assert thickness_um.min() > 120
    assert thickness_um.max() < 900
    # every layer top lies between the ILM and Bruch's membrane, in order
    previous = vol.ilm
    for name in ("gcl", "ipl", "inl", "opl", "onl", "elm", "ez", "rpe", "bm"):
        assert np.all(vol.layers[name] >= previous - 1e-3), name
        previous = vol.layers[name]
    assert np.all(vol.bm >= previous)


def test_layer_brightness_order(healthy_bscan):
    vol, lay = healthy_bscan, healthy_bscan.layers
    rpe = _band_mean(vol, lay["rpe"], lay["bm"], margin=0.5)
    onl = _band_mean(vol, lay["onl"], lay["elm"], margin=2)
    inl = _band_mean(vol, lay["inl"], lay["opl"], margin=1.5)
    ez = _band_mean(vol, lay["ez"], lay["os"], margin=0.5)
    nfl_cols = (lay["gcl"] - lay["nfl"]) > 8  # where the NFL is thick enough to measure
    nfl = float(
        vol.data[0, :, nfl_cols[0]][
            (np.arange(vol.data.shape[1])[None] >= lay["nfl"][0, nfl_cols[0], None] + 2)
            & (np.arange(vol.data.shape[1])[None] <= lay["gcl"][0, nfl_cols[0], None] - 2)
        ].mean()
    )
    vitreous = _band_mean(vol, np.zeros_like(vol.ilm), vol.ilm - 5, margin=0)
    choroid = _band_mean(vol, vol.bm + 2, vol.bm + 20, margin=0)
    assert rpe > onl
    assert ez > onl
    assert nfl > inl
    assert inl > onl * 0.9
    assert vitreous < min(rpe, onl, inl, nfl, choroid)
    assert choroid > vitreous + 15


def test_foveal_pit_only_in_central_slices():
    vol = make_volume(49, 124, 128, seed=2)
    thickness = vol.bm - vol.ilm
    central = thickness[20:29].min(axis=1).min()
    peripheral = thickness[[0, 1, -2, -1]]
    # the pit thins the centre clearly; the far periphery has no dip of that size
    assert central < 0.8 * np.median(peripheral)
    assert peripheral.min() > 0.85 * np.median(peripheral)


def test_nfl_thicker_towards_the_disc():
    for seed in range(4):
        vol = make_volume(3, 248, 256, seed=seed)
        nfl = (vol.layers["gcl"] - vol.layers["nfl"])[1]
        left, right = nfl[:40].mean(), nfl[-40:].mean()
        assert max(left, right) > 1.6 * min(left, right)


def test_neighbouring_slices_are_consistent():
    vol = make_volume(25, 160, 192, seed=6)
    step = np.abs(np.diff(vol.ilm, axis=0)).mean()
    other = make_volume(25, 160, 192, seed=7)
    between_eyes = np.abs(vol.ilm - other.ilm).mean()
    assert step < 3.0
    assert step < 0.3 * between_eyes


def test_eyes_vary():
    vols = [make_volume(1, 160, 192, seed=s) for s in range(8)]
    depth = [float(v.ilm.mean()) for v in vols]
    thick = [float((v.bm - v.ilm).mean()) for v in vols]
    tilt = [float(v.bm[0, -1] - v.bm[0, 0]) for v in vols]
    assert np.ptp(depth) > 15
    assert np.ptp(thick) > 3
    assert np.ptp(tilt) > 5


def test_speckle_is_granular_not_white():
    """Speckle is correlated over neighbouring pixels, like real OCT."""
    vol = make_bscan(seed=1)
    top = int(vol.ilm.min()) - 10
    vitreous = vol.data[0, 5:top, :].astype(float)
    vitreous -= vitreous.mean()
    corr = (vitreous[:, 1:] * vitreous[:, :-1]).mean() / vitreous.var()
    assert 0.15 < corr < 0.95


def test_healthy_volume_has_empty_mask():
    vol = make_volume(*SMALL, seed=3)
    assert not vol.mask.any()
    assert vol.lesions == []
    assert not make_volume(*SMALL, seed=3, lesions=[]).mask.any()


def test_vitreous_membrane_above_ilm():
    plain = make_volume(*SMALL, seed=9)
    vol = make_volume(*SMALL, seed=9, vitreous_membrane=True)
    kz = SMALL[1] / 496
    gap = vol.ilm - vol.membrane
    ok = np.isfinite(gap)
    assert ok.mean() > 0.9
    assert np.all(gap[ok] >= 20 * kz - 1e-3)
    assert np.all(gap[ok] <= 80 * kz + 1e-3)
    # the line is brighter than the vitreous around it, and absent without the option
    s, c = np.nonzero(ok)
    r = np.round(vol.membrane[s, c]).astype(int)
    on_line = vol.data[s, r, c].astype(float)
    off_line = vol.data[s, np.clip(r - 4, 0, None), c].astype(float)
    assert on_line.mean() > off_line.mean() + 10
    assert on_line.mean() > plain.data[s, r, c].mean() + 10
    np.testing.assert_array_equal(plain.ilm, vol.ilm)


def test_low_signal_has_less_contrast():
    good = make_bscan(seed=4)
    weak = make_bscan(seed=4, signal=0.5)
    retina_good = good.data[_retina(good)].astype(float)
    retina_weak = weak.data[_retina(weak)].astype(float)
    vit = (slice(None), slice(0, 20), slice(None))
    contrast_good = retina_good.mean() - good.data[vit].mean()
    contrast_weak = retina_weak.mean() - weak.data[vit].mean()
    assert contrast_weak < 0.7 * contrast_good


# ---------------------------------------------------------------------------------------
# lesions


@pytest.mark.parametrize("kind", list(LESION_LABELS))
def test_lesion_mask_label_and_position(kind):
    label = LESION_LABELS[kind]
    for seed in range(3):
        vol = make_volume(*SMALL, lesions=[kind], seed=seed)
        assert set(np.unique(vol.mask)) == {0, label}
        s, r, c = np.nonzero(vol.mask)
        assert np.all(r >= vol.ilm[s, c])
        assert np.all(r <= vol.bm[s, c])
        if kind in ("ped", "drusen"):
            # under the RPE, above Bruch's membrane
            assert np.all(r >= vol.layers["rpe"][s, c])
        elif kind == "srf":
            assert np.all(r >= vol.layers["iz"][s, c])
            assert np.all(r <= vol.layers["rpe"][s, c])
        else:  # irf, hrf: in the neurosensory retina above the ELM
            assert np.all(r <= vol.layers["elm"][s, c] + 1)
        assert len(vol.lesions) == 2
        assert all(rec["type"] == kind for rec in vol.lesions)


@pytest.mark.parametrize("kind", ["irf", "srf"])
def test_fluid_is_darker_than_retina(kind):
    for seed in range(3):
        vol = make_volume(*SMALL, lesions=[kind], seed=seed)
        lesion = vol.mask > 0
        tissue = _retina(vol) & ~lesion
        assert vol.data[lesion].mean() < 0.6 * vol.data[tissue].mean()


def test_foci_are_brighter_than_nuclear_layers():
    for seed in range(3):
        vol = make_volume(*SMALL, lesions=["hrf"], seed=seed)
        lesion = vol.mask > 0
        rows = np.arange(vol.data.shape[1])[None, :, None]
        nuclear = (rows >= vol.layers["inl"][:, None, :]) & (rows < vol.layers["elm"][:, None, :])
        assert vol.data[lesion].mean() > 1.5 * vol.data[nuclear & ~lesion].mean()


def test_ped_keeps_bm_at_bruchs_membrane():
    healthy = make_volume(*SMALL, seed=12)
    ped = make_volume(*SMALL, seed=12, lesions=["ped"], n_lesions=1)
    lifted = (ped.layers["bm"] - ped.layers["sub_rpe"]) > 3  # RPE lifted off Bruch's membrane
    assert lifted.any()
    # BM stays where it is while the RPE rises (up to the global placement shift)
    shift = np.median(ped.bm - healthy.bm)
    np.testing.assert_allclose(ped.bm - shift, healthy.bm, atol=1e-3)
    assert np.all(ped.layers["rpe"][lifted] < healthy.layers["rpe"][lifted] + shift - 3)


def test_irf_thickens_retina():
    healthy = make_volume(*SMALL, seed=13)
    irf = make_volume(*SMALL, seed=13, lesions=["irf"])
    cols = (irf.mask > 0).any(axis=1)
    assert (irf.bm - irf.ilm)[cols].mean() > (healthy.bm - healthy.ilm)[cols].mean() + 3


@pytest.mark.parametrize("kind", list(LESION_LABELS))
def test_lesions_span_several_slices(kind):
    vol = make_volume(*SMALL, lesions=[kind], n_lesions=1, seed=21)
    (rec,) = vol.lesions
    assert rec["slices"][1] > rec["slices"][0]
    assert np.count_nonzero(vol.mask.any(axis=(1, 2))) > 1


def test_lesion_records_match_mask():
    vol = make_volume(*SMALL, lesions=list(LESION_LABELS), n_lesions=5, seed=2)
    assert sorted(r["type"] for r in vol.lesions) == sorted(LESION_LABELS)
    for rec in vol.lesions:
        assert set(rec) >= {"type", "slice", "row", "col", "height", "width"}
        assert rec["slices"][0] <= rec["slice"] <= rec["slices"][1]
        r0 = rec["row"] - rec["height"] // 2
        c0 = rec["col"] - rec["width"] // 2
        box = vol.mask[
            rec["slices"][0] : rec["slices"][1] + 1,
            max(r0 - 1, 0) : r0 + rec["height"] + 1,
            max(c0 - 1, 0) : c0 + rec["width"] + 1,
        ]
        assert np.any(box == LESION_LABELS[rec["type"]])


def test_n_lesions():
    vol = make_volume(*SMALL, lesions=["irf", "srf"], n_lesions=1, seed=0)
    assert len(vol.lesions) == 1
    vol = make_volume(*SMALL, lesions=["hrf"], n_lesions=3, seed=0)
    assert len(vol.lesions) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lesions": ["cnv"]}, "unknown lesion"),
        ({"n_lesions": 2}, "n_lesions"),
        ({"signal": 0.0}, "signal"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_volume(*SMALL, **kwargs)


def test_too_small_shape():
    with pytest.raises(ValueError, match="too small"):
        make_volume(1, 32, 32)


@pytest.mark.slow
def test_full_size_volume():
    """A Spectralis-sized volume with every lesion type (its speed: bench_boundaries.py)."""
    vol = make_volume(49, 496, 512, lesions=list(LESION_LABELS), seed=0)
    assert vol.data.shape == (49, 496, 512)
    assert vol.spacing == pytest.approx((120.0, 3.87, 11.5))

import numpy as np
import pytest

from napari_anogan.errors import InputError
from napari_anogan.scoring import (
    QUANTILE_LEVELS,
    aggregate_bscans,
    assemble_heatmap,
    percentile_of,
    score_quantiles,
    volume_score,
)


def test_percentile_of_interpolates():
    q = np.array([0.0, 10.0, 20.0, 40.0, 80.0])  # levels 0, 25, 50, 75, 100
    got = percentile_of(np.array([-1.0, 0.0, 5.0, 20.0, 30.0, 80.0, 1e9]), q)
    np.testing.assert_allclose(got, [0.0, 0.0, 12.5, 50.0, 62.5, 100.0, 100.0])


def test_percentile_of_shape_nan_and_scalar():
    q = np.array([0.0, 1.0, 2.0])
    got = percentile_of(np.array([[0.5, np.nan], [1.0, 3.0]]), q)
    assert got.shape == (2, 2)
    np.testing.assert_allclose(got, [[25.0, np.nan], [50.0, 100.0]])
    assert float(percentile_of(1.5, q)) == 75.0


def test_percentile_of_ties_take_middle_level():
    # Levels 0, 25, 50, 75, 100; value 1 spans levels 25..75.
    q = np.array([0.0, 1.0, 1.0, 1.0, 2.0])
    np.testing.assert_allclose(percentile_of(np.array([1.0, 0.5, 1.5]), q), [50.0, 25.0, 75.0])
    np.testing.assert_allclose(percentile_of(np.array([0.0, 1.0, 2.0]), np.ones(3)), [0, 50, 100])


def test_percentile_of_custom_levels_and_errors():
    np.testing.assert_allclose(percentile_of(5.0, [0.0, 10.0], levels=[10.0, 90.0]), 50.0)
    with pytest.raises(InputError, match="non-decreasing"):
        percentile_of(1.0, [2.0, 1.0])
    with pytest.raises(InputError, match="empty"):
        percentile_of(1.0, [])


def test_score_quantiles_and_round_trip():
    scores = {"a": np.arange(101, dtype=float), "b": np.zeros(5)}
    q = score_quantiles(scores)
    assert q["a"].shape == QUANTILE_LEVELS.shape
    np.testing.assert_allclose(q["a"], np.arange(101))
    np.testing.assert_allclose(percentile_of(np.array([10.0, 55.5]), q["a"]), [10.0, 55.5])
    np.testing.assert_array_equal(q["b"], np.zeros(101))


def test_aggregate_top_k_mean():
    slices = np.array([0, 0, 0, 0, 1, 1, 3])
    scores = np.array([1.0, 5.0, 3.0, 4.0, 2.0, 6.0, 7.0])
    got = aggregate_bscans(slices, scores, 4, top_k=3)
    np.testing.assert_allclose(got, [4.0, 4.0, np.nan, 7.0])
    assert volume_score(got) == 7.0
    np.testing.assert_allclose(aggregate_bscans(slices, scores, 4, top_k=2), [4.5, 4.0, np.nan, 7])
    # the default k (settings.BSCAN_TOP_K) is more than any B-scan here has: all patches
    np.testing.assert_allclose(aggregate_bscans(slices, scores, 4), [3.25, 4.0, np.nan, 7.0])


def test_aggregate_order_independent():
    rng = np.random.default_rng(0)
    slices = rng.integers(0, 5, 50)
    scores = rng.normal(size=50)
    perm = rng.permutation(50)
    a = aggregate_bscans(slices, scores, 5, top_k=3)
    b = aggregate_bscans(slices[perm], scores[perm], 5, top_k=3)
    np.testing.assert_allclose(a, b)
    expected = [np.sort(scores[slices == s])[-3:].mean() for s in range(5)]
    np.testing.assert_allclose(a, expected)


@pytest.mark.parametrize(("rule", "expected"), [("max", [5.0, 6.0]), ("mean", [3.25, 4.0])])
def test_aggregate_other_rules(rule, expected):
    slices = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([1.0, 5.0, 3.0, 4.0, 2.0, 6.0])
    np.testing.assert_allclose(aggregate_bscans(slices, scores, 2, rule=rule), expected)


def test_aggregate_edge_cases():
    assert np.isnan(aggregate_bscans(np.array([], int), np.array([]), 3)).all()
    assert np.isnan(volume_score(np.full(3, np.nan)))
    with pytest.raises(InputError, match="slice indices"):
        aggregate_bscans(np.array([3]), np.array([1.0]), 3)
    with pytest.raises(InputError, match="rule"):
        aggregate_bscans(np.array([0]), np.array([1.0]), 1, rule="median")


def test_assemble_heatmap_averages_overlaps():
    res = np.stack([np.full((1, 2, 2), 1.0), np.full((1, 2, 2), 3.0), np.full((1, 2, 2), 8.0)])
    coords = np.array([[0, 0, 0], [0, 1, 1], [1, 1, 2]])
    heat = assemble_heatmap(res, coords, (2, 3, 4))
    nan = np.nan
    expected = np.array(
        [
            [[1, 1, nan, nan], [1, 2, 3, nan], [nan, 3, 3, nan]],
            [[nan, nan, nan, nan], [nan, nan, 8, 8], [nan, nan, 8, 8]],
        ]
    )
    assert heat.dtype == np.float32
    assert heat.shape == (2, 3, 4)
    np.testing.assert_array_equal(heat, expected)


def test_assemble_heatmap_drops_outside_and_chunks():
    res = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    coords = np.array([[0, -1, 2], [0, 0, 0]])
    heat = assemble_heatmap(res, coords, (1, 3, 4), chunk=1)
    # First patch rows -1..1, cols 2..4: only rows 0..1, cols 2..3 land.
    expected = np.full((3, 4), np.nan)
    expected[0:3, 0:3] = res[1]
    expected[0, 2] = (res[0][1, 0] + res[1][0, 2]) / 2
    expected[1, 2] = (res[0][2, 0] + res[1][1, 2]) / 2
    expected[0, 3] = res[0][1, 1]
    expected[1, 3] = res[0][2, 1]
    np.testing.assert_allclose(heat[0], expected)


def test_assemble_heatmap_errors():
    with pytest.raises(InputError, match="coordinates"):
        assemble_heatmap(np.zeros((2, 1, 2, 2)), np.zeros((1, 3), int), (1, 4, 4))
    with pytest.raises(InputError, match="one channel"):
        assemble_heatmap(np.zeros((2, 3, 2, 2)), np.zeros((2, 3), int), (1, 4, 4))

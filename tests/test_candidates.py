import numpy as np
import pytest

from napari_anogan.scoring.candidates import CANDIDATE_COLUMNS, find_candidates


def _table(entries):
    """entries: (slice, flat_row, flat_col, score, percentile); raw box = flat pos, 64x64."""
    arr = np.array(entries, dtype=float)
    return {
        "slice": arr[:, 0].astype(int),
        "flat_row": arr[:, 1].astype(int),
        "flat_col": arr[:, 2].astype(int),
        "row": arr[:, 1].astype(int),
        "col": arr[:, 2].astype(int),
        "height": np.full(len(arr), 64),
        "width": np.full(len(arr), 64),
        "anomaly_score": arr[:, 3],
        "healthy_percentile": arr[:, 4],
    }


def test_joins_neighbours_across_slices_and_ranks_by_max_score():
    table = _table(
        [
            (0, 0, 0, 5.0, 99.5),  # region A, slice 0
            (1, 0, 0, 7.0, 99.9),  # region A, same grid position next slice
            (1, 0, 32, 6.0, 99.6),  # region A, overlapping neighbour in slice 1
            (3, 64, 128, 9.0, 100.0),  # region B, isolated, highest score
            (2, 64, 128, 1.0, 50.0),  # healthy: breaks the chain between slices 1..3
        ]
    )
    found = find_candidates(table, stride=32, threshold=99.0)
    assert [c["n_patches"] for c in found] == [1, 3]
    best, second = found
    assert best["rank"] == 1
    assert best["max_score"] == 9.0
    assert (best["slice_start"], best["slice_end"]) == (3, 3)
    assert (best["row"], best["col"], best["height"], best["width"]) == (64, 128, 64, 64)
    assert (second["slice_start"], second["slice_end"]) == (0, 1)
    assert (second["row"], second["col"], second["height"], second["width"]) == (0, 0, 64, 96)
    assert second["mean_score"] == pytest.approx(6.0)
    assert second["healthy_percentile"] == pytest.approx(99.9)
    assert sorted(second["patch_index"]) == [0, 1, 2]
    assert set(CANDIDATE_COLUMNS) <= set(best)


def test_threshold_controls_membership():
    table = _table([(0, 0, 0, 5.0, 98.0), (0, 0, 32, 6.0, 99.5)])
    assert len(find_candidates(table, stride=32, threshold=99.0)) == 1
    assert find_candidates(table, stride=32, threshold=99.9) == []
    both = find_candidates(table, stride=32, threshold=97.0)
    assert len(both) == 1
    assert both[0]["n_patches"] == 2


def test_diagonal_neighbours_join_in_a_bscan_but_not_across_slices():
    in_plane = _table([(0, 0, 0, 5.0, 99.5), (0, 32, 32, 6.0, 99.5)])
    assert len(find_candidates(in_plane, stride=32, threshold=99.0)) == 1
    across = _table([(0, 0, 0, 5.0, 99.5), (1, 32, 32, 6.0, 99.5)])
    assert len(find_candidates(across, stride=32, threshold=99.0)) == 2


def test_empty_table():
    empty = {k: v[:0] for k, v in _table([(0, 0, 0, 1.0, 10.0)]).items()}
    assert find_candidates(empty, stride=32) == []

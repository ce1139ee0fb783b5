"""benchmarks/real_octdl.py: per-class B-scan AUCs with a patient bootstrap, on known data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_octdl.py"


@pytest.fixture(scope="module")
def real_octdl():
    spec = importlib.util.spec_from_file_location("real_octdl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_class_aucs_are_exact_with_intervals_around_them(real_octdl, monkeypatch):
    monkeypatch.setattr(real_octdl, "MIN_CLASS", 2)
    # healthy: patients a (2 B-scans) and b; DME: c (2), d; AMD: e, f
    classes = np.array(["NO", "NO", "NO", "DME", "DME", "DME", "AMD", "AMD"])
    patients = np.array(["a", "a", "b", "c", "c", "d", "e", "f"])
    scores = np.array([0.1, 0.2, 0.6, 0.5, 0.9, 0.8, 0.7, 0.05])
    out = real_octdl.class_aucs(scores, classes, patients, n_boot=200, seed=1)
    # all: 5 diseased x 3 healthy pairs; wins: 0.5 > 0.1, 0.2 (2); 0.9, 0.8, 0.7 > all (9);
    # 0.05 > none: 11 / 15
    assert out["all"]["auc"] == pytest.approx(11 / 15, abs=1e-3)
    assert out["all"]["n"] == [5, 3]
    # DME: 0.5, 0.9, 0.8 against 0.1, 0.2, 0.6: 2 + 3 + 3 = 8 of 9
    assert out["DME"]["auc"] == pytest.approx(8 / 9, abs=1e-3)
    # AMD: 0.7 beats all three, 0.05 none: 3 / 6
    assert out["AMD"]["auc"] == pytest.approx(0.5)
    for row in out.values():
        low, high = row["ci"]
        assert 0.0 <= low <= row["auc"] <= high <= 1.0
    assert set(out) == {"all", "DME", "AMD"}  # no ERM, RVO, VID or RAO B-scans here


def test_small_classes_get_no_auc_of_their_own(real_octdl):
    classes = np.array(["NO"] * 3 + ["RAO"] * 2)
    patients = np.array(["a", "b", "c", "d", "e"])
    out = real_octdl.class_aucs(np.arange(5.0), classes, patients, n_boot=20)
    assert set(out) == {"all"}  # RAO has 2 < MIN_CLASS B-scans
    assert out["all"]["auc"] == 1.0


def test_errors_lists_top_healthy_and_missed(real_octdl):
    classes = np.array(["NO"] * 10 + ["DME"] * 2)
    scores = np.array([*np.arange(10.0), 3.5, 20.0])
    stems = [f"no_{i}_1" for i in range(10)] + ["dme_x_1", "dme_y_1"]
    out = real_octdl.errors(scores, classes, stems, n=2)
    assert out["top_healthy"] == [("no_9_1", 9.0), ("no_8_1", 8.0)]
    assert out["healthy_p90"] == pytest.approx(8.1)
    assert out["missed"] == {"DME": ["dme_x_1"]}
    assert out["missed_share"] == {"DME": 0.5}

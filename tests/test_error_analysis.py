"""benchmarks/error_analysis.py on a hand-made patch_scores.csv with known answers."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "error_analysis.py"
COLUMNS = ["input", "group", "slice", "flat_col", "label", "lesion_fraction", "lesion_label"]
FLAT_COLS = [0, 32, 64, 96, 128, 160, 192]  # patch centres 32..224 of a 256-wide band


@pytest.fixture(scope="module")
def error_analysis():
    spec = importlib.util.spec_from_file_location("error_analysis", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path: Path) -> None:
    """Two eyes of 10 B-scans x 7 patches.

    Healthy eye: its 12 central patches (B-scans 3-6, centres 96-160) score 10, the rest 1.
    Diseased eye: a large SRF positive (B-scan 0, first patch, score 20), an IRF sliver
    (B-scan 9, last patch, score 5), a negative next to each of them scoring 30, and 66
    other negatives with distinct scores between 1 and 2.
    """
    rows = []
    k = 0
    for group, name in (("test healthy", "normal.tif"), ("diseased", "diseased.tif")):
        for sl in range(10):
            for col in FLAT_COLS:
                row = dict(input=name, group=group, slice=sl, flat_col=col, label=0)
                row.update(lesion_fraction=0.0, lesion_label=0)
                if group == "test healthy":
                    central = 3 <= sl <= 6 and 64 <= col <= 128
                    row["anomaly_score"] = 10.0 if central else 1.0
                elif (sl, col) == (0, 0):
                    row.update(label=1, lesion_fraction=0.5, lesion_label=2, anomaly_score=20.0)
                elif (sl, col) == (9, 192):
                    row.update(label=1, lesion_fraction=0.01, lesion_label=1, anomaly_score=5.0)
                elif (sl, col) in ((0, 32), (9, 160)):
                    row["anomaly_score"] = 30.0
                else:
                    k += 1
                    row["anomaly_score"] = 1.0 + k / 100
                rows.append(row)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*COLUMNS, "anomaly_score"])
        writer.writeheader()
        writer.writerows(rows)


def test_error_analysis_counts_and_aucs(tmp_path, error_analysis):
    path = tmp_path / "patch_scores.csv"
    _write(path)
    out = error_analysis.analyse(path, "anomaly_score", 0.02)
    # 138 negatives: 58 healthy at 1, 12 healthy central at 10, 66 diseased below 2, two 30s
    assert (out["n_patches"], out["n_positive"]) == (140, 2)
    assert out["patch_auc"] == round((136 + 124) / 276, 4)
    assert out["larger"] == {"n": 1, "auc": round(136 / 138, 4)}
    assert out["sliver"] == {"max_fraction": 0.02, "n": 1, "auc": round(124 / 138, 4)}
    assert out["by_lesion"]["srf"] == {"n": 1, "auc": round(136 / 138, 4)}
    assert out["by_lesion"]["irf"] == {"n": 1, "auc": round(124 / 138, 4)}
    assert out["by_lesion"]["ped"] == {"n": 0, "auc": None}
    assert out["within_diseased_eyes"] == round(132 / 136, 4)
    assert out["against_healthy_eyes"] == round(128 / 140, 4)
    # the two 30s lie next to the positives; with the two highest of the rest they make
    # the diseased eyes' top 5 % (68 negatives)
    near = out["diseased_eye_negatives_next_to_a_lesion"]
    assert near == {"share": round(2 / 68, 4), "share_of_top5pct": 0.5}
    central = out["central"]
    assert central["share_of_healthy_eye_patches"] == round(12 / 70, 4)
    assert central["share_of_top5pct_healthy_eye_scores"] == 1.0
    assert central["median_score_central_vs_other"] == [10.0, 1.0]
    # without the 24 central negatives (12 per eye), only the two 30s beat the positives
    assert central["patch_auc_without_central_negatives"] == round(224 / 228, 4)


def test_error_analysis_refuses_a_missing_score_column(tmp_path, error_analysis):
    path = tmp_path / "patch_scores.csv"
    _write(path)
    with pytest.raises(SystemExit, match="no column 'acae'"):
        error_analysis.analyse(path, "acae", 0.02)

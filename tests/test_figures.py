import numpy as np
import pytest

from napari_anogan.errors import AnoganError
from napari_anogan.evaluation import figures as fg


@pytest.fixture
def panel_data():
    rng = np.random.default_rng(0)
    k, p = 6, 16
    queries = rng.uniform(-1, 1, (k, p, p))
    recon = np.clip(queries + rng.normal(0, 0.1, (k, p, p)), -1, 1)
    masks = [None, None, np.zeros((p, p)), np.zeros((p, p)), np.eye(p), np.eye(p)]
    groups = ["train healthy"] * 2 + ["test healthy"] * 2 + ["diseased"] * 2
    r = np.abs(queries - recon).reshape(k, -1).sum(1)
    d = rng.random(k)
    return queries, recon, r, d, masks, groups


def test_fig3_panel_writes_png(tmp_path, panel_data):
    queries, recon, r, d, masks, groups = panel_data
    path = tmp_path / "fig3.png"
    fg.fig3_panel(queries, recon, r, d, (np.median(r), 0.5), masks, groups, path)
    assert path.stat().st_size > 10_000
    no_mask = tmp_path / "fig3_nomask.png"
    fg.fig3_panel(queries[:, None], recon[:, None], r, d, (1.0, 1.0), None, groups, no_mask)
    assert no_mask.stat().st_size > 5_000
    assert not list(tmp_path.glob(".tmp-*"))


def test_fig3_panel_checks_lengths(tmp_path, panel_data):
    queries, recon, r, d, masks, groups = panel_data
    with pytest.raises(AnoganError, match="group label"):
        fg.fig3_panel(queries, recon, r, d, (1, 1), masks, groups[:-1], tmp_path / "x.png")
    with pytest.raises(AnoganError, match="score per patch"):
        fg.fig3_panel(queries, recon, r[:-1], d, (1, 1), masks, groups, tmp_path / "x.png")
    with pytest.raises(AnoganError, match="reconstructions"):
        fg.fig3_panel(queries, recon[:-1], r, d, (1, 1), masks, groups, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_fig3_blocks():
    assert fg._blocks(["a", "a", "b", "a"]) == [("a", 0, 2), ("b", 2, 3), ("a", 3, 4)]


@pytest.mark.slow
def test_fig2b_tsne(tmp_path):
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(0, 1, (20, 4, 2, 2)), rng.normal(3, 1, (10, 4, 2, 2))])
    labels = np.r_[np.zeros(20, bool), np.ones(10, bool)]
    path = tmp_path / "tsne.png"
    emb = fg.fig2b_tsne(feats, labels, path, seed=0, max_iter=250)
    assert emb.shape == (30, 2)
    assert path.stat().st_size > 5_000
    again = fg.tsne_embedding(feats, seed=0, max_iter=250)
    np.testing.assert_allclose(again, emb)


@pytest.mark.slow  # t-SNE
def test_tsne_small_and_errors():
    assert fg.tsne_embedding(np.arange(12.0).reshape(4, 3), max_iter=250).shape == (4, 2)
    with pytest.raises(AnoganError, match="at least 3"):
        fg.tsne_embedding(np.zeros((2, 5)))
    with pytest.raises(AnoganError, match="one label"):
        fg.fig2b_tsne(np.zeros((5, 3)), np.zeros(4, bool), "unused.png")

import numpy as np
import pytest
import torch

from napari_anogan.errors import InputError, ModelError
from napari_anogan.evaluation.acae import (
    ACAE,
    acae_from_state,
    acae_scores,
    acae_state,
    load_acae,
    save_acae,
    train_acae,
)
from napari_anogan.events import EventKind, drain
from napari_anogan.models import get_preset
from napari_anogan.models.encoder import Encoder

pytestmark = pytest.mark.slow

CONFIG = get_preset("tiny", patch_size=32, g_widths=(16, 8, 4), d_widths=(4, 8, 16), z_dim=8)


@pytest.fixture
def patches():
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, size=(12, 1, 32, 32)).astype(np.float32)


def test_shapes():
    model = ACAE(CONFIG)
    x = torch.zeros(3, 1, 32, 32)
    z = model.encoder(x)
    assert z.shape == (3, 8)
    assert torch.all(z.abs() <= 1)
    assert model(x).shape == (3, 1, 32, 32)
    assert model.discriminator.features(x).shape == (3, 16, 4, 4)
    assert Encoder(get_preset("tiny"))(torch.zeros(1, 1, 64, 64)).shape == (1, 16)


def _train(patches, seed=0):
    events = []
    model = drain(
        train_acae(patches, CONFIG, epochs=2, batch_size=5, lr=1e-3, seed=seed),
        events.append,
    )
    return model, events


def test_training_finite_and_deterministic(patches):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    model_a, events = _train(patches)
    assert torch.rand(1) == before  # global RNG untouched
    kinds = [e.kind for e in events]
    assert kinds[0] == EventKind.EPOCH_START
    assert kinds[-1] == EventKind.DONE
    # 12 patches, batch 5 -> batches of 5, 5, 2 per epoch (only a last batch of 1 is merged)
    assert kinds.count(EventKind.BATCH) == 2 * 3
    for event in events:
        if event.kind == EventKind.BATCH:
            assert all(np.isfinite(v) for v in event.losses.values())
    samples = [e for e in events if e.kind == EventKind.SAMPLES]
    assert samples[-1].samples.shape[0] == 64
    assert not model_a.training
    assert set(model_a.summary["final_losses"]) == {"d_loss", "ae_loss", "rec_loss", "adv_loss"}

    model_b, _ = _train(patches)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    model_c, _ = _train(patches, seed=1)
    assert not torch.equal(
        model_c.state_dict()["decoder.project.weight"], state_a["decoder.project.weight"]
    )


def test_batch_of_one_is_merged():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(5, 1, 32, 32)).astype(np.float32)
    events = []
    drain(train_acae(x, CONFIG, epochs=1, batch_size=4), events.append)
    assert sum(e.kind == EventKind.BATCH for e in events) == 1


def test_scores_formula_exact(patches):
    torch.manual_seed(0)
    model = ACAE(CONFIG).eval()
    lam = 0.3
    scores = acae_scores(model, patches, lam=lam, batch_size=5)
    x = torch.from_numpy(patches)
    with torch.no_grad():
        x_hat = model.decoder(model.encoder(x))
        r = (x - x_hat).abs().flatten(1).sum(1).double().numpy()
        fx = model.discriminator.features(x)
        fxh = model.discriminator.features(x_hat)
        d = (fx - fxh).abs().flatten(1).sum(1).double().numpy()
        p = torch.sigmoid(model.discriminator(x)).double().numpy()
    np.testing.assert_allclose(scores["residual_score"], r, rtol=1e-5)
    np.testing.assert_allclose(scores["discrimination_score"], d, rtol=1e-5)
    np.testing.assert_allclose(scores["discriminator_output"], p, rtol=1e-5)
    np.testing.assert_allclose(
        scores["anomaly_score"],
        (1 - lam) * scores["residual_score"] + lam * scores["discrimination_score"],
        rtol=1e-12,
    )
    np.testing.assert_allclose(scores["reconstruction"], x_hat.numpy(), atol=1e-6)
    np.testing.assert_allclose(
        scores["residual_image"].reshape(12, -1).sum(1), scores["residual_score"], rtol=1e-5
    )
    assert scores["z"].shape == (12, 8)
    model.train()
    acae_scores(model, patches, keep_images=False)
    assert model.training  # mode restored


def test_bad_inputs(patches):
    with pytest.raises(InputError, match="shape"):
        drain(train_acae(patches[:, :, :16, :16], CONFIG, epochs=1))
    bad = patches.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        acae_scores(ACAE(CONFIG), bad)
    with pytest.raises(InputError, match="rec_loss"):
        drain(train_acae(patches, CONFIG, epochs=1, rec_loss="huber"))


def test_save_load_roundtrip(tmp_path, patches):
    torch.manual_seed(0)
    model = ACAE(CONFIG).eval()
    model.summary = {"epochs": 3, "final_losses": {"rec_loss": 0.5}}
    path = tmp_path / "acae.pt"
    save_acae(model, path)
    raw = torch.load(path, weights_only=True)
    assert raw["config"] == CONFIG.to_dict()
    loaded = load_acae(path)
    assert loaded.config == CONFIG
    assert loaded.summary == model.summary
    a = acae_scores(model, patches)["anomaly_score"]
    b = acae_scores(loaded, patches)["anomaly_score"]
    np.testing.assert_array_equal(a, b)


def test_load_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_acae(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read"):
        load_acae(junk)
    with pytest.raises(ModelError, match="format tag"):
        acae_from_state({"hello": 1})
    state = acae_state(ACAE(CONFIG))
    state["config"] = get_preset("tiny").to_dict()
    with pytest.raises(ModelError, match="do not match"):
        acae_from_state(state)

import copy

import numpy as np
import pytest
import torch

from napari_anogan.device import resolve_device
from napari_anogan.errors import AnoganError, InputError
from napari_anogan.events import EventKind, drain
from napari_anogan.mapping import MappingConfig, map_to_latent
from napari_anogan.models import Discriminator, Generator, get_preset, sample_prior

CFG = get_preset("tiny", patch_size=32)


@pytest.fixture(scope="module")
def models():
    """Tiny G and D whose batch-norm running statistics have been warmed up.

    With fresh running stats (mean 0, var 1) DCGAN-initialised G outputs almost nothing;
    after a few training-mode passes, eval-mode outputs vary visibly with z.
    """
    torch.manual_seed(0)
    g, d = Generator(CFG), Discriminator(CFG)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(40):
            g(sample_prior(32, CFG, gen))
            d(torch.rand(32, 1, 32, 32, generator=gen) * 2 - 1)
    return g.eval(), d.eval()


@pytest.fixture(scope="module")
def targets(models):
    g, _ = models
    z_true = sample_prior(5, CFG, torch.Generator().manual_seed(5))
    with torch.no_grad():
        x = g(z_true).numpy()
    return z_true.numpy(), x


def run(models, x, z_init=None, **kw):
    g, d = models
    kw.setdefault("device", "cpu")
    return drain(map_to_latent(g, d, x, MappingConfig(**kw), z_init=z_init))


def test_only_z_changes(models, targets):
    g, d = models
    g.train()  # mapping must switch to eval itself and restore this afterwards
    d.requires_grad_(True)
    before = [copy.deepcopy(m.state_dict()) for m in (g, d)]
    _, x = targets
    run(models, x, steps=5)
    for m, state in zip((g, d), before, strict=True):
        after = m.state_dict()
        assert set(after) == set(state)
        for k, v in state.items():  # weights and BN running_mean/var/num_batches_tracked
            assert torch.equal(after[k], v), k
        assert all(p.grad is None for p in m.parameters())
    assert g.training
    assert not d.training
    assert all(p.requires_grad for p in d.parameters())
    g.eval()


def test_mapping_reconstructs_generated_patch(models, targets):
    _z_true, x = targets
    start = run(models, x, steps=0)
    mapped = run(models, x, steps=60)
    assert np.all(mapped.residual_score < 0.2 * start.residual_score)
    assert mapped.anomaly_score.mean() < start.anomaly_score.mean()
    # Far-from-generated input is reconstructed worse than G's own samples.
    noise = np.random.default_rng(0).uniform(-1, 1, x.shape).astype(np.float32)
    assert run(models, noise, steps=60).residual_score.min() > mapped.residual_score.max()


def test_loss_decreases_in_events(models, targets):
    _, x = targets
    g, d = models
    events = []
    drain(
        map_to_latent(g, d, x, MappingConfig(steps=40, report_every=10, device="cpu")),
        events.append,
    )
    losses = [e.losses["loss"] for e in events if e.kind is EventKind.MAPPING_STEP and e.losses]
    assert len(losses) == 4
    assert losses[-1] < losses[0]


def test_z_stays_in_prior_box(models, targets):
    _, x = targets
    res = run(models, x * 3.0, steps=20, lr=1.0)  # big steps push z against the box
    assert res.z.min() >= -1.0
    assert res.z.max() <= 1.0
    assert np.isclose(np.abs(res.z), 1.0).any()


def test_scores_formula_exact(models, targets):
    _, x = targets
    lam = 0.3
    res = run(models, x, steps=3, lam=lam)
    np.testing.assert_array_equal(
        res.anomaly_score, (1 - lam) * res.residual_score + lam * res.discrimination_score
    )
    np.testing.assert_array_equal(
        res.reference_anomaly_score,
        (1 - lam) * res.residual_score + lam * res.reference_discrimination_score,
    )
    np.testing.assert_allclose(res.residual_image, np.abs(x - res.reconstruction), atol=1e-6)
    assert res.residual is res.residual_image
    np.testing.assert_allclose(
        res.residual_score, res.residual_image.reshape(len(x), -1).sum(1), rtol=1e-5
    )
    # Scores are those of the returned z: recompute with G and D.
    g, d = models
    with torch.no_grad():
        xt = torch.from_numpy(x)
        gz = g(torch.from_numpy(res.z))
        lg, fg = d.forward_with_features(gz)
        lx, fx = d.forward_with_features(xt)
    np.testing.assert_allclose(res.reconstruction, gz.numpy(), atol=1e-6)
    np.testing.assert_allclose(
        res.discrimination_score, (fx - fg).abs().flatten(1).sum(1).numpy(), rtol=1e-5
    )
    np.testing.assert_allclose(
        res.reference_discrimination_score,
        torch.nn.functional.softplus(-lg).numpy(),
        rtol=1e-5,
    )
    np.testing.assert_allclose(res.discriminator_output, torch.sigmoid(lx).numpy(), rtol=1e-6)


def test_batch_size_does_not_change_results(models, targets):
    _, x = targets
    a = run(models, x, steps=10, batch_size=5)
    b = run(models, x, steps=10, batch_size=2)
    np.testing.assert_allclose(a.z, b.z, atol=1e-5)
    np.testing.assert_allclose(a.anomaly_score, b.anomaly_score, rtol=1e-4)


def test_seeded_start_and_events(models, targets):
    _, x = targets
    g, d = models
    a, b = run(models, x, steps=0, seed=7), run(models, x, steps=0, seed=7)
    np.testing.assert_array_equal(a.z, b.z)
    assert a.z.min() >= -1
    assert a.z.max() <= 1
    events = []
    drain(map_to_latent(g, d, x, MappingConfig(steps=3, batch_size=2, device="cpu")), events.append)
    kinds = [e.kind for e in events]
    assert kinds.count(EventKind.MAPPING_STEP) == 9  # 3 batches x 3 steps
    batches = [e for e in events if e.kind is EventKind.MAPPING_BATCH]
    assert [e.step for e in batches] == [2, 4, 5]
    assert all(e.total == 5 for e in batches)


def test_z_init_and_reference_mode(models, targets):
    z_true, x = targets
    res = run(models, x, steps=0, z_init=z_true)
    np.testing.assert_array_equal(res.z, z_true)
    assert res.residual_score.max() < 1e-3
    ref = run(models, x, steps=3, discrimination="reference", keep_images=False)
    assert ref.reconstruction is None
    assert ref.residual_image is None
    assert np.isfinite(ref.reference_anomaly_score).all()


def test_mapping_input_errors(models):
    with pytest.raises(InputError, match="shape"):
        run(models, np.zeros((2, 1, 16, 16), np.float32), steps=1)
    with pytest.raises(InputError, match="NaN"):
        run(models, np.full((1, 1, 32, 32), np.nan, np.float32), steps=1)
    with pytest.raises(AnoganError, match="not available"):
        run(models, np.zeros((1, 1, 32, 32), np.float32), mode="encoder")
    with pytest.raises(AnoganError, match="lam"):
        MappingConfig(lam=2.0)
    empty = run(models, np.zeros((0, 1, 32, 32), np.float32), steps=2)
    assert len(empty) == 0
    assert empty.anomaly_score.shape == (0,)


def test_config_round_trip():
    cfg = MappingConfig(steps=10, lam=0.2, discrimination="reference")
    assert MappingConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(AnoganError, match="unknown"):
        MappingConfig.from_dict({"gamma": 3})


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(AnoganError, match="unknown device"):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(AnoganError, match="CUDA is not available"):
            resolve_device("cuda:1")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mapping_on_cuda_matches_cpu(models, targets):
    _, x = targets
    cpu = run(models, x, steps=10)
    gpu = run(models, x, steps=10, device="cuda")
    np.testing.assert_allclose(cpu.z, gpu.z, atol=1e-3)
    assert next(models[0].parameters()).device.type == "cpu"

import copy

import numpy as np
import pytest
import torch

from napari_anogan.device import resolve_device
from napari_anogan.errors import AnoganError, InputError
from napari_anogan.events import EventKind, drain
from napari_anogan.mapping import MappingConfig, map_to_latent
from napari_anogan.models import Discriminator, Generator, get_preset, sample_prior
from napari_anogan.models.encoder import Encoder
from napari_anogan.models.folding import _SubPixelConvTranspose, fold_batch_norm

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


@pytest.fixture(scope="module")
def encoder(models):
    """A tiny encoder with warmed-up batch norm (untrained: any E works for these tests)."""
    torch.manual_seed(2)
    e = Encoder(CFG)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _ in range(10):
            e(torch.rand(32, 1, 32, 32, generator=gen) * 2 - 1)
    return e.eval()


def run(models, x, z_init=None, encoder=None, **kw):
    g, d = models
    kw.setdefault("device", "cpu")
    kw.setdefault("amp", False)  # float32 search: exact comparisons (AMX CPUs default to bf16)
    return drain(map_to_latent(g, d, x, MappingConfig(**kw), z_init=z_init, encoder=encoder))


def loss_of(res):
    return (1 - res.lam) * res.residual_score + res.lam * res.discrimination_score


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


@pytest.mark.slow
def test_mapping_reconstructs_generated_patch(models, targets):
    _z_true, x = targets
    start = run(models, x, steps=0)
    mapped = run(models, x, steps=60)
    assert np.all(mapped.residual_score < 0.2 * start.residual_score)
    assert mapped.anomaly_score.mean() < start.anomaly_score.mean()
    # Far-from-generated input is reconstructed worse than G's own samples.
    noise = np.random.default_rng(0).uniform(-1, 1, x.shape).astype(np.float32)
    assert run(models, noise, steps=60).residual_score.min() > mapped.residual_score.max()


@pytest.mark.slow
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
    np.testing.assert_allclose(res.reconstruction, gz.numpy(), atol=1e-5)
    np.testing.assert_allclose(
        res.discrimination_score, (fx - fg).abs().flatten(1).sum(1).numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        res.reference_discrimination_score,
        torch.nn.functional.softplus(-lg).numpy(),
        rtol=1e-5,
    )
    np.testing.assert_allclose(res.discriminator_output, torch.sigmoid(lx).numpy(), rtol=1e-5)


@pytest.mark.slow  # long searches
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
    assert not np.array_equal(run(models, x, steps=0, seed=8).z, a.z)
    # Each patch's start depends on the seed only, not on how patches are batched.
    np.testing.assert_array_equal(run(models, x, steps=0, seed=7, batch_size=2).z, a.z)
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
    with pytest.raises(AnoganError, match="needs a trained encoder"):
        run(models, np.zeros((1, 1, 32, 32), np.float32), mode="encoder")
    with pytest.raises(AnoganError, match="mode"):
        MappingConfig(mode="magic")
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
def test_mapping_on_cuda_matches_cpu(models, targets, encoder):
    _, x = targets
    cpu = run(models, x, steps=10)
    gpu = run(models, x, steps=10, device="cuda")  # float32 (TF32 convs may round a bit)
    np.testing.assert_allclose(cpu.z, gpu.z, atol=1e-2)
    assert next(models[0].parameters()).device.type == "cpu"
    # The CUDA default: mixed precision in the search, float32 scores at the final z.
    for mode in ("iterative", "hybrid"):
        ref = run(models, x, encoder=encoder, mode=mode, steps=20)
        amp = run(models, x, encoder=encoder, mode=mode, steps=20, device="cuda", amp=None)
        lam = amp.lam
        np.testing.assert_array_equal(
            amp.anomaly_score, (1 - lam) * amp.residual_score + lam * amp.discrimination_score
        )
        np.testing.assert_allclose(loss_of(amp), loss_of(ref), rtol=0.1, atol=1.0)
    assert next(encoder.parameters()).device.type == "cpu"


def naive_per_patch_map(g, d, x, z0, steps, lr, lam):
    """How public re-implementations map: one patch at a time, torch.optim.Adam."""
    out = []
    g.requires_grad_(False)
    d.requires_grad_(False)
    for i in range(len(x)):
        xi = torch.from_numpy(x[i : i + 1])
        with torch.no_grad():
            fx = d.features(xi)
        z = z0[i : i + 1].clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            gz = g(z)
            loss = (1 - lam) * (xi - gz).abs().sum() + lam * (fx - d.features(gz)).abs().sum()
            loss.backward()
            opt.step()
            with torch.no_grad():
                z.clamp_(-1, 1)
        out.append(z.detach())
    g.requires_grad_(True)
    d.requires_grad_(True)
    return torch.cat(out).numpy()


@pytest.mark.slow  # 500-step per-patch reference loop
def test_batched_search_equals_per_patch_adam(models, targets):
    """The pool's element-wise Adam (on BN-folded copies) follows torch.optim.Adam per patch."""
    _, x = targets
    g, d = models
    res = run(models, x, steps=8, early_stop=False, keep_best=False, batch_size=3)
    z0 = torch.rand(len(x), CFG.z_dim, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = naive_per_patch_map(g, d, x, z0, steps=8, lr=0.05, lam=0.1)
    np.testing.assert_allclose(res.z, ref, atol=1e-4)
    assert (res.steps_taken == 8).all()


def test_fold_batch_norm_same_function(models):
    g, d = models
    gf, df = fold_batch_norm(g), fold_batch_norm(d)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in [*gf.modules(), *df.modules()])
    assert all(not p.requires_grad for p in [*gf.parameters(), *df.parameters()])
    z = sample_prior(6, CFG, torch.Generator().manual_seed(9))
    with torch.no_grad():
        torch.testing.assert_close(gf(z), g(z), atol=1e-5, rtol=1e-4)
        x = g(z)
        torch.testing.assert_close(df.features(x), d.features(x), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(df(x), d(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("c_in", "bias", "size", "dtype"),
    [(16, True, 8, torch.float32), (3, False, 5, torch.float32), (3, False, 5, torch.float64)],
)
def test_sub_pixel_rewrite_is_the_same_transposed_convolution(c_in, bias, size, dtype):
    torch.manual_seed(c_in)
    conv = torch.nn.ConvTranspose2d(
        c_in, 1, 5, stride=2, padding=2, output_padding=1, bias=bias, dtype=dtype
    )
    fast = _SubPixelConvTranspose(conv)
    assert {p.dtype for p in fast.parameters()} == {dtype}
    x = torch.randn(4, c_in, size, size, dtype=dtype, requires_grad=True)
    y, y_fast = conv(x), fast(x)
    assert y_fast.shape == y.shape == (4, 1, 2 * size, 2 * size)
    torch.testing.assert_close(y_fast, y, atol=1e-5, rtol=1e-5)
    # The input gradient (what the search back-propagates to z) matches too.
    (g,) = torch.autograd.grad((y * y).sum(), x)
    (g_fast,) = torch.autograd.grad((y_fast * y_fast).sum(), x)
    torch.testing.assert_close(g_fast, g, atol=1e-4, rtol=1e-4)


def test_sub_pixel_rewrite_only_where_it_pays(models):
    g, _ = models
    gf = fold_batch_norm(g)
    kinds = [
        type(m) for m in gf.net if isinstance(m, (torch.nn.ConvTranspose2d, _SubPixelConvTranspose))
    ]
    # Every layer with more than one output channel stays a transposed convolution.
    assert kinds[-1] is _SubPixelConvTranspose
    assert all(k is torch.nn.ConvTranspose2d for k in kinds[:-1])
    assert len(kinds) >= 2
    assert not _SubPixelConvTranspose.applies(
        torch.nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1)
    )


@pytest.mark.parametrize("mode", ["iterative", "encoder", "hybrid"])
def test_each_mode_scores_exactly_at_its_z(models, targets, encoder, mode):
    _, x = targets
    g, d = models
    lam = 0.3
    res = run(models, x, encoder=encoder, mode=mode, steps=4, hybrid_steps=3, lam=lam)
    assert res.config.mode == mode
    np.testing.assert_array_equal(
        res.anomaly_score, (1 - lam) * res.residual_score + lam * res.discrimination_score
    )
    with torch.no_grad():
        gz = g(torch.from_numpy(res.z))
        fx, fg = d.features(torch.from_numpy(x)), d.features(gz)
    np.testing.assert_allclose(res.reconstruction, gz.numpy(), atol=1e-5)
    np.testing.assert_allclose(
        res.residual_score, (torch.from_numpy(x) - gz).abs().flatten(1).sum(1), rtol=1e-5
    )
    np.testing.assert_allclose(
        res.discrimination_score, (fx - fg).abs().flatten(1).sum(1), rtol=1e-5, atol=1e-5
    )
    assert np.abs(res.z).max() <= 1.0
    expected_steps = {"iterative": 4, "hybrid": 3, "encoder": 0}[mode]
    assert res.steps_taken.max() == expected_steps


def test_encoder_mode_is_e_of_x_and_hybrid_zero_steps_equals_it(models, targets, encoder):
    _, x = targets
    enc = run(models, x, encoder=encoder, mode="encoder")
    with torch.no_grad():
        np.testing.assert_allclose(enc.z, encoder(torch.from_numpy(x)).numpy(), atol=1e-6)
    hyb0 = run(models, x, encoder=encoder, mode="hybrid", hybrid_steps=0)
    np.testing.assert_array_equal(hyb0.z, enc.z)
    np.testing.assert_array_equal(hyb0.anomaly_score, enc.anomaly_score)
    # keep_best: refining from E(x) never ends at a higher loss than E(x) itself.
    hyb = run(models, x, encoder=encoder, mode="hybrid", hybrid_steps=15)
    assert np.all(loss_of(hyb) <= loss_of(enc))
    assert loss_of(hyb).mean() < loss_of(enc).mean()


def test_no_grad_reaches_any_parameter(models, targets, encoder):
    g, d = models
    _, x = targets
    nets = (g, d, encoder)
    before = [copy.deepcopy(m.state_dict()) for m in nets]
    encoder.requires_grad_(True)
    for mode in ("iterative", "encoder", "hybrid"):
        run(models, x, encoder=encoder, mode=mode, steps=3, hybrid_steps=3)
    for m, state in zip(nets, before, strict=True):
        assert all(p.grad is None for p in m.parameters())
        for k, v in state.items():
            assert torch.equal(m.state_dict()[k], v), k
    assert all(p.requires_grad for p in encoder.parameters())  # restored
    assert not encoder.training
    encoder.requires_grad_(False)


@pytest.mark.slow  # long searches
def test_early_stopping_freezes_converged_patches(models, targets):
    """Early stopping takes fewer steps and lands where the full search lands."""
    _, x = targets
    noise = np.random.default_rng(1).uniform(-0.3, 0.3, x.shape)
    x = np.clip(x + noise, -1, 1).astype(np.float32)  # near, not on, G's manifold
    full = run(models, x, steps=100, early_stop=False)
    early = run(models, x, steps=100, early_stop=True, tolerance=1e-3, patience=10)
    assert (full.steps_taken == 100).all()
    assert early.steps_taken.sum() < 0.6 * full.steps_taken.sum()
    np.testing.assert_allclose(loss_of(early), loss_of(full), rtol=0.01)


@pytest.mark.slow  # long searches
def test_early_stopping_does_not_depend_on_batching(models, targets):
    _, x = targets
    kw = {"steps": 60, "early_stop": True, "tolerance": 1e-2, "patience": 3}
    a = run(models, x, batch_size=5, **kw)
    b = run(models, x, batch_size=2, **kw)  # patches enter the pool as others freeze
    np.testing.assert_array_equal(a.steps_taken, b.steps_taken)
    # Convolutions over pools of other sizes round differently in float32; 60 Adam steps
    # carry that to ~2e-5 in z (measured), far below any step of the search.
    np.testing.assert_allclose(a.z, b.z, atol=1e-4)


def test_hybrid_without_encoder_falls_back_to_iterative(models, targets, caplog):
    _, x = targets
    with caplog.at_level("WARNING", logger="napari_anogan.mapping"):
        res = run(models, x, mode="hybrid", steps=2)
    assert res.config.mode == "iterative"
    assert "falling back" in caplog.text
    np.testing.assert_array_equal(res.z, run(models, x, steps=2).z)
    with pytest.raises(InputError, match="z_init"):
        run(models, x, encoder=None, mode="iterative", steps=1, z_init=np.zeros((4, 16)))


@pytest.mark.slow
def test_mixed_precision_search_on_cpu(models, targets, encoder):
    """bf16 autocast only changes the search; scores stay exact float32 at the final z."""
    _, x = targets
    g, _ = models
    for mode in ("iterative", "hybrid"):
        fp32 = run(models, x, encoder=encoder, mode=mode, steps=30, hybrid_steps=10)
        bf16 = run(models, x, encoder=encoder, mode=mode, steps=30, hybrid_steps=10, amp=True)
        lam = bf16.lam
        np.testing.assert_array_equal(
            bf16.anomaly_score, (1 - lam) * bf16.residual_score + lam * bf16.discrimination_score
        )
        with torch.no_grad():
            gz = g(torch.from_numpy(bf16.z))
        np.testing.assert_allclose(bf16.reconstruction, gz.numpy(), atol=1e-5)
        assert not np.array_equal(bf16.z, fp32.z)  # the search did run in bf16
        # ... and found fits about as good: mean loss within 20 % of the float32 search's.
        assert loss_of(bf16).mean() == pytest.approx(loss_of(fp32).mean(), rel=0.2)


def test_reference_mode_minimises_the_reference_discrimination_loss(models, targets):
    """With lam = 1 each mode minimises only its discrimination loss: from the same start,
    the reference mode (GAN_R) ends with the lower D^ and the feature mode with the lower D,
    so the option really changes the objective."""
    _, x = targets
    common = {"steps": 20, "lam": 1.0, "early_stop": False, "keep_images": False}
    feature = run(models, x, discrimination="feature", **common)
    reference = run(models, x, discrimination="reference", **common)
    start = run(models, x, steps=0, keep_images=False)
    # This untrained D gives D^ ~ 0.742 almost everywhere: the margins measured 6e-5 to
    # 1e-4 per patch, 1,000x float32 rounding; with the option ignored they would be 0.
    d_ref = reference.reference_discrimination_score
    assert (feature.reference_discrimination_score - d_ref).min() > 1e-5
    assert (start.reference_discrimination_score - d_ref).min() > 1e-5
    assert feature.discrimination_score.mean() < reference.discrimination_score.mean()

import copy
import shutil

import numpy as np
import pytest
import torch

from napari_anogan.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from napari_anogan.cli import main
from napari_anogan.errors import AnoganError, ModelError
from napari_anogan.events import EventKind, drain
from napari_anogan.io import read_volume
from napari_anogan.mapping import MappingConfig, map_to_latent
from napari_anogan.models import Discriminator, Generator, get_preset, sample_prior
from napari_anogan.models.encoder import Encoder, encode, encoder_loss
from napari_anogan.pipeline import ScoreSettings, mapping_config, score_volume
from napari_anogan.training import EncoderConfig, TrainConfig, add_encoder, train_encoder, train_gan

pytestmark = pytest.mark.slow

CFG = get_preset("tiny", patch_size=32)


@pytest.fixture(scope="module")
def gan():
    """Tiny G and D with warmed-up batch-norm statistics."""
    torch.manual_seed(0)
    g, d = Generator(CFG), Discriminator(CFG)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(20):
            g(sample_prior(32, CFG, gen))
            d(torch.rand(32, 1, 32, 32, generator=gen) * 2 - 1)
    return g.eval(), d.eval()


@pytest.fixture(scope="module")
def patches():
    """40 smooth random patches in [-1, 1] (horizontal bands, like a flattened retina)."""
    rng = np.random.default_rng(0)
    rows = np.linspace(0, np.pi, 32)
    freq = rng.uniform(1, 4, (40, 1, 1, 1))
    phase = rng.uniform(0, np.pi, (40, 1, 1, 1))
    bands = np.sin(freq * rows[None, None, :, None] + phase) * np.ones((1, 1, 1, 32))
    return np.clip(bands + rng.normal(0, 0.05, bands.shape), -1, 1).astype(np.float32)


def ecfg(**kw):
    return EncoderConfig(**{"epochs": 1, "batch_size": 8, "device": "cpu", **kw})


def test_encoder_shapes_and_output_range():
    e = Encoder(get_preset("tiny")).eval()
    x = torch.randn(3, 1, 64, 64) * 100.0  # far outside [-1, 1]: tanh still bounds z
    with torch.no_grad():
        z = e(x)
    assert z.shape == (3, 16)
    assert z.abs().max() <= 1.0
    batched = encode(e, x.numpy(), batch_size=2)
    assert batched.dtype == np.float32
    np.testing.assert_allclose(batched, z.numpy(), atol=1e-6)
    assert not e.training


@pytest.mark.parametrize("amp", [False, True])
def test_training_reduces_the_loss_and_leaves_g_and_d_alone(gan, patches, amp):
    g, d = gan
    g.requires_grad_(True)
    before = [copy.deepcopy(m.state_dict()) for m in (g, d)]
    x = torch.from_numpy(patches)
    events = []
    res = drain(train_encoder(patches, g, d, ecfg(epochs=8, lr=3e-3, amp=amp)), events.append)
    torch.manual_seed(7)
    untrained_e = Encoder(CFG).eval()
    with torch.no_grad():
        trained = encoder_loss(x, g, d, res.encoder)[0].item()
        untrained = encoder_loss(x, g, d, untrained_e)[0].item()
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert trained < untrained
    assert len(res.history) == 8
    assert {e.kind for e in events} >= {EventKind.BATCH, EventKind.EPOCH_END, EventKind.SAMPLES}
    for m, state in zip((g, d), before, strict=True):
        assert all(p.grad is None for p in m.parameters())
        for k, v in state.items():
            assert torch.equal(m.state_dict()[k], v), k
    assert all(p.requires_grad for p in g.parameters())  # restored
    assert all(p.is_contiguous() for m in (g, d) for p in m.parameters())  # layout too
    g.requires_grad_(False)
    again = drain(train_encoder(patches, g, d, ecfg(epochs=8, lr=3e-3, amp=amp)))
    for k, v in res.encoder.state_dict().items():  # seeded: same weights
        assert torch.equal(again.encoder.state_dict()[k], v), k
    other = drain(train_encoder(patches, g, d, ecfg(epochs=8, lr=3e-3, amp=not amp)))
    # bf16 autocast really ran in one of the two: the weights differ, slightly
    w, w_other = res.encoder.state_dict(), other.encoder.state_dict()
    assert any(not torch.equal(w[k], w_other[k]) for k in w)
    assert all(w[k].dtype == w_other[k].dtype for k in w)


def test_checkpoint_round_trip_with_encoder(tmp_path, patches):
    path = tmp_path / "model.pt"
    tcfg = TrainConfig(
        epochs=1,
        batch_size=8,
        device="cpu",
        holdout_fraction=0.2,
        reference_steps=2,
        reference_batch_size=4,
    )
    drain(train_gan(patches, CFG, tcfg, path, build_reference=False))
    assert not read_checkpoint(path)["reference"]
    result = drain(add_encoder(path, patches, ecfg()))

    raw = torch.load(path, weights_only=True)  # plain tensors and strings only
    assert set(raw["encoder"]) == set(result.encoder.state_dict())
    loaded = load_checkpoint(path)
    assert isinstance(loaded.encoder, Encoder)
    assert not loaded.encoder.training
    for k, v in result.encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[k].cpu(), v.cpu()), k
    # The reference was built with the scoring default for a model with an encoder.
    assert loaded.reference["settings"]["mode"] == "hybrid"
    assert loaded.reference["n_patches"] == 8
    assert loaded.training["encoder"]["n_train"] == 32
    res = drain(
        map_to_latent(
            loaded.generator,
            loaded.discriminator,
            patches[:3],
            MappingConfig(mode="encoder", device="cpu"),
            encoder=loaded.encoder,
        )
    )
    assert res.config.mode == "encoder"

    # "Resuming" a finished model keeps its encoder; a release copy (no optimiser
    # states) can still get one; other patches are refused.
    drain(train_gan(patches, CFG, tcfg, path, resume=True, build_reference=False))
    assert load_checkpoint(path).encoder is not None
    data = read_checkpoint(path)
    data.pop("optimizers")
    save_checkpoint(path, data)
    drain(add_encoder(path, patches, ecfg()))
    assert load_checkpoint(path).encoder is not None
    with pytest.raises(ModelError, match="trained on 40 patches"):
        drain(add_encoder(path, patches[:10], ecfg()))
    with pytest.raises(AnoganError, match="encoder config"):
        EncoderConfig(batch_size=1)


@pytest.mark.parametrize("mode", ["hybrid", "iterative"])
def test_reference_mapping_matches_the_scoring_defaults(mode):
    """The healthy percentile compares like with like: same mode and search settings."""
    score = mapping_config(ScoreSettings(mode=mode)).to_dict()
    ref = TrainConfig().reference_mapping(mode=mode).to_dict()
    for key in ("batch_size", "device", "keep_images", "seed"):
        score.pop(key)
        ref.pop(key)
    assert ref == score
    assert ScoreSettings().mode == "hybrid"


def test_cli_adds_an_encoder_and_scoring_uses_it(synthetic_dir, tiny_model_path, tmp_path):
    model = tmp_path / "with_encoder.pt"
    shutil.copy(tiny_model_path, model)
    inputs = [str(p) for p in sorted(synthetic_dir.glob("healthy_*.ome.tif"))]
    code = main(
        [
            "-q",
            "train",
            *inputs,
            "-o",
            str(model),
            "--preset",
            "tiny",
            "--epochs",
            "10",
            "--patches-per-scan",
            "16",
            "--batch-size",
            "8",
            "--resume",
            "--encoder",
            "--encoder-epochs",
            "1",
        ]
    )
    assert code == 0
    loaded = load_checkpoint(model)
    assert loaded.encoder is not None
    assert loaded.reference["settings"]["mode"] == "hybrid"
    volume = read_volume(synthetic_dir / "diseased.ome.tif")
    settings = ScoreSettings(batch_size=64)
    mapped = drain(score_volume(volume, loaded, settings, keep_patches=True)).mapped.mapping
    assert mapped.config.mode == "hybrid"
    # Hybrid, not the encoder alone: every patch took at least the early-stopping
    # patience (3 steps for K = 10) and at most K steps after the encoder start.
    assert mapped.steps_taken.min() >= 3
    assert mapped.steps_taken.max() <= ScoreSettings().hybrid_steps

import numpy as np
import pytest
import torch

from napari_anogan.checkpoint import load_checkpoint, read_checkpoint
from napari_anogan.errors import AnoganError, InputError, ModelError
from napari_anogan.events import EventKind, ProgressEvent, drain
from napari_anogan.mapping import map_to_latent
from napari_anogan.models import get_preset
from napari_anogan.scoring import QUANTILE_LEVELS, percentile_of, score_quantiles
from napari_anogan.training import TrainConfig, holdout_split, train_gan, training_amp

pytestmark = pytest.mark.slow

CFG = get_preset("tiny", patch_size=32)


@pytest.fixture(scope="module")
def patches():
    """40 smooth random patches in [-1, 1] (horizontal bands, like a flattened retina)."""
    rng = np.random.default_rng(0)
    rows = np.linspace(0, np.pi, 32)
    freq = rng.uniform(1, 4, (40, 1, 1, 1))
    phase = rng.uniform(0, np.pi, (40, 1, 1, 1))
    bands = np.sin(freq * rows[None, None, :, None] + phase) * np.ones((1, 1, 1, 32))
    noise = rng.normal(0, 0.05, bands.shape)
    return np.clip(bands + noise, -1, 1).astype(np.float32)


def tcfg(**kw):
    base = {
        "epochs": 1,
        "batch_size": 8,
        "device": "cpu",
        "sample_every": 2,
        "n_samples": 4,
        "holdout_fraction": 0.1,
        "reference_steps": 3,
        "reference_batch_size": 3,
    }
    return TrainConfig(**{**base, **kw})


def states_equal(m1, m2):
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_short_run_checkpoint_and_events(tmp_path, patches):
    events: list[ProgressEvent] = []
    path = tmp_path / "model.pt"
    extra = {"preprocess_config": {"patch_size": 32}, "data_fingerprint": "f00", "n_files": 3}
    result = drain(train_gan(patches, CFG, tcfg(), path, extra=extra), events.append)

    assert result.epochs == 1
    assert set(result.final_losses) == {"d_loss", "g_loss", "d_real", "d_fake"}
    assert all(np.isfinite(v) for v in result.final_losses.values())
    kinds = [e.kind for e in events]
    # 36 training patches, batch 8 -> 4 full batches.
    assert kinds.count(EventKind.BATCH) == 4
    for kind in (EventKind.EPOCH_START, EventKind.EPOCH_END, EventKind.CHECKPOINT):
        assert kind in kinds
    assert kinds[-1] is EventKind.DONE
    assert EventKind.REFERENCE in kinds
    assert EventKind.MAPPING_STEP in kinds
    batch = next(e for e in events if e.kind is EventKind.BATCH)
    assert 0 <= batch.losses["d_real"] <= 1
    assert 0 <= batch.losses["d_fake"] <= 1
    samples = [e.samples for e in events if e.kind is EventKind.SAMPLES]
    assert len(samples) == 3  # after batches 2 and 4, and at the epoch end
    assert samples[0].shape == (64, 64)
    assert samples[0].dtype == np.float32

    model = load_checkpoint(path)
    assert model.preprocess_config == {"patch_size": 32}
    assert model.training["data_fingerprint"] == "f00"
    assert model.training["extra"] == {"data_fingerprint": "f00", "n_files": 3}
    assert model.training["epochs_done"] == 1
    assert model.training["n_holdout"] == 4
    ref = model.reference
    assert ref["n_patches"] == 4
    assert ref["settings"]["steps"] == 3
    np.testing.assert_array_equal(ref["levels"], QUANTILE_LEVELS)
    for name in ("anomaly_score", "residual_score", "discrimination_score"):
        q = ref[name]
        assert q.shape == (101,)
        assert np.all(np.diff(q) >= 0)
        np.testing.assert_array_equal(q, result.reference[name])
    assert float(percentile_of(ref["anomaly_score"][-1] + 1, ref["anomaly_score"])) == 100.0
    assert states_equal(model.generator, result.generator)
    # The reference is the held-out patches (not training ones) mapped with the reference
    # settings by the trained G and D: recomputed here, it is the same to float precision.
    _, hold_idx = holdout_split(len(patches), 0.1, 0)
    again = drain(
        map_to_latent(
            result.generator,
            result.discriminator,
            patches[np.sort(hold_idx)],
            tcfg().reference_mapping(),
        )
    )
    expected = score_quantiles(again.scores(), QUANTILE_LEVELS)
    for name in ("anomaly_score", "residual_score", "discrimination_score"):
        np.testing.assert_allclose(ref[name], expected[name], rtol=1e-6)


@pytest.mark.parametrize("amp", [False, True])
def test_same_seed_same_weights_other_seed_differs(patches, amp):
    a = drain(train_gan(patches, CFG, tcfg(reference_steps=0, amp=amp)))
    b = drain(train_gan(patches, CFG, tcfg(reference_steps=0, amp=amp)))
    c = drain(train_gan(patches, CFG, tcfg(reference_steps=0, seed=1, amp=amp)))
    assert states_equal(a.generator, b.generator)
    assert states_equal(a.discriminator, b.discriminator)
    assert a.final_losses == b.final_losses
    assert not states_equal(a.generator, c.generator)


@pytest.mark.parametrize("amp", [False, True])
def test_resume_equals_uninterrupted(tmp_path, patches, amp):
    straight = drain(train_gan(patches, CFG, tcfg(epochs=2, amp=amp), tmp_path / "a.pt"))
    drain(train_gan(patches, CFG, tcfg(epochs=1, amp=amp), tmp_path / "b.pt"))
    assert read_checkpoint(tmp_path / "b.pt")["reference"]
    resumed = drain(
        train_gan(patches, CFG, tcfg(epochs=2, amp=amp), tmp_path / "b.pt", resume=True)
    )
    assert resumed.epochs == 2
    assert states_equal(straight.generator, resumed.generator)
    assert states_equal(straight.discriminator, resumed.discriminator)
    assert straight.history == resumed.history
    a, b = read_checkpoint(tmp_path / "a.pt"), read_checkpoint(tmp_path / "b.pt")
    for name in ("generator", "discriminator"):
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        assert all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    for name in a["reference"]["quantiles"]:
        assert torch.equal(a["reference"]["quantiles"][name], b["reference"]["quantiles"][name])


def test_mixed_precision_training_runs_bf16_and_keeps_float32_weights(tmp_path, patches):
    """amp=True trains under bf16 autocast (so its weights differ from float32 training's
    after one epoch), keeps float32 weights and writes them in the standard layout."""
    fp32 = drain(train_gan(patches, CFG, tcfg(reference_steps=0, amp=False)))
    path = tmp_path / "amp.pt"
    bf16 = drain(train_gan(patches, CFG, tcfg(reference_steps=0, amp=True), path))
    assert all(np.isfinite(v) for v in bf16.final_losses.values())
    assert not states_equal(fp32.generator, bf16.generator)
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(
            fp32.generator.state_dict().values(), bf16.generator.state_dict().values(), strict=True
        )
        if a.is_floating_point()
    )
    assert diff < 0.05  # the same training, to bf16 rounding: not another model
    ckpt = read_checkpoint(path)
    for name in ("generator", "discriminator"):
        for key, value in ckpt[name].items():
            assert value.is_contiguous(), key
            if value.is_floating_point():
                assert value.dtype == torch.float32, key
    model = load_checkpoint(path)
    assert model.training["amp"] is True
    assert states_equal(model.generator, bf16.generator)


def test_training_amp_rule():
    cpu = torch.device("cpu")
    assert training_amp(cpu, False) is False
    assert training_amp(cpu, True) is True
    # automatic: the mapping's rule (AMX CPUs), whatever this machine has
    from napari_anogan.device import amp_by_default

    assert training_amp(cpu, None) is amp_by_default(cpu)


def test_cancel_keeps_last_checkpoint(tmp_path, patches):
    path = tmp_path / "m.pt"
    drain(train_gan(patches, CFG, tcfg(epochs=1, reference_steps=0), path))
    before = path.read_bytes()
    deterministic = torch.are_deterministic_algorithms_enabled()
    gen = train_gan(patches, CFG, tcfg(epochs=3, reference_steps=0), path, resume=True)
    for event in gen:
        if event.kind is EventKind.BATCH:
            break
    gen.close()  # what worker.quit() amounts to: stop at a yield
    assert path.read_bytes() == before
    assert load_checkpoint(path).training["epochs_done"] == 1
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert not list(tmp_path.glob(".tmp-*"))


def test_resume_refuses_changed_settings(tmp_path, patches):
    path = tmp_path / "m.pt"
    drain(train_gan(patches, CFG, tcfg(reference_steps=0), path))
    with pytest.raises(ModelError, match="seed: checkpoint 0, requested 5"):
        drain(train_gan(patches, CFG, tcfg(epochs=2, seed=5), path, resume=True))
    with pytest.raises(ModelError, match="z_dim"):
        drain(
            train_gan(
                patches, get_preset("tiny", patch_size=32, z_dim=8), tcfg(), path, resume=True
            )
        )
    with pytest.raises(ModelError, match="40 patches, now given 20"):
        drain(train_gan(patches[:20], CFG, tcfg(epochs=2), path, resume=True))
    with pytest.raises(ModelError, match="not found"):
        drain(train_gan(patches, CFG, tcfg(), tmp_path / "none.pt", resume=True))


def test_bad_input(patches):
    with pytest.raises(InputError, match="shape"):
        drain(train_gan(patches[:, :, :16, :16], CFG, tcfg()))
    with pytest.raises(InputError, match="at least 2"):
        drain(train_gan(patches[:1], CFG, tcfg()))
    bad = patches.copy()
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        drain(train_gan(bad, CFG, tcfg()))
    with pytest.raises(AnoganError, match="holdout_fraction"):
        TrainConfig(holdout_fraction=1.0)


def test_holdout_split_and_config_round_trip():
    train, hold = holdout_split(100, 0.05, seed=0)
    assert hold.size == 5
    assert train.size == 95
    assert np.intersect1d(train, hold).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, hold])), np.arange(100))
    assert holdout_split(3, 0.9, 0)[0].size == 1  # one patch always left to train
    cfg = TrainConfig(epochs=3, lr=1e-3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_training_defaults():
    # the paper's batch size and DCGAN optimiser; 60 epochs (paper: 20) from real data
    cfg = TrainConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.beta1) == (60, 64, 2e-4, 0.5)


def test_drain_returns_value_and_calls_back():
    def job():
        yield ProgressEvent(EventKind.BATCH, 1, 2)
        yield ProgressEvent(EventKind.BATCH, 2, 2)
        return "done"

    seen = []
    assert drain(job(), seen.append) == "done"
    assert [e.fraction for e in seen] == [0.5, 1.0]

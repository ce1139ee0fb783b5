import json

import pytest
import torch
from torch import nn

from napari_anogan.errors import ModelError
from napari_anogan.models import (
    PRESETS,
    Discriminator,
    Generator,
    ModelConfig,
    dcgan_init,
    get_preset,
    sample_prior,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_shapes_per_preset(name):
    cfg = get_preset(name)
    torch.manual_seed(0)
    g, d = Generator(cfg).eval(), Discriminator(cfg).eval()
    z = sample_prior(2, cfg, torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = g(z)
        logits, feats = d.forward_with_features(x)
    assert z.shape == (2, cfg.z_dim)
    assert x.shape == (2, 1, 64, 64)
    assert float(x.abs().max()) <= 1.0
    assert logits.shape == (2,)
    assert feats.shape == (2, cfg.d_widths[-1], 4, 4)
    with torch.no_grad():
        assert torch.equal(d(x), logits)
        assert torch.equal(d.features(x), feats)


def test_paper_preset_is_the_paper_architecture():
    cfg = get_preset("paper")
    assert cfg.g_widths == (512, 256, 128, 64)
    assert cfg.d_widths == (64, 128, 256, 512)
    assert (cfg.kernel, cfg.patch_size, cfg.z_dim, cfg.z_prior) == (5, 64, 100, "uniform")
    g = Generator(cfg)
    convs = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (512, 256),
        (256, 128),
        (128, 64),
        (64, 1),
    ]
    assert all(c.kernel_size == (5, 5) and c.stride == (2, 2) for c in convs)
    d = Discriminator(cfg)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (1, 64),
        (64, 128),
        (128, 256),
        (256, 512),
    ]
    # Batch norm on all discriminator conv layers but the first (DCGAN).
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 3


@pytest.mark.parametrize("patch_size", [32, 64])
def test_tiny_patch_sizes(patch_size):
    cfg = get_preset("tiny", patch_size=patch_size)
    g, d = Generator(cfg).eval(), Discriminator(cfg).eval()
    with torch.no_grad():
        x = g(torch.zeros(3, cfg.z_dim))
        f = d.features(x)
    assert x.shape == (3, 1, patch_size, patch_size)
    side = patch_size // 16
    assert f.shape == (3, 32, side, side)


@torch.no_grad()
def test_dcgan_init_reaches_every_conv_layer():
    cfg = get_preset("small")
    for model in (Generator(cfg), Discriminator(cfg)):
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        assert len(layers) == 4
        for m in [*layers, *(m for m in model.modules() if isinstance(m, nn.Linear))]:
            std = float(m.weight.std())
            assert 0.016 < std < 0.024, (m, std)
            assert abs(float(m.weight.mean())) < 0.005
            if m.bias is not None:
                assert torch.count_nonzero(m.bias) == 0
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert abs(float(m.weight.mean()) - 1.0) < 0.02
                assert torch.count_nonzero(m.bias) == 0


@torch.no_grad()
def test_dcgan_init_applies_through_apply():
    layer = nn.Sequential(nn.Sequential(nn.Conv2d(8, 64, 5)))
    layer.apply(dcgan_init)
    assert abs(float(layer[0][0].weight.std()) - 0.02) < 0.002


def test_forward_deterministic_and_seeded():
    cfg = get_preset("tiny", patch_size=32)
    torch.manual_seed(3)
    g1 = Generator(cfg).eval()
    torch.manual_seed(3)
    g2 = Generator(cfg).eval()
    z = sample_prior(4, cfg, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(g1(z), g1(z))
        assert torch.equal(g1(z), g2(z))


def test_sample_prior_uniform_range_and_seed():
    cfg = get_preset("tiny")
    a = sample_prior(500, cfg, torch.Generator().manual_seed(0))
    b = sample_prior(500, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert float(a.min()) >= -1.0
    assert float(a.max()) <= 1.0
    assert float(a.min()) < -0.99
    assert float(a.max()) > 0.99


def test_config_json_round_trip():
    cfg = get_preset("small", g_widths=(64, 32, 16, 8))
    text = cfg.to_json()
    assert json.loads(text)["g_widths"] == [64, 32, 16, 8]
    assert ModelConfig.from_json(text) == cfg
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch_size": 40}, "multiple of 16"),
        ({"kernel": 4}, "kernel"),
        ({"z_prior": "normal"}, "z_prior"),
        ({"z_dim": 0}, "z_dim"),
    ],
)
def test_invalid_config(kwargs, match):
    with pytest.raises(ModelError, match=match):
        get_preset("tiny", **kwargs)


def test_unknown_preset_and_field():
    with pytest.raises(ModelError, match="unknown model preset"):
        get_preset("huge")
    with pytest.raises(ModelError, match="unknown model config fields"):
        get_preset("tiny", width=3)
    with pytest.raises(ModelError, match="unknown model config keys"):
        ModelConfig.from_dict({"bogus": 1})


def test_generator_output_varies_with_z():
    """In eval mode (as mapping uses G), once batch norm holds statistics of G's own
    activations: G(z) varies with z and has a gradient in z. With the initial running
    statistics a DCGAN-initialised G's eval output barely moves (std ~2e-6)."""
    cfg = get_preset("tiny", patch_size=32)
    g = Generator(cfg)
    gen = torch.Generator().manual_seed(0)
    for layer in g.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None  # cumulative average over the warm-up batches
    with torch.no_grad():
        for _ in range(4):
            g(sample_prior(64, cfg, gen))
    g.eval()
    z = sample_prior(8, cfg, torch.Generator().manual_seed(1)).requires_grad_()
    x = g(z)
    x.sum().backward()
    assert x.detach().std(0).mean() > 0.01
    assert z.grad.abs().mean() > 0.01

import json

import numpy as np
import pytest
import torch

from napari_anogan.checkpoint import (
    FORMAT_VERSION,
    check_compatible,
    load_checkpoint,
    read_checkpoint,
    reference_to_checkpoint,
    save_checkpoint,
)
from napari_anogan.errors import ModelError, OutputError
from napari_anogan.models import Discriminator, Generator, get_preset
from napari_anogan.scoring import QUANTILE_LEVELS

CFG = get_preset("tiny", patch_size=32)
PRE = {"patch_size": 32, "width": 256, "flatten": True, "intensity": [0.5, 99.5]}


def make_ckpt(reference=None):
    torch.manual_seed(0)
    g, d = Generator(CFG), Discriminator(CFG)
    with torch.no_grad():  # non-trivial BN buffers
        d(torch.rand(4, 1, 32, 32))
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    g(torch.rand(2, CFG.z_dim)).mean().backward()
    opt.step()
    if reference is None:
        reference = reference_to_checkpoint(
            QUANTILE_LEVELS,
            {"anomaly_score": np.linspace(1, 2, 101), "residual_score": np.arange(101.0)},
            {"steps": 10, "lam": 0.1},
            n_patches=7,
        )
    ckpt = {
        "format_version": FORMAT_VERSION,
        "model_config": CFG.to_dict(),
        "preprocess_config": PRE,
        "train_config": {"epochs": 1, "seed": 0},
        "generator": g.state_dict(),
        "discriminator": d.state_dict(),
        "encoder": None,
        "optimizers": {"generator": opt.state_dict()},
        "training": {"epochs_done": 1, "seed": 0, "data_fingerprint": "abc"},
        "reference": reference,
    }
    return ckpt, g, d


def test_round_trip(tmp_path):
    ckpt, g, d = make_ckpt()
    path = save_checkpoint(tmp_path / "m.pt", ckpt)
    assert not list(tmp_path.glob(".tmp-*"))
    # The file is loadable with plain torch.load(weights_only=True).
    raw = torch.load(path, weights_only=True, map_location="cpu")
    assert isinstance(raw["model_config"], str)
    assert raw["format_version"] == FORMAT_VERSION
    model = load_checkpoint(path)
    assert model.path == path
    assert model.model_config == CFG
    assert model.preprocess_config == PRE
    assert model.training["data_fingerprint"] == "abc"
    assert model.encoder is None
    for a, b in ((model.generator, g), (model.discriminator, d)):
        assert not a.training
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb)
    ref = model.reference
    np.testing.assert_array_equal(ref["anomaly_score"], np.linspace(1, 2, 101))
    np.testing.assert_array_equal(ref["levels"], QUANTILE_LEVELS)
    assert ref["settings"] == {"steps": 10, "lam": 0.1}
    assert ref["n_patches"] == 7
    # Optimiser state survives for resume.
    assert "state" in read_checkpoint(path)["optimizers"]["generator"]


def test_empty_reference(tmp_path):
    ckpt, _, _ = make_ckpt(reference={})
    model = load_checkpoint(save_checkpoint(tmp_path / "m.pt", ckpt))
    assert model.reference == {}


class _Payload:
    """Unpickling this calls open(marker, 'w'): creating the marker proves code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_refuses_pickle_and_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    ckpt, _, _ = make_ckpt()
    ckpt["training"] = _Payload(marker)
    evil = tmp_path / "evil.pt"
    torch.save(ckpt, evil)
    with pytest.raises(ModelError, match="refused: needs pickle") as info:
        load_checkpoint(evil)
    assert str(evil) in str(info.value)
    assert not marker.exists()
    # Control: the crafted file really does run code when loaded unsafely.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_missing_corrupt_and_wrong_files(tmp_path):
    with pytest.raises(ModelError, match="not found") as info:
        load_checkpoint(tmp_path / "nope.pt")
    assert "nope.pt" in str(info.value)

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match=r"bad\.pt"):
        load_checkpoint(bad)

    ckpt, _, _ = make_ckpt()
    good = save_checkpoint(tmp_path / "good.pt", ckpt)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ModelError, match=r"trunc\.pt"):
        load_checkpoint(trunc)

    raw = read_checkpoint(good)
    raw["format_version"] = 99
    torch.save(raw, tmp_path / "v99.pt")
    with pytest.raises(ModelError, match="format_version 99"):
        load_checkpoint(tmp_path / "v99.pt")

    raw = read_checkpoint(good)
    del raw["discriminator"]
    torch.save(raw, tmp_path / "nokey.pt")
    with pytest.raises(ModelError, match="discriminator"):
        load_checkpoint(tmp_path / "nokey.pt")

    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ModelError, match="top level"):
        load_checkpoint(tmp_path / "list.pt")


def test_weights_not_matching_config(tmp_path):
    ckpt, _, _ = make_ckpt()
    ckpt["model_config"] = get_preset("tiny", patch_size=32, z_dim=8).to_dict()
    path = save_checkpoint(tmp_path / "m.pt", ckpt)
    with pytest.raises(ModelError, match="generator weights do not match"):
        load_checkpoint(path)


def test_save_errors(tmp_path):
    ckpt, _, _ = make_ckpt()
    with pytest.raises(OutputError):
        save_checkpoint(tmp_path / "missing_dir" / "m.pt", ckpt)
    del ckpt["reference"]
    with pytest.raises(ModelError, match="lacks keys"):
        save_checkpoint(tmp_path / "m.pt", ckpt)


def test_check_compatible(tmp_path):
    ckpt, _, _ = make_ckpt()
    model = load_checkpoint(save_checkpoint(tmp_path / "m.pt", ckpt))
    check_compatible(model, 32, json.loads(json.dumps(PRE)))
    check_compatible(model, 32, {**PRE, "intensity": (0.5, 99.5)})  # tuple == list
    check_compatible(model, 32, None)
    with pytest.raises(ModelError, match="patch_size: model 32, input 64") as info:
        check_compatible(model, 64, PRE)
    assert "m.pt" in str(info.value)
    with pytest.raises(
        ModelError, match=r"stride: model \(absent\), input 16; width: model 256, input 512"
    ):
        check_compatible(model, 32, {**PRE, "width": 512, "stride": 16})
    check_compatible(model, 32, {**PRE, "stride": 16}, ignore=["stride"])

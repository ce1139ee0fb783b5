"""Shared fixtures: small synthetic scans on disk and a tiny model trained on them.

Everything is real (files on disk, real torch training) but tiny, so the whole suite
stays within minutes on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_anogan.datasets.synthetic import make_volume
from napari_anogan.events import drain
from napari_anogan.io import write_tiff

SMALL_SHAPE = {"n_slices": 3, "height": 200, "width": 256}


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """Two healthy eyes (training), one healthy and one diseased test eye with its mask."""
    root = tmp_path_factory.mktemp("synthetic")
    for i in range(2):
        vol = make_volume(**SMALL_SHAPE, seed=100 + i)
        write_tiff(root / f"healthy_{i}.ome.tif", vol.data, spacing=vol.spacing)
    vol = make_volume(**SMALL_SHAPE, seed=300)
    write_tiff(root / "normal.ome.tif", vol.data, spacing=vol.spacing)
    vol = make_volume(**SMALL_SHAPE, lesions=["irf", "srf"], seed=500)
    write_tiff(root / "diseased.ome.tif", vol.data, spacing=vol.spacing)
    write_tiff(root / "diseased_mask.ome.tif", vol.mask)
    return root


@pytest.fixture(scope="session")
def tiny_model_path(synthetic_dir, tmp_path_factory) -> Path:
    """A tiny-preset model trained on the two healthy eyes: 10 epochs of 12 batches.

    Enough G updates for its batch-norm running statistics to reach those of its own
    activations: after the 6 updates of one epoch of batch 16, the last ReLU of G was
    dead in eval mode, G(z) did not depend on z and no mapping in the tests moved z.
    ``test_tiny_model_generator_depends_on_z`` keeps it so.
    """
    from napari_anogan.pipeline import train_from_paths

    out = tmp_path_factory.mktemp("model") / "tiny.pt"
    drain(
        train_from_paths(
            sorted(synthetic_dir.glob("healthy_*.ome.tif")),
            out,
            preset="tiny",
            epochs=10,
            patches_per_scan=16,
            batch_size=8,
            train_overrides={"reference_steps": 5, "reference_max_patches": 16},
            encoder=False,
        )
    )
    return out


def pytest_collection_modifyitems(items) -> None:
    """Tests that need the trained tiny model are slow: its training is the session's
    costliest fixture, which ``pytest -m "not slow"`` then never starts."""
    for item in items:
        if "tiny_model_path" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)

import numpy as np
import pytest
import torch

from napari_anogan.models import Discriminator, get_preset
from napari_anogan.models.feature_bank import (
    FeatureBank,
    build_feature_bank,
    feature_distance,
    patch_embeddings,
)


def test_feature_distance_is_distance_to_nearest_unit_vector():
    bank = FeatureBank(
        embeddings=np.array([[1.0, 0.0], [0.0, 1.0]]), projection=np.eye(2, dtype=np.float32)
    )
    d = feature_distance(bank, np.array([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]]), batch_size=2)
    np.testing.assert_allclose(d, [0.0, np.sqrt(0.4), np.sqrt(2.0)], atol=1e-6)


def test_bank_checks_its_shapes():
    with pytest.raises(ValueError, match="projection makes 3"):
        FeatureBank(embeddings=np.zeros((2, 2)), projection=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="no embeddings"):
        FeatureBank(embeddings=np.zeros((0, 2)), projection=np.zeros((5, 2)))


@pytest.fixture
def disc():
    torch.manual_seed(0)
    return Discriminator(get_preset("tiny")).eval()


def test_embeddings_are_unit_length_and_bank_patches_are_at_distance_zero(disc):
    rng = np.random.default_rng(0)
    patches = rng.uniform(-1, 1, (10, 1, 64, 64)).astype(np.float32)
    bank = build_feature_bank(disc, patches, dim=16, max_size=10, seed=3)
    assert bank.embeddings.shape == (10, 16)
    assert bank.embeddings.dtype == np.float16
    assert bank.projection.shape == (32 * 4 * 4, 16)
    emb = patch_embeddings(disc, patches, bank.projection, batch_size=4)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # float16 storage of the bank: distances of its own patches are ~0, others are not
    assert feature_distance(bank, emb).max() < 2e-3
    other = rng.uniform(-1, 1, (3, 1, 64, 64)).astype(np.float32) * 0.1
    assert feature_distance(bank, patch_embeddings(disc, other, bank.projection)).min() > 0.01


def test_bank_is_seeded_and_bounded(disc):
    patches = np.random.default_rng(1).uniform(-1, 1, (12, 1, 64, 64)).astype(np.float32)
    a = build_feature_bank(disc, patches, dim=8, max_size=5, seed=7)
    b = build_feature_bank(disc, patches, dim=8, max_size=5, seed=7)
    c = build_feature_bank(disc, patches, dim=8, max_size=5, seed=8)
    assert len(a.embeddings) == 5
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_array_equal(a.projection, b.projection)
    assert not np.array_equal(a.projection, c.projection)


def test_projection_that_does_not_fit_the_discriminator_is_refused(disc):
    patches = np.zeros((2, 1, 64, 64), np.float32)
    with pytest.raises(ValueError, match="expects 7"):
        patch_embeddings(disc, patches, np.zeros((7, 4), np.float32))

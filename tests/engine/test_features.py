from __future__ import annotations

import pytest
import torch

from engine.features import PatchFeatureExtractor


@pytest.mark.parametrize("normalization", ["none", "instance", "layer"])
def test_patch_features_shape_and_finite(normalization: str) -> None:
    extractor = PatchFeatureExtractor(normalization=normalization)
    feats = extractor(torch.rand(2, 3, 64, 80))
    assert feats.shape == (2, extractor.dim, 8, 10)
    assert extractor.dim == 152
    assert torch.isfinite(feats).all()


def test_local_aggregation_makes_neighbouring_patches_similar() -> None:
    """3x3 averaging: adjacent patch vectors share most of their receptive field."""
    extractor = PatchFeatureExtractor()
    feats = extractor(torch.rand(1, 3, 96, 96))[0]
    near = (feats[:, 5, 5] - feats[:, 5, 6]).norm()
    far = (feats[:, 5, 5] - feats[:, 0, 11]).norm()
    assert near < far


def test_rejects_wrong_input_shape() -> None:
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        PatchFeatureExtractor()(torch.rand(3, 64, 64))


def test_rejects_unknown_normalization() -> None:
    with pytest.raises(ValueError, match="normalization"):
        PatchFeatureExtractor(normalization="batch")  # type: ignore[arg-type]

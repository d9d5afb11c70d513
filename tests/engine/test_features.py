from __future__ import annotations

import pytest
import torch

from engine.features import ChannelStats, FeatureAlignment, PatchFeatureExtractor


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
        PatchFeatureExtractor(normalization="group")  # type: ignore[arg-type]


def test_batch_normalization_is_not_the_extractors() -> None:
    """The extractor never sees training patches: it says who applies "batch"."""
    with pytest.raises(ValueError, match="batch needs training statistics"):
        PatchFeatureExtractor(normalization="batch")  # type: ignore[arg-type]


def _features(seed: int, n: int = 2, dim: int = 6) -> torch.Tensor:
    """[n, dim, 5, 7] features whose channels have different means and ranges."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 4.0, dim).view(1, -1, 1, 1)
    return torch.randn(n, dim, 5, 7, generator=gen) * scale + torch.arange(dim).view(1, -1, 1, 1)


def test_channel_stats_are_the_population_mean_and_std() -> None:
    vectors = _features(0, n=3).movedim(1, -1).reshape(-1, 6)
    stats = ChannelStats.of(vectors)
    torch.testing.assert_close(stats.mean, vectors.mean(0))
    torch.testing.assert_close(stats.std, vectors.std(0, unbiased=False), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        stats.check(7)
    with pytest.raises(ValueError, match="positive"):
        ChannelStats(stats.mean, -stats.std).check(6)
    with pytest.raises(ValueError, match=r"N>=2"):
        ChannelStats.of(vectors[:1])


def test_standardize_gives_the_training_patches_zero_mean_unit_std() -> None:
    train = _features(1, n=4)
    stats = ChannelStats.of(train.movedim(1, -1).reshape(-1, 6))
    out = FeatureAlignment(stats, standardize=True, style_align=False)(train)
    flat = out.movedim(1, -1).reshape(-1, 6)
    torch.testing.assert_close(flat.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(0, unbiased=False), torch.ones(6), atol=1e-4, rtol=0)


def test_style_align_undoes_a_per_channel_gain_and_offset() -> None:
    """A lighting change that scales and shifts whole channels of one image (what it does to
    the features, to first order) leaves the aligned features unchanged."""
    train = _features(2, n=3)
    stats = ChannelStats.of(train.movedim(1, -1).reshape(-1, 6))
    align = FeatureAlignment(stats, standardize=False, style_align=True)
    image = _features(3, n=1)
    gain = torch.linspace(0.6, 1.7, 6).view(1, -1, 1, 1)
    offset = torch.linspace(-2.0, 1.0, 6).view(1, -1, 1, 1)
    torch.testing.assert_close(align(image * gain + offset), align(image), atol=1e-4, rtol=1e-4)
    aligned = align(image)  # each image now carries the reference statistics
    torch.testing.assert_close(aligned.mean(dim=(2, 3)).view(-1), stats.mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(aligned.std(dim=(2, 3), unbiased=False).view(-1), stats.std,
                               atol=1e-3, rtol=1e-3)


def test_both_together_are_each_images_own_standardization() -> None:
    stats = ChannelStats.of(_features(4, n=3).movedim(1, -1).reshape(-1, 6))
    image = _features(5, n=2)
    both = FeatureAlignment(stats, standardize=True, style_align=True)(image)
    torch.testing.assert_close(both, torch.nn.functional.instance_norm(image), atol=1e-4,
                               rtol=1e-4)


def test_vectors_of_one_image_align_like_its_grid() -> None:
    stats = ChannelStats.of(_features(6, n=2).movedim(1, -1).reshape(-1, 6))
    align = FeatureAlignment(stats, standardize=True, style_align=True)
    image = _features(7, n=1)
    grid = align(image)[0].flatten(1).T
    torch.testing.assert_close(align.vectors(image[0].flatten(1).T), grid)
    assert {name for name, _ in align.named_buffers()} == {"ref_mean", "ref_std"}

"""The stride-8 stage's weight in every patch distance (``FewShotConfig.fine_weight``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.features import PatchFeatureExtractor
from engine.models import registry
from engine.models.fewshot import FINE_WEIGHT_DEFAULT, FewShotConfig, FewShotPatchCore
from tests.synthetic import texture, with_defect

FINE = 40  # EfficientNet-Lite0's stride-8 channels


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(1, 3, 64, 80)


def test_the_weight_scales_only_the_stride8_block(batch) -> None:
    full = PatchFeatureExtractor()(batch)
    quarter = PatchFeatureExtractor(fine_weight=0.25)(batch)
    assert quarter.shape == full.shape
    torch.testing.assert_close(quarter[:, :FINE], full[:, :FINE] * 0.5)
    torch.testing.assert_close(quarter[:, FINE:], full[:, FINE:])


def test_weight_zero_leaves_the_block_out_on_the_same_grid(batch) -> None:
    full = PatchFeatureExtractor()(batch)
    extractor = PatchFeatureExtractor(fine_weight=0.0)
    context = extractor(batch)
    assert extractor.dim == 112 and context.shape == (1, 112, 8, 10)
    torch.testing.assert_close(context, full[:, FINE:])
    assert extractor.channel_gain() is None


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_the_extractor_refuses_a_weight_outside_0_1(weight: float) -> None:
    with pytest.raises(ValueError, match="fine_weight must be in"):
        PatchFeatureExtractor(fine_weight=weight)


@pytest.mark.parametrize("weight", [True, "0.5", 2])
def test_the_config_refuses_a_bad_weight(weight) -> None:
    with pytest.raises(ValueError, match="fine_weight must be a number in"):
        FewShotConfig(fine_weight=weight)


def test_the_registry_default_is_the_config_default() -> None:
    assert registry.spec("kensa_patchcore").default_config["fine_weight"] == FINE_WEIGHT_DEFAULT
    assert FewShotConfig().fine_weight == FINE_WEIGHT_DEFAULT


def _fit(rng: np.random.Generator, **options) -> FewShotPatchCore:
    model = FewShotPatchCore(FewShotConfig(image_size=96, max_bank=100_000, **options),
                             device="cpu")
    model.fit([texture(rng, 96) for _ in range(2)])
    return model


def test_a_bank_without_the_fine_block_still_finds_a_defect() -> None:
    rng = np.random.default_rng(1)
    model = _fit(rng, fine_weight=0.0)
    assert model.bank is not None and model.bank.dim == 112
    good = texture(rng, 96)
    defect, mask = with_defect(rng, texture(rng, 96))
    result = model.score([good, defect])
    assert result.scores[1] > result.scores[0]
    assert result.maps[1][mask > 0].mean() > result.maps[1][mask == 0].mean()


def test_batch_standardization_keeps_the_weight() -> None:
    """Standardizing every channel divides the extractor's scale out; the alignment's gain puts
    it back, so the fine block still holds its share of the distance."""
    model = _fit(np.random.default_rng(2), fine_weight=0.25, normalization="batch")
    alignment = model.feature_alignment()
    assert alignment is not None and alignment.gain is not None
    spread = model.bank.vectors.std(dim=0)  # every training patch: the bank is complete
    assert spread[:FINE].mean().item() == pytest.approx(0.5, rel=0.05)
    assert spread[FINE:].mean().item() == pytest.approx(1.0, rel=0.05)


def test_a_model_saved_before_the_weight_keeps_both_stages_whole(tmp_path) -> None:
    rng = np.random.default_rng(3)
    model = _fit(rng, fine_weight=1.0)
    model.save(tmp_path)
    payload = json.loads((tmp_path / "model.json").read_text())
    del payload["config"]["fine_weight"]
    (tmp_path / "model.json").write_text(json.dumps(payload))
    old = FewShotPatchCore.load(tmp_path)
    assert old.config.fine_weight == 1.0 and old.extractor.fine_weight == 1.0
    image = texture(rng, 96)
    np.testing.assert_allclose(old.score([image]).scores, model.score([image]).scores,
                               rtol=1e-6)


def test_a_saved_weight_comes_back(tmp_path) -> None:
    model = _fit(np.random.default_rng(4), fine_weight=0.0)
    model.save(tmp_path)
    loaded = FewShotPatchCore.load(tmp_path)
    assert loaded.config.fine_weight == 0.0 and loaded.bank.dim == 112

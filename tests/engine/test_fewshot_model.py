"""End to end on generated parts: the default detector ranks drawn defects above good parts."""

from __future__ import annotations

import numpy as np
import pytest

from engine.heap import HeapTrimmer
from engine.metrics import image_metrics, pixel_metrics
from engine.models import registry
from engine.models.fewshot import FewShotConfig, FewShotPatchCore
from tests.synthetic import texture, with_defect

SMALL = {"image_size": 96}


@pytest.fixture(scope="module")
def parts() -> dict[str, list]:
    rng = np.random.default_rng(7)
    train = [texture(rng) for _ in range(4)]
    goods = [texture(rng) for _ in range(10)]
    defects, masks = zip(*(with_defect(rng, texture(rng)) for _ in range(10)), strict=True)
    return {"train": train, "goods": goods, "defects": list(defects), "masks": list(masks)}


@pytest.fixture(scope="module")
def fitted(parts: dict[str, list]) -> FewShotPatchCore:
    model = FewShotPatchCore(FewShotConfig(**SMALL))
    model.fit(parts["train"])
    return model


def test_ranks_defects_above_goods(fitted: FewShotPatchCore, parts: dict[str, list]) -> None:
    result = fitted.score(parts["goods"] + parts["defects"])
    labels = np.array([0] * 10 + [1] * 10)
    assert image_metrics(result.scores, labels)["image_auroc"] > 0.9
    masks = [None] * 10 + parts["masks"]
    assert pixel_metrics(result.maps, masks)["pixel_auroc"] > 0.9


def test_maps_come_back_at_original_size(fitted: FewShotPatchCore) -> None:
    image = np.random.default_rng(0).integers(0, 255, (70, 130, 3), dtype=np.uint8)
    result = fitted.score([image])
    assert result.maps[0].shape == (70, 130)
    assert np.isfinite(result.scores).all()


def test_scoring_checks_the_heap_after_every_image_and_scores_the_same(
        fitted: FewShotPatchCore, parts: dict[str, list]) -> None:
    """A trim between images (engine.heap) must not change a score: it only returns free pages."""
    images = parts["goods"][:3]
    plain = fitted.score(images).scores
    sizes = iter([1000.0, 3000.0, 900.0, 1000.0])  # image 2 crosses the budget; a trim: 900
    trims: list[int] = []
    fitted.heap = HeapTrimmer(growth_mb=512, resident=lambda: next(sizes),
                              trim=lambda: trims.append(1) or True)
    try:
        trimmed = fitted.score(images).scores
    finally:
        fitted.heap = HeapTrimmer()
    assert len(trims) == 1 and fitted.heap.trims == 0
    np.testing.assert_array_equal(plain, trimmed)


def test_progress_is_reported_and_monotonic(parts: dict[str, list]) -> None:
    seen: list[float] = []
    FewShotPatchCore(FewShotConfig(**SMALL)).fit(parts["train"][:2],
                                                 progress=lambda s, f: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0


def test_bank_is_bounded_by_coreset(parts: dict[str, list]) -> None:
    model = FewShotPatchCore(FewShotConfig(image_size=96, max_bank=200, views="dihedral"))
    report = model.fit(parts["train"][:2])
    assert report.n_patches == 2 * 8 * 12 * 12
    assert report.bank_size == 200 == len(model.bank)


def test_provenance_points_into_training_grids(fitted: FewShotPatchCore) -> None:
    records = {r.id: r for r in fitted.records}
    prov = fitted.bank.provenance.cpu().numpy()
    for record_id, row, col in prov[:: max(1, len(prov) // 50)]:
        grid = records[int(record_id)]
        assert 0 <= row < grid.grid_height and 0 <= col < grid.grid_width


def test_save_load_round_trip_scores_identically(fitted: FewShotPatchCore, tmp_path,
                                                 parts: dict[str, list]) -> None:
    digests = fitted.save(tmp_path)
    assert set(digests) == {"model.json", "bank.safetensors"}
    loaded = FewShotPatchCore.load(tmp_path)
    images = parts["defects"][:3]
    np.testing.assert_allclose(loaded.score(images).scores, fitted.score(images).scores,
                               rtol=1e-5)


def test_tampered_bank_is_refused(fitted: FewShotPatchCore, tmp_path) -> None:
    fitted.save(tmp_path)
    bank = tmp_path / "bank.safetensors"
    raw = bytearray(bank.read_bytes())
    raw[-1] ^= 0xFF
    bank.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="bank.safetensors"):
        FewShotPatchCore.load(tmp_path)


def test_score_before_fit_says_so() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        FewShotPatchCore(FewShotConfig(**SMALL)).score([np.zeros((32, 32, 3), np.uint8)])


def test_config_rejects_unsafe_values() -> None:
    with pytest.raises(ValueError, match="image_size"):
        FewShotConfig(image_size=10)


def test_anomalib_baseline_shares_the_interface(parts: dict[str, list]) -> None:
    model = registry.create("anomalib_patchcore")
    report = model.fit(parts["train"][:2])
    assert report.bank_size > 0
    result = model.score(parts["defects"][:2])
    assert result.scores.shape == (2,) and result.maps[0].shape == (96, 96)

"""Synthetic defects for a threshold without defect images: deterministic, moderate, honest."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.augment.calibration import (
    AREA_RANGE,
    CALIBRATION_KINDS,
    png_bytes,
    synthetic_defect_set,
)
from tests.synthetic import texture


@pytest.fixture(scope="module")
def goods() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [texture(rng, 96) for _ in range(3)]


def test_kinds_cycle_and_every_defect_changes_exactly_its_mask(goods: list[np.ndarray]) -> None:
    made = synthetic_defect_set(goods, seed=7, per_image=2)
    assert [kind for _, kind in made] == [CALIBRATION_KINDS[n % 3] for n in range(6)]
    for j, (defect, _) in enumerate(made):
        source = goods[j // 2]
        assert defect.image.shape == source.shape and defect.image.dtype == np.uint8
        changed = (defect.image != source).any(axis=-1)
        assert defect.mask.any() and np.array_equal(changed, defect.mask)
        # moderate: never more than about twice the largest asked-for area
        assert defect.mask.mean() <= 2 * AREA_RANGE[1]


def test_same_seed_same_defects_whether_painted_at_once_or_one_by_one(
    goods: list[np.ndarray],
) -> None:
    at_once = synthetic_defect_set(goods, seed=11, per_image=2)
    one_by_one = [entry for i, image in enumerate(goods)
                  for entry in synthetic_defect_set([image], seed=11, per_image=2, first=2 * i)]
    assert len(at_once) == len(one_by_one) == 6
    for (a, kind_a), (b, kind_b) in zip(at_once, one_by_one, strict=True):
        assert kind_a == kind_b
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    other = synthetic_defect_set(goods, seed=12, per_image=2)
    assert any(not np.array_equal(a.mask, b.mask)
               for (a, _), (b, _) in zip(at_once, other, strict=True))


def test_flat_image_gives_an_empty_mask_not_an_error() -> None:
    flat = np.full((64, 64, 3), 90, np.uint8)
    ((defect, kind),) = synthetic_defect_set([flat], seed=0)
    assert kind == CALIBRATION_KINDS[0]
    assert not defect.mask.any() and np.array_equal(defect.image, flat)


def test_per_image_must_be_positive(goods: list[np.ndarray]) -> None:
    with pytest.raises(ValueError, match="per_image"):
        synthetic_defect_set(goods, seed=0, per_image=0)


def test_png_bytes_decode_to_the_same_pixels(goods: list[np.ndarray]) -> None:
    image = goods[0]
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(png_bytes(image), np.uint8),
                                        cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(decoded, image)
    mask = np.zeros((8, 8), bool)
    mask[2:4, 3:6] = True
    back = cv2.imdecode(np.frombuffer(png_bytes(mask), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(back > 0, mask) and set(np.unique(back)) == {0, 255}

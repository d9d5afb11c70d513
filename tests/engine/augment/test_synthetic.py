"""Synthetic defects: exact masks, own intensity range, controlled area, grey stays grey."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from engine.augment.synthetic import (
    SYNTHETIC_KINDS,
    CutPaste,
    FlatImageError,
    PerlinDefect,
    cutpaste,
    inject,
    seamless_patch,
)
from tests.synthetic import texture


@pytest.fixture(scope="module")
def part() -> np.ndarray:
    return texture(np.random.default_rng(5), 96)


def _assert_honest(source: np.ndarray, out: np.ndarray, mask: np.ndarray) -> None:
    assert out.shape == source.shape and out.dtype == source.dtype
    assert mask.dtype == bool and mask.shape == source.shape[:2]
    assert np.array_equal(mask, (out != source).any(axis=-1))
    lo = source.reshape(-1, 3).min(axis=0)
    hi = source.reshape(-1, 3).max(axis=0)
    flat = out.reshape(-1, 3)
    assert (flat >= lo).all() and (flat <= hi).all()


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
@pytest.mark.parametrize("contrast", [0.1, 1.0])
def test_mask_is_exactly_the_changed_pixels_and_stays_in_range(
        part: np.ndarray, kind: str, contrast: float) -> None:
    for seed in range(3):
        defect = inject(part, kind, np.random.default_rng(seed), 0.02, contrast)
        _assert_honest(part, defect.image, defect.mask)
        assert defect.mask.any()


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
@pytest.mark.parametrize("area", [0.005, 0.03, 0.15])
def test_realised_area_follows_the_request(part: np.ndarray, kind: str, area: float) -> None:
    for seed in range(2):
        defect = inject(part, kind, np.random.default_rng(seed), area, 0.5)
        ratio = defect.mask.mean() / area
        assert 1 / 1.5 <= ratio <= 1.5, (kind, area, seed, ratio)


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_grey_rgb_stays_grey(part: np.ndarray, kind: str) -> None:
    grey = np.repeat(part[..., :1], 3, axis=2)
    defect = inject(grey, kind, np.random.default_rng(1), 0.03, 0.6,
                    donor=part if kind == "seamless" else None)  # a coloured donor, even
    assert defect.mask.any()
    assert np.array_equal(defect.image[..., 0], defect.image[..., 1])
    assert np.array_equal(defect.image[..., 0], defect.image[..., 2])


def test_same_rng_seed_same_defect_and_contrast_matters(part: np.ndarray) -> None:
    for kind in SYNTHETIC_KINDS:
        a = inject(part, kind, np.random.default_rng(9), 0.03, 0.5)
        b = inject(part, kind, np.random.default_rng(9), 0.03, 0.5)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    weak = cutpaste(part, np.random.default_rng(4), 0.05, 0.1)
    strong = cutpaste(part, np.random.default_rng(4), 0.05, 1.0)
    departure = [np.abs(d.image.astype(int) - part)[d.mask].mean() for d in (weak, strong)]
    assert departure[1] > 2 * departure[0]


def test_seamless_patch_uses_a_donor_of_another_size(part: np.ndarray) -> None:
    donor = texture(np.random.default_rng(8), 128)[:, :, ::-1].copy()
    defect = seamless_patch(part, donor, np.random.default_rng(2), 0.05, 0.8)
    _assert_honest(part, defect.image, defect.mask)
    without = seamless_patch(part, None, np.random.default_rng(2), 0.05, 0.8)
    assert not np.array_equal(defect.image, without.image)


def test_bad_arguments_are_named(part: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="area"):
        inject(part, "perlin", rng, 0.5, 0.5)
    with pytest.raises(ValueError, match="contrast"):
        inject(part, "cutpaste", rng, 0.01, 0.0)
    with pytest.raises(ValueError, match="kind"):
        inject(part, "scratchy", rng, 0.01, 0.5)
    with pytest.raises(ValueError, match="image"):
        inject(part.astype(np.float32), "scar", rng, 0.01, 0.5)
    with pytest.raises(FlatImageError, match="same value"):
        inject(np.full((64, 64, 3), 90, np.uint8), "perlin", rng, 0.01, 0.5)
    with pytest.raises(ValueError, match="area"):
        PerlinDefect(area=(0.1, 0.01))


def test_transform_marks_the_mask_and_round_trips_through_to_dict(part: np.ndarray) -> None:
    mask = np.zeros(part.shape[:2], np.uint8)
    transform = A.Compose([CutPaste(area=(0.02, 0.04), contrast=(0.5, 0.9), p=1.0)], seed=3)
    out = transform(image=part, mask=mask)
    changed = (out["image"] != part).any(axis=-1)
    assert changed.any() and np.array_equal(out["mask"] > 0, changed)
    rebuilt = A.from_dict(A.to_dict(transform))
    rebuilt.set_random_seed(3)
    transform.set_random_seed(3)
    assert np.array_equal(rebuilt(image=part)["image"], transform(image=part)["image"])

"""MMD permutation test and image-quality signals."""

from __future__ import annotations

import numpy as np
import pytest

from engine.drift import image_quality, mmd_permutation_test


def test_mmd_small_p_for_shifted_gaussians_large_for_same() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (150, 8))
    same = mmd_permutation_test(x, rng.normal(0, 1, (150, 8)), seed=1)
    moved = mmd_permutation_test(x, rng.normal(0.6, 1, (150, 8)), seed=1)
    assert moved.p_value < 0.01 and moved.drift
    assert same.p_value > 0.05 and not same.drift
    assert moved.mmd2 > same.mmd2 > 0
    assert moved.unit == "vector" and moved.n_permutations == 200


def test_grouped_permutation_respects_images() -> None:
    """Patches share their image's offset: same population of images, different images.

    Shuffling single patches calls that drift; shuffling whole images does not."""
    rng = np.random.default_rng(3)

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        offsets = rng.normal(0, 1, (n, 4))
        x = np.concatenate([o + rng.normal(0, 0.2, (40, 4)) for o in offsets])
        return x, np.repeat(np.arange(n), 40)

    (x, gx), (y, gy) = images(6), images(6)
    by_vector = mmd_permutation_test(x, y, seed=0)
    by_image = mmd_permutation_test(x, y, gx, gy, seed=0)
    assert by_vector.p_value < 0.05
    assert by_image.p_value > 0.05 and by_image.unit == "image"
    assert (by_image.units_x, by_image.units_y) == (6, 6) and by_image.testable


def test_mmd_subsamples_and_reports_min_p() -> None:
    rng = np.random.default_rng(0)
    result = mmd_permutation_test(rng.normal(size=(500, 3)), rng.normal(size=(40, 3)),
                                  [0] * 250 + [1] * 250, [0] * 40, max_samples=100)
    assert (result.n_x, result.n_y) == (100, 40)
    assert result.min_p == pytest.approx(1 / 3) and not result.testable  # 3 images, 3 splits


def test_image_quality_signals() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(60, 200, (300, 400)).astype(np.uint8)
    image = np.repeat(grey[..., None], 3, axis=2)
    base = image_quality(image)
    brighter = image_quality(np.clip(image.astype(int) + 30, 0, 255).astype(np.uint8))
    import cv2

    blurred = image_quality(cv2.GaussianBlur(image, (0, 0), 3))
    assert brighter.brightness == pytest.approx(base.brightness + 30, abs=0.5)
    assert brighter.contrast == pytest.approx(base.contrast, rel=0.01)
    assert blurred.sharpness < 0.2 * base.sharpness
    assert blurred.brightness == pytest.approx(base.brightness, abs=1)

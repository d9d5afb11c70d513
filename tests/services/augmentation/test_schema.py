"""The page's door to the engine schema: plain group titles, the mask overlay, the drawn values."""

from __future__ import annotations

import numpy as np
import pytest

from services.augmentation.schema import (
    GROUP_TITLES,
    TRANSFORMS,
    describe_applied,
    groups,
    overlay,
)


def test_groups_cover_every_transform_once_in_display_order() -> None:
    listed = [spec.name for _, _, specs in groups() for spec in specs]
    assert sorted(listed) == sorted(TRANSFORMS)
    order = list(TRANSFORMS)
    for _, title, specs in groups():
        assert title and specs
        positions = [order.index(s.name) for s in specs]
        assert positions == sorted(positions)
    keys = [g for g, _, _ in groups()]
    assert keys[: len(set(keys) & set(GROUP_TITLES))] == [g for g in GROUP_TITLES if g in keys]
    assert "synthetic" in keys  # the four groups are all offered
    assert "geometric" in keys and "light" in keys and "camera" in keys


def test_overlay_tints_and_outlines_only_around_the_mask() -> None:
    image = np.full((64, 80, 3), 120, np.uint8)
    mask = np.zeros((64, 80), bool)
    mask[20:40, 30:50] = True
    out = overlay(image, mask)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out[25:35, 35:45], image[25:35, 35:45])  # tinted inside
    assert np.array_equal(out[:10, :10], image[:10, :10])  # untouched far away
    assert np.array_equal(overlay(image, None), image)
    assert np.array_equal(overlay(image, np.zeros((64, 80), bool)), image)


def test_overlay_accepts_grey_and_16_bit_and_refuses_a_mask_of_another_size() -> None:
    grey = np.full((32, 32), 60000, np.uint16)
    out = overlay(grey, None)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and out.max() > 200
    with pytest.raises(ValueError, match="the mask is 16x16 px but the image is 32x32 px"):
        overlay(grey, np.ones((16, 16), bool))


def test_describe_applied_uses_titles_and_short_numbers() -> None:
    name = next(iter(TRANSFORMS))
    line = describe_applied([{"transform": name, "params": {"some_value": 0.123456,
                                                             "pair": [1.0, 2.5],
                                                             "scale": {"x": 0.97, "y": 1.0}}}])
    assert line.startswith(TRANSFORMS[name].title + ":")
    assert "some value 0.123" in line and "pair (1, 2.5)" in line
    assert "zoom (x 0.97, y 1)" in line  # albumentations names in words
    assert "Nothing applied" in describe_applied([])

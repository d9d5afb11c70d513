"""services.augmentation.preview: a seeded sample of the project's images, before and after."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import db.repositories as repo
from engine.augment import AugmentConfig, AugmentConfigError, TransformStep, default_step
from services.augmentation.preview import preview_images, render_preview
from services.context import Kensa
from services.data.projects import ProjectNotFound


def _flip() -> AugmentConfig:
    """A flip on every image, so where each pixel and mask pixel goes is known."""
    return AugmentConfig(seed=0, transforms=(TransformStep("HorizontalFlip", 1.0, {}),))


def test_sample_is_seeded_goods_first_with_masks_shrunk(ctx: Kensa, project: str) -> None:
    images = preview_images(ctx, project, n=6, seed=1, long_side=64)
    assert len(images) == 6
    labels = [label for _, label, _, _ in images]
    assert labels == ["good"] * 4 + ["defect (spot)"] * 2  # a third defects, goods first
    for name, label, image, mask in images:
        assert name.endswith(".png") and image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert (mask is None) == (label == "good")
        if mask is not None:
            assert mask.shape == (64, 64) and mask.dtype == bool and mask.any()
    again = preview_images(ctx, project, n=6, seed=1, long_side=64)
    assert [i[0] for i in again] == [i[0] for i in images]
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(again, images, strict=True))
    other = preview_images(ctx, project, n=6, seed=2, long_side=64)
    assert [i[2].tobytes() for i in other] != [i[2].tobytes() for i in images]


def test_more_places_than_goods_are_filled_with_defects(ctx: Kensa, project: str) -> None:
    images = preview_images(ctx, project, n=50, long_side=32)
    assert [label for _, label, _, _ in images] == ["good"] * 9 + ["defect (spot)"] * 3


def test_unreadable_files_are_skipped_with_the_reason(
    ctx: Kensa, project: str, dataset: Path
) -> None:
    for path in (dataset / "train" / "good").glob("*.png"):
        path.write_bytes(b"not a png")
    skipped: list[str] = []
    images = preview_images(ctx, project, n=12, long_side=32, skipped=skipped)
    assert len(images) == 6 and len(skipped) == 6  # 3 test goods + 3 defects remain
    assert all("good_" in reason for reason in skipped)
    assert [label for _, label, _, _ in images] == ["good"] * 3 + ["defect (spot)"] * 3


def test_project_without_images_and_unknown_project(ctx: Kensa, tmp_path: Path) -> None:
    with ctx.session() as s:
        repo.create_project(s, "empty", str(tmp_path))
    assert preview_images(ctx, "empty") == []
    assert render_preview([], _flip()) == []
    with pytest.raises(ProjectNotFound):
        preview_images(ctx, "nobody")


def test_render_flips_images_and_masks_together(ctx: Kensa, project: str) -> None:
    images = preview_images(ctx, project, n=12, long_side=64)
    tiles = render_preview(images, _flip())
    assert len(tiles) == len(images) == 12
    for (name, label, image, mask), tile in zip(images, tiles, strict=True):
        assert (tile.name, tile.label) == (name, label)
        assert tile.before is image and tile.before.shape == tile.after.shape
        assert np.array_equal(tile.after, image[:, ::-1])
        assert [step["transform"] for step in tile.applied] == ["HorizontalFlip"]
        if mask is None:
            assert tile.mask_before is None
        else:
            assert np.array_equal(tile.mask_after, mask[:, ::-1])


def test_render_validates_and_is_fast(ctx: Kensa, project: str) -> None:
    with pytest.raises(AugmentConfigError, match=r"transforms\[0\]\.p"):
        render_preview([], {"version": 1, "seed": 0,
                            "transforms": [{"name": "HorizontalFlip", "p": -1, "params": {}}]})
    rng = np.random.default_rng(0)
    big = [(f"{i}.png", "good", rng.integers(0, 256, (384, 512, 3), dtype=np.uint8), None)
           for i in range(12)]
    config = AugmentConfig(seed=0, transforms=tuple(
        default_step(n) for n in ("HorizontalFlip", "GaussNoise")))
    start = time.perf_counter()
    tiles = render_preview(big, config)
    assert time.perf_counter() - start < 1.0
    assert all(t.after.shape == (384, 512, 3) for t in tiles)

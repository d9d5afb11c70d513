"""Preview and training copies: deterministic, masks follow geometry, applied params readable."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.augment import (
    TRANSFORMS,
    AugmentConfig,
    augment_images,
    augmented_copies,
    validate_config,
)
from tests.synthetic import texture


def _config(*names: str, p: float = 1.0, seed: int = 0) -> AugmentConfig:
    return validate_config({"version": 1, "seed": seed,
                            "transforms": [{"name": n, "p": p} for n in names]})


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    return [texture(rng, 64), texture(rng, 80)[:, :72].copy()]  # different sizes


def test_same_seed_same_pixels_other_seed_other_pixels(images: list[np.ndarray]) -> None:
    names = [n for n in TRANSFORMS if n != "SquareSymmetry"]
    first = augment_images(images, [None, None], _config(*names, p=0.6, seed=4))
    again = augment_images(images, [None, None], _config(*names, p=0.6, seed=4))
    other = augment_images(images, [None, None], _config(*names, p=0.6, seed=5))
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.image, b.image) and a.applied == b.applied
    assert not all(np.array_equal(a.image, c.image) for a, c in zip(first, other, strict=True))
    assert [s.image.shape for s in first] == [i.shape for i in images]


def test_masks_follow_flips_and_stay_binary(images: list[np.ndarray]) -> None:
    mask = np.zeros(images[0].shape[:2], bool)
    mask[:8, :8] = True  # top-left corner marked
    flipped = augment_images([images[0]], [mask], _config("HorizontalFlip", "VerticalFlip"))[0]
    assert np.array_equal(flipped.image, images[0][::-1, ::-1])
    assert flipped.mask.dtype == bool and np.array_equal(flipped.mask, mask[::-1, ::-1])
    for seed in range(3):
        moved = augment_images([images[0]], [mask], _config("Affine", "ElasticTransform",
                                                             "Perspective", seed=seed))[0]
        assert moved.mask.dtype == bool and 0 < moved.mask.sum() < mask.size // 4


def test_applied_params_are_short_and_json(images: list[np.ndarray]) -> None:
    samples = augment_images(images, [None, None], _config(*TRANSFORMS, p=1.0, seed=1))
    for sample in samples:
        assert [a["transform"] for a in sample.applied] == list(TRANSFORMS)
        text = json.dumps(sample.applied)
        assert len(text) < 4000  # no noise maps or images
    params = {a["transform"]: a["params"] for a in samples[0].applied}
    assert set(params["RandomBrightnessContrast"]) >= {"alpha", "beta"}
    assert params["ImageCompression"]["quality"] in range(70, 96)
    assert params["PerlinDefect"]["defect_pixels"] > 0
    assert all(len(str(v).split(".")[-1]) <= 3 for v in params["Affine"].values()
               if isinstance(v, float))


def test_only_steps_that_ran_are_listed(images: list[np.ndarray]) -> None:
    samples = augment_images(images, [None, None], _config("GaussNoise", "CutPaste", p=0.0))
    assert all(s.applied == [] and np.array_equal(s.image, i)
               for s, i in zip(samples, images, strict=True))


def test_synthetic_defects_are_labelled_without_a_given_mask(images: list[np.ndarray]) -> None:
    config = _config("PerlinDefect", "CutPasteScar", "SeamlessPatch", seed=3)
    samples = augment_images(images, [None, None], config, donors=[images[1]])
    for sample, image in zip(samples, images, strict=True):
        assert np.array_equal(sample.mask, (sample.image != image).any(axis=-1))
        assert sample.mask.any()
    plain = augment_images(images, [None, None], _config("GaussNoise"))
    assert all(s.mask is None for s in plain)


def test_bad_inputs_are_named(images: list[np.ndarray]) -> None:
    config = _config("HorizontalFlip")
    with pytest.raises(ValueError, match="masks"):
        augment_images(images, [None], config)
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        augment_images(images[:1], [np.zeros((3, 3), bool)], config)
    with pytest.raises(ValueError, match=r"images\[0\]"):
        augment_images([images[0][..., 0]], [None], config)
    with pytest.raises(ValueError, match="copies"):
        augmented_copies(images, config, -1)


def test_augmented_copies_leave_out_defects_and_repeat(images: list[np.ndarray]) -> None:
    config = _config("HorizontalFlip", "RandomBrightnessContrast", "CutPaste", p=0.5, seed=8)
    copies = augmented_copies(images, config, 3)
    assert len(copies) == 6
    assert [c.shape for c in copies] == [images[0].shape] * 3 + [images[1].shape] * 3
    again = augmented_copies(images, config, 3)
    assert all(np.array_equal(a, b) for a, b in zip(copies, again, strict=True))
    only_defects = augmented_copies(images, _config("CutPaste", "PerlinDefect"), 2)
    assert all(np.array_equal(c, images[i // 2]) for i, c in enumerate(only_defects))

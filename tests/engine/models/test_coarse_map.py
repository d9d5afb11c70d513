"""The coarse view: an image worked above ``image_size`` also gets a map at 3/4 of it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from engine.models.fewshot import FewShotConfig, FewShotPatchCore
from tests.synthetic import texture

SIZE = 96


@pytest.fixture(scope="module")
def fitted() -> FewShotPatchCore:
    """Shots of 64 px at image_size 96: factor 1.5, so a 128-px image is worked at 192."""
    rng = np.random.default_rng(0)
    model = FewShotPatchCore(FewShotConfig(image_size=SIZE), device="cpu")
    model.fit([texture(rng, 64) for _ in range(3)])
    return model


def without_coarse_view(model: FewShotPatchCore) -> FewShotPatchCore:
    """The same bank and state, ``coarse_map`` off."""
    other = FewShotPatchCore(dataclasses.replace(model.config, coarse_map=False), device="cpu")
    other.bank, other.state = model.bank, dataclasses.replace(model.state,
                                                              config=other.config)
    return other


def large_image(seed: int = 1) -> np.ndarray:
    image = texture(np.random.default_rng(seed), 128)
    image[40:90, 50:100] = (image[40:90, 50:100] * 0.7).astype(np.uint8)  # a darker area
    return image


def test_only_images_worked_above_image_size_get_a_coarse_view(fitted) -> None:
    assert fitted.working_side(large_image()) == 192
    assert fitted.coarse_shape(192, 192) == (72, 72)  # 0.75 x image_size
    assert fitted.coarse_shape(96, 64) is None
    off = without_coarse_view(fitted)
    assert off.coarse_shape(192, 192) is None
    same = texture(np.random.default_rng(2), 64)  # the shots' size: worked at 96
    a, b = fitted.score([same]), off.score([same])
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.maps[0], b.maps[0])


def test_the_coarse_view_changes_the_map_never_the_score(fitted) -> None:
    image = large_image()
    with_view = fitted.score([image])
    plain = without_coarse_view(fitted).score([image])
    np.testing.assert_array_equal(with_view.scores, plain.scores)
    assert with_view.maps[0].shape == plain.maps[0].shape == image.shape[:2]
    assert not np.allclose(with_view.maps[0], plain.maps[0], atol=1e-3 * plain.scores[0])
    # the mean of the working view and a coarse one capped at the score: nothing above it
    assert with_view.maps[0].max() <= with_view.scores[0] * (1 + 1e-5)


def test_explanations_show_the_map_scoring_gives(fitted) -> None:
    image = large_image(3)
    evidence = fitted.explain_patches(image, k=2)
    scored = fitted.score([image])
    assert evidence.score == pytest.approx(float(scored.scores[0]), rel=1e-6)
    np.testing.assert_allclose(evidence.score_map, scored.maps[0], rtol=0,
                               atol=1e-6 * float(scored.scores[0]))


def test_a_model_saved_before_the_coarse_view_keeps_its_maps(fitted, tmp_path) -> None:
    fitted.save(tmp_path)
    assert FewShotPatchCore.load(tmp_path).config.coarse_map
    payload = json.loads((tmp_path / "model.json").read_text())
    del payload["config"]["coarse_map"]
    (tmp_path / "model.json").write_text(json.dumps(payload))
    old = FewShotPatchCore.load(tmp_path)
    assert not old.config.coarse_map
    image = large_image()
    np.testing.assert_allclose(old.score([image]).maps[0],
                               without_coarse_view(fitted).score([image]).maps[0], rtol=1e-5)


def test_config_refuses_a_non_boolean_coarse_view() -> None:
    with pytest.raises(ValueError, match="coarse_map must be true or false"):
        FewShotConfig(coarse_map="yes")  # type: ignore[arg-type]

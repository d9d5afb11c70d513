"""Augmentation configs: every bad field is named, defaults are valid, pipelines round-trip."""

from __future__ import annotations

import json
from typing import Any

import albumentations as A
import numpy as np
import pytest

from engine.augment import (
    TRANSFORMS,
    AugmentConfigError,
    build_pipeline,
    default_step,
    deserialize,
    seed_pipeline,
    serialize,
    validate_config,
)
from tests.synthetic import texture


def _config(*steps: dict[str, Any], seed: Any = 0) -> dict[str, Any]:
    return {"version": 1, "seed": seed, "transforms": list(steps)}


def _problems(raw: Any) -> list[str]:
    with pytest.raises(AugmentConfigError) as caught:
        validate_config(raw)
    assert str(caught.value) == "; ".join(caught.value.problems)
    return caught.value.problems


def test_every_spec_default_is_a_valid_config() -> None:
    config = validate_config({"version": 1, "seed": 7, "transforms": [
        {"name": n, "p": default_step(n).p, "params": default_step(n).params} for n in TRANSFORMS]})
    assert [s.name for s in config.transforms] == list(TRANSFORMS)
    assert config.has_synthetic
    assert validate_config(json.loads(json.dumps(config.to_json()))) == config
    for spec in TRANSFORMS.values():
        assert spec.title and spec.help and 0 <= spec.default_p <= 1
        for param in spec.params:
            assert param.title and param.help


def test_missing_p_and_params_take_the_defaults() -> None:
    config = validate_config(_config({"name": "GaussNoise"}))
    assert config.transforms[0] == default_step("GaussNoise")
    assert not config.has_synthetic


@pytest.mark.parametrize(("raw", "field"), [
    (_config({"name": "Sharpen"}), "transforms[0].name"),
    (_config({"name": "GaussNoise", "p": 1.5}), "transforms[0].p"),
    (_config({"name": "GaussNoise", "p": "often"}), "transforms[0].p"),
    (_config({"name": "GaussNoise", "params": {"sigma": 3}}), "transforms[0].params.sigma"),
    (_config({"name": "GaussNoise", "params": {"std_range": "strong"}}),
     "transforms[0].params.std_range"),
    (_config({"name": "GaussNoise", "params": {"std_range": [0.01, 0.9]}}),
     "transforms[0].params.std_range"),
    (_config({"name": "Affine", "params": {"rotate": [10, -10]}}), "transforms[0].params.rotate"),
    (_config({"name": "ElasticTransform", "params": {"alpha": True}}),
     "transforms[0].params.alpha"),
    (_config({"name": "MotionBlur", "params": {"blur_limit": [3, 4]}}),
     "transforms[0].params.blur_limit"),
    (_config({"name": "ImageCompression", "params": {"quality_range": [70.5, 90]}}),
     "transforms[0].params.quality_range"),
    (_config({"name": "Illumination", "params": {"mode": "spotlight"}}),
     "transforms[0].params.mode"),
    (_config({"name": "GaussNoise", "params": {"per_channel": 1}}),
     "transforms[0].params.per_channel"),
    (_config({"name": "PerlinDefect", "params": {"area": [0.01, 0.5]}}),
     "transforms[0].params.area"),
    (_config({"name": "GaussNoise", "when": "always"}), "transforms[0].when"),
    (_config("GaussNoise"), "transforms[0]"),
    (_config(seed=1.5), "seed"),
    (_config(seed="42"), "seed"),
    (_config(seed=-1), "seed"),
    ({"version": 1, "transforms": []}, "seed"),
    ({"version": 2, "seed": 0, "transforms": []}, "version"),
    ({"seed": 0, "transforms": []}, "version"),
    ({"version": 1, "seed": 0}, "transforms"),
    ({"version": 1, "seed": 0, "transforms": {"name": "GaussNoise"}}, "transforms"),
    ({"version": 1, "seed": 0, "transforms": [], "extra": 1}, "extra"),
    ([1, 2], "config"),
])
def test_a_bad_field_is_named(raw: Any, field: str) -> None:
    problems = _problems(raw)
    assert any(p.startswith(f"{field}:") for p in problems), problems


def test_all_problems_are_collected_not_just_the_first() -> None:
    problems = _problems({"version": 1, "seed": "x", "transforms": [
        {"name": "Blur"},
        {"name": "GaussNoise", "p": -0.1, "params": {"std_range": [0.2, 0.1]}},
        {"name": "Affine", "params": {"scale": [0.9, 3.0], "shear": 5}},
    ]})
    fields = {p.split(":")[0] for p in problems}
    assert fields == {"seed", "transforms[0].name", "transforms[1].p",
                      "transforms[1].params.std_range", "transforms[2].params.scale",
                      "transforms[2].params.shear"}


def test_default_step_refuses_unknown_names() -> None:
    with pytest.raises(KeyError, match="Sharpen"):
        default_step("Sharpen")


def _everything(seed: int) -> dict[str, Any]:
    return _config(*({"name": n, "p": 0.7} for n in TRANSFORMS), seed=seed)


def test_serialized_pipeline_rebuilds_the_same_pixels() -> None:
    config = validate_config(_everything(11))
    stored = json.loads(json.dumps(serialize(config)))
    assert deserialize(stored) == config
    names = [t["__class_fullname__"] for t in stored["albumentations"]["transform"]["transforms"]]
    assert [n.rsplit(".", 1)[-1] for n in names] == list(TRANSFORMS)
    rebuilt = seed_pipeline(A.from_dict(stored["albumentations"]), config.seed)
    built = build_pipeline(config)
    rng = np.random.default_rng(0)
    for _ in range(3):
        image = texture(rng, 64)
        assert np.array_equal(built(image=image)["image"], rebuilt(image=image)["image"])


def test_deserialize_names_the_broken_field() -> None:
    stored = serialize(validate_config(_config({"name": "GaussNoise"})))
    stored["kensa"]["transforms"][0]["p"] = 2
    with pytest.raises(AugmentConfigError, match=r"kensa\.transforms\[0\]\.p"):
        deserialize(stored)
    with pytest.raises(AugmentConfigError, match="kensa"):
        deserialize({"albumentations": {}})


def test_steps_draw_independently() -> None:
    """A.Compose(seed=...) alone gives every step the same stream; ours must not."""
    config = validate_config(_config({"name": "RandomBrightnessContrast", "p": 1.0},
                                     {"name": "RandomGamma", "p": 1.0}, seed=5))
    first, second = build_pipeline(config).transforms
    assert first.random_generator.random() != second.random_generator.random()


def test_synthetic_false_leaves_out_defect_steps() -> None:
    config = validate_config(_config({"name": "HorizontalFlip"}, {"name": "CutPaste"}))
    assert [type(t).__name__ for t in build_pipeline(config, synthetic=False).transforms] == [
        "HorizontalFlip"]

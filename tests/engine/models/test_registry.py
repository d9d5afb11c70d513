"""The model registry: names, specs, parameters, and that each spec tells the truth."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from engine.models import Capability, registry
from engine.models.fewshot import FewShotConfig, FewShotPatchCore


def test_default_model_comes_first_then_the_offline_ones() -> None:
    names = registry.names()
    assert names[:7] == ["kensa_patchcore", "anomalib_cflow", "anomalib_dfkde", "anomalib_dfm",
                         "anomalib_draem", "anomalib_padim", "anomalib_patchcore"]
    assert registry.available()[0].name == registry.DEFAULT_MODEL
    offline = [s.needs_network for s in registry.available()]
    assert offline == sorted(offline)  # every offline model before any network one
    for spec in registry.available():
        assert spec.title and len(spec.description) > 40


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown model 'padim'; known: kensa_patchcore, "
                                         "anomalib_cflow, .*anomalib_patchcore"):
        registry.spec("padim")
    with pytest.raises(ValueError, match="unknown model"):
        registry.load("padim", "/nowhere")


def test_spec_capabilities_and_defaults_match_the_classes() -> None:
    for spec in registry.available():
        assert spec.cls.capabilities == spec.capabilities
        assert spec.cls.name == spec.name
    assert dict(registry.spec("kensa_patchcore").default_config) == asdict(FewShotConfig())
    assert registry.spec("kensa_patchcore").cls is FewShotPatchCore
    assert Capability.INCREMENTAL_UPDATE not in registry.spec("anomalib_patchcore").capabilities


@pytest.mark.parametrize(("name", "params", "message"), [
    ("kensa_patchcore", {"imagesize": 96}, "parameter.*imagesize for kensa_patchcore"),
    ("kensa_patchcore", {"image_size": 10}, "image_size must be in"),
    ("kensa_patchcore", {"views": "sideways"}, "views must be one of none, flips"),
    ("anomalib_patchcore", {"coreset_ratio": 0.0}, "coreset_ratio must be in"),
    ("anomalib_patchcore", {"backbone": "vgg"}, "unknown backbone 'vgg'"),
    ("anomalib_patchcore", {"image_size": 96}, "parameter.*for anomalib_patchcore"),
])
def test_validate_refuses_bad_parameters(name: str, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        registry.validate(name, params)


def test_validate_fills_in_defaults() -> None:
    config = registry.validate("kensa_patchcore", {"image_size": 96})
    assert config["image_size"] == 96 and config["backbone"] == "efficientnet_lite0"


def test_create_builds_the_registered_class() -> None:
    model = registry.create("kensa_patchcore", image_size=96, views="none")
    assert isinstance(model, FewShotPatchCore)
    assert model.config.image_size == 96 and model.config.views == "none"

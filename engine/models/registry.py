"""Every detector Kensa can train, by name: what it is, what it needs, how to build and load it.

Services and pages reach models ONLY through here (``create``, ``load``, ``spec``) and then ask
``model.capabilities``; they never import a model class. Model modules are imported lazily, on
first use, so listing the models costs nothing (anomalib's import alone takes seconds).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.models.base import AnomalyModel, Capability

DEFAULT_MODEL = "kensa_patchcore"


@dataclass(frozen=True)
class ModelSpec:
    """One registered detector; ``target`` is ``"module:Class"``, imported when needed."""

    name: str
    title: str
    description: str
    needs_network: bool
    capabilities: frozenset[Capability]
    default_config: Mapping[str, Any] = field(default_factory=dict)
    target: str = ""

    @property
    def cls(self) -> type[AnomalyModel]:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


_SPECS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _SPECS:
        raise ValueError(f"model {spec.name!r} is already registered")
    _SPECS[spec.name] = spec
    return spec


register(ModelSpec(
    name="kensa_patchcore",
    title="Kensa few-shot PatchCore",
    description=(
        "Remembers what good parts look like, patch by patch, and flags whatever looks unlike "
        "any remembered patch. Works from one to a few dozen good images, can learn more good "
        "images later without retraining, and shows the training patch each decision was "
        "compared with."
    ),
    needs_network=False,
    capabilities=frozenset({Capability.MEMORY_BANK, Capability.INCREMENTAL_UPDATE,
                            Capability.NEAREST_PATCHES}),
    default_config={
        "backbone": "efficientnet_lite0", "image_size": 384, "views": "auto",
        "max_bank": 5_000, "n_neighbors": 1, "normalization": "none", "blur_sigma": 4.0,
        "match_intensity": True, "colour": "auto", "scale": "shared",
        "seed": 0,
    },
    target="engine.models.fewshot:FewShotPatchCore",
))

register(ModelSpec(
    name="anomalib_patchcore",
    title="Stock anomalib PatchCore",
    description=(
        "anomalib's own PatchCore with its standard settings (256 x 256 input, 10 % coreset), "
        "on the same bundled backbone: the reference to compare Kensa's model against. It "
        "cannot learn new good images after training nor show nearest training patches."
    ),
    needs_network=False,
    capabilities=frozenset({Capability.MEMORY_BANK}),
    default_config={"backbone": "efficientnet_lite0", "coreset_ratio": 0.1},
    target="engine.models.anomalib_patchcore:AnomalibPatchCore",
))


def available() -> list[ModelSpec]:
    """Registered models, the default first."""
    return sorted(_SPECS.values(), key=lambda s: (s.name != DEFAULT_MODEL, s.name))


def names() -> list[str]:
    return [s.name for s in available()]


def spec(name: str) -> ModelSpec:
    """The spec of ``name``; an unknown name is a ValueError listing the known ones."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}") from None


def check_params(name: str, params: Mapping[str, Any]) -> None:
    """Refuse parameter names the model does not have (at request time, not in a worker)."""
    known = spec(name).default_config
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown training parameter(s) {', '.join(unknown)} for {name}; "
                         f"known: {', '.join(known)}")


def validate(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check parameters without building the model (cheap: no backbone is loaded); returns
    the full configuration, defaults filled in. Errors are one-line ValueErrors."""
    check_params(name, params)
    model_spec = spec(name)
    check = getattr(model_spec.cls, "validate_params", None)
    if check is not None:
        check(params)
    return {**model_spec.default_config, **params}


def create(name: str = DEFAULT_MODEL, device: str | None = None, **params: Any) -> AnomalyModel:
    """A fresh, unfitted model; ``params`` override the spec's ``default_config``."""
    check_params(name, params)
    return spec(name).cls.from_params(params, device=device)

def load(name: str, directory: str | Path, files: Mapping[str, str] | None = None,
         device: str | None = None) -> AnomalyModel:
    """Rebuild a saved state of model ``name``; every file in ``files`` is verified first."""
    return spec(name).cls.load(Path(directory), files=files, device=device)

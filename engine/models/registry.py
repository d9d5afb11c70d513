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
    #: takes tens of minutes per training without a GPU (left out of a comparison unless
    #: asked for, so that "Compare models" stays a matter of minutes on a plain PC)
    slow_without_gpu: bool = False

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
                            Capability.NEAREST_PATCHES, Capability.EXPORT}),
    default_config={
        "backbone": "efficientnet_lite0", "image_size": 512, "views": "auto",
        "max_bank": 4_000, "n_neighbors": 1, "normalization": "none", "style_align": False,
        "blur_sigma": 6.0,
        "match_intensity": True, "colour": "auto", "scale": "shared",
        "coarse_map": True, "fine_weight": 0.25, "seed": 0,
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


# --------------------------------------------------------------------- the anomalib zoo
# Offline: the bundled EfficientNet-Lite0 stands in for each paper's ResNet (stages chosen by
# stride, see engine.models.anomalib_zoo). Scores are raw; Kensa sets the threshold.
_ZOO = "engine.models.anomalib_zoo:"
_LITE = {"backbone": "efficientnet_lite0", "image_size": 256, "batch_size": 8}
_TRAINED = {"epochs": 10, "patience": 0}

register(ModelSpec(
    name="anomalib_padim",
    title="PaDiM (anomalib)",
    description=(
        "Learns, for every position in the image, the average look of good parts and how much "
        "it varies (a Gaussian per patch position). Trains in one pass and scores fast, but "
        "expects parts to sit in the same place in every image."
    ),
    needs_network=False, capabilities=frozenset({Capability.EXPORT}),
    default_config={**_LITE, "n_features": 100, "seed": 0},
    target=_ZOO + "AnomalibPadim",
))
register(ModelSpec(
    name="anomalib_dfm",
    title="DFM (anomalib)",
    description=(
        "Describes good images by their main feature directions (PCA) and flags patches the "
        "good directions cannot rebuild. One pass, very small model, fast."
    ),
    needs_network=False, capabilities=frozenset({Capability.EXPORT}),
    default_config={**_LITE, "pca_level": 0.97, "seed": 0},
    target=_ZOO + "AnomalibDfm",
))
register(ModelSpec(
    name="anomalib_dfkde",
    title="DFKDE (anomalib)",
    description=(
        "Estimates how likely a whole image's features are among the good images (kernel "
        "density). Gives one score per image and no map of where the defect is; needs at "
        "least two good images."
    ),
    needs_network=False, capabilities=frozenset({Capability.EXPORT}),
    default_config={**_LITE, "n_pca_components": 16, "seed": 0},
    target=_ZOO + "AnomalibDfkde",
))
register(ModelSpec(
    name="anomalib_cflow",
    title="CFlow (anomalib)",
    description=(
        "A normalizing flow learns the probability of good patch features, position by "
        "position. Trained over several epochs (slower to train than PatchCore); good maps."
    ),
    needs_network=False, capabilities=frozenset({Capability.EXPORT}),
    default_config={**_LITE, **_TRAINED, "lr": 1e-4, "seed": 0},
    target=_ZOO + "AnomalibCflow",
))
register(ModelSpec(
    name="anomalib_draem",
    title="DRAEM (anomalib)",
    description=(
        "Two networks trained from scratch on good images with painted-in synthetic defects "
        "(procedural textures, no download): one repaints the image, one finds what changed. "
        "Needs many epochs; very slow without a GPU."
    ),
    needs_network=False, capabilities=frozenset({Capability.EXPORT}),
    default_config={"image_size": 256, "batch_size": 8, **_TRAINED, "seed": 0},
    target=_ZOO + "AnomalibDraem",
    slow_without_gpu=True,
))

#: anomalib models whose class downloads weights or data: offered with network access only
#: (engine.models.anomalib_zoo.NETWORK_ONLY says why for each).
for _name, _title, _cls, _description in (
    ("anomalib_reverse_distillation", "Reverse Distillation (anomalib)",
     "OnlineReverseDistillation",
     "A student network learns to rebuild a pretrained teacher's features of good parts."),
    ("anomalib_stfpm", "STFPM (anomalib)", "OnlineStfpm",
     "A student network learns to imitate a pretrained teacher on good parts; defects are "
     "where they disagree."),
    ("anomalib_fastflow", "FastFlow (anomalib)", "OnlineFastflow",
     "A 2D normalizing flow over pretrained features; fast at inspection time."),
    ("anomalib_efficient_ad", "EfficientAD (anomalib)", "OnlineEfficientAd",
     "Student-teacher with an autoencoder, built for real-time inspection."),
    ("anomalib_csflow", "CS-Flow (anomalib)", "OnlineCsflow",
     "A cross-scale normalizing flow over EfficientNet-B5 features."),
    ("anomalib_cfa", "CFA (anomalib)", "OnlineCfa",
     "Coupled-hypersphere feature adaptation of pretrained patch features."),
    ("anomalib_winclip", "WinCLIP (anomalib)", "OnlineWinClip",
     "Zero- and few-shot detection from CLIP's image and text features."),
    ("anomalib_dinomaly", "Dinomaly (anomalib)", "OnlineDinomaly",
     "Reconstruction of DINOv2 features by a transformer decoder."),
    ("anomalib_supersimplenet", "SuperSimpleNet (anomalib)", "OnlineSupersimplenet",
     "A feature adaptor and a discriminator trained with synthetic feature-space defects."),
):
    register(ModelSpec(
        name=_name, title=_title, description=_description + " Needs network access.",
        needs_network=True, capabilities=frozenset(),
        default_config={"image_size": 256, "batch_size": 8, **_TRAINED, "seed": 0},
        target=_ZOO + _cls,
    ))


def available() -> list[ModelSpec]:
    """Registered models: the default first, then those that work offline, then by name."""
    return sorted(_SPECS.values(), key=lambda s: (s.name != DEFAULT_MODEL, s.needs_network,
                                                  s.name))


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
